"""What K training seeds cost: K replicas in one compiled program against K separate single-seed programs.

    python benchmarks/seeds_cost.py          # main job, K = 1 4 8 -> benchmarks/results/seeds_cost.json
    python benchmarks/seeds_cost.py --quick  # the tiny config, 1 round (seconds per K; tests)
    python benchmarks/seeds_cost.py --seeds 1 2 5 --rounds 5 --out /tmp/seeds.json
    python benchmarks/seeds_cost.py --modes unroll    # only the unrolled program

The model and training step are the main job's (`experiments/configs/classification.py`, spatial
attention, global batch 128 of 64x64x1 images, one XLA CPU device, the config's `cpu.matmul_grad`), built by
`attn_jax.train.build_steps` as `attn-jax train` builds it. For each K:

    one program    `config.num_seeds = K`: the train state stacked on a leading seed axis, the per-replica
                   step vmapped (`seeds_mode="vmap"`) or unrolled, K copies of the single-seed step
                   (`seeds_mode="unroll"`; attn_jax.train.seeds); one call advances all K
                   replicas by one step of `batch` images each (the batch is (batch, K, ...), another
                   synthetic batch per replica)
    separate       the same work as K runs of the single-seed program (`num_seeds = 1`) one after another:
                   K x its step time, and K compilations

Columns: `step ms` is the wall time of one call that advances every one of the K seeds by one step;
`ms per seed-step` is that divided by K (for separate runs: the single-seed step time); `images/s per seed`
is `batch / ms per seed-step`, the images one seed trains per second of machine time when the K seeds share
the machine (the cost per seed: higher is cheaper); `x separate` is the one program's images/s per seed over
the separate runs' (above 1: the one program costs less per seed); `first call s` is the first call's time
(compilation and the first step; separate runs pay it K times).

Each (K, mode) runs in a fresh process per round and the rounds interleave them (1, 4 vmap, 4 unroll,
8 vmap, 8 unroll, 1, ...); the table
gives the median over rounds of each process's median step time after warm-up. Timing on a shared machine is
only meaningful relative to the other rows of the same run: the JSON records the load average and `uptime`.
"""

from __future__ import annotations

import argparse
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

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "seeds_cost.json"
NUM_CLASSES = 10
COLUMNS = [
    ("num_seeds", "K", ""), ("variant", "variant", ""), ("batch", "batch", ""),
    ("step_ms", "step ms", ".1f"), ("ms_per_seed_step", "ms per seed-step", ".1f"),
    ("images_per_s_per_seed", "images/s per seed", ".0f"), ("x_separate", "x separate", ".2f"),
    ("first_call_s", "first call s", ".1f"), ("rounds", "rounds", ""),
]  # fmt: skip


