"""Greedy non-maximum suppression and detection post-processing in JAX with fixed output sizes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from attn_jax.detection.boxes import DEFAULT_VARIANCES, decode_boxes, pairwise_iou


class Detections(NamedTuple):
    """Fixed-size detections sorted by descending score, as `postprocess` returns them."""

    boxes: jnp.ndarray
    """(..., k, 4) boxes (ymin, xmin, ymax, xmax); zeros in padding rows."""
    scores: jnp.ndarray
    """(..., k) sigmoid scores; 0 in padding rows."""
    classes: jnp.ndarray
    """(..., k) int32 classes; 0 in padding rows."""
    valid: jnp.ndarray
    """(..., k) bool; False marks padding."""


def nms_keep(
    boxes: jnp.ndarray,
    scores: jnp.ndarray,
    iou_threshold: float = 0.5,
    valid: jnp.ndarray | None = None,
    classes: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Greedy NMS: boxes (k, 4), scores (k,) -> keep (k,) bool.

    In descending score order (ties: lower index first), a box is kept unless a kept box of the same
    class (all one class when classes is None) overlaps it with IoU > iou_threshold. Invalid boxes are
    never kept and never suppress; a box with a NaN or infinite coordinate, or a NaN score, counts as
    invalid (so NaN never becomes a detection, under jit too).

    Args:
      boxes: (k, 4) (ymin, xmin, ymax, xmax); k may be 0.
      scores: (k,).
      iou_threshold: suppress at IoU strictly above this.
      valid: optional (k,) bool; False rows are never kept and never suppress.
      classes: optional (k,) int; boxes only suppress boxes of their own class.

    Returns:
      keep (k,) bool (an empty array for k = 0).

    Raises:
      ValueError: if the shapes disagree.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> boxes = jnp.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.9], [0.0, 0.0, 0.1, 0.1]])
      >>> jax.jit(nms_keep)(boxes, jnp.array([0.9, 0.8, 0.7])).tolist()  # box 1 overlaps box 0: IoU 0.9
      [True, False, True]
    """
    k = boxes.shape[0] if boxes.ndim else 0
    if boxes.shape != (k, 4) or scores.shape != (k,):
        raise ValueError(f"nms_keep wants boxes (k, 4) and scores (k,); got {boxes.shape}, {scores.shape}")
    for name, x in (("valid", valid), ("classes", classes)):
        if x is not None and x.shape != (k,):
            raise ValueError(f"nms_keep wants {name} of shape ({k},); got {x.shape}")
    if k == 0:
        return jnp.zeros(0, bool)
    valid = jnp.ones(k, bool) if valid is None else valid.astype(bool)
    valid = valid & ~jnp.isnan(scores) & jnp.all(jnp.isfinite(boxes), axis=-1)
    order = jnp.argsort(-scores, stable=True)
    sboxes, svalid = boxes[order], valid[order]
    overlap = pairwise_iou(sboxes, sboxes) > iou_threshold
    if classes is not None:
        scls = classes[order]
        overlap = overlap & (scls[:, None] == scls[None, :])

    def body(i, keep):
        suppressed = jnp.any(keep & overlap[i])
        return keep.at[i].set(svalid[i] & ~suppressed)

    keep_sorted = jax.lax.fori_loop(0, k, body, jnp.zeros(k, bool))
    return jnp.zeros(k, bool).at[order].set(keep_sorted)


def _select(boxes, scores, classes, keep, max_detections: int) -> Detections:
    """The kept rows in descending score order, padded to max_detections."""
    ranked = jnp.where(keep, scores, -jnp.inf)
    top_scores, idx = jax.lax.top_k(ranked, max_detections)
    ok = jnp.isfinite(top_scores)
    return Detections(
        jnp.where(ok[:, None], boxes[idx], 0.0),
        jnp.where(ok, top_scores, 0.0),
        jnp.where(ok, classes[idx], 0).astype(jnp.int32),
        ok,
    )


