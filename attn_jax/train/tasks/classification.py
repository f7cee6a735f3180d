"""Classification: AttentionClassifier, cross-entropy (label smoothing), accuracy."""

from __future__ import annotations

import numpy as np
from jax import lax

from attn_jax.train.step import AXIS, classification_loss, classification_sums
from attn_jax.train.tasks.base import Task
from attn_jax.train.writers import reduce_sums


class Classification(Task):
    """Image -> class. Train metrics: loss, accuracy; eval: loss, accuracy over the split."""

    name = "classification"
    best_metric = "accuracy"
    headline = ("accuracy", "loss")

    def build_model(self, bn_axis_name: str | None = AXIS):
        from attn_jax.models import AttentionClassifier
        from attn_jax.train.factory import attention_kwargs, build_backbone, model_dtype

        m = self.config.model
        backbone = build_backbone(m, bn_axis_name)
        return AttentionClassifier(
            backbone,
            self.meta.num_classes,
            attention=m.attention,
            attention_kwargs=attention_kwargs(m),
            dtype=model_dtype(m),
        )

    def loss(self, outputs, batch, axis_name):
        # per-device mean, as before the task interface: equal local batches make the mean of the
        # devices' gradients the full-batch gradient
        return classification_loss(outputs, batch, label_smoothing=self.config.get("label_smoothing", 0.0))

    def train_metrics(self, sums):
        return reduce_sums(sums)

    def eval_outputs(self, outputs, batch, axis_name):
        sums = classification_sums(outputs, batch["label"], batch.get("valid"))
        return lax.psum(sums, axis_name), {}

    def evaluator(self):
        return _SumsEvaluator()


class _SumsEvaluator:
    def __init__(self):
        self.total = None

    def add(self, sums, per_example):
        sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
        self.total = sums if self.total is None else {k: self.total[k] + sums[k] for k in sums}

    def result(self):
        return reduce_sums(self.total)
