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
    """The model of `config`'s task (AttentionClassifier / AttentionDetector / AttentionSegmenter) with
    config.model's backbone and attention; BatchNorm statistics are averaged over `bn_axis_name` (the data
    axis), so a data-parallel step equals one full-batch step. meta: dataset facts (default: looked up)."""
    return make_task(config, meta).build_model(bn_axis_name)


__all__ = ["build_model", "build_optimizer"]