def postprocess(
    cls_logits: jnp.ndarray,
    box_deltas: jnp.ndarray,
    anchors: jnp.ndarray,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    pre_nms_top_k: int = 1000,
    max_detections: int = 100,
    variances: Sequence[float] = DEFAULT_VARIANCES,
    clip: bool = True,
) -> Detections:
    """Detections from a detector's outputs: top-k candidates, box decoding, per-class NMS.

    Sigmoid scores over all (anchor, class) pairs; the ``pre_nms_top_k`` best above ``score_threshold``
    are decoded (clipped to [0, 1] if ``clip``), suppressed per class (`nms_keep`), and the
    ``max_detections`` best kept. Leading batch dims are vmapped. Non-finite model outputs never become
    detections, under jit too: a NaN logit is never a candidate (it takes no ``pre_nms_top_k`` slot), and a
    candidate whose box deltas or decoded box hold NaN or Inf is invalid (before clipping, which would
    otherwise turn an infinite coordinate into 0 or 1).

    Args:
      cls_logits: (..., n, C) class logits per anchor.
      box_deltas: (..., n, 4) predicted deltas (dy, dx, dh, dw).
      anchors: (n, 4) anchors, a JAX or NumPy array (`generate_anchors`'s works as is).
      score_threshold: candidates need a score above this.
      iou_threshold: NMS suppresses a box at IoU above this with a kept box of its class.
      pre_nms_top_k: candidates taken before NMS (at most n * C).
      max_detections: k, the fixed number of output rows.
      variances: box coding variances (see `decode_boxes`).
      clip: clip the boxes to [0, 1].

    Returns:
      `Detections` with leading dims (..., max_detections).

    Raises:
      ValueError: the shapes disagree, or ``max_detections`` exceeds min(pre_nms_top_k, n * C).

    Examples:
      >>> import functools, jax, jax.numpy as jnp
      >>> from attn_jax.detection import generate_anchors
      >>> anchors = generate_anchors((2, 2), stride=8, sizes=(8,))  # n = 4
      >>> logits = jnp.full((1, 4, 3), -9.0).at[0, 2, 1].set(9.0)  # anchor 2 is class 1
      >>> detect = jax.jit(functools.partial(postprocess, anchors=anchors, max_detections=2))
      >>> dets = detect(logits, jnp.zeros((1, 4, 4)))
      >>> dets.valid.tolist(), dets.classes[0, 0].item(), dets.boxes[0, 0].tolist()
      ([[True, False]], 1, [0.5, 0.0, 1.0, 0.5])
    """
    anchors = jnp.asarray(anchors)
    if cls_logits.ndim > 2:
        fn = lambda c, d: postprocess(
            c, d, anchors, score_threshold, iou_threshold, pre_nms_top_k, max_detections, variances, clip
        )
        return jax.vmap(fn)(cls_logits, box_deltas)
    n, c = cls_logits.shape
    if anchors.shape != (n, 4) or box_deltas.shape != (n, 4):
        raise ValueError(
            f"cls_logits (n, C)={cls_logits.shape} needs box_deltas and anchors of shape ({n}, 4); "
            f"got {box_deltas.shape}, {anchors.shape}"
        )
    k = min(pre_nms_top_k, n * c)
    if max_detections > k:
        raise ValueError(f"max_detections={max_detections} exceeds the {k} candidates (pre_nms_top_k, n*C)")
    probs = jax.nn.sigmoid(cls_logits.astype(jnp.float32)).reshape(-1)
    scores, flat = jax.lax.top_k(jnp.where(jnp.isnan(probs), -jnp.inf, probs), k)  # NaN: never a candidate
    anchor_idx, classes = flat // c, (flat % c).astype(jnp.int32)
    deltas = box_deltas[anchor_idx].astype(jnp.float32)
    boxes = decode_boxes(deltas, anchors[anchor_idx], variances)
    finite = jnp.all(jnp.isfinite(deltas), axis=-1) & jnp.all(jnp.isfinite(boxes), axis=-1)
    if clip:
        boxes = jnp.clip(boxes, 0.0, 1.0)
    keep = nms_keep(boxes, scores, iou_threshold, (scores > score_threshold) & finite, classes)
    return _select(boxes, scores, classes, keep, max_detections)
