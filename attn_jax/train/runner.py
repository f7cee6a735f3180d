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
    """A task's train and eval steps, compiled for one parallel mode over a mesh, and the host-to-device
    placement of states and batches. Usually made by :func:`attn_jax.train.build_steps`.

    ``runner.train(state, batch) -> (state, metrics)`` is :func:`attn_jax.train.train_step` under
    :func:`attn_jax.train.shard_map_step` (``config.parallel = "shard_map"``, the default) or
    :func:`attn_jax.train.pmap_step` (``"pmap"``); ``runner.eval(state, batch) -> (sums, per_example)``
    is :func:`attn_jax.train.eval_step` with the task's ``eval_outputs``. Both take the state and the
    batch as :meth:`place` and :meth:`batch` make them.

    Args:
      config: the experiment config (``config.parallel`` picks the mode).
      task: the :class:`attn_jax.train.tasks.Task` supplying the loss and the eval outputs.
      model: the task's Flax module.
      tx: the optax transformation.
      mesh: a 1-D mesh (:func:`attn_jax.train.make_mesh`); in pmap mode its devices are mapped over.

    Raises:
      ValueError: ``config.parallel`` is neither ``"shard_map"`` nor ``"pmap"``, or is ``"pmap"`` in a
        run of several processes.
    """

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
        """``(n, H, W, C)`` float32 zeros of the task's image shape (the shape to initialise on)."""
        return jnp.zeros((n, *self.task.meta.image_shape), jnp.float32)

    def init_state(self, seed: int):
        """A fresh train state on the host, the task's parameter adjustments applied.

        Args:
          seed: the PRNG seed of the initialisation and of the training randomness.

        Returns:
          A :class:`attn_jax.train.TrainState` at step 0 (pass it through :meth:`place`).
        """
        return create_train_state(
            self.model, self.tx, jax.random.PRNGKey(seed), self.sample_images(), self.task.init_params
        )

    def abstract_state(self):
        """The train state's shapes, dtypes and shardings, without computing it.

        Returns:
          A :class:`attn_jax.train.TrainState` of ``jax.ShapeDtypeStruct`` leaves replicated over the mesh
          (a checkpoint's restore target; the argument of ``jax.export``).
        """
        abstract = abstract_train_state(self.model, self.tx, self.sample_images(), self.task.init_params)
        sharding = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)

    def batch(self, batch: dict):
        """This process's batch as the steps take it.

        Args:
          batch: dict of per-process arrays, each ``(b, ...)``, ``b`` divisible by the local device count.

        Returns:
          In shard_map mode, global arrays split along axis 0 (:func:`attn_jax.train.shard_batch`); in
          pmap mode, NumPy arrays ``(num_devices, b // num_devices, ...)``
          (:func:`attn_jax.train.split_for_pmap`).

        Raises:
          ValueError: an entry's first axis does not divide by the device count.
        """
        if self.mode == "pmap":
            return parallel.split_for_pmap(batch, self.mesh.size)
        return parallel.shard_batch(batch, self.mesh)

    def place(self, state):
        """A host train state as the train step's state argument: replicated over the mesh in shard_map
        mode, unchanged in pmap mode."""
        return parallel.replicate(state, self.mesh) if self.mode == "shard_map" else state

    def from_restored(self, state):
        """A state restored with the shardings of :meth:`abstract_state` as the train step's state
        argument (fetched to the host in pmap mode)."""
        return state if self.mode == "shard_map" else jax.device_get(state)

    def eval_host(self, state, batch: dict):
        """Run the eval step on this process's batch and bring its results to the host.

        Args:
          state: the state as :meth:`place` or :meth:`from_restored` gives it.
          batch: dict of per-process arrays, each ``(b, ...)``, including ``"valid"`` ``(b,)`` bool.

        Returns:
          The pair ``(sums, per_example)`` as NumPy, the task's sums over the global batch and its
          per-example arrays of the global batch, each ``(b * process_count, ...)``.
        """
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
    """The compiled train and eval steps of an experiment config's task.

    Args:
      config: an experiment config (``config.task``, ``config.parallel``, the model and optimizer
        fields).
      mesh: the 1-D device mesh; None for :func:`attn_jax.train.make_mesh` of ``config.num_devices``
        (all devices when absent or 0).
      meta: the dataset's facts; None to look them up from ``config.dataset``.
      model: overrides the task's model built from the config (tests, notebooks).
      tx: overrides :func:`attn_jax.train.build_optimizer` of the config.

    Returns:
      A :class:`attn_jax.train.Runner`.

    Raises:
      ValueError: an unknown task, parallel mode, backbone, dtype or optimizer, or a device count out of
        range.

    Examples:
      >>> runner = build_steps(config, make_mesh())
      >>> state = runner.place(runner.init_state(seed=0))
      >>> state, metrics = runner.train(state, runner.batch(host_batch))
    """
    task = make_task(config, meta)
    mesh = mesh if mesh is not None else parallel.make_mesh(config.get("num_devices") or None)
    model = model if model is not None else task.build_model()
    tx = tx if tx is not None else build_optimizer(config)
    return Runner(config, task, model, tx, mesh)
