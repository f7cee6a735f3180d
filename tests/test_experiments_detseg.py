"""The detection / segmentation experiment runner end to end on tiny data (a few steps, whole eval set),
and its checkpoints: SIGTERM saves and stops, a crash loses only the steps since the last save, a re-run
resumes (skipping a leftover temporary save) and ends bitwise equal to an uninterrupted run (CPU)."""

import importlib.util
import json
import os
import pathlib
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(task):
    return _load(ROOT / "experiments" / "configs" / f"{task}.py").get_config("spatial,tiny")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """task -> (workdir, metrics) of one uninterrupted tiny run, made on first use."""
    runs = {}

    def get(task):
        if task not in runs:
            workdir = tmp_path_factory.mktemp(f"{task}_uninterrupted")
            runs[task] = (
                workdir,
                _load(ROOT / "experiments" / "detseg.py").train_and_evaluate(_config(task), str(workdir)),
            )
        return runs[task]

    return get


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_train_and_evaluate_tiny(task, uninterrupted):
    workdir, metrics = uninterrupted(task)
    saved = json.loads((workdir / "metrics.json").read_text())
    assert saved["eval_examples"] == 64  # the whole tiny test split; the padded batch rows are dropped
    assert len(saved["history"]) == 2 and saved["stop_reason"] == "done" and saved["resumed_from"] == 0
    losses = [v for h in saved["history"] for k, v in h.items() if k.endswith("loss")]
    assert losses and np.all(np.isfinite(losses))
    keys = ("mAP", "AP50", "AP50_voc") if task == "detection" else ("mIoU", "pixel_accuracy")
    for k in keys:
        assert 0.0 <= metrics[k] <= 1.0 and saved[k] == pytest.approx(metrics[k])
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]  # every 2 steps, the latest 2 kept


class _Crash(RuntimeError):
    pass


def _interrupt_after(runner, monkeypatch, step, action):
    """Make runner's train step call `action()` right after it has computed `step`."""
    make = runner.make_train_step

    def patched(*args, **kwargs):
        train_step = make(*args, **kwargs)

        def wrapped(state, batch):
            state, aux = train_step(state, batch)
            if int(state.step) == step:
                action()
            return state, aux

        return wrapped

    monkeypatch.setattr(runner, "make_train_step", patched)


def _crash():
    raise _Crash("simulated crash")


def _final_state(workdir, step):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def test_sigterm_crash_and_resume_equal_an_uninterrupted_run(uninterrupted, tmp_path, monkeypatch, capsys):
    reference, want = uninterrupted("detection")
    config, workdir = _config("detection"), str(tmp_path / "interrupted")
    ckpts = os.path.join(workdir, "checkpoints")

    runner = _load(ROOT / "experiments" / "detseg.py")  # 1: SIGTERM after step 1 -> saves step 1, stops
    _interrupt_after(runner, monkeypatch, 1, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert runner.train_and_evaluate(config, workdir) == {
        "stop_reason": "sigterm",
        "step": 1,
        "resumed_from": 0,
    }
    assert sorted(os.listdir(ckpts)) == ["1"] and not os.path.exists(os.path.join(workdir, "metrics.json"))

    runner = _load(ROOT / "experiments" / "detseg.py")  # 2: resumes at 1, crashes after step 3 (saved: 2)
    _interrupt_after(runner, monkeypatch, 3, _crash)
    with pytest.raises(_Crash):
        runner.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(ckpts)) == ["1", "2"]
    os.makedirs(os.path.join(ckpts, "4.orbax-checkpoint-tmp-1733140000"))  # a save killed half-way
    capsys.readouterr()

    got = _load(ROOT / "experiments" / "detseg.py").train_and_evaluate(config, workdir)  # 3: resumes at 2
    out = capsys.readouterr().out
    assert "resumed from checkpoint step 1" not in out and "resumed from checkpoint step 2" in out
    assert "skipping unfinished save" in out and "4.orbax-checkpoint-tmp" in out
    assert sorted(os.listdir(ckpts)) == ["2", "4"] and got["resumed_from"] == 2
    a, b = _final_state(str(reference), 4), _final_state(workdir, 4)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
    for k in ("mAP", "AP50", "AP50_voc", "AR100", "eval_examples", "history"):
        assert got[k] == want[k], k
