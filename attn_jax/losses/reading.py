"""Losses of a reading model (`attn_jax.models.AttentionReader`): token cross-entropy over the valid steps
and Show, Attend and Tell's doubly stochastic attention regulariser.

Pure jnp functions (jittable), no model code. Shapes: logits (B, T, V), target tokens (B, T), a step mask
(B, T) (True where the step counts: the digits and the END step), attention weights alpha (B, T, n).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _check_steps(name: str, values, mask, ndim: int) -> None:
    if values.ndim != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D (B, T{', ...' if ndim > 2 else ''}); got shape {values.shape}"
        )
    if mask is not None and jnp.shape(mask) != values.shape[:2]:
        raise ValueError(f"mask must have shape (B, T) = {values.shape[:2]}; got shape {jnp.shape(mask)}")


def steps_up_to_end(tokens: jax.Array, end_token: int) -> jax.Array:
    """The steps that count in a token sequence: those up to and including the first END.

    Args:
      tokens: int (B, T), e.g. cluttered_digits' ``sequence`` (digits, END, PAD).
      end_token: the END token.

    Returns:
      bool (B, T). A row without END counts every step.

    Examples:
      >>> import jax.numpy as jnp
      >>> steps_up_to_end(jnp.array([[3, 0, 10, 11], [7, 10, 10, 11]]), end_token=10).astype(int)
      Array([[1, 1, 1, 0],
             [1, 1, 0, 0]], dtype=int32)
    """
    ended = jnp.cumsum(jnp.asarray(tokens) == end_token, axis=-1)
    before = jnp.concatenate([jnp.zeros_like(ended[..., :1]), ended[..., :-1]], axis=-1)
    return before == 0


def sequence_cross_entropy_sums(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, *, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Summed softmax cross-entropy over the steps where `mask` holds, and their number.

    The building block of `sequence_cross_entropy` for a data-parallel loss: sums add over devices.

    Args:
      logits: float (B, T, V).
      targets: int (B, T); read only where ``mask`` holds (PAD may lie outside [0, V) elsewhere).
      mask: bool (B, T), the steps that count.
      label_smoothing: alpha in [0, 1): each step's target is ``(1 - alpha) * one_hot + alpha / V``
        (``optax.smooth_labels``); 0 is the plain cross-entropy of the target token.

    Returns:
      (float32 sum of the counted steps' losses, float32 number of counted steps).

    Raises:
      ValueError: logits not (B, T, V), targets / mask not (B, T), or label_smoothing outside [0, 1).

    Examples:
      >>> import jax.numpy as jnp
      >>> logits = jnp.zeros((1, 3, 4))  # uniform: log 4 per step
      >>> targets, mask = jnp.array([[1, 2, 9]]), jnp.array([[True, True, False]])
      >>> total, count = sequence_cross_entropy_sums(logits, targets, mask)
      >>> round(float(total), 4), float(count)
      (2.7726, 2.0)
    """
    _check_steps("logits", logits, mask, 3)
    if jnp.shape(targets) != logits.shape[:2]:
        raise ValueError(
            f"targets must have shape (B, T) = {logits.shape[:2]}; got shape {jnp.shape(targets)}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing!r}")
    mask = jnp.asarray(mask, bool)
    safe = jnp.where(mask, targets, 0)
    if label_smoothing:
        soft = optax.smooth_labels(jax.nn.one_hot(safe, logits.shape[-1]), label_smoothing)
        losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), soft)
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(mask, dtype=jnp.float32)


def sequence_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the counted steps of a batch of token sequences.

    Args:
      logits: float (B, T, V).
      targets: int (B, T); read only where ``mask`` holds.
      mask: bool (B, T), the steps that count (e.g. `steps_up_to_end` of the targets).

    Returns:
      float32 scalar: the sum over counted steps / their number (0 when no step counts).

    Raises:
      ValueError: logits not (B, T, V), or targets / mask not (B, T).

    Examples:
      >>> import jax.numpy as jnp
      >>> targets = jnp.array([[1, 2, 3]])
      >>> logits = 5.0 * jax.nn.one_hot(targets, 4)
      >>> round(float(sequence_cross_entropy(logits, targets, steps_up_to_end(targets, 3))), 4)
      0.02
    """
    total, count = sequence_cross_entropy_sums(logits, targets, mask)
    return total / jnp.maximum(count, 1.0)


def doubly_stochastic_penalty(
    attention: jax.Array, mask: jax.Array | None = None, *, weight: float = 1.0, target: float = 1.0
) -> jax.Array:
    """Doubly stochastic attention regularisation (Xu et al. 2015): lambda sum_i (tau - sum_t alpha_ti)^2.

    Each step's weights sum to 1 over the positions; the penalty asks the weights of each position to sum
    to ``target`` (tau) over the steps, so that the decoder looks everywhere once. Summed over the n
    positions, averaged over the batch. With T steps and n positions the sums over positions are T, so a
    tau near T / n asks for an even spread, and tau = 1 (the paper's) for each position to be read once.

    Args:
      attention: alpha, float (B, T, n).
      mask: bool (B, T), the steps that count (None: all); the others add nothing to the sums over t.
      weight: lambda.
      target: tau.

    Returns:
      float32 scalar: weight * mean_b sum_i (target - sum_t mask_bt alpha_bti)^2.

    Raises:
      ValueError: attention not (B, T, n), or mask not (B, T).

    Examples:
      >>> import jax.numpy as jnp
      >>> alpha = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])  # two steps, each on its own position
      >>> first_step_only = jnp.array([[True, False]])
      >>> float(doubly_stochastic_penalty(alpha)), float(doubly_stochastic_penalty(alpha, first_step_only))
      (0.0, 1.0)
    """
    _check_steps("attention", attention, mask, 3)
    alpha = attention.astype(jnp.float32)
    if mask is not None:
        alpha = jnp.where(jnp.asarray(mask, bool)[..., None], alpha, 0.0)
    per_example = jnp.sum((target - jnp.sum(alpha, axis=1)) ** 2, axis=-1)
    return weight * jnp.mean(per_example)
