"""Run any attn_jax model and collect every attention map it sows, at image resolution.

Attention modules `sow` their map into the "intermediates" collection under the name "attention_map":
spatial (B, h, w) (or (B, h, w, 1)), query (B, m, n) over n = h*w flattened grid positions (or
(B, heads, m, n)), channel (B, C). `capture_attention` returns them by module path, each upsampled
bilinearly to the input's (H, W); query maps are averaged over queries (and heads) and their tokens
reshaped to the grid; channel maps have no spatial extent and are returned without an image map.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("spatial", "query", "channel")
SOW_NAME = "attention_map"


@dataclasses.dataclass(frozen=True)
class AttentionMap:
    """One captured attention map, as `capture_attention` returns it.

    Args:
      path: the module path ("backbone/block_1/attention"; a "#k" suffix when the module sowed k+1
        times).
      kind: ``"spatial"``, ``"query"`` or ``"channel"``.
      raw: the array as sown.
      grid: (h, w) of the map before upsampling, None for channel maps.
      image: (B, H, W) float32 at the input's resolution, None for channel maps (no spatial extent).
    """

    path: str
    kind: str
    raw: jax.Array
    grid: tuple[int, int] | None
    image: jax.Array | None


def _query_grid(n: int, image_hw: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) with h * w == n and h / w == H / W, or None when n tokens form no such grid."""
    big_h, big_w = image_hw
    h = round(math.sqrt(n * big_h / big_w))
    for cand in (h - 1, h, h + 1):
        if cand > 0 and n % cand == 0 and cand * big_w == (n // cand) * big_h:
            return cand, n // cand
    return None


def _looks_spatial(a: int, b: int, image_hw: tuple[int, int]) -> bool:
    big_h, big_w = image_hw
    return a * big_w == b * big_h and a <= big_h and b <= big_w


def infer_kind(raw: jax.Array, image_hw: tuple[int, int]) -> str:
    """The kind of a sown attention map, read from its shape.

    Rank 2 is a channel map; (B, h, w, 1) spatial; other rank-4 maps are query maps with heads. Rank 3
    is spatial when (h, w) has the image's aspect ratio and fits in it, else query when its n tokens
    form such a grid. A map that fits both (a (B, 16, 16) non-local map on a 4x4 grid) is a query map
    when every row sums to 1 (a softmax over keys), else spatial; `capture_attention`'s ``kinds=``
    overrides.

    Args:
      raw: the sown array, batch first.
      image_hw: (H, W) of the input images.

    Returns:
      ``"spatial"``, ``"query"`` or ``"channel"``.

    Raises:
      ValueError: a rank other than 2, 3 or 4, or a rank-3 map that fits no grid of the image.

    Examples:
      >>> import jax.numpy as jnp
      >>> from attn_jax.viz import infer_kind
      >>> infer_kind(jnp.zeros((2, 8, 8)), (64, 64)), infer_kind(jnp.zeros((2, 16)), (64, 64))
      ('spatial', 'channel')
      >>> infer_kind(jnp.full((2, 1, 64), 1 / 64), (64, 64))  # one query over an 8x8 grid
      'query'
    """
    shape = raw.shape
    if raw.ndim == 2:
        return "channel"
    if raw.ndim == 4:
        return "spatial" if shape[-1] == 1 else "query"
    if raw.ndim != 3:
        raise ValueError(f"attention map must have rank 2, 3 or 4 (batch first), got shape {shape}")
    spatial = _looks_spatial(shape[1], shape[2], image_hw)
    query = _query_grid(shape[2], image_hw) is not None
    if spatial and query:
        rows = np.asarray(jnp.sum(raw.astype(jnp.float32), axis=-1))
        return "query" if np.allclose(rows, 1.0, atol=1e-3) else "spatial"
    if spatial:
        return "spatial"
    if query:
        return "query"
    raise ValueError(
        f"cannot place attention map of shape {shape} on a {image_hw} image: neither a spatial (B, h, w) "
        "map with the image's aspect ratio nor a query map whose keys form such a grid"
    )


def to_grid(raw: jax.Array, kind: str, image_hw: tuple[int, int]) -> jax.Array | None:
    """The (B, h, w) float32 grid of a sown ``raw`` array of ``kind`` (None for channel maps).

    Args:
      raw: the sown array.
      kind: ``"spatial"``, ``"query"`` or ``"channel"``.
      image_hw: (H, W) of the input images, which fixes the grid of a query map's keys.

    Returns:
      (B, h, w) float32, or None for a channel map.

    Raises:
      ValueError: an unknown kind, or a query map whose keys form no grid of the image.
    """
    raw = jnp.asarray(raw, jnp.float32)
    if kind == "channel":
        return None
    if kind == "spatial":
        return raw[..., 0] if raw.ndim == 4 else raw
    if kind != "query":
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    per_key = raw.reshape(raw.shape[0], -1, raw.shape[-1]).mean(axis=1)  # mean over heads and queries
    grid = _query_grid(raw.shape[-1], image_hw)
    if grid is None:
        raise ValueError(f"query map of shape {raw.shape}: {raw.shape[-1]} keys form no grid for {image_hw}")
    return per_key.reshape(raw.shape[0], *grid)


def upsample(maps: jax.Array, image_hw: tuple[int, int]) -> jax.Array:
    """Bilinear (half-pixel centres) resize of attention maps to the image's resolution.

    Args:
      maps: (B, h, w) maps.
      image_hw: the target (H, W).

    Returns:
      (B, H, W) float32.

    Raises:
      ValueError: ``maps`` is not 3-D.

    Examples:
      >>> import jax.numpy as jnp
      >>> from attn_jax.viz import upsample
      >>> upsample(jnp.ones((2, 4, 4)), (32, 32)).shape
      (2, 32, 32)
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, h, w), got shape {maps.shape}")
    return jax.image.resize(maps.astype(jnp.float32), (maps.shape[0], *image_hw), "linear")


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> list[tuple[str, jax.Array]]:
    out = []
    for key, value in tree.items():
        if key == SOW_NAME and isinstance(value, tuple):
            path = "/".join(prefix) or "<root>"
            out += [(path if i == 0 else f"{path}#{i}", v) for i, v in enumerate(value)]
        elif isinstance(value, Mapping):
            out += _flatten(value, (*prefix, str(key)))
    return out


def _apply(model: nn.Module, variables, images, apply_kwargs: tuple):
    out, state = model.apply(variables, images, mutable=["intermediates"], **dict(apply_kwargs))
    return out, state.get("intermediates", {})


def _apply_sown(model: nn.Module, variables, images, apply_kwargs: tuple) -> dict:
    return _apply(model, variables, images, apply_kwargs)[1]


_run = jax.jit(_apply, static_argnums=(0, 3))


def _call_order(model: nn.Module, variables, images, apply_kwargs: tuple) -> list[str]:
    """Sown paths in call order (jit returns dicts with sorted keys; tracing alone keeps the order)."""
    order = []

    def paths(v, x):
        order.extend(p for p, _ in _flatten(_apply_sown(model, v, x, apply_kwargs)))
        return 0

    jax.eval_shape(paths, variables, images)
    return order


def capture_attention(
    model: nn.Module,
    variables: Mapping,
    images: jax.Array,
    *,
    kinds: Mapping[str, str] | None = None,
    with_output: bool = False,
    **apply_kwargs,
) -> dict[str, AttentionMap] | tuple[dict[str, AttentionMap], object]:
    """Every attention map ``model`` sows on ``images``, by module path, in call order.

    Runs ``model.apply`` once under ``jax.jit`` with the "intermediates" collection mutable. Spatial
    maps are upsampled bilinearly to the images' resolution; query maps (B, m, n) are averaged over
    queries (and heads) and their n tokens put back on the grid first; channel maps keep only ``raw``.

    Args:
      model: any Flax model whose attention modules sow "attention_map".
      variables: the model's variables (an "intermediates" entry is dropped first).
      images: (B, H, W, C) input images.
      kinds: path -> kind overrides for maps whose kind the shape leaves open (see `infer_kind`).
      with_output: also return the model's output from the same call.
      **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``); must be hashable.

    Returns:
      {path: `AttentionMap`}, or ``(maps, output)`` with ``with_output=True``.

    Raises:
      ValueError: ``images`` not 4-D, a ``kinds`` path that sowed nothing, or a map that fits no kind.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.models import AttentionClassifier
      >>> from attn_jax.nn import SmallCNN
      >>> from attn_jax.viz import capture_attention
      >>> model = AttentionClassifier(SmallCNN(features=(8, 16), stride=4), 10, attention="additive")
      >>> images = jnp.zeros((2, 32, 32, 1))
      >>> variables = model.init(jax.random.key(0), images)
      >>> maps = capture_attention(model, variables, images, train=False)
      >>> m = maps["attention"]
      >>> m.kind, m.raw.shape, m.grid, m.image.shape
      ('query', (2, 1, 64), (8, 8), (2, 32, 32))
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    variables = {k: v for k, v in variables.items() if k != "intermediates"}
    image_hw = tuple(images.shape[1:3])
    apply_kwargs = tuple(sorted(apply_kwargs.items()))
    output, sown = _run(model, variables, images, apply_kwargs)
    sown = dict(_flatten(sown))
    order = _call_order(model, variables, images, apply_kwargs)
    kinds = dict(kinds or {})
    unknown = set(kinds) - set(sown)
    if unknown:
        raise ValueError(f"kinds names paths that sowed no attention map: {sorted(unknown)}")
    out = {}
    for path in order:
        raw = sown[path]
        kind = kinds.get(path) or infer_kind(raw, image_hw)
        grid = to_grid(raw, kind, image_hw)
        image = None if grid is None else upsample(grid, image_hw)
        out[path] = AttentionMap(path, kind, raw, None if grid is None else tuple(grid.shape[1:]), image)
    return (out, output) if with_output else out
