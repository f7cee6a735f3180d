"""Shared by the task models: build the named attention entry and apply it to backbone features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from attn_jax.nn.registry import create_attention


def make_attention(name: str, kwargs: Mapping[str, Any] | None, dtype, param_dtype) -> nn.Module:
    """The registry entry `name` (child module "attention") with the model's dtypes unless overridden."""
    kw = {"dtype": dtype, "param_dtype": param_dtype, **dict(kwargs or {})}
    return create_attention(name, name="attention", **kw)
