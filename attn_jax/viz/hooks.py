"""End-of-run hooks for attn_jax.train.train_and_evaluate: pictures of the trained model.

train_and_evaluate(config, workdir, callbacks=[attention_png])   # -> summary["attention_png"]
"""

from __future__ import annotations

import os

import jax
import numpy as np

from attn_jax.data import make_pipeline
from attn_jax.viz.capture import capture_attention
from attn_jax.viz.draw import attention_grid


def attention_png(run) -> dict:
    """<workdir>/attention_maps.png: config.png_examples test images with every sown "attention_map"
    overlaid (process 0; nothing when png_examples is 0). run: attn_jax.train.RunEnd."""
    config, task = run.config, run.task
    n = config.png_examples
    if not n or jax.process_index() != 0:
        return {"attention_png": None}
    loader = make_pipeline(
        config.data.dataset, "test", batch_size=n, train=False, data_dir=config.data.dir, shard_index=0,
        shard_count=1, num_devices=1, **task.pipeline_kwargs(),
    )  # fmt: skip
    batch = next(iter(loader))
    host = jax.device_get(run.state)
    variables = {"params": host.params, **({"batch_stats": host.batch_stats} if host.batch_stats else {})}
    # running BatchNorm statistics (train=False): no collectives, so a plain apply on one host is fine
    maps, outputs = capture_attention(run.model, variables, batch["image"], with_output=True, train=False)
    columns = {path: amap.image for path, amap in maps.items()} or {"no attention map sown": None}
    title = f"{task.name}, {config.model.attention}"
    if task.name == "classification":
        pairs = [f"{y}/{p}" for y, p in zip(batch["label"], np.argmax(outputs, -1))]
        pairs = "\n".join(" ".join(pairs[i : i + 4]) for i in range(0, len(pairs), 4))  # 2-column grid
        title += f", label/prediction:\n{pairs}"
    path = os.path.join(run.workdir, "attention_maps.png")
    return {"attention_png": attention_grid(path, batch["image"], columns, title=title)}
