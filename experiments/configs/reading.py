"""Reading on cluttered_digits/reading: the AttentionReader (SmallCNN, then an LSTM whose state is the query
of additive attention at every step; Show, Attend and Tell, Xu et al. 2015) reads 1 to 4 digits left to
right on a 64x128 canvas, trained with teacher forcing by the same loop as the other tasks.

    attn-jax train --config experiments/configs/reading.py              # the reader
    attn-jax eval --config experiments/configs/reading.py --workdir runs/reading-additive
    attn-jax train --config experiments/configs/reading.py:tiny         # seconds, for smoke tests

The attention is additive (the formula's own use: the query changes at every step); the argument is only
"[additive][,tiny]". Metrics: sequence accuracy, character error rate, per-step pointing game, greedy and
beam search. Measured runs: experiments/results/reading_cpu.json. Common fields: attn_jax.train.config.
"""

import ml_collections

from attn_jax.train.config import base_config, parse_arg


def get_config(arg: str = "additive") -> ml_collections.ConfigDict:
    attention, tiny = parse_arg(arg, default="additive")
    if attention != "additive":
        raise ValueError(f"the reader's attention is additive; got {attention!r} (use 'additive[,tiny]')")
    c = base_config("reading", "additive,tiny" if tiny else "additive")
    c.data.dataset = "cluttered_digits/tiny_reading" if tiny else "cluttered_digits/reading"
    c.data.augment = ()  # a crop could cut off a digit that the string still names
    c.data.batch_size = 16 if tiny else 64
    c.data.eval_batch_size = 32 if tiny else 500
    c.model.features = (8, 16) if tiny else (16, 32, 64, 96)  # receptive field 31 px at stride 8
    c.model.stride = 4 if tiny else 8
    c.model.hidden_size = 32 if tiny else 256
    c.model.attention_dim = 16 if tiny else 128
    c.model.embed_size = 8 if tiny else 64

    c.optim.lr = 3e-3
    c.optim.clip_norm = 1.0
    c.reading.label_smoothing = 0.0 if tiny else 0.1
    c.schedule.warmup_steps = 1 if tiny else 100
    c.schedule.end_lr_factor = 0.01

    c.num_train_steps = 8 if tiny else 8000
    c.log_every_steps = 4 if tiny else 100
    c.eval_every_steps = 0  # the test split once, at the end
    c.checkpoint_every_steps = 4 if tiny else 500
    c.cpu.devices = 0  # one XLA device (docs/cpu.md)
    # CPU only: the stride-2 convs train as matrix products (attn_jax.nn.conv.MatmulGradConv), same model
    c.cpu.matmul_grad = "none" if tiny else "strided"
    return c
