"""The training loop keeps every checkpoint safe (issue 27, items 3-5 and 9): another config on an existing
workdir is refused before anything is compiled or written (restart=True starts over, keeping the old run),
SIGTERM after the last save is handled (no exit 143, every step verified), training time adds up across a
resume, and a full disk stops with one line naming the verified steps kept."""

import errno
import json
import os
import signal

import pytest

from attn_jax.train import checkpoint as ckpt
from attn_jax.train import loop
from tests._train_models import load_experiment_config


def _config(data_dir=None, **overrides):
    c = load_experiment_config("classification")
    c.model.features = (4, 8)
    c.data.dir = data_dir
    c.num_train_steps, c.schedule.warmup_steps, c.checkpoint_every_steps = 4, 1, 2
    c.log_every_steps, c.eval_every_steps, c.data.eval_examples = 2, 4, 32
    c.num_devices, c.progress, c.tensorboard, c.png_examples = 1, False, False, 0
    c.update(overrides)
    return c


def _old_run(workdir, config):
    """A workdir as a finished run of `config` left it (its config.json, a checkpoint, its metrics)."""
    os.makedirs(os.path.join(workdir, "checkpoints", "4"))
    for name, text in [("config.json", config.to_json_best_effort(indent=1)), ("metrics.jsonl", "{}\n")]:
        with open(os.path.join(workdir, name), "w") as f:
            f.write(text)
    with open(os.path.join(workdir, "checkpoints", "4", "state"), "w") as f:
        f.write("weights")


def _listing(root):
    return sorted(
        (os.path.relpath(os.path.join(r, f), root), os.path.getmtime(os.path.join(r, f)))
        for r, _, fs in os.walk(root)
        for f in fs
    )


class _Compiled(Exception):
    pass


def _no_compile(*args, **kwargs):
    raise _Compiled("the run went on to build its steps")


