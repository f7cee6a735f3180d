"""Evaluation metrics: COCO / VOC detection AP (NumPy), segmentation IoU (confusion matrix) and attention
localisation (pointing game, energy inside the object)."""

from attn_jax.metrics.detection import (
    DetectionEvaluator,
    ImageRecord,
    coco_evaluate,
    voc_ap,
    voc_evaluate,
)
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
    "SegmentationEvaluator",
    "boxes_to_mask",
    "coco_evaluate",
    "confusion_matrix",
    "energy_inside",
    "iou_from_confusion",
    "pointing_game",
    "uniform_chance",
    "voc_ap",
    "voc_evaluate",
]
