"""Masked positions contribute exactly nothing, whatever they hold (NaN, +-Inf, 3e38), on every path.

Padding often holds garbage. Every path (XLA, chunked custom VJP, the Triton kernel in the Pallas
interpreter, the TPU kernel in the generic one, dot-product attention, masked_softmax) must
give the context, the weights and the gradients of every input that the same problem gives with the
masked positions sliced off, and a gradient of exactly 0 at those positions. The reference is a float64
NumPy transcription of the formula and of its backward pass, written out below.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.functional import additive_attention, dot_product_attention, masked_softmax
from attn_jax.kernels.additive_tpu import tpu_additive_attention

B, M, N, D, A, DV = 2, 3, 6, 4, 5, 3
KEPT = (4, 3)  # keys 0..KEPT[b]-1 of example b are real; the rest is padding, masked for every query
BAD = (np.nan, np.inf, -np.inf, 3e38, -3e38)  # written cyclically into every padded key and value entry

_rng = np.random.default_rng(7)
Q, H, V = _rng.normal(size=(B, M, D)), _rng.normal(size=(B, N, D)), _rng.normal(size=(B, N, DV))
W_Q, W_K = _rng.normal(size=(D, A)) / 2, _rng.normal(size=(D, A)) / 2
W_A, BIAS, W_GEN = _rng.normal(size=A), _rng.normal(size=A), _rng.normal(size=(D, D)) / 2
G_CTX, G_W = _rng.normal(size=(B, M, DV)), _rng.normal(size=(B, M, N))  # the loss's cotangents

MASK = np.zeros((B, M, N), bool)
for _b, _kept in enumerate(KEPT):
    MASK[_b, :, :_kept] = True
MASK[0, 1, 0] = False  # a pair masked inside the real keys (key 0 stays in use by rows 0 and 2)
MASK[1, 2, :] = False  # a query row with no valid key: its query is garbage too, its outputs 0 ("zero")


def _with_garbage(x, positions):
    """x with the cycle BAD written into every entry at `positions` (bool (B, rows))."""
    x = x.copy()
    idx = np.argwhere(positions)
    for i, (b, r) in enumerate(idx):
        x[b, r] = [BAD[(i + j) % len(BAD)] for j in range(x.shape[-1])]
    return x


PAD_KEY = ~MASK.any(axis=1)  # (B, N): masked for every query
EMPTY_ROW = ~MASK.any(axis=2)  # (B, M)
Q_BAD, H_BAD, V_BAD = _with_garbage(Q, EMPTY_ROW), _with_garbage(H, PAD_KEY), _with_garbage(V, PAD_KEY)


def _softmax_backward(p, dp):
    return p * (dp - np.sum(p * dp, axis=-1, keepdims=True))


def _reference_additive(q, h, v, w_q, w_k, w_a, bias, mask, g_ctx, g_w):
    """Float64 (context, weights, grads of (q, h, v, w_q, w_k, w_a, bias)) of one example, for the loss
    sum(context * g_ctx) + sum(weights * g_w); rows without a valid key give 0 and take no gradient."""
    qp, kp = q @ w_q + bias, h @ w_k
    t = np.tanh(qp[:, None, :] + kp[None, :, :])  # (m, n, a)
    e = t @ w_a
    e = np.where(mask, e, -np.inf)
    row = mask.any(axis=1, keepdims=True)
    ex = np.where(mask, np.exp(e - np.where(row, e.max(axis=1, keepdims=True), 0.0)), 0.0)
    p = ex / np.where(row, ex.sum(axis=1, keepdims=True), 1.0)
    ctx = p @ v
    d_e = _softmax_backward(p, g_ctx @ v.T + g_w)
    d_pre = d_e[..., None] * w_a * (1.0 - t * t)  # (m, n, a)
    d_qp, d_kp = d_pre.sum(axis=1), d_pre.sum(axis=0)
    grads = (d_qp @ w_q.T, d_kp @ w_k.T, p.T @ g_ctx, q.T @ d_qp, h.T @ d_kp,
             np.einsum("mn,mna->a", d_e, t), d_qp.sum(axis=0))  # fmt: skip
    return ctx, p, grads


def _reference_sliced_additive():
    """The reference on the clean problem with each example's padding sliced off, padded back with 0
    (context, weights and gradients alike) and summed over examples for the shared weights."""
    ctx, weights = np.zeros((B, M, DV)), np.zeros((B, M, N))
    grads = [np.zeros_like(x) for x in (Q, H, V, W_Q, W_K, W_A, BIAS)]
    for b, k in enumerate(KEPT):
        c, p, g = _reference_additive(Q[b], H[b, :k], V[b, :k], W_Q, W_K, W_A, BIAS, MASK[b, :, :k],
                                      G_CTX[b], G_W[b, :, :k])  # fmt: skip
        ctx[b], weights[b, :, :k] = c, p
        grads[0][b] += g[0]
        grads[1][b, :k] += g[1]
        grads[2][b, :k] += g[2]
        for i in range(3, 7):
            grads[i] += g[i]
    grads[0][EMPTY_ROW] = 0.0  # no valid key: the row takes no part
    return ctx, weights, grads


ADDITIVE_PATHS = {
    "xla": lambda *a, **k: additive_attention(*a, chunk_size=None, **k),
    "chunked": lambda *a, **k: additive_attention(*a, chunk_size=2, **k),
    "pallas": lambda *a, **k: additive_attention(*a, implementation="pallas", **k),  # interpreted on CPU
    "tpu": lambda *a, **k: tpu_additive_attention(*a, **k),  # on CPU: the generic Pallas interpreter
}


def _check(got, want, name, exact_zero=None):
    """float32 result against the float64 reference; `exact_zero` (bool over leading dims): exactly 0."""
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), f"{name}: non-finite entries {np.argwhere(~np.isfinite(got))[:4]}"
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(want).max()), err_msg=name)
    if exact_zero is not None:
        assert (got[exact_zero] == 0.0).all(), f"{name}: not exactly 0 at the masked positions"


@pytest.mark.parametrize("path", ADDITIVE_PATHS)
def test_garbage_at_masked_positions_changes_nothing_in_additive_attention(path):
    fn = ADDITIVE_PATHS[path]

    def run(q, h, v, w_q, w_k, w_a, bias):
        ctx, w = fn(q, h, v, w_q=w_q, w_k=w_k, w_a=w_a, bias=bias, mask=jnp.asarray(MASK))
        return jnp.sum(ctx * G_CTX) + jnp.sum(w * G_W), (ctx, w)

    args = [jnp.asarray(x, jnp.float32) for x in (Q_BAD, H_BAD, V_BAD, W_Q, W_K, W_A, BIAS)]
    grads, (ctx, weights) = jax.jit(jax.grad(run, argnums=range(7), has_aux=True))(*args)
    want_ctx, want_w, want_grads = _reference_sliced_additive()
    _check(ctx, want_ctx, "context")
    _check(weights, want_w, "weights")
    zero_at = [EMPTY_ROW, PAD_KEY, PAD_KEY, None, None, None, None]
    names = ("query", "keys", "values", "w_q", "w_k", "w_a", "bias")
    for name, g, want, zero in zip(names, grads, want_grads, zero_at):
        _check(g, want, f"d {name}", zero)


def _reference_dot(q, h, v, w, scale, mask, g_ctx, g_w):
    """Float64 (context, weights, grads of (q, h, v, w)) of one example of q W h^T * scale attention."""
    qw = q @ w
    e = np.where(mask, scale * qw @ h.T, -np.inf)
    row = mask.any(axis=1, keepdims=True)
    ex = np.where(mask, np.exp(e - np.where(row, e.max(axis=1, keepdims=True), 0.0)), 0.0)
    p = ex / np.where(row, ex.sum(axis=1, keepdims=True), 1.0)
    d_e = scale * _softmax_backward(p, g_ctx @ v.T + g_w)
    d_qw = d_e @ h
    return p @ v, p, (d_qw @ w.T, d_e.T @ qw, p.T @ g_ctx, q.T @ d_qw)


@pytest.mark.parametrize("general", [False, True], ids=["scaled", "general"])
def test_garbage_at_masked_positions_changes_nothing_in_dot_product_attention(general):
    w = W_GEN if general else np.eye(D)
    scale = 1.0 if general else 1.0 / np.sqrt(D)

    def run(q, h, v, w_):
        ctx, weights = dot_product_attention(q, h, v, w=w_ if general else None, mask=jnp.asarray(MASK))
        return jnp.sum(ctx * G_CTX) + jnp.sum(weights * G_W), (ctx, weights)

    args = [jnp.asarray(x, jnp.float32) for x in (Q_BAD, H_BAD, V_BAD, w)]
    grads, (ctx, weights) = jax.jit(jax.grad(run, argnums=range(4), has_aux=True))(*args)
    want_ctx, want_w = np.zeros((B, M, DV)), np.zeros((B, M, N))
    want = [np.zeros((B, M, D)), np.zeros((B, N, D)), np.zeros((B, N, DV)), np.zeros((D, D))]
    for b, k in enumerate(KEPT):
        c, p, g = _reference_dot(Q[b], H[b, :k], V[b, :k], w, scale, MASK[b, :, :k], G_CTX[b], G_W[b, :, :k])
        want_ctx[b], want_w[b, :, :k] = c, p
        want[0][b], want[1][b, :k], want[2][b, :k] = g[:3]
        want[3] += g[3]
    want[0][EMPTY_ROW] = 0.0
    _check(ctx, want_ctx, "context")
    _check(weights, want_w, "weights")
    for name, g, ref, zero in zip(("query", "keys", "values"), grads, want, (EMPTY_ROW, PAD_KEY, PAD_KEY)):
        _check(g, ref, f"d {name}", zero)
    if general:
        _check(grads[3], want[3], "d w")


def test_garbage_at_masked_scores_changes_nothing_in_masked_softmax():
    scores, g, mask = _rng.normal(size=(M, N)), _rng.normal(size=(M, N)), MASK[0]
    bad = scores.copy()
    bad[~mask] = [BAD[i % len(BAD)] for i in range(int((~mask).sum()))]

    def run(s):
        weights = masked_softmax(s, jnp.asarray(mask))
        return jnp.sum(weights * g), weights

    grad, weights = jax.jit(jax.grad(run, has_aux=True))(jnp.asarray(bad, jnp.float32))
    ex = np.where(mask, np.exp(scores - np.where(mask, scores, -np.inf).max(axis=1, keepdims=True)), 0.0)
    p = ex / ex.sum(axis=1, keepdims=True)
    _check(weights, p, "weights", ~mask)
    _check(grad, _softmax_backward(p, g), "d scores", ~mask)


def test_a_shared_key_is_dropped_only_where_no_example_uses_it():
    """Keys and values (n, d) shared by both examples: key 4 is padding in example 1 only, so example 0
    still attends to it; key 5 is padding in both and holds garbage: it contributes nothing."""
    kept = (5, 4)
    keys, values = _with_garbage(H[:1], PAD_KEY[:1] & (np.arange(N) == 5))[0], V[0].copy()
    values[5] = np.nan
    mask = np.arange(N)[None, None, :] < np.array(kept)[:, None, None]  # (B, 1, N)

    def run(q, h, v):
        ctx, w = additive_attention(q, h, v, w_q=W_Q, w_k=W_K, w_a=W_A, bias=BIAS, mask=jnp.asarray(mask))
        return jnp.sum(ctx * G_CTX) + jnp.sum(w * G_W), (ctx, w)

    args = [jnp.asarray(x, jnp.float32) for x in (Q, keys, values)]
    grads, (ctx, weights) = jax.jit(jax.grad(run, argnums=range(3), has_aux=True))(*args)
    want_ctx, want_w, want_h, want_v = (
        np.zeros((B, M, DV)),
        np.zeros((B, M, N)),
        np.zeros((N, D)),
        np.zeros((N, DV)),
    )
    for b, k in enumerate(kept):
        c, p, g = _reference_additive(Q[b], H[0, :k], V[0, :k], W_Q, W_K, W_A, BIAS, np.ones((M, k), bool),
                                      G_CTX[b], G_W[b, :, :k])  # fmt: skip
        want_ctx[b], want_w[b, :, :k] = c, p
        want_h[:k] += g[1]
        want_v[:k] += g[2]
    unused = np.arange(N) == 5
    _check(ctx, want_ctx, "context")
    _check(weights, want_w, "weights")
    _check(grads[1], want_h, "d keys", unused)
    _check(grads[2], want_v, "d values", unused)
