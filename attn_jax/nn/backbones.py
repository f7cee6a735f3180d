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

from attn_jax.nn.conv import MatmulGradConv

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
    """A small CNN for CPU experiments: Conv3x3-BN-ReLU stages, one per entry of ``features``.

    The first log2(stride) stages open with a stride-2 conv; use stride 4 or 8 for 64x64 images. The
    main job's backbone is ``SmallCNN((24, 48, 96, 128), stride=8, matmul_grad="strided")``.

    Args:
      features: the width of each stage (positive ints).
      stride: the total downsampling, a power of 2 with log2(stride) <= len(features).
      blocks_per_stage: convs per stage (the first of a downsampling stage has stride 2).
      use_bn: BatchNorm after each conv (else the conv has a bias).
      dtype: computation dtype (None: the input's); ``jnp.bfloat16`` for bf16 compute.
      param_dtype: dtype of the parameters.
      bn_axis_name: a mapped axis name (e.g. ``"data"``) to average BatchNorm statistics across devices.
      matmul_grad: which convs train as a matrix product over 3x3 patches, so that their kernel gradients
        (and stride-2 input gradients) are products: ``"none"``, ``"strided"`` (the stride-2 convs) or
        ``"all"``; True / False mean ``"all"`` / ``"none"``. Evaluation is unchanged and the gradients
        equal XLA's up to float32 rounding; lowered for GPU or TPU the convs are XLA's whatever this says.

    Returns:
      Called as ``backbone(images, train=False)`` on (B, H, W, C_in) images: features
      (B, H / stride, W / stride, features[-1]). ``train=True`` uses batch statistics (update them with
      ``mutable=["batch_stats"]``).

    Raises:
      ValueError: empty or non-positive ``features``, a ``blocks_per_stage`` below 1, an unknown
        ``matmul_grad``, or (when called) a ``stride`` that is not a reachable power of 2.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.nn import SmallCNN
      >>> cnn = SmallCNN(features=(8, 16), stride=4)
      >>> images = jnp.zeros((2, 32, 32, 1))
      >>> features, variables = jax.eval_shape(cnn.init_with_output, jax.random.key(0), images)  # shapes only
      >>> features.shape, cnn.out_channels, sorted(variables)
      ((2, 8, 8, 16), 16, ['batch_stats', 'params'])
    """

    features: Sequence[int] = (32, 64, 128)
    stride: int = 8
    blocks_per_stage: int = 1
    use_bn: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    matmul_grad: bool | str = "none"

    def __post_init__(self):
        _tuple_field(self, "features")
        _check_widths(self, "features")
        matmul_grad_choice(self.matmul_grad)  # ValueError naming the choices
        if not _positive_int(self.blocks_per_stage):
            raise ValueError(f"SmallCNN blocks_per_stage must be an int >= 1; got {self.blocks_per_stage!r}")
        super().__post_init__()

    @property
    def out_channels(self) -> int:
        """The number of output channels, ``features[-1]``."""
        return self.features[-1]

    @nn.compact
    def __call__(self, x, train: bool = False):
        down = _log2_stride(self.stride, len(self.features), f"{len(self.features)} stages")
        for i, width in enumerate(self.features):
            for j in range(self.blocks_per_stage):
                s = 2 if (i < down and j == 0) else 1
                conv_cls = MatmulGradConv if _trains_as_product(self.matmul_grad, s) else None
                x = nn.Conv(
                    width, (3, 3), (s, s), padding=1, use_bias=not self.use_bn, dtype=self.dtype,
                    param_dtype=self.param_dtype, conv_general_dilated_cls=conv_cls, name=f"conv{i}_{j}",
                )(x)  # fmt: skip
                if self.use_bn:
                    x = _norm(train, self.dtype, self.param_dtype, self.bn_axis_name, name=f"bn{i}_{j}")(x)
                x = nn.relu(x)
        return x


class ResNetBlock(nn.Module):
    """Basic residual block (two 3x3 convs), as in the Flax ImageNet example; built by `ResNet`.

    Args:
      filters: output channels.
      conv: the conv constructor (``functools.partial`` of ``flax.linen.Conv``).
      norm: the normalisation constructor.
      strides: stride of the first conv (and of the projection shortcut).
    """

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
    """Bottleneck block (1x1, 3x3 strided, 1x1 with 4x expansion), as torchvision's ResNet v1.5.

    Args:
      filters: channels of the inner convs (the output has 4 x filters).
      conv: the conv constructor (``functools.partial`` of ``flax.linen.Conv``).
      norm: the normalisation constructor.
      strides: stride of the 3x3 conv (and of the projection shortcut).
    """

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
    """ResNet feature extractor (no classifier head); `ResNet18`, `ResNet34` and `ResNet50` fix its stages.

    Args:
      stage_sizes: blocks per stage; every stage after the first halves the resolution.
      block_cls: `ResNetBlock` or `BottleneckResNetBlock`.
      num_filters: channels of the first stage (doubled per stage).
      stem: ``"imagenet"`` (7x7/2 conv and 3x3/2 max-pool: stride 32 with four stages) or ``"small"``
        (one 3x3/1 conv, no pool: stride 8, for 32-64 px images).
      dtype: computation dtype (None: the input's).
      param_dtype: dtype of the parameters.
      bn_axis_name: a mapped axis name to average BatchNorm statistics across devices.

    Returns:
      Called as ``backbone(images, train=False)``: features (B, H / stride, W / stride, out_channels).

    Raises:
      ValueError: (when called) an unknown ``stem``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.nn import ResNet18
      >>> resnet = ResNet18(num_filters=8, stem="small")
      >>> resnet.stride, resnet.out_channels
      (8, 64)
      >>> jax.eval_shape(resnet.init_with_output, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))[0].shape
      (1, 4, 4, 64)
    """

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
        """Channels of the output features."""
        return self.num_filters * 2 ** (len(self.stage_sizes) - 1) * self.block_cls.expansion

    @property
    def stride(self) -> int:
        """Total downsampling of the output features."""
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
    """Segmentation decoder: per entry of ``features``, 2x bilinear upsampling, then Conv3x3-BN-ReLU.

    It upsamples by 2 ** len(features): give it log2(encoder stride) entries to return to the input's
    resolution.

    Args:
      features: the width after each upsampling (positive ints).
      use_bn: BatchNorm after each conv (else the conv has a bias).
      dtype: computation dtype (None: the input's).
      param_dtype: dtype of the parameters.
      bn_axis_name: a mapped axis name to average BatchNorm statistics across devices.

    Returns:
      Called as ``decoder(x, train=False)`` on (B, h, w, C): (B, h · 2^k, w · 2^k, features[-1]) with
      k = len(features).

    Raises:
      ValueError: empty or non-positive ``features``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.nn import Decoder
      >>> decoder = Decoder((16, 8))
      >>> x = jnp.zeros((2, 8, 8, 32))
      >>> out, _ = jax.eval_shape(decoder.init_with_output, jax.random.key(0), x)  # shapes only
      >>> out.shape, decoder.upsampling
      ((2, 32, 32, 8), 4)
    """

    features: Sequence[int] = (64, 32, 16)
    use_bn: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None

    def __post_init__(self):
        _tuple_field(self, "features")
        _check_widths(self, "features")
        super().__post_init__()

    @property
    def out_channels(self) -> int:
        """The number of output channels, ``features[-1]``."""
        return self.features[-1]

    @property
    def upsampling(self) -> int:
        """The resolution factor, 2 ** len(features)."""
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
