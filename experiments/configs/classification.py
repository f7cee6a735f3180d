"""Classification on cluttered_digits (the seed's section 5.1 model): backbone -> attention -> pool -> linear.

    attn-jax train --config experiments/configs/classification.py                 # spatial attention
    attn-jax train --config experiments/configs/classification.py:none            # no attention
    attn-jax train --config experiments/configs/classification.py:cbam,tiny --config.lr=1e-2

Argument: "<attention>[,tiny]" with <attention> a registry name (attn_jax.nn.available_attention());
"tiny" is the 32x32 tiny dataset and a small model, for tests (seconds).
"""

import ml_collections


def get_config(arg: str = "spatial") -> ml_collections.ConfigDict:
    parts = [p.strip() for p in (arg or "spatial").split(",") if p.strip()]
    attention = parts[0] if parts and parts[0] != "tiny" else "spatial"
    tiny = "tiny" in parts
    c = ml_collections.ConfigDict()
    c.name = f"classification-{attention}" + ("-tiny" if tiny else "")
    c.dataset = "cluttered_digits/tiny" if tiny else "cluttered_digits"
    c.data_dir = ml_collections.config_dict.placeholder(
        str
    )  # None: $ATTN_JAX_DATA_DIR or ~/tensorflow_datasets
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "small_cnn"
    c.model.features = (8, 16) if tiny else (24, 48, 96, 128)  # receptive field 31 px at stride 8
    c.model.stride = 4 if tiny else 8
    c.model.blocks_per_stage = 1
    c.model.attention = attention
    c.model.dtype = "float32"  # or "bfloat16" (compute; parameters stay float32)

    c.optimizer = "adamw"
    c.lr = 3e-3 if tiny else 5e-3
    c.weight_decay = 1e-4
    c.momentum = 0.9  # sgd only
    c.warmup_steps = 5 if tiny else 100
    c.clip_norm = 1.0
    c.skip_nonfinite = 0  # > 0: optax.apply_if_finite with that many consecutive skips
    c.label_smoothing = 0.0 if tiny else 0.1
    # training augmentations (attn_jax.data.AUGMENTATIONS): pad-and-crop; "affine" adds zoom and rotation
    c.augment = ("crop",)

    c.batch_size = 32 if tiny else 128  # global
    c.eval_batch_size = 32 if tiny else 500
    c.num_train_steps = 16 if tiny else 3200
    c.log_every_steps = 4 if tiny else 100
    c.eval_every_steps = 8 if tiny else 500
    c.checkpoint_every_steps = 4 if tiny else 500
    c.keep_latest = 2
    c.keep_best = 1  # by test accuracy
    c.async_checkpoints = True

    # CPU only: split the host into this many XLA devices, one data-parallel shard each (2-core CPU:
    # 13.8 s per 100 steps with 4 devices against 21.5 s with 1); 0 = JAX's default (1 CPU device)
    c.cpu_devices = 0 if tiny else 4
    c.num_devices = 0  # 0: all devices
    c.parallel = "shard_map"  # or "pmap"
    c.preemption_check_every_steps = 10  # multi-process: how often processes agree on a SIGTERM
    c.coordinator = ""  # host:port for multi-host (or ATTN_JAX_COORDINATOR and friends)
    c.progress = True
    c.tensorboard = True
    c.png_examples = 8
    return c
