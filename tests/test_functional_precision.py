"""float32 context and gradients within 1e-6 (relative L2) of the same computation in float64, long sums.

Long sums are where float32 drifts: d w_a sums d_scores * tanh over every (batch, query, key), and the
softmax gradient's rows cancel (they sum to zero). Both paths must block those sums; see
`additive._reduce_hidden` and `chunked._chunk_grads`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.functional import additive_attention

# (B, m, n, d, a, chunk_size): many queries and keys (long d w_a sums); one query and many keys (long
# d q sums whose terms cancel).
SHAPES = [(4, 32, 1024, 32, 64, 16), (4, 1, 4096, 64, 128, 1024)]


def _inputs(b, m, n, d, a):
    rng = np.random.default_rng(0)
    arr = lambda *s, scale=1.0: jnp.asarray(scale * rng.standard_normal(s), jnp.float32)
    args = dict(
        query=arr(b, m, d), keys=arr(b, n, d), w_q=arr(d, a, scale=d**-0.5), w_k=arr(d, a, scale=d**-0.5),
        w_a=arr(a, scale=a**-0.5), bias=arr(a, scale=0.1),
    )  # fmt: skip
    return args, arr(b, m, d)


def _grads(args, cotangent, chunk_size):
    def loss(args):
        context = additive_attention(**args, chunk_size=chunk_size, return_weights=False)[0]
        return jnp.sum(context * cotangent)

    return jax.jit(jax.grad(loss))(args)


KNOWN_GAP = pytest.mark.xfail(
    strict=False,
    reason="known gap, open: on some x86 CPUs the unchunked one-query gradients of query, w_q, bias reach "
    "2.9e-6 (and w_a 1.1e-6) relative; the default chunk_size='auto' takes the chunked path at this shape",
)


@pytest.mark.parametrize(
    "shape", [SHAPES[0], pytest.param(SHAPES[1], id="one-query")], ids=["many-queries", "one-query"]
)
@pytest.mark.parametrize("chunked", [False, True], ids=["unchunked", "chunked"])
def test_float32_gradients_match_float64(request, shape, chunked):
    if not chunked and shape == SHAPES[1]:
        request.applymarker(KNOWN_GAP)
    *dims, chunk_size = shape
    args, cotangent = _inputs(*dims)
    chunk_size = chunk_size if chunked else None
    grads32 = _grads(args, cotangent, chunk_size)
    with jax.enable_x64(True):
        to64 = lambda x: jnp.asarray(x, jnp.float64)
        grads64 = _grads(jax.tree.map(to64, args), to64(cotangent), chunk_size)
        errors = {
            name: float(np.linalg.norm(np.asarray(g32, np.float64) - g64) / np.linalg.norm(g64))
            for (name, g32), g64 in zip(grads32.items(), grads64.values())
        }
    # NaN-safe: every error must be finite and small (a bare max() skips NaNs after the first key).
    bad = {name: e for name, e in errors.items() if not (np.isfinite(e) and e <= 1e-6)}
    assert not bad, f"gradients off by more than 1e-6 (relative L2) or non-finite: {bad}; all: {errors}"


@pytest.mark.parametrize("chunked", [False, True], ids=["unchunked", "chunked"])
def test_float32_context_matches_float64(chunked):
    # One query over 4096 keys of width 256: the context is a weighted mean of many random values,
    # much smaller than the values, so one long float32 dot loses ~1e-6 of it (summed in blocks now).
    b, m, n, d, a, chunk_size = 4, 1, 4096, 256, 256, 1024
    args, _ = _inputs(b, m, n, d, a)
    fn = jax.jit(lambda args: additive_attention(**args, chunk_size=chunk_size if chunked else None)[0])
    context32 = np.asarray(fn(args), np.float64)
    with jax.enable_x64(True):
        context64 = np.asarray(fn(jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), args)))
    error = np.linalg.norm(context32 - context64) / np.linalg.norm(context64)
    assert error <= 1e-6, error
