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
    """Elementwise smooth-L1 loss of x = pred - target.

    0.5 x^2 / beta where abs(x) < beta, else abs(x) - 0.5 beta.

    Equal to optax's Huber loss with delta = beta, divided by beta.

    Args:
      pred: (...) predictions.
      target: (...) targets, broadcastable with ``pred``.
      beta: the quadratic zone's half-width; beta <= 0 gives the L1 loss abs(x).

    Returns:
      (...) the loss of each element (not summed).

    Examples:
      >>> import jax.numpy as jnp
      >>> smooth_l1(jnp.array([0.5, 3.0]), jnp.zeros(2), beta=1.0)
      Array([0.125, 2.5  ], dtype=float32)
    """
    if beta <= 0:
        return jnp.abs(pred - target)
    return optax.huber_loss(pred, target, delta=beta) / beta


def focal_loss(
    logits: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray, alpha: float = 0.25, gamma: float = 2.0
) -> jnp.ndarray:
    """Sigmoid focal loss (Lin et al. 2017), summed over the valid anchors and every class.

    Per element: -alpha_t (1 - p_t)^gamma log(p_t), with p_t the sigmoid probability of the label (optax's
    ``sigmoid_focal_loss``), computed in float32.

    Args:
      logits: (..., n, C) class logits per anchor.
      labels: (..., n, C) 0/1 targets (one-hot classes; all zeros for background).
      valid: (..., n) bool, the anchors that count (positives and negatives, not ignored ones).
      alpha: weight of the positive targets (1 - alpha for the negative ones).
      gamma: focusing exponent; 0 gives alpha-weighted cross-entropy.

    Returns:
      Scalar float32 sum, not normalised (`detection_loss` divides by the number of positives).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> logits, labels = jnp.zeros((2, 1)), jnp.array([[1.0], [0.0]])
      >>> loss = jax.jit(focal_loss)(logits, labels, jnp.array([True, False]), gamma=0.0)
      >>> round(float(loss), 4)  # alpha log 2 = 0.25 * 0.6931
      0.1733
    """
    per = optax.sigmoid_focal_loss(logits.astype(jnp.float32), labels, alpha=alpha, gamma=gamma)
    return jnp.sum(jnp.where(valid[..., None], per, 0.0))


