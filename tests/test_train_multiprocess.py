"""Multi-host data parallelism, every task: 2 processes x 2 CPU devices on 127.0.0.1 (gloo) equal 1 process
x 4 devices after several SGD steps, eval metrics included; a SIGTERM on one process stops both."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from attn_jax.train import parallel
from attn_jax.train.runner import build_steps
from tests._train_models import ROOT, TASKS, small_config, synthetic_batches, synthetic_meta


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_process_four_devices(task):
    runner = build_steps(small_config(task, "sgd"), parallel.make_mesh(4), meta=synthetic_meta(task))
    state = runner.place(runner.init_state(3))
    for batch in synthetic_batches(task, 3, seed=1):
        state, metrics = runner.train(state, runner.batch(batch))
    eval_batch = dict(synthetic_batches(task, 1, seed=5)[0], valid=np.arange(16) < 13)
    evaluator = runner.task.evaluator()
    evaluator.add(*runner.eval_host(state, eval_batch))
    return jax.tree.leaves(jax.device_get((state.params, state.batch_stats, metrics))), evaluator.result()


@pytest.mark.multiprocess
def test_two_processes_equal_one_process_with_four_devices(tmp_path):
    out, port = str(tmp_path / "mp"), _free_port()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests._mp_worker", str(i), str(port), out],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        try:
            log, _ = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, log[-3000:]

    for task in TASKS:
        want, want_eval = _one_process_four_devices(task)
        got = np.load(f"{out}.{task}.npz")
        assert len(got.files) == len(want), task
        for i, w in enumerate(want):
            np.testing.assert_allclose(got[f"arr_{i}"], w, rtol=2e-5, atol=2e-6, err_msg=f"{task} leaf {i}")
        got_eval = np.load(f"{out}.{task}.eval.npz")
        for k, v in want_eval.items():
            np.testing.assert_allclose(got_eval[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{task} eval {k}")
