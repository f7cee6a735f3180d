"""Evaluation metrics: COCO / VOC detection AP (NumPy), segmentation IoU (confusion matrix) and attention
localisation (pointing game, energy inside the object), and the faithfulness of saliency maps (deletion /
insertion curves, Average Drop / Increase in Confidence, randomization checks), and Student-t intervals of a
metric over training seeds."""

from attn_jax.metrics.detection import (
    DetectionEvaluator,
    ImageRecord,
    coco_evaluate,
    voc_ap,
    voc_evaluate,
)
from attn_jax.metrics.faithfulness import (
    average_drop,
    curve_auc,
    deletion_auc,
    deletion_curve,
    increase_in_confidence,
    insertion_auc,
    insertion_curve,
    randomization_check,
    spearman,
)
from attn_jax.metrics.intervals import PairedDifference, SeedInterval, paired_difference, seed_interval
from attn_jax.metrics.localization import (
    LocalizationStats,
    boxes_to_mask,
    energy_inside,
    pointing_game,
    uniform_chance,
)
from attn_jax.metrics.segmentation import SegmentationEvaluator, confusion_matrix, iou_from_confusion

__all__ = [
    "DetectionEvaluator",
    "ImageRecord",
    "LocalizationStats",
    "PairedDifference",
    "SeedInterval",
    "SegmentationEvaluator",
    "average_drop",
    "boxes_to_mask",
    "coco_evaluate",
    "confusion_matrix",
    "curve_auc",
    "deletion_auc",
    "deletion_curve",
    "energy_inside",
    "increase_in_confidence",
    "insertion_auc",
    "insertion_curve",
    "iou_from_confusion",
    "paired_difference",
    "pointing_game",
    "randomization_check",
    "seed_interval",
    "spearman",
    "uniform_chance",
    "voc_ap",
    "voc_evaluate",
]
