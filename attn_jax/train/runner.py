"""Compiled train / eval steps of a task over a device mesh (shard_map, default) or pmap.

    runner = build_steps(config, make_mesh())      # task, model and optimizer from the config
    state = runner.place(runner.init_state(seed))   # replicated over the mesh
    state, metrics = runner.train(state, runner.batch(host_batch))
    sums, per_example = runner.eval_host(state, host_batch)

`runner.train` / `runner.eval` are the jitted (shard_map) or pmapped functions themselves;
`runner.abstract_state()` gives their state argument's shapes and shardings (e.g. for jax.export).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attn_jax.train import parallel
from attn_jax.train.builders import build_optimizer
from attn_jax.train.state import abstract_train_state, create_train_state
from attn_jax.train.step import AXIS, eval_step, train_step
from attn_jax.train.tasks import make_task

PARALLEL_MODES = ("shard_map", "pmap")


class Runner:
    """A task's train and eval steps, compiled for one parallel mode over `mesh`, and host <-> device
    placement of states and batches."""

    def __init__(self, config, task, model, tx, mesh):
        self.config, self.task, self.model, self.tx = config, task, model, tx
        self.mesh, self.mode = mesh, config.get("parallel", "shard_map")
        step_fn = functools.partial(train_step, model=model, tx=tx, loss_fn=task.loss)
        eval_fn = functools.partial(eval_step, model=model, outputs_fn=task.eval_outputs)
        if self.mode == "shard_map":
            self.train = parallel.shard_map_step(step_fn, mesh)
            axis = mesh.axis_names[0]  # state replicated, batch split; sums replicated, per-example split
            specs = (P(), P(axis))
            # no autodiff here, so the eval step may use loops with plain carries (detection's NMS)
            self.eval = jax.jit(
                jax.shard_map(eval_fn, mesh=mesh, in_specs=specs, out_specs=specs, check_vma=False)
            )
        elif self.mode == "pmap":
            if jax.process_count() > 1:
                raise ValueError("parallel='pmap' runs on the local devices of one process; use 'shard_map'")
            devices = list(mesh.devices.flat)
            self.train = parallel.pmap_step(step_fn, devices=devices)
            self.eval = jax.pmap(
                eval_fn, axis_name=AXIS, in_axes=(None, 0), out_axes=(None, 0), devices=devices
            )
        else:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {self.mode!r}")

    def sample_images(self, n: int = 2):
        return jnp.zeros((n, *self.task.meta.image_shape), jnp.float32)

    def init_state(self, seed: int):
        """A fresh train state (host), the task's parameter adjustments applied."""
        return create_train_state(
            self.model, self.tx, jax.random.PRNGKey(seed), self.sample_images(), self.task.init_params
        )

    def abstract_state(self):
        """ShapeDtypeStructs of the train state, replicated over the mesh (a restore target)."""
        abstract = abstract_train_state(self.model, self.tx, self.sample_images(), self.task.init_params)
        sharding = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)

    def batch(self, batch: dict):
        """Per-process NumPy batch -> the step's input (global sharded arrays, or (devices, b, ...))."""
        if self.mode == "pmap":
            return parallel.split_for_pmap(batch, self.mesh.size)
        return parallel.shard_batch(batch, self.mesh)

    def place(self, state):
        """A host state -> the train step's state argument."""
        return parallel.replicate(state, self.mesh) if self.mode == "shard_map" else state

    def from_restored(self, state):
        """A state restored with `abstract_state()` shardings -> the train step's state argument."""
        return state if self.mode == "shard_map" else jax.device_get(state)

    def eval_host(self, state, batch: dict):
        """Eval step on a per-process batch -> (sums, per-example arrays of the GLOBAL batch) in NumPy."""
        sums, per_example = self.eval(state, self.batch(batch))
        sums = jax.tree.map(_replicated_to_host, sums)
        if self.mode == "pmap":
            per_example = jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), per_example)
        elif jax.process_count() > 1 and jax.tree.leaves(per_example):
            per_example = multihost_utils.process_allgather(per_example, tiled=True)
        else:
            per_example = jax.device_get(per_example)
        return sums, per_example


def _replicated_to_host(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))


def build_steps(config, mesh=None, *, meta=None, model=None, tx=None) -> Runner:
    """The compiled train / eval steps of `config`'s task (config.task) over `mesh` (default: all
    devices), parallel mode config.parallel. meta: dataset facts (default: looked up from config.dataset);
    model / tx override the config's model and optimizer (tests)."""
    task = make_task(config, meta)
    mesh = mesh if mesh is not None else parallel.make_mesh(config.get("num_devices") or None)
    model = model if model is not None else task.build_model()
    tx = tx if tx is not None else build_optimizer(config)
    return Runner(config, task, model, tx, mesh)
