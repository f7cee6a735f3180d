"""The training loop end to end on the tiny datasets, for every task: outputs, checkpoints, 8 -> 1 device
restore, leftover and damaged checkpoint steps, pmap == shard_map; the non-finite guard, the configs'
shared vocabulary and the CLI."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from attn_jax.train import loop
from attn_jax.train.config import base_config, flat_fields
from attn_jax.train.tasks import get_task
from attn_jax.viz.hooks import attention_png
from tests._train_models import TASKS, load_experiment_config

STEPS = 8


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def tiny_config(task, data_dir, **overrides):
    c = load_experiment_config(task)
    c.data.dir = data_dir
    c.num_train_steps, c.eval_every_steps, c.checkpoint_every_steps, c.log_every_steps = STEPS, 8, 4, 4
    c.progress = False
    c.png_examples = 4
    c.update(overrides)
    return c


@pytest.fixture(scope="module", params=TASKS)
def finished_run(request, data_dir, tmp_path_factory):
    task = request.param
    workdir = str(tmp_path_factory.mktemp(f"run_{task}"))
    summary = loop.train_and_evaluate(tiny_config(task, data_dir), workdir, callbacks=[attention_png])
    return task, workdir, summary


def _final_state(workdir, step=STEPS):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def test_run_writes_metrics_events_png_summary_and_checkpoints(finished_run, data_dir):
    task, workdir, summary = finished_run
    assert summary["task"] == task and summary["stop_reason"] == "done"
    assert summary["step"] == STEPS and summary["devices"] == 8
    headline = get_task(task).headline
    assert all(0.0 <= summary[f"test_{k}"] <= 1.0 for k in headline if k not in ("loss",)), summary
    # the summary's test metrics are those of the saved final state, not of some other state in memory
    again = loop.evaluate_checkpoint(tiny_config(task, data_dir), workdir)
    assert again["step"] == STEPS
    assert {k: again[k] for k in headline} == pytest.approx({k: summary[f"test_{k}"] for k in headline})
    with open(os.path.join(workdir, "summary.json")) as f:
        saved = json.load(f)
    assert all(saved[f"test_{k}"] == summary[f"test_{k}"] for k in headline)
    records = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records if r["split"] == "train"] == [4, 8]
    assert [r["step"] for r in records if r["split"] == "test"] == [8]
    assert all(np.isfinite(r["loss"]) for r in records if r["split"] == "train")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(workdir, "tb")))
    with open(summary["attention_png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
    assert steps == [4, 8]  # keep_latest=2 (step 8 is also the best one by the task's metric)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["task"] == task


def test_viz_opens_the_run_through_the_train_checkpoint(finished_run):
    from attn_jax.viz.runs import load_run

    task, workdir, _ = finished_run
    model, variables, config = load_run(workdir)
    assert config.task == task and config.model.attention == ("additive" if task == "reading" else "spatial")
    final = _final_state(workdir)
    jax.tree.map(np.testing.assert_array_equal, dict(variables["params"]), dict(final["params"]))


def test_restore_onto_one_device_gives_the_same_test_metrics(finished_run, data_dir):
    task, workdir, summary = finished_run
    got = loop.evaluate_checkpoint(tiny_config(task, data_dir, num_devices=1), workdir)
    assert got["step"] == STEPS
    for k in get_task(task).headline:
        np.testing.assert_allclose(got[k], summary[f"test_{k}"], rtol=1e-4, atol=1e-6, err_msg=k)


def test_leftover_temporary_and_truncated_steps_are_skipped(finished_run, data_dir, tmp_path, capsys):
    task, src, summary = finished_run
    workdir = str(tmp_path / "damaged")
    shutil.copytree(src, workdir)
    ckpts = os.path.join(workdir, "checkpoints")
    os.makedirs(os.path.join(ckpts, "12.orbax-checkpoint-tmp-1733140000"))  # a save killed half-way
    shutil.copytree(os.path.join(ckpts, "8"), os.path.join(ckpts, "10"))  # a step whose arrays were lost
    shutil.rmtree(os.path.join(ckpts, "10", "state"))
    got = loop.evaluate_checkpoint(tiny_config(task, data_dir), workdir)
    out = capsys.readouterr().out
    assert "skipping unfinished save" in out and "12.orbax-checkpoint-tmp" in out
    assert "skipping unreadable step 10" in out
    assert got["step"] == STEPS
    best = get_task(task).best_metric
    np.testing.assert_allclose(got[best], summary[f"test_{best}"], rtol=1e-5)


def test_pmap_loop_matches_shard_map_loop(finished_run, data_dir, tmp_path):
    task, workdir, _ = finished_run
    loop.train_and_evaluate(tiny_config(task, data_dir, parallel="pmap", png_examples=0), str(tmp_path))
    want, got = _final_state(workdir), _final_state(str(tmp_path))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=5e-5, atol=5e-6), want, got)


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_good_checkpoint(data_dir, tmp_path):
    cfg = tiny_config(
        "classification",
        data_dir,
        optim=dict(name="sgd", lr=1e38, clip_norm=0.0, momentum=0.0),
        schedule=dict(warmup_steps=0),
        checkpoint_every_steps=1,
        log_every_steps=1,
        keep_latest=50,
    )
    with pytest.raises(loop.NonFiniteLossError, match="non-finite training loss") as err:
        loop.train_and_evaluate(cfg, str(tmp_path))
    assert "Last good checkpoint" in str(err.value)
    steps = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < STEPS
    records = _read_jsonl(tmp_path / "metrics.jsonl")
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["param_norm"]) for r in records if r["step"] in steps)


def test_main_job_config_is_unchanged():
    """The classification defaults behind the README's figure (3,200 steps, one CPU device)."""
    c = load_experiment_config("classification", "spatial")
    got = {k: flat_fields(c.to_dict())[k] for k in (
        "task", "data.dataset", "seed", "optim.name", "optim.lr", "optim.weight_decay",
        "schedule.warmup_steps", "schedule.end_lr_factor", "optim.clip_norm",
        "classification.label_smoothing", "data.augment", "data.batch_size", "num_train_steps",
        "eval_every_steps", "cpu.devices", "parallel",
    )}  # fmt: skip
    assert got == {
        "task": "classification", "data.dataset": "cluttered_digits", "seed": 0, "optim.name": "adamw",
        "optim.lr": 5e-3, "optim.weight_decay": 1e-4, "schedule.warmup_steps": 100,
        "schedule.end_lr_factor": 0.0, "optim.clip_norm": 1.0, "classification.label_smoothing": 0.1,
        "data.augment": ("crop",), "data.batch_size": 128, "num_train_steps": 3200,
        "eval_every_steps": 500, "cpu.devices": 0, "parallel": "shard_map",
    }  # fmt: skip
    m = c.model
    assert (m.backbone, tuple(m.features), m.stride, m.blocks_per_stage, m.attention, m.dtype) == (
        "small_cnn", (24, 48, 96, 128), 8, 1, "spatial", "float32",
    )  # fmt: skip


