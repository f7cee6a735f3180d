"""Train and evaluate detection or segmentation on cluttered_digits with the seed's task models.

    python experiments/detseg.py --config experiments/configs/detection.py:spatial --workdir /tmp/det
    python experiments/detseg.py --config experiments/configs/segmentation.py:spatial --workdir /tmp/seg

Single process, one jitted step (CPU-sized); losses from attn_jax.detection / attn_jax.losses, metrics
from attn_jax.metrics over the whole test split. Writes workdir/metrics.json and prints a summary row.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attn_jax.data import make_pipeline
from attn_jax.detection import assign_targets, detection_loss, generate_anchors, postprocess
from attn_jax.losses import segmentation_loss
from attn_jax.metrics import DetectionEvaluator, SegmentationEvaluator, confusion_matrix
from attn_jax.models import AttentionDetector, AttentionSegmenter
from attn_jax.nn import Decoder, SmallCNN


class State(NamedTuple):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def build_model(config):
    """-> (model, anchors (n, 4) or None)."""
    backbone = SmallCNN(features=tuple(config.backbone_features), stride=config.stride)
    if config.task == "segmentation":
        decoder = Decoder(features=tuple(config.decoder_features))
        return AttentionSegmenter(backbone, decoder, config.num_classes, attention=config.attention), None
    grid = config.image_size // config.stride
    anchors = generate_anchors((grid, grid), config.stride, config.anchor_sizes, config.aspect_ratios)
    num_anchors = len(config.anchor_sizes) * len(config.aspect_ratios)
    model = AttentionDetector(backbone, config.num_classes, num_anchors, attention=config.attention)
    return model, jnp.asarray(anchors)


def init_state(model, config, tx, image_shape) -> State:
    variables = model.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, *image_shape)), train=False)
    params = variables["params"]
    if config.task == "detection":  # RetinaNet prior: every anchor starts at probability pi
        bias = -math.log((1 - config.prior_probability) / config.prior_probability)
        head = dict(params["cls_head"])
        head["bias"] = jnp.full_like(head["bias"], bias)
        params = {**params, "cls_head": head}
    return State(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}), tx.init(params))


def make_optimizer(config) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, config.num_steps, config.learning_rate * 0.01
    )
    return optax.adamw(schedule, weight_decay=config.weight_decay)


def task_loss(outputs, batch, config, anchors):
    """Mean loss of one batch -> (loss, aux metrics)."""
    if config.task == "segmentation":
        return segmentation_loss(outputs, batch["mask"], config.ignore_index, config.dice_weight)
    cls_logits, box_deltas = outputs
    b = cls_logits.shape[0]
    targets = assign_targets(
        anchors, batch["boxes"], batch["box_labels"], batch["box_valid"],
        config.positive_threshold, config.negative_threshold,
    )  # fmt: skip
    return detection_loss(
        cls_logits.reshape(b, -1, config.num_classes), box_deltas.reshape(b, -1, 4), anchors, targets,
        box_loss=config.box_loss, box_weight=config.box_weight,
    )  # fmt: skip


def make_train_step(model, tx, config, anchors):
    def loss_fn(params, batch_stats, batch):
        variables = {"params": params, "batch_stats": batch_stats}
        outputs, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
        loss, aux = task_loss(outputs, batch, config, anchors)
        return loss, (updates["batch_stats"], aux)

    def step(state: State, batch):
        grads, (batch_stats, aux) = jax.grad(loss_fn, has_aux=True)(state.params, state.batch_stats, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return State(state.step + 1, params, batch_stats, opt_state), aux

    return jax.jit(step, donate_argnums=0)


def make_eval_step(model, config, anchors):
    def predict(state: State, batch):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        outputs = model.apply(variables, batch["image"], train=False)
        if config.task == "segmentation":
            valid = batch["valid"][:, None, None]
            pred = jnp.argmax(outputs, axis=-1)
            return confusion_matrix(pred, batch["mask"], config.num_classes, config.ignore_index, valid)
        cls_logits, box_deltas = outputs
        b = cls_logits.shape[0]
        return postprocess(
            cls_logits.reshape(b, -1, config.num_classes), box_deltas.reshape(b, -1, 4), anchors,
            config.score_threshold, config.nms_iou_threshold, config.pre_nms_top_k, config.max_detections,
        )  # fmt: skip

    return jax.jit(predict)


def evaluate(state, eval_step, config) -> dict:
    """Metrics over the test split (or its first eval_examples)."""
    loader = make_pipeline(
        config.dataset, "test", batch_size=config.eval_batch_size, task=config.task, train=False
    )
    if config.task == "segmentation":
        evaluator = SegmentationEvaluator(config.num_classes, config.ignore_index)
    else:
        evaluator = DetectionEvaluator(config.num_classes, (config.image_size, config.image_size))
    seen = 0
    for batch in loader:
        out = jax.device_get(eval_step(state, batch))
        if config.task == "segmentation":
            evaluator.add_confusion(out)
        else:
            evaluator.add_batch(*out, batch["boxes"], batch["box_labels"], batch["box_valid"], batch["valid"])
        seen += int(batch["valid"].sum())
        if config.eval_examples and seen >= config.eval_examples:
            break
    result = evaluator.result()
    result["eval_examples"] = seen
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}


def train_and_evaluate(config, workdir: str) -> dict:
    """Train for config.num_steps, evaluate on the test split; writes workdir/metrics.json."""
    os.makedirs(workdir, exist_ok=True)
    model, anchors = build_model(config)
    tx = make_optimizer(config)
    size = config.image_size
    loader = make_pipeline(
        config.dataset, "train", batch_size=config.batch_size, task=config.task, train=True, seed=config.seed
    )
    first = next(iter(loader))
    state = init_state(model, config, tx, first["image"].shape[1:])
    train_step = make_train_step(model, tx, config, anchors)
    history, start, tick = [], time.perf_counter(), time.perf_counter()
    for i, batch in zip(range(config.num_steps), loader):
        state, aux = train_step(state, {k: v for k, v in batch.items() if k != "label"})
        if (i + 1) % config.log_every == 0 or i + 1 == config.num_steps:
            aux = {k: float(v) for k, v in jax.device_get(aux).items()}
            now = time.perf_counter()
            print(f"step {i + 1}: {aux} ({config.log_every / (now - tick):.1f} steps/s)", flush=True)
            history.append({"step": i + 1, **aux})
            tick = now
    train_s = time.perf_counter() - start
    metrics = evaluate(state, make_eval_step(model, config, anchors), config)
    metrics.update(train_seconds=train_s, total_seconds=time.perf_counter() - start, history=history,
                   image_size=size, config=config.to_dict())  # fmt: skip
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, default=str)
    return metrics


def main(argv) -> None:
    del argv
    from absl import flags

    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    m = train_and_evaluate(config, workdir)
    keys = ("AP50_voc", "AP50", "mAP") if config.task == "detection" else ("mIoU", "pixel_accuracy")
    row = " | ".join(f"{k} {m[k]:.4f}" for k in keys)
    print(f"{config.task} {config.attention}: {row} | train {m['train_seconds']:.0f} s, total "
          f"{m['total_seconds']:.0f} s, {config.num_steps} steps")  # fmt: skip


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiments/configs/{detection,segmentation}.py:ATTN")
    flags.DEFINE_string("workdir", None, "output directory (metrics.json)")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
