"""Segmentation: AttentionSegmenter (encoder, attention, decoder), cross-entropy + soft Dice, mIoU.

Both loss terms are normalised over the GLOBAL batch (all devices), so any device count gives the
full-batch gradient: cross-entropy is summed per device and divided by the global count of labelled
pixels; soft Dice (Milletari et al. 2016), 1 - mean_c (2 I_c + s) / (D_c + s) with I_c = sum P·G and
D_c = sum P + sum G over the batch's pixels, is a function f of global sums (both sums and f come from
attn_jax.losses, which also holds the single-device losses). Each device differentiates
f(I, D) + <df/dI, I_d> + <df/dD, D_d> with I, D and the derivatives held constant: its value is the
global Dice and the devices' gradients add up to the full-batch gradient, under shard_map and pmap alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attn_jax.losses import cross_entropy_sums, dice_from_sums, dice_sums
from attn_jax.metrics import SegmentationEvaluator, confusion_matrix
from attn_jax.models import AttentionSegmenter
from attn_jax.nn import Decoder
from attn_jax.train.builders import attention_kwargs, build_backbone, model_dtype
from attn_jax.train.step import AXIS
from attn_jax.train.tasks.base import Task, axis_size, global_sum


class Segmentation(Task):
    """Image -> per-pixel class (0 = background). Train metrics: loss, ce_loss, dice_loss; eval: mIoU,
    pixel accuracy and per-class IoU from a confusion matrix summed over devices and batches."""

    name = "segmentation"
    best_metric = "mIoU"
    headline = ("mIoU", "pixel_accuracy")

    def build_model(self, bn_axis_name: str | None = AXIS):
        m = self.config.model
        dtype = model_dtype(m)
        backbone = build_backbone(self.config, bn_axis_name)
        decoder = Decoder(features=tuple(m.decoder_features), dtype=dtype, bn_axis_name=bn_axis_name)
        return AttentionSegmenter(
            backbone,
            decoder,
            self.meta.num_classes,
            attention=m.attention,
            attention_kwargs=attention_kwargs(m),
            dtype=dtype,
        )

    def loss(self, outputs, batch, axis_name):
        ignore = self.config.segmentation.ignore_index
        labels = batch["mask"]
        valid = labels != ignore
        ce_sum, pixels = cross_entropy_sums(outputs, labels, valid)
        pixels = pixels.astype(jnp.float32)
        n = axis_size(axis_name)
        loss = n * ce_sum / jnp.maximum(global_sum(pixels, axis_name), 1.0)
        inter, denom = dice_sums(outputs, labels, valid)
        weight = self.config.segmentation.dice_weight
        if weight > 0:
            g_inter, g_denom = global_sum(inter, axis_name), global_sum(denom, axis_name)
            d_inter, d_denom = jax.grad(dice_from_sums, argnums=(0, 1))(g_inter, g_denom)
            local = jnp.sum(d_inter * (inter - lax.stop_gradient(inter)))
            local += jnp.sum(d_denom * (denom - lax.stop_gradient(denom)))
            loss = loss + weight * n * (dice_from_sums(g_inter, g_denom) + local)
        count = jnp.asarray(labels.shape[0], jnp.float32)
        sums = {"ce_loss": ce_sum, "pixels": pixels, "dice_inter": inter, "dice_denom": denom}
        return loss, {**jax.tree.map(lax.stop_gradient, sums), "count": count}

    def train_metrics(self, sums):
        ce = float(np.asarray(sums["ce_loss"])) / max(float(np.asarray(sums["pixels"])), 1.0)
        inter, denom = np.asarray(sums["dice_inter"], np.float64), np.asarray(sums["dice_denom"], np.float64)
        dice = float(dice_from_sums(inter, denom))  # in float64, as the sums
        return {"loss": ce + self.config.segmentation.dice_weight * dice, "ce_loss": ce, "dice_loss": dice}

    def eval_outputs(self, outputs, batch, axis_name):
        pred = jnp.argmax(outputs, axis=-1)
        cm = confusion_matrix(
            pred, batch["mask"], self.meta.num_classes, self.config.segmentation.ignore_index,
            batch["valid"][:, None, None],
        )  # fmt: skip
        return {"confusion": lax.psum(cm, axis_name)}, {}

    def evaluator(self):
        return _ConfusionEvaluator(
            SegmentationEvaluator(self.meta.num_classes, self.config.segmentation.ignore_index)
        )


class _ConfusionEvaluator:
    def __init__(self, evaluator):
        self.evaluator = evaluator

    def add(self, sums, per_example):
        self.evaluator.add_confusion(sums["confusion"])

    def result(self):
        return self.evaluator.result()
