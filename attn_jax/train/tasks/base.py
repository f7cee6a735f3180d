"""The task interface: what a task supplies to the one training loop, and helpers for its losses.

A task turns a config and the dataset's facts into a model, this device's loss and metric sums (written
for the axis "data": the step averages gradients over it), what its eval step returns, and a host-side
evaluator. Everything else (step, loop, runner, checkpoints, writers) is shared.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import numpy as np
from jax import lax

from attn_jax.train.step import AXIS


def axis_size(axis_name: str | None) -> int:
    """Number of devices along `axis_name` (1 outside shard_map / pmap or when None)."""
    return 1 if axis_name is None else lax.axis_size(axis_name)


def global_sum(x, axis_name: str | None):
    """Sum of `x` over all devices of `axis_name`, as a constant (no gradient flows through it), so the
    same code gives the same gradient under shard_map and pmap."""
    x = lax.stop_gradient(x)
    return x if axis_name is None else lax.psum(x, axis_name)


class Task:
    """One task of the training loop; subclasses set the class attributes and the methods below.

    name: registry key (config.task). best_metric: eval metric kept by the best-k checkpoint policy
    (higher is better). headline: eval metrics printed at the end of a run.
    """

    name: ClassVar[str] = ""
    best_metric: ClassVar[str] = "accuracy"
    headline: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config, meta):
        self.config, self.meta = config, meta

    def pipeline_kwargs(self) -> dict:
        """Extra make_pipeline arguments (task, max_boxes ...)."""
        return {"task": self.name}

    def build_model(self, bn_axis_name: str | None = AXIS):
        """The Flax model of the config; BatchNorm statistics averaged over `bn_axis_name`."""
        raise NotImplementedError

    def init_params(self, params):
        """Adjust freshly initialised parameters (e.g. a prior on the class bias); default unchanged."""
        return params

    def loss(self, outputs, batch: dict, axis_name: str | None):
        """(this device's loss, metric sums): the mean over devices of the loss gradients must be the
        full-batch gradient. Sums are added over devices and steps, then `train_metrics` divides."""
        raise NotImplementedError

    def train_metrics(self, sums: dict) -> dict:
        """Host: summed train metrics -> means; must contain "loss"."""
        raise NotImplementedError

    def eval_outputs(self, outputs, batch: dict, axis_name: str | None):
        """(sums over devices (replicated), per-example arrays (split over devices like the batch))."""
        raise NotImplementedError

    def evaluator(self):
        """Host accumulator with add(sums, per_example) and result() -> dict of floats / lists."""
        raise NotImplementedError


def jsonable(result: dict) -> dict:
    """Evaluator result -> JSON-friendly values (arrays to lists, NumPy scalars to floats)."""
    out = {}
    for k, v in result.items():
        if isinstance(v, np.ndarray | jax.Array):
            v = np.asarray(v)
            out[k] = v.tolist() if v.ndim else float(v)
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out
