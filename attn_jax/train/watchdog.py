"""A stall watchdog for the training loop: a step that makes no progress ends the run cleanly.

    with StallWatchdog(timeout_s=600, describe=lambda: "step 1200; resume: attn-jax train ...") as dog:
        for step in steps:
            state = train_step(state, batch)
            dog.beat()

XLA:CPU runs a multi-device step's all-reduce between threads of one process. A thread that never
reaches it (or one so starved that it arrives minutes late) would otherwise end the process with
"Fatal Python error: Aborted" and a C++ stack trace, or, with the collective timeouts raised
(`attn_jax.train.distributed.set_collective_timeouts`), wait forever. The watchdog turns both into one
line on stderr and exit status `EXIT_STALLED` (75, like a preemption: run the same command again to
resume from the last checkpoint, which a stall cannot damage since saves finish before the next step's
results are awaited).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

EXIT_STALLED = 75  # EX_TEMPFAIL: the run can be resumed


class StallWatchdog:
    """Ends the process when `beat` is not called for `timeout_s` seconds.

    Args:
      timeout_s: seconds without a beat before the process ends; 0 or None disables the watchdog.
      describe: called at a stall for the message's tail (where the run stood, how to resume).
      exit_fn: ends the process with a status; `os._exit` by default, because the main thread is
        blocked inside XLA and cannot unwind.
      poll_s: how often the watchdog thread looks at the clock.

    Raises:
      ValueError: if `timeout_s` is negative.

    Examples:
      >>> dog = StallWatchdog(timeout_s=0)  # disabled: start / beat / stop do nothing
      >>> with dog:
      ...     dog.beat()
    """

    def __init__(
        self,
        timeout_s: float | None,
        describe: Callable[[], str] = lambda: "",
        *,
        exit_fn: Callable[[int], object] = os._exit,
        poll_s: float | None = None,
    ):
        if timeout_s is not None and timeout_s < 0:
            raise ValueError(f"stall_timeout_s must be >= 0 (0 disables the watchdog), got {timeout_s}")
        self.timeout_s = float(timeout_s or 0)
        self._describe = describe
        self._exit = exit_fn
        self._poll = poll_s if poll_s is not None else min(5.0, max(self.timeout_s / 20, 0.01))
        self._last = time.monotonic()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.stalled = False

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    def beat(self) -> None:
        """Record progress: the stall clock starts again."""
        self._last = time.monotonic()

    def start(self) -> StallWatchdog:
        """Record progress, and start watching on the first call (later calls only record progress)."""
        self.beat()
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="attn_jax-stall-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> StallWatchdog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._done.wait(self._poll):
            idle = time.monotonic() - self._last
            if idle < self.timeout_s:
                continue
            self.stalled = True
            try:
                tail = self._describe()
            except Exception as err:  # noqa: BLE001 - the message must not stop the exit
                tail = f"(could not describe the run: {err!r})"
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            print(
                f"attn-jax: stalled: no training step finished in {idle:.0f} s (stall_timeout_s="
                f"{self.timeout_s:g}; load average {load:.1f}); exiting with status {EXIT_STALLED}"
                + (f"; {tail}" if tail else ""),
                file=sys.stderr,
                flush=True,
            )
            self._exit(EXIT_STALLED)
            return
