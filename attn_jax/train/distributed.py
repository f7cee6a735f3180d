"""Multi-host start-up: `jax.distributed.initialize` from arguments or environment, before devices are used.

Environment (each process): ATTN_JAX_COORDINATOR=host:port, ATTN_JAX_NUM_PROCESSES=n, ATTN_JAX_PROCESS_ID=i.
On CPU, cross-process collectives use gloo.
"""

from __future__ import annotations

import os
import warnings

import jax

_ENV = ("ATTN_JAX_COORDINATOR", "ATTN_JAX_NUM_PROCESSES", "ATTN_JAX_PROCESS_ID")


def maybe_initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Call jax.distributed.initialize when a coordinator is given (argument or environment); returns
    whether it did. Idempotent: a second call in an initialised process does nothing."""
    coordinator = coordinator or os.environ.get(_ENV[0])
    if not coordinator:
        return False
    if jax.distributed.is_initialized():
        return True
    num_processes = num_processes or _env_int(_ENV[1])
    process_id = process_id if process_id is not None else _env_int(_ENV[2])
    if num_processes is None or process_id is None:
        raise ValueError(
            f"coordinator {coordinator!r} given but num_processes={num_processes}, "
            f"process_id={process_id}: set {_ENV[1]} and {_ENV[2]}"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    return True


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


# XLA:CPU ends the whole process (LOG(FATAL), "Fatal Python error: Aborted") when one device's thread
# reaches a collective more than this many seconds after the others: 40 s by default, which a loaded
# 2-core machine exceeds. A late device is not a broken program, so the wait is raised far above any
# step; a step that truly never finishes is ended cleanly by the loop's stall watchdog
# (attn_jax.train.watchdog) first, with the checkpoints intact and the resume command.
COLLECTIVE_TERMINATE_FLAG = "xla_cpu_collective_call_terminate_timeout_seconds"
COLLECTIVE_WARN_FLAG = "xla_cpu_collective_call_warn_stuck_timeout_seconds"
COLLECTIVE_TERMINATE_S = 24 * 3600
COLLECTIVE_WARN_S = 300  # XLA's "this thread ... may be stuck" lines, each hundreds of characters


def set_collective_timeouts(
    terminate_s: int = COLLECTIVE_TERMINATE_S, warn_s: int = COLLECTIVE_WARN_S
) -> None:
    """Add the XLA:CPU collective timeouts to ``XLA_FLAGS`` unless the user's ``XLA_FLAGS`` already sets
    them. XLA reads the variable once, when JAX starts its CPU backend: call this before any JAX
    operation (`configure_cpu_devices` does).

    Args:
      terminate_s: seconds a device may wait for the others at a collective before XLA aborts the
        process.
      warn_s: seconds before XLA logs that a collective may be stuck.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [
        f"--{name}={value}"
        for name, value in ((COLLECTIVE_TERMINATE_FLAG, terminate_s), (COLLECTIVE_WARN_FLAG, warn_s))
        if name not in flags
    ]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


def configure_cpu_devices(count: int) -> None:
    """Split the host CPU into `count` XLA devices, so the data-parallel step runs one shard per device.

    0 leaves JAX's default. Must run before JAX starts its backends (the CLI calls it first); if they
    already started with another CPU device count, warns and leaves them. No effect on GPU/TPU. With
    several devices the steps' all-reduces run between threads of this process, so the collective
    timeouts are raised first (`set_collective_timeouts`): on a busy machine one device's thread can
    reach an all-reduce long after the others, which XLA would otherwise treat as fatal.

    Args:
      count: number of CPU devices, >= 0.
    """
    if not count:
        return
    if count > 1:
        set_collective_timeouts()
    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError:
        if jax.default_backend() == "cpu" and jax.local_device_count() != count:
            warnings.warn(
                f"cpu_devices={count} ignored: JAX already started with {jax.local_device_count()} CPU "
                "devices (set it before any JAX operation, e.g. through the attn-jax CLI)",
                stacklevel=2,
            )
