"""A PNG of the sown "attention_map" over test images (image, and the map upsampled on top of it)."""

from __future__ import annotations

import flax
import jax
import numpy as np


def attention_maps(model, variables, images) -> np.ndarray | None:
    """images (B, H, W, C) -> (B, h, w) spatial attention maps sown by the model, or None if it sows none
    that is spatial. Query-style (B, m, n) maps with square n are averaged over queries."""
    _, inter = model.apply(variables, images, train=False, mutable=["intermediates"])
    found = [
        v
        for path, v in flax.traverse_util.flatten_dict(inter.get("intermediates", {})).items()
        if path[-1] == "attention_map"
    ]
    if not found:
        return None
    amap = np.asarray(jax.device_get(found[-1][0] if isinstance(found[-1], tuple) else found[-1]), np.float32)
    if amap.ndim == 4 and amap.shape[-1] == 1:
        amap = amap[..., 0]
    if amap.ndim == 3 and amap.shape[1] <= 4:  # (B, m queries, n positions)
        side = int(round(np.sqrt(amap.shape[2])))
        if side * side != amap.shape[2]:
            return None
        amap = amap.mean(axis=1).reshape(amap.shape[0], side, side)
    return amap if amap.ndim == 3 else None


def save_attention_png(path: str, images, labels, predictions, maps, *, mean=0.0, std=1.0) -> str:
    """Grid of images (top) and images with their attention map overlaid (bottom); titles: label/pred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images) * np.asarray(std) + np.asarray(mean)
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        img = images[i, ..., 0] if images.shape[-1] == 1 else np.clip(images[i], 0, 1)
        for row in (0, 1):
            axes[row, i].imshow(img, cmap="gray")
            axes[row, i].axis("off")
        if maps is not None:
            h, w = img.shape[:2]
            axes[1, i].imshow(
                maps[i],
                cmap="jet",
                alpha=0.45,
                extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                interpolation="bilinear",
            )
        axes[0, i].set_title(f"y={labels[i]} p={predictions[i]}", fontsize=8)
    fig.suptitle("attention_map over test images" if maps is not None else "no spatial attention map sown")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
