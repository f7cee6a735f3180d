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
    """Segmenter: encoder, then an attention gate, a decoder and a 1x1 conv per-pixel classifier.

    The decoder should upsample by the encoder's stride (e.g. `attn_jax.nn.Decoder` with log2(stride)
    entries). If its output grid differs from the input's, the logits are resized bilinearly to the
    input resolution (an addition: the PyTorch reference returns the decoder's grid).

    Args:
      encoder: a backbone module of `attn_jax.nn`.
      decoder: a decoder module, called ``decoder(features, train=...)``.
      num_classes: number of classes, background included (>= 1).
      attention: a registry name (`attn_jax.nn.available_attention`); the child "attention".
      attention_kwargs: attributes of that attention module.
      dtype: computation dtype of the attention and the classifier (None: the input's).
      param_dtype: dtype of their parameters.

    Returns:
      Called as ``model.apply(variables, images, train=False)`` on images (B, H, W, C_in): float32
      logits (B, H, W, num_classes).

    Raises:
      ValueError: an unknown ``attention`` or ``num_classes`` < 1 (at construction), images that are not
        4-D (when called).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.models import AttentionSegmenter
      >>> from attn_jax.nn import Decoder, SmallCNN
      >>> model = AttentionSegmenter(SmallCNN(features=(8, 16), stride=4), Decoder((8, 8)), num_classes=11)
      >>> images = jnp.zeros((2, 32, 32, 1))
      >>> logits, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), images)
      >>> logits.shape
      (2, 32, 32, 11)
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
