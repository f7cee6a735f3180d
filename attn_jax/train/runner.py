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
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attn_jax.train import parallel
from attn_jax.train.builders import build_optimizer
from attn_jax.train.seeds import (
    eval_over_seeds,
    over_seeds,
    replica_seeds,
    resolve_seeds_mode,
    stack_states,
)
from attn_jax.train.state import abstract_train_state, create_train_state
from attn_jax.train.step import eval_step, train_step
from attn_jax.train.tasks import make_task

PARALLEL_MODES = tuple(parallel.PLACEMENTS)


class Runner:
    """A task's train and eval steps, compiled for one parallel mode over a mesh, and the host-to-device
    placement of states and batches. Usually made by :func:`attn_jax.train.build_steps`.

    ``runner.train(state, batch) -> (state, metrics)`` is :func:`attn_jax.train.train_step` under
    :func:`attn_jax.train.shard_map_step` (``config.parallel = "shard_map"``, the default) or
    :func:`attn_jax.train.pmap_step` (``"pmap"``); ``runner.eval(state, batch) -> (sums, per_example)``
    is :func:`attn_jax.train.eval_step` with the task's ``eval_outputs``. Both take the state and the
    batch as :meth:`place` and :meth:`batch` make them. What differs between the modes (how steps are
    compiled, states and batches placed, results gathered) is the ``placement``'s:
    ``attn_jax.train.parallel.ShardMapPlacement`` or ``attn_jax.train.parallel.PmapPlacement``.

    Args:
      config: the experiment config (``config.parallel`` picks the mode; ``config.num_seeds`` K > 1 makes
        the steps run K stacked replicas, vmapped or unrolled as ``config.seeds_mode`` says,
        ``attn_jax.train.seeds``).
      task: the :class:`attn_jax.train.tasks.Task` supplying the loss and the eval outputs.
      model: the task's Flax module.
      tx: the optax transformation.
      mesh: a 1-D mesh (:func:`attn_jax.train.make_mesh`); in pmap mode its devices are mapped over.

    Raises:
      ValueError: ``config.parallel`` is neither ``"shard_map"`` nor ``"pmap"``, or is ``"pmap"`` in a
        run of several processes; ``config.seeds_mode`` is not one of ``attn_jax.train.seeds.SEEDS_MODES``.
    """

    def __init__(self, config, task, model, tx, mesh):
        self.config, self.task, self.model, self.tx, self.mesh = config, task, model, tx, mesh
        self.mode = config.parallel
        if self.mode not in parallel.PLACEMENTS:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {self.mode!r}")
        self.placement = parallel.PLACEMENTS[self.mode](mesh)
        self.seeds = replica_seeds(config)
        step_fn = functools.partial(
            train_step, model=model, tx=tx, loss_fn=task.loss, inputs_fn=task.train_inputs
        )
        eval_fn = functools.partial(eval_step, model=model, outputs_fn=task.eval_outputs)
        if len(self.seeds) > 1:  # K replicas in one program: states (K, ...), batches (b, K, ...)
            seeds_mode = resolve_seeds_mode(
                config.get("seeds_mode", "vmap"), jax.default_backend(), mesh.size
            )
            step_fn = over_seeds(step_fn, mode=seeds_mode)
            eval_fn = eval_over_seeds(eval_fn, mode=seeds_mode)
        self.train = self.placement.train_step(step_fn)
        self.eval = self.placement.eval_step(eval_fn)

    def sample_images(self, n: int = 2):
        """``(n, H, W, C)`` float32 zeros of the task's image shape (the shape to initialise on)."""
        return jnp.zeros((n, *self.task.meta.image_shape), jnp.float32)

    def init_state(self, seed: int):
        """A fresh train state on the host, the task's parameter adjustments applied.

        Args:
          seed: the PRNG seed of the initialisation and of the training randomness; with
            ``config.num_seeds`` K > 1, replica i is initialised with ``seed + i``.

        Returns:
          A :class:`attn_jax.train.TrainState` at step 0 (pass it through :meth:`place`); with K > 1 the
          K replicas' states stacked on a leading axis.
        """
        states = [
            create_train_state(
                self.model, self.tx, jax.random.PRNGKey(seed + i), self.sample_images(), self.task.init_params
            )
            for i in range(len(self.seeds))
        ]
        return states[0] if len(states) == 1 else stack_states(states)

    def abstract_state(self):
        """The train state's shapes, dtypes and shardings, without computing it.

        Returns:
          A :class:`attn_jax.train.TrainState` of ``jax.ShapeDtypeStruct`` leaves replicated over the mesh
          (a checkpoint's restore target; the argument of ``jax.export``); with K > 1 seeds each leaf has
          the leading seed axis ``K``.
        """
        abstract = abstract_train_state(self.model, self.tx, self.sample_images(), self.task.init_params)
        sharding = NamedSharding(self.mesh, P())
        lead = (len(self.seeds),) if len(self.seeds) > 1 else ()
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(lead + x.shape, x.dtype, sharding=sharding), abstract
        )

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
        return self.placement.batch(batch)

    def place(self, state):
        """A host train state as the train step's state argument: replicated over the mesh in shard_map
        mode, unchanged in pmap mode."""
        return self.placement.place(state)

    def from_restored(self, state):
        """A state restored with the shardings of :meth:`abstract_state` as the train step's state
        argument (fetched to the host in pmap mode)."""
        return self.placement.from_restored(state)

    def eval_host(self, state, batch: dict):
        """Run the eval step on this process's batch and bring its results to the host.

        Args:
          state: the state as :meth:`place` or :meth:`from_restored` gives it.
          batch: dict of per-process arrays, each ``(b, ...)``, including ``"valid"`` ``(b,)`` bool.

        Returns:
          The pair ``(sums, per_example)`` as NumPy, the task's sums over the global batch and its
          per-example arrays of the global batch, each ``(b * process_count, ...)``; with K > 1 seeds the
          sums ``(K, ...)`` and the per-example arrays ``(b * process_count, K, ...)``.
        """
        sums, per_example = self.eval(state, self.batch(batch))
        return jax.tree.map(_replicated_to_host, sums), self.placement.per_example_to_host(per_example)


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
      meta: the dataset's facts; None to look them up from ``config.data.dataset``.
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
    mesh = mesh if mesh is not None else parallel.make_mesh(config.num_devices or None)
    model = model if model is not None else task.build_model()
    tx = tx if tx is not None else build_optimizer(config)
    return Runner(config, task, model, tx, mesh)
