"""Evaluation metrics: COCO / VOC detection AP (NumPy) and segmentation IoU (confusion matrix)."""

from attn_jax.metrics.detection import (
    DetectionEvaluator,
    ImageRecord,
    coco_evaluate,
    voc_ap,
    voc_evaluate,
)
from attn_jax.metrics.segmentation import SegmentationEvaluator, confusion_matrix, iou_from_confusion

__all__ = [
    "DetectionEvaluator",
    "ImageRecord",
    "SegmentationEvaluator",
    "coco_evaluate",
    "confusion_matrix",
    "iou_from_confusion",
    "voc_ap",
    "voc_evaluate",
]
