"""The config vocabulary shared by every task's experiment config (experiments/configs/*.py).

    c = base_config("detection", "spatial,tiny")   # common fields; the config file sets its numbers

Argument strings are "<attention>[,tiny]" with <attention> an attention registry name
(attn_jax.nn.available_attention()); "tiny" selects the 32x32 test datasets and small models.
"""

from __future__ import annotations

import json

import ml_collections


def parse_arg(arg: str | None, default: str = "spatial") -> tuple[str, bool]:
    """ "<attention>[,tiny]" -> (attention, tiny)."""
    parts = [p.strip() for p in (arg or default).split(",") if p.strip()]
    unknown = [p for p in parts[1:] if p != "tiny"]
    if unknown:
        raise ValueError(f"config argument {arg!r}: expected '<attention>[,tiny]', got extra {unknown}")
    attention = parts[0] if parts and parts[0] != "tiny" else default
    return attention, "tiny" in parts


def base_config(task: str, arg: str | None = "spatial") -> ml_collections.ConfigDict:
    """Fields every task's config has, with their defaults; the task's file overrides the numbers.

    Vocabulary: model.{backbone, features, stride, blocks_per_stage, attention, attention_kwargs, dtype,
    matmul_grad};
    optimizer, lr, weight_decay, momentum, warmup_steps, end_lr_factor, clip_norm, skip_nonfinite, augment;
    batch_size (global), eval_batch_size, eval_examples, num_train_steps, log_every_steps, eval_every_steps,
    checkpoint_every_steps, keep_latest, keep_best; cpu_devices, num_devices, parallel, coordinator,
    preemption_check_every_steps, stall_timeout_s; progress, tensorboard, png_examples.
    """
    attention, tiny = parse_arg(arg)
    c = ml_collections.ConfigDict()
    c.task = task
    c.name = f"{task}-{attention}" + ("-tiny" if tiny else "")
    c.dataset = ""
    c.data_dir = ml_collections.config_dict.placeholder(
        str
    )  # None: $ATTN_JAX_DATA_DIR or ~/tensorflow_datasets
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "small_cnn"  # or resnet18 / resnet34 / resnet50 (small stem)
    c.model.features = (8, 16)
    c.model.stride = 4
    c.model.blocks_per_stage = 1
    c.model.attention = attention
    c.model.dtype = "float32"  # or "bfloat16" (compute; parameters stay float32)
    # small_cnn: which convs train as matrix products over 3x3 patches (attn_jax.nn.conv.MatmulGradConv):
    # "none", "strided" (the stride-2 convs) or "all"; same model, gradients equal up to rounding; CPU
    # only: lowered for GPU / TPU the convs are XLA's whatever this says
    c.model.matmul_grad = "none"
    # extra arguments of the attention module, e.g. {"implementation": "auto"} for additive attention's
    # fused kernel on GPU / TPU (attn_jax.nn.AdditiveAttention)
    c.model.attention_kwargs = ml_collections.ConfigDict()

    c.optimizer = "adamw"  # or "sgd"
    c.lr = 1e-3
    c.weight_decay = 1e-4
    c.momentum = 0.9  # sgd only
    c.warmup_steps = 0
    c.end_lr_factor = 0.0  # the cosine schedule ends at lr * end_lr_factor
    c.clip_norm = 0.0  # 0: no global-norm clipping
    c.skip_nonfinite = 0  # > 0: optax.apply_if_finite with that many consecutive skips
    # training augmentations (attn_jax.data.AUGMENTATIONS): pad-and-crop; "affine" adds zoom and rotation
    c.augment = ("crop",)

    c.batch_size = 32  # global, over all devices and processes
    c.eval_batch_size = 32
    c.eval_examples = 0  # 0: the whole test split
    c.num_train_steps = 8
    c.log_every_steps = 4
    c.eval_every_steps = 0  # 0: only at the end
    c.checkpoint_every_steps = 4
    c.keep_latest = 2
    c.keep_best = 1  # by the task's eval metric (accuracy, AP50_voc, mIoU)
    c.async_checkpoints = True

    # CPU only: split the host into this many XLA devices, one data-parallel shard each; 0 = JAX's default
    c.cpu_devices = 0
    c.num_devices = 0  # 0: all devices
    c.parallel = "shard_map"  # or "pmap"
    c.preemption_check_every_steps = 10  # multi-process: how often processes agree on a SIGTERM
    # seconds without a finished training step before the run stops with status 75 (resumable); 0: off
    c.stall_timeout_s = 600.0
    c.coordinator = ""  # host:port for multi-host (or ATTN_JAX_COORDINATOR and friends)
    c.progress = True
    c.tensorboard = True
    c.png_examples = 8  # test images in attention_maps.png (drawn by the CLI's hook)
    return c


# Fields that define the trained model and its data: a checkpoint restored under a config that differs in
# any of them is another model. COMPUTE_FIELDS only choose how the same model is computed (precision,
# attention kernel): the parameters fit either way.
MODEL_FIELDS = ("task", "dataset")  # and every model.* field but COMPUTE_FIELDS
COMPUTE_FIELDS = ("model.dtype", "model.matmul_grad", "model.attention_kwargs.implementation")


def flat_fields(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: a nested config dict as dotted field names."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def model_differences(saved: dict, config) -> list[str]:
    """'field: saved value (run) != given value' for each model-defining field (MODEL_FIELDS, model.*) where
    the run's saved config (the dict of <workdir>/config.json) and `config` differ; [] when they agree."""
    given = flat_fields(json.loads(config.to_json_best_effort()))
    saved = flat_fields(saved)
    defines_model = lambda k: k in MODEL_FIELDS or (k.startswith("model.") and k not in COMPUTE_FIELDS)  # noqa: E731
    keys = sorted(filter(defines_model, set(saved) | set(given)))
    missing = "<absent>"
    return [
        f"{k}: {saved.get(k, missing)!r} (run) != {given.get(k, missing)!r} (given)"
        for k in keys
        if saved.get(k, missing) != given.get(k, missing)
    ]
