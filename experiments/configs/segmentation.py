"""Segmentation on cluttered_digits/detection masks: the seed's AttentionSegmenter (SmallCNN + Decoder).

11 classes: background + 10 digits. Run (any attention registry name):
    python experiments/detseg.py --config experiments/configs/segmentation.py:spatial --workdir /tmp/seg
Small local variant for a smoke run: --config experiments/configs/segmentation.py:spatial,tiny
"""

import ml_collections


def get_config(arg: str = "spatial") -> ml_collections.ConfigDict:
    attention, *flags = arg.split(",")
    c = ml_collections.ConfigDict()
    c.task = "segmentation"
    c.attention = attention
    c.dataset = "cluttered_digits/detection"
    c.num_classes = 11
    c.image_size = 64
    c.backbone_features = (16, 32, 48, 64)  # 4 stages: 31 px receptive field (digits are 13-24 px)
    c.stride = 4
    c.decoder_features = (32, 16)  # log2(stride) 2x upsamplings back to 64x64
    c.ignore_index = 255
    c.dice_weight = 0.5
    c.batch_size = 32
    c.num_steps = 2000
    c.learning_rate = 2e-3
    c.warmup_steps = 200
    c.weight_decay = 1e-4
    c.seed = 0
    c.log_every = 200
    c.checkpoint_every = 500  # steps; the latest 2 are kept in <workdir>/checkpoints, a re-run resumes
    c.eval_batch_size = 250
    c.eval_examples = 0  # 0 = the whole test split (10,000)
    if "tiny" in flags:
        c.dataset = "cluttered_digits/tiny_detection"
        c.image_size = 32
        c.backbone_features = (8, 16)
        c.decoder_features = (16, 8)
        c.batch_size, c.num_steps, c.warmup_steps, c.log_every, c.eval_batch_size = 16, 4, 1, 2, 32
        c.checkpoint_every = 2
    return c
