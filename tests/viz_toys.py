"""Tiny Flax models that sow attention maps the way attn_jax modules do (for the viz tests)."""

import flax.linen as nn
import jax.numpy as jnp


class SpatialGate(nn.Module):
    """Seed-style 1x1 conv + sigmoid gate; sows (B, h, w)."""

    @nn.compact
    def __call__(self, f):
        a = nn.sigmoid(nn.Conv(1, (1, 1))(f))
        self.sow("intermediates", "attention_map", a[..., 0])
        return f * a


class ChannelGate(nn.Module):
    """Squeeze-excitation style gate; sows (B, C)."""

    @nn.compact
    def __call__(self, f):
        a = nn.sigmoid(nn.Dense(f.shape[-1])(f.mean(axis=(1, 2))))
        self.sow("intermediates", "attention_map", a)
        return f * a[:, None, None, :]


class SelfAttention(nn.Module):
    """Single-head dot-product self-attention over grid positions; sows (B, n, n)."""

    @nn.compact
    def __call__(self, f):
        b, h, w, c = f.shape
        t = f.reshape(b, h * w, c)
        a = nn.softmax(nn.Dense(c)(t) @ nn.Dense(c)(t).swapaxes(1, 2) / jnp.sqrt(c), axis=-1)
        self.sow("intermediates", "attention_map", a)
        return (t + a @ t).reshape(b, h, w, c)


class QueryPool(nn.Module):
    """Learned-query additive pooling; sows (B, 1, n)."""

    @nn.compact
    def __call__(self, f):
        b, h, w, c = f.shape
        t = f.reshape(b, h * w, c)
        e = nn.Dense(1)(jnp.tanh(nn.Dense(8)(t)))[..., 0]
        a = nn.softmax(e, axis=-1)[:, None, :]
        self.sow("intermediates", "attention_map", a)
        return (a @ t)[:, 0]


class ToyClassifier(nn.Module):
    """conv (stride 2) -> spatial gate -> channel gate -> 2 self-attentions -> query pool -> logits."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        f = nn.relu(nn.Conv(4, (3, 3), strides=2, name="conv")(x))
        f = SpatialGate(name="spatial")(f)
        f = ChannelGate(name="channel")(f)
        f = SelfAttention(name="self_1")(f)
        f = SelfAttention(name="self_2")(f)
        return nn.Dense(self.num_classes)(QueryPool(name="pool")(f))
