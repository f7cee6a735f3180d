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

    The class attributes: ``name``, the registry key (``config.task``); ``best_metric``, the eval metric
    the best-k checkpoint policy keeps (higher is better); ``headline``, the eval metrics printed at the
    end of a run.

    Args:
      config: the experiment config.
      meta: the dataset's facts (e.g. from :func:`attn_jax.data.dataset_info`): image shape, number of
        classes.
    """

    name: ClassVar[str] = ""
    best_metric: ClassVar[str] = "accuracy"
    headline: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config, meta):
        self.config, self.meta = config, meta

    def pipeline_kwargs(self) -> dict:
        """The keyword arguments this task adds to :func:`attn_jax.data.make_pipeline` (``task``, and for
        detection ``max_boxes``)."""
        return {"task": self.name}

    def build_model(self, bn_axis_name: str | None = AXIS):
        """The Flax model of the config.

        Args:
          bn_axis_name: the device axis BatchNorm averages its statistics over (default ``"data"``); None
            for per-device statistics.

        Returns:
          The unbound Flax module, called as ``model(images, train=...)`` on ``(B, H, W, C)`` images.
        """
        raise NotImplementedError

    def train_inputs(self, batch: dict) -> tuple:
        """The model's positional inputs in a training step (:func:`attn_jax.train.loss_and_updates`).

        Args:
          batch: this device's share of the batch.

        Returns:
          ``(batch["image"],)`` by default; a task whose model trains on more (e.g. the target tokens of
          teacher forcing) returns those too.
        """
        return (batch["image"],)

    def init_params(self, params):
        """Adjust freshly initialised parameters (e.g. a prior on the class bias).

        Args:
          params: the model's ``params`` variable tree from ``model.init``.

        Returns:
          The adjusted tree; the default returns ``params`` unchanged.
        """
        return params

    def loss(self, outputs, batch: dict, axis_name: str | None):
        """This device's loss and metric sums: a step's ``loss_fn``.

        The mean over devices of the loss gradients must be the full-batch gradient. The sums are added
        over devices and steps, then :meth:`train_metrics` divides them.

        Args:
          outputs: the model's outputs on ``batch["image"]`` (``train=True``).
          batch: this device's share of the batch (the image, the task's labels and ``"valid"``).
          axis_name: the device axis; None outside ``shard_map`` / ``pmap``.

        Returns:
          The pair ``(loss, sums)``, a scalar loss and a dict of scalar metric sums.
        """
        raise NotImplementedError

    def train_metrics(self, sums: dict) -> dict:
        """Turn the train metric sums, added over devices and steps on the host, into means.

        Args:
          sums: dict of the sums :meth:`loss` returned, added up (NumPy or float values).

        Returns:
          A dict of floats that contains ``"loss"``.
        """
        raise NotImplementedError

    def eval_outputs(self, outputs, batch: dict, axis_name: str | None):
        """What the eval step returns for one device's batch: an eval step's ``outputs_fn``.

        Args:
          outputs: the model's outputs on ``batch["image"]`` (``train=False``).
          batch: this device's share of an eval batch, with ``"valid"`` ``(b,)`` bool (False for padding,
            which must count for nothing).
          axis_name: the device axis.

        Returns:
          The pair ``(sums, per_example)``, a dict of sums over all devices (replicated) and a dict of
          per-example arrays, each ``(b, ...)``, split over the devices like the batch (may be empty).
        """
        raise NotImplementedError

    def evaluator(self):
        """A fresh host-side accumulator of eval results.

        Returns:
          An object with ``add(sums, per_example)``, called with each batch's NumPy results of
          :meth:`eval_outputs` (per-example arrays of the global batch), and ``result()``, returning a
          dict of floats or lists (the eval metrics).
        """
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
