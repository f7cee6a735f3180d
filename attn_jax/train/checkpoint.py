"""Orbax checkpoints of the train state plus the grain data-iterator state, with safe auto-resume.

Layout: <workdir>/checkpoints/<step>/{state, data, CHECKSUM_FILE}. Saves are asynchronous; a step directory
appears only when finalised (orbax writes to "<step>.orbax-checkpoint-tmp-*" and renames). Once a step is
finalised, the size and SHA-256 of every file in it are written to CHECKSUM_FILE (orbax's stored chunks carry
no checksum); restore verifies them.

What restore does with each step, newest first:
  - checksums match: restored. If it then fails to restore, the step is not damaged (its bytes are the ones
    saved): CheckpointMismatchError (another config wrote it), nothing is moved.
  - checksums do not match (or a file is missing / unreadable): reported and moved to
    <workdir>/checkpoints.damaged/<step>; the next older step is tried.
  - no CHECKSUM_FILE (the run stopped between the save and its checksum, or an older attn_jax saved it):
    never trusted. Reported and moved to <workdir>/checkpoints.unverified/<step>; the next older step is
    tried and the run trains (and saves, with a checksum) that step again.
A read-only manager (evaluation beside a running job) moves nothing: it reports and skips such steps.

Kept: the latest `keep_latest` steps and the best `keep_best` by an eval metric (higher is better). Old steps
are removed by this module, not by orbax, and only once a newer step has its checksum, so a crash at any
point leaves a verified step. Each step's eval metrics and cumulative training time are stored in orbax's
step metadata (custom_metadata["attn_jax"]), so best-k survives a resume; steps saved before that are ranked
by the "test" records of <workdir>/metrics.jsonl (`metrics_log`).

Disk full (ENOSPC / EDQUOT) while writing a checksum or a step is raised as DiskFullError (one line); no
temporary file is left behind and no step is removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as cm

log = logging.getLogger(__name__)
TMP_MARK = ".orbax-checkpoint-tmp"
CHECKSUM_FILE = "attn_jax_checksums.json"
DAMAGED_SUFFIX = ".damaged"
UNVERIFIED_SUFFIX = ".unverified"
REMOVING_PREFIX = ".removing-"  # a step being removed (renamed first, so a crash never leaves half a step)
METADATA_KEY = "attn_jax"  # our entry of orbax's custom_metadata: {"metrics": {...}, "train_time_s": s}
ORBAX_STEP_METADATA = "_CHECKPOINT_METADATA"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DamagedCheckpointError(RuntimeError):
    """A step's files do not match the sizes and SHA-256 written when it was saved."""


class CheckpointMismatchError(ValueError):
    """The checkpoints of a workdir were written by another model or config than the one given."""


class DiskFullError(OSError):
    """No space left (ENOSPC / EDQUOT) while writing a run's files; str() is one line saying what to do."""

    def __init__(self, message: str, errnum: int = errno.ENOSPC):
        super().__init__(message)
        self.errno = errnum

    def __str__(self) -> str:
        return self.args[0]


def is_disk_full(err: BaseException | None) -> bool:
    """Whether an exception, or one in its chain of causes and contexts, says the disk or quota is full.

    Args:
      err: the exception (None gives False).

    Returns:
      True for an ``OSError`` with errno ENOSPC or EDQUOT, or a message holding "No space left on device"
      or "Disk quota exceeded", anywhere along ``__cause__`` / ``__context__``.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        text = str(err)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full_error(err: BaseException, doing: str) -> DiskFullError:
    """The one-line :class:`DiskFullError` for a disk-full error.

    Args:
      err: the disk-full exception (an ``OSError``, or one whose message says so); a ``DiskFullError`` is
        returned as it is.
      doing: what was being done, e.g. ``"writing the checksums of step 8"``.

    Returns:
      A ``DiskFullError`` whose message reads "<reason> while <doing> (<file>)", the file when ``err``
      names one, and whose errno is ENOSPC or EDQUOT.
    """
    if isinstance(err, DiskFullError):
        return err
    where = getattr(err, "filename", None)
    errnum = getattr(err, "errno", None) if getattr(err, "errno", None) in DISK_FULL_ERRNOS else errno.ENOSPC
    reason = os.strerror(errnum).lower()
    return DiskFullError(f"{reason} while {doing}" + (f" ({where})" if where else ""), errnum)


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


def write_text_atomically(path: str, text: str) -> None:
    """Write a text file atomically, through ``<path>.tmp`` and a rename.

    Readers see either the old file or the whole new one. On failure (e.g. a full disk) the temporary file
    is removed and the error re-raised.

    Args:
      path: the file to write.
      text: its new content.

    Raises:
      OSError: writing or renaming failed (e.g. ENOSPC).
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_checksums(step_dir: str) -> None:
    """Write the size and SHA-256 of every file of a finalised step to its ``CHECKSUM_FILE``.

    The file maps each path relative to ``step_dir`` to ``[size, sha256]``; it is written atomically, so a
    failed write leaves no file.

    Args:
      step_dir: a finalised step directory (``<workdir>/checkpoints/<step>``).

    Raises:
      DiskFullError: the disk or quota is full.
      OSError: another failure reading the files or writing the table.
    """
    table = {
        f: [os.path.getsize(os.path.join(step_dir, f)), _sha256(os.path.join(step_dir, f))]
        for f in _step_files(step_dir)
    }
    try:
        write_text_atomically(os.path.join(step_dir, CHECKSUM_FILE), json.dumps(table, indent=0))
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(err, f"writing the checksums of {step_dir}") from None
        raise


