"""Additive attention (Bahdanau, Cho & Bengio 2015; over image positions: Xu et al. 2015).

    e_i     = w_a . tanh(q W_q + h_i W_k + b)
    alpha_i = softmax over valid i of e_i
    c       = sum_i alpha_i v_i          (v defaults to h)

The per-example math is written for one (m, n) problem and vmapped over any number of
broadcast leading batch dims. Projections are computed once per query and once per key.
"""

from __future__ import annotations

import functools
import importlib
import math

import jax
import jax.numpy as jnp

from attn_jax import _checks
from attn_jax.functional._auto import resolve_chunk_size
from attn_jax.functional._blocking import KEY_BLOCK, largest_divisor_at_most
from attn_jax.functional._dtypes import accumulation_dtype, project
from attn_jax.functional.softmax import softmax_context


@jax.custom_jvp
def _reduce_hidden(hidden, w_a):
    """hidden (m, n, a) @ w_a (a,) -> scores (m, n), differentiated so that d w_a is summed in blocks.

    Plain autodiff sums d w_a = sum d_s * hidden over every (batch, query, key) in one dot: with the
    cancellation a softmax gradient carries, float32 then loses up to 1e-5 relative (B m n = 5e5 terms).
    The tangent below writes w_a's term per block of keys, so its transpose (reverse mode) sums each
    block with one dot and then the blocks as a tree.
    """
    return hidden @ w_a


