"""One training run per workdir: a lock file holding the owner's host, pid and process start time.

`with workdir_lock(workdir):` creates <workdir>/.lock-<process index> atomically (O_EXCL). A second run on
the same workdir fails at once with WorkdirInUseError naming the owner. A lock left by a killed process
(same host, pid gone or reused by a process that started later) is reported as stale and taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time

import jax

log = logging.getLogger(__name__)
LOCK_PREFIX = ".lock-"


class WorkdirInUseError(RuntimeError):
    """Another live process holds the workdir's lock."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    """Whether the process recorded in `owner` still runs (always True for another host: cannot tell)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    recorded, now = owner.get("start_time"), _start_time(pid)
    return recorded is None or now is None or recorded == now  # a different start time: pid reused


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid())}


def _create(path: str) -> bool:
    """Create the lock file with this process as owner; False if it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_owner(), f)
    except BaseException:  # e.g. the disk is full: leave no empty lock behind
        with contextlib.suppress(OSError):
            os.remove(path)
        raise
    return True


def _read(path: str, retries: int = 5) -> dict:
    """The lock's owner; {} if the file is gone or stays unreadable (its starter writes it just after)."""
    for attempt in range(retries):
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            time.sleep(0.05 * (attempt + 1))
    return {}


def acquire(workdir: str, process_index: int | None = None) -> str:
    """Take <workdir>/.lock-<process_index>; returns its path or raises WorkdirInUseError."""
    if process_index is None:
        process_index = jax.process_index()
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"{LOCK_PREFIX}{process_index}")
    for _ in range(3):  # a race with another starter or a stale-lock removal: retry
        if _create(path):
            return path
        owner = _read(path)
        if owner and _alive(owner):
            raise WorkdirInUseError(
                f"workdir {workdir} is in use by process {owner.get('pid')} on {owner.get('host')} "
                f"(lock file {path}); wait for it to finish or pass another --workdir"
            )
        msg = f"workdir lock: removing stale lock {path} of a process that is gone ({owner or 'unreadable'})"
        log.warning(msg)
        print(msg, flush=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    raise WorkdirInUseError(f"could not take the lock {path}: another process keeps creating it")


def release(path: str) -> None:
    """Remove a lock file taken by this process (left alone if another process owns it now)."""
    if _read(path, retries=1).get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def workdir_lock(workdir: str, process_index: int | None = None):
    """Hold the workdir's lock for the duration of the block (see the module docstring)."""
    path = acquire(workdir, process_index)
    try:
        yield path
    finally:
        release(path)
