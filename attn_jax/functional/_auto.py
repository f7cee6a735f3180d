"""chunk_size="auto": choose the unchunked or the chunked path, and the chunk size, from static shapes.

A trace-time Python decision on shapes and dtype only (never on values), so jit, grad and every retrace
make the same choice; under `jax.vmap` it sees the shapes without the vmapped axis.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from attn_jax.functional._blocking import largest_divisor_at_most

# One step of the chunked path evaluates a (batch, m, k, a) tanh block for the whole batch at once; k is
# chosen so that the block fills about this many bytes (a few MiB: it stays in cache). W2 (B 8, m 64,
# a 128): k = 16. A problem whose whole (batch, m, n, a) tensor fits in one such block runs unchunked.
CHUNK_BYTES = 4 * 2**20


def auto_chunk_size(batch: int, m: int, n: int, a: int, dtype) -> int | None:
    """None (unchunked) or the chunk size for `batch` examples of m queries, n keys, width a.

    Rule: unchunked while batch * m * n * a elements of `dtype` (the accumulation dtype) fit in
    CHUNK_BYTES; else k = CHUNK_BYTES / (batch * m * a * itemsize) keys (at least 1), replaced by the
    largest divisor of n not above k when that divisor is at least k / 2 (no padded keys).
    """
    per_key = batch * m * a * jnp.dtype(dtype).itemsize
    if per_key * n <= CHUNK_BYTES:
        return None
    k = max(1, CHUNK_BYTES // per_key)
    divisor = largest_divisor_at_most(n, k)
    return divisor if 2 * divisor >= k else k


def resolve_chunk_size(chunk_size, batch_shape, m: int, n: int, a: int, dtype) -> int | None:
    """`chunk_size` unchanged unless it is "auto", which becomes `auto_chunk_size` of these shapes."""
    if not (isinstance(chunk_size, str) and chunk_size == "auto"):
        return chunk_size
    return auto_chunk_size(math.prod(batch_shape), m, n, a, dtype)