def detection_loss_sums(
    cls_logits: jnp.ndarray,
    box_deltas: jnp.ndarray,
    anchors: jnp.ndarray,
    targets: DetectionTargets,
    box_loss: str = "smooth_l1",
    alpha: float = 0.25,
    gamma: float = 2.0,
    beta: float = 1.0 / 9.0,
    variances: Sequence[float] = DEFAULT_VARIANCES,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """The sums inside `detection_loss`, before the division by the positives.

    A data-parallel step divides them by the positives of the global batch (a sum over devices), so that
    every device count gives the full-batch loss; `detection_loss` divides by the local ones.

    Args:
      cls_logits: (b, n, C) class logits per anchor.
      box_deltas: (b, n, 4) predicted deltas (dy, dx, dh, dw).
      anchors: (n, 4) anchors (ymin, xmin, ymax, xmax).
      targets: `DetectionTargets` from `assign_targets`, leading dims (b, n).
      box_loss: ``"smooth_l1"`` or ``"giou"`` (see `BOX_LOSSES`).
      alpha: focal loss alpha.
      gamma: focal loss gamma.
      beta: smooth-L1 beta.
      variances: box coding variances (for ``"giou"``, which decodes the deltas).

    Returns:
      (cls_sum, box_sum, positives): float32 scalars: the focal loss summed over positive and negative
      anchors (NaN when a positive anchor's label lies outside [0, C)), the box loss summed over positive
      anchors, and the number of positive anchors.

    Raises:
      ValueError: as `detection_loss`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from attn_jax.detection import assign_targets, generate_anchors
      >>> anchors = generate_anchors((2, 2), stride=8, sizes=(8,))  # n = 4
      >>> targets = assign_targets(anchors, jnp.array([[[0.0, 0.0, 0.5, 0.5]]]), jnp.array([[3]]),
      ...                          jnp.array([[True]]))
      >>> cls_sum, box_sum, positives = detection_loss_sums(jnp.zeros((1, 4, 5)), jnp.zeros((1, 4, 4)),
      ...                                                   anchors, targets)
      >>> float(positives), float(box_sum)
      (1.0, 0.0)
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
    onehot = jax.nn.one_hot(targets.labels, c) * positive[..., None]
    cls_sum = focal_loss(cls_logits, onehot, positive | targets.negative, alpha, gamma)
    cls_sum = cls_sum + jnp.where(jnp.any(bad_label), jnp.nan, 0.0)
    box_deltas = box_deltas.astype(jnp.float32)
    if box_loss == "smooth_l1":
        per = jnp.sum(smooth_l1(box_deltas, targets.box_targets, beta), axis=-1)
    else:
        pred_boxes = decode_boxes(box_deltas, anchors, variances)
        per = 1.0 - elementwise_giou(pred_boxes, targets.matched_boxes)
    box_sum = jnp.sum(jnp.where(positive, per, 0.0))
    return cls_sum, box_sum, jnp.sum(positive).astype(jnp.float32)


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
    """Focal classification loss plus box regression loss over a batch, each normalised by the positives.

    Both terms are summed over the batch and divided by max(1, number of positive anchors). The class
    loss counts positive and negative anchors (`focal_loss`), the box loss positive anchors only:
    `smooth_l1` on the encoded deltas, or 1 - GIoU of the decoded boxes. A positive anchor's label must lie
    in [0, C): with concrete (untraced) targets anything else is a ValueError naming the value; under jit it
    makes ``cls_loss`` and the total NaN, so a training loop's non-finite-loss check stops on it
    (``one_hot`` would otherwise train that anchor as background). Labels of anchors that are not positive
    are never read.

    Args:
      cls_logits: (b, n, C) class logits per anchor.
      box_deltas: (b, n, 4) predicted deltas (dy, dx, dh, dw).
      anchors: (n, 4) anchors (ymin, xmin, ymax, xmax), e.g. from `generate_anchors`.
      targets: `DetectionTargets` from `assign_targets`, leading dims (b, n).
      box_loss: ``"smooth_l1"`` or ``"giou"`` (see `BOX_LOSSES`).
      box_weight: weight of the box loss in the total.
      alpha: focal loss alpha.
      gamma: focal loss gamma.
      beta: smooth-L1 beta.
      variances: box coding variances (for ``"giou"``, which decodes the deltas).

    Returns:
      (total, aux): the scalar float32 total and {"cls_loss", "box_loss", "num_positives"}.

    Raises:
      ValueError: ``box_loss`` is not one of `BOX_LOSSES`, ``cls_logits`` / ``box_deltas`` do not have n
        anchors, or (concrete targets) a positive anchor's label lies outside [0, C).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.detection import assign_targets, generate_anchors
      >>> anchors = generate_anchors((2, 2), stride=8, sizes=(8,))  # n = 4
      >>> @jax.jit  # in a train step
      ... def loss_fn(cls_logits, box_deltas, boxes, labels, valid):
      ...     targets = assign_targets(anchors, boxes, labels, valid)
      ...     return detection_loss(cls_logits, box_deltas, anchors, targets)
      >>> boxes, labels, valid = jnp.array([[[0.0, 0.0, 0.5, 0.5]]]), jnp.array([[3]]), jnp.array([[True]])
      >>> total, aux = loss_fn(jnp.zeros((1, 4, 5)), jnp.zeros((1, 4, 4)), boxes, labels, valid)
      >>> int(aux["num_positives"]), float(aux["box_loss"])  # the anchor is the box: zero deltas
      (1, 0.0)
    """
    cls_sum, box_sum, positives = detection_loss_sums(
        cls_logits, box_deltas, anchors, targets, box_loss, alpha, gamma, beta, variances
    )
    num_pos = jnp.maximum(positives, 1.0)
    cls, box = cls_sum / num_pos, box_sum / num_pos
    total = cls + box_weight * box
    return total, {"cls_loss": cls, "box_loss": box, "num_positives": jnp.sum(targets.positive)}
