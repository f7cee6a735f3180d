"""Every mistake a user can make on `attn-jax train` is one line on stderr, exit status 2, before anything
is compiled (the loop is never entered); a config warmup longer than a short run is shortened with a note;
without --workdir the same command always means the same run directory, printed at the start with the
command that resumes it, and again on a stop.

Run in-process through `attn_jax.cli.main` (what the `attn-jax` script calls) with the loop replaced by a
stand-in that records its arguments: the checks run before it, and a run that reaches it passed them.
"""

import json
import os
import shutil
import socket
import subprocess

import pytest

from attn_jax import cli
from attn_jax.train import command_line as cl
from attn_jax.train import loop
from attn_jax.train.preemption import EXIT_PREEMPTED
from attn_jax.train.workdir_lock import LOCK_PREFIX
from tests._train_models import ROOT, load_experiment_config

CONFIG = os.path.join(ROOT, "experiments", "configs", "classification.py")
TINY = f"{CONFIG}:spatial,tiny"


class _LoopEntered(Exception):
    pass


@pytest.fixture
def entered(monkeypatch):
    """The loop's (config, workdir) of each run that passed every check; the stand-in then stops it."""
    calls = []

    def fake(config, workdir, **kwargs):
        calls.append((config, workdir))
        raise _LoopEntered

    monkeypatch.setattr(loop, "train_and_evaluate", fake)
    return calls


@pytest.fixture(scope="module")
def tiny_data(data_dir):
    """The session's data directory with cluttered_digits/tiny built and its column caches made."""
    from attn_jax.data import get_adapter, load_source

    for split in ("train", "test"):
        load_source(get_adapter("cluttered_digits/tiny", "classification"), split, data_dir)
    return data_dir


def _train(capsys, *args):
    """(exit status, stdout, non-empty stderr lines) of `attn-jax train ARGS`; _LoopEntered: status None."""
    try:
        cli.main(["attn-jax", "train", *args])
        code = 0
    except SystemExit as stop:
        code = stop.code
    except _LoopEntered:
        code = None
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def _one_line_error(capsys, entered, args, *wanted):
    code, out, err = _train(capsys, *args)
    assert code == cl.EXIT_USAGE, (code, out, err)
    assert len(err) == 1 and err[0].startswith("attn-jax train: error: "), err
    for text in wanted:
        assert text in err[0], (text, err[0])
    assert entered == [], "the loop was entered"
    return err[0]


@pytest.mark.parametrize(
    "override, shown",
    [
        ("data.batch_size=0", None),
        ("data.batch_size=-4", None),
        ("num_train_steps=0", None),
        ("num_train_steps=-1", None),
        ("optim.lr=-0.001", None),
        ("optim.lr=0", "optim.lr=0.0"),
        ("optim.lr=nan", None),
        ("optim.name=lamb", "optim.name='lamb'"),
        ("parallel=pjit", "parallel='pjit'"),
        ("seeds_mode=scan", "seeds_mode='scan'"),
        ("keep_latest=0", None),
        ("keep_best=-1", None),
        ("data.eval_batch_size=0", None),
        ("checkpoint_every_steps=-4", None),
        ("eval_every_steps=-1", None),
        ("cpu.devices=-1", None),
        ("num_devices=-2", None),
        ("stall_timeout_s=-1", "stall_timeout_s=-1.0"),
        ("optim.clip_norm=-1", "optim.clip_norm=-1.0"),
        ("optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001"),
    ],
)
def test_out_of_range_config_value_is_one_line_naming_it(capsys, entered, tmp_path, override, shown):
    workdir = tmp_path / "run"
    args = ["--config", TINY, f"--config.{override}", f"--workdir={workdir}"]
    _one_line_error(capsys, entered, args, f"--config.{shown or override} must be")
    assert not workdir.exists()


