"""Accumulation dtype: float32 for half/single-precision inputs, float64 when an input is float64."""

from __future__ import annotations

import jax.numpy as jnp


def accumulation_dtype(*arrays):
    """The dtype softmax and reductions run in: promote(inputs' result dtype, float32)."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def project(x, w, dtype):
    """x (..., p, d) @ w (d, a) -> (..., p, a), accumulated and returned in `dtype`."""
    return jnp.matmul(x, w, preferred_element_type=dtype).astype(dtype)
