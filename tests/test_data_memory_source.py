"""In-memory cluttered_digits source: same records and batches as reading through tfds, cached once."""

import os
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attn_jax.data import make_pipeline, prepare
from attn_jax.data import sources as S
from attn_jax.data import transforms as T
from attn_jax.data.column_batches import ColumnBatches
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


def _per_record_batch(source, rows, task, max_boxes):
    """The batch the per-record path builds: Prepare on each tfds record, stacked."""
    prepare = T.Prepare(S.get_adapter(TINY_DET, task).canonicalize, task, None, max_boxes)
    examples = [prepare.map(source[int(i)]) for i in rows]
    return {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
@pytest.mark.parametrize("max_boxes", [2, 5])
def test_column_batches_equal_reading_records_through_tfds(data_dir, task, max_boxes):
    # The vectorised reader (one gather per column, ragged boxes padded / truncated at once) gives, for
    # the rows it names, exactly what Prepare gives record by record from the tfds source.
    source = tfds.data_source(TINY_DET, split="train", data_dir=data_dir, download=False)
    memory = S.load_source(S.get_adapter(TINY_DET, task), "train", data_dir)
    batches = ColumnBatches(memory, task, batch_size=24, train=True, seed=5, max_boxes=max_boxes)
    counts = set()
    for j in (0, 1, batches.per_epoch + 3):
        rows = batches.rows(j)
        want = _per_record_batch(source, rows, task, max_boxes)
        _records_equal(want, batches[j])
        if task == "detection":
            counts |= set(want["box_valid"].sum(1).tolist())
    if task == "detection":  # the data has 1-3 boxes: some images are truncated at max_boxes=2
        assert counts == ({1, 2} if max_boxes == 2 else {1, 2, 3})


def test_column_pipeline_equals_per_record_pipeline_in_eval_order(data_dir, monkeypatch):
    def batches(**kw):
        loader = make_pipeline(
            TINY_DET, "test", batch_size=24, task="detection", data_dir=data_dir, num_devices=1,
            max_boxes=3, **kw,
        )  # fmt: skip
        return list(loader)

    from_columns = {i: batches(shard_index=i, shard_count=2) for i in range(2)}
    monkeypatch.setattr(S, "MemorySource", lambda source, cache_dir: source)
    from_records = batches(shard_index=0, shard_count=1)
    assert len(from_records) == len(from_columns[0]) == 3  # 64 examples: 24 + 24 + 16 and padding
    for whole, parts in zip(from_records, zip(from_columns[0], from_columns[1])):
        # each process holds its half of every global batch, padding included
        _records_equal(whole, {key: np.concatenate([p[key] for p in parts]) for key in whole})


def test_training_epoch_is_a_permutation_and_batches_ignore_the_process_count(data_dir):
    def batches(index, count, n=11):
        loader = make_pipeline(
            TINY_DET, "train", batch_size=24, task="detection", train=True, seed=4, data_dir=data_dir,
            num_devices=1, shard_index=index, shard_count=count, augment=("crop", "affine"),
        )  # fmt: skip
        it = iter(loader)
        return [next(it) for _ in range(n)]

    whole, halves = batches(0, 1), [batches(i, 2) for i in range(2)]
    for j, batch in enumerate(whole):  # augmentation included: drawn for the global batch
        _records_equal(batch, {key: np.concatenate([h[j][key] for h in halves]) for key in batch})
    memory = S.load_source(S.get_adapter(TINY_DET, "detection"), "train", data_dir)
    reader = ColumnBatches(memory, "detection", batch_size=24, train=True, seed=4)
    epoch = np.concatenate([reader.rows(j) for j in range(reader.per_epoch)])
    assert reader.per_epoch == len(memory) // 24 and len(set(epoch.tolist())) == len(epoch)
    second = np.concatenate([reader.rows(reader.per_epoch + j) for j in range(reader.per_epoch)])
    assert not np.array_equal(epoch, second) and set(second.tolist()) <= set(range(len(memory)))
