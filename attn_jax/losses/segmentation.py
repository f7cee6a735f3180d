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


def cross_entropy_sums(
    logits: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Summed softmax cross-entropy over the pixels where `valid` holds, and their number.

    The building block of segmentation_cross_entropy for a data-parallel loss: sums add over devices.

    Args:
      logits: (b, h, w, C) (any leading dims).
      labels: int (b, h, w); read only where `valid`.
      valid: bool (b, h, w), the pixels that count.

    Returns:
      (float32 sum of the valid pixels' losses, int number of valid pixels).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> logits, labels = jnp.zeros((1, 1, 2, 4)), jnp.array([[[1, 255]]])  # the second pixel: ignored
      >>> loss_sum, pixels = jax.jit(cross_entropy_sums)(logits, labels, labels != 255)
      >>> round(float(loss_sum), 4), int(pixels)  # log(4) for the one counted pixel
      (1.3863, 1)
    """
    per = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.where(valid, labels, 0)
    )
    return jnp.sum(jnp.where(valid, per, 0.0)), jnp.sum(valid)


def dice_sums(
    logits: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-class soft Dice sums over the pixels where `valid` holds: I_c = sum P·G, D_c = sum P + sum G.

    Softmax probabilities P and one-hot labels G; sums add over batches and devices, and
    dice_from_sums turns them into the loss.

    Args:
      logits: (b, h, w, C) (any leading dims).
      labels: int (b, h, w); read only where `valid`.
      valid: bool (b, h, w), the pixels that count.

    Returns:
      (I, D): float32 (C,) each.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> logits = jnp.array([[[[9.0, -9.0], [-9.0, 9.0]]]])  # (1, 1, 2, C = 2), confident and right
      >>> labels = jnp.array([[[0, 1]]])
      >>> inter, denom = jax.jit(dice_sums)(logits, labels, labels != 255)
      >>> inter.round(3).tolist(), denom.round(3).tolist(), round(float(dice_from_sums(inter, denom)), 3)
      ([1.0, 1.0], [2.0, 2.0], 0.0)
    """
    c = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * valid[..., None]
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), c) * valid[..., None]
    axes = tuple(range(logits.ndim - 1))
    return jnp.sum(probs * onehot, axis=axes), jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)


def dice_from_sums(inter, denom, smooth: float = 1.0):
    """Soft Dice loss from per-class sums (dice_sums): 1 - mean_c (2 I_c + s) / (D_c + s).

    Args:
      inter, denom: (C,) sums, JAX or NumPy arrays (NumPy ones are computed in their own precision, e.g.
        float64 host metrics).
      smooth: s, added to numerator and denominator.

    Returns:
      Scalar loss of the arrays' kind.

    Examples:
      >>> import numpy as np
      >>> float(dice_from_sums(np.array([1.0, 0.0]), np.array([2.0, 1.0]), smooth=0.0))  # 1 - (1 + 0) / 2
      0.5
    """
    return 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()


def segmentation_cross_entropy(
    logits: jnp.ndarray, labels: jnp.ndarray, ignore_index: int | None = 255
) -> jnp.ndarray:
    """Mean softmax cross-entropy over the pixels whose label is not ``ignore_index``.

    Args:
      logits: (b, h, w, C) per-pixel class logits (any leading dims), computed in float32.
      labels: int (b, h, w) (``logits``' leading dims), each in [0, C) or equal to ``ignore_index``.
      ignore_index: label of pixels that add nothing (None: every pixel counts).

    Returns:
      Scalar float32 loss: the mean over counted pixels, 0 if there are none; NaN under jit if a label
      lies outside [0, C) and is not ``ignore_index``.

    Raises:
      ValueError: ``logits`` is not (..., C) with ``labels`` matching its leading dims, or (concrete
        labels) a label lies outside [0, C) and is not ``ignore_index``, naming the value and its index.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> logits = jnp.zeros((1, 1, 2, 4))  # uniform over C = 4 classes: log(4) per pixel
      >>> labels = jnp.array([[[1, 255]]])  # the second pixel is ignored
      >>> round(float(jax.jit(segmentation_cross_entropy)(logits, labels)), 4)
      1.3863
    """
    _check(logits, labels, ignore_index)
    valid, poison = _counted_and_poison(labels, logits.shape[-1], ignore_index)
    loss_sum, pixels = cross_entropy_sums(logits, labels, valid)
    return loss_sum / jnp.maximum(pixels, 1) + poison


