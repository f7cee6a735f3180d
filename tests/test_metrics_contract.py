"""Metric inputs: NaN detection scores rejected (ranking them depends on record order), every empty
evaluator reports NaN, and postprocess accepts generate_anchors' NumPy anchors batched under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.detection import generate_anchors, postprocess
from attn_jax.metrics import (
    DetectionEvaluator,
    ImageRecord,
    SegmentationEvaluator,
    coco_evaluate,
    voc_evaluate,
)
from attn_jax.metrics.localization import LocalizationStats

GT = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.8, 0.9]])


def _records():
    good = ImageRecord(GT, np.array([0, 0]), GT, np.array([0.9, 0.8]), np.array([0, 0]))
    nan = ImageRecord(GT, np.array([0, 0]), GT[::-1], np.array([np.nan, 0.5]), np.array([0, 0]))
    return [good, nan]


@pytest.mark.parametrize("evaluate", [coco_evaluate, voc_evaluate])
@pytest.mark.parametrize("order", [1, -1])
def test_nan_scores_are_rejected_in_any_record_order(evaluate, order):
    with pytest.raises(ValueError, match=r"det_scores of image \d contain 1 NaN"):
        evaluate(_records()[::order], 1)


def test_evaluator_rejects_nan_scores_naming_the_example():
    ev = DetectionEvaluator(num_classes=1)
    boxes, valid = np.stack([GT, GT]), np.ones((2, 2), bool)
    scores = np.array([[0.9, 0.8], [0.7, np.nan]])
    with pytest.raises(
        ValueError, match=r"scores of batch example 1 \(image 1 of the eval set\) contain NaN"
    ):
        ev.add_batch(boxes, scores, np.zeros((2, 2), int), valid, boxes, np.zeros((2, 2), int), valid)


def test_nan_score_of_a_padded_detection_is_ignored():
    ev = DetectionEvaluator(num_classes=1)
    boxes, valid = np.stack([GT]), np.array([[True, False]])
    ev.add_batch(boxes, np.array([[0.9, np.nan]]), np.zeros((1, 2), int), valid, boxes, np.zeros((1, 2), int),
                 np.ones((1, 2), bool))  # fmt: skip
    assert ev.result()["num_images"] == 1


def test_empty_evaluators_all_report_nan():
    det = DetectionEvaluator(num_classes=2).result()
    assert det["num_images"] == 0
    assert (
        all(np.isnan(v) for k, v in det.items() if k != "num_images") and "mAP" in det and "AP50_voc" in det
    )
    seg = SegmentationEvaluator(num_classes=3).result()
    assert np.isnan(seg["mIoU"]) and np.isnan(seg["pixel_accuracy"])
    loc = LocalizationStats().compute()
    assert loc["count"] == 0 and np.isnan(loc["pointing_game"]) and np.isnan(loc["energy"])


def test_postprocess_takes_numpy_anchors_batched_under_jit():
    anchors = generate_anchors((4, 4), stride=4, sizes=(8,), aspect_ratios=(1.0, 2.0))
    assert isinstance(anchors, np.ndarray)
    n = anchors.shape[0]
    logits = jnp.full((3, n, 2), -10.0).at[:, 5, 1].set(4.0)
    deltas = jnp.zeros((3, n, 4))
    dets = jax.jit(lambda c, d: postprocess(c, d, anchors, max_detections=4))(logits, deltas)
    assert dets.boxes.shape == (3, 4, 4)
    np.testing.assert_array_equal(dets.valid[:, 0], [True] * 3)
    np.testing.assert_allclose(
        dets.boxes[:, 0], np.broadcast_to(np.clip(anchors[5], 0, 1), (3, 4)), atol=1e-6
    )
