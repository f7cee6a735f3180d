"""Attention overlays (colormap with alpha over the image, boxes outlined) and grid figures, as PNG.

`overlay_rgb` composes in NumPy so a saved overlay has exactly the image's size (times `scale`);
`attention_grid` lays out N images x attention families with matplotlib for reports.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402


@dataclasses.dataclass(frozen=True)
class BoxSet:
    """Boxes to outline on every panel of `attention_grid`, with one legend entry.

    Args:
      name: the legend entry, e.g. "true boxes".
      boxes: (N, k, 4) normalised (ymin, xmin, ymax, xmax) boxes per image; zero-area rows are skipped
        (padding), as are rows where ``valid`` is False.
      color: a matplotlib colour.
      labels: (N, k) texts (e.g. class digits) written inside each box's top-left corner, or None.
      valid: (N, k) bool, or None (every row with a positive area).
    """

    name: str
    boxes: np.ndarray
    color: str = "lime"
    labels: np.ndarray | None = None
    valid: np.ndarray | None = None


def _unit(x: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1] (a constant array becomes zeros)."""
    x = np.asarray(x, np.float32)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def image_rgb(image: np.ndarray) -> np.ndarray:
    """An image as (H, W, 3) float32 RGB in [0, 1] (min-max scaled; grey images repeated).

    Args:
      image: (H, W), (H, W, 1) or (H, W, 3), in any range.

    Returns:
      (H, W, 3) float32 in [0, 1].

    Raises:
      ValueError: any other shape.
    """
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
    """An image with an attention map blended in and boxes outlined, as an RGB array.

    Args:
      image: (H, W), (H, W, 1) or (H, W, 3) in any range (min-max scaled).
      attn_map: (H, W) map at the image's resolution (min-max scaled, coloured by ``cmap``), or None.
      boxes: (k, 4) normalised (ymin, xmin, ymax, xmax) boxes to outline; zero rows are skipped.
      alpha: weight of the coloured map, in [0, 1].
      cmap: a matplotlib colormap name.
      box_color: RGB of the outlines, in [0, 1].

    Returns:
      (H, W, 3) float32 in [0, 1].

    Raises:
      ValueError: an image of another shape, ``alpha`` outside [0, 1], or a map of another (H, W).

    Examples:
      >>> import numpy as np
      >>> from attn_jax.viz import overlay_rgb
      >>> box = np.array([[0.25, 0.25, 0.75, 0.75]])
      >>> rgb = overlay_rgb(np.zeros((32, 32, 1)), np.ones((32, 32)), boxes=box)
      >>> rgb.shape, rgb.dtype, bool(rgb[8, 8, 1] == 1.0)  # the box's corner is green
      ((32, 32, 3), dtype('float32'), True)
    """
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
    """Write `overlay_rgb` of an image and its attention map as a PNG.

    Args:
      path: the PNG file to write (its directory is created).
      image: (H, W), (H, W, 1) or (H, W, 3).
      attn_map: (H, W) map at the image's resolution, or None.
      scale: each pixel becomes scale x scale pixels.
      **kwargs: ``boxes``, ``alpha``, ``cmap``, ``box_color`` of `overlay_rgb`.

    Returns:
      ``path``; the PNG has (H · scale, W · scale) pixels.

    Raises:
      ValueError: ``scale`` below 1, or an argument `overlay_rgb` refuses.

    Examples:
      >>> import os, tempfile
      >>> import numpy as np
      >>> from attn_jax.viz import save_overlay
      >>> path = save_overlay(os.path.join(tempfile.mkdtemp(), "a.png"), np.zeros((16, 16)), None, scale=2)
      >>> os.path.getsize(path) > 0
      True
    """
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
    box_sets: Sequence[BoxSet] = (),
) -> str:
    """Save a PNG grid of images x attention maps, for reports.

    One row per image; the first column is the image (with its boxes), then one column per entry of
    ``columns``. Each `BoxSet` of ``box_sets`` is outlined in its colour on every panel of its image
    (with its labels), and listed in a legend under the grid.

    Args:
      path: the PNG file to write (its directory is created).
      images: (N, H, W, C) images.
      columns: column title -> maps (N, H, W) at the images' resolution, or None for a family with no
        spatial map (drawn as a note).
      boxes: (N, k, 4) normalised (ymin, xmin, ymax, xmax) boxes to outline in lime on every panel, or
        None.
      title: a title over the grid.
      alpha: weight of the maps over the images.
      cmap: a matplotlib colormap name.
      box_sets: boxes to outline on every panel, each with a legend entry.

    Returns:
      ``path``.

    Raises:
      ValueError: maps of another shape than (N, H, W), or a box set whose boxes are not (N, k, 4).
    """
    images = np.asarray(images)
    n = images.shape[0]
    for name, maps in columns.items():
        if maps is not None and np.shape(maps) != images.shape[:3]:
            raise ValueError(f"columns[{name!r}] must be {images.shape[:3]}, got {np.shape(maps)}")
    for box_set in box_sets:
        shape = np.shape(box_set.boxes)
        if len(shape) != 3 or shape[0] != n or shape[2] != 4:
            raise ValueError(f"box set {box_set.name!r} must have boxes (N, k, 4) with N = {n}, got {shape}")
    ncols = 1 + len(columns)
    legend_height = 0.3 if box_sets else 0.0
    fig, axes = plt.subplots(
        n, ncols, figsize=(1.6 * ncols, 1.6 * n + (0.4 if title else 0) + legend_height), squeeze=False
    )
    h, w = images.shape[1:3]

    def outline(ax, box, color, label=None):
        y0, x0, y1, x1 = box
        rect = Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h)
        rect.set(fill=False, edgecolor=color, linewidth=1)
        ax.add_patch(rect)
        if label is not None:
            backing = {"facecolor": "black", "alpha": 0.6, "pad": 0.5, "linewidth": 0}
            ax.text(x0 * w, y0 * h, str(label), color=color, fontsize=7, fontweight="bold", ha="left",
                    va="top", bbox=backing)  # fmt: skip

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
                for box in _real_boxes(boxes[i]):
                    outline(ax, box, "lime")
            for box_set in box_sets:
                rows = np.asarray(box_set.boxes[i], np.float32)
                keep = (rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])
                if box_set.valid is not None:
                    keep &= np.asarray(box_set.valid[i], bool)
                for r in np.nonzero(keep)[0]:
                    label = None if box_set.labels is None else np.asarray(box_set.labels[i])[r]
                    outline(ax, rows[r], box_set.color, label)
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
    if title:
        fig.suptitle(title, fontsize=9)
    if box_sets:
        handles = [Patch(fill=False, edgecolor=b.color, label=b.name) for b in box_sets]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
