"""Task losses that are not detection-specific (detection losses live in attn_jax.detection): segmentation
and reading."""

from attn_jax.losses.reading import (
    doubly_stochastic_penalty,
    sequence_cross_entropy,
    sequence_cross_entropy_sums,
    steps_up_to_end,
)
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
    "doubly_stochastic_penalty",
    "segmentation_cross_entropy",
    "segmentation_loss",
    "sequence_cross_entropy",
    "sequence_cross_entropy_sums",
    "steps_up_to_end",
]
