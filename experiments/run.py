"""Thin main: `python experiments/run.py --config experiments/configs/classification.py --workdir runs/x`.

Same flags as `attn-jax train`; calls attn_jax.train.train_and_evaluate(config, workdir).
"""

import sys

from attn_jax.train.main import run

if __name__ == "__main__":
    run("train", sys.argv)
