"""Overlays and grid figures: PNGs written with the right size, colours where expected."""

import matplotlib.image as mpimg
import numpy as np
import pytest

from attn_jax.viz.draw import attention_grid, overlay_rgb, save_overlay


def _peaked(h, w, y, x):
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 8.0)


def test_overlay_png_has_image_size(tmp_path):
    image = np.random.default_rng(0).normal(size=(20, 28, 1))
    path = save_overlay(str(tmp_path / "o.png"), image, _peaked(20, 28, 5, 9))
    assert mpimg.imread(path).shape[:2] == (20, 28)
    path = save_overlay(str(tmp_path / "o3.png"), image, _peaked(20, 28, 5, 9), scale=3)
    assert mpimg.imread(path).shape[:2] == (60, 84)


def test_overlay_colours_map_peak_and_boxes():
    image = np.zeros((16, 16, 3))
    rgb = overlay_rgb(image, _peaked(16, 16, 4, 12), alpha=1.0, cmap="gray")
    assert np.unravel_index(np.argmax(rgb[..., 0]), (16, 16)) == (4, 12)  # the peak is brightest
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    boxes = np.array([[0.25, 0.25, 0.75, 0.5], [0, 0, 0, 0]])  # second row is padding: not drawn
    rgb = overlay_rgb(image, None, boxes=boxes, box_color=(0, 1, 0))
    green = (rgb[..., 1] == 1) & (rgb[..., 0] == 0)
    assert green[4, 4:8].all() and green[11, 4:8].all() and green[4:12, 4].all() and green[4:12, 7].all()
    assert not green[6, 5] and green.sum() == 2 * 4 + 2 * 8 - 4
    assert not green[0, 0]


def test_overlay_rejects_bad_input():
    with pytest.raises(ValueError, match="attn_map must be"):
        overlay_rgb(np.zeros((8, 8)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="image must be"):
        overlay_rgb(np.zeros((8, 8, 2)), None)
    with pytest.raises(ValueError, match="alpha"):
        overlay_rgb(np.zeros((8, 8)), np.zeros((8, 8)), alpha=2.0)


def test_attention_grid_png(tmp_path):
    images = np.random.default_rng(0).uniform(size=(3, 16, 16, 1))
    maps = np.stack([_peaked(16, 16, 3 * i, 5) for i in range(3)])
    boxes = np.tile(np.array([[[0.1, 0.1, 0.5, 0.5]]]), (3, 1, 1))
    path = attention_grid(str(tmp_path / "g.png"), images, {"spatial": maps, "se": None}, boxes=boxes,
                          title="untrained")  # fmt: skip
    png = mpimg.imread(path)
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100
    with pytest.raises(ValueError, match="columns"):
        attention_grid(str(tmp_path / "bad.png"), images, {"spatial": maps[:2]})
