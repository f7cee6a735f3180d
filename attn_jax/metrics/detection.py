"""Detection metrics in NumPy: COCO-style mAP@[.5:.95] (101-point, area ranges, max detections) and VOC AP.

The COCO numbers reproduce pycocotools' COCOeval (bbox) without depending on it; boxes are passed as
(ymin, xmin, ymax, xmax) and scaled by image_size to pixels, where the area ranges are defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
COCO_AREA_RANGES = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}
COCO_MAX_DETS = (1, 10, 100)


@dataclass
class ImageRecord:
    """One image's ground truth and detections, the unit `coco_evaluate` and `voc_evaluate` score.

    Boxes are (ymin, xmin, ymax, xmax), normalised to [0, 1] (``image_size`` of the evaluators scales them);
    labels are class indices in [0, num_classes).

    Examples:
      >>> import numpy as np
      >>> gt = np.array([[0.1, 0.1, 0.4, 0.5]])  # one object of class 3, detected once
      >>> record = ImageRecord(gt, np.array([3]), gt, det_scores=np.array([0.8]), det_labels=np.array([3]))
      >>> voc_evaluate([record], num_classes=4)["AP50_voc"]
      1.0
    """

    gt_boxes: np.ndarray
    """(g, 4) ground-truth boxes."""
    gt_labels: np.ndarray
    """(g,) int ground-truth classes."""
    det_boxes: np.ndarray
    """(d, 4) detected boxes."""
    det_scores: np.ndarray
    """(d,) detection scores (never NaN)."""
    det_labels: np.ndarray
    """(d,) int detected classes."""


def _as_xywh(boxes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4) * scale
    return np.stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], axis=1)


def iou_xywh(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU matrix (d, g) of (x, y, w, h) boxes, computed as pycocotools' bbIou (0 for empty unions)."""
    dx2, dy2 = dets[:, None, 0] + dets[:, None, 2], dets[:, None, 1] + dets[:, None, 3]
    gx2, gy2 = gts[None, :, 0] + gts[None, :, 2], gts[None, :, 1] + gts[None, :, 3]
    w = np.minimum(dx2, gx2) - np.maximum(dets[:, None, 0], gts[None, :, 0])
    h = np.minimum(dy2, gy2) - np.maximum(dets[:, None, 1], gts[None, :, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = (dets[:, 2] * dets[:, 3])[:, None] + (gts[:, 2] * gts[:, 3])[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _match_image(ious, gt_ignore, det_area, area_ranges, iou_thresholds):
    """COCO greedy matching of score-sorted detections, vectorised over area ranges A and thresholds T.

    ious (d, g); gt_ignore (A, g) bool. Returns det_matched (A, T, d) and det_ignore (A, T, d).
    Within non-ignored then ignored gts, the unmatched gt of highest IoU >= threshold wins (ties: last).
    """
    n_a, n_t, (d, g) = len(area_ranges), len(iou_thresholds), ious.shape
    thr = np.minimum(iou_thresholds, 1 - 1e-10)[None, :, None]
    gt_matched = np.zeros((n_a, n_t, g), bool)
    det_matched = np.zeros((n_a, n_t, d), bool)
    det_ignore = np.zeros((n_a, n_t, d), bool)
    rev = np.arange(g)[::-1]
    for i in range(d if g else 0):
        cand = ~gt_matched & (ious[i][None, None, :] >= thr)
        chosen = np.full((n_a, n_t), -1)
        for group in (gt_ignore, ~gt_ignore):  # the second (non-ignored) overrides the first
            c = cand & group[:, None, :]
            score = np.where(c, ious[i][None, None, :], -1.0)[..., ::-1]
            best = rev[np.argmax(score, axis=-1)]
            chosen = np.where(c.any(-1), best, chosen)
        hit = chosen >= 0
        a_idx, t_idx = np.nonzero(hit)
        gt_matched[a_idx, t_idx, chosen[hit]] = True
        det_matched[:, :, i] = hit
        det_ignore[:, :, i] = (
            np.take_along_axis(gt_ignore[:, None, :], np.maximum(chosen, 0)[..., None], -1)[..., 0] & hit
        )
    lo, hi = area_ranges[:, 0:1], area_ranges[:, 1:2]
    outside = (det_area[None, :] < lo) | (det_area[None, :] > hi)  # (A, d)
    det_ignore |= ~det_matched & outside[:, None, :]
    return det_matched, det_ignore


def _precision_recall(scores, matched, ignore, num_gt, recall_thresholds):
    """COCOeval.accumulate for one (class, area, max_dets): -> precision (T, R), recall (T,)."""
    order = np.argsort(-scores, kind="mergesort")
    matched, ignore = matched[:, order], ignore[:, order]
    tp = np.cumsum(matched & ~ignore, axis=1, dtype=np.float64)
    fp = np.cumsum(~matched & ~ignore, axis=1, dtype=np.float64)
    n_t, nd = matched.shape
    precision = np.zeros((n_t, len(recall_thresholds)))
    recall = np.zeros(n_t)
    for t in range(n_t):
        if nd == 0:
            continue
        rc = tp[t] / num_gt
        pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
        recall[t] = rc[-1]
        pr = np.maximum.accumulate(pr[::-1])[::-1]
        inds = np.searchsorted(rc, recall_thresholds, side="left")
        ok = inds < nd
        precision[t, ok] = pr[inds[ok]]
    return precision, recall


def _class_records(records, cls, scale, area_ranges, iou_thresholds, max_det):
    """Per-image matching of one class -> lists of scores (d,), matched (A, T, d), ignore (A, T, d), and
    the number of non-ignored gt per area range."""
    scores, matched, ignore = [], [], []
    num_gt = np.zeros(len(area_ranges), np.int64)
    for rec in records:
        g = _as_xywh(rec.gt_boxes[rec.gt_labels == cls], scale)
        sel = rec.det_labels == cls
        d, s = _as_xywh(rec.det_boxes[sel], scale), np.asarray(rec.det_scores, np.float64)[sel]
        if len(g) == 0 and len(d) == 0:
            continue
        order = np.argsort(-s, kind="mergesort")[:max_det]
        d, s = d[order], s[order]
        g_area = g[:, 2] * g[:, 3]
        gt_ignore = (g_area[None, :] < area_ranges[:, 0:1]) | (g_area[None, :] > area_ranges[:, 1:2])
        num_gt += (~gt_ignore).sum(axis=1)
        m, ig = _match_image(iou_xywh(d, g), gt_ignore, d[:, 2] * d[:, 3], area_ranges, iou_thresholds)
        scores.append(s)
        matched.append(m)
        ignore.append(ig)
    return scores, matched, ignore, num_gt


def check_scores(records: Sequence[ImageRecord]) -> None:
    """Raise if any detection score is NaN: ranking by score would then depend on the records' order."""
    for i, rec in enumerate(records):
        bad = np.isnan(np.asarray(rec.det_scores, np.float64))
        if bad.any():
            raise ValueError(
                f"det_scores of image {i} contain {int(bad.sum())} NaN (of {bad.size}); detection metrics "
                "rank by score, so NaN scores have no defined result: fix or drop them first"
            )


def _check_labels_and_boxes(where: str, kind: str, labels, boxes, num_classes: int, rows=None) -> None:
    """Raise if a label lies outside [0, num_classes) or a box holds NaN / Inf (`kind` is "gt" or "det").

    rows (bool, like labels) limits the check to the valid rows; messages name a row by its full index."""
    labels = np.asarray(labels).reshape(-1)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    rows = np.ones(labels.shape, bool) if rows is None else np.asarray(rows, bool).reshape(-1)
    bad = rows & ~((labels >= 0) & (labels < num_classes))  # NaN too
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{kind}_labels of {where} hold {labels[j].item()!r} (box {j}), outside [0, {num_classes}) for "
            f"num_classes={num_classes}: {int(bad.sum())} such box(es); mark padded boxes invalid instead"
        )
    bad = rows & ~np.all(np.isfinite(boxes), axis=1)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{kind}_boxes of {where} hold {boxes[j].tolist()} (box {j}): not finite")


def check_records(records: Sequence[ImageRecord], num_classes: int) -> None:
    """Raise ValueError for records the detection metrics cannot score.

    Args:
      records: the images to score.
      num_classes: C; every gt and detection label must lie in [0, C).

    Raises:
      ValueError: for a bad num_classes, a NaN detection score, a gt or detection label outside [0, C), or
        a gt or detection box holding NaN or Inf; the message names the image, the box and the value.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
    check_scores(records)
    for i, rec in enumerate(records):
        _check_labels_and_boxes(f"image {i}", "gt", rec.gt_labels, rec.gt_boxes, num_classes)
        _check_labels_and_boxes(f"image {i}", "det", rec.det_labels, rec.det_boxes, num_classes)


def coco_evaluate(
    records: Sequence[ImageRecord],
    num_classes: int,
    image_size: tuple[float, float] = (1.0, 1.0),
    iou_thresholds: np.ndarray = COCO_IOU_THRESHOLDS,
    max_dets: Sequence[int] = COCO_MAX_DETS,
) -> dict[str, float]:
    """COCO bbox metrics (mAP@[.5:.95], AP50, AP75, AP and AR by object size) over a set of images.

    Reproduces pycocotools' COCOeval (bbox): 101-point interpolated precision, the area ranges small /
    medium / large in pixels, 1 / 10 / 100 detections per image. Classes with no ground truth are skipped.

    Args:
      records: one `ImageRecord` per image, boxes normalised (ymin, xmin, ymax, xmax).
      num_classes: C; every label lies in [0, C).
      image_size: (height, width) in pixels that scales the boxes, for the area ranges.
      iou_thresholds: the IoU thresholds averaged over (default 0.5, 0.55, ..., 0.95).
      max_dets: detections per image for the AR figures (the last also bounds the AP figures).

    Returns:
      {"mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"} as floats;
      -1 where undefined (no ground truth in that range), as pycocotools.

    Raises:
      ValueError: a bad ``num_classes``, a NaN detection score, a label outside [0, C), or a box holding
        NaN or Inf; the message names the image, the box and the value.

    Examples:
      >>> import numpy as np
      >>> box = np.array([[0.0, 0.0, 0.5, 0.5]])
      >>> rec = ImageRecord(box, np.array([0]), box, det_scores=np.array([0.9]), det_labels=np.array([0]))
      >>> round(coco_evaluate([rec], num_classes=1, image_size=(64, 64))["mAP"], 6)
      1.0
    """
    check_records(records, num_classes)
    scale = np.array([image_size[0], image_size[1], image_size[0], image_size[1]], np.float64)
    area_ranges = np.array(list(COCO_AREA_RANGES.values()))
    iou_thresholds = np.asarray(iou_thresholds, np.float64)
    shape = (len(iou_thresholds), len(COCO_RECALL_THRESHOLDS), num_classes, len(area_ranges), len(max_dets))
    precision, recall = -np.ones(shape), -np.ones((shape[0], num_classes, len(area_ranges), len(max_dets)))
    n_t = len(iou_thresholds)
    for k in range(num_classes):
        scores, matched, ignore, num_gt = _class_records(
            records, k, scale, area_ranges, iou_thresholds, max(max_dets)
        )
        for mi, md in enumerate(max_dets):
            s = np.concatenate([x[:md] for x in scores]) if scores else np.zeros(0)
            for a in range(len(area_ranges)):
                if num_gt[a] == 0:
                    continue
                p, r = _precision_recall(
                    s,
                    _stack(matched, a, md, n_t),
                    _stack(ignore, a, md, n_t),
                    num_gt[a],
                    COCO_RECALL_THRESHOLDS,
                )
                precision[:, :, k, a, mi], recall[:, k, a, mi] = p, r
    return _summarize(precision, recall, iou_thresholds, list(max_dets))


def _stack(per_image: list[np.ndarray], area: int, max_det: int, n_t: int) -> np.ndarray:
    """Concatenate per-image (A, T, d) flags for one area range, each cut to max_det -> (T, sum d)."""
    if not per_image:
        return np.zeros((n_t, 0), bool)
    return np.concatenate([x[area, :, :max_det] for x in per_image], axis=1)


def _mean_defined(x: np.ndarray) -> float:
    x = x[x > -1]
    return float(np.mean(x)) if x.size else -1.0


def _summarize(precision, recall, iou_thresholds, max_dets) -> dict[str, float]:
    last = len(max_dets) - 1
    at = lambda t: np.flatnonzero(np.isclose(iou_thresholds, t))
    out = {
        "mAP": _mean_defined(precision[:, :, :, 0, last]),
        "AP50": _mean_defined(precision[at(0.5), :, :, 0, last]),
        "AP75": _mean_defined(precision[at(0.75), :, :, 0, last]),
    }
    for name, a in (("s", 1), ("m", 2), ("l", 3)):
        out[f"AP{name}"] = _mean_defined(precision[:, :, :, a, last])
    for mi, md in enumerate(max_dets):
        out[f"AR{md}"] = _mean_defined(recall[:, :, 0, mi])
    for name, a in (("s", 1), ("m", 2), ("l", 3)):
        out[f"AR{name}"] = _mean_defined(recall[:, :, a, last])
    return out


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """Average precision from a precision-recall curve, as PASCAL VOC computes it.

    Args:
      recall: (d,) recall after each detection in descending score order, non-decreasing.
      precision: (d,) precision after each detection.
      use_07_metric: the VOC2007 11-point mean (precision at recall 0, 0.1, ..., 1) instead of the area
        under the monotone precision envelope (VOC2010 and later).

    Returns:
      AP as a float.

    Examples:
      >>> import numpy as np
      >>> recall, precision = np.array([0.5, 1.0]), np.array([1.0, 0.5])
      >>> voc_ap(recall, precision), round(voc_ap(recall, precision, use_07_metric=True), 4)
      (0.75, 0.7727)
    """
    if use_07_metric:
        return float(np.mean([np.max(precision[recall >= t], initial=0.0) for t in np.linspace(0, 1, 11)]))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_evaluate(
    records: Sequence[ImageRecord], num_classes: int, iou_threshold: float = 0.5, use_07_metric: bool = False
) -> dict[str, float | list[float]]:
    """PASCAL VOC average precision per class at one IoU threshold.

    A detection is a true positive when its IoU with a ground-truth box of its class exceeds
    ``iou_threshold`` and that box is not matched yet; a second detection of a matched box is a false
    positive.

    Args:
      records: one `ImageRecord` per image.
      num_classes: C; every label lies in [0, C).
      iou_threshold: IoU a true positive must exceed.
      use_07_metric: the VOC2007 11-point AP instead of the area under the envelope (see `voc_ap`).

    Returns:
      {"AP50_voc": mean AP over the classes with ground truth (-1 if none), "per_class": C APs, NaN for a
      class without ground truth}.

    Raises:
      ValueError: as `coco_evaluate` (NaN scores, labels outside [0, C), non-finite boxes).

    Examples:
      >>> import numpy as np
      >>> gt, dets = np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.4]])
      >>> rec = ImageRecord(gt, np.array([1]), dets, np.array([0.9, 0.8]), det_labels=np.array([1, 1]))
      >>> voc_evaluate([rec], num_classes=2)  # the second detection of the same box is a false positive
      {'AP50_voc': 1.0, 'per_class': [nan, 1.0]}
    """
    check_records(records, num_classes)
    per_class = []
    for k in range(num_classes):
        dets, num_gt = [], 0
        for img, rec in enumerate(records):
            num_gt += int(np.sum(rec.gt_labels == k))
            sel = np.flatnonzero(rec.det_labels == k)
            dets += [(float(rec.det_scores[j]), img, j) for j in sel]
        if num_gt == 0:
            per_class.append(float("nan"))
            continue
        dets.sort(key=lambda x: -x[0])
        used = [np.zeros(int(np.sum(r.gt_labels == k)), bool) for r in records]
        tp = np.zeros(len(dets))
        for n, (_, img, j) in enumerate(dets):
            rec = records[img]
            g = _as_xywh(rec.gt_boxes[rec.gt_labels == k], np.ones(4))
            if len(g) == 0:
                continue
            ious = iou_xywh(_as_xywh(rec.det_boxes[j], np.ones(4)), g)[0]
            best = int(np.argmax(ious))
            if ious[best] > iou_threshold and not used[img][best]:
                used[img][best] = True
                tp[n] = 1
        tp_c, fp_c = np.cumsum(tp), np.cumsum(1 - tp)
        rec_c = tp_c / num_gt
        prec_c = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        per_class.append(voc_ap(rec_c, prec_c, use_07_metric))
    defined = [a for a in per_class if not np.isnan(a)]
    return {"AP50_voc": float(np.mean(defined)) if defined else -1.0, "per_class": per_class}


@dataclass
class DetectionEvaluator:
    """Accumulates an eval set's detections and ground truth batch by batch; `result` scores them.

    Takes batches of fixed-size detections (e.g. `attn_jax.detection.postprocess`'s) and padded ground truth
    (the data pipeline's) with their validity masks. With no image added every metric is NaN
    (``num_images`` 0), the convention of every evaluator in `attn_jax.metrics`.

    Args:
      num_classes: C; every valid label must lie in [0, C).
      image_size: (height, width) in pixels that scales the normalised boxes for COCO's area ranges.
      records: the images added so far (starts empty).

    Raises:
      ValueError: ``num_classes`` is not a positive int.

    Examples:
      >>> import numpy as np
      >>> evaluator = DetectionEvaluator(num_classes=1)
      >>> box = np.array([[[0.0, 0.0, 0.5, 0.5]]])  # (b, k, 4), one image with one box
      >>> ones, zeros = np.ones((1, 1), bool), np.zeros((1, 1), int)
      >>> evaluator.add_batch(box, np.array([[0.9]]), zeros, ones, box, gt_labels=zeros, gt_valid=ones)
      >>> result = evaluator.result()
      >>> round(result["mAP"], 6), result["AP50_voc"], result["num_images"]
      (1.0, 1.0, 1)
    """

    num_classes: int
    image_size: tuple[float, float] = (1.0, 1.0)
    records: list[ImageRecord] = field(default_factory=list)

    def __post_init__(self):
        check_records([], self.num_classes)

    def add_batch(self, boxes, scores, classes, valid, gt_boxes, gt_labels, gt_valid, example_valid=None):
        """Add one batch of detections and ground truth.

        The host-side check of a jitted eval step's output: rows marked invalid (padded detections, padded gt,
        padding examples) may hold anything; every valid row must have a label in [0, num_classes), a finite
        box and (detections) a non-NaN score. The whole batch is checked before any of it is added.

        Args:
          boxes: (b, k, 4) detected boxes (ymin, xmin, ymax, xmax), normalised.
          scores: (b, k) detection scores.
          classes: (b, k) int detected classes.
          valid: (b, k) bool; False marks padded detections.
          gt_boxes: (b, m, 4) ground-truth boxes, normalised.
          gt_labels: (b, m) int ground-truth classes.
          gt_valid: (b, m) bool; False marks padded ground truth.
          example_valid: optional (b,) bool; False drops the eval pipeline's padding examples.

        Raises:
          ValueError: naming the batch example and the value, for a valid detection with a NaN score, a valid
            detection's class or valid gt's label outside [0, num_classes), or a valid box with NaN or Inf.
        """
        arrays = [np.asarray(x) for x in (boxes, scores, classes, valid, gt_boxes, gt_labels, gt_valid)]
        boxes, scores, classes, valid, gt_boxes, gt_labels, gt_valid = arrays
        b = boxes.shape[0]
        keep = np.ones(b, bool) if example_valid is None else np.asarray(example_valid, bool)
        valid, gt_valid = valid.astype(bool), gt_valid.astype(bool)
        for n, i in enumerate(np.flatnonzero(keep)):  # check the whole batch before adding any of it
            where = f"batch example {i} (image {len(self.records) + n} of the eval set)"
            if np.isnan(scores[i][valid[i]]).any():
                raise ValueError(
                    f"scores of {where} contain NaN at valid detections; detection metrics rank by score "
                    "and cannot order NaN"
                )
            _check_labels_and_boxes(where, "gt", gt_labels[i], gt_boxes[i], self.num_classes, gt_valid[i])
            _check_labels_and_boxes(where, "det", classes[i], boxes[i], self.num_classes, valid[i])
        for i in np.flatnonzero(keep):
            v, gv = valid[i], gt_valid[i]
            self.records.append(
                ImageRecord(gt_boxes[i][gv], gt_labels[i][gv], boxes[i][v], scores[i][v], classes[i][v])
            )

    def result(self) -> dict[str, float]:
        """The COCO metrics of `coco_evaluate`, "AP50_voc" of `voc_evaluate` and "num_images".

        Returns:
          A dict of floats (NaN for every metric when no image was added) and the int "num_images".
        """
        if not self.records:
            keys = list(coco_evaluate([], 1)) + ["AP50_voc"]
            return {**{k: float("nan") for k in keys}, "num_images": 0}
        out = coco_evaluate(self.records, self.num_classes, self.image_size)
        out["AP50_voc"] = voc_evaluate(self.records, self.num_classes)["AP50_voc"]
        out["num_images"] = len(self.records)
        return out
