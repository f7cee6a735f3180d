"""Anchor matching and target assignment: thresholds, forcing, padding, batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.detection import assign_targets, decode_boxes, match_anchors

ANCHORS = jnp.array(
    [
        [0.0, 0.0, 0.2, 0.2],  # 0: identical to gt 0
        [0.0, 0.05, 0.2, 0.25],  # 1: IoU 0.6 with gt 0
        [0.0, 0.1, 0.2, 0.3],  # 2: IoU 1/3 with gt 0 (negative)
        [0.0, 0.08, 0.2, 0.28],  # 3: IoU 12/28 = 0.43 with gt 0 (ignored)
        [0.6, 0.6, 0.9, 0.9],  # 4: far away
        [0.5, 0.5, 0.54, 0.54],  # 5: the best (but poor) anchor for the small gt 1
    ]
)
GT = jnp.array([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.52, 0.52], [0.6, 0.6, 0.9, 0.9]])


def test_thresholds_and_forcing():
    valid = jnp.array([True, True, False])  # gt 2 is padding even though anchor 4 fits it exactly
    m = match_anchors(ANCHORS, GT, valid, positive_threshold=0.5, negative_threshold=0.4)
    np.testing.assert_array_equal(m.positive, [1, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(m.negative, [0, 0, 1, 0, 1, 0])
    assert int(m.matched_gt[5]) == 1 and int(m.matched_gt[0]) == 0 and int(m.matched_gt[1]) == 0
    unforced = match_anchors(ANCHORS, GT, valid, force_best=False)
    np.testing.assert_array_equal(unforced.positive, [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(unforced.negative, [0, 0, 1, 0, 1, 1])


def test_no_valid_gt_makes_everything_negative():
    m = match_anchors(ANCHORS, GT, jnp.zeros(3, bool))
    assert not np.any(m.positive) and np.all(m.negative)


def test_degenerate_gt_claims_nothing():
    gt = jnp.array([[0.3, 0.3, 0.3, 0.3]])
    m = match_anchors(ANCHORS, gt, jnp.array([True]))
    assert not np.any(m.positive)


def test_two_gts_same_best_anchor_and_jit():
    anchors = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    gt = jnp.array([[0.0, 0.0, 0.1, 0.1], [0.1, 0.1, 0.2, 0.2]])
    m = jax.jit(match_anchors)(anchors, gt, jnp.array([True, True]))
    np.testing.assert_array_equal(m.positive, [True, False])
    assert int(m.matched_gt[0]) == 1  # the clash goes to the higher gt index


def test_assign_targets_batched_round_trip():
    gt = jnp.stack([GT, GT[::-1]])
    labels = jnp.array([[3, 7, 1], [1, 7, 3]])
    valid = jnp.array([[True, True, False], [True, True, True]])
    t = jax.jit(assign_targets)(ANCHORS, gt, labels, valid)
    assert t.labels.shape == (2, 6) and t.box_targets.shape == (2, 6, 4)
    np.testing.assert_array_equal(t.labels[0, [0, 1, 5]], [3, 3, 7])
    np.testing.assert_array_equal(t.positive[1], [1, 1, 0, 0, 1, 1])  # example 1: all three gts, reversed
    np.testing.assert_array_equal(t.labels[1, [0, 4, 5]], [3, 1, 7])
    pos = np.asarray(t.positive)
    decoded = decode_boxes(t.box_targets, ANCHORS[None])
    np.testing.assert_allclose(np.asarray(decoded)[pos], np.asarray(t.matched_boxes)[pos], atol=1e-6)
    assert np.all(np.asarray(t.box_targets)[~pos] == 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="negative_threshold"):
        match_anchors(ANCHORS, GT, jnp.ones(3, bool), positive_threshold=0.3, negative_threshold=0.5)
    with pytest.raises(ValueError, match="gt_valid"):
        match_anchors(ANCHORS, GT, jnp.ones(2, bool))
    with pytest.raises(ValueError, match="disagree"):
        assign_targets(ANCHORS, GT, jnp.zeros(2, int), jnp.ones(3, bool))
