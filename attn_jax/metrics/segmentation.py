"""Segmentation metrics: confusion matrix (JAX, runs inside a jitted eval step), per-class IoU and mIoU.

Value rules (the same for `confusion_matrix`, `SegmentationEvaluator` and the losses in attn_jax.losses):
a pixel is *counted* when its example is valid and its target is not `ignore_index`. A counted pixel's
target and prediction must lie in [0, num_classes): called with concrete arrays (NumPy, or JAX arrays
outside jit) anything else is a ValueError naming the value. `ignore_index` is a target-only label: a
prediction equal to it is out of range like any other. Under jit the values cannot be checked; there a
counted pixel with an out-of-range prediction is a miss (never a hit), and one with an out-of-range target
is not counted, as documented in `confusion_matrix`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np


def _check_num_classes(num_classes) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")


def _traced(*arrays) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in arrays)


def _first_bad(name: str, values: np.ndarray, bad: np.ndarray, num_classes: int, extra: str = "") -> None:
    if bad.any():
        flat = values[bad]
        raise ValueError(
            f"{name} holds {flat[0].item()!r} at index {tuple(int(i) for i in np.argwhere(bad)[0])}, outside "
            f"[0, {num_classes}){extra}: {flat.size} such pixel(s), values {np.unique(flat)[:5].tolist()}"
        )


def check_segmentation_values(pred, target, num_classes: int, ignore_index: int | None = 255, valid=None):
    """Raise ValueError if a counted pixel's target or prediction lies outside [0, num_classes).

    Args:
      pred: int array (...) of predicted classes, concrete (not traced).
      target: int array of pred's shape; pixels equal to `ignore_index` are not counted.
      num_classes: C.
      ignore_index: target label of pixels that are not counted (None: none).
      valid: optional bool array broadcastable to target's shape; False marks padding, not counted.

    Raises:
      ValueError: naming the first out-of-range value and its index, e.g. ``pred holds 99 at index (0, 1)``.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    counted = np.ones(target.shape, bool)
    if valid is not None:
        counted &= np.broadcast_to(np.asarray(valid, bool), target.shape)
    if ignore_index is not None:
        counted &= target != ignore_index
    ignore = "" if ignore_index is None else f" and not ignore_index={ignore_index}"
    out_of_range = lambda x: ~((x >= 0) & (x < num_classes))  # NaN too
    _first_bad("target", target, counted & out_of_range(target), num_classes, ignore)
    _first_bad("pred", pred, counted & out_of_range(pred), num_classes)


