"""Pallas kernel bodies for fused additive attention (forward, dq backward, dk/dv backward).

All arrays arrive padded (see `additive_pallas.py`) and transposed so that a chunk of the attention
dim is a leading slice: qT (a_pad, m_pad), kT (a_pad, n_pad) per batch element. Per (query block,
key block) tile the score e = sum_a w_a * tanh(q + k) is accumulated over attention-dim chunks of
`ba`, so the largest live tensor is (ba, bq, bk); the (m, n, a) tensor never exists. Everything is
float32. Rows with no valid key get lse = +inf, so their weights, context and gradients are zero.
A key split (grid axis 2 of the forward and dq kernels) covers `blocks_per_split` key blocks, so short
problems (few batch x query blocks) still fill the GPU; XLA combines the per-split partials.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static tile sizes and padded extents (hashable: a jit/custom_vjp static argument)."""

    bq: int  # query rows per program
    bk: int  # keys per inner-loop step
    ba: int  # attention-dim chunk per tanh evaluation
    n: int  # true number of keys (columns >= n are padding)
    m_pad: int
    n_pad: int
    a_pad: int
    dv_pad: int
    has_mask: bool
    interpret: bool
    splits: int = 1  # key range split over this many programs (partials combined in XLA)
    num_warps: int = 4
    num_stages: int = 2

    @property
    def blocks_per_split(self) -> int:
        return self.n_pad // (self.bk * self.splits)


def _scores(q_ref, k_ref, wa_ref, qs, ks, cfg: KernelConfig):
    """e[i, j] = sum_a w_a[a] tanh(qT[a, i] + kT[a, j]) for the (qs, ks) tile -> (bq, bk) float32."""

    def chunk(c, acc):
        sl = pl.ds(c * cfg.ba, cfg.ba)
        t = jnp.tanh(q_ref[sl, qs][:, :, None] + k_ref[sl, ks][:, None, :])  # (ba, bq, bk)
        return acc + jnp.sum(wa_ref[sl][:, None, None] * t, axis=0)

    return lax.fori_loop(0, cfg.a_pad // cfg.ba, chunk, jnp.zeros((cfg.bq, cfg.bk), jnp.float32))


def _valid(mask_ref, rows, cols, k_start, cfg: KernelConfig):
    """bool (bq, bk): key column inside the true n and allowed by the mask (None if all valid)."""
    valid = None
    if cfg.n < cfg.n_pad:
        valid = jnp.broadcast_to((k_start + jnp.arange(cfg.bk) < cfg.n)[None, :], (cfg.bq, cfg.bk))
    if cfg.has_mask:
        allowed = mask_ref[rows, cols] != 0
        valid = allowed if valid is None else jnp.logical_and(valid, allowed)
    return valid


def _dot(a, b, contract):
    """2-D float32 matmul contracting dims `contract` = (dim of a, dim of b).

    Triton's matmul needs every dim >= 16; smaller tiles (e.g. one query row) use a broadcast sum.
    """
    if min(a.shape + b.shape) >= 16:
        dims = (((contract[0],), (contract[1],)), ((), ()))
        return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)
    a = a if contract[0] == 1 else a.T  # (M, K)
    b = b if contract[1] == 0 else b.T  # (K, N)
    return jnp.sum(a[:, :, None] * b[None, :, :], axis=1)


def forward_kernel(*refs, cfg: KernelConfig, write_scores: bool):
    """Grid (batch, query block, key split). Online softmax over this split's key blocks; writes the
    unnormalised context, the running max and the normaliser (and the scores)."""
    q_ref, k_ref, v_ref, wa_ref = refs[:4]
    mask_ref = refs[4] if cfg.has_mask else None
    acc_ref, m_ref, l_ref = refs[4 + cfg.has_mask : 7 + cfg.has_mask]
    s_ref = refs[7 + cfg.has_mask] if write_scores else None
    all_q = slice(None)
    first = pl.program_id(2) * cfg.blocks_per_split

    def step(j, carry):
        acc, m_prev, l_prev = carry
        k_start = (first + j) * cfg.bk
        ks = pl.ds(k_start, cfg.bk)
        s = _scores(q_ref, k_ref, wa_ref, all_q, ks, cfg)
        valid = _valid(mask_ref, all_q, ks, k_start, cfg)
        if valid is not None:
            s = jnp.where(valid, s, -jnp.inf)
        if write_scores:
            s_ref[:, ks] = s
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows with nothing valid yet
        p = jnp.exp(s - m_safe[:, None])  # exactly 0 where s = -inf
        corr = jnp.exp(m_prev - m_safe)
        acc = corr[:, None] * acc + _dot(p, v_ref[ks, :], (1, 0))
        return acc, m_new, corr * l_prev + jnp.sum(p, axis=1)

    init = (
        jnp.zeros((cfg.bq, cfg.dv_pad), jnp.float32),
        jnp.full((cfg.bq,), -jnp.inf, jnp.float32),
        jnp.zeros((cfg.bq,), jnp.float32),
    )
    acc, m_i, l_i = lax.fori_loop(0, cfg.blocks_per_split, step, init)
    acc_ref[...] = acc
    m_ref[...] = m_i
    l_ref[...] = l_i


