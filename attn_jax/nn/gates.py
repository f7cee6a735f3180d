"""Feature-gating attention modules: none, spatial (1x1 conv + sigmoid), SE (Hu et al. 2018), CBAM (Woo et al.
2018), ECA (Wang et al. 2020), Attention U-Net gate (Oktay et al. 2018).

Uniform call convention (every registry entry): ``module(x, *, guide=None, train=False) -> y`` with
x and y of shape (B, H, W, C), NHWC. ``guide`` is an optional second input for the entries that use one
("gate": a coarser gating signal; "additive": the query); the others raise ValueError if it is given.
Each module sows its map into the "intermediates" collection as "attention_map".
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def check_features(name: str, x) -> None:
    """Raise ValueError unless x is a (B, H, W, C) feature map."""
    if jnp.ndim(x) != 4:
        raise ValueError(f"{name}: x must have shape (B, H, W, C); got shape {jnp.shape(x)}")


def reject_guide(name: str, guide) -> None:
    """Entries without a second input refuse one instead of silently ignoring it."""
    if guide is not None:
        raise ValueError(f"{name} attention takes no guide; got guide of shape {jnp.shape(guide)}")


class Identity(nn.Module):
    """No attention: returns x unchanged; sows a uniform (B, H, W) map of ones for uniform tooling."""

    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, guide=None, train: bool = False):
        check_features("none", x)
        reject_guide("none", guide)
        self.sow("intermediates", "attention_map", jnp.ones(x.shape[:3], jnp.float32))
        return x


class SpatialAttention(nn.Module):
    """Spatial gate: a = sigmoid(Conv1x1(x)) of shape (B, H, W, 1); returns x * a."""

    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, guide=None, train: bool = False):
        check_features("spatial", x)
        reject_guide("spatial", guide)
        logits = nn.Conv(1, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
        weights = nn.sigmoid(logits.astype(jnp.float32))
        self.sow("intermediates", "attention_map", weights[..., 0])
        return x * weights.astype(x.dtype)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): a = sigmoid(W2 relu(W1 mean_hw(x))) of shape (B, C)."""

    reduction: int = 16
    min_hidden: int = 4
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, guide=None, train: bool = False):
        check_features("se", x)
        reject_guide("se", guide)
        channels = x.shape[-1]
        hidden = max(self.min_hidden, channels // self.reduction)
        squeezed = jnp.mean(x, axis=(1, 2))
        h = nn.relu(nn.Dense(hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(squeezed))
        logits = nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(h)
        weights = nn.sigmoid(logits.astype(jnp.float32))
        self.sow("intermediates", "attention_map", weights)
        return x * weights[:, None, None, :].astype(x.dtype)


class CBAM(nn.Module):
    """CBAM (Woo et al. 2018): channel attention (shared MLP on avg- and max-pooled x), then spatial
    attention (kxk conv over channel-wise mean and max). Sows the spatial map (B, H, W) as
    "attention_map" and the channel map (B, C) as "channel_map"."""

    reduction: int = 16
    min_hidden: int = 4
    kernel_size: int = 7
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, guide=None, train: bool = False):
        check_features("cbam", x)
        reject_guide("cbam", guide)
        channels = x.shape[-1]
        hidden = max(self.min_hidden, channels // self.reduction)
        fc1 = nn.Dense(hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")
        fc2 = nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")
        mlp = lambda v: fc2(nn.relu(fc1(v)))
        channel_logits = mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2)))
        channel = nn.sigmoid(channel_logits.astype(jnp.float32))
        self.sow("intermediates", "channel_map", channel)
        x = x * channel[:, None, None, :].astype(x.dtype)
        pooled = jnp.concatenate([jnp.mean(x, -1, keepdims=True), jnp.max(x, -1, keepdims=True)], -1)
        k = self.kernel_size
        conv = nn.Conv(1, (k, k), padding=k // 2, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")
        spatial = nn.sigmoid(conv(pooled).astype(jnp.float32))
        self.sow("intermediates", "attention_map", spatial[..., 0])
        return x * spatial.astype(x.dtype)


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel size: the odd integer nearest |log2(C) / gamma + b / gamma|."""
    k = int(abs(math.log2(channels) / gamma + b / gamma))
    return k if k % 2 else k + 1


class ECA(nn.Module):
    """ECA (Wang et al. 2020): a = sigmoid(conv1d_k(mean_hw(x))) over the channel axis, (B, C).

    kernel_size=None picks ECA-Net's adaptive size from C."""

    kernel_size: int | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, guide=None, train: bool = False):
        check_features("eca", x)
        reject_guide("eca", guide)
        channels = x.shape[-1]
        k = self.kernel_size or eca_kernel_size(channels)
        squeezed = jnp.mean(x, axis=(1, 2))[..., None]  # (B, C, 1): channels as a 1-D sequence
        conv = nn.Conv(
            1,
            (k,),
            padding=k // 2,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )
        weights = nn.sigmoid(conv(squeezed)[..., 0].astype(jnp.float32))
        self.sow("intermediates", "attention_map", weights)
        return x * weights[:, None, None, :].astype(x.dtype)


class AttentionGate(nn.Module):
    """Attention U-Net gate (Oktay et al. 2018): a = sigmoid(psi(relu(theta(x) + phi(g)))), (B, H, W).

    ``guide`` g (B, h, w, C_g) is a coarser gating signal; phi(g) is resized (bilinear) to x's grid.
    Without a guide, g = 2x2 average-pooled x (a self-gating, coarser context). The paper's output
    1x1 conv + BatchNorm after the gating is left out so the module is a pure gate like the others.
    """

    inter_channels: int | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, guide=None, train: bool = False):
        check_features("gate", x)
        if guide is None:
            window = (min(2, x.shape[1]), min(2, x.shape[2]))
            guide = nn.avg_pool(x, window, strides=window, padding="SAME")
        elif jnp.ndim(guide) != 4 or guide.shape[0] != x.shape[0]:
            raise ValueError(
                f"gate: guide must have shape (B, h, w, C_g) with B = {x.shape[0]}; got {jnp.shape(guide)}"
            )
        inter = self.inter_channels or max(1, x.shape[-1] // 2)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        theta = nn.Conv(inter, (1, 1), use_bias=False, name="theta", **kw)(x)
        phi = nn.Conv(inter, (1, 1), name="phi", **kw)(guide)
        phi = jax.image.resize(phi, phi.shape[:1] + x.shape[1:3] + phi.shape[3:], "bilinear")
        psi = nn.Conv(1, (1, 1), name="psi", **kw)(nn.relu(theta + phi))
        weights = nn.sigmoid(psi.astype(jnp.float32))
        self.sow("intermediates", "attention_map", weights[..., 0])
        return x * weights.astype(x.dtype)
