"""Classification on cluttered_digits (the classifier of Xu et al. 2015-style soft attention pooling):
backbone -> attention -> pool -> linear.

    attn-jax train --config experiments/configs/classification.py                 # spatial attention
    attn-jax train --config experiments/configs/classification.py:none            # no attention
    attn-jax train --config experiments/configs/classification.py:cbam,tiny --config.lr=1e-2

Measured results and training times (the main job: spatial attention, 3,200 steps of global batch 128 on
one XLA CPU device): experiments/results/classification_cpu.json, which records each measured run with
its command, machine and load. Several seeds with intervals: --config.num_seeds=5 (docs/guides/seeds.md).

Argument: "<attention>[,tiny]" with <attention> a registry name (attn_jax.nn.available_attention());
"tiny" is the 32x32 tiny dataset and a small model, for tests (seconds). Common fields and their
meaning: attn_jax.train.config.base_config.
"""

import ml_collections

from attn_jax.train.config import base_config, parse_arg


def get_config(arg: str = "spatial") -> ml_collections.ConfigDict:
    _, tiny = parse_arg(arg)
    c = base_config("classification", arg)
    c.data.dataset = "cluttered_digits/tiny" if tiny else "cluttered_digits"
    c.data.batch_size = 32 if tiny else 128  # global
    c.data.eval_batch_size = 32 if tiny else 500

    c.model.features = (8, 16) if tiny else (24, 48, 96, 128)  # receptive field 31 px at stride 8
    c.model.stride = 4 if tiny else 8

    c.optim.lr = 3e-3 if tiny else 5e-3
    c.optim.clip_norm = 1.0
    c.schedule.warmup_steps = 5 if tiny else 100
    c.classification.label_smoothing = 0.0 if tiny else 0.1

    c.num_train_steps = 16 if tiny else 3200
    c.log_every_steps = 4 if tiny else 100
    c.eval_every_steps = 8 if tiny else 500
    c.checkpoint_every_steps = 4 if tiny else 500

    # CPU only. The stride-2 convs train as matrix products (attn_jax.nn.conv.MatmulGradConv): their kernel
    # and input gradients are XLA:CPU's slowest ops; same model, gradients equal up to rounding.
    c.cpu.matmul_grad = "none" if tiny else "strided"
    # One XLA device: --config.cpu.devices=4 is faster on 2 idle cores, but a 4-device CPU step can
    # deadlock on a loaded machine (docs/cpu.md); the stall watchdog then stops it (status 75, resumable)
    c.cpu.devices = 0
    return c
