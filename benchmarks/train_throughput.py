"""Training and inference images/s of the main-job classifier: the library's step against PyTorch.

    python benchmarks/train_throughput.py         # table + benchmarks/results/cpu/train_throughput.json
    python benchmarks/train_throughput.py --quick               # smoke run (seconds per variant)
    python benchmarks/train_throughput.py --variants jax-1 jax-4 \
        --jax-flags thunk_off=--xla_cpu_use_thunk_runtime=false  # A/B of XLA flags (jax-4[thunk_off])
    python benchmarks/train_throughput.py --variants jax-4 \
        --jax-config bf16=model.dtype=bfloat16      # A/B of config fields (jax-4[bf16])

The model is the one `attn-jax train --config experiments/configs/classification.py` trains (SmallCNN
(24, 48, 96, 128), stride 8, spatial gate, 64x64x1 images, global batch 128, AdamW with the config's
warmup / clipping, label smoothing 0.1). Variants:
    jax-N          attn_jax.train.build_steps(config) on N simulated CPU devices (config.cpu.devices = N):
                   the training step (the state fed back, donated, as in the loop) and, for N = 1, the
                   jitted inference forward
    torch-eager    the PyTorch twin (benchmarks/torch_models.py): forward, backward, clip, AdamW
    torch-compile  the same with torch.compile(model)
Each variant runs in a fresh process per round and the rounds interleave the variants (A B C A B C ...);
the table gives the median over rounds of each process's median step time. Timing on a shared machine is
only meaningful relative to the other variants of the same run: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402

COLUMNS = [
    ("variant", "variant", ""), ("devices", "devices", ""), ("batch", "batch", ""),
    ("train_ms", "train step ms", ".1f"), ("train_images_per_s", "train images/s", ".0f"),
    ("x_compile", "x torch.compile", ".2f"), ("infer_images_per_s", "inference images/s", ".0f"),
    ("rounds", "rounds", ""),
]  # fmt: skip
NUM_CLASSES = 10
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "cpu" / "train_throughput.json"


def main_job_config(arg: str = "spatial"):
    """experiments/configs/classification.py's get_config(arg), loaded by path as the CLI does."""
    path = ROOT / "experiments" / "configs" / "classification.py"
    spec = importlib.util.spec_from_file_location("_classification_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _host_batch(batch: int, image: int, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(batch, image, image, 1)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, size=batch).astype(np.int32),
    }


def jax_steps(devices: int, batch: int, image: int, overrides: dict | None = None):
    """(train_call, infer_call or None) for the library's step on `devices` CPU devices, with the config's
    dotted-path `overrides` (e.g. {"model.dtype": "bfloat16"}); call it before JAX starts its backends
    (it sets config.cpu.devices as the CLI does)."""
    from attn_jax.data.pipeline import DatasetMeta
    from attn_jax.train.distributed import configure_cpu_devices
    from attn_jax.train.parallel import make_mesh
    from attn_jax.train.runner import build_steps

    config = main_job_config()
    config.cpu.devices, config.data.batch_size = devices, batch
    config.update_from_flattened_dict(overrides or {})
    configure_cpu_devices(config.cpu.devices)
    import jax

    meta = DatasetMeta(
        "cluttered_digits", "classification", NUM_CLASSES, (image, image, 1), None, (0.0,), (1.0,)
    )
    runner = build_steps(config, make_mesh(devices), meta=meta)
    host = _host_batch(batch, image)
    state, inputs = runner.place(runner.init_state(config.seed)), runner.batch(host)
    box = [state]

    def train():
        box[0], metrics = runner.train(box[0], inputs)
        jax.block_until_ready(metrics)

    if devices != 1:
        return train, None
    model = runner.task.build_model(bn_axis_name=None)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    images = jax.device_put(host["image"])

    def infer():  # the state of the latest step (the train step donates the previous one)
        variables = {"params": box[0].params, "batch_stats": box[0].batch_stats}
        jax.block_until_ready(forward(variables, images))

    return train, infer


