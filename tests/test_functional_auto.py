"""chunk_size="auto" (the default): the rule, the same choice under jit / vmap / grad, same results as both
explicit paths, float32 gradients within 1e-6 of float64; and the chunked path's tanh fallback."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.functional import additive_attention
from attn_jax.functional._auto import CHUNK_BYTES, auto_chunk_size
from tests._attention_inputs import (
    assert_errors_within,
    gradient_errors_vs_float64,
    long_sum_inputs,
    make_inputs,
    make_mask,
)


@pytest.mark.parametrize(
    "dims, expected",
    [
        ((64, 1, 196, 512), 28),  # W1: 2^20 floats / (64 * 512) = 32 keys -> divisor 28 of 196
        ((8, 64, 1024, 128), 16),  # W2
        ((4, 1, 4096, 256), 1024),  # W3
        ((2, 3, 10, 6), None),  # the whole tensor fits in one block: unchunked
        ((1, 1, 1031, 1024), 1024),  # prime n: largest divisor 1 < 1024 / 2, so pad instead
    ],
)
def test_auto_rule(dims, expected):
    assert auto_chunk_size(*dims, jnp.float32) == expected


def test_auto_rule_budget_is_bytes():
    b, m, n, a = 2, 4, CHUNK_BYTES // (2 * 4 * 8 * 4), 8  # exactly CHUNK_BYTES of float32
    assert auto_chunk_size(b, m, n, a, jnp.float32) is None
    assert auto_chunk_size(b, m, n, a, jnp.float64) == n // 2  # twice the bytes: chunked, half the keys


def _loss(chunk_size, mask):
    def loss(q, h, v, p):
        ctx, w = additive_attention(q, h, v, **p, mask=mask, chunk_size=chunk_size)
        return jnp.sum(jnp.sin(ctx)) + jnp.sum(w * jnp.cos(jnp.arange(w.shape[-1]))), ctx

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


# (batch, m, n, a): auto chunks the first (2^20 floats / (4 * 8 * 128) = 256 keys -> divisor 250 of 3000),
# keeps the second unchunked
CASES = [((4,), 8, 3000, 128), ((2,), 3, 10, 8)]


@pytest.mark.parametrize("batch, m, n, a", CASES)
def test_auto_is_bitwise_the_path_it_picks(batch, m, n, a):
    """Same values and gradients as the explicit path auto picks (bit for bit: the same computation)."""
    q, h, v, p, _ = make_inputs(3, batch, batch, batch, m, n, a=a, dtype=jnp.float32)
    mask = make_mask(4, batch + (m, n))
    picked = auto_chunk_size(int(np.prod(batch)), m, n, a, jnp.float32)
    other = None if picked is not None else 4
    (val, ctx), grads = _loss("auto", mask)(q, h, v, p)
    (val_p, ctx_p), grads_p = _loss(picked, mask)(q, h, v, p)
    (val_o, ctx_o), grads_o = _loss(other, mask)(q, h, v, p)
    np.testing.assert_array_equal(ctx, ctx_p)
    for g, g_p in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_p)):
        np.testing.assert_array_equal(g, g_p)
    np.testing.assert_allclose(ctx, ctx_o, rtol=1e-5, atol=1e-6)  # and the other path agrees to rounding
    np.testing.assert_allclose(val, val_o, rtol=1e-5)
    for g, g_o in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_o)):
        np.testing.assert_allclose(g, g_o, atol=1e-5 * float(jnp.max(jnp.abs(g_o))))


def test_auto_is_the_default_and_vmap_sees_per_example_shapes():
    batch, m, n, a = (4,), 8, 3000, 128
    q, h, v, p, _ = make_inputs(5, batch, batch, batch, m, n, a=a, dtype=jnp.float32)
    default = jax.jit(lambda q, h, v: additive_attention(q, h, v, **p)[0])(q, h, v)
    auto = jax.jit(lambda q, h, v: additive_attention(q, h, v, **p, chunk_size="auto")[0])(q, h, v)
    np.testing.assert_array_equal(default, auto)
    # under vmap the rule sees one example (batch 1): that is the path it must take, bit for bit
    k1 = auto_chunk_size(1, m, n, a, jnp.float32)  # 1000, not the batched call's 250

    def grads(k):
        attend = jax.vmap(lambda q, h, v: additive_attention(q, h, v, **p, chunk_size=k)[0])
        return jax.jit(jax.grad(lambda q, h, v: jnp.sum(jnp.sin(attend(q, h, v))), argnums=(0, 1)))(q, h, v)

    for g, g1 in zip(grads("auto"), grads(k1)):
        np.testing.assert_array_equal(g, g1)


@pytest.mark.parametrize("shape", [(4, 32, 1024, 32, 64), (4, 1, 4096, 64, 128)], ids=["many-q", "one-q"])
def test_auto_gradients_match_float64(shape):
    args, cotangent = long_sum_inputs(*shape)
    assert_errors_within(gradient_errors_vs_float64(args, cotangent), 1e-6)  # default chunk_size="auto"


def _grads_of_sum(q, h, w, w_a, chunk_size):
    loss = lambda q, h, w, w_a: jnp.sum(
        jnp.sin(additive_attention(q, h, w_q=w, w_k=w, w_a=w_a, chunk_size=chunk_size)[0])
    )
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, h, w, w_a)


def _assert_grads_close(grads, ref):
    for g, g_ref in zip(grads, ref):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(g_ref))))


@pytest.mark.parametrize("m", [3, 20], ids=["few-queries", "many-queries"])  # both backward reductions
def test_chunked_large_projections_take_the_tanh_branch(m):
    """|q W_q|, |h W_k| above 40 with sums of a few units: e^{2x} e^{2y} would overflow or be clipped."""
    n, a = 12, 8
    rng = np.random.default_rng(0)
    w = jnp.asarray(50.0 * (1.0 + 0.1 * rng.random((1, a))), jnp.float32)
    q = jnp.ones((2, m, 1), jnp.float32)
    h = jnp.asarray(-(1.0 + 0.05 * rng.standard_normal((2, n, 1))), jnp.float32)
    w_a = jnp.asarray(rng.standard_normal(a), jnp.float32)
    run = lambda k: additive_attention(q, h, w_q=w, w_k=w, w_a=w_a, chunk_size=k)
    ctx, weights = run(4)
    ref_ctx, ref_weights = run(None)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ctx, ref_ctx, rtol=1e-4, atol=1e-6)
    _assert_grads_close(_grads_of_sum(q, h, w, w_a, 4), _grads_of_sum(q, h, w, w_a, None))


@pytest.mark.parametrize("m", [3, 20], ids=["few-queries", "many-queries"])
def test_chunked_gradients_where_the_exp_form_overflows_and_underflows(m):
    """Projections just inside EXP_FORM_LIMIT (the exp form's branch): e^{2x} e^{2y} is inf for x + y
    above ~44 (tanh 1) and 0 below ~-52 (tanh -1); the backward's 1 - tanh^2 = 4r(1 - r) must give 0 there,
    not inf * 0, and the gradients must equal the unchunked path's."""
    n, a = 12, 8
    rng = np.random.default_rng(1)
    w = jnp.asarray(36.0 + 2.0 * rng.random((1, a)), jnp.float32)  # |x|, |y| up to 38, under the limit 40
    q = jnp.asarray(rng.choice([-1.0, 1.0], (2, m, 1)) * (0.9 + 0.1 * rng.random((2, m, 1))), jnp.float32)
    h = jnp.asarray(rng.choice([-1.0, 1.0], (2, n, 1)) * (0.9 + 0.1 * rng.random((2, n, 1))), jnp.float32)
    w_a = jnp.asarray(rng.standard_normal(a), jnp.float32)
    pre = (q @ w)[:, :, None, :] + (h @ w)[:, None, :, :]
    assert float(jnp.max(pre)) > 50 and float(jnp.min(pre)) < -55 and float(jnp.min(jnp.abs(pre))) < 8
    _assert_grads_close(_grads_of_sum(q, h, w, w_a, 4), _grads_of_sum(q, h, w, w_a, None))
