"""AttentionClassifier: a backbone gated by an attention module, pooled, then a linear classifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attn_jax.models._attend import check_images, make_attention, prepare_model

Dtype = Any


class AttentionClassifier(nn.Module):
    """Classifier: backbone, then an attention gate, global average pooling and a linear layer.

    The PyTorch reference (kept in tests/test_torch_parity.py) is ``features *
    sigmoid(conv1x1(features))``, ``adaptive_avg_pool2d`` and ``nn.Linear``; converted weights give the
    same logits. Deliberate difference: the reference's ``.squeeze()`` drops the batch axis when B == 1,
    here the output is always (B, num_classes).

    Args:
      backbone: a backbone module of `attn_jax.nn` (called ``backbone(images, train=...)``).
      num_classes: number of classes (>= 1).
      attention: a registry name (`attn_jax.nn.available_attention`); its module is the child
        "attention", which sows its map into "intermediates".
      attention_kwargs: attributes of that attention module (e.g. ``{"reduction": 8}``).
      dtype: computation dtype of the attention and the head (None: the input's).
      param_dtype: dtype of their parameters.

    Returns:
      Called as ``model.apply(variables, images, train=False)`` on images (B, H, W, C_in): float32
      logits (B, num_classes). ``train=True`` uses and updates BatchNorm batch statistics
      (``mutable=["batch_stats"]``).

    Raises:
      ValueError: an unknown ``attention`` or ``num_classes`` < 1 (at construction), images that are
        not 4-D (when called).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.models import AttentionClassifier
      >>> from attn_jax.nn import SmallCNN
      >>> model = AttentionClassifier(SmallCNN(features=(8, 16), stride=4), num_classes=10)
      >>> images = jnp.zeros((2, 32, 32, 1))
      >>> variables = model.init(jax.random.key(0), images)
      >>> logits, state = model.apply(variables, images, mutable=["intermediates"])
      >>> logits.shape, state["intermediates"]["attention"]["attention_map"][0].shape
      ((2, 10), (2, 8, 8))
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
