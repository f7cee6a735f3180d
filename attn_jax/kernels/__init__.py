"""Fused Pallas kernels for additive attention (Triton on GPU; interpret mode elsewhere)."""

from attn_jax.kernels.additive_pallas import pallas_additive_attention

__all__ = ["pallas_additive_attention"]
