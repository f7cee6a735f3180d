"""Checkpoint integrity at the module level: checksums written per step and verified on restore, damaged
steps moved aside so the step can be saved again, a workdir lock, whole-word skip messages."""

import os
import signal
import subprocess
import sys
import time

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.train import checkpoint as ckpt
from attn_jax.train.workdir_lock import WorkdirInUseError, workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(step):
    return {"w": jnp.full((64, 32), float(step)), "mu": jnp.arange(512.0) * step}


def _iterator():
    sampler = grain.samplers.IndexSampler(100, shard_options=grain.sharding.NoSharding(), num_epochs=1)
    return iter(grain.DataLoader(data_source=grain.sources.RangeDataSource(0, 100, 1), sampler=sampler))


def _save_steps(directory, steps, async_save=False):
    manager = ckpt.make_manager(directory, keep_latest=5, keep_best=0, async_save=async_save)
    for step in steps:
        ckpt.save(manager, step, _state(step), _iterator())
    manager.wait_until_finished()
    return manager


def _abstract():
    return {k: np.zeros_like(v) for k, v in _state(1).items()}


@pytest.mark.parametrize("async_save", [False, True])
def test_every_saved_step_gets_a_checksum_file_that_verifies(tmp_path, async_save):
    directory = str(tmp_path / "checkpoints")
    _save_steps(directory, [1, 2], async_save).close()
    for step in (1, 2):
        assert ckpt.verify_checksums(os.path.join(directory, str(step)))


def test_bit_flipped_checkpoint_is_reported_and_skipped(tmp_path, capsys, flip_a_checkpoint_byte):
    directory = str(tmp_path / "checkpoints")
    manager = _save_steps(directory, [1, 2])
    flip_a_checkpoint_byte(os.path.join(directory, "2"))
    state, step = ckpt.restore_latest(manager, _abstract())
    out = capsys.readouterr().out
    assert step == 1 and float(state["w"][0, 0]) == 1.0
    assert "skipping unreadable step 2" in out and "SHA-256 mismatch" in out
    manager.close()


@pytest.mark.parametrize(
    "damage, aside",
    [("flip", ".damaged"), ("delete_manifest", ".damaged"), ("delete_manifest_and_checksums", ".unverified")],
)
def test_damaged_latest_step_is_moved_aside_so_the_run_can_save_it_again(
    tmp_path, capsys, damage, aside, flip_a_checkpoint_byte
):
    directory = str(tmp_path / "checkpoints")
    manager = _save_steps(directory, [1, 2])
    step_dir = os.path.join(directory, "2")
    if damage == "flip":
        flip_a_checkpoint_byte(step_dir)
    else:
        os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))
        if damage == "delete_manifest_and_checksums":  # no checksum: never restored, set aside unverified
            os.remove(os.path.join(step_dir, ckpt.CHECKSUM_FILE))
    state, step = ckpt.restore_latest(manager, _abstract())
    assert step == 1
    assert not os.path.exists(step_dir) and os.path.isdir(os.path.join(directory + aside, "2"))
    assert "moving it to" in capsys.readouterr().out
    ckpt.save(manager, 2, _state(2), _iterator())  # used to raise StepAlreadyExistsError
    manager.close()
    manager = ckpt.make_manager(directory, keep_latest=5, keep_best=0, async_save=False)
    state, step = ckpt.restore_latest(manager, _abstract())
    assert step == 2 and float(state["w"][0, 0]) == 2.0
    manager.close()


def test_read_only_manager_skips_a_damaged_step_without_moving_it(tmp_path, flip_a_checkpoint_byte):
    directory = str(tmp_path / "checkpoints")
    _save_steps(directory, [1, 2]).close()
    flip_a_checkpoint_byte(os.path.join(directory, "2"))
    manager = ckpt.make_manager(directory, async_save=False, read_only=True)
    assert ckpt.restore_latest(manager, _abstract())[1] == 1
    assert os.path.isdir(os.path.join(directory, "2"))
    manager.close()


def test_skip_message_is_cut_at_a_word_boundary():
    words = " ".join(f"word{i}" for i in range(200))
    err = RuntimeError(f"\n{words}\nsecond line")
    summary = ckpt.error_summary(err, limit=120)
    assert summary.startswith("RuntimeError: word0 word1") and summary.endswith(" ...")
    body = summary[len("RuntimeError: ") : -len(" ...")]
    assert all(w in words.split() for w in body.split())  # only whole words, none cut
    assert "second line" not in summary


def _holder(workdir):
    code = (
        "import sys, time; from attn_jax.train.workdir_lock import workdir_lock\n"
        f"with workdir_lock({workdir!r}, 0):\n    print('locked', flush=True); time.sleep(600)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_on_a_workdir_fails_at_once(tmp_path):
    workdir = str(tmp_path / "run")
    proc = _holder(workdir)
    try:
        start = time.time()
        with pytest.raises(WorkdirInUseError, match=rf"workdir .* is in use by process {proc.pid} on "):
            with workdir_lock(workdir, 0):
                pass
        assert time.time() - start < 5
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    proc = _holder(workdir)
    proc.send_signal(signal.SIGKILL)  # no cleanup: the lock file stays behind
    proc.wait()
    assert os.path.exists(os.path.join(workdir, ".lock-0"))
    with workdir_lock(workdir, 0) as path:
        assert "removing stale lock" in capsys.readouterr().out
        assert os.path.exists(path)
    assert not os.path.exists(path)  # released on exit
