"""Backbones (NHWC): a small CNN for CPU experiments, ResNet-18/34/50, and a small decoder.

Call convention: ``backbone(images, train=bool) -> features`` of shape (B, H / stride, W / stride,
out_channels); every backbone exposes ``out_channels`` and ``stride``. BatchNorm uses batch statistics
when train=True (update with ``mutable=["batch_stats"]``) and running averages otherwise; momentum 0.9 and
epsilon 1e-5 as PyTorch's defaults, and 3x3 convs pad 1 like PyTorch, so converted weights agree.
``bn_axis_name`` (e.g. "data") averages batch statistics across devices inside shard_map / pmap.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.nn.conv import MatmulGradConv, SubpixelGradConv

Dtype = Any


def _norm(train: bool, dtype, param_dtype, axis_name, **kw) -> nn.Module:
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=param_dtype,
        axis_name=axis_name, **kw,
    )  # fmt: skip


def _tuple_field(module: nn.Module, field: str) -> None:
    """Store a list-valued field as a tuple so the module stays hashable (jit static arguments)."""
    value = getattr(module, field)
    if not isinstance(value, tuple):
        object.__setattr__(module, field, tuple(value))


def _positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _check_widths(module: nn.Module, field: str) -> None:
    """ValueError unless `field` is a non-empty tuple of positive ints (channel widths)."""
    value = getattr(module, field)
    if not value or not all(_positive_int(v) for v in value):
        name = type(module).__name__
        raise ValueError(f"{name} {field} must be positive ints, e.g. (24, 48); got {value!r}")


def _log2_stride(stride: int, limit: int, what: str) -> int:
    """Number of 2x downsamplings for `stride`; ValueError unless a power of 2 reachable in `limit`."""
    if stride < 1 or stride & (stride - 1) or int(math.log2(stride)) > limit:
        raise ValueError(f"stride must be a power of 2 with log2(stride) <= {limit} ({what}); got {stride}")
    return int(math.log2(stride))


MATMUL_GRAD_CHOICES = ("none", "strided", "all")


def matmul_grad_choice(value: bool | str) -> str:
    """One of MATMUL_GRAD_CHOICES for SmallCNN's matmul_grad (a bool means "all" / "none");
    ValueError naming the choices otherwise."""
    if isinstance(value, bool):
        return "all" if value else "none"
    if isinstance(value, str) and value in MATMUL_GRAD_CHOICES:
        return value
    raise ValueError(f"matmul_grad must be one of {list(MATMUL_GRAD_CHOICES)} or a bool; got {value!r}")


def _trains_as_product(matmul_grad: bool | str, stride: int) -> bool:
    choice = matmul_grad_choice(matmul_grad)
    return choice == "all" or (choice == "strided" and stride == 2)


class SmallCNN(nn.Module):
    """Conv3x3-BN-ReLU stages, one per entry of `features` (`blocks_per_stage` convs each); the first
    log2(stride) stages halve the resolution with a stride-2 conv. stride 4 or 8 for 64x64 images.
    subpixel_grad: those convs compute their input gradient by sub-pixel phases (attn_jax.nn.conv; same
    forward, gradients equal up to float32 rounding); opt-in: on a loaded 2-core CPU it measured ~0.92x
    the step time on 1 device and 1.0x on 4, not enough to change the default's numerics.
    matmul_grad: which convs train as a matrix product over 3x3 patches, so that their kernel gradients
    (and stride-2 input gradients) are products (attn_jax.nn.conv.MatmulGradConv; evaluation unchanged,
    gradients equal up to float32 rounding): "none", "strided" (the stride-2 convs, whose gradients
    XLA:CPU computes slowest) or "all"; True / False mean "all" / "none"."""

    features: Sequence[int] = (32, 64, 128)
    stride: int = 8
    blocks_per_stage: int = 1
    use_bn: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    subpixel_grad: bool = False
    matmul_grad: bool | str = "none"

    def __post_init__(self):
        _tuple_field(self, "features")
        _check_widths(self, "features")
        if matmul_grad_choice(self.matmul_grad) != "none" and self.subpixel_grad:
            raise ValueError("SmallCNN takes subpixel_grad or matmul_grad, not both")
        if not _positive_int(self.blocks_per_stage):
            raise ValueError(f"SmallCNN blocks_per_stage must be an int >= 1; got {self.blocks_per_stage!r}")
        super().__post_init__()

    @property
    def out_channels(self) -> int:
        return self.features[-1]

    @nn.compact
    def __call__(self, x, train: bool = False):
        down = _log2_stride(self.stride, len(self.features), f"{len(self.features)} stages")
        for i, width in enumerate(self.features):
            for j in range(self.blocks_per_stage):
                s = 2 if (i < down and j == 0) else 1
                conv_cls = SubpixelGradConv if (s == 2 and self.subpixel_grad) else None
                conv_cls = MatmulGradConv if _trains_as_product(self.matmul_grad, s) else conv_cls
                x = nn.Conv(
                    width, (3, 3), (s, s), padding=1, use_bias=not self.use_bn, dtype=self.dtype,
                    param_dtype=self.param_dtype, conv_general_dilated_cls=conv_cls, name=f"conv{i}_{j}",
                )(x)  # fmt: skip
                if self.use_bn:
                    x = _norm(train, self.dtype, self.param_dtype, self.bn_axis_name, name=f"bn{i}_{j}")(x)
                x = nn.relu(x)
        return x


class ResNetBlock(nn.Module):
    """Basic residual block (two 3x3 convs), as in flax examples/imagenet."""

    filters: int
    conv: Any
    norm: Any
    strides: int = 1
    expansion = 1

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides, padding=1)(x)))
        y = self.norm(scale_init=nn.initializers.zeros)(self.conv(self.filters, (3, 3), padding=1)(y))
        if x.shape != y.shape:
            x = self.norm(name="norm_proj")(
                self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(x)
            )
        return nn.relu(x + y)


class BottleneckResNetBlock(nn.Module):
    """Bottleneck block (1x1, 3x3 strided, 1x1 with 4x expansion), as torchvision's ResNet v1.5."""

    filters: int
    conv: Any
    norm: Any
    strides: int = 1
    expansion = 4

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides, padding=1)(y)))
        y = self.norm(scale_init=nn.initializers.zeros)(self.conv(self.filters * 4, (1, 1))(y))
        if x.shape != y.shape:
            x = self.norm(name="norm_proj")(
                self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(x)
            )
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet feature extractor (no classifier head). stem="imagenet": 7x7/2 conv + 3x3/2 max-pool,
    stride 32; stem="small": one 3x3/1 conv, no pool, stride 8 (for 32-64 px images)."""

    stage_sizes: Sequence[int]
    block_cls: Any = ResNetBlock
    num_filters: int = 64
    stem: str = "imagenet"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None

    def __post_init__(self):
        _tuple_field(self, "stage_sizes")
        super().__post_init__()

    @property
    def out_channels(self) -> int:
        return self.num_filters * 2 ** (len(self.stage_sizes) - 1) * self.block_cls.expansion

    @property
    def stride(self) -> int:
        return (4 if self.stem == "imagenet" else 1) * 2 ** (len(self.stage_sizes) - 1)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small'; got {self.stem!r}")
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(_norm, train, self.dtype, self.param_dtype, self.bn_axis_name)
        if self.stem == "imagenet":
            x = nn.relu(
                norm(name="bn_init")(conv(self.num_filters, (7, 7), (2, 2), padding=3, name="conv_init")(x))
            )
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = nn.relu(norm(name="bn_init")(conv(self.num_filters, (3, 3), padding=1, name="conv_init")(x)))
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(self.num_filters * 2**i, conv=conv, norm=norm, strides=strides)(x)
        return x


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=ResNetBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckResNetBlock)


class Decoder(nn.Module):
    """Segmentation decoder: per entry of `features`, 2x bilinear upsampling then Conv3x3-BN-ReLU.

    Upsamples by 2 ** len(features): use log2(encoder stride) entries to return to input resolution.
    Output (B, H * 2**k, W * 2**k, out_channels)."""

    features: Sequence[int] = (64, 32, 16)
    use_bn: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    subpixel_grad: bool = False

    def __post_init__(self):
        _tuple_field(self, "features")
        _check_widths(self, "features")
        super().__post_init__()

    @property
    def out_channels(self) -> int:
        return self.features[-1]

    @property
    def upsampling(self) -> int:
        return 2 ** len(self.features)

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, width in enumerate(self.features):
            b, h, w, c = x.shape
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")
            x = nn.Conv(
                width, (3, 3), padding=1, use_bias=not self.use_bn, dtype=self.dtype,
                param_dtype=self.param_dtype, name=f"conv{i}",
            )(x)  # fmt: skip
            if self.use_bn:
                x = _norm(train, self.dtype, self.param_dtype, self.bn_axis_name, name=f"bn{i}")(x)
            x = nn.relu(x)
        return x
