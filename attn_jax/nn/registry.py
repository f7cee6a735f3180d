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
    """The registered attention names, sorted.

    Returns:
      The keys of `ATTENTION_REGISTRY` as a sorted tuple; each is a valid ``attention=`` of the models.

    Examples:
      >>> from attn_jax.nn import available_attention
      >>> available_attention()
      ('additive', 'cbam', 'eca', 'gate', 'none', 'nonlocal', 'se', 'spatial')
    """
    return tuple(sorted(ATTENTION_REGISTRY))


def create_attention(name: str, /, **kwargs) -> nn.Module:
    """Build the attention module registered as `name` with its keyword attributes.

    Args:
      name: a registry name (`available_attention`), positional only.
      **kwargs: attributes of that module (e.g. ``reduction=8`` for ``"se"``), and optionally the Flax
        ``name=`` of the module.

    Returns:
      The unbound Flax module, called as ``module(x, *, guide=None, train=False)``.

    Raises:
      ValueError: an unknown name (the message lists the known ones) or an attribute the entry lacks
        (the message lists the ones it takes).

    Examples:
      >>> from attn_jax.nn import create_attention
      >>> create_attention("se", reduction=8).reduction
      8
      >>> create_attention("nope")
      Traceback (most recent call last):
      ...
      ValueError: unknown attention 'nope'; known: additive, cbam, eca, gate, none, nonlocal, se, spatial
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
