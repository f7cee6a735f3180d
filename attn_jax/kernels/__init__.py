"""Fused Pallas kernels for additive attention (GPU/TPU; interpret mode on CPU)."""
