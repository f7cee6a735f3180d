"""Runs the viz tools draw and score: open an `attn-jax train` run, build untrained models, eval batches.

A run is a directory written by attn_jax.train.train_and_evaluate: `config.json` (the experiment config)
and `checkpoints/` (opened read-only through attn_jax.train.checkpoint). Models come from the train
package's one builder (attn_jax.train.build_model). Eval batches come from the data pipeline's
segmentation view so the digit's mask (and its tight box) are known for every image.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from attn_jax.data import dataset_info, make_pipeline
from attn_jax.train import checkpoint as ckpt
from attn_jax.train.config import base_config, upgrade_saved_config
from attn_jax.train.factory import build_model, build_optimizer
from attn_jax.train.state import abstract_train_state
from attn_jax.train.tasks import make_task


def classifier_config(
    family: str, *, widths: Sequence[int] = (16, 32, 64), stride: int = 8, dataset: str = "cluttered_digits"
) -> ml_collections.ConfigDict:
    """A classification config (attn_jax.train.config vocabulary) for a SmallCNN(widths, stride) classifier
    with attention `family`; its model is built by attn_jax.train.build_model."""
    c = base_config("classification", family)
    c.data.dataset = dataset
    c.model.features, c.model.stride = tuple(widths), stride
    return c


def init_variables(model, image_shape: Sequence[int], seed: int = 0) -> dict:
    """Untrained variables for images of (H, W, C) = image_shape."""
    return dict(model.init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32), train=False))


def load_config(spec: str):
    """An experiment config from "path/to/config.py[:arg]" (its get_config(arg)), as `attn-jax train`."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location("_viz_experiment_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def load_train_run(config, workdir: str, step: int | None = None, replica: int = 0):
    """(model, variables, step) of the latest (or `step`) checkpoint an `attn-jax train` run of `config`
    wrote in workdir/checkpoints, opened read-only; FileNotFoundError when there is none. The model has
    no BatchNorm axis (plain apply on one device). A run of config.num_seeds K > 1 replicas gives replica
    `replica`'s variables (seed config.seed + replica); ValueError when it is not in [0, K)."""
    num_seeds = config.get("num_seeds", 1)
    if not 0 <= replica < num_seeds:
        raise ValueError(f"replica must be in [0, {num_seeds}) (the run's num_seeds), got {replica}")
    task = make_task(config)
    model = build_model(config, task.meta, bn_axis_name=None)
    sample = jnp.zeros((1, *task.meta.image_shape), jnp.float32)
    abstract = abstract_train_state(model, build_optimizer(config), sample, task.init_params)
    if num_seeds > 1:  # the stacked replicas (attn_jax.train.seeds)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct((num_seeds, *x.shape), x.dtype), abstract)
    abstract = ckpt.with_shardings(abstract, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    state, step = ckpt.restore_read_only(os.path.join(workdir, "checkpoints"), abstract, step)
    if num_seeds > 1:
        state = jax.tree.map(lambda x: x[replica], state)
    return model, {"params": state.params, "batch_stats": state.batch_stats}, step


def load_run(run_dir: str, replica: int = 0):
    """(model, variables, config) of the `attn-jax train` run in run_dir (its config.json and latest
    checkpoint); FileNotFoundError when absent. A run of K > 1 seeds gives replica `replica`'s variables
    (seed config.seed + replica); ValueError when it is not in [0, K)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no run in {run_dir!r} (config.json missing)")
    with open(path) as f:
        config = ml_collections.ConfigDict(upgrade_saved_config(json.load(f)))
    model, variables, _ = load_train_run(config, run_dir, replica=replica)
    return model, variables, config


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


def run_end_examples(run) -> tuple[dict, dict]:
    """(the first config.png_examples test examples, the host variables of the run's state) for an
    end-of-run picture. run: attn_jax.train.RunEnd. The variables hold the running BatchNorm statistics:
    apply the model with train=False (no collectives, so a plain apply on one host is fine)."""
    config, task = run.config, run.task
    loader = make_pipeline(
        config.data.dataset, "test", batch_size=config.png_examples, train=False, data_dir=config.data.dir,
        shard_index=0, shard_count=1, num_devices=1, **task.pipeline_kwargs(),
    )  # fmt: skip
    host = jax.device_get(run.state)
    variables = {"params": host.params, **({"batch_stats": host.batch_stats} if host.batch_stats else {})}
    return next(iter(loader)), variables
