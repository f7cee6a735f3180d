"""Segmentation losses: per-pixel cross-entropy with an ignore index, optional soft Dice."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _check(logits: jnp.ndarray, labels: jnp.ndarray) -> None:
    if logits.ndim < 2 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            "logits must be (..., C) with labels (...) matching its leading dims; "
            f"got logits {logits.shape}, labels {labels.shape}"
        )


def segmentation_cross_entropy(
    logits: jnp.ndarray, labels: jnp.ndarray, ignore_index: int | None = 255
) -> jnp.ndarray:
    """Mean softmax cross-entropy over the pixels whose label is not ignore_index (0 if there are none).

    logits (b, h, w, C), labels int (b, h, w), each in [0, C) or equal to ignore_index.
    """
    _check(logits, labels)
    valid = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    per = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    return jnp.sum(jnp.where(valid, per, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def dice_loss(
    logits: jnp.ndarray, labels: jnp.ndarray, ignore_index: int | None = 255, smooth: float = 1.0
) -> jnp.ndarray:
    """Soft multi-class Dice loss, 1 - mean over classes of (2|P∩G| + s) / (|P| + |G| + s).

    Softmax probabilities P and one-hot labels G are summed over all non-ignored pixels of the batch.
    """
    _check(logits, labels)
    c = logits.shape[-1]
    valid = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * valid[..., None]
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), c) * valid[..., None]
    axes = tuple(range(logits.ndim - 1))
    inter = jnp.sum(probs * onehot, axis=axes)
    denom = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
    return 1.0 - jnp.mean((2.0 * inter + smooth) / (denom + smooth))


def segmentation_loss(
    logits: jnp.ndarray, labels: jnp.ndarray, ignore_index: int | None = 255, dice_weight: float = 0.0
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Cross-entropy (+ dice_weight * Dice when dice_weight > 0) -> (total, {"ce_loss", "dice_loss"})."""
    ce = segmentation_cross_entropy(logits, labels, ignore_index)
    aux = {"ce_loss": ce}
    total = ce
    if dice_weight > 0:
        dice = dice_loss(logits, labels, ignore_index)
        aux["dice_loss"] = dice
        total = ce + dice_weight * dice
    return total, aux
