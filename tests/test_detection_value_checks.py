"""Detection edge cases: zero boxes in NMS, NaN / Inf model outputs never valid detections, gt labels
outside [0, C) a ValueError (eager) or a NaN loss (jit), padded gt rows free to hold anything.

Expected values are worked out by hand in the comments.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.detection import assign_targets, detection_loss, nms_keep, postprocess

# two anchors far apart; deltas 0 decode to the anchor itself
ANCHORS = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], np.float32)


def test_nms_of_zero_boxes_is_empty():
    for fn in (nms_keep, jax.jit(nms_keep)):
        keep = fn(jnp.zeros((0, 4)), jnp.zeros((0,)))
        assert keep.shape == (0,) and keep.dtype == jnp.bool_
    keep = nms_keep(jnp.zeros((0, 4)), jnp.zeros((0,)), valid=jnp.zeros(0, bool), classes=jnp.zeros(0, int))
    assert keep.shape == (0,)
    with pytest.raises(ValueError, match=r"valid of shape \(2,\)"):
        nms_keep(jnp.zeros((2, 4)), jnp.zeros((2,)), valid=jnp.ones(3, bool))


def test_nms_never_keeps_a_nan_box_or_score():
    boxes = jnp.array(
        [[0.0, 0.0, 0.5, 0.5], [jnp.nan, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0], [0, 0, jnp.inf, 1]]
    )
    scores = jnp.array([jnp.nan, 0.9, 0.8, 0.7])
    # before: all four kept (NaN IoUs suppress nothing); now only the finite box with a real score
    np.testing.assert_array_equal(jax.jit(nms_keep)(boxes, scores), [False, False, True, False])


def _logits(rows):
    out = np.full((2, 2), -10.0, np.float32)
    for (a, c), v in rows.items():
        out[a, c] = v
    return jnp.asarray(out)


def test_postprocess_never_returns_a_box_from_non_finite_deltas():
    # 3 images: anchor 0 (score sigmoid(3)) has a NaN dy, +Inf dy, -Inf dh; anchor 1 (score sigmoid(1))
    # decodes to itself. Before, anchor 0 came first as valid: a NaN box, [1, 0, 1, .5] (Inf, clipped),
    # or the zero-height [.25, 0, .25, .5]
    logits = jnp.broadcast_to(_logits({(0, 0): 3.0, (1, 1): 1.0}), (3, 2, 2))
    deltas = jnp.zeros((3, 2, 4)).at[0, 0, 0].set(jnp.nan).at[1, 0, 0].set(jnp.inf).at[2, 0, 2].set(-jnp.inf)
    dets = jax.jit(lambda c, d: postprocess(c, d, ANCHORS, max_detections=2))(logits, deltas)
    np.testing.assert_array_equal(dets.valid, [[True, False]] * 3)
    np.testing.assert_allclose(dets.boxes[:, 0], [ANCHORS[1]] * 3, atol=1e-6)
    np.testing.assert_array_equal(dets.boxes[:, 1], np.zeros((3, 4)))
    np.testing.assert_allclose(dets.scores, [[1 / (1 + np.exp(-1.0)), 0.0]] * 3, rtol=1e-6)
    np.testing.assert_array_equal(dets.classes, [[1, 0]] * 3)


def test_postprocess_never_returns_an_overflowed_box():
    # variance 1e3 on the centre: a finite dy of 1e34 moves it by 1e34 * 1e3 * 0.5 = 5e36 (finite), 1e36
    # by 5e38, past float32's 3.4e38: an infinite box (clipped to [1, 0, 1, .5] before), invalid
    logits = _logits({(0, 0): 3.0, (1, 1): 1.0})
    for dy, valid in ((1e34, [True, True]), (1e36, [True, False])):
        deltas = jnp.zeros((2, 4)).at[0, 0].set(dy)
        dets = postprocess(logits, deltas, ANCHORS, max_detections=2, variances=(1e3, 1e3, 0.2, 0.2))
        np.testing.assert_array_equal(dets.valid, valid)
    np.testing.assert_allclose(dets.boxes[0], ANCHORS[1], atol=1e-6)


def test_postprocess_nan_logits_take_no_candidate_slot():
    # anchor 0 is all NaN, sign bit set (as x86's default NaN): its sigmoid is a positive NaN, which
    # lax.top_k ranks above every number, so with pre_nms_top_k=2 both slots went to NaN (no detection)
    neg_nan = np.copysign(np.nan, -1.0)
    logits = _logits({(0, 0): neg_nan, (0, 1): neg_nan, (1, 0): 2.0})
    dets = jax.jit(lambda c: postprocess(c, jnp.zeros((2, 4)), ANCHORS, pre_nms_top_k=2, max_detections=2))(
        logits
    )
    np.testing.assert_array_equal(dets.valid, [True, False])
    np.testing.assert_array_equal(dets.classes, [0, 0])
    np.testing.assert_allclose(dets.boxes[0], ANCHORS[1], atol=1e-6)
    assert float(dets.scores[0]) == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-6)
    all_nan = postprocess(jnp.full((2, 2), jnp.nan), jnp.zeros((2, 4)), ANCHORS, max_detections=2)
    assert not np.any(all_nan.valid) and np.all(all_nan.boxes == 0)


# gt 0 sits on anchor 0 exactly (label 1); gt 1 is padding
GT = np.array([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]], np.float32)
VALID = np.array([[True, False]])


def test_padded_gt_rows_may_hold_any_label():
    # image 0 as GT; image 1 is all padding, so its anchors' matched_gt is a padded row (label -1)
    gt, labels = np.concatenate([GT, np.zeros_like(GT)]), np.array([[1, -1], [-1, -1]])
    t = assign_targets(ANCHORS, gt, labels, np.array([[True, False], [False, False]]), force_best=False)
    np.testing.assert_array_equal(t.positive, [[True, False], [False, False]])
    np.testing.assert_array_equal(t.negative, [[False, True], [True, True]])
    np.testing.assert_array_equal(t.labels, [[1, 1], [-1, -1]])  # never read: not positive
    logits, deltas = jnp.zeros((2, 2, 2)), jnp.zeros((2, 2, 4))  # anchor 0 is gt 0 exactly: deltas 0
    loss, aux = jax.jit(detection_loss)(logits, deltas, ANCHORS, t)
    # logits 0 -> p = 1/2 everywhere; focal terms: the positive entry 0.25 (1/2)^2 log 2, each of the 7
    # negative entries 0.75 (1/2)^2 log 2: (0.0625 + 7 * 0.1875) log 2 over 1 positive; box loss 0
    np.testing.assert_allclose(aux["cls_loss"], 1.375 * np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(loss, 1.375 * np.log(2.0), rtol=1e-6)
    assert int(aux["num_positives"]) == 1 and float(aux["box_loss"]) == 0.0


@pytest.mark.parametrize(
    ("label", "num_classes", "message"),
    [(-1, None, r"gt_labels holds -1 at valid gt \(0, 0\), want >= 0"), (2, 2, r"holds 2 .* in \[0, 2\)")],
)
def test_assign_targets_rejects_bad_labels_of_valid_gt(label, num_classes, message):
    with pytest.raises(ValueError, match=message):
        assign_targets(ANCHORS, GT, np.array([[label, 0]]), VALID, num_classes=num_classes)
    with pytest.raises(ValueError, match=r"gt_boxes holds \[nan, 0.0, 0.5, 0.5\] at valid gt \(0, 0\)"):
        assign_targets(ANCHORS, np.where(np.arange(4) == 0, np.nan, GT), np.array([[1, 0]]), VALID)


def test_detection_loss_label_outside_the_classes():
    # label 2 of C = 2 at the positive anchor 0: one_hot gave zeros, training it as background
    t = assign_targets(ANCHORS, GT, np.array([[2, 0]]), VALID, force_best=False)
    logits, deltas = jnp.zeros((1, 2, 2)), jnp.zeros((1, 2, 4))
    with pytest.raises(
        ValueError, match=r"targets.labels holds 2 at positive anchor \(0, 0\), outside \[0, 2\)"
    ):
        detection_loss(logits, deltas, ANCHORS, t)
    loss, aux = jax.jit(detection_loss)(logits, deltas, ANCHORS, t)
    assert np.isnan(loss) and np.isnan(aux["cls_loss"]) and aux["box_loss"] == 0
