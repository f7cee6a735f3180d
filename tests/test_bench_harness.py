"""benchmarks/harness.py: fresh-process measurement, compile-only memory analysis, table and JSON."""

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import harness


def build_matmul(size: int):
    """A case builder: jitted matmul + sort, which needs (size, size) float32 temporaries."""
    x = jnp.ones((size, size), jnp.float32)
    return jax.jit(lambda x: jnp.sum(jnp.sort(jnp.tanh(x @ x) @ x))), (x,)


def probe_pid():
    """A probe: which process ran it."""
    import os

    return os.getpid()


def test_measure_case_fresh_process():
    res = harness.measure_case(
        "tests.test_bench_harness:build_matmul", {"size": 256}, warmup=1, repeats=3,
        probe="tests.test_bench_harness:probe_pid",
    )  # fmt: skip
    import os

    assert res["probes"][0] == res["probes"][1] != os.getpid()  # run twice, in one fresh process
    assert len(res["times"]) == 3 and all(t > 0 for t in res["times"])
    assert min(res["times"]) <= res["median_s"] <= max(res["times"])
    assert res["temp_bytes"] >= 256 * 256 * 4  # at least the (size, size) intermediate


def die_silently():
    """A child that exits without reporting, as an XLA abort (e.g. an unknown XLA_FLAGS entry) does."""
    import os

    os._exit(3)


def test_child_that_dies_without_reporting_is_reported_as_dead():
    # before: the parent waited for the whole timeout, then blamed it
    with pytest.raises(RuntimeError, match="died with exit code 3"):
        harness.run_in_fresh_process(die_silently, (), timeout=60, label="dying child")


def test_compile_only_and_failure_reported():
    res = harness.compile_only("tests.test_bench_harness:build_matmul", {"size": 512})
    assert res["temp_bytes"] >= 512 * 512 * 4
    try:
        harness.measure_case("tests.test_bench_harness:build_matmul", {"size": -1}, repeats=1)
    except RuntimeError as e:
        assert "failed" in str(e)
    else:
        raise AssertionError("a failing case must raise RuntimeError")


def test_table_and_json(tmp_path, capsys):
    rows = [{"name": "a", "t": 1.5}, {"name": "b", "t": None}]
    harness.print_table(rows, [("name", "case", ""), ("t", "ms", ".1f")])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| case | ms |" and out[2] == "| a | 1.5 |" and out[3] == "| b | - |"
    path = harness.write_json(tmp_path / "r.json", rows, rates={"x": 1.0})
    data = json.loads(path.read_text())
    assert data["results"] == rows and data["rates"] == {"x": 1.0}
    assert data["environment"]["backend"] == jax.default_backend()
    assert harness.matmul_rate(size=128, repeats=2) > 0 and harness.fused_tanh_rate(64, 256, 2) > 0


def test_attention_combine_rounds_takes_medians_and_max_memory():
    from benchmarks.attention import combine_rounds

    base = dict(shape="W2", mode="fwd", impl="chunked", rel_err=1e-7, lb_ms=20.0, temp_mb=10.0)
    rounds = [
        dict(base, ms=30.0, x_lb=1.5, touched_mb=12.0, times_ms=[30.0], rates={"r": 1}),
        dict(base, ms=10.0, x_lb=0.5, touched_mb=15.0, times_ms=[10.0], rates={"r": 2}),
        dict(base, ms=20.0, x_lb=1.0, touched_mb=None, times_ms=[20.0], rates={"r": 3}),
    ]
    row = combine_rounds(rounds)
    assert (row["ms"], row["x_lb"], row["touched_mb"], row["temp_mb"]) == (20.0, 1.0, 15.0, 10.0)
    assert row["round_ms"] == [30.0, 10.0, 20.0] and row["times_ms"] == [30.0, 10.0, 20.0]
    assert row["rel_err"] == 1e-7 and len(row["rates"]) == 3


def test_xla_reduction_variants_compute_the_same_sums():
    import numpy as np

    from benchmarks import xla_reductions as X

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(k1, (64, 8), jnp.float32)
    keys = jax.random.normal(k2, (16, 8), jnp.float32)
    d_s = jax.random.normal(k3, (64, 16), jnp.float32)
    (lib_dq, lib_dwa), lib_dkeys = X.backward_library(q, keys, d_s)
    (exp_dq, exp_dwa), exp_dkeys = X.backward_library_exp(q, keys, d_s)
    (dq, dwa), dkeys = X.backward_stored_tanh(q, keys, d_s)
    (dq2, dwa_rows), _ = X.sums_over_keys_one_output(q, keys, d_s)
    pairs = [(lib_dq, dq), (lib_dwa, dwa), (lib_dkeys, dkeys), (dq, dq2), (dwa, jnp.sum(dwa_rows, 0))]
    pairs += [(exp_dq, dq), (exp_dwa, dwa), (exp_dkeys, dkeys)]
    for a, b in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
