"""Benchmark runner: attention implementations, time vs n, model forward, train step, PyTorch peer.

The "models" section also runs benchmarks/train_throughput.py: images/s of the main-job classifier's
training step as `attn-jax train` builds it (1 and 4 CPU devices) against its PyTorch twin (eager and
torch.compile), written to results.json under "train_throughput".

    python benchmarks/run.py --quick                  # ~2 min smoke run on CPU
    python benchmarks/run.py                          # CPU suite (W1-W3, sweep, models, torch)
    python benchmarks/run.py --sections attention sweep --shapes W1 W2 W3 L --dtypes float32 bfloat16

Every case runs in a fresh process (benchmarks/harness.py): medians of back-to-back calls after warm-up,
XLA's compiled temporaries and the RSS first touched by one call. Writes results.json and sweep.png to
--out (default benchmarks/results/<backend>) and prints Markdown tables. The Pallas kernel is timed only
on GPU (elsewhere it runs in interpret mode, which measures the interpreter, not the kernel).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # 8 simulated CPU devices
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from benchmarks import harness, torch_peer, train_throughput  # noqa: E402
from benchmarks.cases import attention_counts, shape_dims  # noqa: E402

ATTN_COLUMNS = [
    ("shape", "shape", ""), ("dtype", "dtype", ""), ("impl", "impl", ""), ("mode", "mode", ""),
    ("median_ms", "median ms", ".2f"), ("x_bound", "x lower bound", ".2f"), ("tflops", "TFLOP/s", ".3f"),
    ("gtanh", "Gtanh/s", ".2f"), ("temp_mb", "XLA temp MB", ".1f"), ("touched_mb", "touched MB", ".1f"),
]  # fmt: skip
MODEL_COLUMNS = [
    ("case", "case", ""), ("attention", "attention", ""), ("devices", "devices", ""),
    ("batch", "batch", ""), ("median_ms", "median ms", ".2f"), ("images_per_s", "images/s", ".0f"),
    ("touched_mb", "touched MB", ".1f"),
]  # fmt: skip


def _mb(x):
    return None if x is None else x / 2**20


def _run(builder: str, kwargs: dict, args) -> dict:
    """measure_case, turning a failure into an `error` entry instead of aborting the suite."""
    try:
        res = harness.measure_case(builder, kwargs, warmup=args.warmup, repeats=args.repeats)
    except RuntimeError as e:
        print(f"  ! {kwargs}: {e}", file=sys.stderr)
        return {"error": str(e)}
    return {
        "median_ms": 1e3 * res["median_s"],
        "temp_mb": _mb(res["temp_bytes"]),
        "touched_mb": _mb(res["touched_bytes"]),
        **res,
    }


def _rates(dtypes) -> dict:
    """This machine's matmul rate per dtype and fused-tanh rate (the lower bound's denominators)."""
    rates = {f"matmul_{dt}": harness.matmul_rate(dtype=dt) for dt in dtypes}
    rates["tanh"] = harness.fused_tanh_rate()
    return rates


def _efficiency(dims, mode, dtype, seconds, rates) -> dict:
    """Achieved TFLOP/s and Gtanh/s, and time over the lower bound flops/matmul rate + tanh/tanh rate."""
    counts = attention_counts(dims, mode)
    bound = counts["flops"] / rates[f"matmul_{dtype}"] + counts["tanh"] / rates["tanh"]
    return {
        "tflops": counts["flops"] / seconds / 1e12,
        "gtanh": counts["tanh"] / seconds / 1e9,
        "x_bound": seconds / bound,
    }


def attention_rows(shapes, dtypes, impls, modes, rates, args, n=None) -> list[dict]:
    rows = []
    for shape in shapes:
        dims = shape_dims(shape, n)
        for dtype in dtypes:
            for impl in impls:
                for mode in modes:
                    kw = {"shape": shape, "impl": impl, "mode": mode, "dtype": dtype, "n": n}
                    row = {**kw, **dims, **_run("benchmarks.cases:attention_case", kw, args)}
                    if "median_s" in row:
                        row.update(_efficiency(dims, mode, dtype, row["median_s"], rates))
                    rows.append(row)
                    _append_partial(args.out, row)
                    print(f"  {shape} {dtype} {impl} {mode}: {row.get('median_ms', 'error')}", flush=True)
    return rows


def _append_partial(out: Path, row: dict) -> None:
    """Keep every finished row in out/partial.jsonl, so a run cut short by a time limit leaves data."""
    with open(out / "partial.jsonl", "a") as f:
        f.write(json.dumps(row, default=float) + "\n")


def model_rows(attentions, batch, device_counts, args) -> list[dict]:
    rows = []
    for attention in attentions:
        kw = {"attention": attention, "batch": batch}
        rows.append(
            {"case": "forward", "devices": 1, **kw, **_run("benchmarks.cases:model_forward_case", kw, args)}
        )
        for devices in device_counts:
            kwd = {**kw, "devices": devices}
            rows.append({"case": "train_step", **kwd, **_run("benchmarks.cases:train_step_case", kwd, args)})
    for row in rows:
        if "median_s" in row:
            row["images_per_s"] = row["batch"] / row["median_s"]
    return rows


def throughput_rows(args) -> list[dict]:
    """benchmarks/train_throughput.py's rows (the library's step on 1 and 4 CPU devices, the PyTorch twin
    eager and compiled; --quick: 1 device and eager only, at the smoke shape)."""
    names = (
        ["jax-1", "jax-4", "torch-eager", "torch-compile"] if jax.default_backend() == "cpu" else ["jax-1"]
    )
    if not torch_peer.available():
        names = [n for n in names if not n.startswith("torch")]
    kw = {"batch": 128, "image": 64, "rounds": 3, "warmup": args.warmup, "repeats": args.repeats}
    if args.quick:
        names = [n for n in names if n in ("jax-1", "torch-eager")]
        kw.update(batch=16, image=32, rounds=1, warmup=1, repeats=2)
    return train_throughput.run(train_throughput.parse_variants(names), **kw)


def torch_rows(shapes, modes, rates, args) -> list[dict]:
    rows = []
    for shape in shapes:
        for compiled in (False, True):
            for mode in modes:
                impl = "torch.compile" if compiled else "torch eager"
                row = {"shape": shape, "dtype": "float32", "impl": impl, "mode": mode}
                try:
                    res = torch_peer.measure(shape_dims(shape), mode, compiled, warmup=args.warmup,
                                             repeats=args.repeats)  # fmt: skip
                    row.update(res, median_ms=1e3 * res["median_s"], touched_mb=_mb(res["touched_bytes"]))
                    row.update(_efficiency(shape_dims(shape), mode, "float32", res["median_s"], rates))
                except RuntimeError as e:
                    row["error"] = str(e)
                rows.append(row)
                print(f"  {shape} {impl} {mode}: {row.get('median_ms', 'error')}", flush=True)
    return rows


def plot_sweep(rows, path: Path) -> None:
    """Time vs n (log-log), one line per implementation, forward and forward+backward side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for impl in dict.fromkeys(r["impl"] for r in rows):
            pts = [(r["n"], r["median_ms"]) for r in rows if r["impl"] == impl and r["mode"] == mode
                   and "median_ms" in r]  # fmt: skip
            if pts:
                ax.plot(*zip(*sorted(pts)), marker="o", label=impl)
        ax.set(xscale="log", yscale="log", xlabel="n (keys)", ylabel="median ms", title=mode)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    dims = {k: rows[0][k] for k in ("B", "m", "d", "a")}
    load = f", load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    fig.suptitle(f"additive attention, {dims}, {jax.devices()[0].device_kind}{load}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _parse(argv):
    on_gpu = jax.default_backend() == "gpu"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few shapes and repeats (smoke run)")
    p.add_argument("--sections", nargs="+", default=["attention", "sweep", "models", "torch"])
    p.add_argument("--shapes", nargs="+", default=["W1", "W2", "W3", "L"] if on_gpu else ["W1", "W2", "W3"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"] if on_gpu else ["float32"])
    impls = ["naive", "default", "unchunked", "chunked"] + (["pallas", "pallas_fast"] if on_gpu else [])
    p.add_argument("--impls", nargs="+", default=impls)
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"])
    p.add_argument(
        "--sweep-n",
        nargs="+",
        type=int,
        default=[256, 512, 1024, 2048, 4096] if on_gpu else [256, 512, 1024, 2048],
    )
    p.add_argument("--batch", type=int, default=64, help="images per model forward / train step")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / jax.default_backend())
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.sweep_n, args.repeats, args.warmup = ["W2"], [256, 1024], 5, 1
    return args


def main(argv=None) -> dict:
    args = _parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"rates": _rates(args.dtypes)}
    (args.out / "partial.jsonl").write_text(json.dumps({"rates": results["rates"]}) + "\n")
    print(f"measured rates: {results['rates']}", flush=True)
    if "attention" in args.sections:
        results["attention"] = attention_rows(args.shapes, args.dtypes, args.impls, args.modes,
                                              results["rates"], args)  # fmt: skip
    if "sweep" in args.sections:
        results["sweep"] = [row for n in args.sweep_n for row in
                            attention_rows(["sweep"], args.dtypes[:1], args.impls, args.modes,
                                           results["rates"], args, n=n)]  # fmt: skip
    if "models" in args.sections:
        counts = [c for c in (1, 8) if c <= len(jax.devices())]
        results["models"] = model_rows(["spatial", "additive"], args.batch, counts, args)
        results["train_throughput"] = throughput_rows(args)
    if "torch" in args.sections and torch_peer.available():
        results["torch"] = torch_rows(
            args.shapes if not args.quick else ["W2"], args.modes, results["rates"], args
        )
    for key in ("attention", "sweep", "torch"):
        if results.get(key):
            print(f"\n### {key}\n")
            harness.print_table(results[key], ATTN_COLUMNS if key != "sweep" else
                                [("n", "n", "")] + ATTN_COLUMNS[2:])  # fmt: skip
    if results.get("models"):
        print("\n### models\n")
        harness.print_table(results["models"], MODEL_COLUMNS)
    if results.get("train_throughput"):
        print("\n### main-job classifier training throughput (benchmarks/train_throughput.py)\n")
        harness.print_table(results["train_throughput"], train_throughput.COLUMNS)
    if results.get("sweep"):
        plot_sweep(results["sweep"], args.out / "sweep.png")
    path = harness.write_json(args.out / "results.json", results, quick=args.quick)
    print(f"\nwrote {path} and {args.out / 'sweep.png'}")
    return results


if __name__ == "__main__":
    main()
