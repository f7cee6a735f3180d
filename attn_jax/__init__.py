"""attn_jax: attention mechanisms for image understanding in JAX/Flax.

The pure functions below are the public, stable core (docs/ARCHITECTURE.md, "Public API contract").
Subpackages: functional, kernels, nn, models, detection, losses, metrics, data, train, viz.
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
