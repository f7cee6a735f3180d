"""Additive-attention benchmark: the library's default call and its peers, forward and fwd+bwd.

    python benchmarks/attention.py            # W1, W2, W3 + the too-big-for-naive size
    python benchmarks/attention.py --quick    # W2 only, fewer repeats
    python benchmarks/attention.py --rounds 3 # the whole sweep 3 times, interleaved; medians over rounds

Implementations (IMPLS): "default" = additive_attention with its default arguments (chunk_size="auto"),
"chunked" = chunk_size=k (k per shape in SHAPES), "unchunked" = chunk_size=None, "baseline" = a 20-line
JAX reference (lax.map over key chunks of the whole batch, chunk body under jax.checkpoint; chunk = the
largest divisor c of n with B*m*c*a <= 2^20), "naive" = jax.jit of the formula (the (B, m, n, a) tensor),
and, when torch is installed, "torch eager" and "torch.compile" of the same formula
(benchmarks/torch_peer.py). fwd+bwd = gradients of sum(context * g) w.r.t. q, h, W_q, W_k, w_a.

Each case runs in a fresh process (benchmarks/harness.py): median of back-to-back calls after
warm-up, compiled temporaries (XLA memory_analysis) and memory first touched by one call (RSS rise).
Lower bound (LB) = matmul flops / measured matmul rate + tanh count / measured fused-tanh rate, both
measured in the case's own process just before and after its timed calls (mean of the two), so a
shared, loaded machine affects the time and its bound alike; fwd+bwd counts 3x the matmul flops and
the tanh evaluations once.
Error = relative L2 error against a float64 evaluation (context; fwd+bwd: worst over all gradients).
On a shared machine one slow minute can skew a row: with --rounds R the sweep runs R times (every case
in a fresh process each round) and each row reports the median over rounds of its median time and of
its x LB, so rows compared side by side were measured in the same stretches of time.
Prints the rows and a summary (one line per shape and mode, one column per implementation, ms), and
writes benchmarks/results/attention_cpu.json (--quick: attention_cpu_quick.json; or --out) with
`uptime` recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402

# name: (B, m, n, d, a) and the chunk size of the "chunked" rows (the baseline's c)
SHAPES = {
    "W1": ((64, 1, 196, 512, 512), 28),
    "W2": ((8, 64, 1024, 256, 128), 16),
    "W3": ((4, 1, 4096, 256, 256), 1024),
}
BIG = ((8, 256, 32768, 256, 128), 16)  # naive tanh tensor alone: 8*256*32768*128*4 B = 32 GiB
IMPLS = ("default", "chunked", "baseline", "unchunked", "naive")
TORCH_IMPLS = ("torch.compile", "torch eager")
BASELINE_FLOATS = 2**20  # the baseline's (B, m, c, a) chunk


def _inputs(shape, dtype):
    import jax.numpy as jnp

    b, m, n, d, a = shape
    rng = np.random.default_rng(0)
    arr = lambda *s, scale=1.0: jnp.asarray(scale * rng.standard_normal(s), dtype)
    return dict(
        q=arr(b, m, d), h=arr(b, n, d),
        w_q=arr(d, a, scale=d**-0.5), w_k=arr(d, a, scale=d**-0.5), w_a=arr(a, scale=a**-0.5),
    )  # fmt: skip


def naive_attention(q, h, w_q, w_k, w_a):
    """The additive formula written directly: builds the (B, m, n, a) tanh tensor."""
    import jax
    import jax.numpy as jnp

    hidden = jnp.tanh((q @ w_q)[:, :, None, :] + (h @ w_k)[:, None, :, :])
    weights = jax.nn.softmax(hidden @ w_a, axis=-1)
    return weights @ h


def baseline_attention(q, h, w_q, w_k, w_a):
    """Reference: lax.map over key chunks (whole batch per chunk), chunk body under jax.checkpoint."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from attn_jax.functional._blocking import largest_divisor_at_most

    b, m, _ = q.shape
    n, a = h.shape[1], w_a.shape[0]
    c = largest_divisor_at_most(n, max(1, BASELINE_FLOATS // (b * m * a)))
    q_proj, k_proj = q @ w_q, h @ w_k
    k_chunks = k_proj.reshape(b, n // c, c, a).transpose(1, 0, 2, 3)

    @jax.checkpoint
    def chunk_scores(k_chunk):
        return jnp.tanh(q_proj[:, :, None, :] + k_chunk[:, None, :, :]) @ w_a

    scores = lax.map(chunk_scores, k_chunks).transpose(1, 2, 0, 3).reshape(b, m, n)
    return jax.nn.softmax(scores, axis=-1) @ h


def attention_fn(impl: str, chunk_size: int):
    """(q, h, w_q, w_k, w_a) -> context for one implementation."""
    if impl == "naive":
        return naive_attention
    if impl == "baseline":
        return baseline_attention
    from attn_jax.functional import additive_attention

    kw = {"chunked": {"chunk_size": chunk_size}, "unchunked": {"chunk_size": None}, "default": {}}[impl]

    def fn(q, h, w_q, w_k, w_a):
        return additive_attention(q, h, w_q=w_q, w_k=w_k, w_a=w_a, return_weights=False, **kw)[0]

    return fn


def _fwd_bwd(fn):
    import jax
    import jax.numpy as jnp

    def loss(args, cot):
        return jnp.sum(fn(**args) * cot)

    return jax.grad(loss)


def build_case(shape, impl: str, mode: str, chunk_size: int, dtype: str = "float32"):
    """Harness builder: (jitted fn, args) for shape (B, m, n, d, a), impl, mode 'fwd' or 'fwd+bwd'."""
    import jax
    import jax.numpy as jnp

    args = _inputs(tuple(shape), jnp.dtype(dtype))
    fn = attention_fn(impl, chunk_size)
    if mode == "fwd":
        return jax.jit(lambda args: fn(**args)), (args,)
    b, m, _, d, _ = shape
    cot = jnp.asarray(np.random.default_rng(1).standard_normal((b, m, d)), jnp.dtype(dtype))
    return jax.jit(_fwd_bwd(fn)), (args, cot)


def relative_error(shape, impl: str, mode: str, chunk_size: int) -> float:
    """Relative L2 error of the float32 result against float64 (worst over outputs/gradients)."""
    import jax

    fn32, args32 = build_case(shape, impl, mode, chunk_size, "float32")
    out32 = jax.tree.leaves(fn32(*args32))
    with jax.enable_x64(True):
        fn64, args64 = build_case(shape, impl, mode, chunk_size, "float64")
        args64 = jax.tree.map(lambda x32, x64: x32.astype(x64.dtype), args32, args64)  # same values
        out64 = jax.tree.leaves(fn64(*args64))
    out32, out64 = [np.asarray(x, np.float64) for x in out32], [np.asarray(x) for x in out64]
    errs = [np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(out32, out64)]
    return float(max(errs))


def counts(shape):
    """(forward matmul flops, tanh evaluations) of the formula on shape (B, m, n, d, a)."""
    b, m, n, d, a = shape
    flops = 2 * b * (m * d * a + n * d * a) + 2 * b * m * n * a + 2 * b * m * n * d
    return flops, b * m * n * a


def lower_bound(shape, mode: str, rates: dict) -> float:
    flops, tanh = counts(shape)
    if mode == "fwd+bwd":
        flops *= 3
    return flops / rates["matmul_flops_per_s"] + tanh / rates["tanh_per_s"]


def _mean_rates(probes):
    return {key: float(np.mean([p[key] for p in probes])) for key in probes[0]}


def combine_rounds(rounds: list[dict]) -> dict:
    """One row from the same case measured in several rounds: medians of time and x LB, max memory."""
    row = dict(rounds[0])
    for key in ("ms", "x_lb", "lb_ms"):
        row[key] = float(np.median([r[key] for r in rounds]))
    for key in ("temp_mb", "touched_mb"):
        values = [r[key] for r in rounds if r[key] is not None]
        row[key] = max(values) if values else None
    row["round_ms"] = [r["ms"] for r in rounds]
    row["times_ms"] = [t for r in rounds for t in r["times_ms"]]
    row["rates"] = [r["rates"] for r in rounds]
    return row


def chunk_of(impl: str, shape, k: int):
    """The chunk size a row runs with: k, the baseline's c, auto's choice for "default", else None."""
    b, m, n, _, a = shape
    if impl == "chunked":
        return k
    if impl == "baseline":
        from attn_jax.functional._blocking import largest_divisor_at_most

        return largest_divisor_at_most(n, max(1, BASELINE_FLOATS // (b * m * a)))
    if impl == "default":
        from attn_jax.functional._auto import auto_chunk_size

        return auto_chunk_size(b, m, n, a, "float32")
    return None


def run_torch_row(name, shape, impl, mode, repeats):
    """torch eager / torch.compile of the same formula (values = keys, no bias), in a fresh process."""
    from benchmarks import torch_peer

    dims = dict(zip("B m n d a".split(), shape))
    res = torch_peer.measure(dims, mode, impl == "torch.compile", warmup=2, repeats=repeats, tied=True)
    rates = measure_rates()  # in this process, just after: torch's own process has no JAX
    lb = lower_bound(shape, mode, rates)
    row = dict(
        shape=name, mode=mode, impl=impl, chunk=None, ms=1e3 * res["median_s"], x_lb=res["median_s"] / lb,
        lb_ms=1e3 * lb, temp_mb=None,
        touched_mb=None if res["touched_bytes"] is None else res["touched_bytes"] / 2**20,
        rel_err=None, times_ms=[1e3 * t for t in res["times"]], rates=rates,
    )  # fmt: skip
    print(f"  {name} {mode:8s} {impl:13s} {row['ms']:9.2f} ms  {row['x_lb']:.2f}x LB", flush=True)
    return row


def run_row(name, shape, impl, mode, k, repeats, skip_error):
    if impl in TORCH_IMPLS:
        return run_torch_row(name, shape, impl, mode, repeats)
    res = harness.measure_case(
        "benchmarks.attention:build_case",
        dict(shape=shape, impl=impl, mode=mode, chunk_size=k),
        warmup=2,
        repeats=repeats,
        probe="benchmarks.attention:measure_rates",
    )
    rates = _mean_rates(res["probes"])  # measured in the same process, just before and after
    lb = lower_bound(shape, mode, rates)
    row = dict(
        shape=name, mode=mode, impl=impl, chunk=chunk_of(impl, shape, k),
        ms=1e3 * res["median_s"], x_lb=res["median_s"] / lb, lb_ms=1e3 * lb,
        temp_mb=None if res["temp_bytes"] is None else res["temp_bytes"] / 2**20,
        touched_mb=None if res["touched_bytes"] is None else res["touched_bytes"] / 2**20,
        rel_err=None if skip_error else relative_error(shape, impl, mode, k),
        times_ms=[1e3 * t for t in res["times"]], rates=rates,
    )  # fmt: skip
    print(f"  {name} {mode:8s} {impl:13s} {row['ms']:9.2f} ms  {row['x_lb']:.2f}x LB", flush=True)
    return row


def summary(rows: list[dict]) -> list[dict]:
    """One row per (shape, mode): ms of every implementation, and the default call over the fastest."""
    out = {}
    for r in rows:
        if r["shape"] in SHAPES:
            out.setdefault((r["shape"], r["mode"]), {"shape": r["shape"], "mode": r["mode"]})[r["impl"]] = r[
                "ms"
            ]
    for row in out.values():
        times = [v for key, v in row.items() if key not in ("shape", "mode")]
        row["default / fastest"] = row["default"] / min(times) if "default" in row else None
    return list(out.values())


def uptime() -> str:
    """`uptime` of this machine (load averages over 1, 5, 15 minutes): the box may be shared."""
    import subprocess

    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average {os.getloadavg()}"


def big_case() -> list[dict]:
    """Compile-only memory for the naive path at BIG; the chunked path is compiled and run."""
    shape, k = BIG
    rows = []
    rates = measure_rates()
    for impl in ("naive", "chunked"):
        mem = harness.compile_only("benchmarks.attention:build_case", dict(shape=shape, impl=impl, mode="fwd",
                                                                              chunk_size=k))  # fmt: skip
        lb_ms = 1e3 * lower_bound(shape, "fwd", rates)
        row = dict(shape="BIG", mode="fwd", impl=impl, chunk=k if impl == "chunked" else None,
                   temp_mb=mem["temp_bytes"] / 2**20, lb_ms=lb_ms)  # fmt: skip
        if impl == "chunked":
            res = harness.measure_case("benchmarks.attention:build_case",
                                       dict(shape=shape, impl=impl, mode="fwd", chunk_size=k),
                                       warmup=0, repeats=1, timeout=1200)  # fmt: skip
            row.update(ms=1e3 * res["median_s"], x_lb=res["median_s"] * 1e3 / row["lb_ms"],
                       touched_mb=res["touched_bytes"] / 2**20)  # fmt: skip
        rows.append(row)
        print(f"  BIG fwd {impl}: temp {row['temp_mb']:.0f} MiB", flush=True)
    return rows


def measure_rates() -> dict:
    return {"matmul_flops_per_s": harness.matmul_rate(1024), "tanh_per_s": harness.fused_tanh_rate()}


COLUMNS = [
    ("shape", "shape", ""), ("mode", "mode", ""), ("impl", "impl", ""), ("chunk", "k", ""),
    ("ms", "median ms", ".2f"), ("x_lb", "x LB", ".2f"), ("temp_mb", "temp MiB", ".1f"),
    ("touched_mb", "touched MiB", ".1f"), ("rel_err", "rel err", ".1e"),
]  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="W2 only, 5 repeats, no BIG size")
    parser.add_argument("--shapes", default=None, help="comma-separated subset of W1,W2,W3")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-big", action="store_true")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch peers even if installed")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sweep; report medians over rounds")
    parser.add_argument("--out", default=None, help="JSON path (default results/attention_cpu[_quick].json)")
    args = parser.parse_args(argv)
    default_out = "attention_cpu_quick.json" if args.quick else "attention_cpu.json"
    args.out = args.out or str(Path(__file__).parent / "results" / default_out)
    names = ["W2"] if args.quick else (args.shapes.split(",") if args.shapes else list(SHAPES))
    repeats = args.repeats or (5 if args.quick else 10)
    uptime_start = uptime()
    print(f"uptime at start: {uptime_start}", flush=True)
    from benchmarks import torch_peer

    impls = IMPLS + (TORCH_IMPLS if torch_peer.available() and not args.no_torch else ())
    cases = [(name, mode, impl) for name in names for mode in ("fwd", "fwd+bwd") for impl in impls]
    measured = {case: [] for case in cases}
    for round_index in range(args.rounds):
        if args.rounds > 1:
            print(f"round {round_index + 1}/{args.rounds}", flush=True)
        for name, mode, impl in cases:
            shape, k = SHAPES[name]
            skip_error = args.quick or round_index > 0  # the error does not change between rounds
            measured[(name, mode, impl)].append(run_row(name, shape, impl, mode, k, repeats, skip_error))
    rows = [combine_rounds(measured[case]) for case in cases]
    if not (args.quick or args.no_big):
        rows += big_case()
    harness.print_table(rows, COLUMNS)
    table = summary(rows)
    columns = [("shape", "shape", ""), ("mode", "mode", "")]
    columns += [(i, f"{i} ms", ".2f") for i in impls] + [("default / fastest", "default / fastest", ".2f")]
    print()
    harness.print_table(table, columns)
    uptime_end = uptime()
    print(f"uptime at end: {uptime_end}")
    shapes = {k: v[0] for k, v in SHAPES.items()} | {"BIG": BIG[0]}
    path = harness.write_json(args.out, rows, shapes=shapes, summary=table, uptime_start=uptime_start,
                              uptime_end=uptime_end)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
