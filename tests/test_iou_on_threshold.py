"""IoUs exactly on a threshold: COCO and anchor matching count them (>=), VOC does not (>).

The boxes have power-of-two sides, so their IoUs (0.25, 0.5, 0.75) are exact in float32 and float64.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.detection import match_anchors
from attn_jax.metrics import ImageRecord, coco_evaluate, voc_evaluate

DET = np.array([[0.0, 0.0, 0.5, 0.5]])  # area 1/4
GT_HALF = np.array([[0.0, 0.0, 0.25, 0.5]])  # area 1/8 inside DET: IoU exactly 0.5
GT_THREE_QUARTERS = np.array([[0.0, 0.0, 0.375, 0.5]])  # area 3/16 inside DET: IoU exactly 0.75


def _record(gt):
    return ImageRecord(gt, np.zeros(1, int), DET, np.array([0.9]), np.zeros(1, int))


@pytest.mark.parametrize("image_size", [(1.0, 1.0), (64.0, 64.0)])
def test_coco_matches_an_iou_equal_to_the_threshold(image_size):
    coco = coco_evaluate([_record(GT_HALF)], 1, image_size=image_size)
    assert coco["AP50"] == pytest.approx(1.0) and coco["AP75"] == 0.0
    assert coco["mAP"] == pytest.approx(0.1)  # matched at 0.50 only, 1 of 10 thresholds
    coco = coco_evaluate([_record(GT_THREE_QUARTERS)], 1, image_size=image_size)
    assert coco["AP50"] == pytest.approx(1.0) and coco["AP75"] == pytest.approx(1.0)
    assert coco["mAP"] == pytest.approx(0.6)  # 0.50, 0.55, ..., 0.75: 6 of 10


def test_voc_needs_an_iou_above_the_threshold():
    # PASCAL VOC's devkit counts a detection when ovmax > ovthresh: IoU 0.5 is a false positive at 0.5.
    assert voc_evaluate([_record(GT_HALF)], 1)["AP50_voc"] == 0.0
    assert voc_evaluate([_record(GT_THREE_QUARTERS)], 1)["AP50_voc"] == pytest.approx(1.0)
    assert voc_evaluate([_record(GT_HALF)], 1, iou_threshold=0.49)["AP50_voc"] == pytest.approx(1.0)


def test_anchor_matching_on_both_thresholds():
    gt = jnp.asarray(np.concatenate([GT_HALF, np.zeros((1, 4))]))
    anchors = jnp.array(
        [
            [0.0, 0.0, 0.5, 0.5],  # IoU exactly 0.5 with gt 0: positive (>= 0.5)
            [0.0, 0.0, 0.25, 1.0],  # area 1/4 containing gt 0: IoU 0.5: positive
            [0.0, 0.0, 0.5, 1.0],  # area 1/2 containing gt 0: IoU exactly 0.25: ignored (not < 0.25)
            [0.0, 0.0, 1.0, 1.0],  # area 1: IoU 0.125: negative
        ]
    )
    valid = jnp.array([True, False])
    m = match_anchors(anchors, gt, valid, positive_threshold=0.5, negative_threshold=0.25, force_best=False)
    np.testing.assert_array_equal(m.positive, [True, True, False, False])
    np.testing.assert_array_equal(m.negative, [False, False, False, True])
