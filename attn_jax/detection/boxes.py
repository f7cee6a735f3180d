"""Box geometry in JAX: areas, pairwise IoU / GIoU, and centre/size delta coding.

Boxes are (..., 4) as (ymin, xmin, ymax, xmax), in any consistent unit (normalised or pixels).
Degenerate boxes (zero or negative extent) have area 0 and IoU 0 with everything, themselves included.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

DEFAULT_VARIANCES = (0.1, 0.1, 0.2, 0.2)


def _check_boxes(name: str, boxes) -> None:
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4) (ymin, xmin, ymax, xmax); got {boxes.shape}")


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
    """Areas of boxes (ymin, xmin, ymax, xmax); 0 for degenerate boxes (zero or negative extent).

    Args:
      boxes: (..., 4) boxes.

    Returns:
      (...) areas.

    Examples:
      >>> import jax.numpy as jnp
      >>> box_area(jnp.array([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 0.0, 2.0]]))
      Array([6., 0.], dtype=float32)
    """
    h = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    w = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return h * w


def _intersection_union(a: jnp.ndarray, b: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Broadcasting intersection and union areas of boxes a (..., 4) and b (..., 4)."""
    ymin = jnp.maximum(a[..., 0], b[..., 0])
    xmin = jnp.maximum(a[..., 1], b[..., 1])
    ymax = jnp.minimum(a[..., 2], b[..., 2])
    xmax = jnp.minimum(a[..., 3], b[..., 3])
    inter = jnp.maximum(ymax - ymin, 0.0) * jnp.maximum(xmax - xmin, 0.0)
    union = box_area(a) + box_area(b) - inter
    return inter, union


def elementwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Intersection over union of matching pairs of boxes (ymin, xmin, ymax, xmax).

    Args:
      a: (..., 4) boxes.
      b: (..., 4) boxes, broadcastable with ``a``.

    Returns:
      (...) IoU in [0, 1]; 0 where the union is empty (degenerate boxes).

    Raises:
      ValueError: ``a`` or ``b`` does not end in 4 coordinates.

    Examples:
      >>> import jax.numpy as jnp
      >>> elementwise_iou(jnp.array([0.0, 0.0, 2.0, 2.0]), jnp.array([0.0, 1.0, 2.0, 3.0]))
      Array(0.33333334, dtype=float32)
    """
    _check_boxes("a", a)
    _check_boxes("b", b)
    inter, union = _intersection_union(a, b)
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """IoU of every box of ``a`` with every box of ``b``.

    Args:
      a: (..., n, 4) boxes (ymin, xmin, ymax, xmax).
      b: (..., m, 4) boxes; leading dims broadcast with ``a``'s.

    Returns:
      (..., n, m) IoU matrix; 0 where the union is empty.

    Raises:
      ValueError: ``a`` or ``b`` does not end in 4 coordinates.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> a = jnp.array([[0.0, 0.0, 2.0, 2.0]])
      >>> b = jnp.array([[0.0, 0.0, 2.0, 2.0], [0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
      >>> jax.jit(pairwise_iou)(a, b)
      Array([[1.        , 0.33333334, 0.        ]], dtype=float32)
    """
    _check_boxes("a", a)
    _check_boxes("b", b)
    return elementwise_iou(a[..., :, None, :], b[..., None, :, :])


def elementwise_giou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Generalised IoU (Rezatofighi et al. 2019) of matching pairs of boxes: IoU - (hull - union) / hull.

    The hull is the smallest box enclosing both; unlike IoU, GIoU still ranks boxes that do not overlap.

    Args:
      a: (..., 4) boxes (ymin, xmin, ymax, xmax).
      b: (..., 4) boxes, broadcastable with ``a``.

    Returns:
      (...) GIoU in [-1, 1].

    Raises:
      ValueError: ``a`` or ``b`` does not end in 4 coordinates.

    Examples:
      >>> import jax.numpy as jnp
      >>> elementwise_giou(jnp.array([0.0, 0.0, 1.0, 1.0]), jnp.array([0.0, 2.0, 1.0, 3.0]))  # 1 apart
      Array(-0.33333334, dtype=float32)
    """
    _check_boxes("a", a)
    _check_boxes("b", b)
    inter, union = _intersection_union(a, b)
    iou = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
    hull_h = jnp.maximum(a[..., 2], b[..., 2]) - jnp.minimum(a[..., 0], b[..., 0])
    hull_w = jnp.maximum(a[..., 3], b[..., 3]) - jnp.minimum(a[..., 1], b[..., 1])
    hull = jnp.maximum(hull_h, 0.0) * jnp.maximum(hull_w, 0.0)
    penalty = jnp.where(hull > 0, (hull - union) / jnp.where(hull > 0, hull, 1.0), 0.0)
    return iou - penalty


def _centre_size(boxes: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * h, boxes[..., 1] + 0.5 * w, h, w


def encode_boxes(
    boxes: jnp.ndarray, anchors: jnp.ndarray, variances: Sequence[float] = DEFAULT_VARIANCES
) -> jnp.ndarray:
    """Boxes as centre/size deltas (dy, dx, dh, dw) relative to anchors, the targets of a box head.

    dy = (cy - cy_a) / (h_a * v0), dx = (cx - cx_a) / (w_a * v1), dh = log(h / h_a) / v2,
    dw = log(w / w_a) / v3. Anchors must have positive extent; a box of zero extent is clipped to a tiny
    size so that the log stays finite.

    Args:
      boxes: (..., 4) boxes (ymin, xmin, ymax, xmax).
      anchors: (..., 4) anchors, broadcastable with ``boxes``.
      variances: (v0, v1, v2, v3), dividing the deltas (default `DEFAULT_VARIANCES`, (0.1, 0.1, 0.2, 0.2)).

    Returns:
      (..., 4) deltas in ``boxes``' dtype; `decode_boxes` inverts them.

    Raises:
      ValueError: ``boxes`` or ``anchors`` does not end in 4 coordinates.

    Examples:
      >>> import jax.numpy as jnp
      >>> anchor = jnp.array([0.0, 0.0, 1.0, 1.0])
      >>> encode_boxes(jnp.array([0.25, 0.0, 1.25, 2.0]), anchor, variances=(1.0, 1.0, 1.0, 1.0))
      Array([0.25     , 0.5      , 0.       , 0.6931472], dtype=float32)
    """
    _check_boxes("boxes", boxes)
    _check_boxes("anchors", anchors)
    v = jnp.asarray(variances, boxes.dtype)
    cy, cx, h, w = _centre_size(boxes)
    acy, acx, ah, aw = _centre_size(anchors)
    tiny = jnp.finfo(boxes.dtype).tiny
    return jnp.stack(
        [
            (cy - acy) / ah / v[0],
            (cx - acx) / aw / v[1],
            jnp.log(jnp.maximum(h, tiny) / ah) / v[2],
            jnp.log(jnp.maximum(w, tiny) / aw) / v[3],
        ],
        axis=-1,
    )


def decode_boxes(
    deltas: jnp.ndarray,
    anchors: jnp.ndarray,
    variances: Sequence[float] = DEFAULT_VARIANCES,
    max_log_scale: float = 4.135,
) -> jnp.ndarray:
    """Boxes from centre/size deltas relative to anchors: the inverse of `encode_boxes`.

    The size deltas are clipped at ``max_log_scale`` (log(1000 / 16), as in Detectron) so that exp cannot
    overflow.

    Args:
      deltas: (..., 4) deltas (dy, dx, dh, dw), e.g. a box head's output.
      anchors: (..., 4) anchors (ymin, xmin, ymax, xmax), broadcastable with ``deltas``.
      variances: the (v0, v1, v2, v3) that `encode_boxes` used.
      max_log_scale: upper bound of dh * v2 and dw * v3.

    Returns:
      (..., 4) boxes (ymin, xmin, ymax, xmax) in ``deltas``' dtype.

    Raises:
      ValueError: ``deltas`` or ``anchors`` does not end in 4 coordinates.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> anchor, box = jnp.array([0.0, 0.0, 0.5, 0.5]), jnp.array([0.1, 0.2, 0.3, 0.6])
      >>> roundtrip = jax.jit(lambda box, anchor: decode_boxes(encode_boxes(box, anchor), anchor))
      >>> roundtrip(box, anchor).round(6)
      Array([0.1, 0.2, 0.3, 0.6], dtype=float32)
    """
    _check_boxes("deltas", deltas)
    _check_boxes("anchors", anchors)
    v = jnp.asarray(variances, deltas.dtype)
    acy, acx, ah, aw = _centre_size(anchors)
    cy = deltas[..., 0] * v[0] * ah + acy
    cx = deltas[..., 1] * v[1] * aw + acx
    h = jnp.exp(jnp.minimum(deltas[..., 2] * v[2], max_log_scale)) * ah
    w = jnp.exp(jnp.minimum(deltas[..., 3] * v[3], max_log_scale)) * aw
    return jnp.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)
