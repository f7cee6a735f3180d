"""Multi-host data parallelism: 2 processes x 2 CPU devices on 127.0.0.1 equal 1 process x 4 devices."""

import functools
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.train import parallel, step
from attn_jax.train.optim import make_optimizer
from attn_jax.train.state import create_train_state
from tests._train_models import TinyNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_batches(n=3, size=16, hw=12):
    rng = np.random.default_rng(1)
    return [
        {
            "image": rng.normal(size=(size, hw, hw, 1)).astype(np.float32),
            "label": rng.integers(0, 10, size=(size,)).astype(np.int32),
        }
        for _ in range(n)
    ]


def make_state_and_tx(model, batch):
    tx = make_optimizer("sgd", lr=0.2, total_steps=10, momentum=0.9)
    return create_train_state(model, tx, jax.random.PRNGKey(3), jnp.asarray(batch["image"][:2])), tx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_equal_one_process_with_four_devices(tmp_path):
    out, port = str(tmp_path / "mp.npz"), _free_port()
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
            log, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, log[-3000:]

    model = TinyNet(bn_axis_name="data")
    batches = make_batches()
    state, tx = make_state_and_tx(model, batches[0])
    mesh = parallel.make_mesh(4)
    fn = parallel.shard_map_step(functools.partial(step.train_step, model=model, tx=tx), mesh)
    state = parallel.replicate(state, mesh)
    for batch in batches:
        state, metrics = fn(state, parallel.shard_batch(batch, mesh))
    want = jax.tree.leaves(jax.device_get((state.params, state.batch_stats, metrics)))
    got = np.load(out)
    assert len(got.files) == len(want)
    for i, w in enumerate(want):
        np.testing.assert_allclose(got[f"arr_{i}"], w, rtol=2e-5, atol=2e-6)
