"""Data parallelism: one per-device step run over a Mesh with `jax.shard_map` under `jax.jit`, or `jax.pmap`.

    mesh = make_mesh()                                     # all devices, axis "data"
    step = shard_map_step(functools.partial(train_step, model=m, tx=tx), mesh)
    state = replicate(state, mesh)
    state, metrics = step(state, shard_batch(host_batch, mesh))

Each process passes its own (per-process) share of the global batch; `shard_batch` assembles the global
array. State is replicated (PartitionSpec()), the batch is split along its first axis. `ShardMapPlacement`
and `PmapPlacement` bundle each mode's compiling and placing behind the same methods, for the Runner.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from attn_jax.train.cpu import train_compiler_options, with_compiler_options
from attn_jax.train.step import AXIS


def make_mesh(num_devices: int | None = None, axis_name: str = AXIS) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices, for data parallelism.

    Args:
      num_devices: how many of ``jax.devices()`` (all processes' devices, in their order) the mesh
        holds; None for all of them.
      axis_name: the name of the mesh's one axis; the steps' collectives use it (default ``"data"``).

    Returns:
      A ``jax.sharding.Mesh`` of shape ``(num_devices,)`` with the axis ``axis_name``.

    Raises:
      ValueError: ``num_devices`` is not in ``[1, len(jax.devices())]``.

    Examples:
      >>> mesh = make_mesh(1)
      >>> mesh.axis_names, mesh.devices.shape
      (('data',), (1,))
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
    return Mesh(np.asarray(devices[:n]), (axis_name,))


def replicate(tree, mesh: Mesh):
    """Copy every leaf of ``tree`` to all devices of ``mesh`` (sharding ``PartitionSpec()``).

    Args:
      tree: a pytree of arrays (e.g. a host :class:`attn_jax.train.TrainState`); leaves keep their shapes.
      mesh: the mesh to replicate over.

    Returns:
      The same pytree with every leaf a ``jax.Array`` replicated over ``mesh``.
    """
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict, mesh: Mesh):
    """Assemble this process's batch into global arrays split along axis 0 over the mesh's one axis.

    Every process passes its own share of the global batch; the global batch is the processes' shares
    concatenated in process order.

    Args:
      batch: dict of per-process arrays, each ``(b, ...)`` with ``b`` divisible by the number of this
        process's devices in ``mesh``.
      mesh: a 1-D mesh (e.g. from :func:`attn_jax.train.make_mesh`).

    Returns:
      A dict with the same keys of global ``jax.Array`` values, each ``(b * process_count, ...)``, sharded
      along axis 0 (``PartitionSpec(axis)``).

    Raises:
      ValueError: an entry has no first axis, or its first axis does not divide by the mesh's local device
        count.
    """
    sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
    local = len(mesh.local_devices)
    for key, value in batch.items():
        if np.shape(value)[:1] == () or np.shape(value)[0] % local:
            raise ValueError(
                f"batch[{key!r}] has shape {np.shape(value)}: first axis must divide by the "
                f"{local} local devices of the mesh"
            )
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def shard_map_step(step_fn, mesh: Mesh, *, donate: bool = True):
    """A per-device train step run over ``mesh``: ``jax.jit(jax.shard_map(step_fn))``.

    The state goes in and out replicated (``PartitionSpec()``), the batch is split along its first axis
    (``PartitionSpec(axis)``), the metrics come out replicated. The step is compiled with the CPU compile
    options of ``attn_jax.train.cpu.train_compiler_options(mesh)`` (None, XLA's defaults, off a
    one-CPU-device process).

    Args:
      step_fn: ``step_fn(state, batch) -> (state, metrics)`` for one device's share of the batch, using
        the mesh's axis name for its collectives, e.g. :func:`attn_jax.train.train_step` with its keyword
        arguments bound by ``functools.partial``.
      mesh: a 1-D mesh (:func:`attn_jax.train.make_mesh`).
      donate: donate the state argument's buffers to the result (the caller must not reuse the state it
        passed in).

    Returns:
      The jitted function ``(state, batch) -> (state, metrics)``, taking a replicated state
      (:func:`attn_jax.train.replicate`) and a global batch (:func:`attn_jax.train.shard_batch`).
    """
    axis = mesh.axis_names[0]
    mapped = jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()))
    options = train_compiler_options(mesh)
    return jax.jit(mapped, donate_argnums=(0,) if donate else (), compiler_options=options)


def shard_map_eval(eval_fn, mesh: Mesh):
    """A per-device eval step run over ``mesh``: ``jax.jit(jax.shard_map(eval_fn))``.

    Args:
      eval_fn: ``eval_fn(state, batch) -> metrics`` for one device's share of the batch; the metrics must
        be equal on every device (e.g. summed with ``lax.psum`` over the mesh's axis).
      mesh: a 1-D mesh (:func:`attn_jax.train.make_mesh`).

    Returns:
      The jitted function ``(state, batch) -> metrics``: state replicated, batch split along axis 0,
      metrics replicated.
    """
    axis = mesh.axis_names[0]
    return jax.jit(jax.shard_map(eval_fn, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P()))


def pmap_step(step_fn, *, axis_name: str = AXIS, devices=None):
    """A per-device train step run with ``jax.pmap`` over this process's devices.

    The state is broadcast (``in_axes=None``: passed and returned unstacked), the batch carries a leading
    device axis (:func:`attn_jax.train.split_for_pmap`), and the metrics come back unstacked. Compiled
    with the same CPU compile options as :func:`attn_jax.train.shard_map_step`.

    Args:
      step_fn: ``step_fn(state, batch) -> (state, metrics)`` for one device's share of the batch, using
        ``axis_name`` for its collectives (e.g. a bound :func:`attn_jax.train.train_step`).
      axis_name: the pmapped axis's name (default ``"data"``).
      devices: the devices to map over; None for ``jax.local_devices()``.

    Returns:
      The function ``(state, batch) -> (state, metrics)``, where each batch entry is
      ``(num_devices, b, ...)``.
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    mapped = jax.pmap(step_fn, axis_name=axis_name, in_axes=(None, 0), out_axes=(None, None), devices=devices)
    return with_compiler_options(mapped, train_compiler_options(devices))


def split_for_pmap(batch: dict, num_devices: int | None = None) -> dict:
    """Give every array of a per-process batch a leading device axis, for :func:`attn_jax.train.pmap_step`.

    Args:
      batch: dict (or pytree) of arrays, each ``(b, ...)`` with ``b`` divisible by ``num_devices``.
      num_devices: the number of devices; None or 0 for ``jax.local_device_count()``.

    Returns:
      The same structure of NumPy arrays, each ``(num_devices, b // num_devices, ...)``.

    Raises:
      ValueError: an array's first axis does not divide by ``num_devices``.

    Examples:
      >>> import numpy as np
      >>> out = split_for_pmap({"image": np.zeros((8, 32, 32, 3)), "label": np.zeros(8)}, 4)
      >>> out["image"].shape, out["label"].shape
      ((4, 2, 32, 32, 3), (4, 2))
    """
    n = num_devices or jax.local_device_count()

    def split(x):
        x = np.asarray(x)
        if x.shape[0] % n:
            raise ValueError(f"batch axis {x.shape[0]} does not divide by {n} devices")
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])

    return jax.tree.map(split, batch)


