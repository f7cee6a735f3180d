"""AttentionClassifier: a backbone gated by an attention module, pooled, then a linear classifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attn_jax.models._attend import check_images, make_attention, prepare_model

Dtype = Any


class AttentionClassifier(nn.Module):
    """backbone -> attention gate -> global average pool -> linear classifier.

    ``model.apply(variables, images, train=bool)``: images (B, H, W, C_in) -> logits (B, num_classes)
    float32. ``attention`` names a registry entry (`attn_jax.nn.available_attention()`), built with
    ``attention_kwargs``. The PyTorch reference (tests/test_torch_parity.py): ``features *
    sigmoid(conv1x1(features))``, ``adaptive_avg_pool2d`` and
    ``nn.Linear``. Deliberate difference: the reference's ``.squeeze()`` drops the batch axis when B == 1;
    here the output is always (B, num_classes).
    """

    backbone: nn.Module
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
        check_images("AttentionClassifier", images)
        features = self.backbone(images, train=train)
        attend = make_attention(self.attention, self.attention_kwargs, self.dtype, self.param_dtype)
        weighted = attend(features, train=train)
        pooled = jnp.mean(weighted, axis=(1, 2))
        logits = nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier"
        )(pooled)
        return logits.astype(jnp.float32)
