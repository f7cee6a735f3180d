"""Random inputs for the additive-attention tests, and the float32-vs-float64 gradient check they share."""

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.functional import additive_attention


def make_inputs(seed, qb, kb, vb, m, n, d_q=5, d_k=4, d_v=6, a=8, dtype=jnp.float64):
    """(query (*qb, m, d_q), keys (*kb, n, d_k), values (*vb, n, d_v), {w_q, w_k, w_a}, bias (a,))."""
    rng = np.random.default_rng(seed)
    nrm = lambda *s: jnp.asarray(rng.standard_normal(s), dtype)
    q, h, v = nrm(*qb, m, d_q), nrm(*kb, n, d_k), nrm(*vb, n, d_v)
    params = dict(w_q=nrm(d_q, a), w_k=nrm(d_k, a), w_a=nrm(a))
    return q, h, v, params, nrm(a)


def make_mask(seed, shape):
    """Random bool mask of `shape` with at least one fully masked row."""
    mask = np.random.default_rng(seed + 100).random(shape) < 0.6
    if shape[-2] > 1:
        mask[..., 0, :] = False  # one fully masked row per leading index
    else:
        mask[0] = False  # mask broadcast over queries: all rows of the first leading index
    return jnp.asarray(mask)


def long_sum_inputs(b, m, n, d, a):
    """float32 keyword arguments (query, keys, w_q, w_k, w_a, bias) scaled like trained weights, and a
    context cotangent (b, m, d): long float32 sums over keys and queries with cancelling terms."""
    rng = np.random.default_rng(0)
    arr = lambda *s, scale=1.0: jnp.asarray(scale * rng.standard_normal(s), jnp.float32)
    args = dict(
        query=arr(b, m, d), keys=arr(b, n, d), w_q=arr(d, a, scale=d**-0.5), w_k=arr(d, a, scale=d**-0.5),
        w_a=arr(a, scale=a**-0.5), bias=arr(a, scale=0.1),
    )  # fmt: skip
    return args, arr(b, m, d)


def gradient_errors_vs_float64(args, cotangent, **kwargs) -> dict:
    """Relative L2 error of each float32 gradient of sum(context * cotangent) against float64."""

    def grads(args, cotangent):
        loss = lambda args: jnp.sum(additive_attention(**args, **kwargs, return_weights=False)[0] * cotangent)
        return jax.jit(jax.grad(loss))(args)

    grads32 = grads(args, cotangent)
    with jax.enable_x64(True):
        to64 = lambda x: jnp.asarray(x, jnp.float64)
        grads64 = grads(jax.tree.map(to64, args), to64(cotangent))
        return {
            name: float(np.linalg.norm(np.asarray(grads32[name], np.float64) - g64) / np.linalg.norm(g64))
            for name, g64 in grads64.items()
        }


def assert_errors_within(errors: dict, tol: float) -> None:
    """NaN-safe: every error finite and <= tol (a bare max() skips NaNs that do not come first)."""
    bad = {name: e for name, e in errors.items() if not (np.isfinite(e) and e <= tol)}
    assert not bad, f"gradients off by more than {tol} (relative L2) or non-finite: {bad}; all: {errors}"
