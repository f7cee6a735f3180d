"""Detection losses: focal loss values, normalisation by positives, ignored anchors, box losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.detection import assign_targets, detection_loss, encode_boxes, focal_loss, smooth_l1

ANCHORS = jnp.array(
    [[0.0, 0.0, 0.2, 0.2], [0.0, 0.08, 0.2, 0.28], [0.5, 0.5, 0.9, 0.9], [0.0, 0.0, 0.1, 0.1]]
)
GT = jnp.array([[[0.0, 0.0, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]]])
LABELS = jnp.array([[1, 0]])
VALID = jnp.array([[True, False]])


def _targets():
    return assign_targets(ANCHORS, GT, LABELS, VALID, force_best=False)


def test_focal_loss_formula():
    x, y = jnp.array([[0.3, -1.2]]), jnp.array([[1.0, 0.0]])
    p = jax.nn.sigmoid(x)
    pt = jnp.where(y == 1, p, 1 - p)
    at = jnp.where(y == 1, 0.25, 0.75)
    expected = jnp.sum(-at * (1 - pt) ** 2 * jnp.log(pt))
    np.testing.assert_allclose(focal_loss(x, y, jnp.array([True])), expected, rtol=1e-5)
    assert focal_loss(x, y, jnp.array([False])) == 0


def test_smooth_l1():
    beta = 0.5
    np.testing.assert_allclose(smooth_l1(jnp.array([0.2, 2.0]), jnp.zeros(2), beta), [0.04, 1.75], rtol=1e-6)


def test_loss_perfect_boxes_and_ignored_anchor():
    t = _targets()
    np.testing.assert_array_equal(t.positive[0], [1, 0, 0, 0])
    np.testing.assert_array_equal(t.negative[0], [0, 0, 1, 1])  # anchor 1 (IoU 0.43) is ignored
    deltas = encode_boxes(t.matched_boxes, ANCHORS[None])
    logits = jnp.zeros((1, 4, 2))
    for kind in ("smooth_l1", "giou"):
        total, aux = detection_loss(logits, deltas, ANCHORS, t, box_loss=kind)
        np.testing.assert_allclose(aux["box_loss"], 0.0, atol=1e-6)
        assert int(aux["num_positives"]) == 1
    # the ignored anchor's logits do not change the loss; a negative's do
    bumped = logits.at[0, 1].set(5.0)
    np.testing.assert_allclose(detection_loss(bumped, deltas, ANCHORS, t)[0], total, rtol=1e-6)
    assert detection_loss(logits.at[0, 2].set(5.0), deltas, ANCHORS, t)[0] > total


def test_normalised_by_positives_and_differentiable():
    t = _targets()
    deltas = jnp.ones((1, 4, 4)) * 0.5
    loss, aux = detection_loss(jnp.zeros((1, 4, 2)), deltas, ANCHORS, t)
    per_coord = float(smooth_l1(jnp.array(0.5), jnp.array(0.0)))
    np.testing.assert_allclose(aux["box_loss"], 4 * per_coord, rtol=1e-6)
    doubled = jax.tree.map(lambda x: jnp.concatenate([x, x]), t)
    loss2, _ = detection_loss(jnp.zeros((2, 4, 2)), jnp.concatenate([deltas, deltas]), ANCHORS, doubled)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)  # twice the sum over twice the positives
    grads = jax.grad(lambda c, d: detection_loss(c, d, ANCHORS, t, box_loss="giou")[0], argnums=(0, 1))(
        jnp.zeros((1, 4, 2)), deltas
    )
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert np.all(grads[1][0, 1:] == 0)  # only the positive anchor gets a box gradient
    # focal gradients at logit 0 (p = 1/2, dp/dx = 1/4), over 1 positive: the positive entry
    # d/dx[-0.25 (1-p)^2 log p] = -(1 + 2 log 2) / 32, a negative entry d/dx[-0.75 p^2 log(1-p)] =
    # 3 (1 + 2 log 2) / 32; anchor 1 is ignored (IoU 0.43): no gradient
    pos, neg = -(1 + 2 * np.log(2.0)) / 32, 3 * (1 + 2 * np.log(2.0)) / 32
    expected = [[[neg, pos], [0.0, 0.0], [neg, neg], [neg, neg]]]
    np.testing.assert_allclose(grads[0], expected, rtol=1e-5, atol=1e-7)


def test_no_positives_is_finite():
    t = assign_targets(ANCHORS, GT, LABELS, jnp.zeros_like(VALID))
    loss, aux = detection_loss(jnp.zeros((1, 4, 2)), jnp.zeros((1, 4, 4)), ANCHORS, t)
    # every anchor negative: 4 x 2 focal terms at p = 1/2, each 0.75 (1/2)^2 log 2, over max(0, 1) = 1
    np.testing.assert_allclose(loss, 8 * 0.1875 * np.log(2.0), rtol=1e-6)
    assert aux["box_loss"] == 0 and int(aux["num_positives"]) == 0


def test_bad_arguments():
    t = _targets()
    with pytest.raises(ValueError, match="box_loss"):
        detection_loss(jnp.zeros((1, 4, 2)), jnp.zeros((1, 4, 4)), ANCHORS, t, box_loss="l2")
    with pytest.raises(ValueError, match="anchors"):
        detection_loss(jnp.zeros((1, 3, 2)), jnp.zeros((1, 4, 4)), ANCHORS, t)