def torch_steps(compiled: bool, batch: int, image: int):
    """(train_call, infer_call) for the PyTorch twin with the config's optimizer, clipping and smoothing."""
    import torch

    from benchmarks.torch_models import TorchClassifier

    config = main_job_config()
    torch.manual_seed(config.seed)
    model = TorchClassifier(config.model.features, config.model.stride, NUM_CLASSES, in_channels=1)
    net = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    host = _host_batch(batch, image)
    images = torch.from_numpy(host["image"].transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(host["label"]).long()

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(
            net(images), labels, label_smoothing=config.classification.label_smoothing
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_norm)
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad():
            net(images)

    return train, infer


def _measure(variant: dict, batch: int, image: int, warmup: int, repeats: int) -> dict:
    """In the child: build the variant, time training then inference; medians and all times."""
    if variant["framework"] == "jax":
        train, infer = jax_steps(variant["devices"], batch, image, variant.get("config"))
    else:
        train, infer = torch_steps(variant["compiled"], batch, image)
    t0 = time.perf_counter()
    train()  # compiles
    out = {
        "train_first_s": time.perf_counter() - t0,
        "train_times": harness.timed_calls(train, warmup, repeats),
    }
    if infer is not None:
        infer()
        out["infer_times"] = harness.timed_calls(infer, warmup, repeats)
    return out


def parse_variants(names, jax_flags=(), jax_config=()) -> dict[str, dict]:
    """Variant names (jax-N, torch-eager, torch-compile) and NAME=FLAGS / NAME=FIELD=VALUE extras ->
    {name: spec}; each adds 'jax-N[NAME]' for every jax-N, run with those XLA_FLAGS appended or with that
    config field (a dotted path, e.g. model.dtype) set to VALUE (a Python literal, else a string)."""
    specs = {}
    for name in names:
        if name in ("torch-eager", "torch-compile"):
            specs[name] = {"framework": "torch", "compiled": name == "torch-compile", "devices": 1}
        elif name.startswith("jax-") and name[4:].isdigit() and int(name[4:]) > 0:
            specs[name] = {"framework": "jax", "devices": int(name[4:]), "xla_flags": ""}
        else:
            raise ValueError(f"variant must be jax-N, torch-eager or torch-compile; got {name!r}")
    for extra in jax_flags:
        label, sep, flags = extra.partition("=")
        if not sep or not label or not flags.startswith("--"):
            raise ValueError(f"--jax-flags must be NAME=--flag[=value] ...; got {extra!r}")
        for name, spec in list(specs.items()):
            if spec["framework"] == "jax" and not spec["xla_flags"]:
                specs[f"{name}[{label}]"] = {**spec, "xla_flags": flags}
    base = {name: spec for name, spec in specs.items() if spec["framework"] == "jax" and "[" not in name}
    for extra in jax_config:
        label, _, assignment = extra.partition("=")
        field, sep, value = assignment.partition("=")
        if not sep or not label or not field:
            raise ValueError(f"--jax-config must be NAME=FIELD=VALUE; got {extra!r}")
        for name, spec in base.items():
            specs[f"{name}[{label}]"] = {**spec, "config": {field: _literal(value)}}
    return specs


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _run_variant(spec: dict, batch: int, image: int, warmup: int, repeats: int, timeout: float) -> dict:
    """One fresh process for one variant, with the variant's XLA_FLAGS (torch: no JAX flags needed)."""
    saved = os.environ.get("XLA_FLAGS")
    base = saved or ""
    os.environ["XLA_FLAGS"] = f"{base} {spec.get('xla_flags', '')}".strip()
    try:
        args = (spec, batch, image, warmup, repeats)
        return harness.run_in_fresh_process(_measure, args, timeout=timeout, label=f"variant {spec}")
    finally:
        if saved is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = saved


def summarise(name: str, spec: dict, runs: list[dict], batch: int) -> dict:
    """Rows of the table: median over rounds of each round's median train / inference time."""
    row = {"variant": name, "devices": spec["devices"], "batch": batch, "rounds": len(runs)}
    row["xla_flags"] = spec.get("xla_flags") or None
    row["config"] = spec.get("config") or None
    train = [statistics.median(r["train_times"]) for r in runs]
    row["train_round_ms"] = [1e3 * t for t in train]
    row["train_ms"] = 1e3 * statistics.median(train)
    row["train_images_per_s"] = batch / statistics.median(train)
    if all("infer_times" in r for r in runs):
        infer = [statistics.median(r["infer_times"]) for r in runs]
        row["infer_ms"] = 1e3 * statistics.median(infer)
        row["infer_images_per_s"] = batch / statistics.median(infer)
    return row


def run(specs: dict, *, batch=128, image=64, rounds=3, warmup=3, repeats=10, timeout=900) -> list[dict]:
    """Interleaved rounds of every variant in fresh processes -> table rows (errors as `error` rows)."""
    runs = {name: [] for name in specs}
    errors = {}
    for r in range(rounds):
        for name, spec in specs.items():
            if name in errors:
                continue
            try:
                runs[name].append(_run_variant(spec, batch, image, warmup, repeats, timeout))
            except RuntimeError as e:
                errors[name] = str(e)
                print(f"  ! {name}: {e}", file=sys.stderr, flush=True)
                continue
            med = statistics.median(runs[name][-1]["train_times"])
            print(f"  round {r} {name}: train {1e3 * med:.1f} ms", flush=True)
    rows = [
        {"variant": n, "devices": specs[n]["devices"], "batch": batch, "error": errors[n]}
        if n in errors
        else summarise(n, specs[n], runs[n], batch)
        for n in specs
    ]
    ref = next((r for r in rows if r["variant"] == "torch-compile" and "train_ms" in r), None)
    for row in rows:
        if ref is not None and "train_images_per_s" in row:
            row["x_compile"] = row["train_images_per_s"] / ref["train_images_per_s"]
    return rows


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["jax-1", "jax-4", "torch-eager", "torch-compile"])
    p.add_argument(
        "--jax-flags", nargs="*", default=[], metavar="NAME=FLAGS", help="extra XLA_FLAGS variants"
    )
    p.add_argument(
        "--jax-config", nargs="*", default=[], metavar="NAME=FIELD=VALUE", help="extra config-field variants"
    )
    p.add_argument("--batch", type=int, default=128, help="global batch (the config's 128)")
    p.add_argument("--image", type=int, default=64, help="image side (cluttered_digits: 64)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="1 round, 2 repeats, batch 16 of 32x32 (smoke run)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.repeats, args.batch, args.image = 1, 1, 2, 16, 32
    return args


def main(argv=None) -> list[dict]:
    args = _parse(argv)
    specs = parse_variants(args.variants, args.jax_flags, args.jax_config)
    if any(s["framework"] == "torch" for s in specs.values()) and not _torch_available():
        print("torch not installed: skipping the PyTorch variants", file=sys.stderr)
        specs = {n: s for n, s in specs.items() if s["framework"] != "torch"}
    load_before = os.getloadavg()
    rows = run(specs, batch=args.batch, image=args.image, rounds=args.rounds, warmup=args.warmup,
               repeats=args.repeats)  # fmt: skip
    print(f"\n### training throughput (load average before {load_before}, after {os.getloadavg()})\n")
    harness.print_table(rows, COLUMNS)
    extra = {"quick": args.quick, "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    extra["uptime"] = _uptime()
    path = harness.write_json(args.out, rows, **extra)
    print(f"\nwrote {path}")
    return rows


def _torch_available() -> bool:
    from benchmarks import torch_peer

    return torch_peer.available()


def _uptime() -> str | None:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    main()
