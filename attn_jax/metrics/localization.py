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
    """Union mask of boxes on an image grid: a pixel is inside when its centre is inside a box.

    Args:
      boxes: (B, k, 4) normalised boxes (ymin, xmin, ymax, xmax) in [0, 1].
      image_hw: (H, W) of the mask.
      valid: optional (B, k) bool; False drops padded boxes.

    Returns:
      (B, H, W) bool mask.

    Raises:
      ValueError: ``boxes`` is not (B, k, 4), or ``valid`` is not (B, k).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> to_mask = jax.jit(boxes_to_mask, static_argnames="image_hw")
      >>> to_mask(jnp.array([[[0.0, 0.0, 0.5, 0.5]]]), image_hw=(4, 4))[0].astype(int)
      Array([[1, 1, 0, 0],
             [1, 1, 0, 0],
             [0, 0, 0, 0],
             [0, 0, 0, 0]], dtype=int32)
    """
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
    """Pointing game (Zhang et al. 2016): does each map's maximum lie inside its region?

    Ties count fractionally: the score is the share of maximal pixels inside the region, the expectation
    under random tie-breaking, so a uniform map scores the region's area fraction (`uniform_chance`).
    Negative map values count as 0. Jitted.

    Args:
      maps: (B, H, W) attention or saliency maps at image resolution.
      regions: (B, H, W) bool ground-truth regions (e.g. `boxes_to_mask` of the object boxes).

    Returns:
      (B,) float32 in [0, 1]: 1 = hit.

    Raises:
      ValueError: ``maps`` is not (B, H, W), or ``regions`` has another shape.

    Examples:
      >>> import jax.numpy as jnp
      >>> regions = jnp.zeros((2, 4, 4), bool).at[:, :2, :2].set(True)
      >>> maps = jnp.zeros((2, 4, 4)).at[0, 0, 0].set(1.0).at[1, 3, 3].set(1.0)
      >>> pointing_game(maps, regions)
      Array([1., 0.], dtype=float32)
    """
    _check(maps, regions)
    maps = jnp.maximum(maps.astype(jnp.float32), 0.0)
    top = maps >= jnp.max(maps, axis=(1, 2), keepdims=True)
    inside = jnp.sum(top & regions.astype(bool), axis=(1, 2))
    return inside / jnp.sum(top, axis=(1, 2))


@jax.jit
def energy_inside(maps: jax.Array, regions: jax.Array) -> jax.Array:
    """Energy-based pointing (Wang et al. 2020, Score-CAM): the fraction of each map's mass inside its region.

    Negative map values count as 0; a map with no mass is treated as uniform (its energy is the region's
    area fraction), never NaN. Jitted.

    Args:
      maps: (B, H, W) attention or saliency maps at image resolution.
      regions: (B, H, W) bool ground-truth regions.

    Returns:
      (B,) float32 in [0, 1].

    Raises:
      ValueError: ``maps`` is not (B, H, W), or ``regions`` has another shape.

    Examples:
      >>> import jax.numpy as jnp
      >>> regions = jnp.zeros((1, 2, 2), bool).at[0, 0, 0].set(True)
      >>> energy_inside(jnp.array([[[3.0, 1.0], [0.0, 0.0]]]), regions)
      Array([0.75], dtype=float32)
    """
    _check(maps, regions)
    maps = jnp.maximum(maps.astype(jnp.float32), 0.0)
    regions = regions.astype(bool)
    total = jnp.sum(maps, axis=(1, 2))
    area = jnp.mean(regions, axis=(1, 2), dtype=jnp.float32)
    inside = jnp.sum(jnp.where(regions, maps, 0.0), axis=(1, 2))
    return jnp.where(total > 0, inside / jnp.where(total > 0, total, 1.0), area)


def uniform_chance(regions: jax.Array) -> jax.Array:
    """The chance level of both localisation scores: each region's area fraction.

    A uniform map scores exactly this in `pointing_game` and `energy_inside`.

    Args:
      regions: (..., H, W) ground-truth regions (bool, or values cast to bool).

    Returns:
      (...) float32 area fractions.

    Examples:
      >>> import jax.numpy as jnp
      >>> uniform_chance(jnp.zeros((1, 4, 4), bool).at[0, :2, :2].set(True))
      Array([0.25], dtype=float32)
    """
    return jnp.mean(regions.astype(bool), axis=(-2, -1), dtype=jnp.float32)


@dataclasses.dataclass
class LocalizationStats:
    """Averages `pointing_game` and `energy_inside` over an eval set, batch by batch, on the host.

    Keeps (sum, count) pairs; examples whose region is empty are left out. With nothing added the scores
    are NaN, the convention of every evaluator in `attn_jax.metrics`.

    Args:
      pointing_sum: sum of the pointing-game scores so far.
      energy_sum: sum of the energy scores so far.
      count: number of examples scored so far.

    Examples:
      >>> import jax.numpy as jnp
      >>> stats = LocalizationStats()
      >>> regions = jnp.zeros((2, 4, 4), bool).at[:, :2, :2].set(True)
      >>> stats.update(jnp.zeros((2, 4, 4)).at[:, 0, 0].set(1.0), regions, valid=jnp.array([True, False]))
      >>> stats.compute()
      {'pointing_game': 1.0, 'energy': 1.0, 'count': 1}
    """

    pointing_sum: float = 0.0
    energy_sum: float = 0.0
    count: int = 0

    def update(self, maps: jax.Array, regions: jax.Array, valid: jax.Array | None = None) -> None:
        """Add a batch.

        Args:
          maps: (B, H, W) maps.
          regions: (B, H, W) bool regions; examples with an empty region are left out.
          valid: optional (B,) bool; False drops padded examples.

        Raises:
          ValueError: as `pointing_game`, or ``valid`` is not (B,).
        """
        keep = np.array(jnp.any(jnp.asarray(regions, bool), axis=(1, 2)))
        if valid is not None:
            if np.shape(valid) != (maps.shape[0],):
                raise ValueError(f"valid must be ({maps.shape[0]},), got {np.shape(valid)}")
            keep &= np.asarray(valid, bool)
        self.pointing_sum += float(np.sum(np.asarray(pointing_game(maps, regions))[keep]))
        self.energy_sum += float(np.sum(np.asarray(energy_inside(maps, regions))[keep]))
        self.count += int(keep.sum())

    def compute(self) -> dict[str, float]:
        """The mean scores so far.

        Returns:
          {"pointing_game": float, "energy": float, "count": int}; NaN scores (count 0) when nothing was
          added, the convention of every evaluator in `attn_jax.metrics`.
        """
        if self.count == 0:
            return {"pointing_game": float("nan"), "energy": float("nan"), "count": 0}
        return {
            "pointing_game": self.pointing_sum / self.count,
            "energy": self.energy_sum / self.count,
            "count": self.count,
        }
