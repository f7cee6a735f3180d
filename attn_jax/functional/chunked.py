"""Memory-bounded additive attention: keys k at a time, online softmax, custom VJP.

Neither pass keeps the (..., m, n, a) tanh tensor. The forward pass scans over blocks of keys with
a running max, running sum and running context (online softmax). A block holds a few chunks of
k = chunk_size keys (m * K about BLOCK_SCORES), so the softmax bookkeeping and the context matmul run
on big blocks while tanh is evaluated k keys at a time. Without gradients it keeps only the context
(and, for `return_weights`, the (m, n) weights). Under differentiation it keeps the (m, n) softmax
weights for the backward pass, which does the softmax backward on them (d scores, d values) and then
scans the keys k at a time, recomputing one (m, k, a) tanh chunk per step and accumulating d(q W_q)
and d w_a per query row. Projections q W_q + b and h W_k are computed once, outside the scans, so
their gradients come from ordinary autodiff. Everything inside runs in float32 (float64 for float64
inputs).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from attn_jax.functional._blocking import largest_divisor_at_most
from attn_jax.functional._dtypes import accumulation_dtype, project
from attn_jax.functional.context import blocked_weighted_sum
from attn_jax.functional.softmax import apply_fully_masked


def _chunk(x, num_chunks: int, axis: int):
    """Split `axis` (length num_chunks * k, already padded) into chunks moved to the front."""
    shape = x.shape[:axis] + (num_chunks, x.shape[axis] // num_chunks) + x.shape[axis + 1 :]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unchunk(x, axis: int):
    """Inverse of `_chunk`: (num_chunks, ..., k, ...) -> (..., num_chunks * k, ...)."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2 :])


BLOCK_SCORES = 16384  # (m, K) scores per online-softmax step: few steps, big matmuls, small buffers


