"""Data validation: out-of-range labels, boxes and masks are errors naming the example and the file; a
damaged memory-mapped cache is detected (sizes and CRC-32 of its manifest) and the message says how to
rebuild it."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attn_jax.data import make_pipeline, prepare
from attn_jax.data import memory_source as ms
from attn_jax.data import pipeline as P
from attn_jax.data.validate import example_problem

TINY_DET = "cluttered_digits/tiny_detection"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    prepare("tiny_detection", path)
    return path


def _raw_records(data_dir, n=8):
    source = tfds.data_source(TINY_DET, split="test", data_dir=data_dir, download=False)
    return [source[i] for i in range(n)]


@pytest.mark.parametrize(
    "task, field, value, match",
    [
        ("classification", "label", 1000, r"example 3: label 1000 outside \[0, 10\)"),
        ("detection", "box_labels", np.array([12]), r"example 3: box_labels \[12\] outside \[0, 10\)"),
        (
            "detection",
            "boxes",
            np.array([[0.1, 0.1, 1.5, 0.4]], np.float32),
            r"example 3: boxes .* within \[0, 1\]",
        ),
        (
            "detection",
            "boxes",
            np.array([[0.5, 0.1, 0.2, 0.4]], np.float32),
            r"example 3: .*max below its min",
        ),
        (
            "segmentation",
            "mask",
            np.full((32, 32), 11, np.uint8),
            r"example 3: mask values in \[11, 11\] outside",
        ),
    ],
)
@pytest.mark.parametrize("columns", [True, False], ids=["memory_columns", "per_record"])
def test_out_of_range_data_is_an_error_naming_example_and_file(
    data_dir, monkeypatch, task, field, value, match, columns
):
    records = _raw_records(data_dir)
    records[3] = dict(records[3], **{field: value})
    if field == "box_labels":
        records[3]["boxes"] = np.asarray(records[3]["boxes"])[:1]
    source = ms.MemorySource(records) if columns else records  # columns: checked once, vectorised
    monkeypatch.setattr(P, "load_source", lambda adapter, split, data_dir: source)
    with pytest.raises(ValueError, match=match) as err:
        loader = make_pipeline(TINY_DET, "test", batch_size=8, task=task, data_dir=data_dir, num_devices=1)
        next(iter(loader))
    assert f"split 'test' ({os.path.join(data_dir, TINY_DET)})" in str(err.value)


def test_valid_examples_pass_the_checks(data_dir):
    from attn_jax.data.sources import _digits_record

    for rec in _raw_records(data_dir):
        ex = _digits_record(rec)
        for task, classes in (("classification", 10), ("detection", 10), ("segmentation", 11)):
            assert example_problem(ex, task, classes) is None


def test_inverted_box_is_an_error():
    ex = {"boxes": np.array([[0.5, 0.1, 0.2, 0.4]]), "box_labels": np.array([1])}
    assert "max below its min" in example_problem(ex, "detection", 10)


def _cache(data_dir, tmp_path):
    source = tfds.data_source(TINY_DET, split="test", data_dir=data_dir, download=False)
    cache = str(tmp_path / "memory-test")
    ms.MemorySource(source, cache)
    return source, cache


@pytest.mark.parametrize("damage", ["truncate", "delete_column", "flip_byte", "delete_manifest"])
def test_damaged_cache_names_the_file_and_how_to_rebuild(data_dir, tmp_path, monkeypatch, damage):
    source, cache = _cache(data_dir, tmp_path)
    monkeypatch.setattr(ms, "_VERIFIED", set())  # as a fresh process: checksums not verified yet
    column = os.path.join(cache, "mask.npy")
    if damage == "truncate":
        os.truncate(column, os.path.getsize(column) // 2)
        want = r"mask\.npy has \d+ bytes, \d+ when built"
    elif damage == "delete_column":
        os.remove(os.path.join(cache, "label.npy"))
        want = r"label\.npy is missing"
    elif damage == "flip_byte":
        with open(column, "r+b") as f:
            f.seek(os.path.getsize(column) - 100)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 1]))
        want = r"mask\.npy changed since it was built \(CRC-32 mismatch\)"
    else:
        os.remove(os.path.join(cache, ms.MANIFEST))
        os.remove(os.path.join(cache, "label.npy"))
        ms.MemorySource(source, cache)  # an older version's cache (no manifest) is rebuilt, not trusted
        assert os.path.exists(os.path.join(cache, "label.npy"))
        return
    with pytest.raises(ms.DamagedCacheError, match=want) as err:
        ms.MemorySource(source, cache)
    assert cache in str(err.value) and f"rm -r {cache}" in str(err.value)


def test_building_says_no_download(tmp_path, capfd):
    prepare("tiny", str(tmp_path))
    out = capfd.readouterr().out
    assert "locally (no download)" in out and "Downloading" not in out
