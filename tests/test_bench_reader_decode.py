"""benchmarks/reader_decode.py: the PyTorch twin is the Flax AttentionReader (same logits, attention and
greedy tokens on the Flax weights), the round summary is a median of medians, and the --quick command writes
its table's JSON with the load average (the torch variants skipped cleanly without torch)."""

import functools
import json

import jax
import numpy as np
import pytest

from benchmarks import reader_decode as R


def test_host_batch_is_in_the_data_format():
    batch = R.host_batch(dict(R.QUICK, batch=64, max_length=5))
    tokens = batch["sequence"]
    assert batch["image"].shape == (64, 16, 32, 1) and tokens.shape == (64, 5)
    for row in tokens:
        end = int(np.flatnonzero(row == R.END)[0])
        assert 1 <= end <= 4 and (row[:end] < 10).all() and (row[end + 1 :] == R.PAD).all()


def test_summary_is_the_median_of_the_round_medians():
    size = dict(R.QUICK, batch=8, max_length=5)
    runs = [
        {"decode_times": [0.1, 0.2, 0.9], "train_times": [1.0], "decode_first_s": 3.0, "train_first_s": 1.0},
        {"decode_times": [0.4, 0.4, 0.4], "train_times": [2.0], "decode_first_s": 1.0, "train_first_s": 1.0},
        {"decode_times": [0.9, 5.0, 0.1], "train_times": [4.0], "decode_first_s": 2.0, "train_first_s": 1.0},
    ]
    row = R.summarise("jax", runs, size)
    assert row["decode_round_ms"] == pytest.approx([200.0, 400.0, 900.0])
    assert row["decode_ms"] == pytest.approx(400.0) and row["train_ms"] == pytest.approx(2000.0)
    assert row["decode_tokens_per_s"] == pytest.approx(8 * 5 / 0.4) and row[
        "train_images_per_s"
    ] == pytest.approx(4)


def test_torch_twin_computes_the_flax_model():
    torch = pytest.importorskip("torch")
    size = R.QUICK
    model = R.jax_model(size)
    host = R.host_batch(size)
    variables = jax.jit(model.init)(jax.random.key(1), host["image"], host["sequence"])
    rng = np.random.default_rng(0)  # nonzero biases and BN statistics, so that every weight matters
    variables = jax.tree.map(lambda x: np.asarray(x) + 0.3 * rng.standard_normal(x.shape).astype(np.float32),
                             variables)  # fmt: skip
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])  # variances stay positive
    logits, alpha = jax.jit(model.apply)(variables, host["image"], host["sequence"])
    greedy = jax.jit(functools.partial(model.apply, method="decode"))(variables, host["image"])

    twin = R.torch_model(size).eval()
    R.load_flax_weights(twin, variables)
    images = torch.from_numpy(host["image"].transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        twin_logits, twin_alpha = twin(images, torch.from_numpy(host["sequence"]).long())
        tokens, scores, twin_greedy_alpha = twin.decode(images, size["max_length"])
    np.testing.assert_allclose(twin_logits.numpy(), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(twin_alpha.numpy(), alpha, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(tokens.numpy(), greedy.tokens)
    np.testing.assert_allclose(scores.numpy(), greedy.scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(twin_greedy_alpha.numpy(), greedy.attention, rtol=1e-4, atol=1e-5)


def test_quick_command_writes_the_table_json(tmp_path, capsys):
    out = tmp_path / "reader.json"
    variants = ["jax", "torch-eager"]
    R.main(["--quick", "--variants", *variants, "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["quick"] is True and payload["size"]["batch"] == R.QUICK["batch"]
    assert len(payload["loadavg_before"]) == 3 and payload["environment"]["loadavg"] is not None
    assert "load average" in payload["uptime_before"] and payload["environment"]["command"]
    rows = {r["variant"]: r for r in payload["results"]}
    expected = variants if R.torch_available() else ["jax"]
    assert list(rows) == expected
    for row in rows.values():
        assert row["rounds"] == 1 and row["decode_tokens_per_s"] > 0 and row["train_images_per_s"] > 0
    assert "| jax | 4 |" in capsys.readouterr().out


def test_without_torch_the_torch_variants_are_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(R, "torch_available", lambda: False)
    ran = []
    monkeypatch.setattr(R, "run", lambda variants, size, **kw: ran.append(list(variants)) or [])
    R.main(["--quick", "--out", str(tmp_path / "r.json")])
    assert ran == [["jax"]]
    assert "torch not installed: skipping the PyTorch variants" in capsys.readouterr().err


@pytest.mark.parametrize("argv, want", [([], "strided"), (["--matmul-grad", "none"], "none")])
def test_matmul_grad_choice_reaches_the_jax_model(tmp_path, monkeypatch, argv, want):
    sizes = []
    monkeypatch.setattr(R, "run", lambda variants, size, **kw: sizes.append(size) or [])
    R.main(["--quick", "--variants", "jax", "--out", str(tmp_path / "r.json"), *argv])
    assert sizes[0]["matmul_grad"] == want  # the reading config's CPU choice by default
    assert R.jax_model(sizes[0]).backbone.matmul_grad == want
    assert json.loads((tmp_path / "r.json").read_text())["size"]["matmul_grad"] == want
