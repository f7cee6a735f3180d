"""Memory-bounded additive attention: keys k at a time, two-pass softmax, custom VJP.

Neither pass keeps the (B, m, n, a) tanh tensor. The forward pass maps over chunks of k = chunk_size keys,
each step evaluating one (B, m, k, a) tanh block for the whole flat batch (it fits in cache) and
reducing it with w_a to scores; then an exact softmax over the (B, m, n) scores and the context. It keeps
the (B, m, n) softmax weights for the backward pass, which does the softmax backward on them (d scores,
d values) and then scans the keys k at a time per example, recomputing one (m, k, a) tanh chunk per
step (from e^{2x} e^{2y} as the forward, when the projections allow) and accumulating d(q W_q) and d w_a
per query row. With one query per example (m = 1, the decode
step) both passes step over blocks of whole examples instead, the backward recomputing each block's tanh
once for all gradients (`_one_query_scores`, `_one_query_bwd`). Memory: O(B m n + B m k a). Projections
q W_q + b and h W_k are computed once, outside the scans, so their gradients come from ordinary
autodiff. Everything inside runs in float32 (float64 for float64 inputs)."""

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


EXP_FORM_LIMIT = 40.0  # |projections| up to which tanh(x + y) is evaluated from e^{2x} e^{2y}


def _hidden_exp(eq, ek):
    """tanh(x + y) = 1 - 2 / (e^{2x} e^{2y} + 1) from e^{2x}, e^{2y}: one product and one division
    per element instead of a tanh (faster on CPU: docs/cpu.md). With |x|, |y| <= 40 nothing overflows
    (a product above float32's range gives inf and exactly 1) and the absolute error is a few ulps of 1,
    as for tanh of the rounded sum x + y."""
    return 1.0 - 2.0 / (eq * ek + 1.0)


def _exp2(x):
    """e^{2x} of projections clipped to EXP_FORM_LIMIT (outside it the tanh branch is taken)."""
    return jnp.exp(2.0 * jnp.clip(x, -EXP_FORM_LIMIT, EXP_FORM_LIMIT))


def _bound(q_proj, k_proj):
    """The largest |projection|, which picks the exp form or tanh; 0 when there is none (a = 0)."""
    if q_proj.size == 0 or k_proj.size == 0:
        return jnp.zeros((), q_proj.dtype)
    return jnp.maximum(jnp.max(jnp.abs(q_proj)), jnp.max(jnp.abs(k_proj)))


