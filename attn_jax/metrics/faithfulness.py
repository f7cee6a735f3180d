"""Faithfulness of saliency maps: does the model use the pixels its map highlights?

Causal tests of a map, each taking a `predict(images) -> logits` callable (no model code is imported here),
images (B, H, W, C) float, saliency maps (B, H, W) at image resolution and integer labels (B,), and
returning per-image values:

deletion / insertion (Petsiuk et al. 2018, RISE): pixels are ordered by saliency, descending, ties broken by
    flat pixel index (row-major, a stable sort). At step s = 0..S the first k_s = round(s * H * W / S)
    pixels (Python's `round`: halves go to the even integer) are replaced by the baseline (deletion) or
    copied from the image onto the baseline (insertion), in every channel. The curve is the softmax
    probability of the label at each step; the AUC is the trapezoid rule over s / S in [0, 1]. A faithful
    map has a LOW deletion AUC (the prediction collapses when its top pixels go) and a HIGH insertion AUC.
    Baselines: "zero"; "mean" (each image's per-channel mean); "blur" (a Gaussian blur of the image with
    standard deviation `blur_sigma` pixels, truncated at 4 sigma, borders reflected as in
    `scipy.ndimage.gaussian_filter(mode="reflect")`, applied as one matrix product per spatial axis);
    "road", ROAD's noisy linear imputation (Rong et al. 2022, `noisy_linear_imputation`): at every step
    the removed pixels are re-imputed from the pixels still present, each the weighted mean of its 8
    neighbours (direct 1/6, diagonal 1/12), plus Gaussian noise of standard deviation `road_noise` drawn
    from `jax.random.fold_in(key, s)` at step s.
    All S + 1 steps run in one compiled program: `chunk_size` steps at a time are built side by side and
    `predict` sees them as one batch of chunk_size * B images; `lax.map` runs the chunks in turn, so the
    memory grows with chunk_size, not with S.
    The `*_by_score` variants track any per-image score instead of a softmax probability: `score(images,
    targets) -> (N,)` with `targets` a pytree of per-image arrays (e.g. a detector's true boxes), so the
    same curves, Average Drop and Increase in Confidence score detection and segmentation maps.
Average Drop / Increase in Confidence (Chattopadhyay et al. 2018, Grad-CAM++): each map is min-max normalised
    to [0, 1] (a constant map becomes all zeros, as in pytorch-grad-cam) and multiplied into every channel of
    its image. With Y the label's softmax probability on the image and O on the masked image, the per-image
    drop is max(0, Y - O) / Y * 100 and the increase is 1.0 when O > Y (else 0.0). The papers' scores are
    the means over a data set: Average Drop = mean of `average_drop`, Increase in Confidence = mean of
    `increase_in_confidence` (times 100 for a percentage).
randomization check (Adebayo et al. 2018, sanity checks): cascading re-initialisation of the parameters'
    layers in the order given (the output layer first) and the Spearman rank correlation between each
    image's map before and after each stage. A map that does not change when the weights it should
    depend on are destroyed (correlation near 1) fails the check.

Every argument error is a one-line ValueError raised before anything is compiled. `predict` is a static
argument of the compiled programs: pass the same object for every batch to reuse the compiled program.
Parameters captured by `predict` (e.g. `functools.partial(model.apply, variables)`) are compiled in as
constants; to pass them as arguments instead, call these functions inside your own `jax.jit` whose
arguments are the parameters (see the example of `deletion_curve`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BASELINES = ("zero", "mean", "blur", "road")
ROAD_NOISE = 0.01  # ROAD's default noise (Rong et al. 2022), in the images' units
ROAD_ITERATIONS = 256
# ROAD's neighbour weights (row offset, column offset) -> weight: direct 1/6, diagonal 1/12 (sum 1)
ROAD_WEIGHTS = {
    (-1, -1): 1 / 12,
    (-1, 0): 1 / 6,
    (-1, 1): 1 / 12,
    (0, -1): 1 / 6,
    (0, 1): 1 / 6,
    (1, -1): 1 / 12,
    (1, 0): 1 / 6,
    (1, 1): 1 / 12,
}

__all__ = [
    "BASELINES",
    "ROAD_ITERATIONS",
    "ROAD_NOISE",
    "ROAD_WEIGHTS",
    "average_drop",
    "average_drop_by_score",
    "curve_auc",
    "deletion_auc",
    "deletion_curve",
    "deletion_curve_by_score",
    "increase_in_confidence",
    "increase_in_confidence_by_score",
    "insertion_auc",
    "insertion_curve",
    "insertion_curve_by_score",
    "noisy_linear_imputation",
    "randomization_check",
    "spearman",
    "step_counts",
]


# --------------------------------------------------------------------------------------------- checks


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_array(name: str, x) -> None:
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise ValueError(f"{name} must be an array (jax.Array or np.ndarray); got {type(x).__name__}")


def _check_images_maps(images, maps) -> None:
    _check_array("images", images)
    _check_array("maps", maps)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C); got shape {tuple(images.shape)}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must have a floating dtype; got {images.dtype}")
    if tuple(maps.shape) != tuple(images.shape[:3]):
        raise ValueError(
            f"maps must be (B, H, W) = {tuple(images.shape[:3])} to match images {tuple(images.shape)}; "
            f"got shape {tuple(maps.shape)}"
        )
    if not (jnp.issubdtype(maps.dtype, jnp.floating) or jnp.issubdtype(maps.dtype, jnp.integer)):
        raise ValueError(f"maps must have a real dtype; got {maps.dtype}")
    if images.shape[1] * images.shape[2] == 0:
        raise ValueError(f"images have no pixels: shape {tuple(images.shape)}")


def _check_inputs(predict, images, maps, labels) -> None:
    if not callable(predict):
        raise ValueError(f"predict must be a callable images -> logits; got {type(predict).__name__}")
    _check_array("labels", labels)
    _check_images_maps(images, maps)
    if tuple(labels.shape) != (images.shape[0],):
        raise ValueError(f"labels must be (B,) = ({images.shape[0]},); got shape {tuple(labels.shape)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must have an integer dtype; got {labels.dtype}")


def _check_predict_output(predict, images, labels) -> None:
    """Abstract evaluation of predict (no compilation): logits must be (B, K); concrete labels in [0, K)."""
    out = jax.eval_shape(predict, jax.ShapeDtypeStruct(images.shape, images.dtype))
    b = images.shape[0]
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != b:
        shape = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"predict must map images (B, H, W, C) to logits (B, K) with B = {b}; got {shape}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"predict must return floating logits; got dtype {out.dtype}")
    if not isinstance(labels, jax.core.Tracer):
        lab = np.asarray(labels)
        bad = (lab < 0) | (lab >= out.shape[1])
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"labels must be in [0, {out.shape[1]}) (predict's K); labels[{i}] = {lab[i]}")


def _check_score_inputs(score, images, maps, targets) -> None:
    """score(images, targets) -> (B,) floating, targets a pytree of arrays with leading axis B."""
    if not callable(score):
        raise ValueError(f"score must be a callable (images, targets) -> (N,); got {type(score).__name__}")
    _check_images_maps(images, maps)
    b = images.shape[0]
    leaves = jax.tree_util.tree_leaves(targets)
    for leaf in leaves:
        _check_array("every leaf of targets", leaf)
        if leaf.ndim < 1 or leaf.shape[0] != b:
            raise ValueError(
                f"every leaf of targets must have a leading axis B = {b}; got shape {leaf.shape}"
            )
    spec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), targets)
    out = jax.eval_shape(score, jax.ShapeDtypeStruct(images.shape, images.dtype), spec)
    if not hasattr(out, "shape") or tuple(out.shape) != (b,) or not jnp.issubdtype(out.dtype, jnp.floating):
        got = f"{tuple(out.shape)} {out.dtype}" if hasattr(out, "shape") else type(out).__name__
        raise ValueError(
            f"score must map images (B, H, W, C) and targets to floating (B,) = ({b},); got {got}"
        )


def _is_key(key) -> bool:
    if not (hasattr(key, "shape") and hasattr(key, "dtype")):
        return False
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.shape == ()
    return key.dtype == jnp.uint32 and tuple(key.shape) == (2,)  # a raw jax.random.PRNGKey


def _check_road_args(key, road_noise, road_iterations) -> None:
    if key is not None and not _is_key(key):
        shape = getattr(key, "shape", None)
        raise ValueError(
            f"key must be a single JAX PRNG key (jax.random.key) or None; got {type(key).__name__} "
            f"of shape {shape}"
        )
    if not isinstance(road_noise, numbers.Real) or isinstance(road_noise, bool) or not road_noise >= 0:
        raise ValueError(f"road_noise must be a number >= 0; got {road_noise!r}")
    if not _is_int(road_iterations) or road_iterations < 1:
        raise ValueError(f"road_iterations must be an integer >= 1; got {road_iterations!r}")


def _check_curve_args(steps, baseline, blur_sigma, chunk_size, key, road_noise, road_iterations) -> None:
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}; got {baseline!r}")
    if not isinstance(blur_sigma, numbers.Real) or isinstance(blur_sigma, bool) or not blur_sigma > 0:
        raise ValueError(f"blur_sigma must be a number > 0; got {blur_sigma!r}")
    if not _is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
    _check_road_args(key, road_noise, road_iterations)


# ------------------------------------------------------------------------------------------ helpers


def step_counts(steps: int, num_pixels: int) -> np.ndarray:
    """Pixels perturbed at each step s = 0..steps: round(s * num_pixels / steps), exactly.

    Args:
      steps: S >= 1.
      num_pixels: H * W.

    Returns:
      (S + 1,) int64 NumPy array from 0 to num_pixels; halves round to the even integer (Python's `round`).

    Examples:
      >>> step_counts(4, 10).tolist()
      [0, 2, 5, 8, 10]
    """
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    if not _is_int(num_pixels) or num_pixels < 1:
        raise ValueError(f"num_pixels must be an integer >= 1; got {num_pixels!r}")
    return np.array([round(Fraction(s * num_pixels, steps)) for s in range(steps + 1)], np.int64)


def curve_auc(curves: jax.Array) -> jax.Array:
    """Trapezoid-rule area under curves sampled at s / S, s = 0..S (the last axis), over [0, 1].

    Args:
      curves: (..., S + 1) values, S >= 1, e.g. from `deletion_curve` (or their mean over images).

    Returns:
      (...) areas.

    Examples:
      >>> float(curve_auc(jnp.array([1.0, 0.5, 0.0])))
      0.5
    """
    if curves.ndim < 1 or curves.shape[-1] < 2:
        raise ValueError(f"curves must have S + 1 >= 2 samples on the last axis; got shape {curves.shape}")
    s = curves.shape[-1] - 1
    return (jnp.sum(curves, axis=-1) - 0.5 * (curves[..., 0] + curves[..., -1])) / s


@functools.lru_cache(maxsize=64)
def _reflect_blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix M with M @ v = 1-D Gaussian blur of v, scipy's 'reflect' borders, truncate 4."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (taps / sigma) ** 2)
    w /= w.sum()
    m = np.zeros((n, n))
    for i in range(n):
        j = np.mod(i + taps, 2 * n)  # reflect (d c b a | a b c d | d c b a), period 2n
        j = np.where(j >= n, 2 * n - 1 - j, j)
        np.add.at(m[i], j, w)
    return m


def _blur(images: jax.Array, sigma: float) -> jax.Array:
    _, h, w, _ = images.shape
    mh = jnp.asarray(_reflect_blur_matrix(h, float(sigma)), jnp.float32)
    mw = jnp.asarray(_reflect_blur_matrix(w, float(sigma)), jnp.float32)
    x = images.astype(jnp.float32)
    hi = lax.Precision.HIGHEST
    x = jnp.einsum("ih,bhwc->biwc", mh, x, precision=hi)
    x = jnp.einsum("jw,biwc->bijc", mw, x, precision=hi)
    return x.astype(images.dtype)


def _baseline(images: jax.Array, baseline: str, blur_sigma: float) -> jax.Array:
    if baseline == "zero":
        return jnp.zeros_like(images)
    if baseline == "mean":
        mean = jnp.mean(images.astype(jnp.float32), axis=(1, 2), keepdims=True)
        return jnp.broadcast_to(mean.astype(images.dtype), images.shape)
    return _blur(images, blur_sigma)


def _label_prob(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax probability (float32) of labels (...,) under logits (..., K)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.exp(jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0])


@dataclasses.dataclass(frozen=True)
class _LabelProbability:
    """score(images, labels): the labels' softmax probabilities under predict's logits. Frozen, so two
    wrappers of the same predict are equal and share the compiled programs (a static argument)."""

    predict: Callable

    def __call__(self, images, labels):
        return _label_prob(self.predict(images), labels)


def _pixel_ranks(maps: jax.Array) -> jax.Array:
    """(B, H*W) position of each pixel in the descending saliency order (ties: lower flat index first)."""
    b, h, w = maps.shape
    flat = maps.reshape(b, h * w).astype(jnp.float32)
    order = jnp.argsort(-flat, axis=1, stable=True)  # XLA's sort ties -0.0 with 0.0, as NumPy's
    positions = jnp.broadcast_to(jnp.arange(h * w, dtype=jnp.int32), (b, h * w))
    return jnp.zeros((b, h * w), jnp.int32).at[jnp.arange(b)[:, None], order].set(positions)


# ------------------------------------------------------------------------- ROAD's linear imputation


def _neighbour_sum(x: jax.Array) -> jax.Array:
    """sum_o ROAD_WEIGHTS[o] * x[pixel + o] over the 8 neighbours of each pixel of x (N, H, W, C); the
    neighbours outside the image count for nothing."""
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(
        wt * padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for (dy, dx), wt in ROAD_WEIGHTS.items()
    )


def _impute(images: jax.Array, removed: jax.Array, noise: jax.Array, iterations: int) -> jax.Array:
    """ROAD's linear imputation of the removed pixels (N, H, W, 1 bool) by conjugate gradients, plus noise.

    For each image and channel, the unknowns x (the removed pixels) solve M x = b with
    (M x)_i = d_i x_i - sum_{removed j} w_ij x_j and b_i = sum_{kept j} w_ij image_j, d_i the sum of the
    in-image neighbour weights of pixel i: x_i is the weighted mean of its neighbours. M is symmetric and
    positive definite when at least one pixel is kept (every group of removed pixels then borders a kept
    one). Vectors live on the full grid, zero at kept pixels, so every shape is fixed.
    """
    dtype = jnp.promote_types(images.dtype, jnp.float32)
    x_img = images.astype(dtype)
    unknown = removed.astype(dtype)
    known = 1.0 - unknown
    degree = _neighbour_sum(jnp.ones(images.shape[:3] + (1,), dtype))

    def matvec(x):
        return unknown * (degree * x - _neighbour_sum(unknown * x))

    def dot(a, b):  # per image and channel
        return jnp.sum(a * b, axis=(1, 2), keepdims=True)

    rhs = unknown * _neighbour_sum(known * x_img)
    count = jnp.sum(known, axis=(1, 2), keepdims=True)
    kept_mean = jnp.sum(known * x_img, axis=(1, 2), keepdims=True) / jnp.maximum(count, 1.0)
    x0 = unknown * kept_mean  # start from the kept pixels' mean (0 when none is kept)
    r0 = rhs - matvec(x0)
    tol = (8.0 * jnp.finfo(dtype).eps) ** 2 * dot(rhs, rhs)  # stop at ||r|| <= 8 eps ||b||

    def step(_, carry):
        x, r, p, rr = carry
        active = rr > tol
        mp = matvec(p)
        pmp = dot(p, mp)
        alpha = jnp.where(active & (pmp > 0), rr / jnp.where(pmp > 0, pmp, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * mp
        rr_new = dot(r, r)
        beta = rr_new / jnp.where(rr > 0, rr, 1.0)
        return x, r, jnp.where(active, r + beta * p, p), jnp.where(active, rr_new, rr)

    x = lax.fori_loop(0, iterations, step, (x0, r0, r0, dot(r0, r0)))[0]
    filled = jnp.where(removed, x + noise.astype(dtype), x_img)
    return filled.astype(images.dtype)


@functools.partial(jax.jit, static_argnames=("iterations",))
def _imputation(images, removed, key, noise_std, iterations):
    noise = noise_std * jax.random.normal(key, images.shape, jnp.float32)
    return _impute(images, removed[..., None], noise, iterations)


def noisy_linear_imputation(
    images: jax.Array,
    removed: jax.Array,
    *,
    key: jax.Array,
    noise: float = ROAD_NOISE,
    iterations: int = ROAD_ITERATIONS,
) -> jax.Array:
    """ROAD's noisy linear imputation (Rong et al. 2022): removed pixels become their neighbours' mean.

    Each removed pixel equals the weighted mean of its in-image 8 neighbours (direct neighbours weight
    1/6, diagonal ones 1/12, re-normalised at the border), kept pixels fixed: a sparse linear system per
    image and channel, solved here by `iterations` steps of conjugate gradients on the full pixel grid
    (fixed shapes: jit- and vmap-compatible), started from the kept pixels' mean and frozen once the
    residual norm falls below 8 machine epsilons times the right-hand side's. Gaussian noise of standard
    deviation `noise` (`noise * jax.random.normal(key, images.shape)`) is then added to the removed
    pixels only. With every pixel removed nothing is left to interpolate from: the result is 0 plus the
    noise.

    Accuracy with the default 256 iterations, float32, against scipy's sparse direct solve (float64) on
    64 x 64 images of magnitude 2 to 5 (test digits and a smooth random field; random, blob-shaped and
    brightest-first removals): largest absolute error 1.2e-4 with up to 97% of the pixels removed, 8e-4
    with 99.5-99.9% removed (convergence slows as the holes grow). tests/test_metrics_faithfulness_road.py
    checks 1e-4 on small images.

    Args:
      images: (B, H, W, C) floating.
      removed: (B, H, W) bool, True where a pixel is removed.
      key: a JAX PRNG key for the noise.
      noise: the noise's standard deviation, >= 0 (ROAD's 0.01, in the images' units).
      iterations: conjugate-gradient iterations, >= 1.

    Returns:
      (B, H, W, C) images of images' dtype, the kept pixels unchanged.

    Raises:
      ValueError: images not (B, H, W, C) floating, removed not (B, H, W) bool, a bad key, noise < 0 or
        iterations < 1.

    Examples:
      >>> images = jnp.ones((1, 5, 5, 1)).at[0, :, :2].set(3.0)  # a 3 | 1 edge
      >>> removed = jnp.zeros((1, 5, 5), bool).at[0, 2, 2].set(True)
      >>> out = noisy_linear_imputation(images, removed, key=jax.random.key(0), noise=0.0)
      >>> round(float(out[0, 2, 2, 0]), 4)  # weight 1/6 + 2 / 12 = 1/3 on the 3s, 2/3 on the 1s
      1.6667
    """
    _check_array("images", images)
    _check_array("removed", removed)
    if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"images must be (B, H, W, C) floating; got shape {tuple(images.shape)} {images.dtype}"
        )
    if tuple(removed.shape) != tuple(images.shape[:3]) or removed.dtype != jnp.bool_:
        raise ValueError(
            f"removed must be (B, H, W) = {tuple(images.shape[:3])} bool; got shape "
            f"{tuple(removed.shape)} {removed.dtype}"
        )
    if key is None:
        raise ValueError("key must be a single JAX PRNG key (jax.random.key); got None")
    _check_road_args(key, noise, iterations)
    return _imputation(images, removed, key, float(noise), int(iterations))


# ------------------------------------------------------------------------------------ deletion curve


def _tile(tree, n: int):
    """Every leaf (B, ...) of tree -> (n * B, ...), the B rows repeated n times (step-major)."""
    return jax.tree_util.tree_map(
        lambda t: jnp.broadcast_to(t, (n, *t.shape)).reshape(-1, *t.shape[1:]), tree
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "score",
        "steps",
        "insertion",
        "baseline",
        "blur_sigma",
        "road_iterations",
        "chunk_size",
    ),
)
def _curve(
    score,
    images,
    maps,
    targets,
    key,
    road_noise,
    *,
    steps,
    insertion,
    baseline,
    blur_sigma,
    road_iterations,
    chunk_size,
):
    b, h, w, c = images.shape
    road = baseline == "road"
    base = None if road else _baseline(images, baseline, blur_sigma)
    ranks = _pixel_ranks(maps).reshape(b, h, w, 1)
    counts = jnp.asarray(step_counts(steps, h * w), jnp.int32)

    def chunk(ks, step_ids):  # (n,) pixel counts and step indices -> (n, B) scores
        n = ks.shape[0]
        first = ranks[None] < ks[:, None, None, None, None]  # (n, B, H, W, 1): the first k pixels
        removed = ~first if insertion else first
        if road:
            noise = jax.vmap(lambda s: jax.random.normal(jax.random.fold_in(key, s), images.shape))(step_ids)
            x = _impute(
                _tile(images, n),
                removed.reshape(n * b, h, w, 1),
                road_noise * noise.reshape(n * b, h, w, c),
                road_iterations,
            )
        else:
            x = jnp.where(removed, base[None], images[None]).reshape(n * b, h, w, c)
        values = score(x, _tile(targets, n))
        return values.reshape(n, b).astype(jnp.float32)

    total = steps + 1
    step_ids = jnp.arange(total, dtype=jnp.int32)
    full = total // chunk_size * chunk_size
    parts = []
    if full:
        shape = (full // chunk_size, chunk_size)
        per_chunk = lax.map(
            lambda a: chunk(*a), (counts[:full].reshape(shape), step_ids[:full].reshape(shape))
        )
        parts.append(per_chunk.reshape(full, b))
    if full < total:
        parts.append(chunk(counts[full:], step_ids[full:]))
    return jnp.concatenate(parts, axis=0).T


def _run_curve(
    score,
    images,
    maps,
    targets,
    steps,
    baseline,
    blur_sigma,
    chunk_size,
    key,
    road_noise,
    road_iterations,
    insertion,
):
    key = jax.random.key(0) if key is None else key
    return _curve(
        score,
        images,
        maps,
        targets,
        key,
        jnp.float32(road_noise),
        steps=int(steps),
        insertion=insertion,
        baseline=baseline,
        blur_sigma=float(blur_sigma),
        road_iterations=int(road_iterations),
        chunk_size=int(chunk_size),
    )


def _curve_public(predict, images, maps, labels, insertion, **kw):
    _check_inputs(predict, images, maps, labels)
    _check_curve_args(
        kw["steps"],
        kw["baseline"],
        kw["blur_sigma"],
        kw["chunk_size"],
        kw["key"],
        kw["road_noise"],
        kw["road_iterations"],
    )
    _check_predict_output(predict, images, labels)
    return _run_curve(_LabelProbability(predict), images, maps, labels, insertion=insertion, **kw)


def _score_curve_public(score, images, maps, targets, insertion, **kw):
    _check_curve_args(
        kw["steps"],
        kw["baseline"],
        kw["blur_sigma"],
        kw["chunk_size"],
        kw["key"],
        kw["road_noise"],
        kw["road_iterations"],
    )
    _check_score_inputs(score, images, maps, targets)
    return _run_curve(score, images, maps, targets, insertion=insertion, **kw)


def deletion_curve(
    predict: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    maps: jax.Array,
    labels: jax.Array,
    *,
    steps: int = 64,
    baseline: str = "zero",
    blur_sigma: float = 5.0,
    chunk_size: int = 16,
    key: jax.Array | None = None,
    road_noise: float = ROAD_NOISE,
    road_iterations: int = ROAD_ITERATIONS,
) -> jax.Array:
    """Label probability as the most salient pixels are replaced by a baseline (Petsiuk et al. 2018).

    At step s = 0..S the first round(s * H * W / S) pixels in descending saliency order (ties: lower flat
    index first) are replaced by the baseline in every channel; the value is the label's softmax
    probability under `predict`.

    Args:
      predict: images (N, H, W, C) -> logits (N, K); called on batches of up to chunk_size * B images.
        Must be traceable by `jax.jit` and hashable (it is a static argument).
      images: (B, H, W, C) floating.
      maps: (B, H, W) saliency, higher = more important (any real dtype).
      labels: (B,) integer class whose probability is tracked, in [0, K).
      steps: S >= 1; the curve has S + 1 points.
      baseline: "zero", "mean" (per image and channel), "blur" (Gaussian, `blur_sigma` pixels) or "road"
        (`noisy_linear_imputation` of the removed pixels at every step).
      blur_sigma: standard deviation of the blur baseline in pixels, > 0.
      chunk_size: steps evaluated side by side (memory: chunk_size * B perturbed images at a time).
      key: PRNG key of the "road" noise (step s draws from fold_in(key, s)); None: jax.random.key(0).
      road_noise: standard deviation of the "road" noise, >= 0.
      road_iterations: conjugate-gradient iterations of the "road" imputation, >= 1.

    Returns:
      (B, S + 1) float32 probabilities; column 0 is the unperturbed image, column S the baseline.

    Raises:
      ValueError: bad shapes or dtypes, predict not giving (B, K) logits, labels out of range (when
        concrete), steps < 1, an unknown baseline, blur_sigma <= 0, chunk_size < 1, a bad key,
        road_noise < 0 or road_iterations < 1.

    Examples:
      >>> predict = lambda x: jnp.stack([jnp.zeros(x.shape[0]), x.sum(axis=(1, 2, 3))], axis=1)
      >>> images = jnp.ones((1, 4, 4, 1))
      >>> maps = jnp.arange(16.0).reshape(1, 4, 4)
      >>> deletion_curve(predict, images, maps, jnp.array([1]), steps=2).shape
      (1, 3)

      With parameters passed as arguments rather than compiled in as constants:

      >>> @jax.jit
      ... def scores(w, images, maps, labels):
      ...     return deletion_auc(lambda x: x.sum(axis=(1, 2)) @ w, images, maps, labels, steps=4)
      >>> scores(jnp.ones((1, 3)), images, maps, jnp.array([2])).shape
      (1,)
    """
    return _curve_public(
        predict,
        images,
        maps,
        labels,
        False,
        steps=steps,
        baseline=baseline,
        blur_sigma=blur_sigma,
        chunk_size=chunk_size,
        key=key,
        road_noise=road_noise,
        road_iterations=road_iterations,
    )


def insertion_curve(
    predict: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    maps: jax.Array,
    labels: jax.Array,
    *,
    steps: int = 64,
    baseline: str = "blur",
    blur_sigma: float = 5.0,
    chunk_size: int = 16,
    key: jax.Array | None = None,
    road_noise: float = ROAD_NOISE,
    road_iterations: int = ROAD_ITERATIONS,
) -> jax.Array:
    """Label probability as the most salient pixels are copied from the image onto the baseline.

    The mirror of `deletion_curve`: step 0 is the baseline image, step S the image itself. The default
    baseline is the blurred image, as in Petsiuk et al. (2018). With "road" the pixels not yet inserted
    are imputed from the inserted ones (step 0, with none inserted, is 0 plus the noise).

    Args:
      predict: images (N, H, W, C) -> logits (N, K), as in `deletion_curve`.
      images: (B, H, W, C) floating.
      maps: (B, H, W) saliency, higher = more important.
      labels: (B,) integer.
      steps: S >= 1.
      baseline: "zero", "mean", "blur" or "road".
      blur_sigma: standard deviation of the blur baseline in pixels, > 0.
      chunk_size: steps evaluated side by side.
      key, road_noise, road_iterations: the "road" baseline's, as in `deletion_curve`.

    Returns:
      (B, S + 1) float32 probabilities.

    Raises:
      ValueError: as `deletion_curve`.

    Examples:
      >>> predict = lambda x: jnp.stack([jnp.zeros(x.shape[0]), x.sum(axis=(1, 2, 3))], axis=1)
      >>> c = insertion_curve(predict, jnp.ones((1, 4, 4, 1)), jnp.zeros((1, 4, 4)), jnp.array([1]),
      ...                     steps=4, baseline="zero")
      >>> c.shape
      (1, 5)
    """
    return _curve_public(
        predict,
        images,
        maps,
        labels,
        True,
        steps=steps,
        baseline=baseline,
        blur_sigma=blur_sigma,
        chunk_size=chunk_size,
        key=key,
        road_noise=road_noise,
        road_iterations=road_iterations,
    )


def deletion_auc(
    predict,
    images,
    maps,
    labels,
    *,
    steps=64,
    baseline="zero",
    blur_sigma=5.0,
    chunk_size=16,
    key=None,
    road_noise=ROAD_NOISE,
    road_iterations=ROAD_ITERATIONS,
):
    """Area under `deletion_curve` over s / S in [0, 1] (trapezoid rule); lower = more faithful map.

    Args:
      predict, images, maps, labels: as in `deletion_curve`.
      steps, baseline, blur_sigma, chunk_size, key, road_noise, road_iterations: as in `deletion_curve`.

    Returns:
      (B,) float32 areas in [0, 1]; average them over a data set.

    Raises:
      ValueError: as `deletion_curve`.

    Examples:
      >>> predict = lambda x: jnp.stack([jnp.zeros(x.shape[0]), x.sum(axis=(1, 2, 3))], axis=1)
      >>> deletion_auc(predict, jnp.ones((1, 4, 4, 1)), jnp.zeros((1, 4, 4)), jnp.array([1]), steps=4).shape
      (1,)
    """
    return curve_auc(
        deletion_curve(
            predict,
            images,
            maps,
            labels,
            steps=steps,
            baseline=baseline,
            blur_sigma=blur_sigma,
            chunk_size=chunk_size,
            key=key,
            road_noise=road_noise,
            road_iterations=road_iterations,
        )
    )


def insertion_auc(
    predict,
    images,
    maps,
    labels,
    *,
    steps=64,
    baseline="blur",
    blur_sigma=5.0,
    chunk_size=16,
    key=None,
    road_noise=ROAD_NOISE,
    road_iterations=ROAD_ITERATIONS,
):
    """Area under `insertion_curve` over s / S in [0, 1] (trapezoid rule); higher = more faithful map.

    Args:
      predict, images, maps, labels: as in `insertion_curve`.
      steps, baseline, blur_sigma, chunk_size, key, road_noise, road_iterations: as in `insertion_curve`.

    Returns:
      (B,) float32 areas in [0, 1].

    Raises:
      ValueError: as `deletion_curve`.

    Examples:
      >>> predict = lambda x: jnp.stack([jnp.zeros(x.shape[0]), x.sum(axis=(1, 2, 3))], axis=1)
      >>> insertion_auc(predict, jnp.ones((1, 4, 4, 1)), jnp.zeros((1, 4, 4)), jnp.array([1]), steps=4).shape
      (1,)
    """
    return curve_auc(
        insertion_curve(
            predict,
            images,
            maps,
            labels,
            steps=steps,
            baseline=baseline,
            blur_sigma=blur_sigma,
            chunk_size=chunk_size,
            key=key,
            road_noise=road_noise,
            road_iterations=road_iterations,
        )
    )


def deletion_curve_by_score(
    score: Callable,
    images: jax.Array,
    maps: jax.Array,
    targets,
    *,
    steps: int = 64,
    baseline: str = "zero",
    blur_sigma: float = 5.0,
    chunk_size: int = 16,
    key: jax.Array | None = None,
    road_noise: float = ROAD_NOISE,
    road_iterations: int = ROAD_ITERATIONS,
) -> jax.Array:
    """`deletion_curve` of any per-image score, e.g. a detector's probability of each true box's class.

    The pixels are removed exactly as in `deletion_curve`; the value at each step is
    `score(perturbed images, targets)` instead of a softmax probability. The area (`curve_auc`) lies in
    [0, 1] when the score does.

    Args:
      score: (images (N, H, W, C), targets) -> (N,) floating, where targets is the pytree below with
        every leaf's rows repeated to N = n * B (step-major: row j goes with image j % B). Traceable by
        `jax.jit` and hashable (a static argument: reuse one object to reuse the compiled program).
      images: (B, H, W, C) floating.
      maps: (B, H, W) saliency, higher = more important.
      targets: a pytree of arrays, each with a leading axis B (e.g. a dict of boxes and labels).
      steps, baseline, blur_sigma, chunk_size, key, road_noise, road_iterations: as in `deletion_curve`.

    Returns:
      (B, S + 1) float32 scores; column 0 is the unperturbed image.

    Raises:
      ValueError: bad images or maps, a targets leaf without the leading axis B, score not giving (B,)
        floating values, or a curve argument `deletion_curve` refuses.

    Examples:
      >>> score = lambda x, t: jax.nn.sigmoid(jnp.sum(x * t["weight"][:, None, None, None], axis=(1, 2, 3)))
      >>> images, maps = jnp.ones((2, 4, 4, 1)), jnp.arange(32.0).reshape(2, 4, 4)
      >>> curve = deletion_curve_by_score(score, images, maps, {"weight": jnp.array([1.0, -1.0])}, steps=2)
      >>> curve.shape, [round(float(v), 4) for v in curve[1]]
      ((2, 3), [0.0, 0.0003, 0.5])
    """
    return _score_curve_public(
        score,
        images,
        maps,
        targets,
        False,
        steps=steps,
        baseline=baseline,
        blur_sigma=blur_sigma,
        chunk_size=chunk_size,
        key=key,
        road_noise=road_noise,
        road_iterations=road_iterations,
    )


def insertion_curve_by_score(
    score: Callable,
    images: jax.Array,
    maps: jax.Array,
    targets,
    *,
    steps: int = 64,
    baseline: str = "blur",
    blur_sigma: float = 5.0,
    chunk_size: int = 16,
    key: jax.Array | None = None,
    road_noise: float = ROAD_NOISE,
    road_iterations: int = ROAD_ITERATIONS,
) -> jax.Array:
    """`insertion_curve` of any per-image score (see `deletion_curve_by_score`).

    Args:
      score, images, maps, targets: as in `deletion_curve_by_score`.
      steps, baseline, blur_sigma, chunk_size, key, road_noise, road_iterations: as in `insertion_curve`.

    Returns:
      (B, S + 1) float32 scores; column S is the unperturbed image.

    Raises:
      ValueError: as `deletion_curve_by_score`.
    """
    return _score_curve_public(
        score,
        images,
        maps,
        targets,
        True,
        steps=steps,
        baseline=baseline,
        blur_sigma=blur_sigma,
        chunk_size=chunk_size,
        key=key,
        road_noise=road_noise,
        road_iterations=road_iterations,
    )


# ----------------------------------------------------------------------- Average Drop / Increase


def _normalise(maps: jax.Array) -> jax.Array:
    m = maps.astype(jnp.float32)
    lo = jnp.min(m, axis=(1, 2), keepdims=True)
    span = jnp.max(m, axis=(1, 2), keepdims=True) - lo
    return jnp.where(span > 0, (m - lo) / jnp.where(span > 0, span, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("score",))
def _masked_confidence(score, images, maps, targets):
    """(Y, O): scores of the images and of the images times their normalised maps."""
    masked = images * _normalise(maps)[..., None].astype(images.dtype)
    both = score(jnp.concatenate([images, masked], axis=0), _tile(targets, 2)).astype(jnp.float32)
    b = images.shape[0]
    return both[:b], both[b:]


def _confidences(predict, images, maps, labels):
    _check_inputs(predict, images, maps, labels)
    _check_predict_output(predict, images, labels)
    return _masked_confidence(_LabelProbability(predict), images, maps, labels)


def _score_confidences(score, images, maps, targets):
    _check_score_inputs(score, images, maps, targets)
    return _masked_confidence(score, images, maps, targets)


def _drop(y, o):
    return jnp.maximum(y - o, 0.0) / y * 100.0


def average_drop(predict, images, maps, labels) -> jax.Array:
    """Per-image confidence drop, in percent, when the image is masked by its normalised map.

    Each map is min-max normalised to [0, 1] per image (a constant map becomes all zeros) and multiplied
    into every channel; with Y the label's softmax probability on the image and O on the masked image,
    the value is max(0, Y - O) / Y * 100. Average Drop (Chattopadhyay et al. 2018) is the mean over a
    data set: lower = the map keeps what the model needs.

    Args:
      predict: images (N, H, W, C) -> logits (N, K); called once on 2B images. Static (hashable).
      images: (B, H, W, C) floating.
      maps: (B, H, W) saliency.
      labels: (B,) integer.

    Returns:
      (B,) float32 drops in [0, 100].

    Raises:
      ValueError: bad shapes or dtypes, predict not giving (B, K) logits, labels out of range.

    Examples:
      >>> predict = lambda x: jnp.stack([jnp.zeros(x.shape[0]), x.sum(axis=(1, 2, 3))], axis=1)
      >>> maps = jnp.zeros((1, 2, 2)).at[0, 0, 0].set(1.0)
      >>> drop = average_drop(predict, jnp.ones((1, 2, 2, 1)), maps, jnp.array([1]))
      >>> round(float(drop[0]), 1)
      25.6
    """
    return _drop(*_confidences(predict, images, maps, labels))


def increase_in_confidence(predict, images, maps, labels) -> jax.Array:
    """Per-image 1.0 when masking the image by its normalised map raises the label's probability, else 0.0.

    The mask is the one of `average_drop`. Increase in Confidence (Chattopadhyay et al. 2018) is the mean
    over a data set (times 100 for a percentage): higher = better.

    Args:
      predict, images, maps, labels: as in `average_drop`.

    Returns:
      (B,) float32 in {0.0, 1.0}.

    Raises:
      ValueError: as `average_drop`.

    Examples:
      >>> predict = lambda x: jnp.stack([x.sum(axis=(1, 2, 3)), jnp.zeros(x.shape[0])], axis=1)
      >>> maps = jnp.zeros((1, 2, 2)).at[0, 0, 0].set(1.0)
      >>> increase_in_confidence(predict, jnp.ones((1, 2, 2, 1)), maps, jnp.array([1])).tolist()
      [1.0]
    """
    y, o = _confidences(predict, images, maps, labels)
    return (o > y).astype(jnp.float32)


def average_drop_by_score(score, images, maps, targets) -> jax.Array:
    """`average_drop` of any positive per-image score (see `deletion_curve_by_score`).

    With Y = score(images, targets) and O the score of the images masked by their normalised maps:
    max(0, Y - O) / Y * 100.

    Args:
      score: (images (N, H, W, C), targets) -> (N,) positive floating; called once on 2B images, the
        targets' rows repeated twice. Static (hashable).
      images: (B, H, W, C) floating.
      maps: (B, H, W) saliency.
      targets: a pytree of arrays with a leading axis B.

    Returns:
      (B,) float32 drops in [0, 100].

    Raises:
      ValueError: as `deletion_curve_by_score` (its score and shape checks).

    Examples:
      >>> score = lambda x, t: jax.nn.sigmoid(jnp.sum(x, axis=(1, 2, 3)) + t)
      >>> maps = jnp.zeros((1, 2, 2)).at[0, 0, 0].set(1.0)
      >>> round(float(average_drop_by_score(score, jnp.ones((1, 2, 2, 1)), maps, jnp.zeros(1))[0]), 1)
      25.6
    """
    return _drop(*_score_confidences(score, images, maps, targets))


def increase_in_confidence_by_score(score, images, maps, targets) -> jax.Array:
    """`increase_in_confidence` of any per-image score: 1.0 where the masked image scores higher.

    Args:
      score, images, maps, targets: as in `average_drop_by_score`.

    Returns:
      (B,) float32 in {0.0, 1.0}.

    Raises:
      ValueError: as `average_drop_by_score`.
    """
    y, o = _score_confidences(score, images, maps, targets)
    return (o > y).astype(jnp.float32)


# ------------------------------------------------------------------------------- randomization check


def _average_ranks(x: jax.Array) -> jax.Array:
    """1-based ranks along the last axis, ties given their average rank (scipy.stats.rankdata 'average')."""
    s = jnp.sort(x, axis=-1)
    search = jnp.vectorize(lambda a, v, side: jnp.searchsorted(a, v, side=side), signature="(n),(n)->(n)",
                           excluded={2})  # fmt: skip
    below = search(s, x, "left")
    through = search(s, x, "right")
    return (below + through + 1).astype(jnp.float32) / 2.0


@jax.jit
def spearman(x: jax.Array, y: jax.Array) -> jax.Array:
    """Spearman rank correlation along the last axis (average ranks for ties), as scipy.stats.spearmanr.

    Args:
      x, y: (..., n) real arrays of the same shape, n >= 2.

    Returns:
      (...) float32 correlations in [-1, 1]; NaN where x or y is constant (as scipy).

    Examples:
      >>> round(float(spearman(jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([1.0, 3.0, 2.0, 4.0]))), 6)
      0.8
    """
    if x.shape != y.shape or x.ndim < 1 or x.shape[-1] < 2:
        raise ValueError(f"x and y must have the same shape (..., n >= 2); got {x.shape} and {y.shape}")
    rx, ry = _average_ranks(x.astype(jnp.float32)), _average_ranks(y.astype(jnp.float32))
    rx = rx - jnp.mean(rx, axis=-1, keepdims=True)
    ry = ry - jnp.mean(ry, axis=-1, keepdims=True)
    num = jnp.sum(rx * ry, axis=-1)
    den = jnp.sqrt(jnp.sum(rx * rx, axis=-1) * jnp.sum(ry * ry, axis=-1))
    return jnp.clip(num / den, -1.0, 1.0)


def _path(entry) -> tuple:
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _replace(tree, path, value):
    if not path:
        return value
    new = dict(tree)
    new[path[0]] = _replace(tree[path[0]], path[1:], value)
    return new if isinstance(tree, dict) else type(tree)(new)


@jax.jit
def _randomize(layers: tuple, key: jax.Array) -> tuple:
    """Layer i's floating leaves -> zero-mean normal values with each leaf's shape, dtype and
    root-mean-square (keys split from fold_in(key, i)); other leaves are kept. One compiled call."""
    out = []
    for i, subtree in enumerate(layers):
        leaves, treedef = jax.tree_util.tree_flatten(subtree)
        keys = jax.random.split(jax.random.fold_in(key, i), max(len(leaves), 1))
        new = []
        for leaf, k in zip(leaves, keys):
            if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size:
                rms = jnp.sqrt(jnp.mean(jnp.square(leaf.astype(jnp.float32))))
                leaf = (jax.random.normal(k, leaf.shape, jnp.float32) * rms).astype(leaf.dtype)
            new.append(leaf)
        out.append(jax.tree_util.tree_unflatten(treedef, new))
    return tuple(out)


def randomization_check(
    explain: Callable,
    params: Mapping,
    images: jax.Array,
    labels: jax.Array,
    *,
    layer_order: Sequence,
    key: jax.Array,
) -> jax.Array:
    """Cascading parameter randomization (Adebayo et al. 2018): how much of each map survives it?

    Stage i re-initialises the layers layer_order[0..i] (cumulative, the output layer first as in the
    paper): every floating leaf under such a layer is replaced by zero-mean normal values with the same
    shape, dtype and root-mean-square as the trained leaf (a zero leaf, e.g. an untrained bias, stays
    zero; integer leaves are kept). The maps of the randomized model are compared with the trained
    model's by Spearman rank correlation per image (`spearman`, average ranks for ties). Randomize
    parameters only: statistics such as BatchNorm's running variance must stay in `explain`'s closure.

    Args:
      explain: (params, images, labels) -> maps (B, ...) with B = images.shape[0]; called once for the
        trained params and once per stage (jit it yourself to compile it once).
      params: a mapping (dict or FrozenDict) of layers, e.g. flax's `variables["params"]`.
      images: (B, H, W, C).
      labels: (B,) integer.
      layer_order: non-empty sequence of layers to randomize, output layer first; each a top-level key of
        params or a tuple of keys into nested mappings (e.g. ("params", "Dense_0")).
      key: a JAX PRNG key; layer_order[i] is drawn from fold_in(key, i).

    Returns:
      (len(layer_order), B) float32 Spearman correlations; row i is the stage after randomizing
      layer_order[:i + 1]. NaN where a map is constant.

    Raises:
      ValueError: explain not callable, params not a mapping, an empty or repeated layer_order, a layer
        not in params, bad images / labels shapes, or maps not (B, ...) with at least 2 values per image.

    Examples:
      >>> params = {"a": jnp.ones(3), "b": jnp.ones(3)}
      >>> explain = lambda p, x, y: x[..., 0] * p["a"].sum()  # ignores "b"
      >>> images = jnp.arange(8.0).reshape(2, 2, 2, 1)
      >>> rho = randomization_check(explain, params, images, jnp.array([0, 1]), layer_order=["b"],
      ...                           key=jax.random.key(0))
      >>> rho.tolist()
      [[1.0, 1.0]]
    """
    if not callable(explain):
        raise ValueError(
            f"explain must be a callable (params, images, labels) -> maps; got {type(explain).__name__}"
        )
    if not isinstance(params, Mapping):
        raise ValueError(
            f"params must be a mapping of layers (dict or FrozenDict); got {type(params).__name__}"
        )
    for name, x in (("images", images), ("labels", labels)):
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise ValueError(f"{name} must be an array (jax.Array or np.ndarray); got {type(x).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C); got shape {tuple(images.shape)}")
    b = images.shape[0]
    if tuple(labels.shape) != (b,):
        raise ValueError(f"labels must be (B,) = ({b},); got shape {tuple(labels.shape)}")
    if isinstance(layer_order, str) or not isinstance(layer_order, Sequence) or not layer_order:
        raise ValueError(f"layer_order must be a non-empty sequence of layer names; got {layer_order!r}")
    paths = [_path(e) for e in layer_order]
    if len(set(paths)) != len(paths):
        raise ValueError(f"layer_order has a repeated layer: {list(layer_order)!r}")
    for entry, path in zip(layer_order, paths):
        try:
            _get(params, path)
        except (KeyError, TypeError, IndexError):
            raise ValueError(
                f"layer_order entry {entry!r} is not in params (top-level keys {list(params)})"
            ) from None

    def flat_maps(p):
        m = jnp.asarray(explain(p, images, labels))
        if m.ndim < 2 or m.shape[0] != b or math.prod(m.shape[1:]) < 2:
            raise ValueError(f"explain must return maps (B, ...) with B = {b} and >= 2 values; got {m.shape}")
        return m.reshape(b, -1)

    reference = flat_maps(params)
    randomized = _randomize(tuple(_get(params, path) for path in paths), key)
    rows, current = [], params
    for path, layer in zip(paths, randomized):
        current = _replace(current, path, layer)
        rows.append(spearman(reference, flat_maps(current)))
    return jnp.stack(rows)
