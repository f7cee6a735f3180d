"""Capture: every sown map by path, kinds inferred, upsampled to the image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from viz_toys import ToyClassifier

from attn_jax.viz.capture import capture_attention, infer_kind


@pytest.fixture(scope="module")
def toy():
    model = ToyClassifier()
    images = jax.random.normal(jax.random.key(0), (2, 16, 12, 1))
    return model, model.init(jax.random.key(1), images), images


def test_capture_shapes_and_kinds(toy, upsample2x_bilinear):
    model, variables, images = toy
    maps = capture_attention(model, variables, images, train=False)
    assert list(maps) == ["spatial", "channel", "self_1", "self_2", "pool"]
    kinds = {p: m.kind for p, m in maps.items()}
    assert kinds == {"spatial": "spatial", "channel": "channel", "self_1": "query", "self_2": "query",
                     "pool": "query"}  # fmt: skip
    assert maps["channel"].image is None and maps["channel"].grid is None
    assert maps["channel"].raw.shape == (2, 4)
    for path in ("spatial", "self_1", "pool"):
        assert maps[path].grid == (8, 6)
        assert maps[path].image.shape == (2, 16, 12)
    assert maps["self_1"].raw.shape == (2, 48, 48)
    # query maps: tokens placed on the grid in row-major order, averaged over queries
    pool = np.asarray(maps["pool"].raw)[:, 0].reshape(2, 8, 6)
    np.testing.assert_allclose(maps["pool"].image, upsample2x_bilinear(pool), rtol=0, atol=1e-6)


def test_spatial_map_upsampled_bilinearly(toy, upsample2x_bilinear):
    model, variables, images = toy
    m = capture_attention(model, variables, images)["spatial"]
    assert m.raw.shape == (2, 8, 6)
    np.testing.assert_allclose(m.image, upsample2x_bilinear(m.raw), rtol=0, atol=1e-6)
    # a constant map stays constant; a map's range never grows under bilinear interpolation
    assert float(m.image.max()) <= float(m.raw.max()) + 1e-6


def test_infer_kind_rules_and_errors():
    hw = (32, 32)
    assert infer_kind(jnp.ones((2, 8, 8)), hw) == "spatial"
    assert infer_kind(jnp.ones((2, 8, 8, 1)), hw) == "spatial"
    assert infer_kind(jnp.ones((2, 1, 64)), hw) == "query"
    assert infer_kind(jnp.ones((2, 4, 1, 64)), hw) == "query"  # heads
    assert infer_kind(jnp.ones((2, 16, 16)) / 16, hw) == "query"  # rows sum to 1: 4x4 non-local map
    assert infer_kind(jnp.full((2, 16, 16), 0.5), hw) == "spatial"
    assert infer_kind(jnp.ones((2, 5)), hw) == "channel"
    with pytest.raises(ValueError, match="cannot place"):
        infer_kind(jnp.ones((2, 3, 7)), hw)
    with pytest.raises(ValueError, match="rank"):
        infer_kind(jnp.ones((2,)), hw)


def test_kinds_override_and_bad_input(toy):
    model, variables, images = toy
    maps = capture_attention(model, variables, images, kinds={"spatial": "spatial"})
    assert maps["spatial"].kind == "spatial"
    with pytest.raises(ValueError, match="no attention map"):
        capture_attention(model, variables, images, kinds={"nope": "query"})
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        capture_attention(model, variables, images[0])
