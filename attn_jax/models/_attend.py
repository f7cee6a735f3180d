"""Shared by the task models: build the named attention entry; check and freeze model arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.core import FrozenDict

from attn_jax.nn.registry import ATTENTION_REGISTRY, available_attention, create_attention


def make_attention(name: str, kwargs: Mapping[str, Any] | None, dtype, param_dtype) -> nn.Module:
    """The registry entry `name` (child module "attention") with the model's dtypes unless overridden."""
    kw = {"dtype": dtype, "param_dtype": param_dtype, **dict(kwargs or {})}
    return create_attention(name, name="attention", **kw)


def prepare_model(model: nn.Module) -> None:
    """In a model's __post_init__: reject an unknown attention name early and freeze attention_kwargs
    into a FrozenDict, so the model stays hashable (usable as a static argument of jax.jit)."""
    if model.attention not in ATTENTION_REGISTRY:
        raise ValueError(f"unknown attention {model.attention!r}; known: {', '.join(available_attention())}")
    if model.num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {model.num_classes}")
    if getattr(model, "num_anchors", 1) < 1:
        raise ValueError(f"num_anchors must be >= 1; got {model.num_anchors}")
    if model.attention_kwargs is not None and not isinstance(model.attention_kwargs, FrozenDict):
        object.__setattr__(model, "attention_kwargs", FrozenDict(model.attention_kwargs))


def check_images(model_name: str, images) -> None:
    """Raise ValueError unless images is a (B, H, W, C) batch."""
    if jnp.ndim(images) != 4:
        raise ValueError(f"{model_name}: images must have shape (B, H, W, C); got shape {jnp.shape(images)}")