@pytest.mark.parametrize(
    "override, shown",
    [
        ("reading.length_penalty=-1", "reading.length_penalty=-1.0"),
        ("reading.label_smoothing=1", "reading.label_smoothing=1.0"),
    ],
)
def test_out_of_range_reading_value_is_one_line_naming_it(capsys, entered, tmp_path, override, shown):
    reading = os.path.join(ROOT, "experiments", "configs", "reading.py") + ":tiny"
    args = ["--config", reading, f"--config.{override}", f"--workdir={tmp_path / 'run'}"]
    _one_line_error(capsys, entered, args, f"--config.{shown or override} must be")


def test_unknown_augmentation_is_one_line_naming_it(capsys, entered, tmp_path):
    args = ["--config", TINY, "--config.data.augment=('crop', 'zoom')", f"--workdir={tmp_path / 'run'}"]
    _one_line_error(capsys, entered, args, "--config.data.augment=('crop', 'zoom')", "'zoom'", "'affine'")


def test_warmup_given_on_the_command_line_past_the_run_is_one_line(capsys, entered, tmp_path):
    args = ["--config", TINY, "--config.schedule.warmup_steps=16", "--config.num_train_steps=16"]
    _one_line_error(
        capsys, entered, [*args, f"--workdir={tmp_path}"], "--config.schedule.warmup_steps=16", "=16"
    )


@pytest.mark.parametrize("field", ["data.batch_size", "data.eval_batch_size"])
def test_batch_that_does_not_divide_over_the_devices_is_one_line(capsys, entered, tiny_data, tmp_path, field):
    args = [
        "--config",
        TINY,
        f"--config.data.dir={tiny_data}",
        "--config.num_devices=4",
        f"--workdir={tmp_path}",
    ]
    _one_line_error(capsys, entered, [*args, f"--config.{field}=30"], f"--config.{field}=30", "4 devices")


def test_more_devices_than_there_are_is_one_line(capsys, entered, tiny_data, tmp_path):
    args = ["--config", TINY, f"--config.data.dir={tiny_data}", "--config.num_devices=4096"]
    _one_line_error(capsys, entered, [*args, f"--workdir={tmp_path}"], "--config.num_devices=4096")


