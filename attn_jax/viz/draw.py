"""Attention overlays (colormap with alpha over the image, boxes outlined) and grid figures, as PNG.

`overlay_rgb` composes in NumPy so a saved overlay has exactly the image's size (times `scale`);
`attention_grid` lays out N images x attention families with matplotlib for reports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1] (a constant array becomes zeros)."""
    x = np.asarray(x, np.float32)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def image_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from an (H, W), (H, W, 1) or (H, W, 3) image in any range."""
    image = np.asarray(image, np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")
    return _unit(image)


def _real_boxes(boxes: np.ndarray) -> np.ndarray:
    """(k, 4) boxes with positive area (zero padding rows dropped)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def _box_outline(rgb: np.ndarray, box: Sequence[float], color: Sequence[float]) -> None:
    h, w = rgb.shape[:2]
    y0, x0, y1, x1 = box
    r0, r1 = int(np.clip(np.floor(y0 * h), 0, h - 1)), int(np.clip(np.ceil(y1 * h) - 1, 0, h - 1))
    c0, c1 = int(np.clip(np.floor(x0 * w), 0, w - 1)), int(np.clip(np.ceil(x1 * w) - 1, 0, w - 1))
    rgb[[r0, r1], c0 : c1 + 1] = color
    rgb[r0 : r1 + 1, [c0, c1]] = color


def overlay_rgb(
    image: np.ndarray,
    attn_map: np.ndarray | None,
    *,
    boxes: np.ndarray | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    box_color: Sequence[float] = (0.0, 1.0, 0.0),
) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: the image with `attn_map` (H, W) (min-max scaled, coloured by `cmap`)
    blended in at `alpha`, and boxes (k, 4) normalised (ymin, xmin, ymax, xmax) outlined."""
    rgb = image_rgb(image)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if attn_map is not None:
        attn_map = np.asarray(attn_map, np.float32)
        if attn_map.shape != rgb.shape[:2]:
            raise ValueError(f"attn_map must be {rgb.shape[:2]} (upsample it first), got {attn_map.shape}")
        heat = colormaps[cmap](_unit(attn_map))[..., :3]
        rgb = (1.0 - alpha) * rgb + alpha * heat
    if boxes is not None:
        for box in _real_boxes(boxes):
            _box_outline(rgb, box, box_color)
    return rgb.astype(np.float32)


def save_overlay(
    path: str, image: np.ndarray, attn_map: np.ndarray | None, *, scale: int = 1, **kwargs
) -> str:
    """Writes `overlay_rgb(image, attn_map, **kwargs)` as a PNG of (H * scale, W * scale) pixels."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    rgb = overlay_rgb(image, attn_map, **kwargs)
    rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plt.imsave(path, np.clip(rgb, 0.0, 1.0))
    return path


def attention_grid(
    path: str,
    images: np.ndarray,
    columns: Mapping[str, np.ndarray | None],
    *,
    boxes: np.ndarray | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> str:
    """Saves a PNG grid: one row per image (N, H, W, C), first column the image (boxes (N, k, 4) drawn),
    then one column per entry of `columns` (name -> maps (N, H, W), or None for a family with no spatial
    map, shown as a note). Returns path."""
    images = np.asarray(images)
    n = images.shape[0]
    for name, maps in columns.items():
        if maps is not None and np.shape(maps) != images.shape[:3]:
            raise ValueError(f"columns[{name!r}] must be {images.shape[:3]}, got {np.shape(maps)}")
    ncols = 1 + len(columns)
    fig, axes = plt.subplots(n, ncols, figsize=(1.6 * ncols, 1.6 * n + (0.4 if title else 0)), squeeze=False)
    h, w = images.shape[1:3]
    for i in range(n):
        cells = [("image", None), *columns.items()]
        for j, (name, maps) in enumerate(cells):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j > 0 and maps is None:
                ax.text(0.5, 0.5, "no spatial map\n(channel)", ha="center", va="center", fontsize=7)
                continue
            ax.imshow(image_rgb(images[i]))
            if j > 0:
                ax.imshow(np.asarray(maps[i], np.float32), cmap=cmap, alpha=alpha)
            if boxes is not None:
                for y0, x0, y1, x1 in _real_boxes(boxes[i]):
                    rect = Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h)
                    rect.set(fill=False, edgecolor="lime", linewidth=1)
                    ax.add_patch(rect)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
