"""Detection on cluttered_digits/detection: the AttentionDetector (SmallCNN, stride 4, anchors) trained with
the RetinaNet focal loss (Lin et al. 2017) by the same loop as classification.

    attn-jax train --config experiments/configs/detection.py                # spatial attention
    attn-jax train --config experiments/configs/detection.py:gate --workdir runs/det-gate
    attn-jax eval --config experiments/configs/detection.py --workdir runs/det-gate
    attn-jax train --config experiments/configs/detection.py:spatial,tiny   # seconds, for smoke tests

Measured results and training times (spatial attention; one seed per family):
experiments/results/detseg_loop_cpu.json and experiments/results/detection_families.json, with each
run's command, machine and load.

Argument "<attention>[,tiny]" (any attention registry name). Common fields: attn_jax.train.config.
"""

import ml_collections

from attn_jax.train.config import base_config, parse_arg


def get_config(arg: str = "spatial") -> ml_collections.ConfigDict:
    _, tiny = parse_arg(arg)
    c = base_config("detection", arg)
    c.data.dataset = "cluttered_digits/tiny_detection" if tiny else "cluttered_digits/detection"
    c.data.batch_size = 16 if tiny else 32
    c.data.eval_batch_size = 32 if tiny else 500

    c.model.features = (8, 16) if tiny else (16, 32, 48, 64)  # 4 stages: 31 px receptive field
    c.model.stride = 4
    # pixels; digits are 13-24 px tall, 7-17 px wide: 99% of test boxes have an anchor at IoU >= 0.5
    c.model.anchor_sizes = (6.0, 8.0) if tiny else (12.0, 16.0)
    c.detection.pre_nms_top_k = 50 if tiny else 300
    c.detection.max_detections = 20 if tiny else 100

    c.optim.lr = 2e-3
    c.schedule.warmup_steps = 1 if tiny else 200
    c.schedule.end_lr_factor = 0.01

    c.num_train_steps = 8 if tiny else 2000
    c.log_every_steps = 4 if tiny else 100
    c.eval_every_steps = 0  # the test split once, at the end
    c.checkpoint_every_steps = 4 if tiny else 500
    c.cpu.devices = 0  # one XLA device; 4 is faster on 2 cores but can deadlock under load (docs/cpu.md)
    return c
