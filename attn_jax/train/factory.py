"""The model and optimizer of an experiment config (see experiments/configs), for notebooks and tools.

model = build_model(config)        # the task's model (config.task), BatchNorm over the axis "data"
tx = build_optimizer(config)

The pieces (backbone, dtype, optimizer) live in attn_jax.train.builders, below the tasks; this module sits
above them.
"""

from __future__ import annotations

from attn_jax.train.builders import build_optimizer
from attn_jax.train.step import AXIS
from attn_jax.train.tasks import make_task


def build_model(config, meta=None, *, bn_axis_name: str | None = AXIS):
    """The Flax model of an experiment config's task, with ``config.model``'s backbone and attention.

    Args:
      config: an experiment config; ``config.task`` picks the model (classification:
        :class:`attn_jax.models.AttentionClassifier`, detection: :class:`attn_jax.models.AttentionDetector`,
        segmentation: :class:`attn_jax.models.AttentionSegmenter`).
      meta: the dataset's facts (image shape, classes); None to look them up from ``config.data.dataset``.
      bn_axis_name: the device axis BatchNorm averages its batch statistics over, so that a data-parallel
        step equals one full-batch step (default ``"data"``); None for per-device statistics.

    Returns:
      The unbound Flax module (initialise it with ``model.init`` or
      :func:`attn_jax.train.create_train_state`).

    Raises:
      ValueError: an unknown task, backbone or dtype in the config.
    """
    return make_task(config, meta).build_model(bn_axis_name)


__all__ = ["build_model", "build_optimizer"]
