"""Trace-time argument checks shared by `functional` and `kernels` (below both, so neither imports the other
for them): bad input raises ValueError naming the argument and its shape. Also the one piece of input
preparation every attention path shares: `zero_masked_positions`, which keeps whatever masked-out
positions hold out of the arithmetic."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

FULLY_MASKED_MODES = ("zero", "uniform", "nan")
MASK_CONVENTION = (
    "mask must be a bool array, True = may attend, False = masked out; got dtype {dtype}. "
    "A 0/1 mask converts with mask.astype(bool); an additive mask (0 = attend, -inf = masked) with "
    "mask == 0; a float bias to add to the scores is not a mask: add it to the scores and call masked_softmax"
)


def check_array(name: str, x) -> None:
    """Raise unless `x` is an array (has shape and dtype): lists and scalars are rejected by name."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise ValueError(f"{name} must be an array (jax.Array or np.ndarray); got {type(x).__name__}")


def check_float(name: str, x) -> None:
    """Raise unless `x` is an array of a real floating dtype (integer/bool inputs would truncate)."""
    check_array(name, x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64); got {x.dtype} "
            f"with shape {tuple(x.shape)}: cast it, e.g. {name}.astype(jnp.float32)"
        )


def check_bool_mask(mask) -> None:
    """Raise unless `mask` is a bool array (a float or int mask is ambiguous: additive or 0/1?)."""
    check_array("mask", mask)
    if mask.dtype != jnp.bool_:
        raise ValueError(MASK_CONVENTION.format(dtype=mask.dtype))


def check_keys_nonempty(name: str, shape: Sequence[int]) -> None:
    """Raise when there is no key position (n = 0): attention over nothing has no defined context."""
    if shape[-2] == 0:
        raise ValueError(f"{name} has n = 0 positions (shape {tuple(shape)}); attention needs n >= 1")


def check_rank(name: str, shape: Sequence[int], min_rank: int, layout: str) -> None:
    """Raise unless `shape` has at least `min_rank` dims; `layout` documents the expected form."""
    if len(shape) < min_rank:
        raise ValueError(f"{name} must have shape {layout} (rank >= {min_rank}); got shape {tuple(shape)}")


