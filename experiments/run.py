"""Thin main: `python experiments/run.py --config experiments/configs/<task>.py[:ARG] --workdir runs/x`.

Same flags and outputs as `attn-jax train` (the attention PNG included); calls
attn_jax.train.train_and_evaluate(config, workdir).
"""

import sys

from attn_jax.cli import train_callbacks
from attn_jax.train.main import run

if __name__ == "__main__":
    run("train", sys.argv, callbacks=train_callbacks())
