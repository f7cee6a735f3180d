"""Fused Pallas additive attention: same contract as `attn_jax.additive_attention`.

Projections q W_q + b and h W_k run once as XLA matmuls (so their gradients come from ordinary
autodiff); the Pallas kernels take it from there. Forward: per (batch, query block) a loop over key
blocks computes tanh, the w_a reduction, an online softmax and the context on chip. Backward
(custom VJP): two kernels recompute tanh, one per query block (d q-projection) and one per key block
(d k-projection, d values, d w_a). When the program is lowered for a GPU the kernels go through Pallas'
Triton backend; for any other platform they run in Pallas interpret mode (slow, for tests and CPU CI).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from attn_jax.kernels import _additive_kernels as K
from attn_jax.kernels import _common as C

_GPU_BLOCKS = {"bq": 32, "bk": 32}  # default tiles for the Triton lowering (powers of two)


def _pow2(x: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(0, (x - 1).bit_length()))


def _gpu_cores() -> int:
    """Streaming multiprocessors of the default GPU (a guess of 132 when JAX does not say)."""
    return int(getattr(jax.devices()[0], "core_count", 0) or 132)


def make_config(m, n, a, d_v, has_mask, *, interpret, batch=1, block_q=None, block_k=None, block_a=None,
                key_splits=None, fast_tanh=False):  # fmt: skip
    """Choose tiles, key splits and padded extents.

    Triton needs power-of-two tiles (>= 16 keys); the largest live tile (ba, bq, bk) is kept near 4096
    elements, and keys are split so that batch x query blocks x splits fills the GPU twice over.
    Interpret mode prefers few, large tiles (every grid step and loop trip costs interpreter work).
    """
    if interpret:
        bq = block_q or min(_pow2(m), 64)
        bk = block_k or min(_pow2(n), 128)
        ba = block_a or _pow2(a)
        a_pad, dv_pad = C.round_up(a, ba), d_v
        splits = key_splits or 1
    else:  # requested tiles are rounded up to what Triton accepts
        bq = _pow2(block_q or min(_GPU_BLOCKS["bq"], _pow2(m)))
        bk = _pow2(block_k or min(_GPU_BLOCKS["bk"], _pow2(n)), 16)
        ba = _pow2(block_a or max(1, min(_pow2(a), 4096 // (bq * bk))))
        a_pad, dv_pad = C.round_up(_pow2(a), ba), _pow2(d_v)
        programs = batch * -(-m // bq)
        splits = key_splits or max(1, min(-(-n // bk), -(-2 * _gpu_cores() // programs)))
    return K.KernelConfig(
        bq=bq,
        bk=bk,
        ba=ba,
        n=n,
        m_pad=C.round_up(m, bq),
        n_pad=C.round_up(n, bk * splits),
        a_pad=a_pad,
        dv_pad=dv_pad,
        has_mask=has_mask,
        interpret=interpret,
        splits=splits,
        fast_tanh=fast_tanh,
    )


def _call(kernel, grid, in_specs, out_specs, out_shape, cfg, name):
    """pallas_call with Triton compiler params unless interpreting."""
    params = None
    if not cfg.interpret:
        from jax.experimental.pallas import triton as plgpu

        params = plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=cfg.interpret,
        compiler_params=params,
        name=name,
    )


def _specs(cfg, by_query: bool):
    """BlockSpecs of (qT, kT, v, w_a[, mask]) for a grid (batch, query block, key split) or a grid
    (batch, key block)."""
    a, mp, np_, dv = cfg.a_pad, cfg.m_pad, cfg.n_pad, cfg.dv_pad
    if by_query:
        specs = [
            pl.BlockSpec((None, a, cfg.bq), lambda b, i, s: (b, 0, i)),
            pl.BlockSpec((None, a, np_), lambda b, i, s: (b, 0, 0)),
            pl.BlockSpec((None, np_, dv), lambda b, i, s: (b, 0, 0)),
            pl.BlockSpec((a,), lambda b, i, s: (0,)),
        ]
        mask = pl.BlockSpec((None, cfg.bq, np_), lambda b, i, s: (b, i, 0))
    else:
        specs = [
            pl.BlockSpec((None, a, mp), lambda b, j: (b, 0, 0)),
            pl.BlockSpec((None, a, cfg.bk), lambda b, j: (b, 0, j)),
            pl.BlockSpec((None, cfg.bk, dv), lambda b, j: (b, j, 0)),
            pl.BlockSpec((a,), lambda b, j: (0,)),
        ]
        mask = pl.BlockSpec((None, mp, cfg.bk), lambda b, j: (b, 0, j))
    return specs + ([mask] if cfg.has_mask else [])


def _forward(qT, kT, v, w_a, mask, cfg, write_scores):
    """Forward kernel + split combine -> (context (B, m_pad, dv_pad), lse (B, m_pad), scores or None)."""
    batch, sp = qT.shape[0], cfg.splits
    f32 = jnp.float32
    (qT, kT, v, w_a, mask), struct = C.align_varying((qT, kT, v, w_a, mask))
    out_shape = [
        struct((batch, sp, cfg.m_pad, cfg.dv_pad), f32),
        struct((batch, sp, cfg.m_pad), f32),
        struct((batch, sp, cfg.m_pad), f32),
    ]
    row_spec = pl.BlockSpec((None, None, cfg.bq), lambda b, i, s: (b, s, i))
    out_specs = [
        pl.BlockSpec((None, None, cfg.bq, cfg.dv_pad), lambda b, i, s: (b, s, i, 0)),
        row_spec,
        row_spec,
    ]
    if write_scores:
        out_shape.append(struct((batch, cfg.m_pad, cfg.n_pad), f32))
        out_specs.append(pl.BlockSpec((None, cfg.bq, cfg.n_pad), lambda b, i, s: (b, i, 0)))
    kernel = functools.partial(K.forward_kernel, cfg=cfg, write_scores=write_scores)
    grid = (batch, cfg.m_pad // cfg.bq, sp)
    args = (qT, kT, v, w_a) + ((mask,) if cfg.has_mask else ())
    outs = _call(kernel, grid, _specs(cfg, True), out_specs, out_shape, cfg, "additive_fwd")(*args)
    ctx, lse = _combine_splits(*outs[:3])
    return ctx, lse, (outs[3] if write_scores else None)


def _combine_splits(acc, m_s, l_s):
    """Merge per-split online-softmax partials (B, S, m, ...) -> normalised context and lse (+inf where
    a row has no valid key; NaN, so a NaN row, where a valid score is NaN or +Inf)."""
    m_max = jnp.max(m_s, axis=1)
    m_safe = jnp.where(m_max == -jnp.inf, 0.0, m_max)
    scale = jnp.exp(m_s - m_safe[:, None])  # 0 for splits that saw no valid key
    total = jnp.sum(scale * l_s, axis=1)
    # Empty only when the sum is exactly 0 (no valid key): a NaN/Inf score makes it NaN and the row NaN.
    live = total != 0.0
    ctx = jnp.sum(scale[..., None] * acc, axis=1) / jnp.where(live, total, 1.0)[..., None]
    lse = jnp.where(live, m_safe + jnp.log(jnp.where(live, total, 1.0)), jnp.inf)
    return ctx, lse


def _fused_bwd(cfg, with_weights, res, cotangents):
    qT, kT, v, w_a, mask, ctx, lse, weights = res
    dctx, dweights, delta = C.softmax_delta(ctx, weights, cotangents, with_weights)
    batch = qT.shape[0]
    extra = (dctx, lse, delta) + (() if dweights is None else (dweights,))
    args = (qT, kT, v, w_a) + ((mask,) if cfg.has_mask else ()) + extra
    args, struct = C.align_varying(args)
    dqT = _backward_dq(args, batch, cfg, dweights is not None, struct)
    dkT, dv, dwa_parts = _backward_dk(args, batch, cfg, dweights is not None, struct)
    return dqT, dkT, dv, jnp.sum(dwa_parts, axis=(0, 1)), None


def _backward_dq(args, batch, cfg, has_dw, struct):
    """dq kernel over (batch, query block, key split); the per-split partials are summed here."""
    row = pl.BlockSpec((None, cfg.bq), lambda b, i, s: (b, i))
    specs = _specs(cfg, True) + [
        pl.BlockSpec((None, cfg.bq, cfg.dv_pad), lambda b, i, s: (b, i, 0)), row, row,
    ]  # fmt: skip
    if has_dw:
        specs.append(pl.BlockSpec((None, cfg.bq, cfg.n_pad), lambda b, i, s: (b, i, 0)))
    out_spec = pl.BlockSpec((None, None, cfg.a_pad, cfg.bq), lambda b, i, s: (b, s, 0, i))
    out_shape = struct((batch, cfg.splits, cfg.a_pad, cfg.m_pad), jnp.float32)
    kernel = functools.partial(K.dq_kernel, cfg=cfg, has_dw=has_dw)
    grid = (batch, cfg.m_pad // cfg.bq, cfg.splits)
    parts = _call(kernel, grid, specs, out_spec, out_shape, cfg, "additive_bwd_dq")(*args)
    return jnp.sum(parts, axis=1)


def _backward_dk(args, batch, cfg, has_dw, struct):
    specs = _specs(cfg, False) + [
        pl.BlockSpec((None, cfg.m_pad, cfg.dv_pad), lambda b, j: (b, 0, 0)),
        pl.BlockSpec((None, cfg.m_pad), lambda b, j: (b, 0)),
        pl.BlockSpec((None, cfg.m_pad), lambda b, j: (b, 0)),
    ]
    if has_dw:
        specs.append(pl.BlockSpec((None, cfg.m_pad, cfg.bk), lambda b, j: (b, 0, j)))
    nk = cfg.n_pad // cfg.bk
    out_specs = [
        pl.BlockSpec((None, cfg.a_pad, cfg.bk), lambda b, j: (b, 0, j)),
        pl.BlockSpec((None, cfg.bk, cfg.dv_pad), lambda b, j: (b, j, 0)),
        pl.BlockSpec((None, None, cfg.a_pad), lambda b, j: (b, j, 0)),
    ]
    out_shape = [
        struct((batch, cfg.a_pad, cfg.n_pad), jnp.float32),
        struct((batch, cfg.n_pad, cfg.dv_pad), jnp.float32),
        struct((batch, nk, cfg.a_pad), jnp.float32),
    ]
    kernel = functools.partial(K.dk_kernel, cfg=cfg, has_dw=has_dw)
    return _call(kernel, (batch, nk), specs, out_specs, out_shape, cfg, "additive_bwd_dk")(*args)


# (B, a_pad, m_pad), (B, a_pad, n_pad), (B, n_pad, dv_pad), (a_pad,), mask int8 or None -> context
# (B, m_pad, dv_pad) and, if `with_weights`, weights (B, m_pad, n_pad); float32
_fused = C.fused_vjp(_forward, _fused_bwd, lambda lse: lse[..., None])


def pallas_additive_attention(
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
    key_splits: int | None = None,
    fast_tanh: bool = False,
):
    """Fused-kernel additive attention; arguments and results as `attn_jax.additive_attention`.

    The projections q W_q + b and h W_k run once as XLA matmuls; the kernels then compute tanh, the w_a
    reduction, an online softmax and the context per tile, never holding the (m, n, a) tensor, and a
    custom VJP recomputes tanh in two backward kernels. All kernel arithmetic is float32. Masked
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
      interpret: None: Triton when the program is lowered for a GPU (cuda, rocm), the Pallas interpreter
        on any other platform (chosen at lowering, so an export for cuda from a CPU host carries the
        kernel); True / False force the interpreter / Triton.
      block_q: tile of query rows (None: chosen from the shapes).
      block_k: tile of keys (None: chosen from the shapes).
      block_a: chunk of the attention dim a (None: chosen from the shapes).
      key_splits: number of programs sharing one query block's keys (None: 1 in interpret mode, enough
        to fill the GPU otherwise).
      fast_tanh: use the GPU's ``tanh.approx.f32`` (about 2^-11 relative error; no effect in interpret
        mode).

    Returns:
      (context (..., m, d_v), weights (..., m, n) or None) in the inputs' dtype.

    Raises:
      ValueError: as `attn_jax.additive_attention` (bad shapes, dtypes, mask, ``fully_masked``, no key),
        or float64 inputs (the kernels compute in float32: use `attn_jax.additive_attention`).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> q, h = jnp.ones((2, 3, 4)), jnp.ones((2, 5, 4))
      >>> w = dict(w_q=jnp.ones((4, 8)), w_k=jnp.ones((4, 8)), w_a=jnp.ones(8))
      >>> context, weights = jax.eval_shape(lambda q, h: pallas_additive_attention(q, h, **w), q, h)
      >>> context.shape, weights.shape
      ((2, 3, 4), (2, 3, 5))
    """
    options = dict(block_q=block_q, block_k=block_k, block_a=block_a, key_splits=key_splits)
    options["fast_tanh"] = fast_tanh
    return C.fused_attention(
        functools.partial(_run, options=options), ("cuda", "rocm"), query, keys, values, w_q=w_q, w_k=w_k,
        w_a=w_a, bias=bias, mask=mask, fully_masked=fully_masked, return_weights=return_weights,
        interpret=interpret, name="pallas_additive_attention",
    )  # fmt: skip


def _run(interpret, *args, fully_masked, return_weights, options):
    """The kernel on validated arguments: Triton (interpret False) or the Pallas interpreter."""

    def make_cfg(m, n, a, d_v, has_mask, interpret, batch):
        return make_config(m, n, a, d_v, has_mask, interpret=interpret, batch=batch, **options)

    return C.run_kernel(
        _fused, make_cfg, interpret, *args, fully_masked=fully_masked, return_weights=return_weights,
        transpose_q=True, value_dtype=jnp.float32, mask_dtype=jnp.int8,
    )  # fmt: skip