def verify_checksums(step_dir: str) -> bool:
    """Check a step's files against its ``CHECKSUM_FILE``.

    Args:
      step_dir: a step directory (``<workdir>/checkpoints/<step>``).

    Returns:
      True when every file listed has its saved size and SHA-256; False when there is no
      ``CHECKSUM_FILE`` (a step saved before checksums, or stopped before it was written).

    Raises:
      DamagedCheckpointError: naming the first listed file that is missing, unreadable or changed, or the
        checksum file itself when it is unreadable.
    """
    path = os.path.join(step_dir, CHECKSUM_FILE)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as fh:
            table = json.load(fh)
        items = sorted(table.items())
    except (OSError, ValueError, AttributeError) as err:
        raise DamagedCheckpointError(f"{path} is unreadable ({err})") from None
    for rel, (size, digest) in items:
        full = os.path.join(step_dir, rel)
        if not os.path.exists(full):
            raise DamagedCheckpointError(f"file {rel} is missing")
        if os.path.getsize(full) != size:
            raise DamagedCheckpointError(f"file {rel} has {os.path.getsize(full)} bytes, {size} when saved")
        try:
            actual = _sha256(full)
        except OSError as err:
            raise DamagedCheckpointError(f"file {rel} is unreadable ({err.strerror})") from None
        if actual != digest:
            raise DamagedCheckpointError(f"file {rel} changed since it was saved (SHA-256 mismatch)")
    return True


def _read_step_record(step_dir: str) -> dict:
    """Our entry of orbax's step metadata ({} when absent or unreadable)."""
    try:
        with open(os.path.join(step_dir, ORBAX_STEP_METADATA)) as fh:
            record = (json.load(fh).get("custom_metadata") or {}).get(METADATA_KEY)
    except (OSError, ValueError, AttributeError):
        return {}
    return record if isinstance(record, dict) else {}


def _logged_metrics(path: str | None) -> dict[int, dict]:
    """{step: the last "test" record at that step} of a metrics.jsonl file ({} when absent)."""
    out: dict[int, dict] = {}
    if not path or not os.path.exists(path):
        return out
    with open(path) as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if isinstance(record, dict) and record.get("split") == "test" and "step" in record:
                out[int(record["step"])] = record
    return out


