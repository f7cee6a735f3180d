"""Context vectors: attention-weighted sums of values."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attn_jax import _checks
from attn_jax.functional._blocking import KEY_BLOCK
from attn_jax.functional._dtypes import accumulation_dtype


def blocked_weighted_sum(weights, values, dtype):
    """weights (..., m, n) @ values (..., n, d) in `dtype`, summed over <= 256 keys at a time, then blocks.

    One float32 dot over thousands of keys loses accuracy when the weighted values cancel (the context
    of 4096 random keys: 1.0e-6 relative, blocked 2.2e-7).
    """
    n = weights.shape[-1]
    if n <= KEY_BLOCK:
        return jnp.matmul(weights, values, preferred_element_type=dtype)
    num_blocks = -(-n // KEY_BLOCK)
    pad = num_blocks * KEY_BLOCK - n  # zero weights on zero values: no contribution
    weights = jnp.pad(weights, [(0, 0)] * (weights.ndim - 1) + [(0, pad)])
    values = jnp.pad(values, [(0, 0)] * (values.ndim - 2) + [(0, pad), (0, 0)])
    weights = weights.reshape(weights.shape[:-1] + (num_blocks, KEY_BLOCK))
    values = values.reshape(values.shape[:-2] + (num_blocks, KEY_BLOCK, values.shape[-1]))
    partial = jnp.einsum("...mjk,...jkd->...mjd", weights, values, preferred_element_type=dtype)
    return jnp.sum(partial, axis=-2)


def attention_context(weights: jax.Array, values: jax.Array) -> jax.Array:
    """Context vectors c = sum_i alpha_i v_i, one per query row.

    Accumulated in float32 (float64 for float64 inputs), over at most 256 keys at a time and then over
    those blocks, so that long rows of cancelling values keep float32 accuracy.

    Args:
      weights: (..., m, n) attention weights alpha (e.g. from `masked_softmax`), floating.
      values: (..., n, d_v) values v, floating; leading dims broadcast with ``weights``'.

    Returns:
      (..., m, d_v) context in the result dtype of ``weights`` and ``values``.

    Raises:
      ValueError: an input is not a floating array of rank >= 2, the two disagree on n, or their leading
        dims do not broadcast.

    Examples:
      >>> import jax.numpy as jnp
      >>> weights = jnp.array([[0.25, 0.75]])  # (m, n) = (1, 2)
      >>> values = jnp.array([[4.0, 0.0], [0.0, 4.0]])  # (n, d_v) = (2, 2)
      >>> attention_context(weights, values)
      Array([[1., 3.]], dtype=float32)
    """
    _checks.check_float("weights", weights)
    _checks.check_float("values", values)
    _checks.check_rank("weights", jnp.shape(weights), 2, "(..., m, n)")
    _checks.check_rank("values", jnp.shape(values), 2, "(..., n, d_v)")
    if weights.shape[-1] != values.shape[-2]:
        raise ValueError(
            f"weights (..., m, n) = {weights.shape} and values (..., n, d_v) = {values.shape} disagree on n"
        )
    _checks.broadcast_batch({"weights": (weights.shape, 2), "values": (values.shape, 2)})
    out_dtype = jnp.result_type(weights.dtype, values.dtype)
    context = blocked_weighted_sum(weights, values, accumulation_dtype(weights, values))
    return context.astype(out_dtype)
