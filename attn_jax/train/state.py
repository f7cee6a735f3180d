"""The train state: a pytree of arrays only (no functions), so it jits, shards and checkpoints as-is."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
    """step () int32; params and batch_stats (Flax variable trees); opt_state (optax); rng (2,) uint32."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def create_train_state(
    model, tx: optax.GradientTransformation, rng: jax.Array, sample_images, init_params=None
) -> TrainState:
    """Initialise `model` on `sample_images` (B, H, W, C) and the optimizer; rng is a raw PRNGKey.

    The init key and the training key are split from `rng`, so a seed fixes both. init_params: optional
    params -> params applied before the optimizer state is made (e.g. a task's prior on a bias).
    """
    init_rng, train_rng = jax.random.split(rng)
    variables = model.init({"params": init_rng, "dropout": init_rng}, sample_images, train=False)
    params = variables["params"]
    if init_params is not None:
        params = init_params(params)
    batch_stats = variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=train_rng,
    )


def abstract_train_state(model, tx, sample_images, init_params=None) -> TrainState:
    """Shapes and dtypes of `create_train_state` without computing it (a restore target)."""
    return jax.eval_shape(
        lambda: create_train_state(model, tx, jax.random.PRNGKey(0), sample_images, init_params)
    )
