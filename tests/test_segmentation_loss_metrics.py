"""Segmentation cross-entropy / Dice with an ignore index, and confusion-matrix IoU."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_jax.losses import dice_loss, segmentation_cross_entropy, segmentation_loss
from attn_jax.metrics import SegmentationEvaluator, confusion_matrix, iou_from_confusion


def test_cross_entropy_ignores_pixels():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    labels = rng.integers(0, 3, (2, 4, 4))
    labels[0, 0, :] = 255
    ce = segmentation_cross_entropy(logits, jnp.asarray(labels))
    keep = labels != 255
    per = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(keep, labels, 0))
    np.testing.assert_allclose(ce, np.asarray(per)[keep].mean(), rtol=1e-6)
    # changing ignored pixels' logits changes nothing, and they get no gradient
    g = jax.grad(lambda x: segmentation_cross_entropy(x, jnp.asarray(labels)))(logits)
    assert np.all(np.asarray(g)[0, 0] == 0) and np.any(np.asarray(g)[1] != 0)
    all_ignored = segmentation_cross_entropy(logits, jnp.full((2, 4, 4), 255))
    assert all_ignored == 0 and np.isfinite(all_ignored)


def test_dice_perfect_and_worst():
    labels = jnp.array([[[0, 1], [2, 255]]])
    perfect = jax.nn.one_hot(jnp.where(labels == 255, 0, labels), 3) * 100.0
    assert dice_loss(perfect, labels, smooth=0.0) == pytest.approx(0.0, abs=1e-6)
    wrong = jax.nn.one_hot((jnp.where(labels == 255, 0, labels) + 1) % 3, 3) * 100.0
    assert dice_loss(wrong, labels, smooth=0.0) == pytest.approx(1.0, abs=1e-6)
    total, aux = segmentation_loss(wrong, labels, dice_weight=0.5)
    np.testing.assert_allclose(total, aux["ce_loss"] + 0.5 * aux["dice_loss"], rtol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        segmentation_cross_entropy(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 3), int))


def test_confusion_matrix_and_iou_hand_computed():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 1]])
    cm = np.asarray(jax.jit(confusion_matrix, static_argnums=2)(pred, target, 3))
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    out = iou_from_confusion(cm)
    np.testing.assert_allclose(out["per_class_iou"], [1 / 3, 3 / 4, 1 / 2])
    assert out["mIoU"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert out["pixel_accuracy"] == pytest.approx(5 / 7)


def test_evaluator_accumulates_and_skips_absent_classes():
    ev = SegmentationEvaluator(num_classes=4)
    target = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
    ev.add_batch(target, target, valid=np.array([True, True]))
    ev.add_batch(np.ones_like(target), target, valid=np.array([False, False]))  # padding: not counted
    out = ev.result()
    assert out["mIoU"] == 1.0 and np.isnan(out["per_class_iou"][2:]).all()
    ev.add_confusion(np.asarray(confusion_matrix(jnp.ones((2, 2), int), jnp.zeros((2, 2), int), 4)))
    assert ev.result()["per_class_iou"][0] == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(jnp.zeros((2, 2), int), jnp.zeros((2, 3), int), 4)
