"""Classification: AttentionClassifier, cross-entropy (label smoothing), accuracy.

The loss is this device's mean cross-entropy: with equal local batch sizes the mean of the devices'
gradients (what the step takes) is the full-batch gradient. Metrics are sums (loss, correct, count) added
over devices and steps, divided on the host by `means_from_sums`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from attn_jax.models import AttentionClassifier
from attn_jax.train.builders import attention_kwargs, build_backbone, model_dtype
from attn_jax.train.step import AXIS
from attn_jax.train.tasks.base import Task


def classification_sums(logits, labels, weights=None, label_smoothing: float = 0.0) -> dict:
    """Summed cross-entropy, correct predictions and examples of a batch.

    Args:
      logits: ``(B, K)`` float class scores.
      labels: ``(B,)`` int class indices in ``[0, K)``.
      weights: ``(B,)`` example weights (e.g. ``batch["valid"]``, bool or float); None for all ones.
      label_smoothing: the ``alpha`` of ``optax.smooth_labels`` for the targets (0 for one-hot).

    Returns:
      A dict of float32 scalars, each a weighted sum over the batch, with the keys ``"loss"`` (the
      softmax cross-entropy against the smoothed targets), ``"correct"`` (argmax equals the label) and
      ``"count"`` (the sum of the weights).

    Raises:
      ValueError: ``logits`` is not ``(B, K)`` or ``labels`` is not ``(B,)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> sums = classification_sums(jnp.array([[2.0, 0.0], [0.0, 1.0]]), jnp.array([0, 0]))
      >>> float(sums["correct"]), float(sums["count"])
      (1.0, 2.0)
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits (B, K) and labels (B,), got {logits.shape} and {labels.shape}")
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    w = jnp.ones_like(losses) if weights is None else weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(losses * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w)}


def classification_loss(logits, batch, axis_name=None, *, label_smoothing: float = 0.0):
    """The classification loss in the form of a step's ``loss_fn``.

    With equal local batch sizes the mean of the devices' gradients (what
    :func:`attn_jax.train.train_step` takes) is the full-batch gradient, so no collective is needed.

    Args:
      logits: ``(b, K)`` float, the model's outputs on this device's share of the batch.
      batch: dict with ``"label"`` ``(b,)`` int and optionally ``"valid"`` ``(b,)`` bool (padding
        excluded).
      axis_name: the device axis; unused.
      label_smoothing: the ``alpha`` of ``optax.smooth_labels`` for the targets.

    Returns:
      The pair ``(loss, sums)``, the mean cross-entropy of this device's valid examples and their
      :func:`attn_jax.train.classification_sums`.

    Raises:
      ValueError: ``logits`` is not ``(b, K)`` or ``batch["label"]`` is not ``(b,)``.

    Examples:
      >>> step_fn = functools.partial(train_step, model=model, tx=tx, loss_fn=classification_loss)
    """
    sums = classification_sums(logits, batch["label"], batch.get("valid"), label_smoothing)
    return sums["loss"] / jnp.maximum(sums["count"], 1.0), sums


def classification_eval_sums(logits, batch, axis_name):
    """An eval step's outputs_fn: classification_sums (no smoothing, padding excluded) summed over
    `axis_name`."""
    return lax.psum(classification_sums(logits, batch["label"], batch.get("valid")), axis_name)


def means_from_sums(sums: dict) -> dict:
    """Host: classification sums (loss, correct, count, ...) -> means: loss, accuracy, and any other key
    divided by count."""
    sums = {k: float(np.asarray(v)) for k, v in sums.items()}
    count = max(sums.pop("count", 0.0), 1.0)
    out = {"loss": sums.pop("loss") / count, "accuracy": sums.pop("correct") / count}
    out.update({k: v / count for k, v in sums.items()})
    return out


class Classification(Task):
    """Image -> class. Train metrics: loss, accuracy; eval: loss, accuracy over the split."""

    name = "classification"
    best_metric = "accuracy"
    headline = ("accuracy", "loss")

    def build_model(self, bn_axis_name: str | None = AXIS):
        m = self.config.model
        backbone = build_backbone(self.config, bn_axis_name)
        return AttentionClassifier(
            backbone,
            self.meta.num_classes,
            attention=m.attention,
            attention_kwargs=attention_kwargs(m),
            dtype=model_dtype(m),
        )

    def loss(self, outputs, batch, axis_name):
        return classification_loss(outputs, batch, label_smoothing=self.config.classification.label_smoothing)

    def train_metrics(self, sums):
        return means_from_sums(sums)

    def eval_outputs(self, outputs, batch, axis_name):
        return classification_eval_sums(outputs, batch, axis_name), {}

    def evaluator(self):
        return _SumsEvaluator()


class _SumsEvaluator:
    def __init__(self):
        self.total = None

    def add(self, sums, per_example):
        sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
        self.total = sums if self.total is None else {k: self.total[k] + sums[k] for k in sums}

    def result(self):
        return means_from_sums(self.total)
