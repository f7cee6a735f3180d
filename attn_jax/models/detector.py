"""AttentionDetector: a backbone gated by an attention module, with anchor-based class and box heads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attn_jax.models._attend import check_images, make_attention, prepare_model

Dtype = Any


class AttentionDetector(nn.Module):
    """backbone -> attention gate -> 3x3 conv class head and 3x3 conv box-regression head.

    ``model.apply(variables, images, train=bool)`` returns ``(cls_logits, box_deltas)``, float32:
    cls_logits (B, h, w, num_anchors, num_classes) and box_deltas (B, h, w, num_anchors, 4), with
    (h, w) = (H, W) / backbone.stride. Anchor a at cell (i, j) is flattened (row-major over (h, w, A))
    as index (i * w + j) * A + a. The heads are the PyTorch reference's
    ``Conv2d(C, num_classes * num_anchors, 3, padding=1)`` and ``Conv2d(C, 4 * num_anchors, 3,
    padding=1)``; their channel k is read as anchor k // num_classes, class k % num_classes (and anchor
    k // 4, coordinate k % 4): the reference leaves the layout open, this is the anchor-major one. The
    reshape to per-anchor axes is the only addition.
    """

    backbone: nn.Module
    num_classes: int
    num_anchors: int
    attention: str = "spatial"
    attention_kwargs: Mapping[str, Any] | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        prepare_model(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_images("AttentionDetector", images)
        features = self.backbone(images, train=train)
        attend = make_attention(self.attention, self.attention_kwargs, self.dtype, self.param_dtype)
        weighted = attend(features, train=train)
        conv = lambda out, name: nn.Conv(
            out, (3, 3), padding=1, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        a, c = self.num_anchors, self.num_classes
        cls_out = conv(a * c, "cls_head")(weighted)
        reg_out = conv(a * 4, "reg_head")(weighted)
        b, h, w = cls_out.shape[:3]
        cls_logits = cls_out.reshape(b, h, w, a, c).astype(jnp.float32)
        box_deltas = reg_out.reshape(b, h, w, a, 4).astype(jnp.float32)
        return cls_logits, box_deltas
