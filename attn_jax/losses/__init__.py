"""Task losses that are not detection-specific (detection losses live in attn_jax.detection)."""

from attn_jax.losses.segmentation import dice_loss, segmentation_cross_entropy, segmentation_loss

__all__ = ["dice_loss", "segmentation_cross_entropy", "segmentation_loss"]
