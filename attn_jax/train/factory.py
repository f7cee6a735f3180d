"""Build the classifier and the optimizer named by an experiment config (see experiments/configs)."""

from __future__ import annotations

import jax.numpy as jnp

from attn_jax.train.optim import make_optimizer
from attn_jax.train.step import AXIS

BACKBONES = ("small_cnn", "resnet18", "resnet34", "resnet50")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(model_cfg, num_classes: int, *, bn_axis_name: str | None = AXIS):
    """AttentionClassifier(backbone, num_classes, attention=model_cfg.attention); BatchNorm statistics are
    averaged over `bn_axis_name` (the data axis), so a data-parallel step equals one full-batch step."""
    from attn_jax.models import AttentionClassifier
    from attn_jax.nn import ResNet18, ResNet34, ResNet50, SmallCNN

    if model_cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {model_cfg.backbone!r}; known: {list(BACKBONES)}")
    if model_cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {model_cfg.dtype!r}; known: {list(DTYPES)}")
    dtype = DTYPES[model_cfg.dtype]
    if model_cfg.backbone == "small_cnn":
        backbone = SmallCNN(
            features=tuple(model_cfg.features),
            stride=model_cfg.stride,
            blocks_per_stage=model_cfg.blocks_per_stage,
            dtype=dtype,
            bn_axis_name=bn_axis_name,
        )
    else:
        resnet = {"resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50}[model_cfg.backbone]
        backbone = resnet(stem="small", dtype=dtype, bn_axis_name=bn_axis_name)
    return AttentionClassifier(backbone, num_classes, attention=model_cfg.attention, dtype=dtype)


def build_optimizer(config):
    """The optax transformation of `config` (optimizer, lr, warmup, decay, clipping) for num_train_steps."""
    return make_optimizer(
        config.optimizer,
        lr=config.lr,
        total_steps=config.num_train_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        momentum=config.get("momentum", 0.9),
        clip_norm=config.clip_norm or None,
        skip_nonfinite=config.get("skip_nonfinite", 0),
    )
