"""Optimizer factory: AdamW or SGD on a warmup-cosine schedule, global-norm clipping, apply_if_finite."""

from __future__ import annotations

import optax

OPTIMIZERS = ("adamw", "sgd")


def make_schedule(lr: float, total_steps: int, warmup_steps: int = 0, end_factor: float = 0.0):
    """Linear warmup from 0 to `lr` over warmup_steps, then cosine decay to lr * end_factor at total_steps."""
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got {total_steps=}, {warmup_steps=}"
        )
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(lr, total_steps, alpha=end_factor)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps, end_value=lr * end_factor)


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
    """`name` in OPTIMIZERS. clip_norm: clip_by_global_norm first. skip_nonfinite > 0 wraps the whole
    transformation in optax.apply_if_finite (updates with NaN/Inf gradients are skipped, at most that many
    in a row). end_factor: the schedule ends at lr * end_factor. Weight decay for "sgd" is added to the
    gradient (L2), for "adamw" it is decoupled."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {list(OPTIMIZERS)}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
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