class ShardMapPlacement:
    """How the shard_map steps take and give arrays: the state replicated over the mesh, batches as global
    arrays split along axis 0, per-example eval outputs gathered over processes.

    :class:`attn_jax.train.Runner` holds one placement (this or :class:`PmapPlacement`, by
    ``config.parallel``) and calls the same five methods in either mode.

    Args:
      mesh: a 1-D mesh (:func:`attn_jax.train.make_mesh`).
    """

    def __init__(self, mesh: Mesh):
        self.mesh = mesh

    def train_step(self, step_fn):
        """``step_fn(state, batch) -> (state, metrics)`` compiled over the mesh (:func:`shard_map_step`)."""
        return shard_map_step(step_fn, self.mesh)

    def eval_step(self, eval_fn):
        """``eval_fn(state, batch) -> (sums, per_example)`` over the mesh: sums replicated, per-example
        outputs split like the batch. No autodiff here, so the step may use loops with plain carries
        (detection's NMS)."""
        axis = self.mesh.axis_names[0]
        specs = (P(), P(axis))
        return jax.jit(
            jax.shard_map(eval_fn, mesh=self.mesh, in_specs=specs, out_specs=specs, check_vma=False)
        )

    def batch(self, batch: dict):
        """This process's batch as global arrays (:func:`shard_batch`)."""
        return shard_batch(batch, self.mesh)

    def place(self, state):
        """A host state replicated over the mesh (:func:`replicate`)."""
        return replicate(state, self.mesh)

    def from_restored(self, state):
        """A state restored with replicated shardings: already placed."""
        return state

    def per_example_to_host(self, per_example):
        """The eval step's per-example outputs of the global batch as NumPy (gathered over processes)."""
        if jax.process_count() > 1 and jax.tree.leaves(per_example):
            return multihost_utils.process_allgather(per_example, tiled=True)
        return jax.device_get(per_example)


class PmapPlacement:
    """How the pmap steps take and give arrays: the state as host arrays (broadcast by ``in_axes=None``),
    batches with a leading device axis, per-example eval outputs flattened back to one batch axis. Same
    methods as :class:`ShardMapPlacement`; one process only.

    Args:
      mesh: a 1-D mesh of this process's devices (mapped over in mesh order).

    Raises:
      ValueError: the run has several processes.
    """

    def __init__(self, mesh: Mesh):
        if jax.process_count() > 1:
            raise ValueError("parallel='pmap' runs on the local devices of one process; use 'shard_map'")
        self.mesh, self.devices = mesh, list(mesh.devices.flat)

    def train_step(self, step_fn):
        """``step_fn(state, batch) -> (state, metrics)`` pmapped over the devices (:func:`pmap_step`)."""
        return pmap_step(step_fn, devices=self.devices)

    def eval_step(self, eval_fn):
        """``eval_fn(state, batch) -> (sums, per_example)`` pmapped: sums unstacked, per-example stacked."""
        return jax.pmap(eval_fn, axis_name=AXIS, in_axes=(None, 0), out_axes=(None, 0), devices=self.devices)

    def batch(self, batch: dict):
        """This process's batch with a leading device axis (:func:`split_for_pmap`)."""
        return split_for_pmap(batch, self.mesh.size)

    def place(self, state):
        """A host state: pmap broadcasts it as it is."""
        return state

    def from_restored(self, state):
        """A restored state fetched to the host."""
        return jax.device_get(state)

    def per_example_to_host(self, per_example):
        """``(devices, b, ...)`` per-example outputs as NumPy ``(devices * b, ...)``."""
        return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), per_example)


PLACEMENTS = {"shard_map": ShardMapPlacement, "pmap": PmapPlacement}
