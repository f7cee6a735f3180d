"""Fused Pallas kernels for additive attention, chosen when the program is lowered: Triton on GPU
(`additive_pallas`), Mosaic on TPU (`additive_tpu`), a Pallas interpreter elsewhere."""

from attn_jax.kernels.additive_pallas import pallas_additive_attention
from attn_jax.kernels.additive_tpu import tpu_additive_attention

__all__ = ["pallas_additive_attention", "tpu_additive_attention"]
