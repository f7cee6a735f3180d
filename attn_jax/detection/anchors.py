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
    """(A, 2) anchor (height, width) in pixels, A = len(sizes) * len(aspect_ratios), sizes outermost.

    A ratio r = height / width keeps the area size**2: height = size * sqrt(r), width = size / sqrt(r).
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
    """Anchors (h * w * A, 4) as (ymin, xmin, ymax, xmax), centred on each feature cell.

    feature_shape: (h, w) of the grid; stride: pixels per cell (int or pair); sizes in pixels.
    Cell (i, j) has centre ((i + 0.5) * stride_y, (j + 0.5) * stride_x). Order: row, column, anchor
    (sizes outermost, then ratios), matching `head_output.reshape(b, h * w * A, k)`. With normalize=True
    (default) coordinates are divided by image_size (default feature_shape * stride), the data's format.
    Returned as float32 NumPy: a constant, built once outside jit.
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
