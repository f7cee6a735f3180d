"""Pointing game and energy-based pointing: hits, misses, chance, masses, accumulation."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_jax.metrics.localization import (
    LocalizationStats,
    boxes_to_mask,
    energy_inside,
    pointing_game,
    uniform_chance,
)


def _peak(h, w, y, x):
    m = np.zeros((h, w), np.float32)
    m[y, x] = 1.0
    return m


def test_boxes_to_mask_pixel_centres_and_padding():
    boxes = jnp.array([[[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    mask = boxes_to_mask(boxes, (8, 8), valid=jnp.array([[True, False]]))
    expected = np.zeros((1, 8, 8), bool)
    expected[0, 2:6, 4:8] = True
    np.testing.assert_array_equal(mask, expected)


def test_pointing_game_hit_inside_box_miss_outside():
    box = jnp.array([[[0.25, 0.25, 0.5, 0.5]]] * 2)  # rows/cols 4..7 of 16
    region = boxes_to_mask(box, (16, 16))
    maps = jnp.stack([_peak(16, 16, 5, 6), _peak(16, 16, 12, 2)])
    np.testing.assert_array_equal(pointing_game(maps, region), [1.0, 0.0])


def test_pointing_game_ties_score_expected_hit_and_uniform_is_chance():
    region = np.zeros((1, 10, 10), bool)
    region[0, :2] = True  # 20% of the image
    np.testing.assert_allclose(pointing_game(jnp.ones((1, 10, 10)), region), [0.2])
    np.testing.assert_allclose(uniform_chance(region), [0.2])
    two = np.zeros((1, 10, 10), np.float32)
    two[0, 0, 0] = two[0, 9, 9] = 3.0  # one maximum inside, one outside
    np.testing.assert_allclose(pointing_game(two, region), [0.5])


def test_energy_sums_correctly():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 0, 0], maps[0, 3, 3], maps[0, 1, 1] = 3.0, 1.0, -5.0  # negatives count as zero
    region = np.zeros((2, 4, 4), bool)
    region[:, :2, :2] = True
    out = energy_inside(maps, region)
    np.testing.assert_allclose(out, [0.75, 0.25])  # example 1 has no mass: uniform -> area fraction
    assert np.isfinite(out).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_energy_of_region_and_complement_sum_to_one(seed):
    rng = np.random.default_rng(seed)
    maps = rng.uniform(size=(3, 6, 5)).astype(np.float32)
    region = rng.uniform(size=(3, 6, 5)) < 0.3
    total = energy_inside(maps, region) + energy_inside(maps, ~region)
    np.testing.assert_allclose(total, np.ones(3), atol=1e-5)
    manual = (maps * region).sum((1, 2)) / maps.sum((1, 2))
    np.testing.assert_allclose(energy_inside(maps, region), manual, rtol=1e-5)


def test_stats_average_over_batches_with_valid_and_empty_regions():
    stats = LocalizationStats()
    region = np.zeros((3, 4, 4), bool)
    region[:2, 0, 0] = True  # third example has an empty region: skipped
    maps = np.stack([_peak(4, 4, 0, 0), _peak(4, 4, 2, 2), _peak(4, 4, 0, 0)])
    stats.update(maps, region)
    stats.update(maps, region, valid=np.array([False, True, True]))
    out = stats.compute()
    assert out["count"] == 3 and out["pointing_game"] == pytest.approx(1 / 3)
    assert out["energy"] == pytest.approx(1 / 3)
    empty = LocalizationStats().compute()  # undefined: NaN, as every empty evaluator
    assert empty["count"] == 0 and np.isnan(empty["pointing_game"]) and np.isnan(empty["energy"])


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="regions must"):
        pointing_game(jnp.ones((2, 4, 4)), jnp.ones((2, 4, 5), bool))
    with pytest.raises(ValueError, match="maps must"):
        energy_inside(jnp.ones((4, 4)), jnp.ones((4, 4), bool))
    with pytest.raises(ValueError, match="boxes must"):
        boxes_to_mask(jnp.ones((2, 4)), (4, 4))
