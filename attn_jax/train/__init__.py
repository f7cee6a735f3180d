"""Train state, tasks, per-device steps, data parallelism over a mesh, the loop, checkpoints and metrics.

from attn_jax.train import train_and_evaluate
summary = train_and_evaluate(config, workdir)   # experiments/configs/<task>.py
runner = build_steps(config, mesh)              # a task's jitted train / eval steps over a mesh
"""

from attn_jax.train.builders import build_optimizer
from attn_jax.train.factory import build_model
from attn_jax.train.loop import (
    NonFiniteLossError,
    RunEnd,
    evaluate,
    evaluate_checkpoint,
    train_and_evaluate,
)
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
from attn_jax.train.runner import Runner, build_steps
from attn_jax.train.state import TrainState, abstract_train_state, create_train_state
from attn_jax.train.step import eval_step, loss_and_updates, train_step
from attn_jax.train.tasks import TASKS, Task, get_task, make_task
from attn_jax.train.tasks.classification import classification_loss, classification_sums

__all__ = [
    "TASKS",
    "NonFiniteLossError",
    "RunEnd",
    "Runner",
    "Task",
    "TrainState",
    "abstract_train_state",
    "build_model",
    "build_optimizer",
    "build_steps",
    "classification_loss",
    "classification_sums",
    "create_train_state",
    "eval_step",
    "evaluate",
    "evaluate_checkpoint",
    "get_task",
    "loss_and_updates",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_task",
    "pmap_step",
    "replicate",
    "shard_batch",
    "shard_map_eval",
    "shard_map_step",
    "split_for_pmap",
    "train_and_evaluate",
    "train_step",
]