def experiment_config(quick: bool):
    """experiments/configs/classification.py's spatial config, loaded by path as the CLI does (the tiny one
    with `quick`)."""
    path = ROOT / "experiments" / "configs" / "classification.py"
    spec = importlib.util.spec_from_file_location("_classification_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("spatial,tiny" if quick else "spatial")


def _host_batches(batch: int, image: int, num_seeds: int) -> dict:
    """Synthetic classification batches as the loop feeds them: (batch, ...) for one seed, else one batch
    per replica stacked on axis 1, (batch, K, ...)."""
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (batch, num_seeds) if num_seeds > 1 else (batch,)
    return {
        "image": rng.normal(size=(*shape, image, image, 1)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, size=shape).astype(np.int32),
    }


MODES = ("vmap", "unroll")


def _measure(num_seeds: int, quick: bool, image: int, warmup: int, repeats: int, mode: str = "vmap") -> dict:
    """In the child: build the K-seed training step on one CPU device and time it (the state fed back and
    donated, as in the loop)."""
    from attn_jax.data.pipeline import DatasetMeta
    from attn_jax.train.distributed import configure_cpu_devices
    from attn_jax.train.parallel import make_mesh
    from attn_jax.train.runner import build_steps

    config = experiment_config(quick)
    config.num_seeds, config.seeds_mode = num_seeds, mode
    configure_cpu_devices(config.cpu.devices)
    import jax

    meta = DatasetMeta("synthetic", "classification", NUM_CLASSES, (image, image, 1), None, (0.0,), (1.0,))
    runner = build_steps(config, make_mesh(1), meta=meta)
    inputs = runner.batch(_host_batches(config.data.batch_size, image, num_seeds))
    box = [runner.place(runner.init_state(config.seed))]
    shapes = []

    def train():
        box[0], metrics = runner.train(box[0], inputs)
        jax.block_until_ready(metrics)
        shapes.append(tuple(metrics["loss"].shape))

    t0 = time.perf_counter()
    train()  # compiles
    first = time.perf_counter() - t0
    times = harness.timed_calls(train, warmup, repeats)
    replicas = int(jax.device_get(box[0].step).size)  # a step counter per replica
    return {
        "batch": int(config.data.batch_size),
        "first_call_s": first,
        "train_times": times,
        "replicas": replicas,
        "loss_shape": list(shapes[-1]),
    }


def summarise(per_k: dict[tuple[int, str], list[dict]]) -> list[dict]:
    """Rows of the table from each (K, mode)'s rounds: the one program's and the separate runs' cost per seed.

    Args:
      per_k: ``{(K, mode): [round, ...]}``, each round the child's dict (``batch``, ``first_call_s``,
        ``train_times``); ``(1, "single")`` must be present (the separate runs are K x the single-seed
        program).

    Returns:
      One row per key, the single-seed program first, then for each K its modes' rows ("one program
      (<mode>)") and one "separate" row.

    Raises:
      ValueError: ``per_k`` has no ``(1, "single")`` entry.
    """
    if not per_k.get((1, "single")):
        raise ValueError(f"the separate runs are measured by K = 1, absent from {sorted(per_k)}")

    def medians(runs):
        step = statistics.median(statistics.median(r["train_times"]) for r in runs)
        return step, statistics.median(r["first_call_s"] for r in runs), runs[0]["batch"]

    single_step, single_first, batch = medians(per_k[(1, "single")])
    rows = []
    for k in sorted({k for k, _ in per_k}):
        for (kk, mode), runs in per_k.items():
            if kk != k:
                continue
            step, first, batch = medians(runs)
            one = {
                "num_seeds": k, "variant": f"one program ({mode})" if k > 1 else "single seed",
                "batch": batch, "rounds": len(runs), "step_ms": 1e3 * step,
                "ms_per_seed_step": 1e3 * step / k, "images_per_s_per_seed": batch * k / step,
                "first_call_s": first,
                "step_round_ms": [1e3 * statistics.median(r["train_times"]) for r in runs],
            }  # fmt: skip
            one["x_separate"] = single_step * k / step
            rows.append(one)
        if k == 1:
            continue
        rows.append({
            "num_seeds": k, "variant": "separate", "batch": batch, "rounds": len(per_k[(1, "single")]),
            "step_ms": 1e3 * single_step * k, "ms_per_seed_step": 1e3 * single_step,
            "images_per_s_per_seed": batch / single_step, "first_call_s": single_first * k,
            "x_separate": 1.0,
        })  # fmt: skip
    return rows


def run(seeds, *, quick: bool, image: int, rounds: int, warmup: int, repeats: int, modes=MODES,
        timeout: float = 900):  # fmt: skip
    """Interleaved rounds of every (K, mode) in fresh processes -> (rows, raw rounds per (K, mode))."""
    keys = [(1, "single")] + [(k, m) for k in seeds if k > 1 for m in modes]
    per_k = {key: [] for key in keys}
    for r in range(rounds):
        for k, mode in keys:
            args = (k, quick, image, warmup, repeats, "vmap" if mode == "single" else mode)
            label = f"K={k}" + ("" if k == 1 else f" {mode}")
            res = harness.run_in_fresh_process(_measure, args, timeout=timeout, label=label)
            if res["replicas"] != k:
                raise RuntimeError(f"{label}: the program trained {res['replicas']} replicas")
            per_k[(k, mode)].append(res)
            med = statistics.median(res["train_times"])
            print(
                f"  round {r} {label}: step {1e3 * med:.1f} ms, first call {res['first_call_s']:.1f} s",
                flush=True,
            )
    return summarise(per_k), per_k


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8], help="the K values (1 is always added)")
    p.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=MODES, help="seeds_mode of the K > 1 programs"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="tiny config (batch 32 of 32x32), 1 round, 2 repeats")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    bad = [k for k in args.seeds if k < 1]
    if bad:
        p.error(f"--seeds must be integers >= 1, got {bad[0]}")
    for name in ("rounds", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    args.seeds = sorted(set(args.seeds) | {1})
    args.image = 32 if args.quick else 64  # cluttered_digits/tiny, cluttered_digits
    if args.quick:
        args.rounds, args.warmup, args.repeats = 1, 1, 2
    return args


def _uptime() -> str | None:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None) -> list[dict]:
    args = _parse(argv)
    load_before, uptime_before = os.getloadavg(), _uptime()
    rows, per_k = run(args.seeds, quick=args.quick, image=args.image, rounds=args.rounds, warmup=args.warmup,
                      repeats=args.repeats, modes=tuple(args.modes))  # fmt: skip
    load_after = os.getloadavg()
    print(f"\n### K seeds in one program vs K separate runs (load average before {load_before}, after "
          f"{load_after})\n")  # fmt: skip
    harness.print_table(rows, COLUMNS)
    extra = {
        "quick": args.quick,
        "config": "experiments/configs/classification.py:" + ("spatial,tiny" if args.quick else "spatial"),
        "image": args.image,
        "machine": {"cpu_model": harness.cpu_model() or "unknown", "cores": os.cpu_count()},
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "uptime_before": uptime_before,
        "uptime_after": _uptime(),
        "modes": list(args.modes),
        "raw": {(str(k) if k == 1 else f"{k} {m}"): [{"first_call_s": r["first_call_s"],
                                                     "train_times": r["train_times"]} for r in runs]
                for (k, m), runs in per_k.items()},
        "note": "the machine is shared: compare rows within this run, not across runs",
    }  # fmt: skip
    path = harness.write_json(args.out, rows, **extra)
    print(f"\nwrote {path}")
    return rows


if __name__ == "__main__":
    main()
