"""Dot-product attention family beside the additive one, sharing its masked softmax and context.

scaled:   e_ij = q_i . k_j / sqrt(d)          (Vaswani et al.; scale=None means 1/sqrt(d))
general:  e_ij = q_i W k_j^T                  (Luong et al. "general" / bilinear)
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from attn_jax import _checks
from attn_jax.functional._dtypes import accumulation_dtype
from attn_jax.functional.softmax import softmax_context


def _validate(query, keys, values=None, mask=None, w=None) -> tuple[int, ...]:
    """Check the dot-product family's arguments; return the broadcast batch shape."""
    for name, x in {"query": query, "keys": keys, "values": values, "w": w}.items():
        if x is not None:
            _checks.check_float(name, x)
    if mask is not None:
        _checks.check_bool_mask(mask)
    _checks.check_rank("query", jnp.shape(query), 2, "(..., m, d_q)")
    _checks.check_rank("keys", jnp.shape(keys), 2, "(..., n, d_k)")
    d_q, d_k = jnp.shape(query)[-1], jnp.shape(keys)[-1]
    if w is None:
        _checks.check_dim("keys", jnp.shape(keys), -1, d_q, f"query has d = {d_q} (dot product)")
    else:
        _checks.check_exact_shape("w", jnp.shape(w), (d_q, d_k), "(d_q, d_k)")
    shapes = {"query": (jnp.shape(query), 2), "keys": (jnp.shape(keys), 2)}
    n = jnp.shape(keys)[-2]
    if values is not None:  # attention (not scores alone) over no key has no context
        _checks.check_keys_nonempty("keys", jnp.shape(keys))
    if values is not None:
        _checks.check_rank("values", jnp.shape(values), 2, "(..., n, d_v)")
        _checks.check_dim("values", jnp.shape(values), -2, n, f"keys have n = {n} positions")
        shapes["values"] = (jnp.shape(values), 2)
    batch = _checks.broadcast_batch(shapes)
    if mask is not None:
        _checks.check_mask(jnp.shape(mask), batch + (jnp.shape(query)[-2], n))
    return batch


def _scores(query, keys, w, scale, dtype):
    if w is not None:
        query = jnp.matmul(query, w, preferred_element_type=dtype)
    scores = jnp.matmul(query, jnp.swapaxes(keys, -1, -2), preferred_element_type=dtype)
    return scores.astype(dtype) * scale


def dot_product_scores(query, keys, *, scale=None):
    """Scaled dot-product scores q k^T * scale; query (..., m, d), keys (..., n, d) -> (..., m, n).

    scale=None uses 1/sqrt(d). Accumulated in float32 (float64 for float64), returned in input dtype.
    """
    _validate(query, keys)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    out = _scores(query, keys, None, scale, accumulation_dtype(query, keys))
    return out.astype(jnp.result_type(query, keys))


def general_scores(query, keys, w):
    """Bilinear ("general") scores q W k^T; query (..., m, d_q), keys (..., n, d_k), w (d_q, d_k)."""
    _validate(query, keys, w=w)
    out = _scores(query, keys, w, 1.0, accumulation_dtype(query, keys, w))
    return out.astype(jnp.result_type(query, keys, w))


def dot_product_attention(
    query, keys, values=None, *, w=None, scale=None, mask=None, fully_masked="zero", return_weights=True
):
    """Dot-product attention: scores, masked softmax, context; same contract as additive_attention.

    query (..., m, d_q); keys (..., n, d_k); values (..., n, d_v) (default: keys). w=None: scaled
    dot product (d_q == d_k, scale default 1/sqrt(d)); w (d_q, d_k): bilinear q W k^T (scale default
    1). mask bool broadcastable to (..., m, n). Returns (context (..., m, d_v), weights or None).
    """
    _checks.check_fully_masked(fully_masked)
    values = keys if values is None else values
    _validate(query, keys, values, mask, w)
    if scale is None:
        scale = 1.0 if w is not None else 1.0 / math.sqrt(query.shape[-1])
    arrays = (query, keys, values) if w is None else (query, keys, values, w)
    dtype = accumulation_dtype(*arrays)
    scores = _scores(query, keys, w, scale, dtype)
    context, weights = softmax_context(scores, mask, values.astype(dtype), fully_masked)
    out_dtype = jnp.result_type(*arrays)
    weights = weights.astype(out_dtype) if return_weights else None
    return context.astype(out_dtype), weights
