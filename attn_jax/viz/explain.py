"""Post-hoc explanations in JAX (jit): Grad-CAM for any conv layer, attention rollout for stacked query
attention, so learned attention can be compared with them on the same images.

Grad-CAM (Selvaraju et al. 2017): cam = relu(sum_c alpha_c A_c), alpha_c = spatial mean of d logit / d A_c,
for the activations A (B, h, w, C) of the chosen layer. variant="hirescam" (Draelos & Carin 2020) uses
relu(sum_c dlogit/dA_c * A_c) instead, which is zero wherever the logit does not depend on the layer.
The layer's output is reached with `flax.linen.intercept_methods`, so models need no changes.
Rollout (Abnar & Zuidema 2020): R = A_L' ... A_1' with A' = (1 - r) A + r I for square self-attention,
a non-square readout (m queries over n tokens) last, heads averaged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.viz.capture import AttentionMap, to_grid, upsample

VARIANTS = ("gradcam", "hirescam")


def _path(module: nn.Module) -> str:
    return "/".join(module.path)


def called_modules(model: nn.Module, variables: Mapping, images: jax.Array, **apply_kwargs) -> dict:
    """Every submodule the model calls, in call order (found by tracing only).

    Args:
      model: the Flax model.
      variables: its variables.
      images: input images (only their shape and dtype matter).
      **apply_kwargs: passed to ``model.apply``.

    Returns:
      {module path: bound module}, the model itself left out.
    """
    found = {}

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            found.setdefault(_path(context.module), context.module)
        return next_fun(*args, **kwargs)

    def run(v, x):
        with nn.intercept_methods(interceptor):
            return model.apply(v, x, **apply_kwargs)

    jax.eval_shape(run, variables, images)
    found.pop("", None)  # the model itself
    return found


def conv_layers(model: nn.Module, variables: Mapping, images: jax.Array, **apply_kwargs) -> list[str]:
    """Paths of the model's ``flax.linen.Conv`` modules, in call order (found by tracing only).

    Args:
      model: the Flax model.
      variables: its variables.
      images: (B, H, W, C) input images (only their shape and dtype matter).
      **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``).

    Returns:
      Module paths such as ``"backbone/conv1_0"``, usable as `grad_cam`'s ``layer``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.models import AttentionClassifier
      >>> from attn_jax.nn import SmallCNN
      >>> from attn_jax.viz import conv_layers
      >>> model = AttentionClassifier(SmallCNN(features=(8, 16), stride=4), 10)
      >>> images = jnp.zeros((2, 32, 32, 1))
      >>> conv_layers(model, model.init(jax.random.key(0), images), images)
      ['backbone/conv0_0', 'backbone/conv1_0', 'attention/conv']
    """
    called = called_modules(model, variables, images, **apply_kwargs)
    return [p for p, m in called.items() if isinstance(m, nn.Conv)]


def last_conv(model: nn.Module, variables: Mapping, images: jax.Array, under: str = "backbone", **kw) -> str:
    """Path of the last conv layer called under the module path ``under``: Grad-CAM's usual layer.

    Args:
      model: the Flax model.
      variables: its variables.
      images: (B, H, W, C) input images (only their shape and dtype matter).
      under: a module path prefix; ``"backbone"`` in the task models.
      **kw: passed to ``model.apply``.

    Returns:
      The module path, e.g. ``"backbone/conv1_0"``.

    Raises:
      ValueError: no conv layer under ``under`` (the message lists the model's conv layers).
    """
    convs = conv_layers(model, variables, images, **kw)
    found = [p for p in convs if p == under or p.startswith(under + "/")]
    if not found:
        raise ValueError(f"no conv layer under {under!r}; conv layers: {convs}")
    return found[-1]


def _outputs_and_layer(model, layer, apply_kwargs, variables, images, delta):
    """Model outputs and the output of module `layer` (first call), with `delta` added to it."""
    acts = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if not acts and context.method_name == "__call__" and _path(context.module) == layer:
            out = out if delta is None else out + delta
            acts.append(out)
        return out

    with nn.intercept_methods(interceptor):
        outputs = model.apply(variables, images, **dict(apply_kwargs))
    if not acts:
        raise ValueError(f"layer {layer!r} was not called by the model")
    if acts[0].ndim != 4:
        raise ValueError(f"grad_cam needs a layer output (B, h, w, C), got {acts[0].shape}")
    return outputs, acts[0]


def _class_logit(logits, class_index):
    """The objective of `grad_cam`: each image's logit of class_index (the predicted class where < 0)."""
    if not hasattr(logits, "ndim") or logits.ndim != 2:
        shape = getattr(logits, "shape", type(logits).__name__)
        raise ValueError(f"grad_cam needs logits (B, K); got {shape} (use grad_cam_of_objective)")
    target = jnp.where(class_index < 0, jnp.argmax(logits, axis=-1), class_index)
    return jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0], target


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _grad_cam(model, layer, apply_kwargs, variant, objective, variables, images, targets):
    run = lambda: _outputs_and_layer(model, layer, apply_kwargs, variables, images, None)  # noqa: E731
    shape = jax.eval_shape(run)[1]

    def score(delta):
        outputs, acts = _outputs_and_layer(model, layer, apply_kwargs, variables, images, delta)
        values, aux = objective(outputs, targets)
        return jnp.sum(values), (acts, aux)

    grads, (acts, aux) = jax.grad(score, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    acts, grads = acts.astype(jnp.float32), grads.astype(jnp.float32)
    if variant == "gradcam":
        cam = jnp.einsum("bhwc,bc->bhw", acts, grads.mean(axis=(1, 2)))
    else:
        cam = jnp.sum(grads * acts, axis=-1)
    cam = upsample(jax.nn.relu(cam), images.shape[1:3])
    peak = jnp.max(cam, axis=(1, 2), keepdims=True)
    return cam / jnp.where(peak > 0, peak, 1.0), aux


def _check_grad_cam_args(model, variables, images, layer, variant, apply_kwargs) -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    variables = {k: v for k, v in variables.items() if k != "intermediates"}
    called = called_modules(model, variables, images, **apply_kwargs)
    if layer not in called:
        convs = [p for p, m in called.items() if isinstance(m, nn.Conv)]
        raise ValueError(f"layer {layer!r} is not a module the model calls; its conv layers: {convs}")
    return variables


def grad_cam(
    model: nn.Module,
    variables: Mapping,
    images: jax.Array,
    layer: str,
    *,
    class_index: int | jax.Array | None = None,
    variant: str = "gradcam",
    **apply_kwargs,
) -> tuple[jax.Array, jax.Array]:
    """Grad-CAM (Selvaraju et al. 2017) of any layer, jitted, without changing the model.

    The layer's output is reached with ``flax.linen.intercept_methods``. ``"gradcam"`` weights the
    layer's channels by their spatially averaged gradient; ``"hirescam"`` multiplies gradient and
    activation position by position (zero where the logit does not read the layer). The ReLU of the
    result is upsampled to the images' resolution and scaled by its maximum.

    Args:
      model: a model returning logits (B, K).
      variables: its variables.
      images: (B, H, W, C) input images.
      layer: path of a module whose output is (B, h, w, C), e.g. from `conv_layers` or `last_conv`.
      class_index: None explains the predicted class; an int or (B,) ints a given one.
      variant: ``"gradcam"`` or ``"hirescam"``.
      **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``); must be hashable.

    Returns:
      ``(cams, classes)``: maps (B, H, W) in [0, 1] and the explained classes (B,).

    Raises:
      ValueError: an unknown variant, images not 4-D, a layer the model does not call, or outputs of
        other ranks than logits (B, K) and a layer output (B, h, w, C).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.models import AttentionClassifier
      >>> from attn_jax.nn import SmallCNN
      >>> from attn_jax.viz import grad_cam, last_conv
      >>> model = AttentionClassifier(SmallCNN(features=(8, 16), stride=4), 10)
      >>> images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
      >>> variables = model.init(jax.random.key(0), images)
      >>> layer = last_conv(model, variables, images)
      >>> cams, classes = grad_cam(model, variables, images, layer, class_index=3, train=False)
      >>> cams.shape, classes.tolist(), bool(cams.max() <= 1.0)
      ((2, 32, 32), [3, 3], True)
    """
    variables = _check_grad_cam_args(model, variables, images, layer, variant, apply_kwargs)
    idx = jnp.full((images.shape[0],), -1 if class_index is None else 0, jnp.int32)
    if class_index is not None:
        idx = jnp.broadcast_to(jnp.asarray(class_index, jnp.int32), idx.shape)
    kwargs = tuple(sorted(apply_kwargs.items()))
    return _grad_cam(model, layer, kwargs, variant, _class_logit, variables, images, idx)


def grad_cam_of_objective(
    model: nn.Module,
    variables: Mapping,
    images: jax.Array,
    layer: str,
    objective: Callable,
    targets,
    *,
    variant: str = "gradcam",
    **apply_kwargs,
) -> jax.Array:
    """Grad-CAM of any per-image objective of the model's outputs, e.g. a detector's true-box logits.

    As `grad_cam`, with the gradient of ``objective(outputs, targets)`` (summed over images) in place
    of a class logit, so models whose outputs are not (B, K) logits (detectors, segmenters) can be
    explained too.

    Args:
      model: the Flax model.
      variables: its variables.
      images: (B, H, W, C) input images.
      layer: path of a module whose output is (B, h, w, C).
      objective: (outputs, targets) -> (values (B,), aux), aux any pytree returned alongside (e.g.
        None); static under jit (reuse one object to reuse the compiled program).
      targets: a pytree of arrays passed to objective (e.g. per-image boxes).
      variant: ``"gradcam"`` or ``"hirescam"``.
      **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``); must be hashable.

    Returns:
      (B, H, W) maps in [0, 1].

    Raises:
      ValueError: an unknown variant, images not 4-D, a layer the model does not call or whose output
        is not (B, h, w, C).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.models import AttentionSegmenter
      >>> from attn_jax.nn import Decoder, SmallCNN
      >>> model = AttentionSegmenter(SmallCNN(features=(8, 16), stride=4), Decoder((8, 8)), num_classes=3)
      >>> images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1))
      >>> variables = model.init(jax.random.key(0), images)
      >>> objective = lambda logits, cls: (logits[..., 1].mean(axis=(1, 2)) * cls, None)
      >>> grad_cam_of_objective(model, variables, images, "encoder/conv1_0", objective, jnp.ones(2)).shape
      (2, 16, 16)
    """
    if not callable(objective):
        raise ValueError(
            f"objective must be a callable (outputs, targets) -> (values, aux); got {objective!r}"
        )
    variables = _check_grad_cam_args(model, variables, images, layer, variant, apply_kwargs)
    kwargs = tuple(sorted(apply_kwargs.items()))
    return _grad_cam(model, layer, kwargs, variant, objective, variables, images, targets)[0]


@functools.partial(jax.jit, static_argnames=("residual",))
def attention_rollout(maps: Sequence[jax.Array], residual: float = 0.5) -> jax.Array:
    """Attention rollout (Abnar and Zuidema 2020) of stacked query attention, jitted.

    Each square layer (m_l == n_l, self-attention) is mixed with the identity,
    (1 - residual) · A + residual · I, its rows re-normalised, and the layers multiplied in order; a
    non-square readout (e.g. additive attention's learned queries) may come last.

    Args:
      maps: the layers' maps in forward order, each (B, m_l, n_l) or (B, heads, m_l, n_l) (heads
        averaged).
      residual: the weight of the identity (the residual connection).

    Returns:
      (B, m, n) float32, with rows summing to 1.

    Raises:
      ValueError: no maps, a map of another rank, token counts that do not chain, or a non-square map
        before the last.

    Examples:
      >>> import jax.numpy as jnp
      >>> from attn_jax.viz import attention_rollout
      >>> self_attn = jnp.full((2, 4, 4), 0.25)
      >>> readout = jnp.array([[[1.0, 0.0, 0.0, 0.0]]] * 2)  # one query reading token 0
      >>> attention_rollout([self_attn, readout]).tolist()[0]
      [[0.625, 0.125, 0.125, 0.125]]
    """
    if not maps:
        raise ValueError("attention_rollout needs at least one map")
    out = None
    for i, a in enumerate(maps):
        a = a.astype(jnp.float32)
        a = a.mean(axis=1) if a.ndim == 4 else a
        if a.ndim != 3:
            raise ValueError(f"maps[{i}] must be (B, m, n) or (B, heads, m, n), got shape {maps[i].shape}")
        m, n = a.shape[1:]
        if out is not None and n != out.shape[1]:
            raise ValueError(f"maps[{i}] attends over {n} tokens but maps[{i - 1}] outputs {out.shape[1]}")
        if m == n:
            a = (1.0 - residual) * a + residual * jnp.eye(n)
            a = a / jnp.sum(a, axis=-1, keepdims=True)
        elif i != len(maps) - 1:
            raise ValueError(f"maps[{i}] is a non-square readout {a.shape[1:]}; only the last map may be")
        out = a if out is None else a @ out
    return out


def rollout_map(captured: Mapping[str, AttentionMap], image_hw: tuple[int, int], **kwargs) -> jax.Array:
    """The rollout of every captured query map, on the image grid.

    Args:
      captured: the result of `capture_attention`; its query maps are rolled out in call order.
      image_hw: (H, W) of the images.
      **kwargs: passed to `attention_rollout` (``residual``).

    Returns:
      (B, H, W) float32: the rollout averaged over the output queries, upsampled to the images.

    Raises:
      ValueError: no query map among ``captured``, or one `attention_rollout` refuses.
    """
    query = [m.raw for m in captured.values() if m.kind == "query"]
    if not query:
        raise ValueError(
            f"no query attention among captured maps: {[(p, m.kind) for p, m in captured.items()]}"
        )
    rolled = attention_rollout(query, **kwargs)
    return upsample(to_grid(rolled, "query", image_hw), image_hw)
