"""Flax linen attention modules, a registry of them by name, backbones and weight conversion.

Every attention module: ``module(x, *, guide=None, train=False) -> y``, x and y (B, H, W, C), with its
map sown into "intermediates" as "attention_map". Every backbone: ``backbone(images, train=bool)``
-> (B, H / stride, W / stride, out_channels), exposing ``out_channels`` and ``stride``.
"""

from attn_jax.nn.backbones import (
    BottleneckResNetBlock,
    Decoder,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNetBlock,
    SmallCNN,
)
from attn_jax.nn.convert import SEED_RENAME, torch_to_flax, torchvision_resnet_rename
from attn_jax.nn.gates import CBAM, ECA, AttentionGate, Identity, SpatialAttention, SqueezeExcite
from attn_jax.nn.query import AdditiveAttention, NonLocal
from attn_jax.nn.registry import ATTENTION_REGISTRY, available_attention, create_attention

__all__ = [
    "ATTENTION_REGISTRY",
    "CBAM",
    "ECA",
    "AdditiveAttention",
    "AttentionGate",
    "BottleneckResNetBlock",
    "Decoder",
    "Identity",
    "NonLocal",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNetBlock",
    "SEED_RENAME",
    "SmallCNN",
    "SpatialAttention",
    "SqueezeExcite",
    "available_attention",
    "create_attention",
    "torch_to_flax",
    "torchvision_resnet_rename",
]
