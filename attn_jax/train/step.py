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


def loss_and_updates(params, batch_stats, batch, rng, *, model, loss_fn, axis_name=None, inputs_fn=None):
    """This device's loss of ``batch``, the updated BatchNorm statistics and the metric sums.

    The function :func:`attn_jax.train.train_step` differentiates with respect to ``params``.

    Args:
      params: the model's ``params`` variable tree.
      batch_stats: the model's BatchNorm statistics; empty (``{}``) for a model without BatchNorm.
      batch: dict with ``"image"`` ``(b, H, W, C)`` float and the task's labels (e.g. ``"label"``
        ``(b,)`` int), ``b`` this device's share of the batch.
      rng: the dropout PRNG key.
      model: the Flax module, called as ``model.apply(variables, *inputs_fn(batch), train=True)``.
      loss_fn: ``loss_fn(outputs, batch, axis_name) -> (loss, sums)``, e.g.
        :func:`attn_jax.train.classification_loss` or a task's ``loss``.
      axis_name: the device axis; None outside ``shard_map`` / ``pmap``.
      inputs_fn: ``inputs_fn(batch) -> tuple`` of the model's positional inputs in training (a task's
        ``train_inputs``, e.g. the images and the target tokens of teacher forcing); None for
        ``(batch["image"],)``.

    Returns:
      The pair ``(loss, (batch_stats, sums))``, the scalar loss, the new BatchNorm statistics (the old
      ones when the model has none) and the dict of metric sums that ``loss_fn`` returned.
    """
    variables = {"params": params}
    mutable = []
    if batch_stats:
        variables["batch_stats"] = batch_stats
        mutable = ["batch_stats"]
    inputs = (batch["image"],) if inputs_fn is None else inputs_fn(batch)
    outputs, updates = model.apply(variables, *inputs, train=True, mutable=mutable, rngs={"dropout": rng})
    loss, sums = loss_fn(outputs, batch, axis_name)
    return loss, (updates.get("batch_stats", batch_stats), sums)


def train_step(
    state: TrainState, batch: dict, *, model, tx, loss_fn, axis_name: str = AXIS, inputs_fn=None
) -> tuple[TrainState, dict]:
    """One optimizer step on this device's share of the batch; gradients averaged over `axis_name`.

    Under shard_map the replicated params are *unvarying*: autodiff would already sum the gradient over
    the axis, and a pmean on top would leave it scaled by the device count. Casting them to varying first
    gives each device its local gradient, and the explicit pmean then averages exactly once, as under pmap
    (where the cast is a no-op). Equal local batch sizes make this the full-batch mean gradient.

    Run it under ``shard_map`` or ``pmap`` (:func:`attn_jax.train.shard_map_step`,
    :func:`attn_jax.train.pmap_step`) with the keyword arguments bound by ``functools.partial``.

    Args:
      state: the replicated :class:`attn_jax.train.TrainState`.
      batch: this device's share of the batch, a dict with ``"image"`` ``(b, H, W, C)`` and the task's
        labels.
      model: the Flax module (its BatchNorm averaging over ``axis_name`` for an exact full-batch step).
      tx: the optax transformation.
      loss_fn: ``loss_fn(outputs, batch, axis_name) -> (loss, sums)`` (see
        :func:`attn_jax.train.loss_and_updates`).
      axis_name: the device axis (default ``"data"``).
      inputs_fn: the model's positional inputs in training (see :func:`attn_jax.train.loss_and_updates`);
        None for the images.

    Returns:
      The pair ``(new_state, metrics)``. The new state has ``step + 1`` and the updated params,
      BatchNorm statistics and optimizer state; ``metrics`` holds the task's sums added over devices
      (``lax.psum``) plus the scalars ``grad_norm`` (global norm of the averaged gradient) and
      ``param_norm`` (of the new params).
    """
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(axis_name))
    local_params = lax.pcast(state.params, axis_name, to="varying")
    grad_fn = jax.grad(loss_and_updates, has_aux=True)
    grads, (batch_stats, sums) = grad_fn(
        local_params,
        state.batch_stats,
        batch,
        rng,
        model=model,
        loss_fn=loss_fn,
        axis_name=axis_name,
        inputs_fn=inputs_fn,
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
    """What the task evaluates on this device's batch, the model called with ``train=False``.

    Args:
      state: the :class:`attn_jax.train.TrainState` to evaluate (its params and BatchNorm statistics).
      batch: this device's share of an eval batch, a dict with ``"image"`` ``(b, H, W, C)``, the task's
        labels and ``"valid"`` ``(b,)`` bool (False for padding examples).
      model: the Flax module.
      outputs_fn: ``outputs_fn(outputs, batch, axis_name)``, e.g. a task's ``eval_outputs``; padding
        examples (``batch["valid"]`` False) must count for nothing in what it returns.
      axis_name: the device axis (default ``"data"``).

    Returns:
      Whatever ``outputs_fn`` returns for the model's outputs on ``batch["image"]``.
    """
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    outputs = model.apply(variables, batch["image"], train=False)
    return outputs_fn(outputs, batch, axis_name)
