"""Data parallelism: one per-device step run over a Mesh with `jax.shard_map` under `jax.jit`, or `jax.pmap`.

    mesh = make_mesh()                                     # all devices, axis "data"
    step = shard_map_step(functools.partial(train_step, model=m, tx=tx), mesh)
    state = replicate(state, mesh)
    state, metrics = step(state, shard_batch(host_batch, mesh))

Each process passes its own (per-process) share of the global batch; `shard_batch` assembles the global
array. State is replicated (PartitionSpec()), the batch is split along its first axis.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from attn_jax.train.cpu import train_compiler_options, with_compiler_options
from attn_jax.train.step import AXIS


def make_mesh(num_devices: int | None = None, axis_name: str = AXIS) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (default: all, across all processes)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
    return Mesh(np.asarray(devices[:n]), (axis_name,))


def replicate(tree, mesh: Mesh):
    """Copy every leaf of `tree` to all devices of `mesh` (PartitionSpec())."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict, mesh: Mesh):
    """Per-process NumPy batch -> global jax.Arrays split along axis 0 over the mesh's single axis."""
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
    """jit(shard_map(step_fn)): (state replicated, batch sharded) -> (state, metrics) replicated,
    compiled with `train_compiler_options(mesh)` (the CPU tuning of attn_jax.train.cpu).

    step_fn(state, batch) must use the mesh's axis name for its collectives."""
    axis = mesh.axis_names[0]
    mapped = jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()))
    options = train_compiler_options(mesh)
    return jax.jit(mapped, donate_argnums=(0,) if donate else (), compiler_options=options)


def shard_map_eval(eval_fn, mesh: Mesh):
    """jit(shard_map(eval_fn)): (state replicated, batch sharded) -> metrics replicated."""
    axis = mesh.axis_names[0]
    return jax.jit(jax.shard_map(eval_fn, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P()))


def pmap_step(step_fn, *, axis_name: str = AXIS, devices=None):
    """pmap(step_fn) over local devices: state broadcast (in_axes None, unstacked), batch split by
    `split_for_pmap`; returns unstacked (state, metrics). Compiled with `train_compiler_options(devices)`
    as shard_map_step is (see attn_jax.train.cpu)."""
    devices = list(devices) if devices is not None else jax.local_devices()
    mapped = jax.pmap(step_fn, axis_name=axis_name, in_axes=(None, 0), out_axes=(None, None), devices=devices)
    return with_compiler_options(mapped, train_compiler_options(devices))


def split_for_pmap(batch: dict, num_devices: int | None = None) -> dict:
    """(b, ...) -> (num_devices, b / num_devices, ...) for every array of the per-process batch."""
    n = num_devices or jax.local_device_count()

    def split(x):
        x = np.asarray(x)
        if x.shape[0] % n:
            raise ValueError(f"batch axis {x.shape[0]} does not divide by {n} devices")
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])

    return jax.tree.map(split, batch)
