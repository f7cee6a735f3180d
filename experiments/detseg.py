"""Train and evaluate detection or segmentation on cluttered_digits with the seed's task models.

    python experiments/detseg.py --config experiments/configs/detection.py:spatial --workdir /tmp/det
    python experiments/detseg.py --config experiments/configs/segmentation.py:spatial --workdir /tmp/seg

Single process, one jitted step (CPU-sized); losses from attn_jax.detection / attn_jax.losses, metrics
from attn_jax.metrics over the whole test split. Writes workdir/metrics.json and prints a summary row.
Checkpoints in workdir/checkpoints every config.checkpoint_every steps; re-running the same command
resumes from the latest finalised one; SIGTERM saves and exits cleanly.
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

from attn_jax.data import dataset_info, make_pipeline
from attn_jax.detection import assign_targets, detection_loss, generate_anchors, postprocess
from attn_jax.losses import segmentation_loss
from attn_jax.metrics import DetectionEvaluator, SegmentationEvaluator, confusion_matrix
from attn_jax.models import AttentionDetector, AttentionSegmenter
from attn_jax.nn import Decoder, SmallCNN
from attn_jax.train import checkpoint as ckpt
from attn_jax.train.preemption import SigtermFlag

KEEP_CHECKPOINTS = 2  # latest finalised steps kept in <workdir>/checkpoints


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


def _restore_or_init(model, config, tx, manager, iterator) -> tuple[State, int]:
    """The latest finalised checkpoint (moving `iterator` to its position), else a fresh state."""
    image_shape = dataset_info(config.dataset, task=config.task).image_shape
    abstract = jax.eval_shape(lambda: init_state(model, config, tx, image_shape))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state, step = ckpt.restore_latest(manager, ckpt.with_shardings(abstract, sharding), iterator)
    if state is None:
        return init_state(model, config, tx, image_shape), 0
    print(f"resumed from checkpoint step {step} in {manager.directory}", flush=True)
    return State(*state), int(step)


def _history(path: str, start: int) -> list:
    """Logged train metrics of steps <= `start` in workdir/history.jsonl; the file is cut there, so the
    steps a resumed run trains again after a crash are not listed twice."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [r for r in map(json.loads, f) if r["step"] <= start]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def _train(config, state, start, iterator, train_step, manager, history_path):
    """Steps start+1..num_steps with checkpoints; SIGTERM saves and stops. -> (state, stop reason)."""
    total, tick = config.num_steps, time.perf_counter()
    with SigtermFlag() as sigterm, open(history_path, "a") as history:
        for step in range(start + 1, total + 1):
            batch = next(iterator)
            state, aux = train_step(state, {k: v for k, v in batch.items() if k != "label"})
            if step % config.log_every == 0 or step == total:
                aux = {k: float(v) for k, v in jax.device_get(aux).items()}
                now = time.perf_counter()
                print(f"step {step}: {aux} ({config.log_every / (now - tick):.1f} steps/s)", flush=True)
                history.write(json.dumps({"step": step, **aux}) + "\n")
                history.flush()
                tick = now
            if step % config.checkpoint_every == 0 or step == total or sigterm.requested:
                ckpt.save(manager, step, state, iterator)
            if sigterm.requested:
                print(f"SIGTERM: saved step {step} in {manager.directory}; stopping", flush=True)
                return state, "sigterm"
    return state, "done"


def train_and_evaluate(config, workdir: str) -> dict:
    """Train for config.num_steps, evaluate on the test split; writes workdir/metrics.json.

    Checkpoints go to <workdir>/checkpoints every config.checkpoint_every steps and at the end (latest 2
    kept); a re-run with the same workdir resumes from the latest finalised one, train state and data
    position, so it ends where an uninterrupted run would. SIGTERM saves and returns
    {"stop_reason": "sigterm", "step": ...} without evaluating."""
    os.makedirs(workdir, exist_ok=True)
    model, anchors = build_model(config)
    tx = make_optimizer(config)
    loader = make_pipeline(
        config.dataset, "train", batch_size=config.batch_size, task=config.task, train=True, seed=config.seed
    )
    iterator = iter(loader)
    manager = ckpt.make_manager(
        os.path.join(workdir, "checkpoints"), keep_latest=KEEP_CHECKPOINTS, keep_best=0
    )
    start_time = time.perf_counter()
    try:
        state, start = _restore_or_init(model, config, tx, manager, iterator)
        history_path = os.path.join(workdir, "history.jsonl")
        _history(history_path, start)
        train_step = make_train_step(model, tx, config, anchors)
        state, reason = _train(config, state, start, iterator, train_step, manager, history_path)
        manager.wait_until_finished()
    finally:
        manager.close()
    train_s = time.perf_counter() - start_time
    if reason == "sigterm":
        return {"stop_reason": reason, "step": int(jax.device_get(state.step)), "resumed_from": start}
    history = _history(history_path, config.num_steps)
    metrics = evaluate(state, make_eval_step(model, config, anchors), config)
    metrics.update(train_seconds=train_s, total_seconds=time.perf_counter() - start_time, history=history,
                   image_size=config.image_size, resumed_from=start, stop_reason=reason,
                   config=config.to_dict())  # fmt: skip
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, default=str)
    return metrics


def main(argv) -> None:
    del argv
    from absl import flags, logging

    if not (flags.FLAGS["verbosity"].present or flags.FLAGS["v"].present):
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO under absl
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    m = train_and_evaluate(config, workdir)
    if m["stop_reason"] == "sigterm":
        print(f"{config.task} {config.attention}: stopped by SIGTERM at step {m['step']}; re-run to resume")
        return
    keys = ("AP50_voc", "AP50", "mAP") if config.task == "detection" else ("mIoU", "pixel_accuracy")
    row = " | ".join(f"{k} {m[k]:.4f}" for k in keys)
    print(f"{config.task} {config.attention}: {row} | train {m['train_seconds']:.0f} s, total "
          f"{m['total_seconds']:.0f} s, {config.num_steps} steps")  # fmt: skip


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiments/configs/{detection,segmentation}.py:ATTN")
    flags.DEFINE_string("workdir", None, "output directory (metrics.json, checkpoints/)")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