def test_workdir_that_is_a_file_is_one_line(capsys, entered, tiny_data, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    args = ["--config", TINY, f"--config.data.dir={tiny_data}"]
    _one_line_error(capsys, entered, [*args, f"--workdir={path}"], f"--workdir {path} is a file")
    _one_line_error(capsys, entered, [*args, f"--workdir={path}/run"], f"{path} is a file")
    assert path.read_text() == "mine"


def test_workdir_in_use_by_a_live_process_is_one_line_before_compiling(capsys, entered, tiny_data, tmp_path):
    owner = subprocess.Popen(["sleep", "60"])
    try:
        lock = tmp_path / f"{LOCK_PREFIX}0"
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": owner.pid}))
        args = ["--config", TINY, f"--config.data.dir={tiny_data}", f"--workdir={tmp_path}"]
        _one_line_error(capsys, entered, args, f"workdir {tmp_path} is in use by process {owner.pid}")
        assert lock.exists()
    finally:
        owner.kill()
        owner.wait()
    code, _, _ = _train(capsys, *args)  # the owner is gone: its lock is stale, removed, the run goes on
    assert code is None and len(entered) == 1


def _damaged_copy(tiny_data, tmp_path, damage):
    copy = tmp_path / "tfds"
    shutil.copytree(os.path.join(tiny_data, "cluttered_digits", "tiny"), copy / "cluttered_digits" / "tiny")
    version = copy / "cluttered_digits" / "tiny" / "1.0.0"
    damage(version)
    return str(copy), str(version)


def _truncate_train_records(version):
    shutil.rmtree(version / "memory-train")  # read from the records again
    records = version / "cluttered_digits-train.array_record-00000-of-00001"
    os.truncate(records, records.stat().st_size // 2)


def _garbage_dataset_info(version):
    (version / "dataset_info.json").write_text("{garbage")


def _truncate_test_column(version):
    column = version / "memory-test" / "image.npy"
    os.truncate(column, column.stat().st_size - 100)


@pytest.mark.parametrize(
    "damage, where",
    [
        (_truncate_train_records, ""),
        (_garbage_dataset_info, ""),
        (_truncate_test_column, "/memory-test"),  # the test split: found before training, not at the eval
    ],
)
def test_damaged_data_is_one_line_naming_the_directory_to_delete(capsys, entered, tiny_data, tmp_path, damage,
                                                                  where):  # fmt: skip
    data, version = _damaged_copy(tiny_data, tmp_path, damage)
    args = ["--config", TINY, f"--config.data.dir={data}", f"--workdir={tmp_path / 'run'}"]
    _one_line_error(capsys, entered, args, "damaged", f"rm -r {version}{where})", "on next use")
    shutil.rmtree(version + where)  # what the message says: then the run goes on
    code, _, err = _train(capsys, *args)
    assert code is None and len(entered) == 1, err


def test_a_config_warmup_past_a_short_run_is_halved_with_a_note(capsys, entered, tiny_data, tmp_path):
    args = ["--config", TINY, f"--config.data.dir={tiny_data}", "--config.num_train_steps=4"]  # warmup 5
    code, out, err = _train(capsys, *args, f"--workdir={tmp_path}")
    assert code is None, (out, err)
    assert err == [
        "attn-jax train: note: the config's schedule.warmup_steps=5 is not below num_train_steps=4: warming "
        "up over 2 steps instead (half the run); set --config.schedule.warmup_steps to choose"
    ]
    assert entered[0][0].schedule.warmup_steps == 2


def test_the_readme_short_detection_run_gets_a_schedule():
    """`--config.num_train_steps=200` of the detection config (warmup 200): a raw optax error before."""
    from attn_jax.train.factory import build_optimizer

    config = load_experiment_config("detection", "spatial")
    config.num_train_steps = 200
    note = cl.resolve_warmup(config, ["--config.num_train_steps=200"], "detection.py")
    assert "warmup_steps=200" in note and config.schedule.warmup_steps == 100
    build_optimizer(config)
    config.schedule.warmup_steps = 300
    with pytest.raises(
        cl.UsageFailure, match=r"--config.schedule.warmup_steps=300 must be below num_train_steps=200"
    ):
        cl.resolve_warmup(config, ["--config.schedule.warmup_steps=300"], "detection.py")


def test_default_workdir_is_named_by_the_config_and_the_fields_given():
    config = load_experiment_config("classification", "cbam,tiny")
    assert cl.default_workdir(config, f"{CONFIG}:cbam,tiny", []) == "runs/classification-cbam-tiny"
    config.optim.lr, config.model.features, config.progress = 0.01, (8, 32), False
    argv = [
        "--config.optim.lr=0.01",
        "--config.model.features=(8, 32)",
        "--noconfig.progress",
        "--config.cpu.devices=1",
    ]
    want = "runs/classification-cbam-tiny-optim.lr=0.01-model.features=8,32"
    assert cl.default_workdir(config, f"{CONFIG}:cbam,tiny", argv) == want
    mine = load_experiment_config("classification", "spatial")
    assert cl.default_workdir(mine, "my_configs/base.py", []) == "runs/base-classification-spatial"
    long = [f"--config.{k}=1" for k in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps")] * 2
    name = cl.default_workdir(config, CONFIG, long + ["--config.keep_latest=1", "--config.keep_best=1"])
    assert name.startswith("runs/classification-cbam-tiny-overrides-") and len(name) < 60, name


def test_the_same_command_without_workdir_uses_the_same_run_directory_and_prints_it(
    capsys, entered, tiny_data, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    args = ["--config", TINY, f"--config.data.dir={tiny_data}", "--config.num_train_steps=8"]
    outs = []
    for _ in range(2):
        code, out, err = _train(capsys, *args)
        assert code is None, (out, err)
        outs.append(out)
    first, second = (workdir for _, workdir in entered)
    assert first == second == "runs/classification-spatial-tiny-num_train_steps=8"
    command = "attn-jax train " + " ".join(args)
    started = (
        f"workdir {tmp_path / first} (the default for this command)\n"
        f"to resume after a stop, run the same command again from {tmp_path}: {command}\n"
    )
    assert outs == [started, started]


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_a_stop_prints_the_command_that_resumes(capsys, tiny_data, tmp_path, monkeypatch, stop):
    def stopped(config, workdir, **kwargs):
        if stop == "ctrl-c":
            raise KeyboardInterrupt
        return {"stop_reason": "sigterm", "step": 3, "workdir": os.path.abspath(workdir)}

    monkeypatch.setattr(loop, "train_and_evaluate", stopped)
    args = ["--config", TINY, f"--config.data.dir={tiny_data}", f"--workdir={tmp_path}"]
    code, out, err = _train(capsys, *args)
    command = "attn-jax train " + " ".join(args)
    if stop == "sigterm":
        assert code == EXIT_PREEMPTED, (out, err)
        assert f"stopped by SIGTERM at step 3; checkpoint saved in {tmp_path}; run the same command to " \
               f"resume: {command} (exit status 75)" in out  # fmt: skip
    else:
        assert code == 130 and len(err) == 1, (out, err)
        assert err[0].endswith(f"checkpoints saved so far are in {tmp_path}; resume with: {command}"), err


def test_another_config_in_the_workdir_is_one_line_and_restart_starts_over(
    capsys, entered, tiny_data, tmp_path
):
    other = load_experiment_config("classification", "cbam,tiny")
    (tmp_path / "config.json").write_text(other.to_json_best_effort())
    args = ["--config", TINY, f"--config.data.dir={tiny_data}", f"--workdir={tmp_path}"]
    _one_line_error(capsys, entered, args, f"workdir {tmp_path} holds a run of another config", "'cbam'")
    code, out, err = _train(capsys, *args, "--restart")
    assert code is None and entered[0][1] == str(tmp_path), (out, err)
    command = "attn-jax train " + " ".join(args)  # the resume command: without --restart
    assert f"run this command again without --restart from {os.getcwd()}: {command}\n" in out, out


@pytest.mark.parametrize("error", ["disk full", "non-finite"])
def test_a_failed_run_is_one_line_with_status_1(capsys, tiny_data, tmp_path, monkeypatch, error):
    from attn_jax.train.checkpoint import DiskFullError

    message = f"{error}: what happened\nand what to do"

    def failing(config, workdir, **kwargs):
        raise DiskFullError(message) if error == "disk full" else loop.NonFiniteLossError(message)

    monkeypatch.setattr(loop, "train_and_evaluate", failing)
    code, out, err = _train(
        capsys, "--config", TINY, f"--config.data.dir={tiny_data}", f"--workdir={tmp_path}"
    )
    assert code == 1 and len(err) == 1, (code, out, err)
    assert err[0].startswith(f"attn-jax train: error: {error}: what happened and what to do"), err


def test_the_config_file_is_loaded_once_and_its_overrides_reach_the_loop(
    capsys, entered, tiny_data, tmp_path
):
    """`attn-jax train` loads --config FILE[:ARG] once (its get_config runs once) and the loop gets that
    config with the --config.<field> overrides applied."""
    calls = tmp_path / "calls"
    path = tmp_path / "counting.py"
    path.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('_base', {CONFIG!r})\n"
        "base = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(base)\n\n\n"
        "def get_config(arg='spatial'):\n"
        f"    with open({str(calls)!r}, 'a') as f:\n"
        "        f.write('x')\n"
        "    return base.get_config(arg)\n"
    )
    args = ["--config", f"{path}:spatial,tiny", f"--config.data.dir={tiny_data}", "--config.optim.lr=0.25"]
    code, out, err = _train(capsys, *args, f"--workdir={tmp_path / 'run'}")
    assert code is None, (out, err)
    assert calls.read_text() == "x"
    ((config, workdir),) = entered
    assert config.optim.lr == 0.25 and config.data.dir == tiny_data and config.model.features == (8, 16)
