"""Detection losses: sigmoid focal loss for classes, smooth-L1 or GIoU for boxes, normalised by positives."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attn_jax.detection.boxes import DEFAULT_VARIANCES, decode_boxes, elementwise_giou
from attn_jax.detection.matching import DetectionTargets

BOX_LOSSES = ("smooth_l1", "giou")


def smooth_l1(pred: jnp.ndarray, target: jnp.ndarray, beta: float = 1.0 / 9.0) -> jnp.ndarray:
    """Elementwise smooth-L1: 0.5 x**2 / beta for |x| < beta, else |x| - 0.5 beta (optax Huber / beta)."""
    if beta <= 0:
        return jnp.abs(pred - target)
    return optax.huber_loss(pred, target, delta=beta) / beta


def focal_loss(
    logits: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray, alpha: float = 0.25, gamma: float = 2.0
) -> jnp.ndarray:
    """Summed sigmoid focal loss. logits (..., n, C); labels (..., n, C) 0/1; valid (..., n) bool."""
    per = optax.sigmoid_focal_loss(logits.astype(jnp.float32), labels, alpha=alpha, gamma=gamma)
    return jnp.sum(jnp.where(valid[..., None], per, 0.0))


def detection_loss(
    cls_logits: jnp.ndarray,
    box_deltas: jnp.ndarray,
    anchors: jnp.ndarray,
    targets: DetectionTargets,
    box_loss: str = "smooth_l1",
    box_weight: float = 1.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    beta: float = 1.0 / 9.0,
    variances: Sequence[float] = DEFAULT_VARIANCES,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Focal + box loss over a batch, each summed then divided by max(1, number of positive anchors).

    cls_logits (b, n, C), box_deltas (b, n, 4), anchors (n, 4), targets from assign_targets (b, n, ...).
    Returns (total, {"cls_loss", "box_loss", "num_positives"}).

    A positive anchor's label must lie in [0, C). With concrete (untraced) targets anything else is a
    ValueError naming the value; under jit it makes cls_loss and the total NaN, so a training loop's
    non-finite-loss check stops on it (one_hot would otherwise train that anchor as background).
    Labels of anchors that are not positive are never read.

    Raises:
      ValueError: for a bad box_loss, shapes that disagree, or (concrete targets) a positive anchor's label
        outside [0, C).
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {BOX_LOSSES}; got {box_loss!r}")
    n, c = anchors.shape[0], cls_logits.shape[-1]
    if cls_logits.shape[-2] != n or box_deltas.shape[-2:] != (n, 4):
        raise ValueError(
            f"cls_logits (b, n, C) and box_deltas (b, n, 4) must have n = {n} anchors; "
            f"got {cls_logits.shape}, {box_deltas.shape}"
        )
    positive = targets.positive
    bad_label = positive & ~((targets.labels >= 0) & (targets.labels < c))
    if not any(isinstance(x, jax.core.Tracer) for x in (targets.labels, positive)):
        bad = np.asarray(bad_label)
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"targets.labels holds {np.asarray(targets.labels)[at].item()!r} at positive anchor {at}, "
                f"outside [0, {c}) (C = cls_logits.shape[-1]): {int(bad.sum())} such anchor(s)"
            )
    num_pos = jnp.maximum(jnp.sum(positive), 1).astype(jnp.float32)
    onehot = jax.nn.one_hot(targets.labels, c) * positive[..., None]
    cls = focal_loss(cls_logits, onehot, positive | targets.negative, alpha, gamma) / num_pos
    cls = cls + jnp.where(jnp.any(bad_label), jnp.nan, 0.0)
    box_deltas = box_deltas.astype(jnp.float32)
    if box_loss == "smooth_l1":
        per = jnp.sum(smooth_l1(box_deltas, targets.box_targets, beta), axis=-1)
    else:
        pred_boxes = decode_boxes(box_deltas, anchors, variances)
        per = 1.0 - elementwise_giou(pred_boxes, targets.matched_boxes)
    box = jnp.sum(jnp.where(positive, per, 0.0)) / num_pos
    total = cls + box_weight * box
    return total, {"cls_loss": cls, "box_loss": box, "num_positives": jnp.sum(positive)}
