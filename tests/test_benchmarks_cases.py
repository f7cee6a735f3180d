"""The benchmark compares like with like: every implementation computes the same context and gradients."""

import jax
import numpy as np
import pytest

from benchmarks.cases import attention_case, attention_counts

TINY = {"B": 2, "m": 3, "n": 10, "d": 4, "a": 5}


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_implementations_agree(mode):
    outs = {}
    for impl in ("naive", "unchunked", "pallas", "pallas_tpu"):  # the kernels run in interpret mode on CPU
        fn, args = attention_case(shape=TINY, impl=impl, mode=mode)
        outs[impl] = jax.tree.leaves(fn(*args))
    for impl in ("unchunked", "pallas", "pallas_tpu"):
        for got, want in zip(outs[impl], outs["naive"]):
            assert np.all(np.isfinite(want)), "naive output not finite"  # a NaN scale would pass anything
            scale = float(np.abs(want).max())
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, equal_nan=False, err_msg=impl)


def test_counts_scale_with_mode():
    fwd, both = attention_counts(TINY, "fwd"), attention_counts(TINY, "fwdbwd")
    assert fwd["tanh"] == 2 * 3 * 10 * 5 and both["tanh"] == 2 * fwd["tanh"]
    assert both["flops"] == 3 * fwd["flops"]
