"""Pallas TPU (Mosaic) kernel bodies for fused additive attention: forward, dq backward, dk/dv backward.

Layout for the TPU's (8 sublane, 128 lane) vector tiles: a score tile is (bq, bk) with queries on
sublanes (bq a multiple of 8) and keys on lanes (bk a multiple of 128). Per attention dim a the kernel
adds w_a[a] * tanh(q[:, a] + kT[a, :]), a column of the query projection q (bq, a_pad) broadcast along
lanes plus a row of the transposed key projection kT (a_pad, bk) broadcast along sublanes; w_a sits in
SMEM as scalars. Attention dims are walked in lane-aligned chunks of `ac` (<= 128), statically unrolled
inside a chunk. tanh and the softmax run in float32 on the VPU/EUP; the two matmuls per tile
(p @ v and dctx @ v^T, and p^T @ dctx in the backward) take `mxu_dtype` inputs (bfloat16 for bfloat16
values) with float32 accumulation. The key axis (forward, dq) or query axis (dk) is the innermost,
"arbitrary" grid axis; outputs stay resident in VMEM across it and accumulate. Row statistics (lse,
delta, running max / sum) are kept lane-replicated as (bq, 128). Rows with no valid key get lse = +inf,
so their weights, context and gradients are zero; a NaN or +Inf score at a valid key makes its row NaN.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

LANES = 128
F32 = jnp.float32
TRANS_B = (((1,), (1,)), ((), ()))  # x @ y^T
TRANS_A = (((0,), (0,)), ((), ()))  # x^T @ y


@dataclasses.dataclass(frozen=True)
class TpuConfig:
    """Static tile sizes and padded extents (hashable: a custom_vjp static argument)."""

    bq: int  # query rows per tile (multiple of 8)
    bk: int  # keys per tile (multiple of 128 on hardware)
    ac: int  # attention dims per unrolled chunk (a_pad if <= 128, else 128)
    n: int  # true number of keys (columns >= n are padding)
    m_pad: int
    n_pad: int
    a_pad: int
    dv_pad: int
    has_mask: bool
    interpret: bool | str  # False: Mosaic; True: the generic Pallas interpreter; "tpu": the TPU interpreter
    mxu_dtype: str = "float32"

    @property
    def nq(self) -> int:
        return self.m_pad // self.bq

    @property
    def nk(self) -> int:
        return self.n_pad // self.bk


def _for_each_dim(q_ref, k_ref, wa_ref, cfg: TpuConfig, body, carry):
    """carry = body(start, d, w, t, carry) for every attention dim a = start + d, where
    t = tanh(q[:, a] + kT[a, :]) (bq, bk) and w = w_a[a]; chunks of `ac` dims, unrolled inside a chunk."""

    def chunk(c, carry):
        start = c * cfg.ac
        if cfg.ac % LANES == 0:
            start = pl.multiple_of(start, LANES)
        qc = q_ref[:, pl.ds(start, cfg.ac)]  # (bq, ac)
        kc = k_ref[pl.ds(start, cfg.ac), :]  # (ac, bk)
        for d in range(cfg.ac):
            t = jnp.tanh(qc[:, d : d + 1] + kc[d : d + 1, :])
            carry = body(start, d, wa_ref[start + d], t, carry)
        return carry

    return lax.fori_loop(0, cfg.a_pad // cfg.ac, chunk, carry)


def _scores(q_ref, k_ref, wa_ref, cfg: TpuConfig):
    """e = sum_a w_a[a] tanh(q[:, a] + kT[a, :]) for this tile -> (bq, bk) float32."""
    zero = jnp.zeros((cfg.bq, cfg.bk), jnp.float32)
    return _for_each_dim(q_ref, k_ref, wa_ref, cfg, lambda s, d, w, t, acc: acc + w * t, zero)


def _masked_scores(q_ref, k_ref, wa_ref, mask_ref, k_block, cfg: TpuConfig):
    """Scores of the tile with padded keys (>= n) and masked-out pairs set to -inf."""
    s = _scores(q_ref, k_ref, wa_ref, cfg)
    valid = None
    if cfg.n < cfg.n_pad:
        cols = k_block * cfg.bk + lax.broadcasted_iota(jnp.int32, (cfg.bq, cfg.bk), 1)
        valid = cols < cfg.n
    if cfg.has_mask:
        allowed = mask_ref[...] != 0
        valid = allowed if valid is None else jnp.logical_and(valid, allowed)
    return s if valid is None else jnp.where(valid, s, -jnp.inf)


def _mxu(x, cfg: TpuConfig):
    return x.astype(jnp.dtype(cfg.mxu_dtype))


def _precision(cfg: TpuConfig):
    """float32 matmuls at full precision (not one bfloat16 pass); bfloat16 ones as they are."""
    return lax.Precision.HIGHEST if cfg.mxu_dtype == "float32" else lax.Precision.DEFAULT


def forward_kernel(*refs, cfg: TpuConfig, write_scores: bool):
    """Grid (batch, query block, key block). Online softmax over the key blocks; at the last one writes
    the normalised context (bq, dv_pad), lse (bq, 128) and, if asked, the raw scores tile."""
    q_ref, k_ref, v_ref, wa_ref = refs[:4]
    mask_ref = refs[4] if cfg.has_mask else None
    rest = refs[4 + cfg.has_mask :]
    ctx_ref, lse_ref = rest[:2]
    s_ref = rest[2] if write_scores else None
    m_sc, l_sc, acc_sc = rest[-3:]
    j = pl.program_id(2)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    s = _masked_scores(q_ref, k_ref, wa_ref, mask_ref, j, cfg)
    if write_scores:
        s_ref[...] = s
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # (bq, 128), lane-replicated
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows with nothing valid yet
    p = jnp.exp(s - m_safe[:, :1])  # exactly 0 where s = -inf
    corr = jnp.exp(m_prev - m_safe)
    l_sc[...] = corr * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
    pv = lax.dot(_mxu(p, cfg), _mxu(v_ref[...], cfg), precision=_precision(cfg), preferred_element_type=F32)
    acc_sc[...] = corr[:, :1] * acc_sc[...] + pv
    m_sc[...] = m_new

    @pl.when(j == cfg.nk - 1)
    def _finish():
        total = l_sc[...]
        live = total != 0.0  # empty only when exactly 0: a NaN/Inf score keeps its row NaN
        m_fin = jnp.where(live, m_sc[...], 0.0)
        ctx_ref[...] = acc_sc[...] / jnp.where(live, total, 1.0)[:, :1]
        lse_ref[...] = jnp.where(live, m_fin + jnp.log(jnp.where(live, total, 1.0)), jnp.inf)


def _score_grad(refs, k_block, cfg: TpuConfig):
    """Recompute p for the tile and return (p, ds = p * (dp - delta)), both (bq, bk) float32.

    refs = (q, kT, v, w_a, mask or None, dctx, lse, delta, dweights or None)."""
    q_ref, k_ref, v_ref, wa_ref, mask_ref, dc_ref, lse_ref, delta_ref, dw_ref = refs
    s = _masked_scores(q_ref, k_ref, wa_ref, mask_ref, k_block, cfg)
    p = jnp.exp(s - lse_ref[...][:, :1])  # lse = +inf on rows without a valid key
    dp = lax.dot_general(
        _mxu(dc_ref[...], cfg),
        _mxu(v_ref[...], cfg),
        TRANS_B,
        _precision(cfg),
        preferred_element_type=jnp.float32,
    )
    if dw_ref is not None:
        dp = dp + dw_ref[...]
    return p, p * (dp - delta_ref[...][:, :1])


def _split_backward_refs(refs, cfg: TpuConfig, has_dw: bool, n_out: int):
    """(inputs tuple for `_score_grad`, output refs) from a backward kernel's refs."""
    q_ref, k_ref, v_ref, wa_ref = refs[:4]
    rest = list(refs[4:])
    mask_ref = rest.pop(0) if cfg.has_mask else None
    dc_ref, lse_ref, delta_ref = rest[:3]
    dw_ref = rest[3] if has_dw else None
    outs = rest[3 + has_dw : 3 + has_dw + n_out]
    return (q_ref, k_ref, v_ref, wa_ref, mask_ref, dc_ref, lse_ref, delta_ref, dw_ref), outs, rest


