"""AttentionDetector: a backbone gated by an attention module, with anchor-based class and box heads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attn_jax.models._attend import check_images, make_attention, prepare_model

Dtype = Any


class AttentionDetector(nn.Module):
    """Anchor-based detector: backbone, then an attention gate, a 3x3 conv class head and a box head.

    The heads are the PyTorch reference's ``Conv2d(C, num_classes * num_anchors, 3, padding=1)`` and
    ``Conv2d(C, 4 * num_anchors, 3, padding=1)``; channel k is read as anchor k // num_classes, class
    k % num_classes (and anchor k // 4, coordinate k % 4): the reference leaves the layout open, this is
    the anchor-major one. The reshape to per-anchor axes is the only addition. Anchor a at cell (i, j)
    is index (i · w + j) · A + a once flattened row-major over (h, w, A), the order of
    `attn_jax.detection.generate_anchors`.

    Args:
      backbone: a backbone module of `attn_jax.nn`.
      num_classes: number of object classes (>= 1; no background class: the scores are sigmoids).
      num_anchors: anchors per cell, A (>= 1).
      attention: a registry name (`attn_jax.nn.available_attention`); the child "attention".
      attention_kwargs: attributes of that attention module.
      dtype: computation dtype of the attention and the heads (None: the input's).
      param_dtype: dtype of their parameters.

    Returns:
      Called as ``model.apply(variables, images, train=False)`` on images (B, H, W, C_in): float32
      ``(cls_logits, box_deltas)``, cls_logits (B, h, w, A, num_classes) and box_deltas (B, h, w, A, 4),
      with (h, w) = (H, W) / backbone.stride.

    Raises:
      ValueError: an unknown ``attention``, ``num_classes`` or ``num_anchors`` < 1 (at construction),
        images that are not 4-D (when called).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.models import AttentionDetector
      >>> from attn_jax.nn import SmallCNN
      >>> model = AttentionDetector(SmallCNN(features=(8, 16), stride=4), num_classes=10, num_anchors=3)
      >>> images = jnp.zeros((2, 32, 32, 1))
      >>> (cls_logits, box_deltas), _ = jax.eval_shape(model.init_with_output, jax.random.key(0), images)
      >>> cls_logits.shape, box_deltas.shape
      ((2, 8, 8, 3, 10), (2, 8, 8, 3, 4))
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
