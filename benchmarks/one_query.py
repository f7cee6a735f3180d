"""One query per example (the per-step decode shape): the chunked path's example blocks vs key chunks.

    python benchmarks/one_query.py                 # W1 and W3, fwd and fwd+bwd, 5 rounds x 5 calls
    python benchmarks/one_query.py --shapes W1 --modes fwd --rounds 3

Three variants, each round running every variant in a fresh process (compiled there, then `calls`
timed calls), alternated round by round so load drifts hit all alike; medians of the rounds. (Timed in
one process, the variant compiled first ran ~10% slower there, whichever it was.) The variants: the
default call (`additive_attention`, chunk_size="auto") with whole examples per step in the
forward and the backward (the library's choice), the same call with strided key chunks forward and the
per-example key-chunk scan backward (chunked.ONE_QUERY_EXAMPLE_BLOCKS = False, the previous path) and the
lax.map + jax.checkpoint baseline of benchmarks/attention.py. fwd+bwd = gradients of sum(context) w.r.t.
keys, W_q, W_k, w_a. Prints a Markdown table and writes benchmarks/results/one_query.json with `uptime`
before and after.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.attention import baseline_attention  # noqa: E402
from benchmarks.cases import SHAPES  # noqa: E402

VARIANTS = ("example blocks", "key chunks", "baseline")


def _inputs(dims: dict):
    import jax.numpy as jnp
    import numpy as np

    b, m, n, d, a = (dims[k] for k in ("B", "m", "n", "d", "a"))
    rng = np.random.default_rng(0)
    normal = lambda *shape, scale=1.0: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)  # noqa: E731
    return (
        normal(b, m, d),
        normal(b, n, d),
        normal(d, a, scale=d**-0.5),
        normal(d, a, scale=d**-0.5),
        normal(a),
    )


def _compiled(variant: str, mode: str, args):
    """The jitted variant, traced with the forward it names (the flag is read at trace time)."""
    import jax
    import jax.numpy as jnp

    from attn_jax.functional import additive_attention, chunked

    def context(q, h, w_q, w_k, w_a):
        if variant == "baseline":
            return baseline_attention(q, h, w_q, w_k, w_a)
        return additive_attention(q, h, w_q=w_q, w_k=w_k, w_a=w_a, return_weights=False)[0]

    fn = context
    if mode == "fwdbwd":
        grad = jax.grad(
            lambda h, w_q, w_k, w_a, q: jnp.sum(context(q, h, w_q, w_k, w_a)), argnums=(0, 1, 2, 3)
        )
        fn = lambda q, h, w_q, w_k, w_a: grad(h, w_q, w_k, w_a, q)  # noqa: E731
    chunked.ONE_QUERY_EXAMPLE_BLOCKS = variant != "key chunks"
    try:
        jitted = jax.jit(fn)
        jax.block_until_ready(jitted(*args))  # traces and compiles under the flag
    finally:
        chunked.ONE_QUERY_EXAMPLE_BLOCKS = True
    return jitted


def time_variant(variant: str, dims: dict, mode: str, calls: int) -> float:
    """ms per call of one variant (compiled first, then `calls` calls), in the calling process."""
    import jax

    args = _inputs(dims)
    fn = _compiled(variant, mode, args)
    start = time.perf_counter()
    for _ in range(calls):
        jax.block_until_ready(fn(*args))
    return 1e3 * (time.perf_counter() - start) / calls


def measure(dims: dict, mode: str, rounds: int, calls: int, timeout: float = 600) -> dict:
    """Median ms per call of each variant over `rounds` alternated rounds, one fresh process per variant
    and round."""
    times = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            args = (variant, dims, mode, calls)
            label = f"{variant} {mode} {dims}"
            ms = harness.run_in_fresh_process(time_variant, args, timeout=timeout, label=label)
            times[variant].append(ms)
    return {v: statistics.median(t) for v, t in times.items()} | {"rounds_ms": times}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["W1", "W3"], help="names in benchmarks.cases.SHAPES")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "one_query.json"))
    args = parser.parse_args(argv)
    before = _uptime()
    rows = []
    for shape in args.shapes:
        dims = dict(SHAPES[shape])
        if dims["m"] != 1:
            parser.error(f"--shapes {shape}: m = {dims['m']}; this benchmark is for one query (W1, W3)")
        for mode in args.modes:
            rows.append({"shape": shape, "mode": mode, **measure(dims, mode, args.rounds, args.calls)})
    columns = [("shape", "shape", ""), ("mode", "mode", "")] + [(v, f"{v} ms", ".1f") for v in VARIANTS]
    harness.print_table(rows, columns)
    path = harness.write_json(args.out, rows, uptime_before=before, uptime_after=_uptime())
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
