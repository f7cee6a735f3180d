"""Data-parallel SGD gives the values of plain full-batch SGD, under pmap as under shard_map.

Plain SGD (no clipping, no momentum) moves the parameters by lr x gradient, so a gradient summed over the
8 devices instead of averaged (psum for pmean), or one device's gradient alone (no collective), changes
the parameters by far more than float rounding; Adam would hide the first, being invariant to the scale.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_jax.train import parallel, step
from attn_jax.train.state import create_train_state
from attn_jax.train.tasks.classification import classification_loss
from tests._train_models import TinyNet

N_DEV, STEPS, LR, SEED = 8, 3, 0.5, 7


def _batches():
    rng = np.random.default_rng(SEED)
    return [
        {
            "image": rng.normal(size=(16, 12, 12, 1)).astype(np.float32),
            "label": rng.integers(0, 10, size=(16,)).astype(np.int32),
        }
        for _ in range(STEPS)
    ]


def _initial_state(model, tx, batch):
    return create_train_state(model, tx, jax.random.PRNGKey(SEED), jnp.asarray(batch["image"][:2]))


def _data_parallel(mode, tx, batches, num_devices):
    """Train with the library's per-device step under `mode` ("shard_map" or "pmap") -> final state.

    The only place this file calls attn_jax.train's step API (adapt it here if that API changes)."""
    model = TinyNet(bn_axis_name=step.AXIS)
    state = _initial_state(model, tx, batches[0])
    per_device = functools.partial(step.train_step, model=model, tx=tx, loss_fn=classification_loss)
    if mode == "pmap":
        devices = jax.local_devices()[:num_devices]
        fn = parallel.pmap_step(per_device, devices=devices)
        for b in batches:
            state, _ = fn(state, parallel.split_for_pmap(b, num_devices))
    else:
        mesh = parallel.make_mesh(num_devices)
        fn = parallel.shard_map_step(per_device, mesh)
        state = parallel.replicate(state, mesh)
        for b in batches:
            state, _ = fn(state, parallel.shard_batch(b, mesh))
    state = jax.device_get(state)
    return state.params, state.batch_stats


def _mean_loss(params, stats, batch, model):
    """Mean cross-entropy of the whole batch, and the BatchNorm statistics it updates."""
    variables = {"params": params, "batch_stats": stats}
    logits, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, updates["batch_stats"]


def _full_batch_sgd(batches):
    """Reference: params -= LR * (gradient of the mean loss over the whole batch), BatchNorm over it too."""
    model = TinyNet()
    state = _initial_state(model, optax.sgd(LR), batches[0])
    params, stats = state.params, state.batch_stats
    grad_fn = jax.jit(jax.grad(_mean_loss, has_aux=True), static_argnums=3)
    for b in batches:
        grads, stats = grad_fn(params, stats, b, model)
        params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
    return jax.device_get(params), jax.device_get(stats)


@pytest.fixture(scope="module")
def reference():
    batches = _batches()
    params, stats = _full_batch_sgd(batches)
    initial = jax.device_get(_initial_state(TinyNet(), optax.sgd(LR), batches[0]).params)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params, initial)
    assert min(jax.tree.leaves(moved)) > 1e-3, f"SGD barely moved some parameters: {moved}"
    return batches, params, stats


def _assert_close(got, want, what):
    def check(path, g, w):
        name = f"{what} {jax.tree_util.keystr(path)} (seed {SEED})"
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6, equal_nan=False, err_msg=name)

    jax.tree_util.tree_map_with_path(check, got, want)


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_data_parallel_sgd_equals_full_batch_sgd(reference, mode):
    batches, params, stats = reference
    got_params, got_stats = _data_parallel(mode, optax.sgd(LR), batches, N_DEV)
    _assert_close(got_params, params, f"{mode} x{N_DEV} params")
    _assert_close(got_stats, stats, f"{mode} x{N_DEV} batch_stats")
