"""Anchors, box coding, target matching, detection losses and NMS, all in JAX (jit/vmap, fixed shapes).

Typical use in a train step, with the data's batch['boxes'|'box_labels'|'box_valid']::

    anchors = generate_anchors((16, 16), stride=4, sizes=(12, 16), aspect_ratios=(0.5, 0.75))
    targets = assign_targets(anchors, batch["boxes"], batch["box_labels"], batch["box_valid"])
    loss, aux = detection_loss(cls_logits, box_deltas, anchors, targets)
    dets = postprocess(cls_logits, box_deltas, anchors)  # boxes, scores, classes, valid
"""

from attn_jax.detection.anchors import anchor_shapes, generate_anchors
from attn_jax.detection.boxes import (
    DEFAULT_VARIANCES,
    box_area,
    decode_boxes,
    elementwise_giou,
    elementwise_iou,
    encode_boxes,
    pairwise_iou,
)
from attn_jax.detection.losses import BOX_LOSSES, detection_loss, detection_loss_sums, focal_loss, smooth_l1
from attn_jax.detection.matching import DetectionTargets, Match, assign_targets, match_anchors
from attn_jax.detection.nms import Detections, nms_keep, postprocess

__all__ = [
    "BOX_LOSSES",
    "DEFAULT_VARIANCES",
    "DetectionTargets",
    "Detections",
    "Match",
    "anchor_shapes",
    "assign_targets",
    "box_area",
    "decode_boxes",
    "detection_loss",
    "detection_loss_sums",
    "elementwise_giou",
    "elementwise_iou",
    "encode_boxes",
    "focal_loss",
    "generate_anchors",
    "match_anchors",
    "nms_keep",
    "pairwise_iou",
    "postprocess",
    "smooth_l1",
]