def dice_loss(
    logits: jnp.ndarray, labels: jnp.ndarray, ignore_index: int | None = 255, smooth: float = 1.0
) -> jnp.ndarray:
    """Soft multi-class Dice loss: 1 - mean over classes c of (2 I_c + s) / (P_c + G_c + s).

    With softmax probabilities p and one-hot labels g over the counted pixels of the whole batch,
    I_c = sum p_c g_c, P_c = sum p_c and G_c = sum g_c.

    Args:
      logits: (b, h, w, C) per-pixel class logits (any leading dims), computed in float32.
      labels: int (b, h, w) (``logits``' leading dims), each in [0, C) or equal to ``ignore_index``.
      ignore_index: label of pixels that add nothing (None: every pixel counts).
      smooth: s, added to numerator and denominator.

    Returns:
      Scalar float32 loss, in [0, 1) for ``smooth`` > 0; NaN under jit if a label lies outside [0, C) and
      is not ``ignore_index``.

    Raises:
      ValueError: ``logits`` is not (..., C) with ``labels`` matching its leading dims, or (concrete
        labels) a label lies outside [0, C) and is not ``ignore_index``, naming the value and its index.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> logits = jnp.array([[[[9.0, -9.0], [-9.0, 9.0]]]])  # (1, 1, 2, C = 2), confident
      >>> labels = jnp.array([[[0, 1]]])
      >>> dice = jax.jit(dice_loss)
      >>> round(float(dice(logits, labels)), 3), round(float(dice(logits, 1 - labels)), 3)  # right, wrong
      (0.0, 0.667)
    """
    _check(logits, labels, ignore_index)
    valid, poison = _counted_and_poison(labels, logits.shape[-1], ignore_index)
    return dice_from_sums(*dice_sums(logits, labels, valid), smooth) + poison


def segmentation_loss(
    logits: jnp.ndarray, labels: jnp.ndarray, ignore_index: int | None = 255, dice_weight: float = 0.0
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """The segmentation training loss: cross-entropy, plus ``dice_weight`` times the Dice loss.

    Args:
      logits: (b, h, w, C) per-pixel class logits (any leading dims).
      labels: int (b, h, w), each in [0, C) or equal to ``ignore_index``.
      ignore_index: label of pixels that add nothing (None: every pixel counts).
      dice_weight: weight of `dice_loss` in the total; 0 (default) leaves Dice out.

    Returns:
      (total, aux): the scalar float32 total and {"ce_loss": `segmentation_cross_entropy`} with
      "dice_loss" (`dice_loss`) added when ``dice_weight`` > 0.

    Raises:
      ValueError: as `segmentation_cross_entropy`.

    Examples:
      >>> import functools, jax, jax.numpy as jnp
      >>> loss_fn = jax.jit(functools.partial(segmentation_loss, dice_weight=0.5))
      >>> total, aux = loss_fn(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 2), int))
      >>> sorted(aux), bool(total == aux["ce_loss"] + 0.5 * aux["dice_loss"])
      (['ce_loss', 'dice_loss'], True)
    """
    ce = segmentation_cross_entropy(logits, labels, ignore_index)
    aux = {"ce_loss": ce}
    total = ce
    if dice_weight > 0:
        dice = dice_loss(logits, labels, ignore_index)
        aux["dice_loss"] = dice
        total = ce + dice_weight * dice
    return total, aux
