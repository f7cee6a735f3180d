"""Fused Pallas TPU (Mosaic) additive attention: same contract as `attn_jax.additive_attention`.

As in the GPU kernel (`additive_pallas.py`), the projections q W_q + b and h W_k run once as XLA
matmuls; the kernels (`_tpu_kernels.py`) compute tanh, the w_a reduction, an online softmax and the
context per (query block, key block) tile without the (m, n, a) tensor, and a custom VJP recomputes
tanh in two backward kernels (one per query block for d q, one per key block for d k, d v, d w_a).
Compiled through Mosaic when the program is lowered for TPU; a Pallas interpreter on other platforms.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from attn_jax.kernels import _common as C
from attn_jax.kernels import _tpu_kernels as K

LANES = K.LANES


def make_tpu_config(m, n, a, d_v, has_mask, *, interpret, mxu_dtype="float32", block_q=None, block_k=None,
                    block_a=None):  # fmt: skip
    """Tiles for the (8, 128) vector layout: bq a multiple of 8 (<= 128 by default), bk a multiple of
    128 (256 by default), values padded to 128 lanes, attention dims to 8 (a <= 128) or 128.

    block_q / block_k / block_a override the tiles; off the (8, 128) grid they only suit interpret mode."""
    bq = block_q or min(128, C.round_up(m, 8))
    bk = block_k or min(256, C.round_up(n, LANES))
    a_pad = C.round_up(a, 8) if a <= LANES else C.round_up(a, LANES)
    ac = block_a or min(a_pad, LANES)
    if not interpret and (bq % 8 or bk % LANES or (ac != a_pad and ac % LANES)):
        raise ValueError(
            f"TPU tiles must be block_q % 8 == 0 and block_k % 128 == 0 (block_a 128 or all of a); "
            f"got block_q={bq}, block_k={bk}, block_a={ac}"
        )
    return K.TpuConfig(
        bq=bq, bk=bk, ac=ac, n=n, m_pad=C.round_up(m, bq), n_pad=C.round_up(n, bk),
        a_pad=C.round_up(a_pad, ac), dv_pad=C.round_up(d_v, LANES), has_mask=has_mask,
        interpret=interpret, mxu_dtype=mxu_dtype,
    )  # fmt: skip


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch, cfg, name):
    """pallas_call for Mosaic: the last grid axis accumulates ("arbitrary"), the others are parallel."""
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=0, grid=grid, in_specs=in_specs, out_specs=out_specs, scratch_shapes=scratch
        ),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if cfg.interpret == "tpu" else bool(cfg.interpret),
        name=name,
    )


def _in_specs(cfg, by_query: bool, has_dw: bool, backward: bool):
    """BlockSpecs of (q, kT, v, w_a[, mask][, dctx, lse, delta][, dweights]) for a grid
    (batch, query block, key block) (`by_query`) or (batch, key block, query block)."""
    qk = (lambda b, i, j: (b, i, j)) if by_query else (lambda b, j, i: (b, i, j))
    at = lambda f: lambda b, x, y: f(*qk(b, x, y))  # noqa: E731  index map in (b, i, j) terms
    specs = [
        pl.BlockSpec((None, cfg.bq, cfg.a_pad), at(lambda b, i, j: (b, i, 0))),
        pl.BlockSpec((None, cfg.a_pad, cfg.bk), at(lambda b, i, j: (b, 0, j))),
        pl.BlockSpec((None, cfg.bk, cfg.dv_pad), at(lambda b, i, j: (b, j, 0))),
        pl.BlockSpec(memory_space=pltpu.SMEM),
    ]
    tile = pl.BlockSpec((None, cfg.bq, cfg.bk), at(lambda b, i, j: (b, i, j)))
    if cfg.has_mask:
        specs.append(tile)
    if backward:
        row = pl.BlockSpec((None, cfg.bq, LANES), at(lambda b, i, j: (b, i, 0)))
        specs += [pl.BlockSpec((None, cfg.bq, cfg.dv_pad), at(lambda b, i, j: (b, i, 0))), row, row]
        if has_dw:
            specs.append(tile)
    return specs


def _forward(q, kT, v, w_a, mask, cfg, write_scores):
    """-> context (B, m_pad, dv_pad), lse (B, m_pad, 128), scores (B, m_pad, n_pad) or None; float32."""
    batch, f32 = q.shape[0], jnp.float32
    (q, kT, v, w_a, mask), struct = C.align_varying((q, kT, v, w_a, mask))
    out_shape = [
        struct((batch, cfg.m_pad, cfg.dv_pad), f32),
        struct((batch, cfg.m_pad, LANES), f32),
    ]
    out_specs = [
        pl.BlockSpec((None, cfg.bq, cfg.dv_pad), lambda b, i, j: (b, i, 0)),
        pl.BlockSpec((None, cfg.bq, LANES), lambda b, i, j: (b, i, 0)),
    ]
    if write_scores:
        out_shape.append(struct((batch, cfg.m_pad, cfg.n_pad), f32))
        out_specs.append(pl.BlockSpec((None, cfg.bq, cfg.bk), lambda b, i, j: (b, i, j)))
    scratch = [pltpu.VMEM((cfg.bq, LANES), f32), pltpu.VMEM((cfg.bq, LANES), f32),
               pltpu.VMEM((cfg.bq, cfg.dv_pad), f32)]  # fmt: skip
    kernel = functools.partial(K.forward_kernel, cfg=cfg, write_scores=write_scores)
    args = (q, kT, v, w_a) + ((mask,) if cfg.has_mask else ())
    specs = _in_specs(cfg, True, False, False)
    grid = (batch, cfg.nq, cfg.nk)
    outs = _call(kernel, grid, specs, out_specs, out_shape, scratch, cfg, "additive_tpu_fwd")(*args)
    return outs[0], outs[1], (outs[2] if write_scores else None)


def _fused_bwd(cfg, with_weights, res, cotangents):
    q, kT, v, w_a, mask, ctx, lse, weights = res
    dctx, dweights, delta = C.softmax_delta(ctx, weights, cotangents, with_weights, keepdims=True)
    delta = jnp.broadcast_to(delta, lse.shape)
    has_dw = dweights is not None
    args = (q, kT, v, w_a) + ((mask,) if cfg.has_mask else ()) + (dctx.astype(v.dtype), lse, delta)
    args += (dweights,) if has_dw else ()
    args, struct = C.align_varying(args)
    batch, f32 = q.shape[0], jnp.float32
    dq = _call(
        functools.partial(K.dq_kernel, cfg=cfg, has_dw=has_dw), (batch, cfg.nq, cfg.nk),
        _in_specs(cfg, True, has_dw, True),
        pl.BlockSpec((None, cfg.bq, cfg.a_pad), lambda b, i, j: (b, i, 0)),
        struct(q.shape, f32), [], cfg, "additive_tpu_bwd_dq",
    )(*args)  # fmt: skip
    out_specs = [
        pl.BlockSpec((None, cfg.a_pad, cfg.bk), lambda b, j, i: (b, 0, j)),
        pl.BlockSpec((None, cfg.bk, cfg.dv_pad), lambda b, j, i: (b, j, 0)),
        pl.BlockSpec((None, None, cfg.a_pad, LANES), lambda b, j, i: (b, j, 0, 0)),
    ]
    out_shape = [
        struct(kT.shape, f32),
        struct((batch, cfg.n_pad, cfg.dv_pad), f32),
        struct((batch, cfg.nk, cfg.a_pad, LANES), f32),
    ]
    dkT, dv, dwa = _call(
        functools.partial(K.dk_kernel, cfg=cfg, has_dw=has_dw), (batch, cfg.nk, cfg.nq),
        _in_specs(cfg, False, has_dw, True), out_specs, out_shape,
        [pltpu.VMEM((cfg.a_pad, cfg.bk), f32)], cfg, "additive_tpu_bwd_dk",
    )(*args)  # fmt: skip
    return dq, dkT, dv.astype(v.dtype), jnp.sum(dwa[..., 0], axis=(0, 1)), None


# (B, m_pad, a_pad), (B, a_pad, n_pad), (B, n_pad, dv_pad), (a_pad,), mask int32 or None -> context
# (B, m_pad, dv_pad) and, if `with_weights`, weights (B, m_pad, n_pad); float32
_fused = C.fused_vjp(_forward, _fused_bwd, lambda lse: lse[..., :1])


def _mxu_dtype(values) -> str:
    """The matmuls' input dtype: bfloat16 when the values are, else float32."""
    return "bfloat16" if values.dtype == jnp.bfloat16 else "float32"


