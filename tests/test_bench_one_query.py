"""benchmarks/one_query.py: its three variants compute the same attention (values and gradients), the
"key chunks" variant really is traced with the key-chunk forward and backward, the flag is restored, and
each measurement runs in its own process."""

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
    backward_blocks = []
    original_bwd = chunked._one_query_bwd
    spy = lambda g, *a: backward_blocks.append(g) or original_bwd(g, *a)  # noqa: E731
    monkeypatch.setattr(chunked, "_one_query_bwd", spy)
    one_query._compiled("key chunks", "fwdbwd", args)
    assert blocks == [] and backward_blocks == []
    one_query._compiled("example blocks", "fwdbwd", args)
    assert len(blocks) == 1 and blocks[0] > 1  # several whole examples per step at this shape
    assert backward_blocks == blocks


def test_measure_reports_a_median_per_variant_each_from_a_fresh_process(monkeypatch):
    processes = []
    real = one_query.harness.run_in_fresh_process
    spy = lambda fn, args, **kw: processes.append(args[0]) or real(fn, args, **kw)  # noqa: E731
    monkeypatch.setattr(one_query.harness, "run_in_fresh_process", spy)
    result = one_query.measure(DIMS, "fwd", rounds=2, calls=1)
    assert all(result[v] > 0 for v in one_query.VARIANTS)
    assert all(len(result["rounds_ms"][v]) == 2 for v in one_query.VARIANTS)
    assert processes == list(one_query.VARIANTS) * 2  # alternated: A B C A B C
