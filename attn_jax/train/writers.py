"""Metric output: one JSONL file per run, TensorBoard events (tensorboardX, no TensorFlow), a tqdm bar."""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
from tqdm.auto import tqdm


class MetricWriter:
    """Writes scalars to <workdir>/metrics.jsonl and TensorBoard events in <workdir>/tb (process 0 only)."""

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self._tb = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115 - closed in close()
        if tensorboard:  # imported here: TensorBoard output is optional (tensorboard=False)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, prefix: str, scalars: dict) -> None:
        """One JSONL record (numbers and lists) and TensorBoard scalars (finite numbers) at `step`."""
        if not self.active:
            return
        record = {"step": int(step), "split": prefix, "time": time.time()}
        scalars = {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in scalars.items()}
        record.update(scalars)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:  # lists (e.g. per-class IoU) go to the JSONL file only
            for k, v in scalars.items():
                if isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(f"{prefix}/{k}", float(v), int(step))

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


def progress_bar(total: int, initial: int, enabled: bool = True):
    """A tqdm bar over steps showing rate and ETA (process 0 only); set_postfix adds the loss."""
    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        smoothing=0.1,
        disable=not enabled or jax.process_index() != 0,
    )
