"""Reliability, for every task: SIGTERM saves and exits cleanly; SIGKILL at a step drawn from a seeded
generator, then restart, resumes from the latest finalised checkpoint; the final state is bitwise equal to
an uninterrupted run (CPU)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from attn_jax.train.preemption import EXIT_PREEMPTED
from tests._train_models import ROOT, TASKS, load_experiment_config

STEPS = 12
RUN = os.path.join(ROOT, "experiments", "run.py")
FLAGS = {
    "num_train_steps": STEPS,
    "checkpoint_every_steps": 2,
    "log_every_steps": 1,
    "eval_every_steps": 0,
    "num_devices": 2,
    "png_examples": 0,
    "progress": False,
    "keep_latest": 3,
}
# what a resume must restore is the training state: the reader's evaluation reads greedily (a beam is
# compiled by the loop's own reading test)
TASK_FLAGS = {"reading": {"reading.beam_width": 1}}


def _flags(task):
    return {**FLAGS, **TASK_FLAGS.get(task, {})}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


KILL_SEED = 20261203


def _read_json(path, lines=True):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()] if lines else json.load(f)


def _start(task, workdir, data_dir):
    config = os.path.join(ROOT, "experiments", "configs", f"{task}.py")
    cmd = [
        sys.executable,
        RUN,
        f"--config={config}:tiny",  # each task's default attention
        f"--workdir={workdir}",
        f"--config.data.dir={data_dir}",
        *(f"--config.{k}={v}" for k, v in _flags(task).items()),
    ]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(proc, workdir, step, timeout=600):
    """Block until the run has logged `step` (or later); return the highest logged step."""
    path, deadline = os.path.join(workdir, "metrics.jsonl"), time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early (rc={proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        if os.path.exists(path):
            steps = [r["step"] for r in _read_json(path)]
            if steps and max(steps) >= step:
                return max(steps)
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _final_state(workdir):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(STEPS), "state"))


@pytest.mark.parametrize("task", TASKS)
def test_sigterm_then_sigkill_then_restart_equals_uninterrupted_run(task, data_dir, tmp_path):
    from attn_jax.train import loop

    reference = str(tmp_path / "reference")
    cfg = load_experiment_config(task)
    cfg.data.dir = data_dir
    cfg.update_from_flattened_dict(_flags(task))
    loop.train_and_evaluate(cfg, reference)

    workdir = str(tmp_path / "interrupted")
    proc = _start(task, workdir, data_dir)
    _wait_for_step(proc, workdir, 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, out[-3000:]  # stopped by SIGTERM, resumable
    summary = _read_json(os.path.join(workdir, "summary.json"), lines=False)
    assert summary["stop_reason"] == "sigterm" and 2 <= summary["step"] < STEPS, summary
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(summary["step"])))

    seed = KILL_SEED + TASKS.index(task)
    kill_at = random.Random(seed).randint(summary["step"] + 1, STEPS - 2)
    context = f"{task}: SIGKILL after step {kill_at} (random.Random({seed}))"
    proc = _start(task, workdir, data_dir)
    killed_after = _wait_for_step(proc, workdir, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    proc = _start(task, workdir, data_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{context}\n{out[-3000:]}"
    assert "resumed from checkpoint step" in out, context
    summary = _read_json(os.path.join(workdir, "summary.json"), lines=False)
    assert summary["stop_reason"] == "done" and 0 < summary["resumed_from"] <= killed_after, (
        context,
        summary,
    )

    want, got = _final_state(reference), _final_state(workdir)
    assert jax.tree.structure(want) == jax.tree.structure(got), context
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{context}: {path}")
