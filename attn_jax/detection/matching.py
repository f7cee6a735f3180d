"""IoU-based anchor-to-ground-truth assignment with padded ground truth (fixed shapes, jit/vmap-able)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.detection.boxes import DEFAULT_VARIANCES, encode_boxes, pairwise_iou


class Match(NamedTuple):
    """Per-anchor assignment. matched_gt (n,) int32 index into the gt boxes (meaningful where positive);
    positive / negative (n,) bool; anchors that are neither are ignored by the losses."""

    matched_gt: jnp.ndarray
    positive: jnp.ndarray
    negative: jnp.ndarray


class DetectionTargets(NamedTuple):
    """Training targets per anchor, leading dims (..., n): labels int32 class of the matched gt;
    box_targets (..., n, 4) encoded deltas; matched_boxes (..., n, 4) the gt boxes themselves (for GIoU);
    positive / negative bool (negatives train only the classifier, ignored anchors train nothing)."""

    labels: jnp.ndarray
    box_targets: jnp.ndarray
    matched_boxes: jnp.ndarray
    positive: jnp.ndarray
    negative: jnp.ndarray


def _check_thresholds(positive_threshold: float, negative_threshold: float) -> None:
    if not 0.0 <= negative_threshold <= positive_threshold <= 1.0:
        raise ValueError(
            "need 0 <= negative_threshold <= positive_threshold <= 1; got "
            f"negative_threshold={negative_threshold}, positive_threshold={positive_threshold}"
        )


def _check_gt_values(boxes: np.ndarray, labels: np.ndarray, valid: np.ndarray, num_classes: int | None):
    """Host-side check of the valid gt rows: labels in [0, num_classes) (>= 0 without it), finite boxes."""
    upper = np.inf if num_classes is None else num_classes
    bad = valid & ~((labels >= 0) & (labels < upper))
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        want = ">= 0" if num_classes is None else f"in [0, {num_classes})"
        raise ValueError(
            f"gt_labels holds {labels[at].item()!r} at valid gt {at}, want {want}: mark padded rows with "
            "gt_valid=False instead of a label value"
        )
    bad = valid & ~np.all(np.isfinite(boxes), axis=-1)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"gt_boxes holds {boxes[at].tolist()} at valid gt {at}: not finite")


def match_anchors(
    anchors: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    gt_valid: jnp.ndarray,
    positive_threshold: float = 0.5,
    negative_threshold: float = 0.4,
    force_best: bool = True,
) -> Match:
    """Match anchors (n, 4) to one example's padded gt_boxes (m, 4) with validity gt_valid (m,).

    Positive: best IoU with a valid gt >= positive_threshold; negative: < negative_threshold; in between
    is ignored. force_best: every valid gt with non-zero overlap also claims its highest-IoU anchor (ties
    and clashes go to the higher gt index), so small objects are never left without a positive.
    """
    _check_thresholds(positive_threshold, negative_threshold)
    if anchors.ndim != 2 or gt_boxes.ndim != 2 or gt_valid.shape != gt_boxes.shape[:1]:
        raise ValueError(
            "match_anchors wants anchors (n, 4), gt_boxes (m, 4), gt_valid (m,); got "
            f"{anchors.shape}, {gt_boxes.shape}, {gt_valid.shape}"
        )
    valid = gt_valid.astype(bool)
    iou = jnp.where(valid[None, :], pairwise_iou(anchors, gt_boxes), -1.0)  # (n, m)
    best_gt = jnp.argmax(iou, axis=1).astype(jnp.int32)
    best_iou = jnp.max(iou, axis=1)
    positive = best_iou >= positive_threshold
    negative = best_iou < negative_threshold
    if force_best:
        m = gt_boxes.shape[0]
        best_anchor = jnp.argmax(iou, axis=0)  # (m,)
        claims = valid & (jnp.max(iou, axis=0) > 0)
        forced = jnp.full(anchors.shape[0], -1, jnp.int32)
        forced = forced.at[best_anchor].max(jnp.where(claims, jnp.arange(m, dtype=jnp.int32), -1))
        best_gt = jnp.where(forced >= 0, forced, best_gt)
        positive = positive | (forced >= 0)
        negative = negative & (forced < 0)
    return Match(best_gt, positive, negative)


def assign_targets(
    anchors: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_valid: jnp.ndarray,
    positive_threshold: float = 0.5,
    negative_threshold: float = 0.4,
    force_best: bool = True,
    variances: Sequence[float] = DEFAULT_VARIANCES,
    num_classes: int | None = None,
) -> DetectionTargets:
    """Targets for anchors (n, 4) from gt_boxes (..., m, 4), gt_labels (..., m), gt_valid (..., m).

    Leading batch dims are vmapped; the data pipeline's batch['boxes'|'box_labels'|'box_valid'] fit as is.
    Padded gt rows (gt_valid False) may hold anything (the pipeline pads with zeros, -1 works as well).

    Args:
      anchors: (n, 4).
      gt_boxes: (..., m, 4) normalised (ymin, xmin, ymax, xmax).
      gt_labels: int (..., m), in [0, num_classes) where gt_valid.
      gt_valid: bool (..., m); False marks padding.
      positive_threshold, negative_threshold, force_best: as match_anchors.
      variances: box coding variances.
      num_classes: optional C, to check the labels' upper bound too (detection_loss checks it anyway).

    Returns:
      DetectionTargets with leading dims (..., n).

    Raises:
      ValueError: for shapes that disagree or bad thresholds; with concrete (untraced) inputs, also for a
        valid gt whose label is negative (or >= num_classes) or whose box holds NaN or Inf, naming it.
        Under jit these cannot be checked: an out-of-range label reaches detection_loss, which then
        returns NaN, and a non-finite box matches no anchor.
    """
    if gt_boxes.shape[:-1] != gt_labels.shape or gt_labels.shape != gt_valid.shape:
        raise ValueError(
            "gt_boxes (..., m, 4), gt_labels (..., m) and gt_valid (..., m) disagree: "
            f"{gt_boxes.shape}, {gt_labels.shape}, {gt_valid.shape}"
        )
    if not any(isinstance(x, jax.core.Tracer) for x in (gt_boxes, gt_labels, gt_valid)):
        _check_gt_values(np.asarray(gt_boxes), np.asarray(gt_labels), np.asarray(gt_valid, bool), num_classes)
    if gt_boxes.ndim > 2:
        fn = lambda b, lab, v: assign_targets(
            anchors, b, lab, v, positive_threshold, negative_threshold, force_best, variances
        )
        return jax.vmap(fn)(gt_boxes, gt_labels, gt_valid)
    match = match_anchors(anchors, gt_boxes, gt_valid, positive_threshold, negative_threshold, force_best)
    matched_boxes = gt_boxes[match.matched_gt]
    box_targets = encode_boxes(matched_boxes, anchors, variances)
    box_targets = jnp.where(match.positive[:, None], box_targets, 0.0)
    labels = gt_labels[match.matched_gt].astype(jnp.int32)
    return DetectionTargets(labels, box_targets, matched_boxes, match.positive, match.negative)
