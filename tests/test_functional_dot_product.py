"""Dot-product family (scaled and general/bilinear) against float64 NumPy, errors, masks, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.functional import dot_product_attention, dot_product_scores, general_scores


def _np_softmax(s, mask):
    s = np.where(mask, s, -np.inf)
    e = np.where(mask, np.exp(s - s.max(-1, keepdims=True)), 0.0)
    return e / e.sum(-1, keepdims=True)


def test_scaled_and_general_match_numpy():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 6))
    w = rng.standard_normal((4, 4))
    mask = rng.random((2, 3, 5)) < 0.7
    mask[..., 0] = True
    with jax.enable_x64(True):
        s = dot_product_scores(jnp.asarray(q), jnp.asarray(k))
        np.testing.assert_allclose(s, q @ k.transpose(0, 2, 1) / 2.0, rtol=1e-12)
        g = general_scores(jnp.asarray(q), jnp.asarray(k), jnp.asarray(w))
        np.testing.assert_allclose(g, q @ w @ k.transpose(0, 2, 1), rtol=1e-12)
        for weight, ref_s in ((None, q @ k.transpose(0, 2, 1) / 2.0), (w, q @ w @ k.transpose(0, 2, 1))):
            ctx, att = jax.jit(lambda q, k, v, m, w: dot_product_attention(q, k, v, w=w, mask=m))(
                jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), weight
            )
            ref_w = _np_softmax(ref_s, mask)
            np.testing.assert_allclose(att, ref_w, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(ctx, ref_w @ v, rtol=1e-12, atol=1e-14)


def test_fully_masked_dtype_and_defaults():
    q, k = jnp.ones((2, 4), jnp.bfloat16), jnp.ones((3, 4), jnp.bfloat16)
    mask = jnp.array([[True, False, True], [False, False, False]])
    ctx, w = dot_product_attention(q, k, mask=mask, fully_masked="uniform")
    assert ctx.dtype == jnp.bfloat16 and ctx.shape == (2, 4)
    np.testing.assert_allclose(w.astype(jnp.float32), [[0.5, 0, 0.5], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-2)
    ctx, w = dot_product_attention(q, k, mask=mask, return_weights=False)
    assert w is None and bool(jnp.all(ctx[1] == 0))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: dot_product_scores(jnp.ones((2, 4)), jnp.ones((3, 5))), r"keys has size 5 .* d = 4"),
        (lambda: general_scores(jnp.ones((2, 4)), jnp.ones((3, 5)), jnp.ones((5, 4))), r"w must have shape"),
        (lambda: dot_product_attention(jnp.ones((2, 4)), jnp.ones((3, 4)), jnp.ones((2, 4))), r"values has"),
        (lambda: dot_product_attention(jnp.ones((2, 4)), jnp.ones((3, 4)), mask=jnp.ones(4, bool)), "mask"),
        (lambda: dot_product_attention(jnp.ones((2, 4)), jnp.ones((3, 4)), fully_masked="x"), "fully_masked"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
