"""Out-of-range classes in the metrics and segmentation losses: a ValueError naming the value where the
values are concrete, a documented harmless rule under jit; padding and ignore_index keep working.

Every expected number is worked out by hand in the comments (C = 3 classes unless said otherwise).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.losses import dice_loss, segmentation_cross_entropy
from attn_jax.metrics import (
    DetectionEvaluator,
    ImageRecord,
    SegmentationEvaluator,
    coco_evaluate,
    confusion_matrix,
    iou_from_confusion,
    voc_evaluate,
)

jit_cm = jax.jit(confusion_matrix, static_argnums=(2, 3))


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        ([99, 99, 99, 99], [0, 1, 2, 0], r"pred holds 99 at index \((0, )?0,?\), outside \[0, 3\): 4 such"),
        ([0, -1, 2, 0], [0, 1, 2, 0], r"pred holds -1 at index \((0, )?1,?\), outside \[0, 3\)"),
        ([0, 1, 255, 0], [0, 1, 2, 0], r"pred holds 255 at index \((0, )?2,?\)"),  # ignore_index: target only
        ([0, 1, 2, 0], [0, -1, 2, 0], r"target holds -1 at index \((0, )?1,?\), outside \[0, 3\) and not ig"),
        ([0, 1, 2, 0], [0, 1, 2, 3], r"target holds 3 at index \((0, )?3,?\)"),
    ],
)
def test_out_of_range_class_is_a_value_error_naming_it(pred, target, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(jnp.asarray(pred), jnp.asarray(target), 3)
    ev = SegmentationEvaluator(num_classes=3)
    with pytest.raises(ValueError, match=message):
        ev.add_batch(np.asarray([pred]), np.asarray([target]))  # index (0, i): batch dim first
    assert ev.matrix.sum() == 0  # nothing of the bad batch was added


def test_ignored_pixels_and_padding_examples_may_hold_anything():
    # example 0: target 255 (ignored) under pred 99; example 1 is padding full of garbage.
    pred = np.array([[[0, 99], [1, 1]], [[-7, 42], [99, 3]]])
    target = np.array([[[0, 255], [1, 2]], [[-1, 9], [255, 77]]])
    ev = SegmentationEvaluator(num_classes=3)
    ev.add_batch(pred, target, valid=np.array([True, False]))
    # counted pixels: (t, p) = (0, 0), (1, 1), (2, 1)
    np.testing.assert_array_equal(ev.matrix, [[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    out = ev.result()
    # IoU_0 = 1/1, IoU_1 = 1 / (1 + 1 FP) = 1/2, IoU_2 = 0 / (1 FN) = 0; accuracy 2/3
    np.testing.assert_allclose(out["per_class_iou"], [1.0, 0.5, 0.0])
    assert out["mIoU"] == pytest.approx(0.5) and out["pixel_accuracy"] == pytest.approx(2 / 3)


def test_under_jit_an_out_of_range_prediction_is_a_miss_never_a_hit():
    # all-99 predictions (clipped to class 2 before: mIoU 1/12, accuracy 1/4): each pixel goes to column
    # (t + 1) mod 3 -> (0, 1), (1, 2), (2, 0), (0, 1)
    cm = np.asarray(jit_cm(jnp.full(4, 99), jnp.array([0, 1, 2, 0]), 3, 255))
    np.testing.assert_array_equal(cm, [[0, 2, 0], [0, 0, 1], [1, 0, 0]])
    out = iou_from_confusion(cm)
    assert out["mIoU"] == 0.0 and out["pixel_accuracy"] == 0.0
    # mixed: (0, 0) hit, (0, -1) -> (0, 1), (1, 1) hit, (2, 7) -> (2, 0), ignored, (1, 1) hit
    cm = np.asarray(jit_cm(jnp.array([0, -1, 1, 7, 99, 1]), jnp.array([0, 0, 1, 2, 255, 1]), 3, 255))
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    out = iou_from_confusion(cm)
    # IoU_0 = 1 / (2 + 2 - 1) = 1/3, IoU_1 = 2 / (2 + 3 - 2) = 2/3, IoU_2 = 0 / 1 = 0
    np.testing.assert_allclose(out["per_class_iou"], [1 / 3, 2 / 3, 0.0])
    assert out["mIoU"] == pytest.approx(1 / 3) and out["pixel_accuracy"] == pytest.approx(3 / 5)


def test_under_jit_an_out_of_range_target_is_not_counted():
    # targets -1 and 5 (not ignore_index) drop out; so does the C = 1 pixel whose prediction has no wrong
    # class to go to
    cm = np.asarray(jit_cm(jnp.array([0, 1, 2, 2]), jnp.array([-1, 5, 2, 0]), 3, 255))
    np.testing.assert_array_equal(cm, [[0, 0, 1], [0, 0, 0], [0, 0, 1]])
    cm = np.asarray(jit_cm(jnp.array([0, 3, 0]), jnp.array([0, 0, 0]), 1, None))
    np.testing.assert_array_equal(cm, [[2]])


def test_evaluator_arguments():
    with pytest.raises(ValueError, match="num_classes must be a positive int; got 0"):
        SegmentationEvaluator(num_classes=0)
    ev = SegmentationEvaluator(num_classes=2)
    with pytest.raises(ValueError, match="non-negative whole numbers; got min -1"):
        ev.add_confusion(np.array([[3, -1], [0, 2]]))
    with pytest.raises(ValueError, match="square"):
        iou_from_confusion(np.zeros((2, 3)))


def test_segmentation_losses_check_labels():
    logits = jnp.zeros((1, 3, 3))  # uniform: every counted pixel's cross-entropy is log 3
    with pytest.raises(ValueError, match=r"labels holds -1 at index \(0, 1\), outside \[0, 3\)"):
        segmentation_cross_entropy(logits, jnp.array([[0, -1, 255]]))
    with pytest.raises(ValueError, match=r"labels holds 3 at index \(0, 0\)"):
        dice_loss(logits, jnp.array([[3, 1, 255]]))
    ce = jax.jit(segmentation_cross_entropy)
    assert float(ce(logits, jnp.array([[0, 1, 255]]))) == pytest.approx(np.log(3.0), rel=1e-6)
    assert np.isnan(ce(logits, jnp.array([[0, -1, 255]])))  # before: -1 wrapped to class 2, log 3
    assert np.isnan(jax.jit(dice_loss)(logits, jnp.array([[3, 1, 255]])))


def _rec(gt_labels, det_labels, det_boxes=None):
    gt = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.8, 0.9]])
    det = gt if det_boxes is None else np.asarray(det_boxes, np.float64)
    return ImageRecord(gt, np.asarray(gt_labels), det, np.array([0.9, 0.8]), np.asarray(det_labels))


@pytest.mark.parametrize("evaluate", [coco_evaluate, voc_evaluate])
def test_detection_labels_outside_the_classes_are_a_value_error(evaluate):
    good = _rec([0, 1], [0, 1])
    # before: class 5 was skipped, so these scored AP 1.0 on the remaining class
    with pytest.raises(ValueError, match=r"det_labels of image 1 hold 5 \(box 1\), outside \[0, 2\)"):
        evaluate([good, _rec([0, 1], [0, 5])], 2)
    with pytest.raises(ValueError, match=r"gt_labels of image 0 hold -1 \(box 0\), outside \[0, 2\)"):
        evaluate([_rec([-1, 1], [0, 1]), good], 2)
    with pytest.raises(ValueError, match=r"det_boxes of image 0 hold \[nan, 0.1, 0.3, 0.3\] \(box 0\)"):
        evaluate([_rec([0, 1], [0, 1], [[np.nan, 0.1, 0.3, 0.3], [0.5, 0.5, 0.8, 0.9]])], 2)
    with pytest.raises(ValueError, match="num_classes must be a positive int; got 0"):
        evaluate([good], 0)


def test_detection_evaluator_checks_valid_rows_only():
    gt = np.array([[[0.1, 0.1, 0.3, 0.3], [0.0, 0.0, 0.0, 0.0]]] * 2)
    gt_labels, gt_valid = np.array([[1, -1], [1, -1]]), np.array([[True, False], [True, False]])
    dets = np.array([[[0.1, 0.1, 0.3, 0.3], [np.nan] * 4]] * 2)
    classes, valid = np.array([[1, 7], [1, 7]]), np.array([[True, False], [True, False]])
    scores = np.array([[0.9, np.nan], [0.9, np.nan]])
    ev = DetectionEvaluator(num_classes=2)
    # padded rows hold label -1, class 7, a NaN box and a NaN score: all fine, both images are perfect
    ev.add_batch(dets, scores, classes, valid, gt, gt_labels, gt_valid)
    out = ev.result()
    assert out["num_images"] == 2 and out["mAP"] == pytest.approx(1.0) and out["AP50_voc"] == 1.0
    bad_gt = gt_labels.copy()
    bad_gt[1, 0] = 2
    with pytest.raises(ValueError, match=r"gt_labels of batch example 1 \(image 3 of the eval set\) hold 2 "):
        ev.add_batch(dets, scores, classes, valid, gt, bad_gt, gt_valid)
    assert len(ev.records) == 2  # the bad batch added nothing, not even its good example 0
    with pytest.raises(ValueError, match=r"det_labels of batch example 0 .* hold 7 \(box 1\)"):
        ev.add_batch(dets, np.full((2, 2), 0.5), classes, np.ones((2, 2), bool), gt, gt_labels, gt_valid)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        DetectionEvaluator(num_classes=-1)
