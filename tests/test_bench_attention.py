"""benchmarks/attention.py: the lax.map + checkpoint baseline computes the same attention, and the summary
table picks the fastest implementation per (shape, mode)."""

import jax
import numpy as np

from attn_jax.functional import additive_attention
from benchmarks.attention import build_case, chunk_of, summary


def test_baseline_equals_the_library_values_and_gradients():
    shape = (2, 3, 12, 5, 8)  # B m n d a: c = 12 (2 * 3 * 12 * 8 <= 2^20)
    fn, (args,) = build_case(shape, "baseline", "fwd", 4)
    lib, _ = build_case(shape, "default", "fwd", 4)
    np.testing.assert_allclose(fn(args), lib(args), rtol=1e-5, atol=1e-6)
    ref = additive_attention(args["q"], args["h"], w_q=args["w_q"], w_k=args["w_k"], w_a=args["w_a"])[0]
    np.testing.assert_allclose(fn(args), ref, rtol=1e-5, atol=1e-6)
    grad_fn, grad_args = build_case(shape, "baseline", "fwd+bwd", 4)
    lib_grad, _ = build_case(shape, "chunked", "fwd+bwd", 4)
    for g, g_lib in zip(jax.tree.leaves(grad_fn(*grad_args)), jax.tree.leaves(lib_grad(*grad_args))):
        np.testing.assert_allclose(g, g_lib, rtol=1e-4, atol=1e-5)


def test_baseline_chunks_by_the_largest_divisor_under_the_budget():
    assert chunk_of("baseline", (64, 1, 196, 512, 512), 0) == 28  # 2^20 / (64 * 512) = 32 -> 28 | 196
    assert chunk_of("baseline", (4, 1, 4096, 256, 256), 0) == 1024
    assert chunk_of("chunked", (4, 1, 4096, 256, 256), 7) == 7
    assert chunk_of("unchunked", (4, 1, 4096, 256, 256), 7) is None


def test_summary_one_row_per_shape_and_mode():
    rows = [
        {"shape": "W2", "mode": "fwd", "impl": "default", "ms": 20.0},
        {"shape": "W2", "mode": "fwd", "impl": "baseline", "ms": 25.0},
        {"shape": "W2", "mode": "fwd+bwd", "impl": "default", "ms": 60.0},
        {"shape": "W2", "mode": "fwd+bwd", "impl": "torch eager", "ms": 50.0},
        {"shape": "BIG", "mode": "fwd", "impl": "chunked", "ms": 1.0},  # not a table shape
    ]
    table = summary(rows)
    assert [(r["shape"], r["mode"]) for r in table] == [("W2", "fwd"), ("W2", "fwd+bwd")]
    assert table[0]["default / fastest"] == 1.0
    assert table[1]["default / fastest"] == 60.0 / 50.0
