"""The public API contract (docs/ARCHITECTURE.md): names importable from attn_jax, documented shapes."""

import jax
import jax.numpy as jnp

import attn_jax


def test_public_names_and_shapes():
    keys = jax.random.split(jax.random.key(0), 5)
    query = jax.random.normal(keys[0], (2, 3, 4, 5))
    feats = jax.random.normal(keys[1], (2, 1, 7, 6))
    w_q = jax.random.normal(keys[2], (5, 8))
    w_k = jax.random.normal(keys[3], (6, 8))
    w_a = jax.random.normal(keys[4], (8,))
    scores = attn_jax.additive_scores(query, feats, w_q, w_k, w_a)
    assert scores.shape == (2, 3, 4, 7)
    weights = attn_jax.masked_softmax(scores)
    assert weights.shape == (2, 3, 4, 7)
    assert attn_jax.attention_context(weights, feats).shape == (2, 3, 4, 6)
    context, weights2 = attn_jax.additive_attention(query, feats, w_q=w_q, w_k=w_k, w_a=w_a)
    assert context.shape == (2, 3, 4, 6)
    assert jnp.allclose(weights, weights2, atol=1e-6)
