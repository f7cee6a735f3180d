"""Additive attention core (unchunked and chunked) against the float64 NumPy reference of the formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from attn_jax.functional import additive_attention, additive_scores
from tests._attention_inputs import make_inputs, make_mask
from tests._attention_reference import reference_attention

# (query batch, keys batch, values batch, mask shape or None, m, n)
CASES = [
    ((), (), (), None, 3, 7),
    ((2,), (2,), (2,), (2, 3, 7), 3, 7),
    ((2, 3), (1, 3), (2, 1), (3, 1, 5), 2, 5),  # leading dims broadcast, mask broadcast over queries
    ((4,), (4,), (4,), (4, 2, 9), 2, 9),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("fully_masked", ["zero", "uniform", "nan"])
def test_matches_float64_reference(case, chunk_size, fully_masked):
    qb, kb, vb, mask_shape, m, n = CASES[case]
    with jax.enable_x64(True):
        q, h, v, p, bias = make_inputs(case, qb, kb, vb, m, n)
        mask = None if mask_shape is None else make_mask(case, mask_shape)
        fn = lambda q, h, v, p, bias, mask: additive_attention(
            q, h, v, **p, bias=bias, mask=mask, chunk_size=chunk_size, fully_masked=fully_masked
        )
        ctx, w = jax.jit(fn)(q, h, v, p, bias, mask)
        ref_ctx, ref_w = reference_attention(q, h, v, **p, bias=bias, mask=mask, fully_masked=fully_masked)
    assert ctx.dtype == jnp.float64 and w.shape == ref_w.shape and ctx.shape == ref_ctx.shape
    np.testing.assert_allclose(w, ref_w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ctx, ref_ctx, rtol=1e-10, atol=1e-12)


def test_float32_relative_error_and_default_values():
    q, h, _, p, _ = make_inputs(0, (2,), (2,), (2,), 4, 33, d_k=6, d_v=6, dtype=jnp.float32)
    ref_ctx, ref_w = reference_attention(q, h, h, **p)
    for chunk_size in (None, 8):
        ctx, w = additive_attention(q, h, **p, chunk_size=chunk_size)  # values default to keys
        assert ctx.dtype == jnp.float32
        assert np.linalg.norm(ctx - ref_ctx) / np.linalg.norm(ref_ctx) < 1e-6
        assert np.linalg.norm(w - ref_w) / np.linalg.norm(ref_w) < 1e-6


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_jit_equals_eager_and_vmap_equals_loop(chunk_size):
    q, h, v, p, bias = make_inputs(1, (3,), (3,), (3,), 2, 10, dtype=jnp.float32)
    mask = make_mask(1, (3, 2, 10))
    fn = lambda q, h, v, mask: additive_attention(q, h, v, **p, bias=bias, mask=mask, chunk_size=chunk_size)
    eager = fn(q, h, v, mask)
    jitted = jax.jit(fn)(q, h, v, mask)
    mapped = jax.vmap(fn)(q, h, v, mask)
    looped = [jax.jit(fn)(q[i], h[i], v[i], mask[i]) for i in range(3)]
    # XLA may fuse and order the float32 sums differently under jit and vmap: a few ulps of the
    # largest value (atol 1e-6) separate them; a batch mix-up or a dropped term is off by O(0.1).
    for i in range(2):
        np.testing.assert_allclose(jitted[i], eager[i], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(mapped[i], np.stack([r[i] for r in looped]), rtol=1e-6, atol=1e-6)


def _loss_fn(mask, chunk_size, fully_masked, v):
    def loss(q, h, w_q, w_k, w_a, bias):
        ctx, w = additive_attention(
            q, h, v, w_q=w_q, w_k=w_k, w_a=w_a, bias=bias, mask=mask,
            chunk_size=chunk_size, fully_masked=fully_masked,
        )  # fmt: skip
        return jnp.sum(jnp.sin(ctx)) + jnp.sum(w * jnp.cos(jnp.arange(w.shape[-1])))

    return loss


def test_check_grads_unchunked_order2_fwd_rev():
    with jax.enable_x64(True):
        q, h, v, p, bias = make_inputs(2, (2,), (2,), (2,), 3, 5, a=4)
        loss = _loss_fn(make_mask(2, (2, 3, 5)), None, "uniform", v)
        check_grads(jax.jit(loss), (q, h, p["w_q"], p["w_k"], p["w_a"], bias), order=2, modes=["fwd", "rev"])


@pytest.mark.parametrize("m", [3, 16])  # the backward shares tanh below 16 queries, recomputes it from 16
def test_check_grads_chunked_rev(m):
    # The chunked path is a jax.custom_vjp: reverse mode only (JAX defines no JVP for custom_vjp
    # functions, so forward mode raises). Its backward is ordinary JAX, so reverse-over-reverse
    # (order 2) works too.
    with jax.enable_x64(True):
        q, h, v, p, bias = make_inputs(3, (2,), (2,), (2,), m, 7, a=4)
        loss = _loss_fn(make_mask(3, (2, m, 7)), 3, "zero", v)
        check_grads(jax.jit(loss), (q, h, p["w_q"], p["w_k"], p["w_a"], bias), order=2, modes=["rev"])


# Worst errors measured over seeds 0-9 (B=2, m=3, n=12), about 3x below these: bf16 weights 1.8e-3,
# context 3.2e-3 and gradients 3.0e-3 (relative to the largest entry); fp16 2.2e-4, 4.2e-4, 4.4e-4.
# Both are the rounding of float32-accumulated results to the output dtype (half an ulp).
MIXED_TOL = {
    jnp.bfloat16: dict(weights=6e-3, context=1e-2, grads=1e-2),
    jnp.float16: dict(weights=8e-4, context=1.5e-3, grads=1.5e-3),
}


def _plain_context(q, h, v, p, bias):
    """c = softmax_i(w_a . tanh(q W_q + h_i W_k + b)) @ v in plain jnp (Bahdanau et al. 2015)."""
    hidden = (q @ p["w_q"] + bias)[..., :, None, :] + (h @ p["w_k"])[..., None, :, :]
    return jax.nn.softmax(jnp.tanh(hidden) @ p["w_a"], axis=-1) @ v


def _relative_max_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("seed", [4])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_mixed_precision(dtype, chunk_size, seed):
    tol, where = MIXED_TOL[dtype], f"{jnp.dtype(dtype).name}, chunk_size={chunk_size}, seed {seed}"
    args = tuple(
        jax.tree.map(lambda x: x.astype(dtype), t)
        for t in make_inputs(seed, (2,), (2,), (2,), 3, 12, dtype=jnp.float32)
    )
    fn = lambda q, h, v, p, bias: additive_attention(q, h, v, **p, bias=bias, chunk_size=chunk_size)
    ctx, w = jax.jit(fn)(*args)
    assert ctx.dtype == dtype and w.dtype == dtype
    q, h, v, p, bias = args
    ref_ctx, ref_w = reference_attention(q, h, v, **p, bias=bias)  # exact math on the rounded inputs
    np.testing.assert_allclose(
        np.asarray(w, np.float64), ref_w, rtol=0, atol=tol["weights"], equal_nan=False, err_msg=where
    )
    error = _relative_max_error(ctx, ref_ctx)
    assert error <= tol["context"], f"{where}: context relative error {error}"
    # Gradients of every input against float64 autodiff of the formula written out plainly (below), on
    # the same rounded inputs: independent of the library's backward passes.
    low = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)[0].astype(jnp.float32)), argnums=(0, 1, 2, 3, 4)))(*args)
    with jax.enable_x64(True):
        args64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), args)
        ref = jax.grad(lambda *a: jnp.sum(_plain_context(*a)), argnums=(0, 1, 2, 3, 4))(*args64)
    errors = {}
    for (path, g), g64 in zip(jax.tree_util.tree_leaves_with_path(low), jax.tree.leaves(ref)):
        assert g.dtype == dtype, f"{where}: gradient {jax.tree_util.keystr(path)} is {g.dtype}"
        errors[jax.tree_util.keystr(path)] = _relative_max_error(g, g64)
    bad = {k: e for k, e in errors.items() if not (np.isfinite(e) and e <= tol["grads"])}
    assert not bad, f"{where}: gradients off by more than {tol['grads']} (relative): {bad}"


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_fully_masked_zero_has_finite_gradients(chunk_size):
    q, h, v, p, _ = make_inputs(5, (), (), (), 2, 6, dtype=jnp.float32)
    mask = jnp.zeros((2, 6), bool)
    loss = lambda q, h, v: jnp.sum(additive_attention(q, h, v, **p, mask=mask, chunk_size=chunk_size)[0])
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, h, v)
    assert all(bool(jnp.all(g == 0)) for g in grads)


def test_additive_scores_matches_reference_logits():
    with jax.enable_x64(True):
        q, h, _, p, bias = make_inputs(6, (2,), (2,), (2,), 3, 4)
        s = additive_scores(q, h, p["w_q"], p["w_k"], p["w_a"], bias=bias)
        qp = np.asarray(q) @ np.asarray(p["w_q"]) + np.asarray(bias)
        kp = np.asarray(h) @ np.asarray(p["w_k"])
        ref = np.tanh(qp[:, :, None, :] + kp[:, None, :, :]) @ np.asarray(p["w_a"])
        np.testing.assert_allclose(s, ref, rtol=1e-12)
