"""ONE per-device train / eval step for every task, written for an axis named "data".

The same functions run under `jax.shard_map` (inside `jax.jit`) and under `jax.pmap`; see `parallel.py`.
A task supplies `loss_fn(outputs, batch, axis_name) -> (loss, sums)` (this device's loss under the
mean-gradient convention: the step averages gradients over the axis) and, for evaluation,
`outputs_fn(outputs, batch, axis_name)`; classification's are the defaults. Metrics are sums (e.g. loss,
correct, count), summed over devices with `lax.psum` and divided on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax

from attn_jax.train.state import TrainState

AXIS = "data"


def classification_sums(logits, labels, weights=None, label_smoothing: float = 0.0) -> dict:
    """logits (B, K) float, labels (B,) int, weights (B,) or None -> sums: loss, correct, count (scalars)."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits (B, K) and labels (B,), got {logits.shape} and {labels.shape}")
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    w = jnp.ones_like(losses) if weights is None else weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(losses * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w)}


def classification_loss(logits, batch, axis_name=None, *, label_smoothing: float = 0.0):
    """Mean cross-entropy of this device's examples and their sums (loss, correct, count). With equal
    local batch sizes the mean of the devices' gradients is the full-batch gradient."""
    sums = classification_sums(logits, batch["label"], batch.get("valid"), label_smoothing)
    return sums["loss"] / jnp.maximum(sums["count"], 1.0), sums


def loss_and_updates(
    params, batch_stats, batch, rng, *, model, label_smoothing: float = 0.0, loss_fn=None, axis_name=None
):
    """This device's loss of `batch` and (new batch_stats, metric sums). loss_fn(outputs, batch,
    axis_name) -> (loss, sums); default: classification cross-entropy with `label_smoothing`."""
    variables = {"params": params}
    mutable = []
    if batch_stats:
        variables["batch_stats"] = batch_stats
        mutable = ["batch_stats"]
    logits, updates = model.apply(
        variables, batch["image"], train=True, mutable=mutable, rngs={"dropout": rng}
    )
    if loss_fn is None:
        loss, sums = classification_loss(logits, batch, label_smoothing=label_smoothing)
    else:
        loss, sums = loss_fn(logits, batch, axis_name)
    return loss, (updates.get("batch_stats", batch_stats), sums)


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model,
    tx,
    label_smoothing: float = 0.0,
    loss_fn=None,
    axis_name: str = AXIS,
) -> tuple[TrainState, dict]:
    """One optimizer step on this device's share of the batch; gradients averaged over `axis_name`.

    Under shard_map the replicated params are *unvarying*: autodiff would already sum the gradient over
    the axis, and a pmean on top would leave it scaled by the device count. Casting them to varying first
    gives each device its local gradient, and the explicit pmean then averages exactly once, as under pmap
    (where the cast is a no-op). Equal local batch sizes make this the full-batch mean gradient.
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
        label_smoothing=label_smoothing,
        loss_fn=loss_fn,
        axis_name=axis_name,
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


def eval_step(state: TrainState, batch: dict, *, model, outputs_fn=None, axis_name: str = AXIS):
    """What the task evaluates on this device's batch: outputs_fn(model outputs, batch, axis_name), by
    default the classification sums (loss, correct, count) summed over `axis_name`.

    Padded examples (batch["valid"] False) count for nothing."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    outputs = model.apply(variables, batch["image"], train=False)
    if outputs_fn is not None:
        return outputs_fn(outputs, batch, axis_name)
    return lax.psum(classification_sums(outputs, batch["label"], batch.get("valid")), axis_name)