def _score_grad(refs, qs, ks, k_start, cfg):
    """Recompute p for the (qs, ks) tile and return (p, ds) with ds = p * (dp - delta), (bq, bk).

    refs = (q, k, v, w_a, mask or None, dctx, lse, delta, dweights or None); `k_start` is the global
    index of the tile's first key (for the ragged-n check).
    """
    q_ref, k_ref, v_ref, wa_ref, mask_ref, dc_ref, lse_ref, delta_ref, dw_ref = refs
    s = _scores(q_ref, k_ref, wa_ref, qs, ks, cfg)
    valid = _valid(mask_ref, qs, ks, k_start, cfg)
    if valid is not None:
        s = jnp.where(valid, s, -jnp.inf)
    p = jnp.exp(s - lse_ref[qs][:, None])  # lse = +inf on rows without a valid key
    dp = _dot(dc_ref[qs, :], v_ref[ks, :], (1, 1))
    if dw_ref is not None:
        dp = dp + dw_ref[qs, ks]
    return p, p * (dp - delta_ref[qs][:, None])


def _tanh_chunks(q_ref, k_ref, qs, ks, ds, cfg, on_chunk):
    """Recompute tanh per attention-dim chunk and hand (slice, t, ds * (1 - t^2)) to `on_chunk`."""

    def chunk(c, carry):
        sl = pl.ds(c * cfg.ba, cfg.ba)
        t = jnp.tanh(q_ref[sl, qs][:, :, None] + k_ref[sl, ks][:, None, :])  # (ba, bq, bk)
        on_chunk(sl, t, ds[None, :, :] * (1.0 - t * t))
        return carry

    lax.fori_loop(0, cfg.a_pad // cfg.ba, chunk, 0)


def dq_kernel(*refs, cfg: KernelConfig, has_dw: bool):
    """Grid (batch, query block, key split): this split's share of dqT (a_pad, bq),
    w_a * sum over its keys of ds * (1 - tanh^2)."""
    q_ref, k_ref, v_ref, wa_ref = refs[:4]
    rest = list(refs[4:])
    mask_ref = rest.pop(0) if cfg.has_mask else None
    dc_ref, lse_ref, delta_ref = rest[:3]
    dw_ref = rest[3] if has_dw else None
    dq_ref = rest[-1]
    dq_ref[...] = jnp.zeros(dq_ref.shape, jnp.float32)
    all_q = slice(None)
    first = pl.program_id(2) * cfg.blocks_per_split

    def on_chunk(sl, t, g):
        dq_ref[sl, :] = dq_ref[sl, :] + wa_ref[sl][:, None] * jnp.sum(g, axis=2)

    def step(j, carry):
        k_start = (first + j) * cfg.bk
        ks = pl.ds(k_start, cfg.bk)
        refs_ = (q_ref, k_ref, v_ref, wa_ref, mask_ref, dc_ref, lse_ref, delta_ref, dw_ref)
        _, ds = _score_grad(refs_, all_q, ks, k_start, cfg)
        _tanh_chunks(q_ref, k_ref, all_q, ks, ds, cfg, on_chunk)
        return carry

    lax.fori_loop(0, cfg.blocks_per_split, step, 0)


def dk_kernel(*refs, cfg: KernelConfig, has_dw: bool):
    """Grid (batch, key block): dkT (a_pad, bk), dv (bk, dv_pad) and this block's share of dw_a."""
    q_ref, k_ref, v_ref, wa_ref = refs[:4]
    rest = list(refs[4:])
    mask_ref = rest.pop(0) if cfg.has_mask else None
    dc_ref, lse_ref, delta_ref = rest[:3]
    dw_ref = rest[3] if has_dw else None
    dk_ref, dv_ref, dwa_ref = rest[-3:]
    dk_ref[...] = jnp.zeros(dk_ref.shape, jnp.float32)
    dwa_ref[...] = jnp.zeros(dwa_ref.shape, jnp.float32)
    k_start = pl.program_id(1) * cfg.bk
    all_k = slice(None)

    def step(i, dv):
        qs = pl.ds(i * cfg.bq, cfg.bq)
        refs_ = (q_ref, k_ref, v_ref, wa_ref, mask_ref, dc_ref, lse_ref, delta_ref, dw_ref)
        p, ds = _score_grad(refs_, qs, all_k, k_start, cfg)

        def on_chunk(sl, t, g):
            dk_ref[sl, :] = dk_ref[sl, :] + wa_ref[sl][:, None] * jnp.sum(g, axis=1)
            dwa_ref[sl] = dwa_ref[sl] + jnp.sum(jnp.sum(ds[None, :, :] * t, axis=2), axis=1)

        _tanh_chunks(q_ref, k_ref, qs, all_k, ds, cfg, on_chunk)
        return dv + _dot(p, dc_ref[qs, :], (0, 0))

    dv = lax.fori_loop(0, cfg.m_pad // cfg.bq, step, jnp.zeros((cfg.bk, cfg.dv_pad), jnp.float32))
    dv_ref[...] = dv
