"""Optimizer factory: AdamW or SGD on a warmup-cosine schedule, global-norm clipping, apply_if_finite."""

from __future__ import annotations

import math
import numbers

import optax

OPTIMIZERS = ("adamw", "sgd")


def make_schedule(lr: float, total_steps: int, warmup_steps: int = 0, end_factor: float = 0.0):
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * end_factor`` at
    ``total_steps``.

    The schedule is indexed by the optimizer's update count (0 for the first update), so with a warmup the
    first update uses learning rate 0 and update ``warmup_steps`` is the first at the full ``lr``.

    Args:
      lr: peak learning rate, > 0.
      total_steps: length of the whole schedule (warmup included), >= 1.
      warmup_steps: length of the linear warmup, ``0 <= warmup_steps < total_steps`` (the decay needs a
        step).
      end_factor: the schedule ends (and stays) at ``lr * end_factor``, >= 0.

    Returns:
      An optax schedule, a function from the update count (an int or a scalar array) to the learning
      rate.

    Raises:
      ValueError: naming the argument and its value when one is out of range.

    Examples:
      >>> schedule = make_schedule(1e-3, total_steps=110, warmup_steps=10, end_factor=0.1)
      >>> [round(float(schedule(s)), 7) for s in (0, 5, 10, 60, 110)]
      [0.0, 0.0005, 0.001, 0.00055, 0.0001]
    """
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got lr={lr!r}")
    if not isinstance(total_steps, numbers.Integral) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got total_steps={total_steps!r}")
    if not isinstance(warmup_steps, numbers.Integral) or not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be an integer in [0, total_steps={total_steps}) (the cosine decay needs at "
            f"least one step), got warmup_steps={warmup_steps!r}"
        )
    if not (isinstance(end_factor, numbers.Real) and math.isfinite(end_factor) and end_factor >= 0):
        raise ValueError(f"end_factor must be a finite number >= 0, got end_factor={end_factor!r}")
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(lr, total_steps, alpha=end_factor)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps, end_value=lr * end_factor)


def _non_negative(name: str, value) -> None:
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")


def make_optimizer(
    name: str,
    *,
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    clip_norm: float | None = None,
    skip_nonfinite: int = 0,
    end_factor: float = 0.0,
) -> optax.GradientTransformation:
    """The optimizer of a training run: ``name`` on the :func:`attn_jax.train.make_schedule` learning rate.

    Order of the transformations: ``optax.clip_by_global_norm(clip_norm)`` first, then (sgd) the L2
    weight-decay term added to the gradient and SGD with momentum, or (adamw) AdamW with decoupled weight
    decay; the whole chain wrapped in ``optax.apply_if_finite`` when ``skip_nonfinite > 0``.

    Args:
      name: ``"adamw"`` or ``"sgd"``.
      lr: peak learning rate, > 0 (see :func:`attn_jax.train.make_schedule`).
      total_steps: length of the schedule, >= 1.
      warmup_steps: length of the linear warmup, ``0 <= warmup_steps < total_steps``.
      weight_decay: for sgd, added to the gradient as ``weight_decay * param`` (after clipping); for adamw,
        AdamW's decoupled weight decay. >= 0.
      momentum: sgd only; 0 or None for plain SGD.
      clip_norm: clip the gradient's global norm to this; None or 0 for no clipping.
      skip_nonfinite: when > 0, updates whose gradients hold NaN or Inf are skipped (parameters and
        optimizer state unchanged), at most that many in a row; 0 for no skipping.
      end_factor: the schedule ends at ``lr * end_factor``, >= 0.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: naming the argument and its value for an unknown optimizer or an out-of-range number.

    Examples:
      >>> tx = make_optimizer("adamw", lr=1e-3, total_steps=1000, warmup_steps=100, clip_norm=1.0)
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {list(OPTIMIZERS)}")
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got lr={lr!r}")
    _non_negative("weight_decay", weight_decay)
    _non_negative("momentum", momentum or 0.0)
    _non_negative("clip_norm", clip_norm or 0.0)
    if not isinstance(skip_nonfinite, numbers.Integral) or skip_nonfinite < 0:
        raise ValueError(f"skip_nonfinite must be an integer >= 0, got skip_nonfinite={skip_nonfinite!r}")
    schedule = make_schedule(lr, total_steps, warmup_steps, end_factor)
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    if name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=weight_decay))
    else:
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay))
        parts.append(optax.sgd(schedule, momentum=momentum or None))
    tx = optax.chain(*parts)
    if skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=skip_nonfinite)
    return tx
