"""How XLA's CPU backend runs the chunked backward's sums: the measurement behind functional/chunked.py.

    python benchmarks/xla_reductions.py            # W2 backward loop (B=8, m=64, n=1024, a=128), ~1 min

Every variant scans the W2 keys in chunks, recomputes tanh(q + k) for the chunk and sums products of it,
as the chunked backward does; they differ only in how the sums are written. Variants run side by side
in one process, interleaved over rounds (the machine is shared): each round takes the fastest of a few
calls, the table reports the median over rounds. Writes benchmarks/results/xla_reductions.json.
If a new XLA release changes the ranking, `_chunk_grads` / `_pair_sums` in functional/chunked.py should
follow it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402

B, M, N, A = 8, 64, 1024, 128


def _two_output_sum(x, y, axis):
    """Sums of x and y over the whole of `axis` as one two-output reduction (no grouping)."""
    import jax.numpy as jnp
    from jax import lax

    from attn_jax.functional.chunked import _add_pair

    zero = jnp.zeros((), x.dtype)
    return lax.reduce((x, y), (zero, zero), _add_pair, (axis,))


def sums_over_keys_two_output(q, keys, d_s):
    """tanh (k, m, a) and the two sums over its k keys as one two-output reduction."""
    import jax.numpy as jnp

    hidden = jnp.tanh(keys[:, None] + q[None])
    d = d_s.T[:, :, None]
    return _two_output_sum(d * (1 - hidden * hidden), d * hidden, 0), None


def sums_over_keys_one_output(q, keys, d_s):
    """The same two sums written as two ordinary jnp.sum calls."""
    import jax.numpy as jnp

    hidden = jnp.tanh(keys[:, None] + q[None])
    d = d_s.T[:, :, None]
    return (jnp.sum(d * (1 - hidden * hidden), 0), jnp.sum(d * hidden, 0)), None


def sum_over_queries_two_output(q, keys, d_s):
    """tanh (k, m, a) and a two-output sum over all m = 64 queries in one reduction (a long sum)."""
    import jax.numpy as jnp

    hidden = jnp.tanh(keys[:, None] + q[None])
    d = d_s.T[:, :, None]
    d_keys, d_wa = _two_output_sum(d * (1 - hidden * hidden), d * hidden, 1)
    return (jnp.zeros_like(q), jnp.sum(d_wa, 0)), d_keys


def backward_stored_tanh(q, keys, d_s):
    """The full chunk backward with tanh computed once and shared by the sums over keys and queries."""
    import jax.numpy as jnp

    from attn_jax.functional.chunked import _pair_sums

    hidden = jnp.tanh(keys[:, None] + q[None])
    d = d_s.T[:, :, None]
    d_pre, d_hid = d * (1 - hidden * hidden), d * hidden
    sum_pre, sum_hidden = _pair_sums(d_pre, d_hid, axis=0)
    d_keys, _ = _pair_sums(d_pre, d_hid, axis=1)
    return (sum_pre, jnp.sum(sum_hidden, 0)), d_keys


def backward_library(q, keys, d_s, exp_form: bool = False):
    """The library's chunk backward (attn_jax.functional.chunked._chunk_grads): tanh fused into each sum;
    exp_form: recomputed from e^{2x}, e^{2y} as the library does when the projections are within 40."""
    import jax.numpy as jnp

    from attn_jax.functional import chunked

    w_a = jnp.ones((q.shape[-1],), q.dtype)
    terms = chunked._hidden_grad_terms_exp if exp_form else chunked._hidden_grad_terms_tanh
    if exp_form:
        q, keys = chunked._exp2(q), chunked._exp2(keys)  # per call here; once per example in the library
    init = (jnp.zeros_like(q), jnp.zeros_like(w_a))
    (d_q, d_wa), d_keys = chunked._chunk_grads(terms, q, w_a, init, (keys, d_s.T))
    return (d_q, d_wa), d_keys


def backward_library_exp(q, keys, d_s):
    """`backward_library` in the exp form."""
    return backward_library(q, keys, d_s, exp_form=True)


VARIANTS = {
    "tanh + 2 sums over 16 keys, one two-output reduction": (sums_over_keys_two_output, 16),
    "tanh + 2 sums over 64 keys, one two-output reduction": (sums_over_keys_two_output, 64),
    "tanh + 2 sums over 16 keys, two jnp.sum": (sums_over_keys_one_output, 16),
    "tanh + 2 sums over 64 queries, one two-output reduction": (sum_over_queries_two_output, 16),
    "chunk backward, tanh stored and shared by both sums": (backward_stored_tanh, 16),
    "chunk backward as in the library (tanh per sum)": (backward_library, 16),
    "chunk backward as in the library, exp form (one division per element)": (backward_library_exp, 16),
}


def build(variant: str):
    """Jitted (q, keys, d_s) -> outputs: the variant scanned over W2's keys, vmapped over the batch."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    body, k = VARIANTS[variant]

    def per_example(q, keys, d_s):
        key_chunks = keys.reshape(N // k, k, A)
        ds_chunks = jnp.moveaxis(d_s.reshape(M, N // k, k), 1, 0)

        def step(carry, xs):
            (d_q, d_wa), d_keys = body(q, *xs)
            return (carry[0] + d_q, carry[1] + jnp.sum(d_wa, 0) if d_wa.ndim > 1 else carry[1] + d_wa), d_keys

        init = (jnp.zeros((M, A), q.dtype), jnp.zeros((A,), q.dtype))
        return lax.scan(step, init, (key_chunks, ds_chunks))

    return jax.jit(jax.vmap(per_example))


def inputs():
    import jax
    import jax.numpy as jnp

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return (
        jax.random.normal(k1, (B, M, A), jnp.float32),
        jax.random.normal(k2, (B, N, A), jnp.float32),
        1e-3 * jax.random.normal(k3, (B, M, N), jnp.float32),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="calls per round; the fastest counts")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "xla_reductions.json"))
    args = parser.parse_args(argv)
    import jax

    data = inputs()
    fns = {name: build(name) for name in VARIANTS}
    for fn in fns.values():
        jax.block_until_ready(fn(*data))  # compile and warm up
    per_round = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(args.calls):
                start = time.perf_counter()
                jax.block_until_ready(fn(*data))
                times.append(time.perf_counter() - start)
            per_round[name].append(1e3 * min(times))
    fastest = min(statistics.median(v) for v in per_round.values())
    rows = [
        dict(variant=name, ms=statistics.median(v), x_fastest=statistics.median(v) / fastest, rounds_ms=v)
        for name, v in per_round.items()
    ]
    harness.print_table(rows, [("variant", "variant (W2, 64 chunks)", ""), ("ms", "median ms", ".1f"),
                               ("x_fastest", "x fastest", ".2f")])  # fmt: skip
    print(f"wrote {harness.write_json(args.out, rows, shape=dict(B=B, m=M, n=N, a=A))}")


if __name__ == "__main__":
    main()
