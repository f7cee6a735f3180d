"""Segmentation on cluttered_digits/detection masks: the AttentionSegmenter (SmallCNN encoder, attention
gate, bilinear decoder; 11 classes = background + 10 digits) trained by the same loop as classification.

    attn-jax train --config experiments/configs/segmentation.py               # spatial attention
    attn-jax eval --config experiments/configs/segmentation.py --workdir runs/seg
    attn-jax train --config experiments/configs/segmentation.py:spatial,tiny  # seconds, for smoke tests

Measured results and training times (spatial attention; one seed per family):
experiments/results/detseg_loop_cpu.json and experiments/results/segmentation_families.json, with each
run's command, machine and load.

Loss: pixel cross-entropy + segmentation.dice_weight x soft Dice. Common fields: attn_jax.train.config.
"""

import ml_collections

from attn_jax.train.config import base_config, parse_arg


def get_config(arg: str = "spatial") -> ml_collections.ConfigDict:
    _, tiny = parse_arg(arg)
    c = base_config("segmentation", arg)
    c.data.dataset = "cluttered_digits/tiny_detection" if tiny else "cluttered_digits/detection"
    c.data.batch_size = 16 if tiny else 32
    c.data.eval_batch_size = 32 if tiny else 500

    c.model.features = (8, 16) if tiny else (16, 32, 48, 64)  # 4 stages: 31 px receptive field
    c.model.stride = 4
    c.model.decoder_features = (16, 8) if tiny else (32, 16)  # log2(stride) 2x upsamplings

    c.optim.lr = 2e-3
    c.schedule.warmup_steps = 1 if tiny else 200
    c.schedule.end_lr_factor = 0.01

    c.num_train_steps = 8 if tiny else 2000
    c.log_every_steps = 4 if tiny else 100
    c.eval_every_steps = 0  # the test split once, at the end
    c.checkpoint_every_steps = 4 if tiny else 500
    c.cpu.devices = 0  # one XLA device; 4 is faster on 2 cores but can deadlock under load (docs/cpu.md)
    return c