@_reduce_hidden.defjvp
def _reduce_hidden_jvp(primals, tangents):
    hidden, w_a = primals
    d_hidden, d_w_a = tangents
    m, n, a = hidden.shape
    block = largest_divisor_at_most(n, KEY_BLOCK)
    blocks = hidden.reshape(m, n // block, block, a)
    # Transposed, this broadcast becomes a sum over the per-block partial sums (w_a is per example here:
    # see `_batched(shared=...)`, else vmap would put the batch into each block's contraction).
    d_w_a_blocks = jnp.broadcast_to(d_w_a, (m, n // block, a))
    d_w_a_term = jnp.einsum("mbka,mba->mbk", blocks, d_w_a_blocks).reshape(m, n)
    return hidden @ w_a, d_hidden @ w_a + d_w_a_term


def _scores_from_projections(q_proj, k_proj, w_a):
    """Per-example e[i, j] = w_a . tanh(q_proj[i] + k_proj[j]); (m, a), (n, a) -> (m, n)."""
    hidden = jnp.tanh(q_proj[:, None, :] + k_proj[None, :, :])
    return _reduce_hidden(hidden, w_a)


def _batched(fn, batch_shape, *arrays, shared=()):
    """Apply per-example `fn` over broadcast leading dims `batch_shape` (one vmap over a flat batch).

    `arrays` have two core dims; each of `shared` is handed to every example as its own copy, so that
    reverse mode sums its gradient per example first and then over examples (a tree, not one long dot).
    """
    size = math.prod(batch_shape)
    flat = []
    for x in arrays:
        core = x.shape[len(x.shape) - 2 :]
        x = jnp.broadcast_to(x, batch_shape + core)
        flat.append(x.reshape((size,) + core))
    flat += [jnp.broadcast_to(x, (size,) + x.shape) for x in shared]
    out = jax.vmap(fn)(*flat)
    return out.reshape(batch_shape + out.shape[1:])


def _scores_acc(query, keys, w_q, w_k, w_a, bias, batch_shape, dtype):
    """Additive scores (..., m, n) in accumulation `dtype` of already-validated arguments."""
    q_proj = project(query, w_q, dtype)
    if bias is not None:
        q_proj = q_proj + bias.astype(dtype)
    k_proj = project(keys, w_k, dtype)  # once per key, not per (query, key) pair
    return _batched(_scores_from_projections, batch_shape, q_proj, k_proj, shared=(w_a.astype(dtype),))


def additive_scores(query, keys, w_q, w_k, w_a, *, bias=None):
    """Additive attention scores e_ij = w_a . tanh(q_i W_q + h_j W_k + b) (Bahdanau et al. 2015).

    The projections are computed once per query and once per key, then combined for every pair.

    Args:
      query: (..., m, d_q) queries, floating.
      keys: (..., n, d_k) keys, floating, n >= 1; leading dims broadcast with ``query``'s.
      w_q: (d_q, a) query projection.
      w_k: (d_k, a) key projection.
      w_a: (a,) the vector that reduces tanh's output to a score.
      bias: (a,) or None, added to the query projection.

    Returns:
      (..., m, n) scores in the result dtype of ``query`` and ``keys``, accumulated in float32 (float64
      for float64 inputs).

    Raises:
      ValueError: an input is not a floating array, a weight's shape does not match d_q, d_k or a, the
        leading dims do not broadcast, or there is no key (n = 0).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> q, h = jnp.zeros((1, 3)), jnp.array([[0.0, 0.0], [1.0, 1.0]])  # (m, d_q), (n, d_k)
      >>> scores = jax.jit(additive_scores)(q, h, jnp.ones((3, 4)), jnp.ones((2, 4)), jnp.full(4, 0.25))
      >>> scores.round(4)  # 0.25 * 4 * tanh(0 + 0), 0.25 * 4 * tanh(0 + 2)
      Array([[0.   , 0.964]], dtype=float32)
    """
    batch = _checks.validate_additive(query, keys, w_q, w_k, w_a, bias)
    out_dtype = jnp.result_type(query.dtype, keys.dtype)
    dtype = accumulation_dtype(query, keys)
    return _scores_acc(query, keys, w_q, w_k, w_a, bias, batch, dtype).astype(out_dtype)


def _xla_attention(query, keys, values, w_q, w_k, w_a, bias, mask, *, chunk_size, fully_masked,
                   return_weights, batch):  # fmt: skip
    """The XLA paths (unchunked, or chunked when `chunk_size`) on validated arguments."""
    query, keys, values = _checks.zero_masked_positions(query, keys, values, mask, batch, fully_masked)
    if chunk_size is not None:
        from attn_jax.functional.chunked import chunked_additive_attention

        return chunked_additive_attention(
            query, keys, values, w_q, w_k, w_a, bias, mask, chunk_size, fully_masked, return_weights, batch
        )
    dtype = accumulation_dtype(query, keys, values)
    scores = _scores_acc(query, keys, w_q, w_k, w_a, bias, batch, dtype)
    context, weights = softmax_context(scores, mask, values.astype(dtype), fully_masked)
    return context, (weights if return_weights else None)


IMPLEMENTATIONS = ("xla", "pallas", "auto")


class PallasUnavailableError(ImportError):
    """``implementation="pallas"`` was asked for but the kernels of `attn_jax.kernels` cannot be imported.

    Raised by `additive_attention` (and the modules that pass ``implementation`` on) when the Pallas
    kernels fail to import, e.g. on a JAX without ``jax.experimental.pallas``; its message names the
    import error. ``implementation="auto"`` never raises it: it falls back to XLA.

    Examples:
      >>> issubclass(PallasUnavailableError, ImportError)  # `except ImportError` catches it too
      True
    """


def _pallas_kernels():
    """Lazily import the fused kernels: (GPU/Triton `pallas_additive_attention`, TPU/Mosaic
    `tpu_additive_attention`)."""
    try:  # import_module, not `from attn_jax.kernels import ...`: it honours sys.modules (tests patch it)
        gpu = importlib.import_module("attn_jax.kernels.additive_pallas").pallas_additive_attention
        tpu = importlib.import_module("attn_jax.kernels.additive_tpu").tpu_additive_attention
    except ImportError as e:
        raise PallasUnavailableError(
            "implementation='pallas' needs attn_jax.kernels (additive_pallas.pallas_additive_attention and "
            f"additive_tpu.tpu_additive_attention), which could not be imported ({e}); use "
            "implementation='xla' or 'auto'"
        ) from e
    return gpu, tpu


def _resolve_implementation(implementation: str) -> str:
    """'xla' | 'pallas' | 'auto' -> itself; 'auto' -> 'xla' when the kernels cannot be imported."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")
    if implementation == "auto":
        try:
            _pallas_kernels()
        except PallasUnavailableError:
            return "xla"
    return implementation


def _per_platform(args, kw, xla, out_dtype):
    """The fused kernel chosen when the program is lowered: Triton on cuda / rocm, Mosaic on tpu, and on
    any other platform `xla` ("auto") or, if None, the Triton kernel in the Pallas interpreter ("pallas").
    A program traced on a CPU host and exported for an accelerator thus carries that accelerator's kernel.
    """
    gpu, tpu = _pallas_kernels()

    def cast(fn):  # every branch must give the same dtypes
        return lambda *a: jax.tree.map(lambda x: x.astype(out_dtype), fn(*a))

    def branch(kernel, **options):
        return cast(
            lambda *a: kernel(*a[:3], w_q=a[3], w_k=a[4], w_a=a[5], bias=a[6], mask=a[7], **kw, **options)
        )

    on_gpu = branch(gpu, interpret=False)
    other = cast(xla) if xla is not None else branch(gpu, interpret=True)
    return jax.lax.platform_dependent(
        *args, cuda=on_gpu, rocm=on_gpu, tpu=branch(tpu, interpret=False), default=other
    )


def additive_attention(
    query,
    keys,
    values=None,
    *,
    w_q,
    w_k,
    w_a,
    bias=None,
    mask=None,
    chunk_size: int | str | None = "auto",
    fully_masked: str = "zero",
    return_weights: bool = True,
    implementation: str = "xla",
):
    """Additive attention (Bahdanau et al. 2015): scores, masked softmax, context.

    Args:
      query: (..., m, d_q) queries, floating.
      keys: (..., n, d_k) keys, n >= 1; leading dims broadcast with the other inputs'.
      values: (..., n, d_v) values; None: the keys.
      w_q: (d_q, a) query projection.
      w_k: (d_k, a) key projection.
      w_a: (a,) the vector that reduces tanh's output to a score.
      bias: (a,) or None, added to the query projection.
      mask: bool, broadcastable to (..., m, n); True = may attend. A key that no query of its example may
        attend (padding), its value, and the query of a row with no valid key contribute exactly nothing,
        to the outputs and to every gradient, whatever they hold (NaN, Inf, huge values): they are
        replaced by zeros before any arithmetic, and their own gradients are exactly 0. A key that some
        query attends must be finite: a NaN there also reaches the rows that mask it (0 * NaN).
      chunk_size: an int k bounds memory by processing keys k at a time (two-pass softmax, custom VJP:
        neither pass keeps the (..., m, n, a) tanh tensor); None never chunks; ``"auto"`` (default)
        chooses from the static shapes: unchunked while the (..., m, n, a) tensor fits in 4 MiB, else
        chunks of about that size.
      fully_masked: rows with no valid key: "zero" (weights and context 0, gradients 0), "uniform"
        (weights 1/n and the mean of every value, masked or not) or "nan".
      return_weights: False returns None for the weights.
      implementation: "xla" (default), "pallas" (the fused kernels of attn_jax.kernels; they tile keys
        themselves, so `chunk_size` is ignored) or "auto". Both choose when the program is lowered: the
        Triton kernel on GPU, the Mosaic kernel on TPU; elsewhere "pallas" interprets the Triton kernel and
        "auto" runs XLA. The kernels compute in float32: "auto" runs XLA for float64 inputs.

    Returns:
      (context (..., m, d_v), weights (..., m, n) or None) in the inputs' dtype; softmax and reductions
      run in float32 (float64 for float64 inputs). A dimension of size 0 other than n works on every
      path: no example or no query gives empty outputs (and zero gradients), d_q = d_k = 0 or a = 0 gives
      equal scores (weights uniform over the valid keys), d_v = 0 an empty context.

    Raises:
      ValueError: a bad shape, dtype, mask, `chunk_size`, `fully_masked` or `implementation`, no key
        (n = 0), or float64 inputs with implementation="pallas" (the kernels would give float32 accuracy).
      PallasUnavailableError: implementation="pallas" when attn_jax.kernels cannot be imported.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> q, h = jnp.ones((1, 2, 4)), jnp.ones((1, 3, 4)).at[0, 2].set(jnp.nan)  # key 2: padding
      >>> w = dict(w_q=jnp.ones((4, 8)), w_k=jnp.ones((4, 8)), w_a=jnp.ones(8))
      >>> context, weights = jax.jit(additive_attention)(q, h, mask=jnp.array([True, True, False]), **w)
      >>> weights
      Array([[[0.5, 0.5, 0. ],
              [0.5, 0.5, 0. ]]], dtype=float32)
      >>> context
      Array([[[1., 1., 1., 1.],
              [1., 1., 1., 1.]]], dtype=float32)
    """
    _checks.check_fully_masked(fully_masked)
    _checks.check_chunk_size(chunk_size)
    backend = _resolve_implementation(implementation)
    values = keys if values is None else values
    batch = _checks.validate_additive(query, keys, w_q, w_k, w_a, bias, values=values, mask=mask)
    if backend != "xla" and accumulation_dtype(query, keys, values) == jnp.float64:
        if backend == "pallas":  # the kernels compute in float32: refuse rather than pass for float64
            _checks.check_float32_kernel("implementation='pallas'", query, keys, values)
        backend = "xla"  # "auto": float64 stays float64
    if query.shape[-2] == 0 or math.prod(batch) == 0:  # no output element: empty outputs, alike everywhere
        backend, chunk_size = "xla", None
    out_dtype = jnp.result_type(query.dtype, keys.dtype, values.dtype)
    dims = (query.shape[-2], keys.shape[-2], w_a.shape[0], accumulation_dtype(query, keys, values))
    chunk_size = resolve_chunk_size(chunk_size, batch, *dims)
    args = (query, keys, values, w_q, w_k, w_a, bias, mask)
    xla = functools.partial(_xla_attention, chunk_size=chunk_size, fully_masked=fully_masked,
                            return_weights=return_weights, batch=batch)  # fmt: skip
    if backend == "xla":
        context, weights = xla(*args)
    else:
        kw = dict(fully_masked=fully_masked, return_weights=return_weights)
        context, weights = _per_platform(args, kw, xla if backend == "auto" else None, out_dtype)
    context = context.astype(out_dtype)
    return context, (None if weights is None else weights.astype(out_dtype))
