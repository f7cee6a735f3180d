"""In-memory cluttered_digits source: same records and batches as reading through tfds, cached once."""

import os
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attn_jax.data import make_pipeline, prepare
from attn_jax.data import sources as S
from attn_jax.data.memory_source import MemorySource

TINY_DET = "cluttered_digits/tiny_detection"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    prepare("tiny_detection", path)
    return path


def _records_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        want = np.asarray(a[key])
        assert b[key].dtype == want.dtype and b[key].shape == want.shape, key
        np.testing.assert_array_equal(b[key], want, err_msg=key)


def test_records_equal_tfds_and_cache_is_reused(data_dir, tmp_path):
    source = tfds.data_source(TINY_DET, split="test", data_dir=data_dir, download=False)
    cache = str(tmp_path / "cache")
    built = MemorySource(source, cache)
    assert len(built) == len(source) and os.path.isdir(cache)
    assert "boxes.offsets.npy" in os.listdir(cache)  # 1-3 boxes per image: a ragged column
    reopened = MemorySource(source, cache)  # from the .npy files, memory-mapped
    for i in (0, 1, len(source) - 1):
        _records_equal(source[i], built[i])
        _records_equal(source[i], reopened[i])
    _records_equal(source[len(source) - 1], reopened[-1])
    with pytest.raises(IndexError, match="out of range"):
        reopened[len(source)]
    clone = pickle.loads(pickle.dumps(reopened))  # grain workers: re-opens the map, data not pickled
    assert len(pickle.dumps(reopened)) < 1000
    _records_equal(source[3], clone[3])


def test_cache_of_another_size_is_refused(data_dir, tmp_path):
    source = tfds.data_source(TINY_DET, split="test", data_dir=data_dir, download=False)
    cache = str(tmp_path / "cache")
    MemorySource([source[0], source[1]], cache)
    with pytest.raises(ValueError, match="holds 2 records"):
        MemorySource(source, cache)
    with pytest.raises(ValueError, match="non-empty source"):
        MemorySource([], str(tmp_path / "empty"))


def test_pipeline_batches_equal_reading_through_tfds(data_dir, monkeypatch):
    def batches():
        loader = make_pipeline(
            TINY_DET, "train", batch_size=8, task="detection", train=True, seed=2, data_dir=data_dir,
            num_devices=1, shard_index=0, shard_count=1, augment=("crop", "affine"),
        )  # fmt: skip
        it = iter(loader)
        return [next(it) for _ in range(3)]

    from_memory = batches()
    assert isinstance(S.load_source(S.get_adapter(TINY_DET), "train", data_dir), MemorySource)
    monkeypatch.setattr(S, "MemorySource", lambda source, cache_dir: source)
    from_tfds = batches()
    for a, b in zip(from_memory, from_tfds):
        _records_equal(b, a)