def dq_kernel(*refs, cfg: TpuConfig, has_dw: bool):
    """Grid (batch, query block, key block): dq (bq, a_pad), dq[:, a] = w_a[a] sum_j ds (1 - t_a^2),
    accumulated over the key blocks. Each chunk's columns are gathered into a (bq, ac) tile by a lane
    select, so that the store is one aligned tile."""
    ins, (dq_ref,), _ = _split_backward_refs(refs, cfg, has_dw, 1)
    j = pl.program_id(2)

    @pl.when(j == 0)
    def _init():
        dq_ref[...] = jnp.zeros(dq_ref.shape, jnp.float32)

    _, ds = _score_grad(ins, j, cfg)
    lane = lax.broadcasted_iota(jnp.int32, (1, cfg.ac), 1)

    def chunk(c, carry):
        start = c * cfg.ac
        if cfg.ac % LANES == 0:
            start = pl.multiple_of(start, LANES)
        qc = ins[0][:, pl.ds(start, cfg.ac)]
        kc = ins[1][pl.ds(start, cfg.ac), :]
        tile = jnp.zeros((cfg.bq, cfg.ac), jnp.float32)
        for d in range(cfg.ac):
            t = jnp.tanh(qc[:, d : d + 1] + kc[d : d + 1, :])
            col = ins[3][start + d] * jnp.sum(ds * (1.0 - t * t), axis=1, keepdims=True)  # (bq, 1)
            tile = tile + jnp.where(lane == d, col, 0.0)
        dq_ref[:, pl.ds(start, cfg.ac)] += tile
        return carry

    lax.fori_loop(0, cfg.a_pad // cfg.ac, chunk, 0)


def dk_kernel(*refs, cfg: TpuConfig, has_dw: bool):
    """Grid (batch, key block, query block): dkT (a_pad, bk), dv (bk, dv_pad) and this key block's
    d w_a (a_pad, 128 lane-replicated), accumulated over the query blocks. Per attention dim a,
    dkT[a] = w_a[a] sum_i ds (1 - t_a^2) and d w_a[a] = sum_ij ds t_a; each is one sublane row."""
    ins, (dk_ref, dv_ref, dwa_ref), rest = _split_backward_refs(refs, cfg, has_dw, 3)
    dwa_sc = rest[-1]  # (a_pad, bk) per-key partial sums of d w_a
    i = pl.program_id(2)

    @pl.when(i == 0)
    def _init():
        dk_ref[...] = jnp.zeros(dk_ref.shape, jnp.float32)
        dv_ref[...] = jnp.zeros(dv_ref.shape, jnp.float32)
        dwa_sc[...] = jnp.zeros(dwa_sc.shape, jnp.float32)

    p, ds = _score_grad(ins, pl.program_id(1), cfg)
    dv_ref[...] += lax.dot_general(
        _mxu(p, cfg), _mxu(ins[5][...], cfg), TRANS_A, _precision(cfg), preferred_element_type=jnp.float32
    )

    def body(start, d, w, t, carry):
        row = pl.ds(start + d, 1)
        dk_ref[row, :] += w * jnp.sum(ds * (1.0 - t * t), axis=0, keepdims=True)
        dwa_sc[row, :] += jnp.sum(ds * t, axis=0, keepdims=True)
        return carry

    _for_each_dim(ins[0], ins[1], ins[3], cfg, body, 0)

    @pl.when(i == cfg.nq - 1)
    def _finish():
        dwa_ref[...] = jnp.broadcast_to(jnp.sum(dwa_sc[...], axis=1, keepdims=True), dwa_ref.shape)
