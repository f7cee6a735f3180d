"""Classification loss and ONE per-device train / eval step, written for an axis named "data".

The same functions run under `jax.shard_map` (inside `jax.jit`) and under `jax.pmap`; see `parallel.py`.
Metrics are (sum, count) pairs, summed over devices with `lax.psum` and divided on the host.
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


def loss_and_updates(params, batch_stats, batch, rng, *, model, label_smoothing: float = 0.0):
    """Mean loss of `batch` (as seen by this device) and (new batch_stats, metric sums)."""
    variables = {"params": params}
    mutable = []
    if batch_stats:
        variables["batch_stats"] = batch_stats
        mutable = ["batch_stats"]
    logits, updates = model.apply(
        variables, batch["image"], train=True, mutable=mutable, rngs={"dropout": rng}
    )
    sums = classification_sums(logits, batch["label"], batch.get("valid"), label_smoothing)
    loss = sums["loss"] / jnp.maximum(sums["count"], 1.0)
    return loss, (updates.get("batch_stats", batch_stats), sums)


def train_step(
    state: TrainState, batch: dict, *, model, tx, label_smoothing: float = 0.0, axis_name: str = AXIS
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
        local_params, state.batch_stats, batch, rng, model=model, label_smoothing=label_smoothing
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


def eval_step(state: TrainState, batch: dict, *, model, axis_name: str = AXIS) -> dict:
    """Metric sums (loss, correct, count) over this device's batch, summed over `axis_name`.

    Padded examples (batch["valid"] False) count for nothing."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    logits = model.apply(variables, batch["image"], train=False)
    return lax.psum(classification_sums(logits, batch["label"], batch.get("valid")), axis_name)
