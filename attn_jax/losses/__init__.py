"""Task losses that are not detection-specific (detection losses live in attn_jax.detection)."""

from attn_jax.losses.segmentation import (
    cross_entropy_sums,
    dice_from_sums,
    dice_loss,
    dice_sums,
    segmentation_cross_entropy,
    segmentation_loss,
)

__all__ = [
    "cross_entropy_sums",
    "dice_from_sums",
    "dice_loss",
    "dice_sums",
    "segmentation_cross_entropy",
    "segmentation_loss",
]
