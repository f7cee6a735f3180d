"""Masked, numerically stable softmax with explicit handling of fully-masked rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attn_jax import _checks
from attn_jax.functional._dtypes import accumulation_dtype
from attn_jax.functional.context import attention_context


def masked_softmax(scores: jax.Array, mask: jax.Array | None = None, *, fully_masked: str = "zero"):
    """Softmax over the last axis, restricted to positions where ``mask`` is True.

    Computed in float32 (float64 for float64 scores; the row maximum is subtracted, so any finite scores
    are safe) and returned in the scores' dtype. Masked positions get exactly 0, and their scores,
    whatever they hold (NaN, +-Inf), take no part: the other weights and every gradient are as without
    them (theirs is exactly 0). A NaN or +-Inf score at a valid position makes its row NaN under every
    policy (it is never mistaken for a fully-masked row).

    Args:
      scores: (..., n) scores of any floating dtype, usually (..., m, n): one row per query.
      mask: None (every position valid) or a bool array broadcastable to ``scores``' shape; True = may
        attend.
      fully_masked: what a row with no valid position gets: ``"zero"`` (all zeros, finite gradients),
        ``"uniform"`` (1/n each) or ``"nan"``.

    Returns:
      The weights, of ``scores``' shape and dtype; each row with a valid position sums to 1.

    Raises:
      ValueError: ``scores`` is not a floating array of rank >= 1, ``mask`` is not a bool array (a 0/1 or
        additive float mask is ambiguous) or does not broadcast to ``scores``, or ``fully_masked`` is
        not one of the three policies.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> scores = jnp.array([[0.0, 0.0, 9.0], [1.0, 2.0, 3.0]])
      >>> mask = jnp.array([[True, True, False], [False, False, False]])  # row 1: no valid position
      >>> softmax = jax.jit(masked_softmax, static_argnames="fully_masked")
      >>> softmax(scores, mask)
      Array([[0.5, 0.5, 0. ],
             [0. , 0. , 0. ]], dtype=float32)
      >>> softmax(scores, mask, fully_masked="uniform")[1]
      Array([0.33333334, 0.33333334, 0.33333334], dtype=float32)
    """
    _checks.check_fully_masked(fully_masked)
    _checks.check_float("scores", scores)
    _checks.check_rank("scores", jnp.shape(scores), 1, "(..., n)")
    if mask is not None:
        _checks.check_bool_mask(mask)
        _checks.check_mask(jnp.shape(mask), jnp.shape(scores))
    weights = _masked_softmax_f32(scores.astype(accumulation_dtype(scores)), mask, fully_masked)
    return weights.astype(scores.dtype)


def _masked_softmax_f32(scores, mask, fully_masked: str):
    """Core of masked_softmax in the scores' (accumulation) dtype; arguments are assumed checked."""
    if mask is None:
        return jax.nn.softmax(scores, axis=-1)
    mask = jnp.broadcast_to(mask, scores.shape)
    row_max = jnp.max(jnp.where(mask, scores, -jnp.inf), axis=-1, keepdims=True, initial=-jnp.inf)
    # From the mask, not from isfinite(row_max): a NaN/Inf score must give NaN, not a "fully masked" row.
    row_valid = jnp.any(mask, axis=-1, keepdims=True)
    row_max = jax.lax.stop_gradient(jnp.where(row_valid, row_max, 0.0))
    # Masked entries are replaced before exp so neither value nor gradient can overflow.
    shifted = jnp.where(mask, scores - row_max, 0.0)
    unnormalised = jnp.where(mask, jnp.exp(shifted), 0.0)
    denom = jnp.sum(unnormalised, axis=-1, keepdims=True)
    weights = unnormalised / jnp.where(row_valid, denom, 1.0)
    return apply_fully_masked(weights, row_valid, fully_masked)


def softmax_context(scores, mask, values, fully_masked: str):
    """(context (..., m, d_v), weights (..., m, n)) of checked scores (..., m, n) and values (..., n, d_v).

    Under "nan" the context is computed from the "zero" weights and its fully-masked rows set to NaN
    afterwards, so rows a loss leaves out do not put NaN into the values' (or other rows') gradients.
    """
    inner = "zero" if fully_masked == "nan" else fully_masked
    weights = _masked_softmax_f32(scores, mask, inner)
    context = attention_context(weights, values)
    if fully_masked == "nan" and mask is not None:
        row_valid = jnp.any(jnp.broadcast_to(mask, scores.shape), axis=-1, keepdims=True)
        weights = apply_fully_masked(weights, row_valid, "nan")
        context = jnp.where(row_valid, context, jnp.asarray(jnp.nan, context.dtype))
    return context, weights


def apply_fully_masked(weights, row_valid, fully_masked: str):
    """Replace rows where `row_valid` (..., m, 1) is False according to `fully_masked`."""
    if fully_masked == "zero":
        return weights  # already exactly zero
    fill = 1.0 / weights.shape[-1] if fully_masked == "uniform" else jnp.nan
    return jnp.where(row_valid, weights, jnp.asarray(fill, weights.dtype))