class ChecksummedCheckpointManager(ocp.CheckpointManager):
    """A CheckpointManager that writes CHECKSUM_FILE into each step it saved once the step is finalised
    (after every wait: orbax waits before each save and on close; `checksum_finished_saves()` between
    saves), then removes the steps that neither `keep_latest` nor `keep_best` keeps (orbax removes none)."""

    def __init__(
        self,
        *args,
        read_only: bool = False,
        keep_latest: int = 2,
        keep_best: int = 0,
        best_metric: str = "accuracy",
        metrics_log: str | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.attn_read_only = read_only
        self._keep_latest, self._keep_best, self._best_metric = keep_latest, keep_best, best_metric
        self._unchecksummed: set[int] = set()
        self._records: dict[int, dict] = {}
        for step in self.all_steps():
            self._records[step] = _read_step_record(os.path.join(self.directory, str(step)))
        if keep_best and any("metrics" not in self._records[s] for s in self._records):
            logged = _logged_metrics(metrics_log)  # steps saved before metrics went into step metadata
            for step, record in self._records.items():
                if "metrics" not in record and step in logged:
                    record["metrics"] = {best_metric: logged[step].get(best_metric)}

    def step_record(self, step: int) -> dict:
        """{"metrics": eval metrics or None, "train_time_s": training seconds up to this step} as saved
        ({} for a step saved without them)."""
        return dict(self._records.get(int(step), {}))

    def save(self, step, *args, metrics=None, custom_metadata=None, **kwargs):
        record = dict((custom_metadata or {}).get(METADATA_KEY, {}))
        saved = super().save(step, *args, metrics=metrics, custom_metadata=custom_metadata, **kwargs)
        if saved:
            self._records[int(step)] = record
            self._unchecksummed.add(int(step))
            if not self.is_saving_in_progress():
                self._write_pending_checksums()
        return saved

    def wait_until_finished(self):
        super().wait_until_finished()
        self._write_pending_checksums()

    def checksum_finished_saves(self) -> None:
        """Write the checksums of saves that finished in the background (cheap when there are none)."""
        if self._unchecksummed and not self.is_saving_in_progress():
            self.wait_until_finished()

    def _write_pending_checksums(self):
        for step in sorted(self._unchecksummed):
            step_dir = os.path.join(self.directory, str(step))
            if jax.process_index() == 0 and os.path.isdir(step_dir):
                write_checksums(step_dir)  # DiskFullError: stays pending, nothing is removed
            self._unchecksummed.discard(step)
        if not self._unchecksummed and jax.process_index() == 0 and not self.attn_read_only:
            self._remove_old_steps()

    def _metric(self, step: int) -> float | None:
        value = (self._records.get(step, {}).get("metrics") or {}).get(self._best_metric)
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    def steps_to_keep(self, steps) -> set[int]:
        """The latest keep_latest of `steps` and the best keep_best of them by the eval metric."""
        steps = sorted(steps)
        keep = set(steps[-self._keep_latest :])
        ranked = sorted((m, s) for s in steps if (m := self._metric(s)) is not None)
        if self._keep_best:
            keep |= {s for _, s in ranked[-self._keep_best :]}
        return keep

    def _remove_old_steps(self) -> None:
        """Remove the steps outside steps_to_keep, each only while a newer step has its checksum."""
        on_disk = [s for s in self.all_steps() if os.path.isdir(os.path.join(self.directory, str(s)))]
        checked = [s for s in on_disk if os.path.exists(os.path.join(self.directory, str(s), CHECKSUM_FILE))]
        if not checked:
            return
        keep, newest_checked = self.steps_to_keep(on_disk), max(checked)
        removed = [s for s in on_disk if s not in keep and s < newest_checked]
        for step in removed:
            step_dir = os.path.join(self.directory, str(step))
            gone = os.path.join(self.directory, f"{REMOVING_PREFIX}{step}")
            os.rename(step_dir, gone)
            shutil.rmtree(gone, ignore_errors=True)
            self._records.pop(step, None)
        if removed:
            self.reload()


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
    metrics_log: str | None = None,
) -> ChecksummedCheckpointManager:
    """A CheckpointManager with items "state" (pytree) and "data" (grain iterator, one file per process).

    Args:
      directory: the checkpoint directory (<workdir>/checkpoints).
      keep_latest: how many of the latest steps to keep (>= 1).
      keep_best: how many of the best steps by `best_metric` (higher is better) to keep besides (>= 0).
      best_metric: the eval metric that ranks steps saved with metrics.
      async_save: write in the background (checksums follow once a step is finalised).
      read_only: for evaluation next to a running job (no saves, no removal of its in-flight temporaries).
      metrics_log: a metrics.jsonl whose "test" records rank steps saved without metrics in their metadata.

    Returns:
      A ChecksummedCheckpointManager.

    Raises:
      ValueError: keep_latest < 1 or keep_best < 0.
    """
    if keep_latest < 1 or keep_best < 0:
        raise ValueError(f"need keep_latest >= 1 and keep_best >= 0, got {keep_latest=}, {keep_best=}")
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.LatestN(n=None),  # orbax removes nothing: see _remove_old_steps
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
    )
    report_unfinished(directory, removed=not read_only)
    if not read_only and os.path.isdir(directory) and jax.process_index() == 0:
        for name in os.listdir(directory):  # a removal cut short by a crash
            if name.startswith(REMOVING_PREFIX):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
    return ChecksummedCheckpointManager(
        os.path.abspath(directory),
        item_handlers=handlers,
        options=options,
        read_only=read_only,
        keep_latest=keep_latest,
        keep_best=keep_best,
        best_metric=best_metric,
        metrics_log=metrics_log,
    )


