"""Hypothesis properties of additive attention (unchunked and chunked): softmax and convexity facts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_jax.functional import additive_attention


@st.composite
def problems(draw):
    """A random single-example problem: m in 1..3, n in 1..9, with a mask whose rows each keep a key."""
    m, n, d, a = draw(st.integers(1, 3)), draw(st.integers(1, 9)), 3, 4
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    arrays = dict(
        q=rng.standard_normal((m, d)), h=rng.standard_normal((n, d)), v=rng.standard_normal((n, 2)),
        w_q=rng.standard_normal((d, a)), w_k=rng.standard_normal((d, a)), w_a=3 * rng.standard_normal(a),
        bias=rng.standard_normal(a),
    )  # fmt: skip
    mask = rng.random((m, n)) < 0.6
    mask[np.arange(m), rng.integers(0, n, m)] = True
    return {k: jnp.asarray(x, jnp.float32) for k, x in arrays.items()}, jnp.asarray(mask)


_attention = jax.jit(additive_attention, static_argnames=("chunk_size",))  # compiled once per shape


def run(x, mask, chunk_size, perm=None):
    h, v, mask = x["h"], x["v"], mask
    if perm is not None:
        h, v, mask = h[perm], v[perm], mask[:, perm]
    return _attention(
        x["q"], h, v, w_q=x["w_q"], w_k=x["w_k"], w_a=x["w_a"], bias=x["bias"], mask=mask,
        chunk_size=chunk_size,
    )  # fmt: skip


@pytest.mark.parametrize("chunk_size", [None, 2])
@settings(max_examples=12, deadline=None)
@given(problem=problems(), data=st.data())
def test_softmax_and_convexity_properties(chunk_size, problem, data):
    x, mask = problem
    ctx, w = run(x, mask, chunk_size)
    np.testing.assert_allclose(jnp.sum(w, axis=-1), 1.0, rtol=1e-5)  # rows sum to 1 over valid keys
    assert bool(jnp.all(jnp.where(mask, True, w == 0.0)))  # masked keys get exactly 0
    assert bool(jnp.all(w >= 0.0))
    # context lies in the convex hull of the valid values (checked coordinate-wise: bounding box)
    v = x["v"][None, :, :]
    lo = jnp.min(jnp.where(mask[..., None], v, jnp.inf), axis=1)
    hi = jnp.max(jnp.where(mask[..., None], v, -jnp.inf), axis=1)
    assert bool(jnp.all((ctx >= lo - 1e-5) & (ctx <= hi + 1e-5)))
    # permuting the keys (with their values and mask) permutes the weights and keeps the context
    perm = np.asarray(data.draw(st.permutations(range(x["h"].shape[0]))))
    ctx_p, w_p = run(x, mask, chunk_size, perm)
    np.testing.assert_allclose(w_p, w[:, perm], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ctx_p, ctx, rtol=1e-5, atol=1e-5)
