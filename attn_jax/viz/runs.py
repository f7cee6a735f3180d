"""Classifier runs the viz tools draw and score: build by attention family, save / load, eval batches.

A run directory holds `config.json` (family, backbone widths and stride, classes, image shape) and an
orbax checkpoint of the model variables in `checkpoint/`. Eval batches come from the data pipeline's
segmentation view so the digit's mask (and its tight box) are known for every image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from attn_jax.data import dataset_info, make_pipeline
from attn_jax.models import AttentionClassifier
from attn_jax.nn import SmallCNN


def classifier(family: str, *, widths: Sequence[int] = (16, 32, 64), stride: int = 8, num_classes: int = 10):
    """AttentionClassifier(SmallCNN(widths, stride), num_classes, attention=family)."""
    return AttentionClassifier(SmallCNN(features=tuple(widths), stride=stride), num_classes, attention=family)


def init_variables(model, image_shape: Sequence[int], seed: int = 0) -> dict:
    """Untrained variables for images of (H, W, C) = image_shape."""
    return dict(model.init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32), train=False))


def save_run(run_dir: str, variables: Mapping, config: Mapping) -> str:
    """Writes config.json and an orbax checkpoint of `variables` under run_dir (replacing one there)."""
    run_dir = os.path.abspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(dict(config), f, indent=1)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(run_dir, "checkpoint"), dict(variables), force=True)
    return run_dir


def load_run(run_dir: str):
    """(model, variables, config) of a run saved with `save_run`; FileNotFoundError when absent."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no run in {run_dir!r} (config.json missing)")
    with open(path) as f:
        config = json.load(f)
    model = classifier(
        config["family"], widths=config["widths"], stride=config["stride"], num_classes=config["num_classes"]
    )
    target = jax.eval_shape(lambda: init_variables(model, config["image_shape"]))
    with ocp.StandardCheckpointer() as ckpt:
        variables = ckpt.restore(os.path.join(os.path.abspath(run_dir), "checkpoint"), target)
    return model, dict(variables), config


def digit_regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Digit mask (B, H, W) bool and the tight box (B, 1, 4) normalised around it, from a class mask."""
    digit = np.asarray(mask) > 0
    b, h, w = digit.shape
    boxes = np.zeros((b, 1, 4), np.float32)
    for i in range(b):
        rows, cols = np.nonzero(digit[i].any(1))[0], np.nonzero(digit[i].any(0))[0]
        if rows.size:
            boxes[i, 0] = (rows[0] / h, cols[0] / w, (rows[-1] + 1) / h, (cols[-1] + 1) / w)
    return digit, boxes


def eval_batches(
    dataset: str = "cluttered_digits",
    split: str = "test",
    *,
    batch_size: int = 256,
    limit: int | None = None,
    data_dir: str | None = None,
) -> Iterator[dict]:
    """Fixed-order eval batches: image, label, valid, digit (B, H, W) bool, box (B, 1, 4); at most
    `limit` examples (the rest of the last batch marked invalid)."""
    loader = make_pipeline(
        dataset, split, batch_size=batch_size, task="segmentation", data_dir=data_dir, num_devices=1,
        shard_index=0, shard_count=1,
    )  # fmt: skip
    seen = 0
    for batch in loader:
        digit, boxes = digit_regions(batch["mask"])
        valid = np.asarray(batch["valid"], bool).copy()
        if limit is not None:
            valid &= np.arange(seen, seen + len(valid)) < limit
        yield {"image": batch["image"], "label": batch["label"], "valid": valid, "digit": digit, "box": boxes}
        seen += len(valid)
        if limit is not None and seen >= limit:
            return


def image_shape(dataset: str, data_dir: str | None = None) -> tuple[int, int, int]:
    """(H, W, C) of the dataset's images."""
    return tuple(dataset_info(dataset, task="segmentation", data_dir=data_dir).image_shape)
