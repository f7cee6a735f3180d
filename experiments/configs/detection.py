"""Detection on cluttered_digits/detection: the seed's AttentionDetector (SmallCNN, stride 4) + focal loss.

Run (one attention family; any registry name: none, spatial, additive, se, cbam, eca, gate, nonlocal):
    python experiments/detseg.py --config experiments/configs/detection.py:spatial --workdir /tmp/det
Small local variant for a smoke run: --config experiments/configs/detection.py:spatial,tiny
"""

import ml_collections


def get_config(arg: str = "spatial") -> ml_collections.ConfigDict:
    attention, *flags = arg.split(",")
    c = ml_collections.ConfigDict()
    c.task = "detection"
    c.attention = attention
    c.dataset = "cluttered_digits/detection"
    c.num_classes = 10
    c.image_size = 64
    c.backbone_features = (16, 32, 48, 64)  # 4 stages: 31 px receptive field at the heads' input
    c.stride = 4
    c.anchor_sizes = (12.0, 16.0)  # pixels; digits are 13-24 px tall, 7-17 px wide
    c.aspect_ratios = (1.33, 2.0)  # height / width: 99% of test boxes have an anchor at IoU >= 0.5
    c.positive_threshold = 0.5
    c.negative_threshold = 0.4
    c.box_loss = "smooth_l1"
    c.box_weight = 1.0
    c.prior_probability = 0.01  # RetinaNet: class-head bias so the focal loss starts small
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
    c.score_threshold = 0.05
    c.nms_iou_threshold = 0.5
    c.pre_nms_top_k = 300
    c.max_detections = 100
    if "tiny" in flags:
        c.dataset = "cluttered_digits/tiny_detection"
        c.image_size = 32
        c.anchor_sizes = (6.0, 8.0)
        c.backbone_features = (8, 16)
        c.batch_size, c.num_steps, c.warmup_steps, c.log_every, c.checkpoint_every = 16, 4, 1, 2, 2
        c.eval_batch_size, c.pre_nms_top_k, c.max_detections = 32, 50, 20
    return c