def report_unfinished(directory: str, removed: bool = True) -> list[str]:
    """Report the leftover temporary step directories of interrupted saves (each is skipped by restore).

    Args:
      directory: the checkpoint directory.
      removed: whether the report says "(removed)" (the caller removes them with
        :func:`remove_unfinished`).

    Returns:
      The directories' names, sorted; ``[]`` when ``directory`` does not exist.
    """
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if TMP_MARK in n)
    for name in names:
        msg = f"checkpoint: skipping unfinished save {os.path.join(directory, name)}"
        _report(msg + (" (removed)" if removed else ""))
    return names


def remove_unfinished(directory: str) -> list[str]:
    """Remove the temporary directories of saves that did not finish (e.g. the disk filled up).

    Only for the process that owns the run (it holds the workdir lock); other processes than process 0
    remove nothing.

    Args:
      directory: the checkpoint directory.

    Returns:
      The names of the removed directories, sorted (``[]`` on processes other than 0).
    """
    if not os.path.isdir(directory) or jax.process_index() != 0:
        return []
    names = sorted(n for n in os.listdir(directory) if TMP_MARK in n)
    for name in names:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    return names


def checksummed_steps(directory: str) -> list[int]:
    """The steps of a checkpoint directory that have a ``CHECKSUM_FILE`` (their files are not re-hashed).

    Args:
      directory: the checkpoint directory.

    Returns:
      The step numbers, ascending; ``[]`` when ``directory`` does not exist.
    """
    if not os.path.isdir(directory):
        return []
    return sorted(
        int(n)
        for n in os.listdir(directory)
        if n.isdigit() and os.path.exists(os.path.join(directory, n, CHECKSUM_FILE))
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state,
    iterator,
    metrics: dict | None = None,
    train_time_s: float | None = None,
) -> bool:
    """Start an (async) save of `state` and the iterator position at `step`.

    Args:
      manager: from make_manager.
      step: the step number (a new one).
      state: the train state pytree.
      iterator: the grain data iterator (its position is saved).
      metrics: eval metrics at this step (rank best-k; kept in the step's metadata).
      train_time_s: training seconds up to this step, over all resumes (kept in the step's metadata).

    Returns:
      Whether a save was started.
    """
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator))
    )
    record = {"metrics": metrics, "train_time_s": train_time_s}
    return manager.save(step, args=args, metrics=metrics, force=True, custom_metadata={METADATA_KEY: record})


def restore_latest(manager: ocp.CheckpointManager, abstract_state, iterator=None):
    """Restore the latest verified step of a manager's directory.

    A damaged step is reported and moved to ``<directory>.damaged/``, a step without checksum to
    ``<directory>.unverified/`` (a read-only manager only reports and skips them); then the next older
    step is tried, so the run trains and saves those steps again.

    Args:
      manager: from make_manager.
      abstract_state: ShapeDtypeStructs with the shardings wanted now (any device count).
      iterator: when given, moved to the saved position.

    Returns:
      The pair ``(state, step)``, or ``(None, None)`` when no step restores.

    Raises:
      CheckpointMismatchError: (writable manager) a step whose checksums match does not restore into
        `abstract_state` (written by another config); nothing is moved. A read-only manager skips it.
      DiskFullError: the disk filled while restoring or reporting.
    """
    read_only = getattr(manager, "attn_read_only", False)
    for step in sorted(manager.all_steps(), reverse=True):
        step_dir = os.path.join(manager.directory, str(step))
        try:
            verified = verify_checksums(step_dir)
        except DamagedCheckpointError as err:
            _set_aside(manager, step, DAMAGED_SUFFIX, f"skipping unreadable step {step}", error_summary(err))
            continue
        if not verified:
            if os.path.isdir(step_dir):  # (else removed by a running job while we looked)
                why = "it has no checksum (the run stopped before writing it, or an older attn_jax saved it)"
                _set_aside(manager, step, UNVERIFIED_SUFFIX, f"not restoring step {step}", why)
            continue
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:
            if is_disk_full(err):
                raise disk_full_error(err, f"restoring step {step} of {manager.directory}") from None
            if not os.path.isdir(step_dir):
                continue  # removed by the running job while a read-only manager read it
            if read_only:
                msg = f"checkpoint: skipping unreadable step {step} in {manager.directory}"
                _report(f"{msg}: {error_summary(err)}")
                continue
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {manager.directory} matches its checksums but does not restore "
                f"into this config's train state ({error_summary(err, 200)}): it was written with another "
                "config; give the run's config (its config.json), or train in another --workdir"
            ) from None
        return restored["state"], step
    return None, None


