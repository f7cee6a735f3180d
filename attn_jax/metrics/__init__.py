"""Evaluation metrics: COCO / VOC detection AP (NumPy), segmentation IoU (confusion matrix) and attention
localisation (pointing game, energy inside the object), and the faithfulness of saliency maps (deletion /
insertion curves, Average Drop / Increase in Confidence, randomization checks), reading (edit distance,
character error rate, sequence accuracy, the per-step pointing game), and Student-t intervals of a metric
over training seeds."""

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
from attn_jax.metrics.reading import (
    ReadingStats,
    character_error_rate,
    edit_distance,
    edit_distances,
    sequence_accuracy,
    sequence_matches,
    step_pointing_game,
    strip_end,
)
from attn_jax.metrics.segmentation import SegmentationEvaluator, confusion_matrix, iou_from_confusion

__all__ = [
    "DetectionEvaluator",
    "ImageRecord",
    "LocalizationStats",
    "PairedDifference",
    "ReadingStats",
    "SeedInterval",
    "SegmentationEvaluator",
    "average_drop",
    "boxes_to_mask",
    "character_error_rate",
    "coco_evaluate",
    "confusion_matrix",
    "curve_auc",
    "deletion_auc",
    "deletion_curve",
    "edit_distance",
    "edit_distances",
    "energy_inside",
    "increase_in_confidence",
    "insertion_auc",
    "insertion_curve",
    "iou_from_confusion",
    "paired_difference",
    "pointing_game",
    "randomization_check",
    "seed_interval",
    "sequence_accuracy",
    "sequence_matches",
    "spearman",
    "step_pointing_game",
    "strip_end",
    "uniform_chance",
    "voc_ap",
    "voc_evaluate",
]
