"""Block sizes for float32 sums: sequential sums of a few terms, then XLA's tree reduction over blocks."""

from __future__ import annotations

KEY_BLOCK = 256  # keys per partial sum of a float32 sum over keys (d w_a, contexts); blocks then as a tree


def largest_divisor_at_most(n: int, limit: int) -> int:
    """Largest divisor of n that is <= limit (1 for a prime n > limit): a block size needing no padding."""
    return max(g for g in range(1, min(n, limit) + 1) if n % g == 0)
