"""Box geometry, coding round-trip and anchors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_jax.detection import (
    anchor_shapes,
    box_area,
    decode_boxes,
    elementwise_giou,
    encode_boxes,
    generate_anchors,
    pairwise_iou,
)


def test_iou_hand_computed():
    a = jnp.array([[0.0, 0.0, 2.0, 2.0]])
    b = jnp.array([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 4.0, 4.0], [0.0, 0.0, 1.0, 2.0]])
    np.testing.assert_allclose(pairwise_iou(a, b), [[1 / 7, 1.0, 0.0, 0.5]], rtol=1e-6)


def test_degenerate_boxes_have_zero_iou_and_no_nan():
    point = jnp.array([0.5, 0.5, 0.5, 0.5])
    line = jnp.array([0.2, 0.1, 0.2, 0.9])
    inverted = jnp.array([0.8, 0.8, 0.2, 0.2])
    normal = jnp.array([0.0, 0.0, 1.0, 1.0])
    boxes = jnp.stack([point, line, inverted, normal])
    iou = pairwise_iou(boxes, boxes)
    assert np.all(np.isfinite(iou))
    expected = np.zeros((4, 4))
    expected[3, 3] = 1.0
    np.testing.assert_array_equal(iou, expected)
    np.testing.assert_array_equal(box_area(boxes), [0.0, 0.0, 0.0, 1.0])
    # a point with itself: IoU 0 (empty union), and an empty hull adds no penalty -> GIoU exactly 0
    np.testing.assert_array_equal(elementwise_giou(point, point), 0.0)
    grad = jax.grad(lambda b: pairwise_iou(b, boxes).sum())(boxes)
    assert np.all(np.isfinite(grad))


def test_giou_matches_definition():
    a = jnp.array([0.0, 0.0, 1.0, 1.0])
    b = jnp.array([2.0, 2.0, 3.0, 3.0])  # disjoint: iou 0, hull 9, union 2 -> -7/9
    np.testing.assert_allclose(elementwise_giou(a, b), -7.0 / 9.0, rtol=1e-6)
    np.testing.assert_allclose(elementwise_giou(a, a), 1.0, rtol=1e-6)


def test_bad_box_shape_raises():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        pairwise_iou(jnp.zeros((3, 5)), jnp.zeros((2, 4)))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(0.05, 0.9), min_size=2, max_size=2),
    st.lists(st.floats(0.01, 0.5), min_size=2, max_size=2),
    st.lists(st.floats(0.05, 0.9), min_size=2, max_size=2),
    st.lists(st.floats(0.02, 0.5), min_size=2, max_size=2),
)
def test_coding_round_trip(centre, size, a_centre, a_size):
    box = np.array([centre[0], centre[1], centre[0] + size[0], centre[1] + size[1]], np.float64)
    anchor = np.array([a_centre[0], a_centre[1], a_centre[0] + a_size[0], a_centre[1] + a_size[1]])
    with jax.enable_x64():
        deltas = encode_boxes(jnp.asarray(box), jnp.asarray(anchor))
        back = decode_boxes(deltas, jnp.asarray(anchor))
    np.testing.assert_allclose(back, box, rtol=0, atol=1e-12)


def test_coding_identity_and_variances():
    anchor = jnp.array([[0.2, 0.2, 0.4, 0.6]])
    np.testing.assert_allclose(encode_boxes(anchor, anchor), 0.0, atol=1e-7)
    shifted = anchor + jnp.array([0.02, 0.0, 0.02, 0.0])  # dy = 0.02 / 0.2 / 0.1 = 1
    np.testing.assert_allclose(encode_boxes(shifted, anchor)[0], [1.0, 0.0, 0.0, 0.0], atol=1e-5)
    batch = jnp.tile(shifted, (3, 1))
    np.testing.assert_allclose(decode_boxes(encode_boxes(batch, anchor), anchor), batch, atol=1e-6)


def test_anchor_layout_matches_head_reshape():
    sizes, ratios = (12, 16), (0.5, 0.75)
    anchors = generate_anchors((16, 16), stride=4, sizes=sizes, aspect_ratios=ratios)
    assert anchors.shape == (16 * 16 * 4, 4) and anchors.dtype == np.float32
    grid = anchors.reshape(16, 16, 4, 4) * 64
    centres = (grid[..., :2] + grid[..., 2:]) / 2
    np.testing.assert_allclose(centres[3, 5, 2], [3.5 * 4, 5.5 * 4], atol=1e-4)  # row 3, col 5
    hw = grid[0, 0, :, 2:] - grid[0, 0, :, :2]
    np.testing.assert_allclose(hw, anchor_shapes(sizes, ratios), atol=1e-4)
    np.testing.assert_allclose(hw[:, 0] * hw[:, 1], [144, 144, 256, 256], rtol=1e-4)
    np.testing.assert_allclose(hw[:, 0] / hw[:, 1], [0.5, 0.75, 0.5, 0.75], rtol=1e-4)


def test_anchor_bad_arguments():
    with pytest.raises(ValueError, match="sizes"):
        generate_anchors((4, 4), 4, sizes=(), aspect_ratios=(1.0,))
    with pytest.raises(ValueError, match="stride"):
        generate_anchors((4, 4), 0, sizes=(8,))
