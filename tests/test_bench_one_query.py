"""benchmarks/one_query.py: its three variants compute the same attention (values and gradients), the
"key chunks" variant really is traced with the key-chunk forward, and the flag is restored."""

import jax
import numpy as np
import pytest

from attn_jax.functional import chunked
from benchmarks import one_query

DIMS = {"B": 16, "m": 1, "n": 20, "d": 5, "a": 4096}  # 5 MiB of tanh: "auto" chunks, 8 examples a block


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_variants_compute_the_same_attention(mode):
    args = one_query._inputs(DIMS)
    outputs = {v: one_query._compiled(v, mode, args)(*args) for v in one_query.VARIANTS}
    assert chunked.ONE_QUERY_EXAMPLE_BLOCKS is True
    reference = outputs["baseline"]
    for variant, out in outputs.items():
        for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(reference)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=variant)


def test_key_chunk_variant_is_traced_without_example_blocks(monkeypatch):
    blocks = []
    original = chunked._one_query_scores
    monkeypatch.setattr(chunked, "_one_query_scores", lambda *a: blocks.append(a[-1]) or original(*a))
    args = one_query._inputs(DIMS)
    one_query._compiled("key chunks", "fwd", args)
    assert blocks == []
    one_query._compiled("example blocks", "fwd", args)
    assert len(blocks) == 1 and blocks[0] > 1  # several whole examples per step at this shape


def test_measure_reports_a_median_per_variant():
    result = one_query.measure(DIMS, "fwd", rounds=2, calls=1)
    assert all(result[v] > 0 for v in one_query.VARIANTS)
    assert all(len(result["rounds_ms"][v]) == 2 for v in one_query.VARIANTS)
