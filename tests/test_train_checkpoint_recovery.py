"""Checkpoints are never lost and never restored unverified (issue 27, items 2-5), at the module level: the
best step survives a resume, a step without checksum is set aside (not restored), a verified step that does
not fit the config is a mismatch (not damage), a full disk leaves no temporary file and removes no step, and
a report that cannot be written moves nothing."""

import builtins
import errno
import json
import os

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.train import checkpoint as ckpt


def _state(step):
    return {"w": jnp.full((64, 32), float(step)), "mu": jnp.arange(512.0) * step}


def _abstract():
    return {k: np.zeros_like(v) for k, v in _state(1).items()}


def _iterator():
    sampler = grain.samplers.IndexSampler(100, shard_options=grain.sharding.NoSharding(), num_epochs=1)
    return iter(grain.DataLoader(data_source=grain.sources.RangeDataSource(0, 100, 1), sampler=sampler))


def _manager(directory, **kwargs):
    kwargs = {"keep_latest": 5, "keep_best": 0, "async_save": False, **kwargs}
    return ckpt.make_manager(directory, **kwargs)


def _steps(directory):
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _files(root):
    return sorted(os.path.relpath(os.path.join(r, f), root) for r, _, fs in os.walk(root) for f in fs)


class _FullDiskFile:
    """A file opened for writing on a full disk: it is created, every write raises ENOSPC."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _full_disk_open(path, mode="r", *args, **kwargs):
    f = builtins.open(path, mode, *args, **kwargs)
    return _FullDiskFile(f) if any(c in mode for c in "wax+") else f


def test_best_step_survives_a_resume(tmp_path):
    directory = str(tmp_path / "checkpoints")
    manager = _manager(directory, keep_latest=1, keep_best=1)
    for step, accuracy in [(1, 0.9), (2, 0.1), (3, 0.2)]:
        ckpt.save(manager, step, _state(step), _iterator(), metrics={"accuracy": accuracy})
    manager.close()
    assert _steps(directory) == [1, 3]  # the best and the latest
    manager = _manager(directory, keep_latest=1, keep_best=1)  # a resumed run
    ckpt.save(manager, 4, _state(4), _iterator())  # no eval at this step
    ckpt.save(manager, 5, _state(5), _iterator(), metrics={"accuracy": 0.5})
    manager.close()
    assert _steps(directory) == [1, 5]  # the best (0.9) was deleted at step 4 when metrics were lost


def test_eval_metrics_and_train_time_are_kept_with_each_step(tmp_path):
    directory = str(tmp_path / "checkpoints")
    manager = _manager(directory)
    ckpt.save(manager, 1, _state(1), _iterator(), metrics={"accuracy": 0.25, "loss": 2.5}, train_time_s=12.5)
    ckpt.save(manager, 2, _state(2), _iterator())
    manager.close()
    manager = _manager(directory, read_only=True)
    assert manager.step_record(1) == {"metrics": {"accuracy": 0.25, "loss": 2.5}, "train_time_s": 12.5}
    assert manager.step_record(2) == {"metrics": None, "train_time_s": None}
    manager.close()


def test_best_step_saved_without_metadata_is_ranked_by_the_runs_metrics_log(tmp_path):
    """Steps written before metrics went into their metadata: the run's metrics.jsonl ranks them."""
    directory = str(tmp_path / "checkpoints")
    manager = _manager(directory)
    for step in (1, 2):
        ckpt.save(manager, step, _state(step), _iterator(), metrics={"accuracy": 0.1})
    manager.close()
    for step in (1, 2):  # as an older attn_jax left them: no metrics in the step's metadata
        step_dir = os.path.join(directory, str(step))
        path = os.path.join(step_dir, "_CHECKPOINT_METADATA")  # orbax's step metadata
        with open(path) as f:
            meta = json.load(f)
        meta["custom_metadata"] = {}
        with open(path, "w") as f:
            json.dump(meta, f)
        ckpt.write_checksums(step_dir)
    log = str(tmp_path / "metrics.jsonl")
    with open(log, "w") as f:
        for step, accuracy in [(1, 0.8), (2, 0.3)]:
            f.write(json.dumps({"step": step, "split": "train", "accuracy": 0.99}) + "\n")
            f.write(json.dumps({"step": step, "split": "test", "accuracy": accuracy}) + "\n")
    manager = _manager(directory, keep_latest=1, keep_best=1, metrics_log=log)
    ckpt.save(manager, 3, _state(3), _iterator())
    manager.close()
    assert _steps(directory) == [1, 3]


