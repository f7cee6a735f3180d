"""Attention modules by name (timm ``create_attn`` style); every entry follows one call convention.

attn = create_attention("cbam", reduction=8)
y = attn(x, train=train)                  # x, y: (B, H, W, C); optional guide= for gate/additive
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn

from attn_jax.nn.gates import CBAM, ECA, AttentionGate, Identity, SpatialAttention, SqueezeExcite
from attn_jax.nn.query import AdditiveAttention, NonLocal

ATTENTION_REGISTRY: Mapping[str, type[nn.Module]] = {
    "none": Identity,
    "spatial": SpatialAttention,
    "additive": AdditiveAttention,
    "se": SqueezeExcite,
    "cbam": CBAM,
    "eca": ECA,
    "gate": AttentionGate,
    "nonlocal": NonLocal,
}


def available_attention() -> tuple[str, ...]:
    """The registered attention names, sorted."""
    return tuple(sorted(ATTENTION_REGISTRY))


def create_attention(name: str, /, **kwargs) -> nn.Module:
    """Build the attention module registered as `name` with its keyword attributes.

    `kwargs` may include the Flax `name=` of the module. Raises ValueError for an unknown name
    (listing the known ones) or an attribute the entry lacks.
    """
    if name not in ATTENTION_REGISTRY:
        raise ValueError(f"unknown attention {name!r}; known: {', '.join(available_attention())}")
    cls = ATTENTION_REGISTRY[name]
    fields = set(cls.__dataclass_fields__) - {"parent", "name"}
    unknown = set(kwargs) - fields - {"name"}
    if unknown:
        raise ValueError(
            f"attention {name!r} has no attribute(s) {sorted(unknown)}; it takes {sorted(fields)}"
        )
    return cls(**kwargs)
