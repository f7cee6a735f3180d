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


def _default_scale(d: int) -> float:
    """1 / sqrt(d); 1 for d = 0, whose scores are empty sums (0) whatever the scale."""
    return 1.0 / math.sqrt(d) if d else 1.0


def _scores(query, keys, w, scale, dtype):
    if w is not None:
        query = jnp.matmul(query, w, preferred_element_type=dtype)
    scores = jnp.matmul(query, jnp.swapaxes(keys, -1, -2), preferred_element_type=dtype)
    return scores.astype(dtype) * scale


def dot_product_scores(query, keys, *, scale=None):
    """Scaled dot-product scores e = q k^T * scale (Vaswani et al. 2017).

    Args:
      query: (..., m, d) queries, floating.
      keys: (..., n, d) keys, floating; leading dims broadcast with ``query``'s.
      scale: multiplies the scores; None: 1/sqrt(d) (1 for d = 0, whose scores are 0).

    Returns:
      (..., m, n) scores in the inputs' result dtype, accumulated in float32 (float64 for float64 inputs).

    Raises:
      ValueError: an input is not a floating array of rank >= 2, ``query`` and ``keys`` disagree on d,
        or their leading dims do not broadcast.

    Examples:
      >>> import jax.numpy as jnp
      >>> q = jnp.array([[1.0, 0.0, 0.0, 0.0]])  # (m, d) = (1, 4)
      >>> h = jnp.array([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])  # (n, d) = (2, 4)
      >>> dot_product_scores(q, h)  # scale 1/sqrt(4)
      Array([[1., 0.]], dtype=float32)
    """
    _validate(query, keys)
    scale = _default_scale(query.shape[-1]) if scale is None else scale
    out = _scores(query, keys, None, scale, accumulation_dtype(query, keys))
    return out.astype(jnp.result_type(query, keys))


def general_scores(query, keys, w):
    """Bilinear ("general", Luong et al. 2015) scores e = q W k^T.

    Args:
      query: (..., m, d_q) queries, floating.
      keys: (..., n, d_k) keys, floating; leading dims broadcast with ``query``'s.
      w: (d_q, d_k) the bilinear form W.

    Returns:
      (..., m, n) scores in the inputs' result dtype, accumulated in float32 (float64 for float64 inputs).

    Raises:
      ValueError: an input is not a floating array, ``w`` is not (d_q, d_k), or the leading dims do not
        broadcast.

    Examples:
      >>> import jax.numpy as jnp
      >>> q, h = jnp.ones((1, 2)), jnp.ones((3, 4))  # (m, d_q) = (1, 2), (n, d_k) = (3, 4)
      >>> general_scores(q, h, jnp.full((2, 4), 0.5))
      Array([[4., 4., 4.]], dtype=float32)
    """
    _validate(query, keys, w=w)
    out = _scores(query, keys, w, 1.0, accumulation_dtype(query, keys, w))
    return out.astype(jnp.result_type(query, keys, w))


def dot_product_attention(
    query, keys, values=None, *, w=None, scale=None, mask=None, fully_masked="zero", return_weights=True
):
    """Dot-product attention: scores, masked softmax, context; same contract as `additive_attention`.

    Scores are the scaled dot product q k^T / sqrt(d) (Vaswani et al. 2017) or, with ``w``, the bilinear
    q W k^T (Luong et al. 2015).

    Args:
      query: (..., m, d_q) queries, floating.
      keys: (..., n, d_k) keys, n >= 1; leading dims broadcast with the other inputs'.
      values: (..., n, d_v) values; None: the keys.
      w: None for the scaled dot product (d_q == d_k), or (d_q, d_k) for the bilinear q W k^T.
      scale: multiplies the scores; None: 1/sqrt(d) for the scaled dot product (1 for d = 0, whose
        scores are 0), 1 with `w`.
      mask: bool, broadcastable to (..., m, n); True = may attend. As in `additive_attention`, a key that
        no query may attend, its value, and the query of a row without a valid key contribute exactly
        nothing to outputs and gradients, whatever they hold (NaN, Inf, huge values).
      fully_masked: rows with no valid key: "zero", "uniform" or "nan" (see `masked_softmax`).
      return_weights: False returns None for the weights.

    Returns:
      (context (..., m, d_v), weights (..., m, n) or None) in the inputs' dtype, computed in float32
      (float64 for float64 inputs). No example, no query, d = 0 or d_v = 0 work (empty sums are 0).

    Raises:
      ValueError: an input is not a floating array or has a wrong shape (d_q != d_k without ``w``, ``w``
        not (d_q, d_k), leading dims that do not broadcast), ``mask`` is not a bool array broadcastable
        to (..., m, n), ``fully_masked`` is not a policy, or there is no key (n = 0).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> q, h = jnp.ones((1, 4)), jnp.ones((3, 4)).at[2].set(jnp.inf)  # key 2: padding
      >>> jax.jit(dot_product_attention)(q, h, mask=jnp.array([True, True, False]))[1]
      Array([[0.5, 0.5, 0. ]], dtype=float32)
    """
    _checks.check_fully_masked(fully_masked)
    values = keys if values is None else values
    batch = _validate(query, keys, values, mask, w)
    if scale is None:
        scale = 1.0 if w is not None else _default_scale(query.shape[-1])
    arrays = (query, keys, values) if w is None else (query, keys, values, w)
    dtype = accumulation_dtype(*arrays)
    query, keys, values = _checks.zero_masked_positions(query, keys, values, mask, batch, fully_masked)
    scores = _scores(query, keys, w, scale, dtype)
    context, weights = softmax_context(scores, mask, values.astype(dtype), fully_masked)
    out_dtype = jnp.result_type(*arrays)
    weights = weights.astype(out_dtype) if return_weights else None
    return context.astype(out_dtype), weights
