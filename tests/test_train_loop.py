"""The training loop end to end on the tiny dataset: outputs, checkpoints, resume, 8 -> 1 device restore,
leftover and damaged checkpoint steps, non-finite loss, and the CLI / configs."""

import importlib.util
import json
import os
import shutil

import jax
import numpy as np
import pytest

from attn_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "classification.py")
STEPS = 8


def _load_config_module():
    spec = importlib.util.spec_from_file_location("classification_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


classification = _load_config_module()


def _read_jsonl(path, whole=False):
    with open(path) as f:
        return json.load(f) if whole else [json.loads(line) for line in f if line.strip()]


def tiny_config(data_dir, **overrides):
    c = classification.get_config("spatial,tiny")
    c.data_dir = data_dir
    c.num_train_steps = STEPS
    c.progress = False
    c.png_examples = 4
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    return workdir, loop.train_and_evaluate(tiny_config(data_dir), workdir)


def test_run_writes_metrics_events_png_summary_and_checkpoints(finished_run):
    workdir, summary = finished_run
    assert summary["stop_reason"] == "done" and summary["step"] == STEPS and summary["devices"] == 8
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and np.isfinite(summary["test_loss"])
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["test_accuracy"] == summary["test_accuracy"]
    records = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records if r["split"] == "train"] == [4, 8]
    assert [r["step"] for r in records if r["split"] == "test"] == [8]
    assert all(np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in records)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(workdir, "tb")))
    with open(summary["attention_png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
    assert steps == [4, 8]  # keep_latest=2 (step 8 is also the best-by-accuracy one)


def test_trained_model_is_exported_as_a_viz_run(finished_run):
    from attn_jax.viz.runs import load_run

    workdir, summary = finished_run
    assert summary["viz_run"] == os.path.join(workdir, "viz", "spatial")
    model, variables, config = load_run(summary["viz_run"])
    assert config["family"] == "spatial" and config["image_shape"] == [32, 32, 1]
    import orbax.checkpoint as ocp

    final = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(STEPS), "state"))
    jax.tree.map(np.testing.assert_array_equal, dict(variables["params"]), dict(final["params"]))
    assert model.attention == "spatial"


def test_restore_onto_one_device_gives_the_same_test_metrics(finished_run, data_dir):
    workdir, summary = finished_run
    got = loop.evaluate_checkpoint(tiny_config(data_dir, num_devices=1), workdir)
    assert got["step"] == STEPS
    np.testing.assert_allclose(got["accuracy"], summary["test_accuracy"])
    np.testing.assert_allclose(got["loss"], summary["test_loss"], rtol=1e-5)


def test_leftover_temporary_and_truncated_steps_are_skipped(finished_run, data_dir, tmp_path, capsys):
    src, summary = finished_run
    workdir = str(tmp_path / "damaged")
    shutil.copytree(src, workdir)
    ckpts = os.path.join(workdir, "checkpoints")
    os.makedirs(os.path.join(ckpts, "12.orbax-checkpoint-tmp-1733140000"))  # a save killed half-way
    shutil.copytree(os.path.join(ckpts, "8"), os.path.join(ckpts, "10"))  # a step whose arrays were lost
    shutil.rmtree(os.path.join(ckpts, "10", "state"))
    got = loop.evaluate_checkpoint(tiny_config(data_dir), workdir)
    out = capsys.readouterr().out
    assert "skipping unfinished save" in out and "12.orbax-checkpoint-tmp" in out
    assert "skipping unreadable step 10" in out
    assert got["step"] == STEPS
    np.testing.assert_allclose(got["accuracy"], summary["test_accuracy"])


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_good_checkpoint(data_dir, tmp_path):
    cfg = tiny_config(
        data_dir,
        optimizer="sgd",
        lr=1e38,
        clip_norm=0.0,
        warmup_steps=0,
        momentum=0.0,
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


def test_configs_parse_and_reject_unknown_names(data_dir):
    assert classification.get_config().model.attention == "spatial"
    assert classification.get_config("none").model.attention == "none"
    c = classification.get_config("cbam,tiny")
    assert c.model.attention == "cbam" and c.dataset == "cluttered_digits/tiny"
    from attn_jax.train.factory import build_model

    with pytest.raises(ValueError, match="backbone"):
        build_model(tiny_config(data_dir, model={"backbone": "vgg"}).model, 10)


def test_cli_usage_and_dispatch(capsys):
    from attn_jax import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["attn-jax", "frobnicate"])
    assert exit_.value.code == 2 and "train" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["attn-jax", "--help"])
    assert exit_.value.code == 0


def test_pmap_loop_matches_shard_map_loop(finished_run, data_dir, tmp_path):
    import orbax.checkpoint as ocp

    loop.train_and_evaluate(tiny_config(data_dir, parallel="pmap", png_examples=0), str(tmp_path))
    path = lambda d: os.path.join(d, "checkpoints", str(STEPS), "state")
    want = ocp.StandardCheckpointer().restore(path(finished_run[0]))
    got = ocp.StandardCheckpointer().restore(path(str(tmp_path)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), want, got)


def test_bfloat16_compute_trains_with_float32_parameters(data_dir):
    import functools

    import jax.numpy as jnp

    from attn_jax.train import parallel, step
    from attn_jax.train.factory import build_model, build_optimizer
    from attn_jax.train.state import create_train_state

    cfg = tiny_config(data_dir, model={"dtype": "bfloat16"})
    model, tx = build_model(cfg.model, 10), build_optimizer(cfg)
    images = np.random.default_rng(0).normal(size=(16, 32, 32, 1)).astype(np.float32)
    state = create_train_state(model, tx, jax.random.PRNGKey(0), jnp.asarray(images[:2]))
    mesh = parallel.make_mesh(8)
    fn = parallel.shard_map_step(functools.partial(step.train_step, model=model, tx=tx), mesh)
    batch = {"image": images, "label": np.arange(16, dtype=np.int32) % 10}
    state, metrics = fn(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["count"]) == 16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