def error_summary(err: BaseException, limit: int = 300) -> str:
    """A one-line summary of an exception: ``"<Type>: <first non-empty line of its message>"``.

    Args:
      err: the exception.
      limit: the longest message part kept; a longer one is cut at a word boundary and ends in "...".

    Returns:
      The summary (only the type's name when the message is empty).

    Examples:
      >>> error_summary(ValueError("bad shape (2, 3)"))
      'ValueError: bad shape (2, 3)'
      >>> error_summary(OSError("no space left on the device"), limit=12)
      'OSError: no space ...'
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        text = text[: cut if cut > 0 else limit].rstrip(" ,;:") + " ..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _set_aside(manager, step: int, suffix: str, what: str, why: str) -> None:
    """Report a step that restore will not use, then (unless the manager is read-only) move it to
    <directory><suffix>/. The report comes first: if it cannot be written (disk full) nothing is moved."""
    msg = f"checkpoint: {what} in {manager.directory}: {why}"
    if getattr(manager, "attn_read_only", False):
        _report(msg)
        return
    _report(msg + f"; moving it to {str(manager.directory) + suffix}{os.sep}")
    if jax.process_index() == 0:
        quarantine(os.path.join(manager.directory, str(step)), suffix)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"attn_jax_quarantine_{step}")
    manager.reload()


def quarantine(step_dir: str, suffix: str = DAMAGED_SUFFIX) -> str:
    """Move a step directory aside, with a rename (no copy, no space needed).

    Args:
      step_dir: the step directory, ``<checkpoints>/<step>``.
      suffix: the suffix of the directory it moves to, ``<checkpoints><suffix>/`` (default
        ``".damaged"``).

    Returns:
      The new path, ``<checkpoints><suffix>/<step>``, or ``<step>-<k>`` when that exists already.
    """
    parent = os.path.dirname(os.path.abspath(step_dir)) + suffix
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(step_dir)
    dest, k = os.path.join(parent, name), 1
    while os.path.exists(dest):
        dest, k = os.path.join(parent, f"{name}-{k}"), k + 1
    os.rename(step_dir, dest)
    return dest


def with_shardings(abstract_tree, sharding):
    """Give every leaf of an abstract tree a sharding (a restore target's shardings).

    Args:
      abstract_tree: a pytree of arrays or ``jax.ShapeDtypeStruct`` (only shapes and dtypes are read).
      sharding: the ``jax.sharding.Sharding`` of every leaf (e.g. replicated over the current mesh).

    Returns:
      The same pytree of ``jax.ShapeDtypeStruct`` with ``sharding``.
    """
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree)


def restore_read_only(directory: str, abstract_state, step: int | None = None):
    """(state, step) of `step` (default: the latest verified one) in a checkpoint directory, opened
    read-only (safe beside a running job; only the "state" item is read).

    Args:
      directory: the checkpoint directory.
      abstract_state: ShapeDtypeStructs with the shardings wanted (e.g. one device).
      step: a step to restore; its checksums must match.

    Returns:
      (state, step).

    Raises:
      FileNotFoundError: no verified step that restores.
      DamagedCheckpointError: `step` does not match its checksums or has none.
    """
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {directory!r}")
    manager = make_manager(directory, keep_best=0, async_save=False, read_only=True)
    try:
        if step is None:
            state, step = restore_latest(manager, abstract_state)
        else:
            if not verify_checksums(os.path.join(directory, str(step))):
                raise DamagedCheckpointError(f"step {step} in {directory} has no {CHECKSUM_FILE}: unverified")
            items = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            state = manager.restore(step, args=items)["state"]
    finally:
        manager.close()
    if state is None:
        raise FileNotFoundError(f"no finished checkpoint in {directory!r}")
    return state, step