def confusion_matrix(
    pred: jnp.ndarray, target: jnp.ndarray, num_classes: int, ignore_index: int | None = 255, valid=None
) -> jnp.ndarray:
    """Confusion matrix of per-pixel classes; jit-compatible, so it can run inside an eval step.

    Under jit the values cannot be checked. There a counted pixel whose target lies outside [0, C) is not
    counted, and one whose prediction lies outside [0, C) is counted as a miss: in its target's row, in
    column (target + 1) mod C (with C = 1, where no class is wrong, it is not counted). An out-of-range
    prediction is never a hit and never clipped onto a class.

    Args:
      pred: int (...) predicted classes.
      target: int (...) of ``pred``'s shape, target classes in [0, C) or ``ignore_index``.
      num_classes: C >= 1.
      ignore_index: target label of pixels that are not counted (None: every pixel counts).
      valid: optional bool, broadcastable to ``target`` (e.g. (b, 1, 1) for padded examples); False pixels
        are not counted and may hold anything.

    Returns:
      (C, C) int32 counts of the counted pixels (valid, target != ignore_index): rows are target classes,
      columns predicted classes.

    Raises:
      ValueError: mismatched shapes or a bad ``num_classes``; with concrete (untraced) inputs, also a
        counted pixel whose target or prediction lies outside [0, C), naming the value.

    Examples:
      >>> import numpy as np
      >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist()
      [[1, 1], [0, 1]]
    """
    _check_num_classes(num_classes)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape; got {pred.shape} and {target.shape}")
    if not _traced(pred, target, valid):
        check_segmentation_values(pred, target, num_classes, ignore_index, valid)
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    ok = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        ok &= target != ignore_index
    if valid is not None:
        ok &= jnp.broadcast_to(jnp.asarray(valid, bool), target.shape)
    pred_in_range = (pred >= 0) & (pred < num_classes)
    if num_classes == 1:
        ok &= pred_in_range
    column = jnp.where(pred_in_range, pred, (target + 1) % num_classes)
    idx = jnp.where(ok, target * num_classes + column, 0).reshape(-1)
    counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[idx].add(ok.reshape(-1).astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> dict[str, float | np.ndarray]:
    """Per-class IoU, mIoU and pixel accuracy from a confusion matrix.

    IoU_c = TP / (TP + FP + FN), NaN for a class absent from both target and prediction; mIoU is their
    NaN-mean.

    Args:
      cm: (C, C) counts, rows = target class, columns = predicted class (e.g. from `confusion_matrix`).

    Returns:
      {"mIoU": float, "per_class_iou": (C,) float64 NumPy array, "pixel_accuracy": float}; NaN when nothing
      is counted.

    Raises:
      ValueError: ``cm`` is not square.

    Examples:
      >>> import numpy as np
      >>> result = iou_from_confusion(np.array([[1, 1], [0, 1]]))
      >>> result["mIoU"], result["per_class_iou"].tolist(), round(result["pixel_accuracy"], 4)
      (0.5, [0.5, 0.5], 0.6667)
    """
    cm = np.asarray(cm, np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square (C, C) confusion matrix; got shape {cm.shape}")
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
    """Sums confusion matrices over an eval set; `result` gives per-class IoU, mIoU and pixel accuracy.

    Add predictions with `add_batch` (host side: a counted pixel's target or prediction outside
    [0, num_classes) is a ValueError naming the value, see the module docstring) or in-step matrices of
    `confusion_matrix` with `add_confusion`. With nothing added, mIoU and pixel accuracy are NaN like every
    empty evaluator in `attn_jax.metrics`.

    Args:
      num_classes: C.
      ignore_index: target label of pixels that are not counted (None: every pixel counts).
      matrix: the (C, C) int64 running sum (None: zeros).

    Raises:
      ValueError: ``num_classes`` is not a positive int.

    Examples:
      >>> import numpy as np
      >>> evaluator = SegmentationEvaluator(num_classes=2)
      >>> evaluator.add_confusion(np.array([[1, 1], [0, 1]]))  # e.g. from a jitted eval step
      >>> evaluator.add_confusion(np.array([[0, 0], [0, 2]]))
      >>> evaluator.matrix.tolist(), evaluator.result()["mIoU"]
      ([[1, 1], [0, 3]], 0.625)
    """

    num_classes: int
    ignore_index: int | None = 255
    matrix: np.ndarray = field(default=None)

    def __post_init__(self):
        _check_num_classes(self.num_classes)
        if self.matrix is None:
            self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def add_confusion(self, cm) -> None:
        """Add a (C, C) confusion matrix (e.g. returned by a jitted eval step).

        Args:
          cm: (C, C) non-negative whole counts.

        Raises:
          ValueError: a wrong shape, or counts that are negative or not whole numbers.
        """
        cm = np.asarray(cm)
        if cm.shape != self.matrix.shape:
            raise ValueError(f"confusion matrix must be {self.matrix.shape}; got {cm.shape}")
        if cm.size and (not np.all(np.isfinite(cm)) or np.any(cm < 0) or np.any(cm != np.round(cm))):
            raise ValueError(
                f"confusion matrix counts must be non-negative whole numbers; got min {cm.min().item()!r} "
                f"(dtype {cm.dtype})"
            )
        self.matrix += cm.astype(np.int64)

    def add_batch(self, pred, target, valid=None) -> None:
        """Add a batch of predictions.

        Args:
          pred: int (b, h, w) predicted classes.
          target: int (b, h, w) target classes in [0, num_classes) or ``ignore_index``.
          valid: optional (b,) bool; False marks padding examples, which are not counted.

        Raises:
          ValueError: a counted pixel's target or prediction lies outside [0, num_classes).
        """
        pred, target = np.asarray(pred), np.asarray(target)
        if valid is not None:
            valid = np.asarray(valid, bool).reshape((-1,) + (1,) * (target.ndim - 1))
        self.add_confusion(confusion_matrix(pred, target, self.num_classes, self.ignore_index, valid))

    def result(self) -> dict[str, float | np.ndarray]:
        """The metrics of the matrix so far: `iou_from_confusion` of it.

        Returns:
          {"mIoU": float, "per_class_iou": (C,) float64, "pixel_accuracy": float}.
        """
        return iou_from_confusion(self.matrix)