def check_exact_shape(name: str, shape: Sequence[int], expected: Sequence[int], layout: str) -> None:
    """Raise unless `shape == expected`."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {layout} = {tuple(expected)}; got shape {tuple(shape)}")


def check_dim(name: str, shape: Sequence[int], axis: int, size: int, why: str) -> None:
    """Raise unless `shape[axis] == size`; `why` says which other argument fixes the size."""
    if shape[axis] != size:
        raise ValueError(f"{name} has size {shape[axis]} on axis {axis} (shape {tuple(shape)}) but {why}")


def broadcast_batch(named_shapes: dict[str, tuple[tuple[int, ...], int]]) -> tuple[int, ...]:
    """Broadcast the leading (batch) dims of several arrays.

    `named_shapes` maps an argument name to (full shape, number of trailing core dims).
    Returns the broadcast batch shape or raises a ValueError listing every shape.
    """
    batches = {k: s[: len(s) - core] for k, (s, core) in named_shapes.items()}
    try:
        return tuple(np.broadcast_shapes(*batches.values()))
    except ValueError:
        listing = ", ".join(f"{k} {named_shapes[k][0]}" for k in named_shapes)
        raise ValueError(f"leading batch dims do not broadcast: {listing}") from None


def check_mask(mask_shape: Sequence[int], target: Sequence[int]) -> None:
    """Raise unless a mask of `mask_shape` broadcasts to `target` (..., m, n)."""
    try:
        out = np.broadcast_shapes(tuple(mask_shape), tuple(target))
    except ValueError:
        out = None
    if out is None or tuple(out) != tuple(target):
        raise ValueError(
            f"mask of shape {tuple(mask_shape)} is not broadcastable to scores shape {tuple(target)}"
        )


def check_fully_masked(mode: str) -> None:
    """Raise unless `mode` is one of FULLY_MASKED_MODES."""
    if mode not in FULLY_MASKED_MODES:
        raise ValueError(f"fully_masked must be one of {FULLY_MASKED_MODES}; got {mode!r}")


def check_chunk_size(chunk_size) -> None:
    """Raise unless `chunk_size` is None, "auto" or a positive Python int."""
    if chunk_size is None or (isinstance(chunk_size, str) and chunk_size == "auto"):
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, 'auto' or None; got {chunk_size!r}")


def validate_additive(query, keys, w_q, w_k, w_a, bias, values=None, mask=None) -> tuple[int, ...]:
    """Check every argument of the additive family; return the broadcast batch shape."""
    named = {"query": query, "keys": keys, "w_q": w_q, "w_k": w_k, "w_a": w_a, "bias": bias, "values": values}
    for name, x in named.items():
        if x is not None:
            check_float(name, x)
    if mask is not None:
        check_bool_mask(mask)
    check_rank("query", np.shape(query), 2, "(..., m, d_q)")
    check_rank("keys", np.shape(keys), 2, "(..., n, d_k)")
    check_rank("w_q", np.shape(w_q), 2, "(d_q, a)")
    if np.ndim(w_q) != 2:
        raise ValueError(f"w_q must have shape (d_q, a); got shape {np.shape(w_q)}")
    d_q, a = np.shape(w_q)
    d_k = np.shape(keys)[-1]
    check_dim("query", np.shape(query), -1, d_q, f"w_q has d_q = {d_q} (w_q shape {(d_q, a)})")
    check_exact_shape("w_k", np.shape(w_k), (d_k, a), "(d_k, a)")
    check_exact_shape("w_a", np.shape(w_a), (a,), "(a,)")
    if bias is not None:
        check_exact_shape("bias", np.shape(bias), (a,), "(a,)")
    check_keys_nonempty("keys", np.shape(keys))
    shapes = {"query": (np.shape(query), 2), "keys": (np.shape(keys), 2)}
    if values is not None:
        check_rank("values", np.shape(values), 2, "(..., n, d_v)")
        n = np.shape(keys)[-2]
        check_dim("values", np.shape(values), -2, n, f"keys have n = {n} positions")
        shapes["values"] = (np.shape(values), 2)
    batch = broadcast_batch(shapes)
    if mask is not None:
        m, n = np.shape(query)[-2], np.shape(keys)[-2]
        check_mask(np.shape(mask), batch + (m, n))
    return batch


def check_float32_kernel(name: str, *arrays) -> None:
    """Raise when `arrays` (query, keys, values) would be computed in float64: the fused kernels compute
    in float32, and a float64 result of float32 accuracy would pass for what it is not."""
    dtype = jnp.result_type(*arrays)
    if jnp.promote_types(dtype, jnp.float32) == jnp.float64:
        got = ", ".join(str(x.dtype) for x in arrays)
        raise ValueError(
            f"{name} computes in float32; got float64 inputs (query, keys, values: {got}): use "
            "implementation='xla' (or 'auto'), which computes in float64, or cast the inputs to float32"
        )


def _positions_used(valid, batch: tuple[int, ...], shape: tuple[int, ...]):
    """valid: bool batch + (p,), whether each (example, position) is used. Returns bool shape[:-1] for an
    array of `shape` (..., p, d) whose batch dims broadcast to `batch`: a position is used when any
    example sharing it uses it."""
    lead = len(batch) - (len(shape) - 2)
    shared = [lead + i for i, s in enumerate(shape[:-2]) if s == 1 and batch[lead + i] != 1]
    axes = tuple(range(lead)) + tuple(shared)
    if axes:
        valid = jnp.any(valid, axis=axes, keepdims=True)
    return valid.reshape(tuple(shape[:-1]))


def zero_masked_positions(query, keys, values, mask, batch: tuple[int, ...], fully_masked: str):
    """(query, keys, values) with every position that no output uses replaced by exact zeros.

    A key (and its value) that the mask hides from every query of every example sharing it, and a query
    row that may attend to no key, cannot change an output; but left as they are, a NaN or Inf there
    (padding often holds garbage) still reaches the outputs through 0 * NaN in the weighted sum, and the
    gradients through the backward of the discarded scores (0 * NaN again, however the scores are masked
    afterwards). Replacing them before any arithmetic makes them contribute exactly nothing, to outputs
    and to gradients (theirs is exactly 0). Under fully_masked="uniform" a row without a valid key
    averages every value, so values are then kept wherever such a row exists.

    Arguments are assumed validated: query (..., m, d_q), keys (..., n, d_k), values (..., n, d_v) and a
    bool mask broadcastable to batch + (m, n). mask=None returns the inputs unchanged.
    """
    if mask is None:
        return query, keys, values
    m, n = np.shape(query)[-2], np.shape(keys)[-2]
    mask = jnp.broadcast_to(jnp.asarray(mask), tuple(batch) + (m, n))
    row_valid = jnp.any(mask, axis=-1)  # batch + (m,)
    key_valid = jnp.any(mask, axis=-2)  # batch + (n,)
    value_valid = key_valid
    if fully_masked == "uniform":
        value_valid = jnp.any(mask | ~row_valid[..., None], axis=-2)

    def zero_unused(x, valid):
        used = _positions_used(valid, tuple(batch), tuple(np.shape(x)))
        return jnp.where(used[..., None], x, jnp.zeros((), x.dtype))

    return zero_unused(query, row_valid), zero_unused(keys, key_valid), zero_unused(values, value_valid)
