"""Chunked additive attention == unchunked (outputs and every gradient) and bounded intermediates."""

import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.functional import additive_attention
from tests._attention_inputs import make_inputs, make_mask

N = 10


def _outputs_and_grads(chunk_size, return_weights, mask, fully_masked="zero"):
    q, h, v, p, bias = make_inputs(7, (2,), (2,), (2,), 3, N, a=6, dtype=jnp.float32)

    def loss(q, h, v, p, bias):
        ctx, w = additive_attention(
            q, h, v, **p, bias=bias, mask=mask, chunk_size=chunk_size,
            fully_masked=fully_masked, return_weights=return_weights,
        )  # fmt: skip
        out = jnp.sum(jnp.sin(ctx))
        if return_weights:
            out = out + jnp.sum(w * jnp.cos(jnp.arange(N)))
        return out, (ctx, w)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(q, h, v, p, bias)


@pytest.mark.parametrize("chunk_size", [1, 3, N, N + 4])
@pytest.mark.parametrize("return_weights", [True, False])
def test_chunked_equals_unchunked(chunk_size, return_weights):
    mask = make_mask(8, (2, 3, N))
    (val, (ctx, w)), grads = _outputs_and_grads(chunk_size, return_weights, mask)
    (ref_val, (ref_ctx, ref_w)), ref_grads = _outputs_and_grads(None, return_weights, mask)
    np.testing.assert_allclose(ctx, ref_ctx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    assert (w is None) == (not return_weights)
    if return_weights:
        np.testing.assert_allclose(w, ref_w, rtol=1e-5, atol=1e-7)
    for g, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):  # q, h, v, w_a, w_k, w_q, bias
        scale = float(jnp.max(jnp.abs(ref)))
        np.testing.assert_allclose(g, ref, atol=1e-5 * scale)


@pytest.mark.parametrize("fully_masked", ["uniform", "nan"])
def test_chunked_fully_masked_modes(fully_masked):
    mask = make_mask(9, (2, 3, N))
    (_, (ctx, w)), grads = _outputs_and_grads(4, True, mask, fully_masked)
    (_, (ref_ctx, ref_w)), ref_grads = _outputs_and_grads(None, True, mask, fully_masked)
    np.testing.assert_allclose(ctx, ref_ctx, rtol=1e-5, atol=1e-6)  # NaN positions must agree too
    np.testing.assert_allclose(w, ref_w, rtol=1e-5, atol=1e-7)


def _max_intermediate(fn, *args):
    """Largest array (elements) produced by any equation of fn's jaxpr, sub-jaxprs included."""

    def walk(jaxpr):
        best = 0
        for eqn in jaxpr.eqns:
            for var in eqn.outvars:
                best = max(best, math.prod(getattr(var.aval, "shape", ())))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                best = max(best, walk(sub))
        return best

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def test_chunked_never_builds_the_m_n_a_tensor():
    b, m, n, d, a, k = 2, 8, 64, 4, 16, 8
    q, h, _, p, _ = make_inputs(10, (b,), (b,), (b,), m, n, d_q=d, d_k=d, a=a, dtype=jnp.float32)

    def fwd_bwd(chunk_size):
        loss = lambda q, h, p: jnp.sum(additive_attention(q, h, **p, chunk_size=chunk_size)[0])
        return jax.grad(loss, argnums=(0, 1, 2))

    full = b * m * n * a
    assert _max_intermediate(fwd_bwd(None), q, h, p) >= full  # the naive path does build it
    assert _max_intermediate(fwd_bwd(k), q, h, p) <= b * m * k * a  # one chunk at a time


@pytest.mark.parametrize(
    "batch, n, chunk_size",
    [(6, 9, 4), (5, 10, 3), (7, 5, 1), (4, 12, 30), (3, 20, 2)],
    ids=["2-examples-per-block", "1-per-block-prime-batch", "1-per-block", "whole-batch", "key-chunks"],
)
def test_one_query_blocks_of_whole_examples_equal_the_unchunked_path(batch, n, chunk_size, monkeypatch):
    # One query per example: the forward and the backward read whole examples per step (batch *
    # chunk_size // n of them, a divisor of the batch), or key chunks when one example exceeds the block
    # ("key-chunks").
    from attn_jax.functional import chunked

    blocks_seen = []
    real_bwd = chunked._one_query_bwd
    spy = lambda group, *a: blocks_seen.append(group) or real_bwd(group, *a)  # noqa: E731
    monkeypatch.setattr(chunked, "_one_query_bwd", spy)
    q, h, v, p, bias = make_inputs(3, (batch,), (batch,), (batch,), 1, n, dtype=jnp.float32)
    mask = make_mask(4, (batch, 1, n))

    def run(chunk):
        def loss(q, h, v, p, bias):
            ctx, w = additive_attention(q, h, v, **p, bias=bias, mask=mask, chunk_size=chunk)
            return jnp.sum(jnp.sin(ctx)) + jnp.sum(w * jnp.cos(jnp.arange(n))), (ctx, w)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(q, h, v, p, bias)

    (_, (ctx, w)), grads = run(chunk_size)
    (_, (ref_ctx, ref_w)), ref_grads = run(None)
    np.testing.assert_allclose(w, ref_w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ctx, ref_ctx, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    expected_group = {4: 2, 3: 1, 1: 1, 30: 4, 2: None}[chunk_size]
    assert blocks_seen == ([expected_group] if expected_group else [])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the layout XLA:CPU chose; other backends differ")
@pytest.mark.parametrize("chunk_size", ["auto", None])
def test_key_projection_gradient_needs_no_transposed_copy_of_the_key_gradient(chunk_size):
    """d w_k = keys^T @ d k_proj as one 2-D product: batched, XLA:CPU first copied d k_proj to (a, B*n)."""
    b, n, d, a = 2, 256, 16, 32
    k = jax.random.split(jax.random.key(0), 5)
    query, keys = jax.random.normal(k[0], (b, 1, d)), jax.random.normal(k[1], (b, n, d))
    w_q, w_k, w_a = (
        jax.random.normal(k[2], (d, a)),
        jax.random.normal(k[3], (d, a)),
        jax.random.normal(k[4], (a,)),
    )

    def loss(keys, w_k):
        context, _ = additive_attention(query, keys, keys, w_q=w_q, w_k=w_k, w_a=w_a, chunk_size=chunk_size)
        return jnp.sum(context)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(keys, w_k).compile().as_text()
    assert f"f32[{a},{b * n}]" not in compiled
