"""Orbax checkpoints of the train state plus the grain data-iterator state, with safe auto-resume.

Layout: <workdir>/checkpoints/<step>/{state, data, CHECKSUM_FILE}. Saves are asynchronous; a step directory
appears only when finalised (orbax writes to "<step>.orbax-checkpoint-tmp-*" and renames). Kept: the latest
`keep_latest` steps and the best `keep_best` by an eval metric (higher is better). Once a step is finalised,
the size and SHA-256 of every file in it are written to CHECKSUM_FILE (orbax's stored chunks carry no
checksum); restore verifies them. A step that fails to verify or to read is reported, moved aside to
<workdir>/checkpoints.damaged/ and the next older one is tried, so a re-run saves that step afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

log = logging.getLogger(__name__)
TMP_MARK = ".orbax-checkpoint-tmp"
CHECKSUM_FILE = "attn_jax_checksums.json"
DAMAGED_SUFFIX = ".damaged"


class DamagedCheckpointError(RuntimeError):
    """A step's files do not match the sizes and SHA-256 written when it was saved."""


def _report(msg: str) -> None:
    log.warning(msg)
    print(msg, flush=True)


def _step_files(step_dir: str) -> list[str]:
    """Relative paths of every file under `step_dir` except the checksum file, sorted."""
    out = []
    for root, _, files in os.walk(step_dir):
        out += [os.path.relpath(os.path.join(root, f), step_dir) for f in files]
    return sorted(f for f in out if f != CHECKSUM_FILE)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(step_dir: str) -> None:
    """Write {relative path: [size, sha256]} of every file of a finalised step to CHECKSUM_FILE."""
    table = {
        f: [os.path.getsize(os.path.join(step_dir, f)), _sha256(os.path.join(step_dir, f))]
        for f in _step_files(step_dir)
    }
    tmp = os.path.join(step_dir, CHECKSUM_FILE + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(table, fh, indent=0)
    os.replace(tmp, os.path.join(step_dir, CHECKSUM_FILE))


def verify_checksums(step_dir: str) -> bool:
    """True when every file listed in CHECKSUM_FILE has its size and SHA-256; False when there is no
    CHECKSUM_FILE (a step saved before checksums, or killed before it was written). Raises
    DamagedCheckpointError naming the first file that is missing or changed."""
    path = os.path.join(step_dir, CHECKSUM_FILE)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as fh:
            table = json.load(fh)
    except (OSError, ValueError) as err:
        raise DamagedCheckpointError(f"{path} is unreadable ({err})") from None
    for rel, (size, digest) in sorted(table.items()):
        full = os.path.join(step_dir, rel)
        if not os.path.exists(full):
            raise DamagedCheckpointError(f"file {rel} is missing")
        if os.path.getsize(full) != size:
            raise DamagedCheckpointError(f"file {rel} has {os.path.getsize(full)} bytes, {size} when saved")
        if _sha256(full) != digest:
            raise DamagedCheckpointError(f"file {rel} changed since it was saved (SHA-256 mismatch)")
    return True


class ChecksummedCheckpointManager(ocp.CheckpointManager):
    """A CheckpointManager that writes CHECKSUM_FILE into each step it saved once the step is finalised
    (after every wait: orbax waits before each save and on close, so no call site changes)."""

    def __init__(self, *args, read_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.attn_read_only = read_only
        self._unchecksummed: set[int] = set()

    def save(self, step, *args, **kwargs):
        saved = super().save(step, *args, **kwargs)
        if saved:
            self._unchecksummed.add(int(step))
            if not self.is_saving_in_progress():
                self._write_pending_checksums()
        return saved

    def wait_until_finished(self):
        super().wait_until_finished()
        self._write_pending_checksums()

    def _write_pending_checksums(self):
        for step in sorted(self._unchecksummed):
            step_dir = os.path.join(self.directory, str(step))
            if jax.process_index() == 0 and os.path.isdir(step_dir):  # absent: already removed by a policy
                write_checksums(step_dir)
            self._unchecksummed.discard(step)


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
    return ChecksummedCheckpointManager(
        os.path.abspath(directory), item_handlers=handlers, options=options, read_only=read_only
    )


def report_unfinished(directory: str, removed: bool = True) -> list[str]:
    """Names of leftover temporary step directories (an interrupted save); each is logged and skipped."""
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if TMP_MARK in n)
    for name in names:
        msg = f"checkpoint: skipping unfinished save {os.path.join(directory, name)}"
        _report(msg + (" (removed)" if removed else ""))
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
    given, is moved to the saved position. A step whose checksums do not match or that cannot be read
    (truncated, corrupt) is reported, moved to <directory>.damaged/ (unless the manager is read-only, so
    that the run can save that step again) and the next older one is tried.
    """
    for step in sorted(manager.all_steps(), reverse=True):
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        step_dir = os.path.join(manager.directory, str(step))
        try:
            if not verify_checksums(step_dir):
                _report(f"checkpoint: step {step} in {manager.directory} has no {CHECKSUM_FILE}: unverified")
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # a damaged step must not stop the run: fall back to an older one
            _skip_damaged(manager, step, err)
            continue
        return restored["state"], step
    return None, None


def error_summary(err: BaseException, limit: int = 300) -> str:
    """`Type: first non-empty line of the message`, shortened at a word boundary (never mid-word)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        text = text[: cut if cut > 0 else limit].rstrip(" ,;:") + " ..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _skip_damaged(manager, step: int, err: BaseException) -> None:
    """Report a step that failed to verify or restore; move it aside unless the manager is read-only."""
    msg = f"checkpoint: skipping unreadable step {step} in {manager.directory}: {error_summary(err)}"
    read_only = getattr(manager, "attn_read_only", False)
    if read_only:
        _report(msg)
        return
    dest = None
    if jax.process_index() == 0:
        dest = quarantine(os.path.join(manager.directory, str(step)))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"attn_jax_quarantine_{step}")
    manager.reload()
    _report(msg + (f" (moved to {dest})" if dest else ""))


def quarantine(step_dir: str) -> str:
    """Move a damaged step directory to <checkpoints>.damaged/<step>[-k]; returns the new path."""
    parent = os.path.dirname(os.path.abspath(step_dir)) + DAMAGED_SUFFIX
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(step_dir)
    dest, k = os.path.join(parent, name), 1
    while os.path.exists(dest):
        dest, k = os.path.join(parent, f"{name}-{k}"), k + 1
    shutil.move(step_dir, dest)
    return dest


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
