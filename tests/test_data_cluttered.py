"""cluttered_digits: builds/reads without TensorFlow; features, tight boxes, identity split, determinism."""

import dataclasses
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_jax.data import _synth
from attn_jax.data import cluttered_digits as cd


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """tiny and tiny_detection built once into a temporary data_dir; returns (data_dir, sources)."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    sources = {}
    for name in ("tiny", "tiny_detection"):
        cd.prepare(name, data_dir)
        sources[name] = tfds.data_source(f"cluttered_digits/{name}", data_dir=data_dir, download=False)
    return data_dir, sources


def _records(source):
    return [source[i] for i in range(len(source))]


def _check_tight(ex):
    """Every digit pixel is inside a box of its class; every box edge touches a pixel of its class."""
    mask, boxes, labels = ex["mask"], np.asarray(ex["boxes"]), np.asarray(ex["box_labels"])
    h, w = mask.shape
    covered = np.zeros_like(mask, bool)
    for box, label in zip(boxes, labels):
        y0, x0, y1, x1 = np.round(box * np.array([h, w, h, w])).astype(int)
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w, box
        inside = mask[y0:y1, x0:x1] == label + 1
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any(), (
            box,
            label,
        )
        covered[y0:y1, x0:x1] |= mask[y0:y1, x0:x1] == label + 1
    assert np.array_equal(covered, mask > 0)


def test_builds_and_reads_without_tensorflow(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from attn_jax.data import make_pipeline, prepare
        prepare("tiny", {str(tmp_path)!r})
        loader = make_pipeline("cluttered_digits/tiny", "train", batch_size=8, train=True,
                               data_dir={str(tmp_path)!r}, num_devices=1, shard_index=0, shard_count=1)
        batch = next(iter(loader))
        assert batch["image"].shape == (8, 32, 32, 1), batch["image"].shape
        print("TF_IMPORTED", "tensorflow" in sys.modules)
        """
    )
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": repo},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TF_IMPORTED False" in out.stdout
    assert "tensorflow" not in sys.modules


def test_concurrent_builds_into_one_data_dir(tmp_path):
    code = f"from attn_jax.data import prepare; prepare('tiny', {str(tmp_path)!r})"
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE) for _ in "ab"]
    errors = [p.communicate(timeout=300)[1].decode()[-2000:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    source = tfds.data_source("cluttered_digits/tiny", split="test", data_dir=str(tmp_path), download=False)
    assert len(source) == 64


@pytest.mark.parametrize("name", ["tiny", "tiny_detection"])
def test_features_shapes_and_dtypes(built, name):
    _, sources = built
    cfg = cd.ClutteredDigits.builder_configs[name]
    assert len(sources[name]["train"]) == cfg.num_train and len(sources[name]["test"]) == cfg.num_test
    for ex in _records(sources[name]["test"])[:16]:
        k = len(ex["boxes"])
        assert cfg.min_digits <= k <= cfg.max_digits
        assert ex["image"].shape == (cfg.canvas_size, cfg.canvas_size, 1) and ex["image"].dtype == np.uint8
        assert ex["mask"].shape == (cfg.canvas_size, cfg.canvas_size) and ex["mask"].dtype == np.uint8
        assert ex["boxes"].shape == (k, 4) and ex["boxes"].dtype == np.float32
        assert ex["box_labels"].shape == (k,) and ex["box_labels"].dtype == np.int64
        assert int(ex["label"]) == int(ex["box_labels"][0])
        assert set(np.unique(ex["mask"])) <= {0} | {int(c) + 1 for c in ex["box_labels"]}
        assert ex["image"][ex["mask"] > 0].min() > 0  # digit pixels are ink


def test_detection_config_has_one_to_three_digits(built):
    _, sources = built
    counts = [len(ex["boxes"]) for ex in _records(sources["tiny_detection"]["train"])]
    assert min(counts) == 1 and max(counts) == 3


@pytest.mark.parametrize("name", ["tiny", "tiny_detection"])
def test_boxes_tight_around_mask_pixels(built, name):
    _, sources = built
    for ex in _records(sources[name]["train"])[:64]:
        _check_tight(ex)


def test_train_test_split_by_digit_identity(built):
    _, sources = built
    ids = {
        split: set(np.concatenate([ex["source_ids"] for ex in _records(sources["tiny_detection"][split])]))
        for split in ("train", "test")
    }
    assert ids["train"] and ids["test"] and not ids["train"] & ids["test"]
    pools = _synth.split_identities(0)
    assert ids["train"] <= set(pools["train"]) and ids["test"] <= set(pools["test"])
    assert len(pools["train"]) + len(pools["test"]) == 1797 and not set(pools["train"]) & set(pools["test"])


def test_deterministic_across_builds(built, tmp_path):
    _, sources = built
    cd.prepare("tiny", str(tmp_path))
    again = tfds.data_source("cluttered_digits/tiny", data_dir=str(tmp_path), download=False)["test"]
    first = sources["tiny"]["test"]
    for i in range(len(first)):
        for key in ("image", "mask", "boxes", "box_labels", "source_ids"):
            np.testing.assert_array_equal(first[i][key], again[i][key])


def test_seed_changes_the_data(built, tmp_path):
    _, sources = built
    base = cd.ClutteredDigits.builder_configs["tiny"]
    other = dataclasses.replace(base, name="tiny_seed1", seed=1)
    source = cd.prepare(other, str(tmp_path)).as_data_source(split="test")
    assert not np.array_equal(source[0]["image"], sources["tiny"]["test"][0]["image"])


def test_prepare_rejects_unknown_config(tmp_path):
    with pytest.raises(ValueError, match="unknown cluttered_digits config 'nope'"):
        cd.prepare("nope", str(tmp_path))


@settings(max_examples=8, deadline=None)
@given(
    canvas=st.sampled_from([16, 40, 64, 96]),
    channels=st.sampled_from([1, 3]),
    max_digits=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_synthesize_invariants(canvas, channels, max_digits, seed):
    spec = _synth.SynthSpec(canvas_size=canvas, channels=channels, max_digits=max_digits, num_clutter=3)
    pool = _synth.split_identities(0)["test"]
    examples = _synth.synthesize(np.random.default_rng(seed), pool, 12, spec)
    _, labels = _synth.source_digits()
    for ex in examples:
        assert ex["image"].shape == (canvas, canvas, channels)
        assert 1 <= len(ex["boxes"]) <= max_digits
        assert set(ex["source_ids"]) <= set(pool)
        np.testing.assert_array_equal(labels[ex["source_ids"]], ex["box_labels"])
        _check_tight(ex)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"canvas_size": 8}, "canvas_size"),
        ({"channels": 2}, "channels"),
        ({"min_digits": 3, "max_digits": 2}, "min_digits"),
        ({"num_clutter": -1}, "num_clutter"),
    ],
)
def test_synth_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _synth.SynthSpec(**kwargs)
