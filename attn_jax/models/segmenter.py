"""AttentionSegmenter: encoder features gated by an attention module, decoded to per-pixel logits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.models._attend import check_images, make_attention, prepare_model

Dtype = Any


class AttentionSegmenter(nn.Module):
    """encoder -> attention gate -> decoder -> 1x1 conv per-pixel classifier.

    ``model.apply(variables, images, train=bool)``: images (B, H, W, C_in) -> logits (B, H, W,
    num_classes) float32. The decoder should upsample by the encoder's stride (e.g.
    ``Decoder(features)`` with log2(stride) entries); if its output grid differs from (H, W) the logits
    are resized bilinearly to the input resolution (an addition: the PyTorch reference returns the
    decoder's grid).
    """

    encoder: nn.Module
    decoder: nn.Module
    num_classes: int
    attention: str = "spatial"
    attention_kwargs: Mapping[str, Any] | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        prepare_model(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_images("AttentionSegmenter", images)
        features = self.encoder(images, train=train)
        attend = make_attention(self.attention, self.attention_kwargs, self.dtype, self.param_dtype)
        weighted = attend(features, train=train)
        decoded = self.decoder(weighted, train=train)
        logits = nn.Conv(
            self.num_classes, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="classifier"
        )(decoded)
        b, h, w = images.shape[:3]
        if logits.shape[1:3] != (h, w):
            logits = jax.image.resize(logits, (b, h, w, self.num_classes), "bilinear")
        return logits.astype(jnp.float32)