def test_a_step_without_checksum_is_set_aside_not_restored(tmp_path, capsys, flip_a_checkpoint_byte):
    """A byte flipped in a step that never got its checksum used to restore silently."""
    directory = str(tmp_path / "checkpoints")
    manager = _manager(directory)
    for step in (1, 2):
        ckpt.save(manager, step, _state(step), _iterator())
    manager.close()
    step_dir = os.path.join(directory, "2")
    os.remove(os.path.join(step_dir, ckpt.CHECKSUM_FILE))
    flip_a_checkpoint_byte(step_dir)
    files = _files(step_dir)

    reader = ckpt.make_manager(directory, async_save=False, read_only=True)  # eval beside the run
    assert ckpt.restore_latest(reader, _abstract())[1] == 1 and _steps(directory) == [1, 2]
    reader.close()

    manager = _manager(directory)
    state, step = ckpt.restore_latest(manager, _abstract())
    assert step == 1 and float(state["w"][0, 0]) == 1.0 and float(state["mu"][3]) == 3.0
    aside = os.path.join(directory + ckpt.UNVERIFIED_SUFFIX, "2")
    assert _files(aside) == files  # moved, nothing deleted
    assert "not restoring step 2" in capsys.readouterr().out
    ckpt.save(manager, 2, _state(2), _iterator())  # the run saves that step again, with a checksum
    manager.close()
    assert ckpt.verify_checksums(step_dir)


def test_a_verified_step_that_does_not_fit_the_config_is_a_mismatch_and_stays(tmp_path):
    directory = str(tmp_path / "checkpoints")
    manager = _manager(directory)
    for step in (1, 2):
        ckpt.save(manager, step, _state(step), _iterator())
    other = {"w": np.zeros((64, 32), np.float32), "v": np.zeros(3, np.float32)}  # another model's state
    with pytest.raises(ValueError, match=r"step 2 .* matches its checksums but does not restore") as err:
        ckpt.restore_latest(manager, other)
    manager.close()
    assert _steps(directory) == [1, 2] and not os.path.exists(directory + ckpt.DAMAGED_SUFFIX)
    assert type(err.value).__name__ == "CheckpointMismatchError" and "\n" not in str(err.value)


def test_disk_full_while_writing_a_checksum_leaves_no_temporary_file_and_removes_no_step(
    tmp_path, monkeypatch
):
    directory = str(tmp_path / "checkpoints")
    manager = _manager(directory, keep_latest=1)
    ckpt.save(manager, 1, _state(1), _iterator())
    monkeypatch.setattr(ckpt, "open", _full_disk_open, raising=False)
    with pytest.raises(OSError) as err:
        ckpt.save(manager, 2, _state(2), _iterator())
    monkeypatch.undo()
    assert [f for f in _files(str(tmp_path)) if f.endswith(".tmp")] == []
    assert _steps(directory) == [1, 2] and ckpt.verify_checksums(os.path.join(directory, "1"))
    assert not ckpt.verify_checksums(os.path.join(directory, "2"))  # finalised, not yet checksummed
    message = str(err.value)
    assert type(err.value).__name__ == "DiskFullError" and err.value.errno == errno.ENOSPC
    assert message.startswith("no space left on device while writing the checksums of"), message
    assert "\n" not in message

    manager.close()  # space freed: the pending checksum is written, then the older step goes
    assert _steps(directory) == [2] and ckpt.verify_checksums(os.path.join(directory, "2"))


def test_a_report_that_cannot_be_written_moves_no_step(tmp_path, monkeypatch):
    directory = str(tmp_path / "checkpoints")
    manager = _manager(directory)
    for step in (1, 2, 3):
        ckpt.save(manager, step, _state(step), _iterator())
    os.remove(os.path.join(directory, "3", ckpt.CHECKSUM_FILE))

    def full_stdout(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "print", full_stdout, raising=False)
    with pytest.raises(OSError) as err:
        ckpt.restore_latest(manager, _abstract())
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    manager.close()
    assert _steps(directory) == [1, 2, 3]
    assert not os.path.exists(directory + ckpt.DAMAGED_SUFFIX)
    assert not os.path.exists(directory + ckpt.UNVERIFIED_SUFFIX)
