"""PyTorch twin of the main-job classifier (AttentionClassifier over SmallCNN, "spatial" gate).

    model = TorchClassifier(features=(24, 48, 96, 128), stride=8, num_classes=10, in_channels=1)
    names = twin_rename(model)          # PyTorch module names -> Flax scopes, for attn_jax.nn.convert

The head is the PyTorch reference classifier of tests/test_torch_parity.py (features * sigmoid(conv1x1),
adaptive_avg_pool2d, nn.Linear; Xu et al. 2015-style soft attention pooling); the backbone mirrors
attn_jax.nn.SmallCNN: per stage Conv3x3 (stride 2 for the first log2(stride) stages, padding 1, no bias)
-> BatchNorm2d -> ReLU. Inputs are NCHW. Optional: imported only where `torch` is installed (the bench
extra); tests/test_torch_parity.py checks that its forward equals the Flax model's on converted weights.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn


class TorchSmallCNN(nn.Sequential):
    """Conv3x3-BN-ReLU stages like attn_jax.nn.SmallCNN (blocks_per_stage=1); NCHW in and out."""

    def __init__(self, features=(24, 48, 96, 128), stride: int = 8, in_channels: int = 1):
        down = int(math.log2(stride))
        if 2**down != stride or down > len(features):
            raise ValueError(f"stride must be a power of 2, log2(stride) <= {len(features)}; got {stride}")
        layers, c_in = [], in_channels
        for i, width in enumerate(features):
            s = 2 if i < down else 1
            layers += [nn.Conv2d(c_in, width, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(width)]
            layers.append(nn.ReLU())
            c_in = width
        super().__init__(*layers)
        self.out_channels = c_in


class TorchClassifier(nn.Module):
    """backbone -> x * sigmoid(conv1x1(x)) -> global average pool -> linear: (B, C, H, W) -> (B, K).

    The reference head, except that the pooled features keep their batch axis when B == 1 (as Flax)."""

    def __init__(self, features=(24, 48, 96, 128), stride: int = 8, num_classes: int = 10, in_channels=1):
        super().__init__()
        self.backbone = TorchSmallCNN(features, stride, in_channels)
        c = self.backbone.out_channels
        self.attention = nn.Sequential(nn.Conv2d(c, 1, kernel_size=1), nn.Sigmoid())
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        features = self.backbone(x)
        weighted = features * self.attention(features)
        return self.classifier(F.adaptive_avg_pool2d(weighted, (1, 1)).flatten(1))


def twin_rename(model: TorchClassifier) -> dict:
    """PyTorch prefixes -> Flax scopes of AttentionClassifier(SmallCNN): backbone.{3i} -> conv{i}_0,
    backbone.{3i+1} -> bn{i}_0, plus the head's names (attn_jax.nn.convert.SEED_RENAME)."""
    from attn_jax.nn.convert import SEED_RENAME

    names = dict(SEED_RENAME)
    for i in range(len(model.backbone) // 3):
        names[f"backbone.{3 * i}"] = f"backbone/conv{i}_0"
        names[f"backbone.{3 * i + 1}"] = f"backbone/bn{i}_0"
    return names
