"""The backbone, compute dtype and optimizer of an experiment config: the pieces every task's model is
built from (the tasks sit above this module; attn_jax.train.factory.build_model picks the task).

backbone = build_backbone(config)   # SmallCNN or a ResNet of config.model, BatchNorm over the axis "data"
tx = build_optimizer(config)
"""

from __future__ import annotations

import jax.numpy as jnp

from attn_jax.nn import ResNet18, ResNet34, ResNet50, SmallCNN
from attn_jax.train.optim import make_optimizer
from attn_jax.train.step import AXIS

BACKBONES = ("small_cnn", "resnet18", "resnet34", "resnet50")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_dtype(model_cfg):
    """Compute dtype named by model_cfg.dtype (parameters stay float32)."""
    if model_cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {model_cfg.dtype!r}; known: {list(DTYPES)}")
    return DTYPES[model_cfg.dtype]


def attention_kwargs(model_cfg) -> dict:
    """model_cfg.attention_kwargs as a plain dict (empty when absent): extra attention arguments."""
    kwargs = model_cfg.attention_kwargs
    return dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else kwargs)


def build_backbone(config, bn_axis_name: str | None = AXIS):
    """SmallCNN(features, stride, blocks_per_stage) or a ResNet (small stem) of config.model; a SmallCNN
    trains the convs config.cpu.matmul_grad names as matrix products (CPU tuning, same model)."""
    model_cfg = config.model
    if model_cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {model_cfg.backbone!r}; known: {list(BACKBONES)}")
    dtype = model_dtype(model_cfg)
    if model_cfg.backbone == "small_cnn":
        return SmallCNN(
            features=tuple(model_cfg.features),
            stride=model_cfg.stride,
            blocks_per_stage=model_cfg.blocks_per_stage,
            matmul_grad=config.cpu.matmul_grad,
            dtype=dtype,
            bn_axis_name=bn_axis_name,
        )
    resnet = {"resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50}[model_cfg.backbone]
    return resnet(stem="small", dtype=dtype, bn_axis_name=bn_axis_name)


def build_optimizer(config):
    """The optimizer of an experiment config, on a schedule of ``config.num_train_steps`` updates.

    Args:
      config: an experiment config (``experiments/configs/<task>.py``) with the fields ``optimizer``,
        ``lr``, ``num_train_steps``, ``warmup_steps``, ``weight_decay`` and ``clip_norm`` (0 for no
        clipping), and optionally ``momentum`` (default 0.9), ``skip_nonfinite`` (0) and
        ``end_lr_factor`` (0.0).

    Returns:
      The ``optax.GradientTransformation`` of :func:`attn_jax.train.make_optimizer` for those fields.

    Raises:
      ValueError: naming the field and its value for an unknown optimizer or an out-of-range number.
    """
    return make_optimizer(
        config.optim.name,
        lr=config.optim.lr,
        total_steps=config.num_train_steps,
        warmup_steps=config.schedule.warmup_steps,
        weight_decay=config.optim.weight_decay,
        momentum=config.optim.momentum,
        clip_norm=config.optim.clip_norm or None,
        skip_nonfinite=config.optim.skip_nonfinite,
        end_factor=config.schedule.end_lr_factor,
    )
