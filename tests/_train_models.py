"""Tiny Flax models for the training tests (BatchNorm, dropout, a sown attention map)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class TinyNet(nn.Module):
    """conv-BN-relu -> sigmoid spatial gate (sown as "attention_map") -> mean pool -> dense."""

    num_classes: int = 10
    width: int = 8
    bn_axis_name: str | None = None
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), (2, 2), use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.bn_axis_name)(x)
        x = nn.relu(x)
        gate = nn.sigmoid(nn.Conv(1, (1, 1))(x))
        self.sow("intermediates", "attention_map", gate[..., 0])
        x = jnp.mean(x * gate, axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)
