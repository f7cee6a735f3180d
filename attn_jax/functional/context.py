"""Context vectors: attention-weighted sums of values."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attn_jax.functional import _checks
from attn_jax.functional._dtypes import accumulation_dtype


def attention_context(weights: jax.Array, values: jax.Array) -> jax.Array:
    """c = sum_i alpha_i v_i for every query row.

    weights: (..., m, n); values: (..., n, d_v), leading dims broadcastable. Returns (..., m, d_v)
    in the result dtype of the inputs, accumulated in float32 (float64 for float64 inputs).
    """
    _checks.check_rank("weights", jnp.shape(weights), 2, "(..., m, n)")
    _checks.check_rank("values", jnp.shape(values), 2, "(..., n, d_v)")
    if weights.shape[-1] != values.shape[-2]:
        raise ValueError(
            f"weights (..., m, n) = {weights.shape} and values (..., n, d_v) = {values.shape} disagree on n"
        )
    _checks.broadcast_batch({"weights": (weights.shape, 2), "values": (values.shape, 2)})
    out_dtype = jnp.result_type(weights.dtype, values.dtype)
    context = jnp.matmul(weights, values, preferred_element_type=accumulation_dtype(weights, values))
    return context.astype(out_dtype)
