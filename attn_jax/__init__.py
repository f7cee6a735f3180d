"""attn_jax: attention mechanisms for image understanding in JAX/Flax.

The pure functions exported here (from `attn_jax.functional`) are the public, stable core
(docs/ARCHITECTURE.md, "Public API contract"). Subpackages: functional, kernels, nn, models, detection,
losses, metrics, data, train, viz; `attn_jax.nn` and `attn_jax.models` are imported with the package.

Examples:
  Additive attention of one query over a 4x4 grid of 8-channel features:

  >>> import jax.numpy as jnp
  >>> import attn_jax
  >>> q, h = jnp.ones((2, 1, 8)), jnp.ones((2, 16, 8))  # (batch, m, d_q), (batch, n, d_k)
  >>> w_q, w_k, w_a = jnp.ones((8, 4)), jnp.ones((8, 4)), jnp.ones((4,))
  >>> context, weights = attn_jax.additive_attention(q, h, w_q=w_q, w_k=w_k, w_a=w_a)
  >>> context.shape, weights.shape, float(weights.sum())
  ((2, 1, 8), (2, 1, 16), 2.0)
"""

from attn_jax import models, nn
from attn_jax.functional import (
    PallasUnavailableError,
    additive_attention,
    additive_scores,
    attention_context,
    dot_product_attention,
    dot_product_scores,
    general_scores,
    masked_softmax,
)

__version__ = "0.1.0"

__all__ = [
    "PallasUnavailableError",
    "additive_attention",
    "additive_scores",
    "attention_context",
    "dot_product_attention",
    "dot_product_scores",
    "general_scores",
    "masked_softmax",
    "models",
    "nn",
]
