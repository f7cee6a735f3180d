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
    """No attention: returns x unchanged, so a model with ``attention="none"`` is the baseline.

    Sows a (B, H, W) map of ones as "attention_map", so tools that read the map work on every model.

    Args:
      dtype: unused (no computation); accepted like every registry entry's.
      param_dtype: unused (no parameters).

    Returns:
      Called as ``module(x, *, guide=None, train=False)`` on x (B, H, W, C): x itself.

    Raises:
      ValueError: x is not 4-D, or a ``guide`` is given.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.nn import Identity
      >>> x = jnp.ones((2, 4, 4, 8))
      >>> y, state = Identity().apply({}, x, mutable=["intermediates"])
      >>> bool((y == x).all()), state["intermediates"]["attention_map"][0].shape
      (True, (2, 4, 4))
    """

    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, guide=None, train: bool = False):
        check_features("none", x)
        reject_guide("none", guide)
        self.sow("intermediates", "attention_map", jnp.ones(x.shape[:3], jnp.float32))
        return x


class SpatialAttention(nn.Module):
    """Spatial gate: a = sigmoid(conv1x1(x)), one weight per position; returns x * a.

    The attention of the reference task models. Sows a (B, H, W) as "attention_map".

    Args:
      dtype: computation dtype of the 1x1 conv (None: the input's); the gate is computed in float32.
      param_dtype: dtype of the conv's parameters.

    Returns:
      Called as ``module(x, *, guide=None, train=False)`` on x (B, H, W, C): x * a, (B, H, W, C).

    Raises:
      ValueError: x is not 4-D, or a ``guide`` is given.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.nn import SpatialAttention
      >>> x = jnp.ones((2, 4, 4, 8))
      >>> gate = SpatialAttention()
      >>> variables = gate.init(jax.random.key(0), x)
      >>> y, state = gate.apply(variables, x, mutable=["intermediates"])
      >>> y.shape, state["intermediates"]["attention_map"][0].shape
      ((2, 4, 4, 8), (2, 4, 4))
    """

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
    """Squeeze-and-excitation (Hu et al. 2018): a channel gate a = sigmoid(W2 relu(W1 mean_hw(x))).

    Sows a (B, C) as "attention_map".

    Args:
      reduction: the hidden layer has max(min_hidden, C // reduction) units.
      min_hidden: the smallest hidden width.
      dtype: computation dtype of the two dense layers (None: the input's).
      param_dtype: dtype of their parameters.

    Returns:
      Called as ``module(x, *, guide=None, train=False)`` on x (B, H, W, C): x * a, (B, H, W, C).

    Raises:
      ValueError: x is not 4-D, or a ``guide`` is given.
    """

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
    """CBAM (Woo et al. 2018): a channel gate, then a spatial gate.

    The channel gate is a shared MLP on the average- and max-pooled x; the spatial gate a k x k conv over
    the channel-wise mean and max. Sows the spatial map (B, H, W) as "attention_map" and the channel
    map (B, C) as "channel_map".

    Args:
      reduction: the MLP's hidden layer has max(min_hidden, C // reduction) units.
      min_hidden: the smallest hidden width.
      kernel_size: k of the spatial gate's conv.
      dtype: computation dtype of the layers (None: the input's).
      param_dtype: dtype of their parameters.

    Returns:
      Called as ``module(x, *, guide=None, train=False)`` on x (B, H, W, C): the gated x, (B, H, W, C).

    Raises:
      ValueError: x is not 4-D, or a ``guide`` is given.
    """

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
    """ECA (Wang et al. 2020): a channel gate a = sigmoid(conv1d_k(mean_hw(x))) over the channel axis.

    Sows a (B, C) as "attention_map".

    Args:
      kernel_size: k of the 1-D conv; None picks ECA-Net's adaptive size from C (odd, about
        log2(C) / 2 + 1 / 2).
      dtype: computation dtype of the conv (None: the input's).
      param_dtype: dtype of its parameters.

    Returns:
      Called as ``module(x, *, guide=None, train=False)`` on x (B, H, W, C): x * a, (B, H, W, C).

    Raises:
      ValueError: x is not 4-D, or a ``guide`` is given.
    """

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

    The gating signal g is ``guide``, a coarser (B, h, w, C_g) feature map; phi(g) is resized
    (bilinear) to x's grid. Without a guide, g is the 2x2 average-pooled x (a self-gating, coarser
    context). The paper's output 1x1 conv + BatchNorm after the gating is left out, so the module is a
    pure gate like the others. Sows a (B, H, W) as "attention_map".

    Args:
      inter_channels: width of theta(x) and phi(g) (None: C // 2).
      dtype: computation dtype of the 1x1 convs (None: the input's).
      param_dtype: dtype of their parameters.

    Returns:
      Called as ``module(x, *, guide=None, train=False)`` on x (B, H, W, C): x * a, (B, H, W, C).

    Raises:
      ValueError: x is not 4-D, or ``guide`` is not (B, h, w, C_g) with x's batch size.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.nn import AttentionGate
      >>> x, g = jnp.ones((2, 8, 8, 16)), jnp.ones((2, 4, 4, 32))  # g: a coarser decoder signal
      >>> gate = AttentionGate(inter_channels=8)
      >>> y, variables = jax.eval_shape(gate.init_with_output, jax.random.key(0), x, guide=g)
      >>> y.shape, variables["params"]["phi"]["kernel"].shape
      ((2, 8, 8, 16), (1, 1, 32, 8))
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
