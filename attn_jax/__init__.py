"""attn_jax: attention mechanisms for image understanding in JAX/Flax.

The pure functions below are the public, stable core (see DESIGN.md's API contract).
Subpackages: functional, kernels, nn, models, detection, metrics, data, train, viz.
"""

from attn_jax.functional import (
    additive_attention,
    additive_scores,
    attention_context,
    masked_softmax,
)

__version__ = "0.1.0"

__all__ = [
    "additive_attention",
    "additive_scores",
    "attention_context",
    "masked_softmax",
]
