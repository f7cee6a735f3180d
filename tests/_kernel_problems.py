"""Shared inputs and comparisons for the fused-kernel tests (GPU/Triton and TPU/Mosaic kernels)."""

import jax
import jax.numpy as jnp
import numpy as np

ARG_NAMES = ("query", "keys", "values", "w_q", "w_k", "w_a", "bias")


def problem(seed, lead, m, n, d_q, d_k, d_v, a, mask_p=None, mask_shape=None):
    """Random (query, keys, values, w_q, w_k, w_a, bias) and a Bernoulli(mask_p) mask (or None)."""
    ks = jax.random.split(jax.random.key(seed), 8)
    args = (
        jax.random.normal(ks[0], lead + (m, d_q)),
        jax.random.normal(ks[1], lead + (n, d_k)),
        jax.random.normal(ks[2], lead + (n, d_v)),
        jax.random.normal(ks[3], (d_q, a)) / np.sqrt(d_q),
        jax.random.normal(ks[4], (d_k, a)) / np.sqrt(d_k),
        jax.random.normal(ks[5], (a,)),
        jax.random.normal(ks[6], (a,)),
    )
    mask = None
    if mask_p is not None:
        mask = jax.random.bernoulli(ks[7], mask_p, mask_shape or lead + (m, n))
    return args, mask


def loss_of(fn, mask, **kw):
    """A scalar touching context and weights nonlinearly, so both cotangents are nontrivial."""

    def loss(q, h, v, w_q, w_k, w_a, b):
        ctx, w = fn(q, h, v, w_q=w_q, w_k=w_k, w_a=w_a, bias=b, mask=mask, **kw)
        total = jnp.sum(ctx * jnp.cos(ctx))
        return total if w is None else total + jnp.sum(w * jnp.sin(3.0 * w))

    return loss


def close(got, want, name, rtol=2e-5):
    """allclose with an absolute floor scaled by the largest reference entry."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=name)
