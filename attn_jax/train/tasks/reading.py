"""Reading: the AttentionReader (backbone, an LSTM that queries additive attention at every step) trained
with teacher forcing to read the digit string of a cluttered_digits reading image, left to right.

Loss (normalised over the GLOBAL batch, so any device count gives the full-batch gradient): the token
cross-entropy summed over the steps up to and including END, over the global number of such steps, plus
``reading.attention_penalty`` x the doubly stochastic regulariser of Show, Attend and Tell (Xu et al.
2015), mean over positions of (1 - sum_t alpha_ti)^2, averaged over the global batch. Evaluation reads the
images without targets (greedy decoding, and beam search with ``reading.beam_width`` > 1): sequence
accuracy, character error rate (edit distance over target length) and the per-step pointing game (step
t's attention maximum on digit t's box).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from attn_jax.losses import doubly_stochastic_penalty, sequence_cross_entropy_sums, steps_up_to_end
from attn_jax.metrics import ReadingStats, step_pointing_game
from attn_jax.models import AttentionReader
from attn_jax.train.builders import attention_kwargs, build_backbone, model_dtype
from attn_jax.train.step import AXIS
from attn_jax.train.tasks.base import Task, axis_size, global_sum


class Reading(Task):
    """Image -> digit string. Train metrics: loss, ce_loss, attention_penalty, token_accuracy; eval:
    sequence_accuracy, character_error_rate, pointing_game (greedy decoding) and, with a beam,
    beam_sequence_accuracy and beam_character_error_rate."""

    name = "reading"
    best_metric = "sequence_accuracy"
    headline = ("sequence_accuracy", "character_error_rate", "pointing_game", "beam_sequence_accuracy")

    @property
    def end_token(self) -> int:
        """END: the last of the dataset's classes (cluttered_digits: the digits 0-9, then END = 10)."""
        return self.meta.num_classes - 1

    def grid_shape(self) -> tuple[int, int]:
        """(h, w) of the feature grid the decoder attends over: the image's (H, W) over the stride."""
        stride = build_backbone(self.config, None).stride
        h, w = self.meta.image_shape[:2]
        return h // stride, w // stride

    def pipeline_kwargs(self) -> dict:
        return {"task": "reading", "max_boxes": self.config.model.max_length - 1}

    def build_model(self, bn_axis_name: str | None = AXIS):
        m = self.config.model
        return AttentionReader(
            build_backbone(self.config, bn_axis_name),
            num_classes=self.meta.num_classes,
            end_token=self.end_token,
            max_length=m.max_length,
            hidden_size=m.hidden_size,
            attention_dim=m.attention_dim,
            embed_size=m.embed_size,
            beam_width=self.config.reading.beam_width,
            # a run saved before the field existed ranked its beams by the summed log-probability
            length_penalty=self.config.reading.get("length_penalty", 0.0),
            dtype=model_dtype(m),
            **attention_kwargs(m),  # e.g. {"implementation": "auto"}: the fused kernel on GPU / TPU
        )

    def train_inputs(self, batch: dict) -> tuple:
        return batch["image"], batch["sequence"]  # teacher forcing: step t sees target t - 1

    def loss(self, outputs, batch, axis_name):
        logits, alpha = outputs
        targets = batch["sequence"].astype(jnp.int32)
        mask = steps_up_to_end(targets, self.end_token)
        ce_sum, steps = sequence_cross_entropy_sums(
            logits, targets, mask, label_smoothing=self.config.reading.label_smoothing
        )
        examples = jnp.asarray(targets.shape[0], jnp.float32)
        # mean over positions, as Show-Attend-Tell's alpha_c term: 1 / n of the summed squares
        penalty_sum = examples * doubly_stochastic_penalty(alpha, mask, weight=1.0 / alpha.shape[-1])
        weight = self.config.reading.attention_penalty
        n = axis_size(axis_name)
        loss = n * ce_sum / jnp.maximum(global_sum(steps, axis_name), 1.0)
        loss = loss + weight * n * penalty_sum / jnp.maximum(global_sum(examples, axis_name), 1.0)
        correct = jnp.sum(jnp.where(mask, jnp.argmax(logits, -1) == targets, False), dtype=jnp.float32)
        sums = {
            "ce": ce_sum,
            "steps": steps,
            "penalty": penalty_sum,
            "examples": examples,
            "correct": correct,
        }
        return loss, sums

    def train_metrics(self, sums):
        s = {k: float(np.asarray(v)) for k, v in sums.items()}
        ce = s["ce"] / max(s["steps"], 1.0)
        penalty = s["penalty"] / max(s["examples"], 1.0)
        return {
            "loss": ce + self.config.reading.attention_penalty * penalty,
            "ce_loss": ce,
            "attention_penalty": penalty,
            "token_accuracy": s["correct"] / max(s["steps"], 1.0),
        }

    def eval_outputs(self, outputs, batch, axis_name):
        greedy = outputs["greedy"]
        s = min(greedy.attention.shape[1], batch["boxes"].shape[1])
        per_example = {
            "tokens": greedy.tokens,
            "targets": batch["sequence"],
            "pointing": step_pointing_game(
                greedy.attention, batch["boxes"], batch["box_valid"], self.grid_shape()
            ),
            "pointing_valid": batch["box_valid"][:, :s],
            "valid": batch["valid"],
        }
        if "beam" in outputs:
            per_example["beam_tokens"] = outputs["beam"].tokens
        return {}, per_example

    def evaluator(self):
        return _ReadingEvaluator(self.end_token)


class _ReadingEvaluator:
    def __init__(self, end_token: int):
        self.end_token, self.greedy, self.beam = end_token, ReadingStats(), ReadingStats()

    def add(self, sums, p):
        self.greedy.update(
            p["tokens"], p["targets"], self.end_token, p["valid"], p["pointing"], p["pointing_valid"]
        )
        if "beam_tokens" in p:
            self.beam.update(p["beam_tokens"], p["targets"], self.end_token, p["valid"])

    def result(self):
        out = self.greedy.compute()
        if self.beam.examples:
            beam = self.beam.compute()
            out.update(
                beam_sequence_accuracy=beam["sequence_accuracy"],
                beam_character_error_rate=beam["character_error_rate"],
            )
        return out