def test_another_config_on_an_existing_workdir_is_refused_before_anything_is_touched(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    _old_run(workdir, _config())
    before = _listing(workdir)
    monkeypatch.setattr(loop, "setup", _no_compile)
    monkeypatch.setattr(loop, "build_steps", _no_compile)
    other = _config(seed=1, data={"batch_size": 8})
    other.model.attention = "gate"
    with pytest.raises(ValueError) as err:
        loop.train_and_evaluate(other, workdir)
    message = str(err.value)
    assert "\n" not in message and "another --workdir" in message and "--restart" in message, message
    for field in (
        "seed: 0 (run) != 1 (given)",
        "data.batch_size: 32 (run) != 8 (given)",
        "model.attention: ",
    ):
        assert field in message, message
    assert _listing(workdir) == before  # nothing written, moved or locked


def test_what_may_change_on_resume_and_what_defines_the_experiment(tmp_path):
    workdir = str(tmp_path)
    _old_run(workdir, _config())
    resumed = _config(
        data={"dir": "/elsewhere", "eval_examples": 0}, num_train_steps=100, eval_every_steps=3,
        checkpoint_every_steps=7, keep_latest=5, keep_best=0, log_every_steps=1, progress=True,
        num_devices=2, cpu={"devices": 4, "matmul_grad": "all"},
    )  # fmt: skip
    resumed.model.dtype = "bfloat16"
    loop.check_workdir_config(resumed, workdir)  # no error
    for field, value in [
        ("seed", 3), ("data.batch_size", 16), ("optim.lr", 0.1), ("optim.name", "sgd"),
        ("schedule.warmup_steps", 2), ("optim.clip_norm", 0.0), ("data.augment", ("affine",)),
        ("data.dataset", "cluttered_digits"), ("classification.label_smoothing", 0.1),
    ]:  # fmt: skip
        changed = _config()
        changed.update_from_flattened_dict({field: value})
        with pytest.raises(loop.CheckpointMismatchError, match=rf"\({field}: "):
            loop.check_workdir_config(changed, workdir)
    with pytest.raises(
        loop.CheckpointMismatchError, match=r"\(model.features: \[4, 8\] \(run\) != \[4, 16\]"
    ):
        loop.check_workdir_config(_config(model={"features": (4, 16)}), workdir)


def test_restart_moves_the_previous_run_aside(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    _old_run(workdir, _config())
    before = _listing(workdir)
    monkeypatch.setattr(loop, "build_steps", _no_compile)
    with pytest.raises(_Compiled):
        loop.train_and_evaluate(_config(seed=5), workdir, restart=True)
    assert sorted(os.listdir(workdir)) == ["previous"]
    assert _listing(os.path.join(workdir, "previous", "1")) == before  # every file kept, unchanged


def test_sigterm_after_the_last_save_stops_cleanly_and_train_time_adds_up(data_dir, tmp_path):
    """SIGTERM during the end-of-run callbacks used to reach the default handler (exit 143); a resumed
    run's train_time_s counted only its own segment."""
    workdir, escaped, ran = str(tmp_path / "run"), [], []

    def sigterm_self(end):
        os.kill(os.getpid(), signal.SIGTERM)
        ran.append("first")

    def second(end):
        ran.append("second")

    previous = signal.signal(signal.SIGTERM, lambda *a: escaped.append(a[0]))
    try:
        first = loop.train_and_evaluate(_config(data_dir), workdir, callbacks=[sigterm_self, second])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert escaped == [] and ran == ["first"]  # the run's handler got it, the next callback did not start
    assert first["stop_reason"] == "sigterm" and first["step"] == 4
    directory = os.path.join(workdir, "checkpoints")
    steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
    assert steps == [2, 4] and all(ckpt.verify_checksums(os.path.join(directory, str(s))) for s in steps)

    second_run = loop.train_and_evaluate(_config(data_dir), workdir, callbacks=[second])
    assert second_run["stop_reason"] == "done" and second_run["resumed_from"] == 4 and ran[-1] == "second"
    assert "test_accuracy" in second_run
    # nothing left to train: the total is the first run's (which also includes its last checksum wait)
    assert 0.5 * first["train_time_s"] <= second_run["train_time_s"] <= first["train_time_s"] + 1.0
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["train_time_s"] == second_run["train_time_s"]


def test_disk_full_while_logging_stops_with_one_line_and_keeps_verified_steps(
    data_dir, tmp_path, monkeypatch
):
    workdir = str(tmp_path / "run")

    class FullDiskWriter(loop.MetricWriter):
        def write(self, step, prefix, scalars):
            if step >= 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            super().write(step, prefix, scalars)

    monkeypatch.setattr(loop, "MetricWriter", FullDiskWriter)
    with pytest.raises(OSError) as err:
        loop.train_and_evaluate(_config(data_dir), workdir)
    message = str(err.value)
    assert type(err.value).__name__ == "DiskFullError" and "\n" not in message, message
    assert message.startswith("no space left on device while writing the run in"), message
    assert "verified checkpoint steps [2]" in message and "run the same command to resume" in message, message
    directory = os.path.join(workdir, "checkpoints")
    assert sorted(os.listdir(directory)) == ["2"] and ckpt.verify_checksums(os.path.join(directory, "2"))
    leftovers = [
        f for r, ds, fs in os.walk(workdir) for f in fs + ds if f.endswith(".tmp") or ckpt.TMP_MARK in f
    ]
    assert leftovers == []


def test_a_run_saved_with_the_flat_field_names_of_older_versions_resumes(tmp_path):
    """config.json as attn_jax wrote it before config groups (flat lr, batch_size, cpu_devices, ...)."""
    from attn_jax.train.config import upgrade_saved_config

    new = _config(data_dir="/data")
    old = json.loads(new.to_json_best_effort())
    for group in ("data", "optim", "schedule", "cpu", "classification"):
        old.pop(group)
    old.update(dataset=new.data.dataset, data_dir="/data", augment=["crop"], batch_size=32,
               eval_batch_size=32, eval_examples=32, optimizer="adamw", lr=new.optim.lr, weight_decay=1e-4,
               momentum=0.9, clip_norm=1.0, skip_nonfinite=0, warmup_steps=1, end_lr_factor=0.0,
               cpu_devices=4, label_smoothing=0.0)  # fmt: skip
    old["model"]["matmul_grad"] = "none"
    upgraded = upgrade_saved_config(old)
    assert upgraded["optim"]["lr"] == new.optim.lr and upgraded["cpu"] == {
        "devices": 4,
        "matmul_grad": "none",
    }
    assert upgraded["model"]["attention_kwargs"] == {} and upgraded["data"]["dir"] == "/data"
    (tmp_path / "config.json").write_text(json.dumps(old))
    loop.check_workdir_config(new, str(tmp_path))  # the same experiment: no error
    new.optim.lr = 0.5
    with pytest.raises(loop.CheckpointMismatchError, match=r"optim.lr: 0.003 \(run\) != 0.5 \(given\)"):
        loop.check_workdir_config(new, str(tmp_path))
