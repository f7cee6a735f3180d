"""SIGTERM as a flag: a training loop polls `.requested`, saves a checkpoint and returns cleanly."""

from __future__ import annotations

import signal

# Exit status of `attn-jax train` / experiments/run.py stopped by SIGTERM after saving a checkpoint: the run
# is resumable (run the same command again). EX_TEMPFAIL of sysexits.h, "temporary failure, retry later", so
# a scheduler can tell a preempted run (requeue it) from a finished one (0) or a failed one (other codes).
EXIT_PREEMPTED = 75


class SigtermFlag:
    """Context: SIGTERM sets `.requested` instead of killing the process (main thread only; elsewhere
    signals are left alone and `.requested` stays False)."""

    def __enter__(self):
        self.requested, self._old = False, None
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
