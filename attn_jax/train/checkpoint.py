"""Orbax checkpoints of the train state plus the grain data-iterator state, with safe auto-resume.

Layout: <workdir>/checkpoints/<step>/{state, data}. Saves are asynchronous; a step directory appears only
when finalised (orbax writes to "<step>.orbax-checkpoint-tmp-*" and renames). Kept: the latest
`keep_latest` steps and the best `keep_best` by an eval metric (higher is better).
"""

from __future__ import annotations

import logging
import os

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

log = logging.getLogger(__name__)
TMP_MARK = ".orbax-checkpoint-tmp"


class _IteratorSnapshot:
    """The iterator state taken when save() is called (async writes happen later, after it moved on)."""

    def __init__(self, iterator):
        self._state = iterator.get_state()

    def get_state(self):
        return self._state


def make_manager(
    directory: str,
    *,
    keep_latest: int = 2,
    keep_best: int = 1,
    best_metric: str = "accuracy",
    async_save: bool = True,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """A CheckpointManager with items "state" (pytree) and "data" (grain iterator, one file per process).

    read_only: for evaluation next to a running job (no saves, no removal of its in-flight temporaries)."""
    if keep_latest < 1 or keep_best < 0:
        raise ValueError(f"need keep_latest >= 1 and keep_best >= 0, got {keep_latest=}, {keep_best=}")
    policies = [cm.LatestN(n=keep_latest)]
    if keep_best:
        policies.append(
            cm.BestN(
                get_metric_fn=lambda m: m[best_metric], n=keep_best, keep_checkpoints_without_metrics=False
            )
        )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
    )
    report_unfinished(directory, removed=not read_only)
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
    return ocp.CheckpointManager(os.path.abspath(directory), item_handlers=handlers, options=options)


def report_unfinished(directory: str, removed: bool = True) -> list[str]:
    """Names of leftover temporary step directories (an interrupted save); each is logged and skipped."""
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if TMP_MARK in n)
    for name in names:
        msg = f"checkpoint: skipping unfinished save {os.path.join(directory, name)}"
        msg += " (removed)" if removed else ""
        log.warning(msg)
        print(msg, flush=True)
    return names


def save(manager: ocp.CheckpointManager, step: int, state, iterator, metrics: dict | None = None) -> bool:
    """Start an (async) save of `state` and the iterator position at `step`; metrics rank best-k."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator))
    )
    return manager.save(step, args=args, metrics=metrics, force=True)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, iterator=None):
    """(state, step) from the latest readable step, or (None, None) when there is none.

    abstract_state: ShapeDtypeStructs with the shardings wanted now (any device count). The iterator, when
    given, is moved to the saved position. A step that cannot be read (truncated, corrupt) is reported
    and the next older one is tried.
    """
    for step in sorted(manager.all_steps(), reverse=True):
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # a damaged step must not stop the run: fall back to an older one
            msg = (
                f"checkpoint: skipping unreadable step {step} in {manager.directory}: {type(err).__name__}: "
            )
            msg += str(err).splitlines()[0][:200] if str(err) else ""
            log.warning(msg)
            print(msg, flush=True)
            continue
        return restored["state"], step
    return None, None


def with_shardings(abstract_tree, sharding):
    """ShapeDtypeStructs of `abstract_tree` carrying `sharding` (e.g. replicated over the current mesh)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree)


def restore_read_only(directory: str, abstract_state, step: int | None = None):
    """(state, step) of `step` (default: the latest readable one) in a checkpoint directory, opened
    read-only (safe beside a running job; only the "state" item is read). FileNotFoundError when there is
    no readable step. abstract_state: ShapeDtypeStructs with the shardings wanted (e.g. one device)."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {directory!r}")
    manager = make_manager(directory, keep_best=0, async_save=False, read_only=True)
    try:
        if step is None:
            state, step = restore_latest(manager, abstract_state)
        else:
            items = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            state = manager.restore(step, args=items)["state"]
    finally:
        manager.close()
    if state is None:
        raise FileNotFoundError(f"no finished checkpoint in {directory!r}")
    return state, step
