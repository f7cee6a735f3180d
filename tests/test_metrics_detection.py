"""COCO / VOC detection metrics: hand-computed cases, edge cases, and parity with pycocotools."""

import contextlib
import io

import numpy as np
import pytest

from attn_jax.metrics import DetectionEvaluator, ImageRecord, coco_evaluate, voc_ap, voc_evaluate

GT = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.8, 0.9]])


def _rec(det_boxes, det_scores, det_labels, gt=GT, gt_labels=(0, 0)):
    return ImageRecord(
        np.asarray(gt, np.float64).reshape(-1, 4),
        np.asarray(gt_labels),
        np.asarray(det_boxes, np.float64).reshape(-1, 4),
        np.asarray(det_scores, np.float64),
        np.asarray(det_labels),
    )


def test_perfect_detections_score_one():
    recs = [_rec(GT, [0.9, 0.8], [0, 0]), _rec(GT[:1], [0.7], [1], GT[:1], [1])]
    coco = coco_evaluate(recs, num_classes=3, image_size=(64, 64))
    assert coco["mAP"] == pytest.approx(1.0) and coco["AP50"] == pytest.approx(1.0)
    assert coco["APs"] == pytest.approx(1.0) and coco["APl"] == -1.0  # no large objects at 64 px
    assert voc_evaluate(recs, 3)["AP50_voc"] == pytest.approx(1.0)


def test_no_detections_score_zero():
    recs = [_rec(np.zeros((0, 4)), [], [])]
    assert coco_evaluate(recs, 1)["mAP"] == 0.0
    assert voc_evaluate(recs, 1)["AP50_voc"] == 0.0
    wrong_class = [_rec(GT, [0.9, 0.8], [1, 1])]
    assert coco_evaluate(wrong_class, 2)["mAP"] == 0.0  # class 1 has no gt: skipped, class 0: AP 0


def test_hand_computed_precision_recall():
    # ranked: TP (0.9), FP (0.8), TP (0.7) over 2 gt -> (P, R) = (1, .5), (.5, .5), (.67, 1)
    dets = [GT[0], [0.6, 0.0, 0.7, 0.1], GT[1]]
    recs = [_rec(dets, [0.9, 0.8, 0.7], [0, 0, 0])]
    assert voc_evaluate(recs, 1)["AP50_voc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # 101-point: recall thresholds 0..0.5 (51) see precision 1, 0.51..1.0 (50) see 2/3
    assert coco_evaluate(recs, 1)["AP50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]), use_07_metric=True) == (
        pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    )


def test_duplicate_is_false_positive_and_iou_threshold():
    shifted = GT[0] + np.array([0.0, 0.05, 0.0, 0.05])  # IoU 0.6 with GT[0]
    recs = [_rec([GT[0], GT[0], shifted], [0.9, 0.8, 0.7], [0, 0, 0], GT[:1], [0])]
    coco = coco_evaluate(recs, 1)
    assert coco["AP50"] == pytest.approx(1.0)  # the duplicates rank below the only TP
    assert coco["mAP"] == pytest.approx(1.0)
    recs = [_rec([shifted], [0.9], [0], GT[:1], [0])]
    coco = coco_evaluate(recs, 1)
    assert coco["AP50"] == pytest.approx(1.0) and coco["AP75"] == 0.0
    assert coco["mAP"] == pytest.approx(0.2)  # matched at 0.50 and 0.55 only: 2 of 10 thresholds


def test_evaluator_drops_padding():
    ev = DetectionEvaluator(num_classes=2, image_size=(64, 64))
    boxes = np.zeros((2, 3, 4))
    boxes[0, :2] = GT
    valid = np.array([[1, 1, 0], [0, 0, 0]], bool)
    gt_boxes = np.stack([np.concatenate([GT, np.zeros((1, 4))])] * 2)
    gt_valid = np.array([[1, 1, 0], [1, 1, 0]], bool)
    ev.add_batch(boxes, np.ones((2, 3)), np.zeros((2, 3), int), valid, gt_boxes, np.zeros((2, 3), int),
                 gt_valid, example_valid=np.array([True, False]))  # fmt: skip
    out = ev.result()
    assert out["num_images"] == 1 and out["mAP"] == pytest.approx(1.0) and out["AP50_voc"] == 1.0


def _random_records(rng, n_images, num_classes):
    recs = []
    for _ in range(n_images):
        g = rng.integers(0, 5)
        centre, size = rng.uniform(0.1, 0.9, (g, 2)), rng.uniform(0.05, 0.6, (g, 2))
        gt = np.clip(np.concatenate([centre - size / 2, centre + size / 2], 1), 0, 1)
        gl = rng.integers(0, num_classes, g)
        jitter = gt + rng.normal(0, 0.08, gt.shape) * np.concatenate([size, size], 1)  # ~ IoU 0.5-0.9
        d = rng.integers(0, 8)
        centre, size = rng.uniform(0.1, 0.9, (d, 2)), rng.uniform(0.05, 0.6, (d, 2))
        noise = np.concatenate([centre - size / 2, centre + size / 2], 1)
        dets = np.concatenate([jitter, noise])
        labels = np.concatenate([np.where(rng.uniform(size=g) < 0.8, gl, rng.integers(0, num_classes, g)),
                                 rng.integers(0, num_classes, d)])  # fmt: skip
        scores = np.round(rng.uniform(size=len(dets)), 2)  # rounded: ties too
        recs.append(_rec(dets, scores, labels, gt, gl))
    return recs


@pytest.mark.parametrize("seed", range(30))
def test_matches_pycocotools(seed):
    """Exactly equal (not merely close) to COCOeval on 30 random sets of 40 images with tied scores."""
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval_mod = pytest.importorskip("pycocotools.cocoeval")
    rng = np.random.default_rng(seed)
    size, num_classes = 400.0, 3  # pixels: a mix of small, medium and large objects
    recs = _random_records(rng, 40, num_classes)
    to_xywh = lambda b: [b[1] * size, b[0] * size, (b[3] - b[1]) * size, (b[2] - b[0]) * size]
    images, anns, dets = [], [], []
    for i, r in enumerate(recs):
        images.append({"id": i, "width": size, "height": size})
        for b, lab in zip(r.gt_boxes, r.gt_labels):
            xywh = to_xywh(b)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(lab), "bbox": xywh,
                         "area": xywh[2] * xywh[3], "iscrowd": 0})  # fmt: skip
        for b, s, lab in zip(r.det_boxes, r.det_scores, r.det_labels):
            dets.append({"image_id": i, "category_id": int(lab), "bbox": to_xywh(b), "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_mod.COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": k} for k in range(num_classes)]}  # fmt: skip
        gt.createIndex()
        ev = cocoeval_mod.COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = coco_evaluate(recs, num_classes, image_size=(size, size))
    keys = ["mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    if seed < 2:
        assert min(ev.stats[:6]) > 0, f"seed {seed}"  # every area range is exercised
    np.testing.assert_array_equal([ours[k] for k in keys], ev.stats, err_msg=f"seed {seed}: {keys}")