@pytest.mark.parametrize("task", TASKS)
def test_configs_share_one_vocabulary_and_reject_unknown_names(task, data_dir):
    base = flat_fields(base_config(task).to_dict())
    for arg in ("additive", "additive,tiny") if task == "reading" else ("spatial", "cbam,tiny"):
        config = load_experiment_config(task, arg)
        c = flat_fields(config.to_dict())
        assert set(c) == set(base), (arg, set(c) ^ set(base))  # every field's default lives in base_config
        assert c["task"] == task and c["model.attention"] == arg.split(",")[0]
        with pytest.raises(AttributeError, match="lr"):
            config.lr = 0.1  # a flat name of older configs (now optim.lr): locked configs refuse it
        with pytest.raises(AttributeError, match="label_smoothin"):
            config[task].label_smoothin = 0.1
    from attn_jax.train.factory import build_model

    with pytest.raises(ValueError, match="backbone"):
        build_model(tiny_config(task, data_dir, model={"backbone": "vgg"}))
    with pytest.raises(ValueError, match="expected '<attention>\\[,tiny\\]'"):
        load_experiment_config(task, "additive,huge" if task == "reading" else "spatial,huge")


def test_cli_usage_and_dispatch(capsys):
    from attn_jax import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["attn-jax", "frobnicate"])
    assert exit_.value.code == 2 and "train" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["attn-jax", "--help"])
    assert exit_.value.code == 0


def test_bfloat16_compute_trains_with_float32_parameters(data_dir):
    import jax.numpy as jnp

    from attn_jax.train import parallel
    from attn_jax.train.runner import build_steps

    cfg = tiny_config("classification", data_dir, model={"dtype": "bfloat16"})
    runner = build_steps(cfg, parallel.make_mesh(8))
    images = np.random.default_rng(0).normal(size=(16, 32, 32, 1)).astype(np.float32)
    batch = {"image": images, "label": np.arange(16, dtype=np.int32) % 10}
    state, metrics = runner.train(runner.place(runner.init_state(0)), runner.batch(batch))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["count"]) == 16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


def test_importing_the_train_package_loads_neither_viz_nor_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys, attn_jax.train\nprint([m for m in ('attn_jax.viz', 'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_training_on_a_workdir_in_use_fails_at_once_and_writes_nothing(data_dir, tmp_path):
    from attn_jax.train.workdir_lock import WorkdirInUseError, workdir_lock

    workdir = str(tmp_path / "run")
    with workdir_lock(workdir):  # another live run (this process) owns the workdir
        with pytest.raises(WorkdirInUseError, match="is in use by process"):
            loop.train_and_evaluate(tiny_config("classification", data_dir, png_examples=0), workdir)
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
