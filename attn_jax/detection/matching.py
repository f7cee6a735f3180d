"""IoU-based anchor-to-ground-truth assignment with padded ground truth (fixed shapes, jit/vmap-able)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.detection.boxes import DEFAULT_VARIANCES, encode_boxes, pairwise_iou


class Match(NamedTuple):
    """Per-anchor assignment of one example, as `match_anchors` returns it.

    Anchors that are neither positive nor negative are ignored by the losses.
    """

    matched_gt: jnp.ndarray
    """(n,) int32 index of each anchor's gt box (meaningful where ``positive``)."""
    positive: jnp.ndarray
    """(n,) bool, the anchors that train class and box."""
    negative: jnp.ndarray
    """(n,) bool, the anchors that train the classifier as background."""


class DetectionTargets(NamedTuple):
    """Training targets per anchor, as `assign_targets` returns them; leading dims (..., n)."""

    labels: jnp.ndarray
    """(..., n) int32 class of the matched gt box (read only where ``positive``)."""
    box_targets: jnp.ndarray
    """(..., n, 4) encoded deltas of the matched box (zero where not ``positive``)."""
    matched_boxes: jnp.ndarray
    """(..., n, 4) the matched gt boxes themselves (for the GIoU loss)."""
    positive: jnp.ndarray
    """(..., n) bool, the anchors that train class and box."""
    negative: jnp.ndarray
    """(..., n) bool, the anchors that train only the classifier, as background (anchors that are neither
    positive nor negative train nothing)."""


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
    """Match anchors to one example's padded ground-truth boxes by IoU.

    An anchor is positive when its best IoU with a valid gt box is >= ``positive_threshold``, negative
    when it is < ``negative_threshold``, ignored in between. With ``force_best`` every valid gt box with
    non-zero overlap also claims its highest-IoU anchor (ties and clashes go to the higher gt index), so
    small objects are never left without a positive.

    Args:
      anchors: (n, 4) anchors (ymin, xmin, ymax, xmax).
      gt_boxes: (m, 4) gt boxes, padded.
      gt_valid: (m,) bool; False marks padding.
      positive_threshold: IoU from which an anchor is positive.
      negative_threshold: IoU below which an anchor is negative.
      force_best: let every gt box claim its best anchor.

    Returns:
      `Match` with (n,) fields.

    Raises:
      ValueError: the shapes are not (n, 4), (m, 4), (m,), or not 0 <= negative_threshold <=
        positive_threshold <= 1.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> anchors = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
      >>> match = jax.jit(match_anchors)(anchors, jnp.array([[0.0, 0.0, 0.5, 0.6]]), jnp.array([True]))
      >>> match.positive.tolist(), match.negative.tolist(), match.matched_gt.tolist()
      ([True, False], [False, True], [0, 0])
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
    """Training targets for every anchor from padded ground truth, batched.

    Leading batch dims are vmapped; the data pipeline's ``batch["boxes"]``, ``batch["box_labels"]`` and
    ``batch["box_valid"]`` fit as they are. Padded gt rows (``gt_valid`` False) may hold anything (the
    pipeline pads with zeros; -1 works as well).

    Args:
      anchors: (n, 4) anchors (ymin, xmin, ymax, xmax), e.g. from `generate_anchors`.
      gt_boxes: (..., m, 4) normalised gt boxes (ymin, xmin, ymax, xmax).
      gt_labels: int (..., m), in [0, num_classes) where ``gt_valid``.
      gt_valid: bool (..., m); False marks padding.
      positive_threshold: as `match_anchors`.
      negative_threshold: as `match_anchors`.
      force_best: as `match_anchors`.
      variances: box coding variances (see `encode_boxes`).
      num_classes: optional C, to check the labels' upper bound too (`detection_loss` checks it anyway).

    Returns:
      `DetectionTargets` with leading dims (..., n).

    Raises:
      ValueError: the shapes disagree or the thresholds are bad; with concrete (untraced) inputs, also a
        valid gt whose label is negative (or >= ``num_classes``) or whose box holds NaN or Inf, naming it.
        Under jit these cannot be checked: an out-of-range label reaches `detection_loss`, which then
        returns NaN, and a non-finite box matches no anchor.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.detection import generate_anchors
      >>> anchors = generate_anchors((2, 2), stride=8, sizes=(8,))  # 4 anchors over a 16x16 image
      >>> boxes = jnp.array([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]])  # (b, m, 4), row 2: padding
      >>> targets = jax.jit(assign_targets)(anchors, boxes, jnp.array([[3, -1]]), jnp.array([[True, False]]))
      >>> targets.positive.tolist(), targets.labels[0, 0].item()
      ([[True, False, False, False]], 3)
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
