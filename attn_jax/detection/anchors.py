"""Anchor boxes over a feature grid, in the order a conv head's (b, h, w, A * k) output flattens to."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"{name} must be a positive int or (height, width) pair; got {value!r}")
    return int(pair[0]), int(pair[1])


def anchor_shapes(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """(height, width) in pixels of the anchors of one feature cell.

    A ratio r = height / width keeps the area size**2: height = size * sqrt(r), width = size / sqrt(r).

    Args:
      sizes: S anchor sizes in pixels (the side of the square of equal area), positive.
      aspect_ratios: R ratios height / width, positive.

    Returns:
      (A, 2) float64 NumPy array of (height, width), A = S * R, sizes outermost.

    Raises:
      ValueError: ``sizes`` or ``aspect_ratios`` is empty or holds a value <= 0.

    Examples:
      >>> anchor_shapes(sizes=(16,), aspect_ratios=(1.0, 4.0)).tolist()
      [[16.0, 16.0], [32.0, 8.0]]
    """
    sizes = np.asarray(sizes, np.float64).reshape(-1)
    ratios = np.asarray(aspect_ratios, np.float64).reshape(-1)
    if sizes.size == 0 or ratios.size == 0 or (sizes <= 0).any() or (ratios <= 0).any():
        raise ValueError(f"sizes and aspect_ratios must be non-empty and positive; got {sizes}, {ratios}")
    s, r = np.meshgrid(sizes, ratios, indexing="ij")
    return np.stack([s * np.sqrt(r), s / np.sqrt(r)], axis=-1).reshape(-1, 2)


def generate_anchors(
    feature_shape,
    stride,
    sizes: Sequence[float],
    aspect_ratios: Sequence[float] = (1.0,),
    image_size=None,
    normalize: bool = True,
) -> np.ndarray:
    """Anchor boxes centred on every cell of a feature grid, as (ymin, xmin, ymax, xmax).

    Cell (i, j) has centre ((i + 0.5) * stride_y, (j + 0.5) * stride_x) in pixels. The order is row, column,
    anchor (sizes outermost, then ratios), matching a conv head's ``output.reshape(b, h * w * A, k)``.

    Args:
      feature_shape: (h, w) of the grid, or one int for a square grid.
      stride: pixels per cell, an int or a (y, x) pair.
      sizes: anchor sizes in pixels (see `anchor_shapes`).
      aspect_ratios: ratios height / width (see `anchor_shapes`).
      image_size: (H, W) in pixels that ``normalize`` divides by (None: feature_shape * stride).
      normalize: divide the coordinates by ``image_size`` (True, the data's format) or keep pixels.

    Returns:
      (h * w * A, 4) float32 NumPy array: a constant, built once outside jit.

    Raises:
      ValueError: ``feature_shape``, ``stride`` or ``image_size`` is not a positive int or pair, or
        ``sizes`` / ``aspect_ratios`` is empty or not positive.

    Examples:
      >>> anchors = generate_anchors((2, 2), stride=8, sizes=(8,))  # a 16x16 image, one anchor per cell
      >>> anchors.shape
      (4, 4)
      >>> anchors[1].tolist()  # row 0, column 1
      [0.0, 0.5, 0.5, 1.0]
    """
    fh, fw = _pair(feature_shape, "feature_shape")
    sy, sx = _pair(stride, "stride")
    ih, iw = _pair(image_size, "image_size") if image_size is not None else (fh * sy, fw * sx)
    shapes = anchor_shapes(sizes, aspect_ratios)
    cy, cx = np.meshgrid((np.arange(fh) + 0.5) * sy, (np.arange(fw) + 0.5) * sx, indexing="ij")
    centres = np.stack([cy, cx], axis=-1)[:, :, None, :]  # (h, w, 1, 2)
    half = shapes[None, None, :, :] / 2.0  # (1, 1, A, 2)
    boxes = np.concatenate([centres - half, centres + half], axis=-1).reshape(-1, 4)
    if normalize:
        boxes = boxes / np.array([ih, iw, ih, iw], np.float64)
    return boxes.astype(np.float32)
