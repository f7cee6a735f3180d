"""Pieces shared by the GPU (Triton) and TPU (Mosaic) additive-attention kernels: the XLA projections,
padding to the kernels' tiles, the fully-masked policies, the per-platform choice of a kernel, the
custom-VJP op around a kernel's forward and backward, and the public entry both wrappers share."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from attn_jax import _checks


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


def fused_vjp(forward, backward, lse_column):
    """The custom-VJP op of a fused kernel: (q, kT, v, w_a, mask, cfg, with_weights) -> (context,) or
    (context, weights), float32, padded.

    forward(q, kT, v, w_a, mask, cfg, write_scores) -> (context, lse, scores or None); weights are
    exp(scores - lse) (0 where masked or lse = +inf), lse_column(lse) giving lse as a (B, m_pad, 1) column.
    backward(cfg, with_weights, residuals, cotangents) -> gradients of (q, kT, v, w_a, mask), with
    residuals (q, kT, v, w_a, mask, context, lse, weights or None).
    """

    def fused_fwd(q, kT, v, w_a, mask, cfg, with_weights):
        ctx, lse, scores = forward(q, kT, v, w_a, mask, cfg, with_weights)
        weights = jnp.exp(scores - lse_column(lse)) if with_weights else None
        out = (ctx, weights) if with_weights else (ctx,)
        return out, (q, kT, v, w_a, mask, ctx, lse, weights)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
    def fused(q, kT, v, w_a, mask, cfg, with_weights):
        return fused_fwd(q, kT, v, w_a, mask, cfg, with_weights)[0]

    fused.defvjp(fused_fwd, backward)
    return fused


def softmax_delta(ctx, weights, cotangents, with_weights, keepdims=False):
    """(dctx, dweights or None, delta): delta = rowsum(dctx * ctx) + rowsum(dweights * weights), the
    softmax backward's per-row term (Dao et al. 2022, FlashAttention)."""
    dctx = cotangents[0]
    dweights = cotangents[1] if with_weights else None
    delta = jnp.sum(dctx * ctx, axis=-1, keepdims=keepdims)
    if dweights is not None:
        delta = delta + jnp.sum(dweights * weights, axis=-1, keepdims=keepdims)
    return dctx, dweights, delta


def run_kernel(fused, make_cfg, interpret, query, keys, values, w_q, w_k, w_a, bias, mask, *, fully_masked,
               return_weights, transpose_q, value_dtype, mask_dtype):  # fmt: skip
    """A fused kernel on validated arguments: the XLA projections, padding to the kernel's tiles, the
    custom-VJP op `fused` (see fused_vjp), unpadding and the fully-masked policies.

    make_cfg(m, n, a, d_v, has_mask, interpret, batch) -> the kernel's config (m_pad, n_pad, a_pad,
    dv_pad); transpose_q: pass the query projection as (B, a_pad, m_pad) rather than (B, m_pad, a_pad);
    value_dtype / mask_dtype: what the kernel reads the values / mask as.
    Returns (context (..., m, d_v), weights (..., m, n) or None), float32.
    """
    batch = _checks.validate_additive(query, keys, w_q, w_k, w_a, bias, values=values, mask=mask)
    m, n, a, d_v = query.shape[-2], keys.shape[-2], w_a.shape[0], values.shape[-1]
    if m == 0 or math.prod(batch) == 0:  # no output element: nothing for a kernel to tile
        weights = jnp.zeros(batch + (m, n), jnp.float32) if return_weights else None
        return jnp.zeros(batch + (m, d_v), jnp.float32), weights
    query, keys, values = _checks.zero_masked_positions(query, keys, values, mask, batch, fully_masked)
    # a = 0 or d_v = 0: one zero column (w_a 0, values 0) changes nothing and gives the tiles a size
    cfg = make_cfg(m, n, max(a, 1), max(d_v, 1), mask is not None, interpret, math.prod(batch))
    q_proj = project(query, w_q)
    if bias is not None:
        q_proj = q_proj + bias.astype(jnp.float32)
    q = flat_padded(q_proj, batch, cfg.m_pad, cfg.a_pad)
    q = jnp.swapaxes(q, 1, 2) if transpose_q else q
    kT = jnp.swapaxes(flat_padded(project(keys, w_k), batch, cfg.n_pad, cfg.a_pad), 1, 2)
    v = flat_padded(values.astype(value_dtype), batch, cfg.n_pad, cfg.dv_pad)
    wa = jnp.pad(w_a.astype(jnp.float32), (0, cfg.a_pad - a))
    mask_p = None
    if mask is not None:
        mask_b = jnp.broadcast_to(mask, batch + (m, n))
        mask_p = flat_padded(mask_b.astype(mask_dtype), batch, cfg.m_pad, cfg.n_pad)
    outs = fused(q, kT, v, wa, mask_p, cfg, return_weights)
    context = outs[0][:, :m, :d_v].reshape(batch + (m, d_v))
    weights = outs[1][:, :m, :n].reshape(batch + (m, n)) if return_weights else None
    if mask is not None and fully_masked != "zero":
        row_valid = jnp.any(mask_b, axis=-1, keepdims=True)
        context, weights = fill_fully_masked(context, weights, values, row_valid, fully_masked, n)
    return context, weights


def fused_attention(run, platforms, query, keys, values, *, w_q, w_k, w_a, bias, mask, fully_masked,
                    return_weights, interpret, forced_interpret=True, name):  # fmt: skip
    """The public entry of a fused kernel (contract of `attn_jax.additive_attention`), `name` its public
    name (for errors): check the arguments (float64 inputs are a ValueError: the kernels compute in
    float32), call run(interpret, query, keys, values, w_q, w_k, w_a, bias, mask, fully_masked=...,
    return_weights=...) with the kernel chosen per lowering platform (see on_platform; a true
    `interpret` passes `forced_interpret`), and cast the results to the inputs' dtype."""
    _checks.check_fully_masked(fully_masked)
    values = keys if values is None else values
    _checks.validate_additive(query, keys, w_q, w_k, w_a, bias, values=values, mask=mask)
    _checks.check_float32_kernel(name, query, keys, values)
    out_dtype = jnp.result_type(query.dtype, keys.dtype, values.dtype)
    run = functools.partial(run, fully_masked=fully_masked, return_weights=return_weights)
    args = (query, keys, values, w_q, w_k, w_a, bias, mask)
    if interpret:
        context, weights = run(forced_interpret, *args)
    else:
        context, weights = on_platform(run, interpret, platforms, args)
    context = context.astype(out_dtype)
    return context, (None if weights is None else weights.astype(out_dtype))
