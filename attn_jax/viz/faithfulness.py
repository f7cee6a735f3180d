"""Explanations of a model's decision as (B, H, W) maps, and how faithful each one is.

Explanations (each a (B, H, W) float32 map at the images' resolution, higher = more important):

- the family's own attention map: the last spatial map the model sows (`capture_attention`, upsampled
  bilinearly from the feature grid; query maps averaged over queries). Channel-only families (se, eca) and
  models without attention have none: `attention_map` returns None and the report says why. Its negation,
  "inverted_attention", is scored too: a gate that suppresses the objects ranks them last, and the
  inverted map tells whether its lowest pixels are the ones the model needs.
- Grad-CAM (Selvaraju et al. 2017) at the last backbone (encoder) conv (`attn_jax.viz.explain.grad_cam`).
- gradient x input (Shrikumar et al. 2016): d objective / d x times x, summed over channels (signed:
  pixels that raise the objective rank first).
- integrated gradients (Sundararajan et al. 2017): (x - x') times the mean gradient along the straight path
  from the baseline x' to x at the midpoints alpha_k = (k + 1/2) / S, summed over channels; the S path
  points are vmapped, `chunk_size` at a time. Completeness: its sum over pixels approaches
  objective(x) - objective(x') as S grows (the midpoint rule's error falls as 1 / S^2).
- a random map (uniform, seeded) and the digits' ground-truth mask (an oracle, 1 on the digits' pixels,
  0 elsewhere), when the dataset has masks.

What is explained and scored, per task (the objective is differentiated by the gradient methods and
Grad-CAM; the score is what the faithfulness curves track, in [0, 1]):

- classification: objective the target class's logit; score its softmax probability.
- detection (`detection_box_score`): each true box is matched to its best anchor (the highest IoU with the
  box, `best_anchors`); objective the mean over the image's true boxes of the class logit of the box's
  class at that anchor; score the mean of the corresponding sigmoid probabilities.
- segmentation (`segmentation_pixel_score`): over the image's digit pixels (true class 1..K-1), objective
  the mean logit of each pixel's true class; score the mean of its softmax probability.

`score_maps` / `score_maps_by_score` score maps with attn_jax.metrics' deletion / insertion curves, Average
Drop and Increase in Confidence; `faithfulness_report` does it for a trained run of any of the three tasks
and writes faithfulness.{md,json,png}; `python -m attn_jax.viz faithfulness --workdir RUN` is its command
line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import itertools
import json
import os
import platform
import sys
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.detection import pairwise_iou
from attn_jax.metrics import (
    average_drop,
    curve_auc,
    deletion_curve,
    increase_in_confidence,
    insertion_curve,
)
from attn_jax.metrics.faithfulness import (
    BASELINES,
    average_drop_by_score,
    deletion_curve_by_score,
    increase_in_confidence_by_score,
    insertion_curve_by_score,
)
from attn_jax.viz.capture import capture_attention
from attn_jax.viz.explain import grad_cam, grad_cam_of_objective, last_conv

METHODS = (
    "attention",
    "inverted_attention",
    "grad_cam",
    "gradient_x_input",
    "integrated_gradients",
    "random",
    "oracle",
)
METRICS = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")
TARGETS = ("predicted", "label")
TASKS = ("classification", "detection", "segmentation")
_HEADERS = {
    "deletion_auc": "deletion AUC (lower better)",
    "insertion_auc": "insertion AUC (higher better)",
    "average_drop": "average drop % (lower better)",
    "increase_in_confidence": "increase in confidence (higher better)",
}


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_images_targets(predict, images, targets) -> None:
    if not callable(predict):
        raise ValueError(f"predict must be a callable images -> logits; got {type(predict).__name__}")
    if not hasattr(images, "shape") or images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C); got shape {getattr(images, 'shape', None)}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must have a floating dtype; got {images.dtype}")
    if not hasattr(targets, "shape") or tuple(targets.shape) != (images.shape[0],):
        raise ValueError(
            f"targets must be (B,) = ({images.shape[0]},); got shape {getattr(targets, 'shape', None)}"
        )
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"targets must have an integer dtype; got {targets.dtype}")


def _check_objective(objective, images, targets) -> None:
    if not callable(objective):
        raise ValueError(
            f"objective must be a callable (images, targets) -> (B,); got {type(objective).__name__}"
        )
    if not hasattr(images, "shape") or images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be (B, H, W, C) floating; got {getattr(images, 'shape', None)}")
    b = images.shape[0]
    for leaf in jax.tree_util.tree_leaves(targets):
        if not hasattr(leaf, "shape") or leaf.ndim < 1 or leaf.shape[0] != b:
            raise ValueError(
                f"every leaf of targets must have a leading axis B = {b}; got {getattr(leaf, 'shape', leaf)}"
            )
    spec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), targets)
    out = jax.eval_shape(objective, jax.ShapeDtypeStruct(images.shape, images.dtype), spec)
    if not hasattr(out, "shape") or tuple(out.shape) != (b,):
        raise ValueError(f"objective must return (B,) = ({b},) values; got {getattr(out, 'shape', out)}")


@dataclasses.dataclass(frozen=True)
class _ClassLogit:
    """objective(images, targets): each image's logit of its target class under predict. Frozen, so two
    wrappers of one predict are equal and share compiled programs (a static argument)."""

    predict: Callable

    def __call__(self, images, targets):
        logits = self.predict(images).astype(jnp.float32)
        return jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]


def _objective_sum(objective, images, targets):
    return jnp.sum(objective(images, targets).astype(jnp.float32))


# ------------------------------------------------------------------------------- gradient explanations


@functools.partial(jax.jit, static_argnums=(0,))
def _gradient_x_input(objective, images, targets):
    grads = jax.grad(_objective_sum, argnums=1)(objective, images, targets)
    return jnp.sum(grads.astype(jnp.float32) * images.astype(jnp.float32), axis=-1)


def gradient_x_input(predict: Callable, images: jax.Array, targets: jax.Array) -> jax.Array:
    """Gradient x input: d logit_target / d x times x, summed over channels.

    Args:
      predict: images (B, H, W, C) -> logits (B, K); each image's logits must depend on that image only
        (e.g. a model applied with ``train=False``). Static under jit: reuse the same object.
      images: (B, H, W, C) floating.
      targets: (B,) integer class of each image whose logit is explained.

    Returns:
      (B, H, W) float32 signed attributions.

    Raises:
      ValueError: images not (B, H, W, C) floating, targets not (B,) integer, predict not callable.

    Examples:
      >>> predict = lambda x: jnp.stack([x.sum(axis=(1, 2, 3)), 2 * x.sum(axis=(1, 2, 3))], axis=1)
      >>> gradient_x_input(predict, jnp.ones((1, 2, 2, 1)), jnp.array([1])).tolist()
      [[[2.0, 2.0], [2.0, 2.0]]]
    """
    _check_images_targets(predict, images, targets)
    return _gradient_x_input(_ClassLogit(predict), images, targets)


def gradient_x_input_of_objective(objective: Callable, images: jax.Array, targets) -> jax.Array:
    """Gradient x input of any per-image objective, e.g. a detector's true-box logits.

    Args:
      objective: (images (B, H, W, C), targets) -> (B,); each image's value must depend on that image
        only. Static under jit: reuse the same object.
      images: (B, H, W, C) floating.
      targets: a pytree of arrays with a leading axis B, passed to objective.

    Returns:
      (B, H, W) float32 signed attributions.

    Raises:
      ValueError: objective not callable or not giving (B,) values, bad images or targets.

    Examples:
      >>> objective = lambda x, w: w * jnp.sum(x**2, axis=(1, 2, 3))
      >>> gradient_x_input_of_objective(objective, jnp.ones((1, 1, 2, 1)), jnp.array([3.0])).tolist()
      [[[6.0, 6.0]]]
    """
    _check_objective(objective, images, targets)
    return _gradient_x_input(objective, images, targets)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _integrated_gradients(objective, images, targets, baseline, steps, chunk_size):
    n_chunks = -(-steps // chunk_size)
    k = jnp.arange(n_chunks * chunk_size)
    alphas = ((k + 0.5) / steps).astype(images.dtype)
    weights = jnp.where(k < steps, 1.0 / steps, 0.0).astype(jnp.float32)
    grad_at = jax.vmap(jax.grad(_objective_sum, argnums=1), in_axes=(None, 0, None))
    delta = images - baseline

    def chunk(carry, ab):
        a, w = ab
        grads = grad_at(objective, baseline[None] + a[:, None, None, None, None] * delta[None], targets)
        return carry + jnp.einsum("n,nbhwc->bhwc", w, grads.astype(jnp.float32)), None

    zeros = jnp.zeros(images.shape, jnp.float32)
    shaped = (alphas.reshape(n_chunks, chunk_size), weights.reshape(n_chunks, chunk_size))
    mean_grad, _ = jax.lax.scan(chunk, zeros, shaped)
    return jnp.sum(mean_grad * delta.astype(jnp.float32), axis=-1)


def _ig_args(images, steps, baseline, chunk_size):
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    if not _is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
    if baseline is None:
        baseline = jnp.zeros_like(images)
    try:
        baseline = jnp.broadcast_to(jnp.asarray(baseline, images.dtype), images.shape)
    except (ValueError, TypeError):
        raise ValueError(
            f"baseline must broadcast to images {tuple(images.shape)}; got shape {jnp.shape(baseline)}"
        ) from None
    return baseline, int(steps), min(int(chunk_size), steps)


def integrated_gradients(
    predict: Callable,
    images: jax.Array,
    targets: jax.Array,
    *,
    steps: int = 32,
    baseline: jax.Array | None = None,
    chunk_size: int = 8,
) -> jax.Array:
    """Integrated gradients (Sundararajan et al. 2017), the path's gradients vmapped, chunk by chunk.

    attribution = (x - x') * mean_k grad logit_target(x' + alpha_k (x - x')), alpha_k = (k + 1/2) / S
    (the midpoint rule), summed over channels. Completeness: the attributions' sum over pixels tends to
    logit_target(x) - logit_target(x') as S grows.

    Args:
      predict: images (N, H, W, C) -> logits (N, K), called on chunk_size * B images at a time; each
        image's logits must depend on that image only. Static under jit: reuse the same object.
      images: (B, H, W, C) floating.
      targets: (B,) integer classes.
      steps: S >= 1 points on the path.
      baseline: x', broadcastable to images (default zeros: the data set's mean for normalised images).
      chunk_size: path points evaluated side by side (memory: chunk_size * B images), >= 1.

    Returns:
      (B, H, W) float32 signed attributions.

    Raises:
      ValueError: bad images / targets, steps < 1, chunk_size < 1, or a baseline that does not broadcast.

    Examples:
      >>> predict = lambda x: jnp.stack([jnp.zeros(x.shape[0]), (x**2).sum(axis=(1, 2, 3))], axis=1)
      >>> ig = integrated_gradients(predict, jnp.full((1, 2, 2, 1), 3.0), jnp.array([1]), steps=4)
      >>> float(ig.sum())  # = f(x) - f(0) = 4 * 9 (the midpoint rule is exact for a quadratic)
      36.0
    """
    _check_images_targets(predict, images, targets)
    baseline, steps, chunk_size = _ig_args(images, steps, baseline, chunk_size)
    return _integrated_gradients(_ClassLogit(predict), images, targets, baseline, steps, chunk_size)


def integrated_gradients_of_objective(
    objective: Callable,
    images: jax.Array,
    targets,
    *,
    steps: int = 32,
    baseline: jax.Array | None = None,
    chunk_size: int = 8,
) -> jax.Array:
    """Integrated gradients of any per-image objective (see `gradient_x_input_of_objective`).

    Args:
      objective: (images (B, H, W, C), targets) -> (B,), called once per path point (the path points
        vmapped, chunk_size at a time). Static under jit: reuse the same object.
      images: (B, H, W, C) floating.
      targets: a pytree of arrays with a leading axis B.
      steps, baseline, chunk_size: as in `integrated_gradients`.

    Returns:
      (B, H, W) float32 signed attributions; their sum over pixels tends to objective(x) - objective(x').

    Raises:
      ValueError: as `gradient_x_input_of_objective` and `integrated_gradients`.

    Examples:
      >>> objective = lambda x, w: w * jnp.sum(x**2, axis=(1, 2, 3))
      >>> ig = integrated_gradients_of_objective(objective, jnp.full((1, 2, 2, 1), 3.0), jnp.ones(1), steps=4)
      >>> float(ig.sum())
      36.0
    """
    _check_objective(objective, images, targets)
    baseline, steps, chunk_size = _ig_args(images, steps, baseline, chunk_size)
    return _integrated_gradients(objective, images, targets, baseline, steps, chunk_size)


# ------------------------------------------------------------------------- detection and segmentation


def best_anchors(anchors: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Each true box's best-matching anchor: the anchor of highest IoU with it (the first on ties).

    Args:
      anchors: (A, 4) normalised anchors (ymin, xmin, ymax, xmax), in the order of the detector's
        flattened (h, w, anchor) outputs (`attn_jax.detection.generate_anchors`).
      boxes: (B, M, 4) true boxes, padded (a padding row gets some index: mask it with the boxes' valid).

    Returns:
      (B, M) int32 anchor indices.

    Examples:
      >>> anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.5, 0.5, 1.0]])
      >>> best_anchors(anchors, np.array([[[0.0, 0.4, 0.5, 0.9]]])).tolist()
      [[1]]
    """
    iou = pairwise_iou(jnp.asarray(boxes, jnp.float32), jnp.asarray(anchors, jnp.float32))  # (B, M, A)
    return np.asarray(jnp.argmax(iou, axis=-1), np.int32)


def detection_box_score(cls_logits: jax.Array, targets: Mapping, *, logit: bool = False) -> jax.Array:
    """Per image, the mean over its true boxes of the class score of each box's class at its best anchor.

    Args:
      cls_logits: (N, h, w, A, K) or (N, h * w * A, K) sigmoid class logits of a detector.
      targets: {"anchor": (N, M) int best anchors (`best_anchors`), "label": (N, M) int box classes,
        "valid": (N, M) bool real boxes (False: padding)}.
      logit: average the logits instead of the sigmoid probabilities.

    Returns:
      (N,) float32; 0 for an image without boxes.

    Examples:
      >>> cls_logits = jnp.zeros((1, 3, 2)).at[0, 2, 1].set(2.0)
      >>> ones = jnp.ones((1, 2), int)
      >>> targets = {"anchor": jnp.array([[2, 0]]), "label": ones, "valid": ones > 0}
      >>> [round(float(v), 4) for v in detection_box_score(cls_logits, targets)]  # (sigmoid(2) + 0.5) / 2
      [0.6904]
    """
    n, k = cls_logits.shape[0], cls_logits.shape[-1]
    flat = cls_logits.reshape(n, -1, k).astype(jnp.float32)
    picked = flat[jnp.arange(n)[:, None], targets["anchor"], targets["label"]]  # (N, M)
    values = picked if logit else jax.nn.sigmoid(picked)
    valid = targets["valid"].astype(jnp.float32)
    return jnp.sum(values * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)


def segmentation_pixel_score(logits: jax.Array, mask: jax.Array, *, logit: bool = False) -> jax.Array:
    """Per image, the mean over its digit pixels (true class 1..K-1) of the true class's probability.

    Args:
      logits: (N, H, W, K) per-pixel logits, class 0 the background.
      mask: (N, H, W) integer true classes; pixels outside 1..K-1 (background, ignore labels) are left out.
      logit: average the true class's logits instead of its softmax probabilities.

    Returns:
      (N,) float32; 0 for an image without digit pixels.

    Examples:
      >>> logits = jnp.zeros((1, 1, 2, 3)).at[0, 0, 1, 2].set(jnp.log(2.0))
      >>> [round(float(v), 4) for v in segmentation_pixel_score(logits, jnp.array([[[0, 2]]]))]  # 2 / 4
      [0.5]
    """
    k = logits.shape[-1]
    logits = logits.astype(jnp.float32)
    digit = (mask > 0) & (mask < k)
    index = jnp.where(digit, mask, 0).astype(jnp.int32)[..., None]
    chosen = jax.nn.log_softmax(logits, axis=-1) if not logit else logits
    values = jnp.take_along_axis(chosen, index, axis=-1)[..., 0]
    values = values if logit else jnp.exp(values)
    weight = digit.astype(jnp.float32)
    return jnp.sum(values * weight, axis=(1, 2)) / jnp.maximum(jnp.sum(weight, axis=(1, 2)), 1.0)


def _detection_probability(predict, images, targets):
    return detection_box_score(predict(images)[0], targets)


def _detection_logit(predict, images, targets):
    return detection_box_score(predict(images)[0], targets, logit=True)


def _detection_cam_objective(outputs, targets):
    return detection_box_score(outputs[0], targets, logit=True), None


def _segmentation_probability(predict, images, mask):
    return segmentation_pixel_score(predict(images), mask)


def _segmentation_logit(predict, images, mask):
    return segmentation_pixel_score(predict(images), mask, logit=True)


def _segmentation_cam_objective(outputs, mask):
    return segmentation_pixel_score(outputs, mask, logit=True), None


@dataclasses.dataclass(frozen=True)
class _TaskFunctions:
    """What a task explains (objective, cam_objective) and what its curves track (score)."""

    score: Callable  # (images, targets) -> (N,) in [0, 1]
    objective: Callable  # (images, targets) -> (N,), for the gradient methods
    cam_objective: Callable | None  # (outputs, targets) -> ((B,), aux), for Grad-CAM; None: class logit
    under: str  # the module path whose last conv Grad-CAM reads
    description: str


def _task_functions(task: str, predict: Callable) -> _TaskFunctions:
    if task == "detection":
        return _TaskFunctions(
            functools.partial(_detection_probability, predict),
            functools.partial(_detection_logit, predict),
            _detection_cam_objective,
            "backbone",
            "mean over the image's true boxes of the sigmoid probability of the box's class at its "
            "best-matching anchor (highest IoU with the box); gradients and Grad-CAM explain the mean of "
            "those logits",
        )
    if task == "segmentation":
        return _TaskFunctions(
            functools.partial(_segmentation_probability, predict),
            functools.partial(_segmentation_logit, predict),
            _segmentation_cam_objective,
            "encoder",
            "mean over the image's digit pixels of the softmax probability of the pixel's true class; "
            "gradients and Grad-CAM explain the mean of those logits",
        )
    raise ValueError(f"task must be detection or segmentation here; got {task!r}")


# ----------------------------------------------------------------------------------- model explanations


def attention_map(model, variables: Mapping, images: jax.Array) -> tuple[jax.Array | None, str]:
    """The model's own attention map at image resolution: the last spatial (or query) map it sows.

    Args:
      model: a Flax model whose attention modules sow "attention_map" (called with ``train=False``).
      variables: its variables.
      images: (B, H, W, C).

    Returns:
      ``(maps, note)``: (B, H, W) float32 and the module path, or ``(None, reason)`` when the model sows
      no map with a spatial extent (channel attention such as se / eca, or no attention at all) or its
      map is the same at every position of every image (``attention="none"`` sows ones): it ranks no
      pixel above another.
    """
    captured = capture_attention(model, variables, images, train=False)
    spatial = [(p, m) for p, m in captured.items() if m.image is not None]
    if spatial:
        path, amap = spatial[-1]
        flat = np.asarray(amap.image).reshape(len(amap.image), -1)
        if np.all(flat.max(axis=1) == flat.min(axis=1)):
            return None, f"the map sown by {path} is constant (no attention): it ranks no pixel"
        return amap.image, f"{amap.kind} map sown by {path}"
    if captured:
        kinds = sorted({m.kind for m in captured.values()})
        return None, f"its attention is {'/'.join(kinds)}-only (no spatial map to score)"
    return None, "the model sows no attention map"


def explain_all(
    model,
    variables: Mapping,
    images: jax.Array,
    targets,
    *,
    predict: Callable | None = None,
    ig_steps: int = 32,
    key: jax.Array | None = None,
    digit: np.ndarray | None = None,
    objective: Callable | None = None,
    cam_objective: Callable | None = None,
    under: str = "backbone",
) -> tuple[dict[str, jax.Array], dict[str, str]]:
    """Every applicable explanation of `targets` on `images`, as (B, H, W) maps.

    Args:
      model: a Flax model (called with ``train=False``).
      variables: its variables.
      images: (B, H, W, C).
      targets: (B,) integer classes to explain (a classifier), or with ``objective`` any pytree of arrays
        with a leading axis B (e.g. a detector's true boxes).
      predict: images -> logits of this classifier (default: a new closure; pass one object for all
        batches to reuse the compiled programs). Unused with ``objective``.
      ig_steps: integrated gradients' path points.
      key: PRNG key of the random map (default key 0).
      digit: (B, H, W) bool ground-truth mask for the oracle, or None (no oracle).
      objective: (images, targets) -> (B,) explained by the gradient methods instead of the target
        class's logit (e.g. `detection_box_score` of the model's outputs, logit=True); then
        ``cam_objective`` must be given too.
      cam_objective: (outputs, targets) -> ((B,), aux), Grad-CAM's objective of the model's outputs
        (`attn_jax.viz.explain.grad_cam_of_objective`).
      under: Grad-CAM reads the last conv under this module path ("backbone"; a segmenter's "encoder").

    Returns:
      ``(maps, notes)``: method -> (B, H, W) float32 maps for each method of METHODS that applies, and
      method -> a note (what the attention map is, or why a method was left out).

    Raises:
      ValueError: ``objective`` without ``cam_objective`` or the reverse.
    """
    if (objective is None) != (cam_objective is None):
        raise ValueError("objective and cam_objective must be given together (or neither)")
    maps, notes = {}, {}
    amap, notes["attention"] = attention_map(model, variables, images)
    if amap is not None:
        maps["attention"] = amap
        maps["inverted_attention"] = -amap  # a control: the map's lowest pixels first
        notes["inverted_attention"] = "the attention map negated (its lowest pixels rank first)"
    layer = last_conv(model, variables, images, under=under, train=False)
    if objective is None:
        predict = predict or functools.partial(_logits, model, variables)
        maps["grad_cam"] = grad_cam(model, variables, images, layer, class_index=targets, train=False)[0]
        maps["gradient_x_input"] = gradient_x_input(predict, images, targets)
        maps["integrated_gradients"] = integrated_gradients(predict, images, targets, steps=ig_steps)
    else:
        maps["grad_cam"] = grad_cam_of_objective(model, variables, images, layer, cam_objective, targets,
                                                 train=False)  # fmt: skip
        maps["gradient_x_input"] = gradient_x_input_of_objective(objective, images, targets)
        maps["integrated_gradients"] = integrated_gradients_of_objective(
            objective, images, targets, steps=ig_steps
        )
    notes["grad_cam"] = f"layer {layer}"
    notes["integrated_gradients"] = f"{ig_steps} midpoint steps from a zero baseline"
    key = jax.random.key(0) if key is None else key
    maps["random"] = jax.random.uniform(key, images.shape[:3], jnp.float32)
    if digit is not None:
        maps["oracle"] = jnp.asarray(digit, jnp.float32)
        notes["oracle"] = "the digits' ground-truth mask"
    else:
        notes["oracle"] = "the dataset has no masks"
    return maps, notes


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, variables, images):
    return model.apply(variables, images, train=False)


def _curve_kwargs(steps, chunk_size, deletion_baseline, insertion_baseline, key):
    for name, value in (("deletion_baseline", deletion_baseline), ("insertion_baseline", insertion_baseline)):
        if value not in BASELINES:
            raise ValueError(f"{name} must be one of {BASELINES}; got {value!r}")
    key = jax.random.key(0) if key is None else key
    common = {"steps": steps, "chunk_size": chunk_size}
    deletion = {**common, "baseline": deletion_baseline, "key": jax.random.fold_in(key, 0)}
    insertion = {**common, "baseline": insertion_baseline, "key": jax.random.fold_in(key, 1)}
    return deletion, insertion


def _collect(dele, ins, drop, increase) -> dict[str, np.ndarray]:
    out = {
        "deletion_curve": dele,
        "insertion_curve": ins,
        "deletion_auc": curve_auc(dele),
        "insertion_auc": curve_auc(ins),
        "average_drop": drop,
        "increase_in_confidence": increase,
    }
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def score_maps(
    predict: Callable,
    images: jax.Array,
    maps: jax.Array,
    targets: jax.Array,
    *,
    steps: int = 64,
    chunk_size: int = 16,
    deletion_baseline: str = "zero",
    insertion_baseline: str = "blur",
    key: jax.Array | None = None,
) -> dict[str, np.ndarray]:
    """Per-image faithfulness of maps: deletion / insertion curves and AUCs, Average Drop, Increase.

    By default deletion replaces pixels by zeros and insertion copies them onto the blurred image (sigma
    5 px), the defaults of attn_jax.metrics.

    Args:
      predict: images -> logits, as attn_jax.metrics takes it (reuse one object to compile once).
      images: (B, H, W, C).
      maps: (B, H, W).
      targets: (B,) integer classes whose probability is tracked.
      steps: S of the deletion and insertion curves.
      chunk_size: curve steps evaluated side by side.
      deletion_baseline: the deletion curve's baseline ("zero", "mean", "blur" or "road").
      insertion_baseline: the insertion curve's baseline.
      key: PRNG key of the "road" baseline's noise (deletion fold_in(key, 0), insertion fold_in(key, 1));
        None: key 0.

    Returns:
      NumPy arrays: deletion_curve, insertion_curve (B, S + 1); deletion_auc, insertion_auc,
      average_drop (percent), increase_in_confidence (0 or 1), each (B,).

    Raises:
      ValueError: as the metrics of attn_jax.metrics.
    """
    dk, ik = _curve_kwargs(steps, chunk_size, deletion_baseline, insertion_baseline, key)
    return _collect(
        deletion_curve(predict, images, maps, targets, **dk),
        insertion_curve(predict, images, maps, targets, **ik),
        average_drop(predict, images, maps, targets),
        increase_in_confidence(predict, images, maps, targets),
    )


def score_maps_by_score(
    score: Callable,
    images: jax.Array,
    maps: jax.Array,
    targets,
    *,
    steps: int = 64,
    chunk_size: int = 16,
    deletion_baseline: str = "zero",
    insertion_baseline: str = "blur",
    key: jax.Array | None = None,
) -> dict[str, np.ndarray]:
    """`score_maps` of any per-image score in [0, 1] (e.g. `detection_box_score` of a detector's outputs).

    Args:
      score: (images (N, H, W, C), targets) -> (N,), as attn_jax.metrics' `deletion_curve_by_score`
        takes it (reuse one object to compile once).
      images: (B, H, W, C).
      maps: (B, H, W).
      targets: a pytree of arrays with a leading axis B.
      steps, chunk_size, deletion_baseline, insertion_baseline, key: as in `score_maps`.

    Returns:
      As `score_maps`, the score in place of the label's probability.

    Raises:
      ValueError: as the metrics of attn_jax.metrics.
    """
    dk, ik = _curve_kwargs(steps, chunk_size, deletion_baseline, insertion_baseline, key)
    return _collect(
        deletion_curve_by_score(score, images, maps, targets, **dk),
        insertion_curve_by_score(score, images, maps, targets, **ik),
        average_drop_by_score(score, images, maps, targets),
        increase_in_confidence_by_score(score, images, maps, targets),
    )


def mean_ci(values, confidence: float = 0.95) -> dict:
    """Mean and Student-t confidence interval (scipy.stats.t.interval) of per-image values.

    Args:
      values: 1-D per-image values.
      confidence: the interval's level.

    Returns:
      {"mean", "ci95": [lo, hi] (None for fewer than 2 values; [mean, mean] when all are equal), "n"}.

    Examples:
      >>> mean_ci([1.0, 2.0, 3.0])["ci95"]
      [-0.4841..., 4.4841...]
    """
    from scipy import stats

    x = np.asarray(values, np.float64).reshape(-1)
    mean = float(np.mean(x)) if x.size else float("nan")
    if x.size < 2:
        ci = None
    else:
        sem = float(stats.sem(x))
        interval = [mean, mean] if sem == 0 else stats.t.interval(confidence, x.size - 1, mean, sem)
        ci = [float(v) for v in interval]
    return {"mean": mean, "ci95": ci, "n": int(x.size)}


def attention_location(maps: np.ndarray, digit: np.ndarray) -> dict:
    """Where a map sits: its mean on the digits' pixels and on the background, each map min-max
    normalised to [0, 1] per image (a constant map is all zeros).

    Args:
      maps: (B, H, W) maps.
      digit: (B, H, W) bool digit masks; images without digit or without background pixels are left out.

    Returns:
      {"digit_mean", "background_mean": mean_ci of the per-image means, "background_higher": fraction of
      images whose background mean exceeds their digit mean, "n"}.

    Examples:
      >>> maps = np.array([[[0.0, 1.0], [1.0, 1.0]]])
      >>> attention_location(maps, np.array([[[True, False], [False, False]]]))["background_higher"]
      1.0
    """
    m = np.asarray(maps, np.float64)
    d = np.asarray(digit, bool)
    lo, hi = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
    m = np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    on, off = d.sum(axis=(1, 2)), (~d).sum(axis=(1, 2))
    keep = (on > 0) & (off > 0)
    digit_mean = (m * d).sum(axis=(1, 2))[keep] / on[keep]
    background_mean = (m * ~d).sum(axis=(1, 2))[keep] / off[keep]
    return {
        "digit_mean": mean_ci(digit_mean),
        "background_mean": mean_ci(background_mean),
        "background_higher": float(np.mean(background_mean > digit_mean)) if keep.any() else float("nan"),
        "n": int(keep.sum()),
    }


# ------------------------------------------------------------------------------------------- the report


def _batches(config, examples: int, batch_size: int):
    """(images, labels, digit mask or None) numpy batches of the run's test split, `examples` in all."""
    from attn_jax.data import get_adapter, make_pipeline
    from attn_jax.viz.runs import eval_batches

    data_dir = config.data.dir
    if "segmentation" in get_adapter(config.data.dataset).tasks:
        it = eval_batches(
            config.data.dataset, "test", batch_size=batch_size, limit=examples, data_dir=data_dir
        )
        for b in it:
            keep = np.asarray(b["valid"], bool)
            yield np.asarray(b["image"])[keep], np.asarray(b["label"])[keep], np.asarray(b["digit"])[keep]
        return
    loader = make_pipeline(config.data.dataset, "test", batch_size=batch_size, data_dir=data_dir,
                           num_devices=1, shard_index=0, shard_count=1)  # fmt: skip
    seen = 0
    for b in loader:
        keep = np.asarray(b["valid"], bool) & (np.arange(seen, seen + len(b["valid"])) < examples)
        yield np.asarray(b["image"])[keep], np.asarray(b["label"])[keep], None
        seen += len(b["valid"])
        if seen >= examples:
            return


def _task_batches(config, task, examples: int, batch_size: int):
    """(images, targets, digit mask) numpy batches of a detection or segmentation run's test split:
    `examples` images with at least one true box (detection) or digit pixel (segmentation). Detection
    targets come from the detection view, the digit mask from the segmentation view of the same split
    (read side by side; their images must agree)."""
    from attn_jax.data import make_pipeline

    common = {"batch_size": batch_size, "data_dir": config.data.dir, "num_devices": 1, "shard_index": 0,
              "shard_count": 1}  # fmt: skip
    dataset = config.data.dataset
    masks = make_pipeline(dataset, "test", task="segmentation", **common)
    if task.name == "detection":
        anchors = np.asarray(task.anchors())
        boxes = make_pipeline(dataset, "test", **task.pipeline_kwargs(), **common)
    else:
        boxes = itertools.repeat(None)
    seen = 0
    for m, d in zip(masks, boxes):
        keep = np.asarray(m["valid"], bool)
        images, mask = np.asarray(m["image"]), np.asarray(m["mask"])
        if d is None:
            targets = mask.astype(np.int32)
            keep &= (mask > 0).any(axis=(1, 2))
        else:
            if not np.array_equal(np.asarray(d["image"]), images):
                raise ValueError(f"the detection and segmentation views of {dataset!r} test differ")
            valid = np.asarray(d["box_valid"], bool)
            targets = {
                "anchor": best_anchors(anchors, np.asarray(d["boxes"])),
                "label": np.asarray(d["box_labels"], np.int32),
                "valid": valid,
            }
            keep &= valid.any(axis=1)
        keep &= np.cumsum(keep) + seen <= examples
        seen += int(keep.sum())
        yield images[keep], jax.tree_util.tree_map(lambda t, k=keep: t[k], targets), mask[keep] > 0
        if seen >= examples:
            return


def _pad(x, n: int):
    """Every array of the pytree x with its first axis zero-padded to n (one compiled shape per batch)."""

    def pad(a):
        return a if len(a) == n else np.concatenate([a, np.zeros((n - len(a), *a.shape[1:]), a.dtype)])

    return jax.tree_util.tree_map(pad, x)


def _fmt(stat: dict) -> str:
    if stat["ci95"] is None:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} [{stat['ci95'][0]:.3f}, {stat['ci95'][1]:.3f}]"


def markdown(report: dict) -> str:
    """The report's table: one row per method, mean [95% CI] per metric, then the left-out methods.

    Args:
      report: the dict `faithfulness_report` returns (and writes as faithfulness.json).

    Returns:
      Markdown text.
    """
    lines = [
        "| method | " + " | ".join(_HEADERS[m] for m in METRICS) + " |",
        "| --- |" + " --- |" * len(METRICS),
    ]
    for name, row in report["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[m]) for m in METRICS) + " |")
    lines.append("")
    n = report["examples"]
    task = report.get("task", "classification")
    what = f"target: {report['target']} class" if task == "classification" else f"score: {report['score']}"
    lines.append(
        f"{report['family']} {task} on {report['dataset']} test, {n} images, {what}; mean [95% t interval "
        f"over images]; curves of {report['steps']} steps, baselines: deletion "
        f"{report['baselines']['deletion']}, insertion {report['baselines']['insertion']}."
    )
    location = report.get("attention_location")
    if location:
        lines.append(
            f"Attention map (min-max normalised per image): mean {_fmt(location['digit_mean'])} on the "
            f"digits' pixels, {_fmt(location['background_mean'])} on the background; higher on the "
            f"background in {location['background_higher']:.0%} of {location['n']} images."
        )
    for name, note in report["notes"].items():
        lines.append(f"- {name}: {note}")
    return "\n".join(lines) + "\n"


def draw_curves(path: str, report: dict) -> str:
    """faithfulness.png: the mean deletion and insertion curves of each method, side by side.

    Args:
      path: the PNG to write.
      report: the dict `faithfulness_report` returns.

    Returns:
      path.
    """
    from attn_jax.viz.draw import plt  # the Agg backend is set there

    task = report.get("task", "classification")
    ylabel = {"classification": "probability of the target class", "detection": "true boxes' class score",
              "segmentation": "digit pixels' true-class probability"}[task]  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for name, row in report["methods"].items():
            curve = np.asarray(row[f"{kind}_curve"])
            x = np.linspace(0.0, 1.0, len(curve))
            ax.plot(x, curve, label=f"{name} (AUC {row[f'{kind}_auc']['mean']:.3f})")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{kind} ({report['baselines'][kind]})")
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['family']} {task} ({report['dataset']}, {report['examples']} test images)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _classification_rows(model, variables, config, *, examples, batch_size, target, ig_steps, key, curve_kw):
    """Per-image scores of every method on a classification run; (per_image, notes, extra)."""
    predict = functools.partial(_logits, model, variables)
    per_image, notes, digits, attention = {}, {}, [], []
    correct = seen = 0
    for i, (images, labels, digit) in enumerate(_batches(config, examples, batch_size)):
        n = len(images)
        if n == 0:
            continue
        images_p = jnp.asarray(_pad(images, batch_size))
        logits = np.asarray(predict(images_p))[:n]
        correct += int(np.sum(np.argmax(logits, -1) == labels))
        seen += n
        targets = np.argmax(logits, -1) if target == "predicted" else labels
        targets_p = jnp.asarray(_pad(targets.astype(np.int32), batch_size))
        digit_p = None if digit is None else _pad(digit, batch_size)
        maps, notes = explain_all(model, variables, images_p, targets_p, predict=predict, ig_steps=ig_steps,
                                  key=jax.random.fold_in(key, i), digit=digit_p)  # fmt: skip
        for name, m in maps.items():
            scores = score_maps(
                predict, images_p, m, targets_p, key=jax.random.fold_in(key, 10**6 + i), **curve_kw
            )
            for metric, values in scores.items():
                per_image.setdefault(name, {}).setdefault(metric, []).append(values[:n])
        if digit is not None and "attention" in maps:
            digits.append(digit)
            attention.append(np.asarray(maps["attention"])[:n])
    extra = {"accuracy": correct / seen if seen else float("nan")}
    return per_image, notes, extra, seen, (digits, attention)


def _task_rows(model, variables, config, *, examples, batch_size, ig_steps, key, curve_kw):
    """Per-image scores of every method on a detection or segmentation run; (per_image, notes, extra)."""
    from attn_jax.train.tasks import make_task

    task = make_task(config)
    predict = functools.partial(_logits, model, variables)
    fns = _task_functions(config.task, predict)
    per_image, notes, digits, attention, clean = {}, {}, [], [], []
    seen = 0
    for i, (images, targets, digit) in enumerate(_task_batches(config, task, examples, batch_size)):
        n = len(images)
        if n == 0:
            continue
        seen += n
        images_p = jnp.asarray(_pad(images, batch_size))
        targets_p = jax.tree_util.tree_map(jnp.asarray, _pad(targets, batch_size))
        maps, notes = explain_all(model, variables, images_p, targets_p, ig_steps=ig_steps,
                                  key=jax.random.fold_in(key, i), digit=_pad(digit, batch_size),
                                  objective=fns.objective, cam_objective=fns.cam_objective,
                                  under=fns.under)  # fmt: skip
        for name, m in maps.items():
            scores = score_maps_by_score(fns.score, images_p, m, targets_p,
                                         key=jax.random.fold_in(key, 10**6 + i), **curve_kw)  # fmt: skip
            for metric, values in scores.items():
                per_image.setdefault(name, {}).setdefault(metric, []).append(values[:n])
        clean.append(np.asarray(fns.score(images_p, targets_p))[:n])
        if "attention" in maps:
            digits.append(digit)
            attention.append(np.asarray(maps["attention"])[:n])
    extra = {"score": fns.description, "clean_score": mean_ci(np.concatenate(clean)) if clean else None}
    return per_image, notes, extra, seen, (digits, attention)


def faithfulness_report(
    workdir: str,
    *,
    examples: int = 64,
    steps: int = 32,
    ig_steps: int = 32,
    out: str | None = None,
    target: str = "predicted",
    batch_size: int = 16,
    seed: int = 0,
    deletion_baseline: str = "zero",
    insertion_baseline: str = "blur",
    replica: int = 0,
) -> dict:
    """Score a trained run's test images with every applicable explanation.

    Loads the run (config.json and its latest verified checkpoint, read-only), explains the first
    `examples` test images with each method of METHODS that applies and scores the maps with deletion
    AUC, insertion AUC, Average Drop and Increase in Confidence; writes OUT/faithfulness.md,
    OUT/faithfulness.json and OUT/faithfulness.png. A classification run explains and tracks the target
    class; a detection run the true boxes' classes at their best anchors; a segmentation run the digit
    pixels' true classes (the module docstring gives the definitions). Detection and segmentation images
    without a true box or digit pixel are skipped.

    Args:
      workdir: an `attn-jax train` run of any of TASKS.
      examples: test images to score, >= 1.
      steps: S of the deletion / insertion curves, >= 1.
      ig_steps: integrated gradients' path points, >= 1.
      out: output directory (default workdir).
      target: classification only: "predicted" (the model's class, as in RISE) or "label" (the true
        class).
      batch_size: images explained and scored at a time, >= 1.
      seed: the random map's and the "road" noise's seed.
      deletion_baseline: the deletion curve's baseline, one of attn_jax.metrics' BASELINES.
      insertion_baseline: the insertion curve's baseline.
      replica: which of a K-seed run's replicas (seed config.seed + replica) to explain, in [0, K).

    Returns:
      The report written as faithfulness.json, with "paths" added.

    Raises:
      ValueError: a bad argument (one line), or a run of a task not in TASKS.
      FileNotFoundError: no run in workdir.
    """
    for name, value in (("examples", examples), ("steps", steps), ("ig_steps", ig_steps),
                        ("batch_size", batch_size)):  # fmt: skip
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
    curve_kw = {"steps": steps}
    _curve_kwargs(steps, 1, deletion_baseline, insertion_baseline, None)  # argument checks
    curve_kw.update(deletion_baseline=deletion_baseline, insertion_baseline=insertion_baseline)
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise FileNotFoundError(f"no run in {workdir!r} (config.json missing)")
    from attn_jax.viz.runs import load_run

    if not _is_int(replica) or replica < 0:
        raise ValueError(f"replica must be an integer >= 0; got {replica!r}")
    model, variables, config = load_run(workdir, replica=replica)
    if config.task not in TASKS:
        raise ValueError(f"faithfulness scores runs of {TASKS}; {workdir!r} is a {config.task} run")
    out = out or workdir
    os.makedirs(out, exist_ok=True)
    bs = min(batch_size, examples)
    key = jax.random.key(seed)
    kw = {"examples": examples, "batch_size": bs, "ig_steps": ig_steps, "key": key, "curve_kw": curve_kw}
    if config.task == "classification":
        per_image, notes, extra, seen, located = _classification_rows(
            model, variables, config, target=target, **kw
        )
    else:
        per_image, notes, extra, seen, located = _task_rows(model, variables, config, **kw)
    if seen == 0:
        raise ValueError(f"the test split of {config.data.dataset!r} has no images to score")
    methods = {}
    for name in METHODS:
        if name not in per_image:
            continue
        values = {k: np.concatenate(v) for k, v in per_image[name].items()}
        row = {m: mean_ci(values[m]) for m in METRICS}
        row["deletion_curve"] = values["deletion_curve"].mean(0).tolist()
        row["insertion_curve"] = values["insertion_curve"].mean(0).tolist()
        methods[name] = row
    digits, attention = located
    baseline_names = {b: b for b in BASELINES} | {"blur": "blur (sigma 5 px)", "road": "road (noise 0.01)"}
    command = (
        f"python -m attn_jax.viz faithfulness --workdir {workdir} --examples {examples} --steps {steps} "
        f"--ig-steps {ig_steps} --batch-size {batch_size} --seed {seed} "
        f"--deletion-baseline {deletion_baseline} --insertion-baseline {insertion_baseline}"
    )
    if config.task == "classification":
        command += f" --target {target}"
    if replica:
        command += f" --replica {replica}"
    report = {
        "meta": {
            "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or platform.system()}, "
            f"{os.cpu_count()} CPUs, jax {jax.default_backend()}",
            "load": [round(v, 2) for v in os.getloadavg()],
        },
        "run": os.path.abspath(workdir),
        "task": config.task,
        "family": config.model.attention,
        "replica": replica,
        "replica_seed": config.seed + replica,
        "dataset": config.data.dataset,
        "examples": seen,
        **extra,
        "target": target if config.task == "classification" else "ground truth",
        "steps": steps,
        "ig_steps": ig_steps,
        "seed": seed,
        "baselines": {
            "deletion": baseline_names[deletion_baseline],
            "insertion": baseline_names[insertion_baseline],
        },
        "notes": notes,
        "methods": methods,
    }
    if attention:
        report["attention_location"] = attention_location(np.concatenate(attention), np.concatenate(digits))
    paths = {ext: os.path.join(out, f"faithfulness.{ext}") for ext in ("md", "json", "png")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(markdown(report))
    draw_curves(paths["png"], report)
    return {**report, "paths": paths}


# ------------------------------------------------------------------------------------ the command line


class _ArgumentError(Exception):
    pass


def _saved_num_seeds(workdir: str) -> int:
    """The num_seeds of the run in workdir (1 for a run saved before seeds existed or unreadable)."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            value = json.load(f).get("num_seeds", 1)
    except (OSError, ValueError, AttributeError):
        return 1
    return value if _is_int(value) and value >= 1 else 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage first)
        raise _ArgumentError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m attn_jax.viz faithfulness",
        description="Score a trained classification, detection or segmentation run's explanations: "
        "deletion / insertion AUC, Average Drop, Increase in Confidence (faithfulness.{md,json,png}).",
    )
    p.add_argument(
        "--workdir", required=True, help="an `attn-jax train` classification, detection or segmentation run"
    )
    p.add_argument("--examples", type=int, default=64, help="test images to score (default 64)")
    p.add_argument("--steps", type=int, default=32, help="steps of the deletion / insertion curves")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated gradients' path points")
    p.add_argument(
        "--target", default="predicted", help="classification: class explained and tracked, predicted | label"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the random map and of the road noise")
    p.add_argument(
        "--replica", type=int, default=0, help="a K-seed run's replica to explain (seed + replica), in [0, K)"
    )
    p.add_argument(
        "--deletion-baseline", default="zero", help=f"one of {', '.join(BASELINES)} (default zero)"
    )
    p.add_argument(
        "--insertion-baseline", default="blur", help=f"one of {', '.join(BASELINES)} (default blur)"
    )
    p.add_argument("--out", default=None, help="output directory (default: the workdir)")
    return p


def main(argv=None) -> dict:
    """`python -m attn_jax.viz faithfulness --workdir RUN [--examples N] [--steps S] [--out DIR]`.

    Bad arguments (or a missing run) print one line and exit with status 2.
    """
    try:
        args = _parser().parse_args(argv)
        if not os.path.isdir(args.workdir):
            raise _ArgumentError(f"--workdir {args.workdir!r} is not a directory")
        if not os.path.isfile(os.path.join(args.workdir, "config.json")):
            raise _ArgumentError(f"--workdir {args.workdir!r} holds no run (config.json missing)")
        for name in ("examples", "steps", "ig_steps", "batch_size"):
            if getattr(args, name) < 1:
                raise _ArgumentError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
        num_seeds = _saved_num_seeds(args.workdir)
        if not 0 <= args.replica < num_seeds:
            raise _ArgumentError(
                f"--replica must be in [0, {num_seeds}) (the run's num_seeds); got {args.replica}"
            )
        if args.target not in TARGETS:
            raise _ArgumentError(f"--target must be one of {', '.join(TARGETS)}; got {args.target!r}")
        for name in ("deletion_baseline", "insertion_baseline"):
            if getattr(args, name) not in BASELINES:
                flag = "--" + name.replace("_", "-")
                raise _ArgumentError(
                    f"{flag} must be one of {', '.join(BASELINES)}; got {getattr(args, name)!r}"
                )
    except _ArgumentError as e:
        print(f"python -m attn_jax.viz faithfulness: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    report = faithfulness_report(
        args.workdir, examples=args.examples, steps=args.steps, ig_steps=args.ig_steps, out=args.out,
        target=args.target, batch_size=args.batch_size, seed=args.seed,
        deletion_baseline=args.deletion_baseline, insertion_baseline=args.insertion_baseline,
        replica=args.replica,
    )  # fmt: skip
    print(markdown(report), end="")
    print(f"wrote {', '.join(report['paths'].values())}")
    return report
