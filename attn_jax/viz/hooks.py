"""End-of-run hooks for attn_jax.train.train_and_evaluate: pictures of the trained model.

train_and_evaluate(config, workdir, callbacks=[attention_png])   # -> summary["attention_png"]
"""

from __future__ import annotations

import os

import jax
import numpy as np

from attn_jax.viz.capture import capture_attention
from attn_jax.viz.draw import BoxSet, attention_grid
from attn_jax.viz.reading import reading_png
from attn_jax.viz.runs import run_end_examples

DRAW_SCORE_THRESHOLD = 0.5  # predicted boxes drawn on a detector's attention_maps.png score at least this


def detection_box_sets(task, batch: dict, outputs, threshold: float = DRAW_SCORE_THRESHOLD) -> list[BoxSet]:
    """The true boxes (lime) and the predicted boxes scoring >= threshold (magenta, with their class
    digits) of a detection batch, for `attention_grid`.

    The predictions are the task's own post-processed detections (`task.eval_outputs`: sigmoid scores,
    per-class NMS, its config's score threshold), then kept where their score reaches ``threshold``.

    Args:
      task: the run's detection task (attn_jax.train.tasks).
      batch: a detection batch: "boxes" (N, k, 4), "box_labels", "box_valid", "valid".
      outputs: the detector's (cls_logits, box_deltas) on batch["image"].
      threshold: the lowest score drawn.

    Returns:
      [true boxes, predicted boxes].
    """
    _, dets = task.eval_outputs(outputs, batch, None)
    dets = jax.device_get(dets)
    keep = np.asarray(dets["valid"], bool) & (np.asarray(dets["scores"]) >= threshold)
    return [
        BoxSet("true boxes", np.asarray(batch["boxes"]), "lime", valid=np.asarray(batch["box_valid"], bool)),
        BoxSet(
            f"predicted (score >= {threshold:g}), class",
            np.asarray(dets["boxes"]),
            "magenta",
            labels=np.asarray(dets["classes"]),
            valid=keep,
        ),
    ]


def attention_png(run) -> dict:
    """<workdir>/attention_maps.png: config.png_examples test images with every sown "attention_map"
    overlaid (process 0; nothing when png_examples is 0); a detector's true and predicted boxes are drawn
    on every panel (`detection_box_sets`); a reader's map of every decoding step with the digit read
    (`attn_jax.viz.reading.reading_png`). run: attn_jax.train.RunEnd."""
    config, task = run.config, run.task
    if task.name == "reading":
        return reading_png(run)
    n = config.png_examples
    if not n or jax.process_index() != 0:
        return {"attention_png": None}
    batch, variables = run_end_examples(run)
    maps, outputs = capture_attention(run.model, variables, batch["image"], with_output=True, train=False)
    columns = {path: amap.image for path, amap in maps.items()} or {"no attention map sown": None}
    title = f"{task.name}, {config.model.attention}"
    if task.name == "classification":
        pairs = [f"{y}/{p}" for y, p in zip(batch["label"], np.argmax(outputs, -1))]
        pairs = "\n".join(" ".join(pairs[i : i + 4]) for i in range(0, len(pairs), 4))  # 2-column grid
        title += f", label/prediction:\n{pairs}"
    box_sets = detection_box_sets(task, batch, outputs) if task.name == "detection" else ()
    path = os.path.join(run.workdir, "attention_maps.png")
    return {"attention_png": attention_grid(path, batch["image"], columns, title=title, box_sets=box_sets)}
