"""Attention localisation scores: pointing game and energy-based pointing against ground-truth regions.

Maps are (B, H, W) at image resolution (negative values count as 0); regions are boolean masks (B, H, W)
or normalised boxes turned into masks with `boxes_to_mask`. Per-example scores are pure jnp functions;
`LocalizationStats` keeps (sum, count) pairs on the host to average over an eval set.

pointing game (Zhang et al. 2016): 1 when the map's maximum lies inside the region. Ties count
fractionally (the share of maximal pixels inside), i.e. the expectation under random tie-breaking,
so a uniform map scores the region's area fraction: the chance level.
energy (Wang et al. 2020, Score-CAM): the fraction of the map's mass inside the region. A map with no
mass is treated as uniform (its energy is the area fraction), never NaN.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def _check(maps: jax.Array, regions: jax.Array) -> None:
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {maps.shape}")
    if regions.shape != maps.shape:
        raise ValueError(f"regions must have the maps' shape {maps.shape}, got {regions.shape}")


def boxes_to_mask(boxes: jax.Array, image_hw: tuple[int, int], valid: jax.Array | None = None) -> jax.Array:
    """Union mask (B, H, W) bool of boxes (B, k, 4) normalised (ymin, xmin, ymax, xmax) in [0, 1]: a pixel
    is inside when its centre is. valid (B, k) bool drops padded boxes."""
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, k, 4), got shape {boxes.shape}")
    if valid is not None and valid.shape != boxes.shape[:2]:
        raise ValueError(f"valid must be {boxes.shape[:2]}, got {valid.shape}")
    h, w = image_hw
    ys = (jnp.arange(h) + 0.5) / h
    xs = (jnp.arange(w) + 0.5) / w
    b = boxes[..., None, None, :]  # (B, k, 1, 1, 4)
    inside_y = (ys[:, None] >= b[..., 0]) & (ys[:, None] <= b[..., 2])
    inside_x = (xs[None, :] >= b[..., 1]) & (xs[None, :] <= b[..., 3])
    inside = inside_y & inside_x  # (B, k, H, W)
    if valid is not None:
        inside = inside & valid[:, :, None, None]
    return jnp.any(inside, axis=1)


@jax.jit
def pointing_game(maps: jax.Array, regions: jax.Array) -> jax.Array:
    """(B,) float32 in [0, 1]: share of each map's maximal pixels that lie inside its region (1 = hit)."""
    _check(maps, regions)
    maps = jnp.maximum(maps.astype(jnp.float32), 0.0)
    top = maps >= jnp.max(maps, axis=(1, 2), keepdims=True)
    inside = jnp.sum(top & regions.astype(bool), axis=(1, 2))
    return inside / jnp.sum(top, axis=(1, 2))


@jax.jit
def energy_inside(maps: jax.Array, regions: jax.Array) -> jax.Array:
    """(B,) float32 in [0, 1]: fraction of each map's (non-negative) mass inside its region."""
    _check(maps, regions)
    maps = jnp.maximum(maps.astype(jnp.float32), 0.0)
    regions = regions.astype(bool)
    total = jnp.sum(maps, axis=(1, 2))
    area = jnp.mean(regions, axis=(1, 2), dtype=jnp.float32)
    inside = jnp.sum(jnp.where(regions, maps, 0.0), axis=(1, 2))
    return jnp.where(total > 0, inside / jnp.where(total > 0, total, 1.0), area)


def uniform_chance(regions: jax.Array) -> jax.Array:
    """(B,) area fraction of each region: both scores of a uniform map (the chance level)."""
    return jnp.mean(regions.astype(bool), axis=(-2, -1), dtype=jnp.float32)


@dataclasses.dataclass
class LocalizationStats:
    """Host-side (sum, count) accumulator of pointing-game and energy scores over an eval set."""

    pointing_sum: float = 0.0
    energy_sum: float = 0.0
    count: int = 0

    def update(self, maps: jax.Array, regions: jax.Array, valid: jax.Array | None = None) -> None:
        """Adds a batch; valid (B,) bool drops padded examples (and examples with an empty region)."""
        keep = np.array(jnp.any(jnp.asarray(regions, bool), axis=(1, 2)))
        if valid is not None:
            if np.shape(valid) != (maps.shape[0],):
                raise ValueError(f"valid must be ({maps.shape[0]},), got {np.shape(valid)}")
            keep &= np.asarray(valid, bool)
        self.pointing_sum += float(np.sum(np.asarray(pointing_game(maps, regions))[keep]))
        self.energy_sum += float(np.sum(np.asarray(energy_inside(maps, regions))[keep]))
        self.count += int(keep.sum())

    def compute(self) -> dict[str, float]:
        """{"pointing_game", "energy", "count"}; NaN scores (count 0) when nothing was added, the
        convention of every evaluator in attn_jax.metrics."""
        if self.count == 0:
            return {"pointing_game": float("nan"), "energy": float("nan"), "count": 0}
        return {
            "pointing_game": self.pointing_sum / self.count,
            "energy": self.energy_sum / self.count,
            "count": self.count,
        }