def _scores(q_proj, k_proj, w_a, chunk_size: int):
    """Scores (B, m, n) of a flat batch, keys chunk_size at a time: (B, m, a), (B, n, a), (a,).

    Each step evaluates one (B, m, k, a) tanh block for the whole batch (it fits in cache) and reduces
    it by a matrix-vector product with w_a; materialising the block beats fusing tanh into the sum over
    `a`, which XLA's CPU backend emits as a poorly vectorised row reduction. Projections within
    EXP_FORM_LIMIT (always, in practice: tanh saturates at 9) take `_hidden_exp`; else tanh itself.
    """
    n = k_proj.shape[1]
    group = _one_query_group(q_proj, k_proj, chunk_size)
    if group:
        return _one_query_scores(q_proj, k_proj, w_a, group)
    num = -(-n // chunk_size)
    k_chunks = _chunk(jnp.pad(k_proj, ((0, 0), (0, num * chunk_size - n), (0, 0))), num, 1)  # (num, B, k, a)

    def exp_form(q_proj, k_chunks):
        eq = _exp2(q_proj)[:, :, None, :]
        return lax.map(lambda kc: _hidden_exp(eq, _exp2(kc)[:, None, :, :]) @ w_a, k_chunks)

    def tanh_form(q_proj, k_chunks):
        return lax.map(lambda kc: jnp.tanh(q_proj[:, :, None, :] + kc[:, None, :, :]) @ w_a, k_chunks)

    if q_proj.shape[1] == 1:  # one query: each e^{2y} would serve one element, no cheaper than tanh
        return _unchunk(tanh_form(q_proj, k_chunks), 2)[:, :, :n]
    bound = _bound(q_proj, k_proj)
    chunks = lax.cond(bound <= EXP_FORM_LIMIT, exp_form, tanh_form, q_proj, k_chunks)  # (num, B, m, k)
    return _unchunk(chunks, 2)[:, :, :n]


ONE_QUERY_EXAMPLE_BLOCKS = True  # one query: blocks of whole examples (see _one_query_scores)


def _one_query_group(q_proj, k_proj, chunk_size: int) -> int:
    """Examples per block of the one-query path (a block as large as a chunk of the others: B * chunk_size
    (key, query) pairs, in whole examples, a divisor of B); 0 when it does not apply (m > 1, or a chunk
    smaller than one example's keys)."""
    b, m = q_proj.shape[:2]
    examples_per_block = (b * chunk_size) // k_proj.shape[1]
    if m != 1 or not ONE_QUERY_EXAMPLE_BLOCKS or examples_per_block < 1:
        return 0
    return largest_divisor_at_most(b, examples_per_block)


def _one_query_scores(q_proj, k_proj, w_a, group: int):
    """Scores (B, 1, n) of one query per example, `group` whole examples per step: (B, 1, a), (B, n, a).

    With one query the tanh block of an example is no larger than its keys, so a step takes `group`
    examples' keys as they lie in memory ((group, n, a), contiguous) instead of a strided key chunk of
    every example, which would need a transposed copy of all keys first.
    """
    b, n, a = k_proj.shape
    blocks = (_example_blocks(q_proj, group), _example_blocks(k_proj, group))
    return lax.map(lambda qk: jnp.tanh(qk[0] + qk[1]) @ w_a, blocks).reshape(b, 1, n)


def _example_blocks(x, group: int):
    """(B, ...) -> (B / group, group, ...), or x itself for group 1: a unit block axis would make XLA
    lay the key projection out around it and copy all of it (measured at W3: docs/cpu.md)."""
    return x if group == 1 else x.reshape((x.shape[0] // group, group) + x.shape[1:])


def _forward(q_proj, k_proj, values, w_a, mask, chunk_size):
    """Context (B, m, d_v) and softmax weights (B, m, n) of a flat batch.

    Weights are exp(s - row max) / row sum over valid keys; rows without a valid key get weights 0 and
    context 0. Keeping max and sum (not log-sum-exp) keeps exp's argument small: exp(s - lse) loses
    about log(n) ulps of the weights, which the gradients inherit.
    """
    scores = _scores(q_proj, k_proj, w_a, chunk_size)
    if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.exp(scores - row_max)  # masked (-inf) scores give exactly 0
    row_sum = jnp.sum(p, axis=-1, keepdims=True)
    # A row is empty only when its sum is exactly 0 (no valid key); a NaN/Inf score makes the sum NaN/Inf and
    # the whole row NaN, never a silently empty row.
    has_key = row_sum != 0
    weights = p * jnp.where(has_key, 1.0 / jnp.where(has_key, row_sum, 1.0), 0.0)
    return blocked_weighted_sum(weights, values, weights.dtype), weights


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _core(q_proj, k_proj, values, w_a, mask, chunk_size, return_weights):
    """Flat batch (B, m, a), (B, n, a), (B, n, d_v), (a,), bool (B, m, n) | None -> (context, weights)."""
    context, weights = _forward(q_proj, k_proj, values, w_a, mask, chunk_size)
    return context, (weights if return_weights else None)


def _core_fwd(q_proj, k_proj, values, w_a, mask, chunk_size, return_weights):
    """Forward kept for the backward: the (B, m, n) softmax weights, never the (B, m, n, a) tanh tensor."""
    context, weights = _forward(q_proj, k_proj, values, w_a, mask, chunk_size)
    return (context, weights if return_weights else None), (q_proj, k_proj, values, w_a, weights)


def _add_pair(x, y):
    return x[0] + y[0], x[1] + y[1]


REDUCE_GROUP = 16  # terms per sequential sum in the backward's reductions (~16 ulps); groups then as a tree


def _pair_sums(x, y, axis: int):
    """Sums of x and y over `axis` as one two-output reduction, in groups of <= REDUCE_GROUP terms.

    XLA's CPU backend emits a two-output reduction over a short axis as one vectorised loop with the
    producer (here tanh) fused in; a one-output or long reduction takes a much slower path
    (`python benchmarks/xla_reductions.py`, benchmarks/results/xla_reductions.json).
    """
    n = x.shape[axis]
    group = largest_divisor_at_most(n, REDUCE_GROUP)
    split = lambda t: t.reshape(t.shape[:axis] + (n // group, group) + t.shape[axis + 1 :])
    zero = jnp.zeros((), x.dtype)
    sums = lax.reduce((split(x), split(y)), (zero, zero), _add_pair, (axis + 1,))
    return tuple(jnp.sum(t, axis=axis) for t in sums)


def _hidden_grad_terms_tanh(d_s, q, keys):
    """(d loss / d pre-activation over w_a, d loss / d w_a terms) of a (k, m, a) block: tanh recomputed."""
    hidden = jnp.tanh(keys[:, None, :] + q[None, :, :])
    return d_s * (1.0 - hidden * hidden), d_s * hidden


def _hidden_grad_terms_exp(d_s, eq, ek):
    """The same from e^{2x}, e^{2y}: with r = 1 / (e^{2x} e^{2y} + 1), tanh = 1 - 2r and 1 - tanh^2 =
    4r(1 - r); one division per element instead of a tanh, and no inf * 0 where the product overflows."""
    r = 1.0 / (ek[:, None, :] * eq[None, :, :] + 1.0)
    return d_s * (4.0 * r * (1.0 - r)), d_s * (1.0 - 2.0 * r)


def _chunk_grads(grad_terms, q_proj, w_a, carry, xs):
    """Backward of one chunk of k keys, tanh recomputed in (k, m, a) layout.

    grad_terms: `_hidden_grad_terms_tanh` on the projections or `_hidden_grad_terms_exp` on their
    `_exp2` (then q_proj and the keys are e^{2x}, e^{2y}). xs = (keys (k, a), dL/dscores transposed
    (k, m)). carry = (sum_k d_s (1 - h^2) (m, a), d w_a (a,)). Returns the carry and d keys (k, a). Two
    reductions, each with its own fused tanh: over keys (-> d q_proj rows) and over queries (-> d keys);
    each also sums d_s h over its axis, and d w_a is the mean of the two totals, so neither reduction is
    a slow one-output reduction.
    """
    d_q, d_wa = carry
    k_chunk, d_s_t = xs
    d_s = d_s_t[:, :, None]
    d_pre, d_hidden = grad_terms(d_s, q_proj, k_chunk)
    sum_pre, sum_hidden = _pair_sums(d_pre, d_hidden, axis=0)  # (m, a) each
    if q_proj.shape[0] < REDUCE_GROUP:  # few queries: d keys is (nearly) elementwise, share the tanh
        d_keys = jnp.sum(d_pre, axis=1)
        d_wa = d_wa + jnp.sum(sum_hidden, axis=0)
    else:  # recomputing tanh (the barrier stops XLA from sharing it) beats storing it for both
        q_again, keys_again = lax.optimization_barrier((q_proj, k_chunk))
        d_keys, sum_hidden_keys = _pair_sums(*grad_terms(d_s, q_again, keys_again), axis=1)
        d_wa = d_wa + 0.5 * (jnp.sum(sum_hidden, axis=0) + jnp.sum(sum_hidden_keys, axis=0))
    # w_a applied here, not after the scan: XLA would fuse it into a transposing copy for d W_k
    return (d_q + sum_pre, d_wa), d_keys * w_a


def _core_bwd(chunk_size, return_weights, residuals, cotangents):
    """Backward of a flat batch: `_example_bwd` vmapped over it, d w_a summed over examples last (one
    query per example: `_one_query_bwd`, blocks of whole examples as in the forward). The same bound as
    the forward picks the exp form (faster than tanh on CPU: docs/cpu.md) or tanh."""
    q_proj, k_proj, values, w_a, weights = residuals
    d_context, d_weights = cotangents
    if not return_weights:
        d_weights = jnp.zeros_like(weights)
    group = _one_query_group(q_proj, k_proj, chunk_size)
    if group:
        return (*_one_query_bwd(group, q_proj, k_proj, values, w_a, weights, d_context, d_weights), None)

    def vmapped(exp_form, q_proj, k_proj):
        example = functools.partial(_example_bwd, chunk_size, exp_form)
        return jax.vmap(example, in_axes=(0, 0, 0, None, 0, 0, 0))(
            q_proj, k_proj, values, w_a, weights, d_context, d_weights
        )

    bound = _bound(q_proj, k_proj)
    exp_branch, tanh_branch = functools.partial(vmapped, True), functools.partial(vmapped, False)
    d_q, d_k, d_v, d_wa = lax.cond(bound <= EXP_FORM_LIMIT, exp_branch, tanh_branch, q_proj, k_proj)
    return d_q, d_k, d_v, jnp.sum(d_wa, axis=0), None


def _softmax_bwd(values, weights, d_context, d_weights):
    """(d loss / d scores (..., m, n), d values (..., n, d_v)) from the softmax weights (..., m, n) and the
    cotangents of context (..., m, d_v) and weights; d scores is zero at masked keys."""
    d_p = jnp.einsum("...mv,...nv->...mn", d_context, values) + d_weights
    delta = jnp.sum(weights * d_p, axis=-1, keepdims=True)
    return weights * (d_p - delta), jnp.einsum("...mn,...mv->...nv", weights, d_context)


def _example_bwd(chunk_size, exp_form, q_proj, k_proj, values, w_a, weights, d_context, d_weights):
    """Backward of one example: softmax backward on the (m, n) weights, then tanh chunk by chunk.

    delta_i = sum_j p_ij dL/dp_ij is summed over the same weights it multiplies, as autodiff of a
    softmax does: the rows of d_s then sum to zero up to rounding, which keeps d q_proj accurate.
    exp_form: the chunks recompute tanh from e^{2x}, e^{2y} (`_hidden_grad_terms_exp`).
    """
    n = k_proj.shape[0]
    d_s, d_values = _softmax_bwd(values, weights, d_context, d_weights)
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n  # padded keys have d_s = 0 and contribute nothing
    keys, queries = (_exp2(k_proj), _exp2(q_proj)) if exp_form else (k_proj, q_proj)
    k_chunks = _chunk(jnp.pad(keys, ((0, pad), (0, 0))), num_chunks, 0)
    ds_chunks = _chunk(jnp.pad(d_s.T, ((0, pad), (0, 0))), num_chunks, 0)  # (chunks, k, m)
    init = (jnp.zeros_like(q_proj), jnp.zeros_like(w_a))
    grad_terms = _hidden_grad_terms_exp if exp_form else _hidden_grad_terms_tanh
    step = functools.partial(_chunk_grads, grad_terms, queries, w_a)
    (d_q, d_wa), d_k = lax.scan(step, init, (k_chunks, ds_chunks))
    return d_q * w_a, _unchunk(d_k, 0)[:n], d_values, d_wa


def _one_query_bwd(group, q_proj, k_proj, values, w_a, weights, d_context, d_weights):
    """Backward of one query per example, `group` whole examples per step: (d q_proj, d k_proj, d values,
    d w_a) for (B, 1, a), (B, n, a), (B, n, d_v), (a,), weights (B, 1, n).

    The softmax backward of all examples at once, then per block the (group, n, a) tanh recomputed once
    and shared by every gradient: d k_proj = d_s (1 - h^2) w_a elementwise, and the sums over keys of
    d_s (1 - h^2) (-> d q_proj) and d_s h (-> d w_a) as one two-output reduction in groups of
    REDUCE_GROUP keys (the terms of d q_proj cancel: the rows of d_s sum to zero).
    """
    b, n, a = k_proj.shape
    d_s, d_values = _softmax_bwd(values, weights, d_context, d_weights)

    def block(args):
        q, keys, ds = args  # (group, 1, a), (group, n, a), (group, n); group 1: (1, a), (n, a), (n,)
        hidden = jnp.tanh(q + keys)
        d_pre = ds[..., None] * (1.0 - hidden * hidden)
        keys_axis = d_pre.ndim - 2
        sum_pre, sum_hidden = _pair_sums(d_pre, ds[..., None] * hidden, axis=keys_axis)  # (group, a) each
        return d_pre * w_a, sum_pre, sum_hidden

    blocks = (_example_blocks(q_proj, group), _example_blocks(k_proj, group),
              _example_blocks(d_s.reshape(b, n), group))  # fmt: skip
    d_k, sum_pre, sum_hidden = lax.map(block, blocks)
    d_q = (sum_pre * w_a).reshape(b, 1, a)
    return d_q, d_k.reshape(b, n, a), d_values, jnp.sum(sum_hidden.reshape(b, a), axis=0)


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

    mask = None if mask is None else flat(jnp.broadcast_to(jnp.asarray(mask, bool), batch + (m, n)))
    args = [flat(q_proj), flat(k_proj), flat(values), w_a.astype(dtype), mask]
    context, weights = _core(*args, int(min(chunk_size, n)), return_weights)
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
