"""Pieces shared by the GPU (Triton) and TPU (Mosaic) additive-attention kernels: the XLA projections,
padding to the kernels' tiles, the fully-masked policies, and the per-platform choice of a kernel."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax


def project(x, w):
    """x (..., p, d) @ w (d, a) -> (..., p, a) float32 (the kernels compute tanh in float32)."""
    return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(jnp.float32)


def round_up(x: int, k: int) -> int:
    return -(-x // k) * k


def flat_padded(x, batch_shape, rows, cols, fill=0):
    """Broadcast x (..., r, c) to batch_shape, flatten the batch, zero-pad to (B, rows, cols)."""
    x = jnp.broadcast_to(x, batch_shape + x.shape[-2:])
    x = x.reshape((math.prod(batch_shape),) + x.shape[-2:])
    pad = ((0, 0), (0, rows - x.shape[1]), (0, cols - x.shape[2]))
    return jnp.pad(x, pad, constant_values=fill)


def fill_fully_masked(context, weights, values, row_valid, fully_masked, n):
    """Apply "uniform" / "nan" to rows without a valid key (the kernels already give "zero")."""
    if fully_masked == "uniform":
        mean_v = jnp.mean(values.astype(jnp.float32), axis=-2, keepdims=True)
        context = jnp.where(row_valid, context, mean_v)
        fill = 1.0 / n
    else:
        context = jnp.where(row_valid, context, jnp.nan)
        fill = jnp.nan
    weights = None if weights is None else jnp.where(row_valid, weights, fill)
    return context, weights


def on_platform(run, interpret, platforms, args):
    """run(interpret: bool, *args) -> outputs, with the kernel chosen when the program is lowered.

    interpret=None: the compiled kernel when lowering for one of `platforms` (e.g. ("cuda", "rocm")), the
    Pallas interpreter for any other platform; so a program traced on a CPU host and exported for an
    accelerator carries the kernel. True / False force the interpreter / the compiled kernel.
    """
    if interpret is not None:
        return run(bool(interpret), *args)

    def native(*a):
        return run(False, *a)

    def interpreted(*a):
        return run(True, *a)

    return lax.platform_dependent(*args, **{p: native for p in platforms}, default=interpreted)


def _varying(x) -> frozenset:
    """Mesh axes `x` varies over inside jax.shard_map (empty outside)."""
    return jax.typeof(x).manual_axis_type.varying


def align_varying(args):
    """Make the arrays of `args` (None allowed) vary over the same mesh axes, and return them with a
    factory struct(shape, dtype) -> jax.ShapeDtypeStruct for outputs varying like them.

    Inside `jax.shard_map` (check_vma) a pallas_call needs its out_shape to say over which mesh axes it
    varies; a replicated weight next to a batch-split input must first be cast to varying. Outside
    shard_map nothing varies and this changes nothing.
    """
    axes = frozenset().union(*(_varying(x) for x in args if x is not None))
    if not axes:
        return tuple(args), jax.ShapeDtypeStruct

    def cast(x):
        missing = None if x is None else axes - _varying(x)
        return lax.pcast(x, tuple(sorted(missing)), to="varying") if missing else x

    args = tuple(cast(x) for x in args)
    mat = jax.typeof(next(x for x in args if x is not None)).manual_axis_type

    def struct(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat)

    return args, struct