def _run(interpret, query, keys, values, *args, fully_masked, return_weights, blocks):
    """The kernel on validated arguments: Mosaic (interpret False), the generic Pallas interpreter (True)
    or the Pallas TPU interpreter ("tpu")."""
    mxu = _mxu_dtype(values)

    def make_cfg(m, n, a, d_v, has_mask, interpret, batch):
        return make_tpu_config(m, n, a, d_v, has_mask, interpret=interpret, mxu_dtype=mxu, **blocks)

    return C.run_kernel(
        _fused, make_cfg, interpret, query, keys, values, *args, fully_masked=fully_masked,
        return_weights=return_weights, transpose_q=False, value_dtype=jnp.dtype(mxu), mask_dtype=jnp.int32,
    )  # fmt: skip


def tpu_additive_attention(
    query,
    keys,
    values=None,
    *,
    w_q,
    w_k,
    w_a,
    bias=None,
    mask=None,
    fully_masked: str = "zero",
    return_weights: bool = True,
    interpret: bool | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    block_a: int | None = None,
):
    """Fused TPU-kernel additive attention; arguments and results as `attn_jax.additive_attention`.

    As in `pallas_additive_attention`, the projections run once as XLA matmuls and the kernels compute
    tanh, the w_a reduction, an online softmax and the context per tile in the TPU's (8, 128) vector
    layout; a custom VJP recomputes tanh in two backward kernels. tanh and the softmax run in float32;
    the matmuls take bfloat16 operands when the values are bfloat16, accumulating in float32. Masked
    positions contribute nothing whatever they hold, as in `attn_jax.additive_attention`.

    Args:
      query: (..., m, d_q) queries, float16, bfloat16 or float32.
      keys: (..., n, d_k) keys, n >= 1; leading dims broadcast with the other inputs'.
      values: (..., n, d_v) values; None: the keys.
      w_q: (d_q, a) query projection.
      w_k: (d_k, a) key projection.
      w_a: (a,) the vector that reduces tanh's output to a score.
      bias: (a,) or None, added to the query projection.
      mask: None or bool, broadcastable to (..., m, n); True = may attend.
      fully_masked: rows with no valid key: ``"zero"``, ``"uniform"`` or ``"nan"`` (see
        `attn_jax.masked_softmax`).
      return_weights: False returns None for the weights.
      interpret: None: Mosaic when the program is lowered for TPU, the generic Pallas interpreter on any
        other platform (chosen at lowering: an export for tpu from a CPU host carries the kernel); True:
        the Pallas TPU interpreter (CPU only; it simulates TPU memory); False: Mosaic.
      block_q: tile of query rows, a multiple of 8 for Mosaic (None: up to 128).
      block_k: tile of keys, a multiple of 128 for Mosaic (None: up to 256).
      block_a: chunk of the attention dim a, 128 or all of a for Mosaic (None: up to 128).

    Returns:
      (context (..., m, d_v), weights (..., m, n) or None) in the inputs' dtype.

    Raises:
      ValueError: as `attn_jax.additive_attention` (bad shapes, dtypes, mask, ``fully_masked``, no key),
        float64 inputs (the kernels compute in float32: use `attn_jax.additive_attention`), or, for
        Mosaic, tiles off the (8, 128) grid.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> q, h = jnp.ones((2, 3, 4)), jnp.ones((2, 5, 4))
      >>> w = dict(w_q=jnp.ones((4, 8)), w_k=jnp.ones((4, 8)), w_a=jnp.ones(8))
      >>> context, weights = jax.eval_shape(lambda q, h: tpu_additive_attention(q, h, **w), q, h)
      >>> context.shape, weights.shape
      ((2, 3, 4), (2, 3, 5))
    """
    blocks = dict(block_q=block_q, block_k=block_k, block_a=block_a)
    # interpret=True: the TPU interpreter (simulates VMEM / SMEM; catches out-of-bounds reads)
    return C.fused_attention(
        functools.partial(_run, blocks=blocks), ("tpu",), query, keys, values, w_q=w_q, w_k=w_k, w_a=w_a,
        bias=bias, mask=mask, fully_masked=fully_masked, return_weights=return_weights, interpret=interpret,
        forced_interpret="tpu", name="tpu_additive_attention",
    )  # fmt: skip


__all__ = ["make_tpu_config", "tpu_additive_attention"]
