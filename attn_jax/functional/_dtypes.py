"""Accumulation dtype: float32 for half/single-precision inputs, float64 when an input is float64."""

from __future__ import annotations

import math

import jax.numpy as jnp


def accumulation_dtype(*arrays):
    """The dtype softmax and reductions run in: promote(inputs' result dtype, float32)."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def project(x, w, dtype):
    """x (..., p, d) @ w (d, a) -> (..., p, a), accumulated and returned in `dtype`.

    One 2-D product over all rows: the gradient of w is then rows^T @ d_rows. Left batched, its transpose
    contracts the batch and row axes together, and XLA:CPU first copied d_rows transposed, (a, rows), a
    noticeable share of a (4, 4096, 256) one-query forward+backward (docs/cpu.md, "The chunked attention
    path")."""
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # not (-1, d): d may be 0
    rows = jnp.matmul(rows, w, preferred_element_type=dtype).astype(dtype)
    return rows.reshape(*x.shape[:-1], w.shape[-1])
