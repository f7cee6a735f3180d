"""The command line of `attn-jax train|eval` and experiments/run.py, run as a user does (subprocesses): --help
lists the flags and the config's fields; bad config files, arguments, fields and values are one line on
stderr with exit status 2; eval under another model's config says so; a SIGTERM-stopped training exits
with the resumable status and prints the command that resumes it (the same one, printed at the start too)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from attn_jax.train import command_line as cl
from attn_jax.train import loop
from attn_jax.train.preemption import EXIT_PREEMPTED
from tests._train_models import ROOT, load_experiment_config

CONFIG = os.path.join("experiments", "configs", "classification.py")
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
ENTRY_POINTS = {
    "attn-jax train": [sys.executable, "-m", "attn_jax.cli", "train"],
    "attn-jax eval": [sys.executable, "-m", "attn_jax.cli", "eval"],
    "experiments/run.py": [sys.executable, os.path.join("experiments", "run.py")],
}


def _cli(*args, entry="attn-jax train", timeout=300):
    """(exit status, stdout, non-empty stderr lines) of the command run from the repository root."""
    proc = subprocess.run(
        [*ENTRY_POINTS[entry], *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stdout, [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_help_lists_the_commands_flags_and_how_to_see_every_config_field(entry):
    code, out, err = _cli("--help", entry=entry)
    assert code == 0, err
    for flag in ("--config FILE[:ARG]", "--config.<field>=V", "--workdir DIR", "-v N, --verbosity N"):
        assert flag in out, (flag, out)
    assert "--config FILE --help" in out, out


def test_help_with_a_config_lists_its_fields_and_defaults():
    code, out, err = _cli("--config", f"{CONFIG}:cbam,tiny", "--help")
    assert code == 0, err
    assert "--config.optim.lr=0.003  (float)" in out, out
    assert "--config.model.attention='cbam'  (str)" in out, out
    assert "--config.model.features=(8, 16)  (tuple)" in out, out


def _one_line_usage_error(args, *wanted):
    code, out, err = _cli(*args)
    assert code == cl.EXIT_USAGE, (code, out, err)
    assert len(err) == 1 and err[0].startswith("attn-jax train: error: "), err
    for text in wanted:
        assert text in err[0], (text, err)
    return err[0]


def test_unknown_config_field_is_one_line_naming_it():
    _one_line_usage_error(["--config", CONFIG, "--config.nonexistent=1"], "'nonexistent'", CONFIG)


def test_misspelt_config_field_suggests_the_close_names():
    wanted = r"unknown config field 'model\.feature'.*did you mean model\.features"
    with pytest.raises(cl.UsageFailure, match=wanted):
        cl.validate(["--config", CONFIG, "--config.model.feature=(8, 16)"])
    cl.validate(["--config", CONFIG, "--config.model.features=(8, 16)", "--noconfig.progress"])  # known: fine


def test_bad_config_value_type_is_one_line_naming_it():
    _one_line_usage_error(["--config", CONFIG, "--config.optim.lr=abc"], "--config.optim.lr=abc", "'abc'")


def test_missing_config_file_is_one_line_naming_it():
    missing = "experiments/configs/nope.py"
    _one_line_usage_error(["--config", missing], f"config file '{missing}' not found")


def test_unknown_config_argument_is_one_line_naming_it(tmp_path):
    args = ["--config", f"{CONFIG}:nosuchfamily,tiny", f"--config.data.dir={tmp_path}"]
    _one_line_usage_error(args, "unknown attention 'nosuchfamily'", "spatial")
    _one_line_usage_error(["--config", f"{CONFIG}:spatial,huge"], "'spatial,huge'", "got extra ['huge']")


@pytest.mark.parametrize(
    "field, value, wanted",
    [
        ("model.features", ("abc",), "SmallCNN features must be positive ints"),
        ("model.stride", 3, "stride must be a power of 2 with log2(stride) <= 2 (2 stages); got 3"),
        ("model.backbone", "nope", "unknown backbone 'nope'"),
        (
            "cpu.matmul_grad",
            "sometimes",
            "matmul_grad must be one of ['none', 'strided', 'all'] or a bool; got 'sometimes'",
        ),
    ],
)
def test_model_fields_are_checked_before_training(field, value, wanted):
    spec = f"{CONFIG}:spatial,tiny"
    config = load_experiment_config("classification", "spatial,tiny")
    cl.check_model(config, spec)  # the family's own model builds
    config.update_from_flattened_dict({field: value})
    with pytest.raises(cl.UsageFailure) as err:
        cl.check_model(config, spec)
    assert wanted in str(err.value) and len(str(err.value).splitlines()) == 1, err.value


def test_bad_model_field_is_one_line_and_starts_no_run(tmp_path):
    workdir = tmp_path / "run"
    args = ["--config", f"{CONFIG}:spatial,tiny", "--config.model.features=abc", f"--workdir={workdir}"]
    _one_line_usage_error(args, "SmallCNN features must be positive ints", "('abc',)")
    assert not workdir.exists()


def test_stray_argument_is_one_line_naming_it(tmp_path):
    args = ["--config", f"{CONFIG}:spatial,tiny", "--workdir", str(tmp_path), "runs/x"]
    code, out, err = _cli(*args, entry="attn-jax eval")
    assert code == cl.EXIT_USAGE and len(err) == 1, (code, out, err)
    assert "attn-jax eval: error: unexpected arguments ['runs/x']" in err[0], err


def _tiny(data_dir, arg="spatial,tiny", **overrides):
    c = load_experiment_config("classification", arg)
    c.update(dict(data=dict(dir=data_dir, eval_examples=32), num_train_steps=2, checkpoint_every_steps=2))
    c.update(dict(schedule=dict(warmup_steps=0), cpu=dict(devices=0)))
    c.update(dict(progress=False, png_examples=0, tensorboard=False, num_devices=1))
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def spatial_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("spatial_run"))
    loop.train_and_evaluate(_tiny(data_dir), workdir)
    return workdir


def test_eval_with_another_models_config_says_the_checkpoint_differs(spatial_run, data_dir):
    args = ["--config", f"{CONFIG}:cbam,tiny", "--workdir", spatial_run, f"--config.data.dir={data_dir}"]
    code, out, err = _cli(*args, entry="attn-jax eval")
    assert code == 1 and len(err) == 1, (code, out, err)
    assert "was written by a different model/config" in err[0] and spatial_run in err[0], err
    assert "model.attention: 'spatial' (run) != 'cbam' (given)" in err[0], err


def test_compute_only_fields_are_not_model_differences():
    from attn_jax.train.config import model_differences

    saved = json.loads(load_experiment_config("classification", "additive,tiny").to_json_best_effort())
    given = load_experiment_config("classification", "additive,tiny")
    given.model.dtype, given.model.attention_kwargs.implementation = "bfloat16", "pallas"
    given.cpu.matmul_grad = "all"
    assert model_differences(saved, given) == []
    given.model.features = (8, 32)
    assert [d.split(":")[0] for d in model_differences(saved, given)] == ["model.features"]


def test_eval_of_a_run_without_saved_config_under_another_model_says_so(spatial_run, data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    os.symlink(os.path.join(spatial_run, "checkpoints"), os.path.join(workdir, "checkpoints"))
    wanted = r"none of the checkpoint steps \[2\] in .* restores"
    with pytest.raises(loop.CheckpointMismatchError, match=wanted):
        loop.evaluate_checkpoint(_tiny(data_dir, model={"features": (8, 32)}), workdir)
    assert loop.evaluate_checkpoint(_tiny(data_dir), workdir)["step"] == 2  # the run's own model: restores


def test_sigterm_stop_exits_with_the_resumable_status(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    overrides = dict(num_train_steps=1000, log_every_steps=1, checkpoint_every_steps=1000, eval_every_steps=0)
    args = [f"--config={CONFIG}:spatial,tiny", f"--workdir={workdir}", f"--config.data.dir={data_dir}"]
    args += [f"--config.{k}={v}" for k, v in dict(overrides, progress=False, png_examples=0).items()]
    proc = subprocess.Popen(
        [*ENTRY_POINTS["experiments/run.py"], *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    metrics, deadline = os.path.join(workdir, "metrics.jsonl"), time.time() + 300
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED == 75, out[-3000:]
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["stop_reason"] == "sigterm" and summary["step"] < 1000, summary
    command = " ".join(["python", os.path.join("experiments", "run.py"), *args])
    started = (
        f"workdir {workdir}\nto resume after a stop, run the same command again from {ROOT}: {command}\n"
    )
    assert started in out, out[-3000:]
    assert f"run the same command to resume: {command} (exit status 75)" in out, out[-3000:]


def test_bench_is_not_a_command_and_points_at_the_repository_script(capsys):
    """benchmarks/ is not part of the installed package: `attn-jax bench` is one line saying where the
    benchmarks are; `attn-jax --help` lists only the installed commands and names the script."""
    from attn_jax import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["attn-jax", "bench", "--quick"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == cl.EXIT_USAGE and len(err) == 1, err
    assert err[0].startswith("attn-jax: error: no command 'bench'") and "python benchmarks/run.py" in err[0]
    with pytest.raises(SystemExit) as stop:
        cli.main(["attn-jax", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert "attn-jax bench" not in out and "python benchmarks/run.py" in out, out
