"""ONE per-device train / eval step for every task, written for an axis named "data".

The same functions run under `jax.shard_map` (inside `jax.jit`) and under `jax.pmap`; see `parallel.py`.
The task supplies the loss and what evaluation returns (attn_jax.train.tasks): `loss_fn(outputs, batch,
axis_name) -> (loss, sums)` is this device's loss under the mean-gradient convention (the step averages
gradients over the axis) and its metric sums; `outputs_fn(outputs, batch, axis_name)` is the eval step's
result. The step sums the metric sums over devices with `lax.psum`; the task divides them on the host.
"""

from __future__ import annotations

import jax
import optax
from jax import lax

from attn_jax.train.state import TrainState

AXIS = "data"


def loss_and_updates(params, batch_stats, batch, rng, *, model, loss_fn, axis_name=None):
    """This device's loss of `batch` and (new batch_stats, metric sums).

    Args:
      params, batch_stats: the model's variables (batch_stats may be empty).
      batch: dict with "image" and the task's labels.
      rng: dropout key.
      model: the Flax model, called with train=True.
      loss_fn: loss_fn(outputs, batch, axis_name) -> (loss, sums), e.g. a task's `loss`.
      axis_name: the device axis (None outside shard_map / pmap).

    Returns:
      (loss, (batch_stats, sums)).
    """
    variables = {"params": params}
    mutable = []
    if batch_stats:
        variables["batch_stats"] = batch_stats
        mutable = ["batch_stats"]
    outputs, updates = model.apply(
        variables, batch["image"], train=True, mutable=mutable, rngs={"dropout": rng}
    )
    loss, sums = loss_fn(outputs, batch, axis_name)
    return loss, (updates.get("batch_stats", batch_stats), sums)


def train_step(
    state: TrainState, batch: dict, *, model, tx, loss_fn, axis_name: str = AXIS
) -> tuple[TrainState, dict]:
    """One optimizer step on this device's share of the batch; gradients averaged over `axis_name`.

    Under shard_map the replicated params are *unvarying*: autodiff would already sum the gradient over
    the axis, and a pmean on top would leave it scaled by the device count. Casting them to varying first
    gives each device its local gradient, and the explicit pmean then averages exactly once, as under pmap
    (where the cast is a no-op). Equal local batch sizes make this the full-batch mean gradient.

    Args:
      state: the replicated train state.
      batch: this device's share of the batch.
      model, tx: the Flax model and the optax transformation.
      loss_fn: loss_fn(outputs, batch, axis_name) -> (loss, sums) (see loss_and_updates).
      axis_name: the device axis.

    Returns:
      (new state, metrics): the task's sums added over devices, plus grad_norm and param_norm.
    """
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(axis_name))
    local_params = lax.pcast(state.params, axis_name, to="varying")
    grad_fn = jax.grad(loss_and_updates, has_aux=True)
    grads, (batch_stats, sums) = grad_fn(
        local_params, state.batch_stats, batch, rng, model=model, loss_fn=loss_fn, axis_name=axis_name
    )
    grads = lax.pmean(grads, axis_name)
    batch_stats = lax.pmean(batch_stats, axis_name)  # already equal when BatchNorm syncs over the axis
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = lax.psum(sums, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(params)
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new, metrics


def eval_step(state: TrainState, batch: dict, *, model, outputs_fn, axis_name: str = AXIS):
    """What the task evaluates on this device's batch: outputs_fn(model outputs, batch, axis_name) (e.g. a
    task's `eval_outputs`), the model called with train=False. Padded examples (batch["valid"] False)
    must count for nothing in what outputs_fn returns."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    outputs = model.apply(variables, batch["image"], train=False)
    return outputs_fn(outputs, batch, axis_name)
