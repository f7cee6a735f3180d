"""Query attention over the positions of a feature grid: additive (Bahdanau et al. 2015; Xu et al. 2015)
and non-local (Wang et al. 2018).

Same call convention as `attn_jax.nn.gates`: ``module(x, *, guide=None, train=False) -> y``, x and y
(B, H, W, C). Both sow a (B, m, n) query-by-position weight matrix as "attention_map".
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attn_jax.functional import additive_attention, masked_softmax
from attn_jax.nn.gates import check_features, reject_guide

Dtype = Any


def _query_from_guide(guide, batch: int):
    """A given query: (m, d_q) shared by the batch or (B, m, d_q); returns (B, m, d_q)."""
    if jnp.ndim(guide) == 2:
        return jnp.broadcast_to(guide, (batch,) + guide.shape)
    if jnp.ndim(guide) == 3 and guide.shape[0] == batch:
        return guide
    raise ValueError(
        f"additive: guide (the query) must have shape (m, d_q) or ({batch}, m, d_q); got {guide.shape}"
    )


class AdditiveAttention(nn.Module):
    """Additive attention (Bahdanau et al. 2015) over the grid, as in Show, Attend and Tell (Xu et al. 2015).

    Scores e_i = w_a · tanh(q W_q + h_i W_k + b) over the n = H·W feature vectors h_i (C each), which
    are both keys and values; alpha = softmax(e); context c = sum_i alpha_i h_i. The query is ``guide``
    when given, else ``num_queries`` learned vectors of size C. The module returns the gate
    x · n · mean_m(alpha), so that averaging the output over positions gives exactly the mean context
    vector: a model that average-pools (`AttentionClassifier`) pools with alpha. Sows alpha (B, m, n)
    as "attention_map" and the context (B, m, C) as "context".

    Args:
      num_queries: m, the number of learned queries (ignored when a ``guide`` is given).
      attention_dim: a, the width of the projections W_q, W_k and of w_a (None: C).
      use_bias: whether to learn the bias b (a,).
      chunk_size: passed to `attn_jax.additive_attention`: ``"auto"`` (unchunked while the
        (B, m, n, a) tanh tensor fits in 4 MiB, else key chunks), an int k (chunks of k keys) or None
        (never chunked).
      implementation: passed to `attn_jax.additive_attention`: ``"xla"``, ``"pallas"`` or ``"auto"``.
      dtype: computation dtype (None: the promoted dtype of x and the parameters).
      param_dtype: dtype of the parameters.

    Returns:
      Called as ``module(x, *, guide=None, train=False)`` on x (B, H, W, C), with ``guide`` an optional
      query of shape (m, d_q) shared by the batch or (B, m, d_q): the gated x, (B, H, W, C).

    Raises:
      ValueError: x is not 4-D, ``guide`` has another shape, or an argument of
        `attn_jax.additive_attention` is invalid.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.nn import AdditiveAttention
      >>> x = jnp.ones((2, 4, 4, 8))  # n = 16 positions
      >>> attn = AdditiveAttention(num_queries=3, attention_dim=16)
      >>> variables = attn.init(jax.random.key(0), x)
      >>> y, state = attn.apply(variables, x, mutable=["intermediates"])
      >>> sown = state["intermediates"]
      >>> y.shape, sown["attention_map"][0].shape, sown["context"][0].shape
      ((2, 4, 4, 8), (2, 3, 16), (2, 3, 8))
    """

    num_queries: int = 1
    attention_dim: int | None = None
    use_bias: bool = True
    chunk_size: int | str | None = "auto"
    implementation: str = "xla"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, guide=None, train: bool = False):
        check_features("additive", x)
        b, h, w, c = x.shape
        a = self.attention_dim or c
        if guide is None:
            init = nn.initializers.normal(stddev=c**-0.5)
            query = self.param("query", init, (self.num_queries, c), self.param_dtype)
            query = jnp.broadcast_to(query, (b,) + query.shape)
        else:
            query = _query_from_guide(guide, b)
        d_q = query.shape[-1]
        w_q = self.param("w_q", nn.initializers.lecun_normal(), (d_q, a), self.param_dtype)
        w_k = self.param("w_k", nn.initializers.lecun_normal(), (c, a), self.param_dtype)
        w_a = self.param("w_a", nn.initializers.normal(stddev=a**-0.5), (a,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (a,), self.param_dtype) if self.use_bias else None
        dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
        cast = lambda v: None if v is None else jnp.asarray(v, dtype)
        keys = cast(x).reshape(b, h * w, c)
        context, weights = additive_attention(
            cast(query), keys, w_q=cast(w_q), w_k=cast(w_k), w_a=cast(w_a), bias=cast(bias),
            chunk_size=self.chunk_size, implementation=self.implementation,
        )  # fmt: skip
        weights = weights.astype(jnp.float32)
        self.sow("intermediates", "attention_map", weights)
        self.sow("intermediates", "context", context)
        gate = (h * w) * jnp.mean(weights, axis=1).reshape(b, h, w, 1)
        return x * gate.astype(x.dtype)


class NonLocal(nn.Module):
    """Non-local block, embedded Gaussian (Wang et al. 2018): self-attention over the H·W positions.

    f = softmax_j(theta(x_i) · phi(x_j)), y_i = sum_j f_ij g(x_j), z = x + W_z(y). W_z starts at zero
    (the paper zero-initialises its BatchNorm scale instead), so the block is the identity at init. Sows
    f (B, n, n') as "attention_map", n = H·W and n' = n, or the pooled count with ``subsample``.

    Args:
      inter_channels: width of theta, phi and g (None: C // 2).
      subsample: max-pool phi and g by 2 (the paper's cheaper variant).
      dtype: computation dtype of the 1x1 convs (None: the input's).
      param_dtype: dtype of their parameters.

    Returns:
      Called as ``module(x, *, guide=None, train=False)`` on x (B, H, W, C): z, (B, H, W, C).

    Raises:
      ValueError: x is not 4-D, or a ``guide`` is given.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.nn import NonLocal
      >>> x = jnp.ones((2, 4, 4, 8))
      >>> block = NonLocal(subsample=True)
      >>> variables = block.init(jax.random.key(0), x)
      >>> y, state = block.apply(variables, x, mutable=["intermediates"])
      >>> bool((y == x).all()), state["intermediates"]["attention_map"][0].shape  # identity at init
      (True, (2, 16, 4))
    """

    inter_channels: int | None = None
    subsample: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, guide=None, train: bool = False):
        check_features("nonlocal", x)
        reject_guide("nonlocal", guide)
        b, h, w, c = x.shape
        inter = self.inter_channels or max(1, c // 2)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        theta = nn.Conv(inter, (1, 1), name="theta", **kw)(x).reshape(b, h * w, inter)
        phi = nn.Conv(inter, (1, 1), name="phi", **kw)(x)
        g = nn.Conv(inter, (1, 1), name="g", **kw)(x)
        if self.subsample and h > 1 and w > 1:
            phi = nn.max_pool(phi, (2, 2), strides=(2, 2), padding="SAME")
            g = nn.max_pool(g, (2, 2), strides=(2, 2), padding="SAME")
        phi = phi.reshape(b, -1, inter)
        g = g.reshape(b, -1, inter)
        scores = jnp.einsum("bnd,bkd->bnk", theta, phi, preferred_element_type=jnp.float32)
        weights = masked_softmax(scores)
        self.sow("intermediates", "attention_map", weights)
        y = jnp.einsum("bnk,bkd->bnd", weights.astype(g.dtype), g).reshape(b, h, w, inter)
        out = nn.Conv(c, (1, 1), kernel_init=nn.initializers.zeros, name="w_z", **kw)(y)
        return x + out.astype(x.dtype)