def _block_size(chunk_size: int, m: int, n: int) -> int:
    """Keys per scan step K: a multiple of chunk_size with m * K near BLOCK_SCORES, at most ~n."""
    block = chunk_size * max(1, BLOCK_SCORES // (max(m, 1) * chunk_size))  # m = 0: empty output
    return min(block, -(-n // chunk_size) * chunk_size)


def _chunk_scores(q_proj, k_chunk, w_a):
    """Scores (m, k) of one chunk: (m, a), (k, a), (a,).

    The (m, k, a) tanh chunk is materialised (a few MiB) and reduced by a matrix-vector product:
    on CPU that is about 1.4x faster than fusing tanh into the reduction over `a`, which XLA emits as a
    poorly vectorised row reduction (and 4x faster than the two-output reductions the backward uses).
    """
    hidden = jnp.tanh(q_proj[:, None, :] + k_chunk[None, :, :])
    return hidden @ w_a


def _block_scores(q_proj, k_block, w_a, valid, chunk_size: int):
    """Masked scores (m, K) of a block of K keys, tanh evaluated chunk_size keys at a time."""
    num = k_block.shape[0] // chunk_size
    if num == 1:
        scores = _chunk_scores(q_proj, k_block, w_a)
    else:
        chunks = lax.map(lambda kc: _chunk_scores(q_proj, kc, w_a), _chunk(k_block, num, 0))
        scores = _unchunk(chunks, 1)
    return jnp.where(valid, scores, -jnp.inf)


def _prepare(k_proj, values, mask, block: int, n: int):
    """Pad keys to a multiple of `block`; split keys, values and the validity mask into blocks."""
    num_blocks = -(-n // block)
    pad = num_blocks * block - n
    k_proj = jnp.pad(k_proj, ((0, pad), (0, 0)))
    values = jnp.pad(values, ((0, pad), (0, 0)))
    valid = jnp.arange(num_blocks * block) < n  # padded keys are never valid
    valid = valid[None, :] if mask is None else jnp.pad(mask, ((0, 0), (0, pad))) & valid[None, :]
    return _chunk(k_proj, num_blocks, 0), _chunk(values, num_blocks, 0), _chunk(valid, num_blocks, 1)


def _forward(q_proj, k_proj, values, w_a, mask, chunk_size, return_scores):
    """Online-softmax forward of one example.

    Returns context (m, d_v), the softmax normalisation (row max (m,), 1 / row sum (m,)) and the scores
    (m, n) | None; weights are exp(scores - max) / sum. Rows without a valid key get max 0 and 1/sum 0.
    Keeping max and sum (not log-sum-exp) keeps exp's argument small: exp(s - lse) loses about
    log(n) ulps of the weights, which the gradients inherit.
    """
    m, n = q_proj.shape[0], k_proj.shape[0]
    block = _block_size(chunk_size, m, n)
    k_blocks, v_blocks, valid_blocks = _prepare(k_proj, values, mask, block, n)

    def step(carry, xs):
        run_max, run_sum, acc = carry
        k_block, v_block, valid = xs
        scores = _block_scores(q_proj, k_block, w_a, jnp.broadcast_to(valid, (m, block)), chunk_size)
        new_max = jnp.maximum(run_max, jnp.max(scores, axis=-1))
        safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        p = jnp.exp(scores - safe_max[:, None])  # masked (-inf) scores give exactly 0
        rescale = jnp.exp(run_max - safe_max)  # 0 while the row has seen no valid key
        run_sum = run_sum * rescale + jnp.sum(p, axis=-1)
        acc = acc * rescale[:, None] + blocked_weighted_sum(p, v_block, p.dtype)
        return (new_max, run_sum, acc), (scores if return_scores else None)

    init = (
        jnp.full((m,), -jnp.inf, q_proj.dtype),
        jnp.zeros((m,), q_proj.dtype),
        jnp.zeros((m, values.shape[-1]), q_proj.dtype),
    )
    (run_max, run_sum, acc), scores = lax.scan(step, init, (k_blocks, v_blocks, valid_blocks))
    row_valid = run_sum != 0  # exactly 0 only without a valid key; a NaN sum stays NaN
    inv_sum = jnp.where(row_valid, 1.0 / jnp.where(row_valid, run_sum, 1.0), 0.0)
    context = acc * inv_sum[:, None]
    norm = (jnp.where(row_valid, run_max, 0.0), inv_sum)
    if return_scores:
        scores = _unchunk(scores, 1)[:, :n]
    return context, norm, scores


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _core(q_proj, k_proj, values, w_a, mask, chunk_size, return_weights):
    """One example: (m, a), (n, a), (n, d_v), (a,), bool (m, n) | None -> (context, weights | None)."""
    context, norm, scores = _forward(q_proj, k_proj, values, w_a, mask, chunk_size, return_weights)
    return context, (_weights(scores, norm) if return_weights else None)


def _core_fwd(q_proj, k_proj, values, w_a, mask, chunk_size, return_weights):
    """Forward kept for the backward: the (m, n) softmax weights, never the (m, n, a) tanh tensor."""
    context, norm, scores = _forward(q_proj, k_proj, values, w_a, mask, chunk_size, True)
    weights = _weights(scores, norm)  # exactly 0 at masked keys and in rows without a valid key
    return (context, weights if return_weights else None), (q_proj, k_proj, values, w_a, weights)


def _weights(scores, norm):
    """Softmax weights (m, n) from scores (m, n) and the forward's (row max, 1 / row sum)."""
    row_max, inv_sum = norm
    return jnp.exp(scores - row_max[:, None]) * inv_sum[:, None]


def _add_pair(x, y):
    return x[0] + y[0], x[1] + y[1]


REDUCE_GROUP = 16  # terms per sequential sum in the backward's reductions (~16 ulps); groups then as a tree


def _pair_sums(x, y, axis: int):
    """Sums of x and y over `axis` as one two-output reduction, in groups of <= REDUCE_GROUP terms.

    XLA's CPU backend emits a two-output reduction over a short axis as one vectorised loop with the
    producer (here tanh) fused in; a one-output or long reduction takes a path about 5x slower
    (`python benchmarks/xla_reductions.py`).
    """
    n = x.shape[axis]
    group = largest_divisor_at_most(n, REDUCE_GROUP)
    split = lambda t: t.reshape(t.shape[:axis] + (n // group, group) + t.shape[axis + 1 :])
    zero = jnp.zeros((), x.dtype)
    sums = lax.reduce((split(x), split(y)), (zero, zero), _add_pair, (axis + 1,))
    return tuple(jnp.sum(t, axis=axis) for t in sums)


def _chunk_grads(q_proj, w_a, carry, xs):
    """Backward of one chunk of k keys, tanh recomputed in (k, m, a) layout.

    xs = (keys (k, a), dL/dscores transposed (k, m)). carry = (sum_k d_s (1 - h^2) (m, a), d w_a (a,)).
    Returns the carry and d keys (k, a). Two reductions, each with its own fused tanh: over keys
    (-> d q_proj rows) and over queries (-> d keys); each also sums d_s h over its axis, and d w_a is
    the mean of the two totals, so neither reduction is a slow one-output reduction.
    """
    d_q, d_wa = carry
    k_chunk, d_s_t = xs
    d_s = d_s_t[:, :, None]

    def grad_terms(q, keys):
        hidden = jnp.tanh(keys[:, None, :] + q[None, :, :])
        return d_s * (1.0 - hidden * hidden), d_s * hidden  # d loss / d pre-activation (over w_a); d w_a

    d_pre, d_hidden = grad_terms(q_proj, k_chunk)
    sum_pre, sum_hidden = _pair_sums(d_pre, d_hidden, axis=0)  # (m, a) each
    if q_proj.shape[0] < REDUCE_GROUP:  # few queries: d keys is (nearly) elementwise, share the tanh
        d_keys = jnp.sum(d_pre, axis=1)
        d_wa = d_wa + jnp.sum(sum_hidden, axis=0)
    else:  # recomputing tanh (the barrier stops XLA from sharing it) beats storing it for both
        q_again, keys_again = lax.optimization_barrier((q_proj, k_chunk))
        d_keys, sum_hidden_keys = _pair_sums(*grad_terms(q_again, keys_again), axis=1)
        d_wa = d_wa + 0.5 * (jnp.sum(sum_hidden, axis=0) + jnp.sum(sum_hidden_keys, axis=0))
    # w_a applied here, not after the scan: XLA would fuse it into a transposing copy for d W_k
    return (d_q + sum_pre, d_wa), d_keys * w_a


def _core_bwd(chunk_size, return_weights, residuals, cotangents):
    """Backward of one example: softmax backward on the (m, n) weights, then tanh chunk by chunk.

    delta_i = sum_j p_ij dL/dp_ij is summed over the same weights it multiplies, as autodiff of a
    softmax does: the rows of d_s then sum to zero up to rounding, which keeps d q_proj accurate.
    """
    q_proj, k_proj, values, w_a, weights = residuals
    d_context, d_weights = cotangents
    n = k_proj.shape[0]
    d_p = d_context @ values.T  # (m, n)
    if return_weights:
        d_p = d_p + d_weights
    delta = jnp.sum(weights * d_p, axis=-1, keepdims=True)
    d_s = weights * (d_p - delta)  # d loss / d scores; zero at masked keys
    d_values = weights.T @ d_context
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n  # padded keys have d_s = 0 and contribute nothing
    k_chunks = _chunk(jnp.pad(k_proj, ((0, pad), (0, 0))), num_chunks, 0)
    ds_chunks = _chunk(jnp.pad(d_s.T, ((0, pad), (0, 0))), num_chunks, 0)  # (chunks, k, m)
    init = (jnp.zeros_like(q_proj), jnp.zeros_like(w_a))
    step = functools.partial(_chunk_grads, q_proj, w_a)
    (d_q, d_wa), d_k = lax.scan(step, init, (k_chunks, ds_chunks))
    return d_q * w_a, _unchunk(d_k, 0)[:n], d_values, d_wa, None


_core.defvjp(_core_fwd, _core_bwd)


def chunked_additive_attention(
    query, keys, values, w_q, w_k, w_a, bias, mask, chunk_size, fully_masked, return_weights, batch
):
    """Chunked path of `additive_attention` (arguments already validated; `batch` = broadcast dims).

    Returns (context (*batch, m, d_v), weights (*batch, m, n) or None) in the accumulation dtype
    (float32, or float64 for float64 inputs).
    """
    m, n = query.shape[-2], keys.shape[-2]
    dtype = accumulation_dtype(query, keys, values)
    q_proj = project(query, w_q, dtype)
    if bias is not None:
        q_proj = q_proj + bias.astype(dtype)
    k_proj = project(keys, w_k, dtype)
    values = values.astype(dtype)
    size = math.prod(batch)

    def flat(x):
        return jnp.broadcast_to(x, batch + x.shape[-2:]).reshape((size,) + x.shape[-2:])

    args = [flat(q_proj), flat(k_proj), flat(values), w_a.astype(dtype)]
    axes = [0, 0, 0, None]
    if mask is not None:
        args.append(flat(jnp.broadcast_to(jnp.asarray(mask, bool), batch + (m, n))))
        axes.append(0)
    else:
        args.append(None)
        axes.append(None)
    core = lambda q, k, v, wa, mk: _core(q, k, v, wa, mk, int(min(chunk_size, n)), return_weights)
    context, weights = jax.vmap(core, in_axes=tuple(axes))(*args)
    context = context.reshape(batch + context.shape[1:])
    weights = None if weights is None else weights.reshape(batch + (m, n))
    if mask is None or fully_masked == "zero":
        return context, weights
    row_valid = jnp.any(args[4], axis=-1).reshape(batch + (m, 1))
    fill = jnp.mean(flat(values), axis=-2, keepdims=True).reshape(batch + (1, -1))
    fill = jnp.broadcast_to(fill if fully_masked == "uniform" else jnp.nan, context.shape)
    context = jnp.where(row_valid, context, fill)
    if weights is not None:
        weights = apply_fully_masked(weights, row_valid, fully_masked)
    return context, weights
