"""The config vocabulary shared by every task's experiment config (experiments/configs/*.py).

    c = base_config("detection", "spatial,tiny")   # every field and its default; the file sets numbers
    c.optim.lr = 2e-3                              # groups: model, data, optim, schedule, cpu, <task>

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
    """Every field of a task's experiment config, with its default: the one place defaults live.

    The config is locked: a task's file (experiments/configs/<task>.py) sets values of these fields and
    cannot add others, so a misspelt field fails at once. Groups:

    - top level: ``task``, ``name``, ``seed``, ``num_seeds``, the loop's ``num_train_steps``,
      ``log_every_steps``, ``eval_every_steps``, ``checkpoint_every_steps``, ``keep_latest``, ``keep_best``,
      ``async_checkpoints``, the devices' ``num_devices``, ``parallel``, ``coordinator``,
      ``preemption_check_every_steps``, ``stall_timeout_s``, and the display's ``progress``,
      ``tensorboard``, ``png_examples``;
    - ``model.*``: the trained model (backbone, widths, attention family and its arguments, dtype);
    - ``data.*``: dataset, data directory, augmentations, batch sizes, eval examples;
    - ``optim.*``: optimizer name, learning rate, weight decay, momentum, clipping, non-finite skips;
    - ``schedule.*``: warmup and the cosine schedule's end;
    - ``cpu.*``: CPU-only tuning (XLA CPU device count, matrix-product convolutions);
    - ``<task>.*``: the task's own fields (``classification``, ``detection``, ``segmentation`` or
      ``reading``).

    Args:
      task: ``"classification"``, ``"detection"``, ``"segmentation"`` or ``"reading"``.
      arg: ``"<attention>[,tiny]"`` (:func:`parse_arg`).

    Returns:
      A locked ``ml_collections.ConfigDict`` (``model.attention_kwargs`` stays open for the attention
      module's extra arguments).

    Raises:
      ValueError: an unknown task or a malformed ``arg``.

    Examples:
      >>> c = base_config("segmentation", "cbam,tiny")
      >>> c.model.attention, c.optim.lr, c.segmentation.dice_weight
      ('cbam', 0.001, 0.5)
    """
    if task not in TASK_FIELDS:
        raise ValueError(f"task must be one of {sorted(TASK_FIELDS)}, got {task!r}")
    attention, tiny = parse_arg(arg)
    c = ml_collections.ConfigDict()
    c.task = task
    c.name = f"{task}-{attention}" + ("-tiny" if tiny else "")
    c.seed = 0
    # train this many independent replicas in one program, replica i with seed + i (attn_jax.train.seeds);
    # the summary then gives each test metric's per-seed values, mean and 95% interval
    c.num_seeds = 1
    # how the K replicas are computed in that program: "vmap" (one batched step; grouped convolutions),
    # "unroll" (K copies of the single-seed step, K times the compilation) or "auto" (unroll on one CPU
    # device, where it was measured faster, else vmap: attn_jax.train.seeds.resolve_seeds_mode); same results
    c.seeds_mode = "auto"

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "small_cnn"  # or resnet18 / resnet34 / resnet50 (small stem)
    c.model.features = (8, 16)
    c.model.stride = 4
    c.model.blocks_per_stage = 1
    c.model.attention = attention
    c.model.dtype = "float32"  # or "bfloat16" (compute; parameters stay float32)
    # extra arguments of the attention module, e.g. {"implementation": "auto"} for additive attention's
    # fused kernel on GPU / TPU (attn_jax.nn.AdditiveAttention)
    c.model.attention_kwargs = ml_collections.ConfigDict()
    c.model.update(TASK_MODEL_FIELDS.get(task, {}))

    c.data = ml_collections.ConfigDict()
    c.data.dataset = ""
    c.data.dir = ml_collections.config_dict.placeholder(
        str
    )  # None: $ATTN_JAX_DATA_DIR or ~/tensorflow_datasets
    # training augmentations (attn_jax.data.AUGMENTATIONS): pad-and-crop; "affine" adds zoom and rotation
    c.data.augment = ("crop",)
    c.data.batch_size = 32  # global, over all devices and processes
    c.data.eval_batch_size = 32
    c.data.eval_examples = 0  # 0: the whole test split

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # or "sgd"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 1e-4
    c.optim.momentum = 0.9  # sgd only
    c.optim.clip_norm = 0.0  # 0: no global-norm clipping
    c.optim.skip_nonfinite = 0  # > 0: optax.apply_if_finite with that many consecutive skips

    c.schedule = ml_collections.ConfigDict()
    c.schedule.warmup_steps = 0  # linear warmup, then cosine decay over num_train_steps
    c.schedule.end_lr_factor = 0.0  # the cosine schedule ends at optim.lr * end_lr_factor

    c.cpu = ml_collections.ConfigDict()
    # split the host into this many XLA CPU devices, one data-parallel shard each; 0 = JAX's default (1)
    c.cpu.devices = 0
    # small_cnn: which convs train as matrix products over 3x3 patches (attn_jax.nn.conv.MatmulGradConv):
    # "none", "strided" (the stride-2 convs) or "all"; same model, gradients equal up to rounding; lowered
    # for GPU / TPU the convs are XLA's whatever this says
    c.cpu.matmul_grad = "none"

    c[task] = ml_collections.ConfigDict(TASK_FIELDS[task])

    c.num_train_steps = 8
    c.log_every_steps = 4
    c.eval_every_steps = 0  # 0: only at the end
    c.checkpoint_every_steps = 4
    c.keep_latest = 2
    c.keep_best = 1  # by the task's eval metric (accuracy, AP50_voc, mIoU)
    c.async_checkpoints = True

    c.num_devices = 0  # 0: all devices
    c.parallel = "shard_map"  # or "pmap"
    c.preemption_check_every_steps = 10  # multi-process: how often processes agree on a SIGTERM
    # seconds without a finished training step before the run stops with status 75 (resumable); 0: off
    c.stall_timeout_s = 600.0
    c.coordinator = ""  # host:port for multi-host (or ATTN_JAX_COORDINATOR and friends)
    c.progress = True
    c.tensorboard = True
    c.png_examples = 8  # test images in attention_maps.png (drawn by the CLI's hook)
    c.lock()
    c.model.attention_kwargs.unlock()
    return c


# Each task's own fields and their defaults (the group config.<task>).
TASK_FIELDS = {
    "classification": {
        "label_smoothing": 0.0,
    },
    "detection": {
        "max_boxes": 8,  # ground-truth boxes per image in a batch (padded)
        "positive_threshold": 0.5,  # anchor IoU for a positive; below negative_threshold a negative
        "negative_threshold": 0.4,
        "box_loss": "smooth_l1",  # or "giou"
        "box_weight": 1.0,
        "score_threshold": 0.05,  # postprocess: sigmoid score, per-class NMS at nms_iou_threshold
        "nms_iou_threshold": 0.5,
        "pre_nms_top_k": 300,
        "max_detections": 100,
    },
    "segmentation": {
        "ignore_index": 255,  # mask value that counts for nothing (loss and metrics)
        "dice_weight": 0.5,  # loss = pixel cross-entropy + dice_weight x soft Dice
    },
    "reading": {
        # lambda of the doubly stochastic regulariser, mean over positions of (1 - sum_t alpha_ti)^2 (Xu et
        # al. 2015 use 1); off by default: with T = 5 steps over n = 128 positions the term sits near its
        # floor (1 - T / n)^2 and its gradient only spreads the attention
        "attention_penalty": 0.0,
        # alpha of optax.smooth_labels for each step's target token (0: plain cross-entropy)
        "label_smoothing": 0.0,
        "beam_width": 3,  # evaluation reads greedily and with a beam this wide (1: greedy only)
        # alpha of the beam's length normalisation (GNMT): beams ranked by summed log-probability over
        # ((5 + length) / 6) ** alpha; 0 ranks by the sum, which favours strings cut short
        "length_penalty": 1.0,
    },
}
# Each task's own model fields (config.model.*) and their defaults.
TASK_MODEL_FIELDS = {
    "detection": {
        "anchor_sizes": (12.0, 16.0),  # pixels
        "aspect_ratios": (1.33, 2.0),  # height / width
        "prior_probability": 0.01,  # RetinaNet: class-head bias so the focal loss starts small
    },
    "segmentation": {
        "decoder_features": (32, 16),  # log2(stride) 2x upsamplings
    },
    "reading": {
        "max_length": 5,  # decoding steps: the longest string (4 digits) and END
        "hidden_size": 256,  # the LSTM's width
        "attention_dim": 128,  # additive attention's projection width
        "embed_size": 64,  # token embedding
    },
}

# Where each field of the flat configs of attn_jax before config groups now lives: a run's saved
# config.json is read through upgrade_saved_config, so older runs resume and compare field by field.
RENAMED_FIELDS = {
    "dataset": "data.dataset",
    "data_dir": "data.dir",
    "augment": "data.augment",
    "batch_size": "data.batch_size",
    "eval_batch_size": "data.eval_batch_size",
    "eval_examples": "data.eval_examples",
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "momentum": "optim.momentum",
    "clip_norm": "optim.clip_norm",
    "skip_nonfinite": "optim.skip_nonfinite",
    "warmup_steps": "schedule.warmup_steps",
    "end_lr_factor": "schedule.end_lr_factor",
    "cpu_devices": "cpu.devices",
    "model.matmul_grad": "cpu.matmul_grad",
    **{field: f"{task}.{field}" for task, fields in TASK_FIELDS.items() for field in fields},
}


def upgrade_saved_config(saved: dict) -> dict:
    """A run's saved config (the dict of <workdir>/config.json) with the flat field names of attn_jax before
    config groups moved to their groups (RENAMED_FIELDS); a grouped config comes back unchanged.

    Args:
      saved: the parsed config.json.

    Returns:
      A new nested dict.

    Examples:
      >>> upgrade_saved_config({"task": "segmentation", "lr": 0.1, "dice_weight": 0.5})
      {'task': 'segmentation', 'optim': {'lr': 0.1}, 'segmentation': {'dice_weight': 0.5}}
    """
    out: dict = {}
    for key, value in [*flat_fields(saved).items(), *((path, {}) for path in _empty_groups(saved))]:
        node = out
        *parents, leaf = RENAMED_FIELDS.get(key, key).split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node.setdefault(leaf, value)
    return out


def _empty_groups(tree: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the empty dicts in a nested dict (e.g. model.attention_kwargs), which flat_fields
    leaves out."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _empty_groups(value, f"{prefix}{key}.") if value else [f"{prefix}{key}"]
    return out


# Fields that define the trained model and its data: a checkpoint restored under a config that differs in
# any of them is another model. COMPUTE_FIELDS only choose how the same model is computed (precision,
# attention kernel): the parameters fit either way.
MODEL_FIELDS = ("task", "data.dataset")  # and every model.* field but COMPUTE_FIELDS
COMPUTE_FIELDS = ("model.dtype", "model.attention_kwargs.implementation")


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
    saved = flat_fields(upgrade_saved_config(saved))
    defines_model = lambda k: k in MODEL_FIELDS or (k.startswith("model.") and k not in COMPUTE_FIELDS)  # noqa: E731
    keys = sorted(filter(defines_model, set(saved) | set(given)))
    missing = "<absent>"
    return [
        f"{k}: {saved.get(k, missing)!r} (run) != {given.get(k, missing)!r} (given)"
        for k in keys
        if saved.get(k, missing) != given.get(k, missing)
    ]
