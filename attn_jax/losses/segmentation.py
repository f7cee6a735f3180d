"""Segmentation losses: per-pixel cross-entropy with an ignore index, optional soft Dice.

Labels are in [0, C) or equal to `ignore_index` (a target-only label: those pixels add nothing). With
concrete labels (NumPy, or JAX arrays outside jit) any other value is a ValueError naming it. Under jit the
labels cannot be checked; there a label outside [0, C) that is not `ignore_index` makes the loss NaN, so a
training loop's non-finite-loss check stops on it instead of silently training toward a wrong class (a
negative label would otherwise wrap around to class C - 1, and one-hot encode to zeros in Dice).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _check(logits: jnp.ndarray, labels: jnp.ndarray, ignore_index: int | None) -> None:
    if logits.ndim < 2 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            "logits must be (..., C) with labels (...) matching its leading dims; "
            f"got logits {logits.shape}, labels {labels.shape}"
        )
    if isinstance(labels, jax.core.Tracer):
        return
    labels, c = np.asarray(labels), logits.shape[-1]
    bad = ~((labels >= 0) & (labels < c))
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        values = labels[bad]
        ignore = "" if ignore_index is None else f" and not ignore_index={ignore_index}"
        raise ValueError(
            f"labels holds {values[0].item()!r} at index {tuple(int(i) for i in np.argwhere(bad)[0])}, "
            f"outside [0, {c}){ignore}: {values.size} such pixel(s), values {np.unique(values)[:5].tolist()}"
        )


def _counted_and_poison(labels: jnp.ndarray, c: int, ignore_index: int | None):
    """(pixels that count, NaN if a counted label lies outside [0, C) else 0) for traced labels."""
    valid = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    out_of_range = valid & ~((labels >= 0) & (labels < c))
    return valid, jnp.where(jnp.any(out_of_range), jnp.nan, 0.0)


def segmentation_cross_entropy(
    logits: jnp.ndarray, labels: jnp.ndarray, ignore_index: int | None = 255
) -> jnp.ndarray:
    """Mean softmax cross-entropy over the pixels whose label is not ignore_index (0 if there are none).

    Args:
      logits: (b, h, w, C) (any leading dims).
      labels: int (b, h, w), each in [0, C) or equal to ignore_index.
      ignore_index: label of pixels that add nothing (None: every pixel counts).

    Returns:
      Scalar float32 loss; NaN under jit if a label lies outside [0, C) and is not ignore_index.

    Raises:
      ValueError: for mismatched shapes, or (concrete labels) a label outside [0, C), naming the value.
    """
    _check(logits, labels, ignore_index)
    valid, poison = _counted_and_poison(labels, logits.shape[-1], ignore_index)
    safe = jnp.where(valid, labels, 0)
    per = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    return jnp.sum(jnp.where(valid, per, 0.0)) / jnp.maximum(jnp.sum(valid), 1) + poison


def dice_loss(
    logits: jnp.ndarray, labels: jnp.ndarray, ignore_index: int | None = 255, smooth: float = 1.0
) -> jnp.ndarray:
    """Soft multi-class Dice loss, 1 - mean over classes of (2|P∩G| + s) / (|P| + |G| + s).

    Softmax probabilities P and one-hot labels G are summed over all non-ignored pixels of the batch.

    Args:
      logits: (b, h, w, C) (any leading dims).
      labels: int (b, h, w), each in [0, C) or equal to ignore_index.
      ignore_index: label of pixels that add nothing (None: every pixel counts).
      smooth: s, added to numerator and denominator.

    Returns:
      Scalar float32 loss; NaN under jit if a label lies outside [0, C) and is not ignore_index.

    Raises:
      ValueError: for mismatched shapes, or (concrete labels) a label outside [0, C), naming the value.
    """
    _check(logits, labels, ignore_index)
    c = logits.shape[-1]
    valid, poison = _counted_and_poison(labels, c, ignore_index)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * valid[..., None]
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), c) * valid[..., None]
    axes = tuple(range(logits.ndim - 1))
    inter = jnp.sum(probs * onehot, axis=axes)
    denom = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
    return 1.0 - jnp.mean((2.0 * inter + smooth) / (denom + smooth)) + poison


def segmentation_loss(
    logits: jnp.ndarray, labels: jnp.ndarray, ignore_index: int | None = 255, dice_weight: float = 0.0
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Cross-entropy (+ dice_weight * Dice when dice_weight > 0) -> (total, {"ce_loss", "dice_loss"}).

    Raises:
      ValueError: as segmentation_cross_entropy.
    """
    ce = segmentation_cross_entropy(logits, labels, ignore_index)
    aux = {"ce_loss": ce}
    total = ce
    if dice_weight > 0:
        dice = dice_loss(logits, labels, ignore_index)
        aux["dice_loss"] = dice
        total = ce + dice_weight * dice
    return total, aux
