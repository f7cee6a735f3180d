"""Segmentation metrics: confusion matrix (JAX, runs inside a jitted eval step), per-class IoU and mIoU."""

from __future__ import annotations

from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np


def confusion_matrix(
    pred: jnp.ndarray, target: jnp.ndarray, num_classes: int, ignore_index: int | None = 255, valid=None
) -> jnp.ndarray:
    """(C, C) int32 counts, rows = target class, columns = predicted class; jit-compatible.

    pred, target int (...) of one shape. Pixels whose target is ignore_index or outside [0, C), or where
    the optional bool `valid` (broadcastable, e.g. (b, 1, 1) for padded examples) is False, are not counted.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape; got {pred.shape} and {target.shape}")
    ok = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        ok &= target != ignore_index
    if valid is not None:
        ok &= jnp.broadcast_to(jnp.asarray(valid, bool), target.shape)
    pred_ok = jnp.clip(pred, 0, num_classes - 1)
    idx = jnp.where(ok, target * num_classes + pred_ok, 0).reshape(-1)
    counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[idx].add(ok.reshape(-1).astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> dict[str, float | np.ndarray]:
    """Per-class IoU = TP / (TP + FP + FN) (NaN for classes absent from both target and prediction),
    mIoU = their nan-mean, and pixel accuracy."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = np.where(union > 0, tp / union, np.nan)
    total = cm.sum()
    return {
        "mIoU": float(np.nanmean(per_class)) if np.any(union > 0) else float("nan"),
        "per_class_iou": per_class,
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
    }


@dataclass
class SegmentationEvaluator:
    """Sums confusion matrices over an eval set (from predictions or from in-step confusion_matrix); with
    nothing added, mIoU and pixel accuracy are NaN like every empty evaluator in attn_jax.metrics."""

    num_classes: int
    ignore_index: int | None = 255
    matrix: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.matrix is None:
            self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def add_confusion(self, cm) -> None:
        """Add a (C, C) confusion matrix (e.g. returned by a jitted eval step)."""
        cm = np.asarray(cm)
        if cm.shape != self.matrix.shape:
            raise ValueError(f"confusion matrix must be {self.matrix.shape}; got {cm.shape}")
        self.matrix += cm.astype(np.int64)

    def add_batch(self, pred, target, valid=None) -> None:
        """pred / target int (b, h, w); valid bool (b,) marks real (non-padding) examples."""
        pred, target = np.asarray(pred), np.asarray(target)
        if valid is not None:
            valid = np.asarray(valid, bool).reshape((-1,) + (1,) * (target.ndim - 1))
        self.add_confusion(confusion_matrix(pred, target, self.num_classes, self.ignore_index, valid))

    def result(self) -> dict[str, float | np.ndarray]:
        return iou_from_confusion(self.matrix)
