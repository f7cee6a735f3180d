"""Tiny Flax models for the training tests (BatchNorm, dropout, a sown attention map)."""

from __future__ import annotations

import os

import flax.linen as nn
import jax.numpy as jnp


class TinyNet(nn.Module):
    """conv-BN-relu -> sigmoid spatial gate (sown as "attention_map") -> mean pool -> dense."""

    num_classes: int = 10
    width: int = 8
    bn_axis_name: str | None = None
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), (2, 2), use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.bn_axis_name)(x)
        x = nn.relu(x)
        gate = nn.sigmoid(nn.Conv(1, (1, 1))(x))
        self.sow("intermediates", "attention_map", gate[..., 0])
        x = jnp.mean(x * gate, axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


# --- tiny configs and synthetic batches for every task of the training loop (no dataset needed) ---

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("classification", "detection", "segmentation", "reading")
NUM_CLASSES = {"classification": 10, "detection": 10, "segmentation": 11, "reading": 11}
HW = 16


def load_experiment_config(task: str, arg: str = "spatial,tiny"):
    """experiments/configs/<task>.py's get_config(arg), loaded by path as `attn-jax train` does (the reader's
    attention is always additive: its config takes "[additive][,tiny]")."""
    import importlib.util

    if task == "reading":
        arg = arg.replace("spatial", "additive")

    path = os.path.join(ROOT, "experiments", "configs", f"{task}.py")
    spec = importlib.util.spec_from_file_location(f"_{task}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def synthetic_meta(task: str, hw: int = HW):
    """DatasetMeta of a (hw, hw, 1) dataset for `task` (nothing is read)."""
    from attn_jax.data.pipeline import DatasetMeta

    return DatasetMeta("synthetic", task, NUM_CLASSES[task], (hw, hw, 1), None, (0.0,), (1.0,))


def small_config(task: str, optimizer: str = "adamw", **overrides):
    """The task's tiny experiment config with a 4-8 channel SmallCNN and the given optimizer."""
    c = load_experiment_config(task)
    c.model.features = (4, 8)
    c.optim.name, c.optim.lr = optimizer, (0.1 if optimizer == "sgd" else 1e-2)
    c.schedule.warmup_steps, c.num_train_steps, c.optim.clip_norm, c.optim.momentum = 1, 10, 10.0, 0.9
    if task == "detection":
        c.detection.pre_nms_top_k, c.detection.max_detections = 20, 5
    if task == "reading":
        c.reading.beam_width = 1  # greedy only: the loop's tests (tiny_config) keep the beam
    c.update(overrides)
    return c


def synthetic_batches(task: str, n: int, size: int = 16, seed: int = 0, hw: int = HW, max_boxes: int = 4):
    """n NumPy batches with the pipeline's keys for `task` (images, labels, boxes / masks)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        batch = {
            "image": rng.normal(size=(size, hw, hw, 1)).astype(np.float32),
            "label": rng.integers(0, 10, size=(size,)).astype(np.int32),
        }
        if task == "detection":
            corner = rng.uniform(0.0, 0.6, size=(size, max_boxes, 2))
            extent = rng.uniform(0.25, 0.4, size=(size, max_boxes, 2))
            count = rng.integers(1, max_boxes + 1, size=(size, 1))
            valid = np.arange(max_boxes)[None] < count
            boxes = np.concatenate([corner, corner + extent], -1) * valid[..., None]
            batch.update(
                boxes=boxes.astype(np.float32),
                box_labels=(rng.integers(0, 10, size=(size, max_boxes)) * valid).astype(np.int32),
                box_valid=valid,
            )
        elif task == "segmentation":
            batch["mask"] = rng.integers(0, NUM_CLASSES[task], size=(size, hw, hw)).astype(np.int32)
        if task == "reading":  # 1 to max_boxes digits left to right, their string, END, then PAD
            count = rng.integers(1, max_boxes + 1, size=(size,))
            valid = np.arange(max_boxes)[None] < count[:, None]
            left = (np.arange(max_boxes) / max_boxes)[None, :, None]
            boxes = np.concatenate([np.full_like(left, 0.2), left, np.full_like(left, 0.8), left + 0.2], -1)
            digits = rng.integers(0, 10, size=(size, max_boxes))
            sequence = np.full((size, max_boxes + 1), 11)
            sequence[:, :max_boxes] = np.where(valid, digits, 11)
            sequence[np.arange(size), count] = 10
            batch.update(
                boxes=(np.broadcast_to(boxes, (size, max_boxes, 4)) * valid[..., None]).astype(np.float32),
                box_labels=(digits * valid).astype(np.int32),
                box_valid=valid,
                sequence=sequence.astype(np.int32),
            )
        out.append(batch)
    return out
