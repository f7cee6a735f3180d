"""Detection: AttentionDetector with anchors, RetinaNet focal + box loss, COCO / VOC AP.

Loss (Lin et al. 2017, RetinaNet): sigmoid focal loss over positive and negative anchors plus smooth-L1 (or
GIoU) on the positives' box deltas, both divided by the number of positive anchors in the GLOBAL batch (a
sum over devices), so any device count gives the full-batch gradient. The class head's bias starts at
-log((1 - pi) / pi): every anchor starts at foreground probability pi, keeping the first focal losses small.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from attn_jax.detection import assign_targets, detection_loss_sums, generate_anchors, postprocess
from attn_jax.metrics import DetectionEvaluator
from attn_jax.models import AttentionDetector
from attn_jax.train.builders import attention_kwargs, build_backbone, model_dtype
from attn_jax.train.step import AXIS
from attn_jax.train.tasks.base import Task, axis_size, global_sum


class Detection(Task):
    """Image -> boxes. Train metrics: loss, cls_loss, box_loss (per positive anchor), positives per image;
    eval: pycocotools-style COCO AP (mAP, AP50, AP75, ...) and VOC AP@0.5 ("AP50_voc")."""

    name = "detection"
    best_metric = "AP50_voc"
    headline = ("AP50_voc", "AP50", "AP75", "mAP", "AR100")

    def __init__(self, config, meta):
        super().__init__(config, meta)
        self._anchors = None

    def pipeline_kwargs(self):
        return {"task": "detection", "max_boxes": self.config.detection.max_boxes}

    @property
    def num_anchors(self) -> int:
        m = self.config.model
        return len(m.anchor_sizes) * len(m.aspect_ratios)

    def anchors(self):
        """(h * w * A, 4) normalised anchors on the backbone's output grid (row, column, anchor order)."""
        if self._anchors is None:
            stride = build_backbone(self.config, None).stride
            h, w = self.meta.image_shape[:2]
            m = self.config.model
            grid = (h // stride, w // stride)
            self._anchors = generate_anchors(grid, stride, m.anchor_sizes, m.aspect_ratios)
        return jnp.asarray(self._anchors)

    def build_model(self, bn_axis_name: str | None = AXIS):
        m = self.config.model
        backbone = build_backbone(self.config, bn_axis_name)
        return AttentionDetector(
            backbone,
            self.meta.num_classes,
            self.num_anchors,
            attention=m.attention,
            attention_kwargs=attention_kwargs(m),
            dtype=model_dtype(m),
        )

    def init_params(self, params):
        pi = self.config.model.prior_probability
        if not pi:
            return params
        head = dict(params["cls_head"])
        head["bias"] = jnp.full_like(head["bias"], -math.log((1 - pi) / pi))
        return {**params, "cls_head": head}

    def _flat(self, outputs):
        cls_logits, box_deltas = outputs
        b = cls_logits.shape[0]
        return cls_logits.reshape(b, -1, self.meta.num_classes), box_deltas.reshape(b, -1, 4)

    def loss(self, outputs, batch, axis_name):
        c = self.config.detection
        cls_logits, box_deltas = self._flat(outputs)
        anchors = self.anchors()
        targets = assign_targets(
            anchors, batch["boxes"], batch["box_labels"], batch["box_valid"], c.positive_threshold,
            c.negative_threshold,
        )  # fmt: skip
        cls_sum, box_sum, positives = detection_loss_sums(
            cls_logits, box_deltas, anchors, targets, box_loss=c.box_loss
        )
        total_sum = cls_sum + c.box_weight * box_sum
        loss = axis_size(axis_name) * total_sum / jnp.maximum(global_sum(positives, axis_name), 1.0)
        count = jnp.asarray(cls_logits.shape[0], jnp.float32)
        sums = {"loss": total_sum, "cls_loss": cls_sum, "box_loss": box_sum, "positives": positives}
        return loss, {**sums, "count": count}

    def train_metrics(self, sums):
        s = {k: float(np.asarray(v)) for k, v in sums.items()}
        per_pos = max(s["positives"], 1.0)
        return {
            "loss": s["loss"] / per_pos,
            "cls_loss": s["cls_loss"] / per_pos,
            "box_loss": s["box_loss"] / per_pos,
            "positives_per_image": s["positives"] / max(s["count"], 1.0),
        }

    def eval_outputs(self, outputs, batch, axis_name):
        c = self.config.detection
        cls_logits, box_deltas = self._flat(outputs)
        dets = postprocess(
            cls_logits, box_deltas, self.anchors(), c.score_threshold, c.nms_iou_threshold, c.pre_nms_top_k,
            c.max_detections,
        )  # fmt: skip
        per_example = {
            "boxes": dets.boxes, "scores": dets.scores, "classes": dets.classes, "valid": dets.valid,
            "gt_boxes": batch["boxes"], "gt_labels": batch["box_labels"], "gt_valid": batch["box_valid"],
            "example_valid": batch["valid"],
        }  # fmt: skip
        return {}, per_example

    def evaluator(self):
        return _DetectionEvaluator(DetectionEvaluator(self.meta.num_classes, self.meta.image_shape[:2]))


class _DetectionEvaluator:
    def __init__(self, evaluator):
        self.evaluator = evaluator

    def add(self, sums, p):
        self.evaluator.add_batch(
            p["boxes"], p["scores"], p["classes"], p["valid"], p["gt_boxes"], p["gt_labels"], p["gt_valid"],
            p["example_valid"],
        )  # fmt: skip

    def result(self):
        return self.evaluator.result()
