"""Train state, per-device steps, data parallelism over a mesh, loop, checkpoints and metrics.

from attn_jax.train import train_and_evaluate
summary = train_and_evaluate(config, workdir)   # config: experiments/configs/classification.py
"""

from attn_jax.train.loop import NonFiniteLossError, evaluate, evaluate_checkpoint, train_and_evaluate
from attn_jax.train.optim import make_optimizer, make_schedule
from attn_jax.train.parallel import (
    make_mesh,
    pmap_step,
    replicate,
    shard_batch,
    shard_map_eval,
    shard_map_step,
    split_for_pmap,
)
from attn_jax.train.state import TrainState, abstract_train_state, create_train_state
from attn_jax.train.step import classification_sums, eval_step, loss_and_updates, train_step

__all__ = [
    "NonFiniteLossError",
    "TrainState",
    "abstract_train_state",
    "classification_sums",
    "create_train_state",
    "eval_step",
    "evaluate",
    "evaluate_checkpoint",
    "loss_and_updates",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "pmap_step",
    "replicate",
    "shard_batch",
    "shard_map_eval",
    "shard_map_step",
    "split_for_pmap",
    "train_and_evaluate",
    "train_step",
]
