"""The train state: a pytree of arrays only (no functions), so it jits, shards and checkpoints as-is."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
    """The state of a training run: a pytree of arrays only, so it jits, shards and checkpoints as-is.

    Its fields: ``step``, ``()`` int32, the number of optimizer updates taken; ``params``, the model's
    Flax ``params`` variable tree; ``batch_stats``, its BatchNorm statistics (``{}`` for a model without);
    ``opt_state``, the optax transformation's state; ``rng``, the ``(2,)`` uint32 PRNG key of the training
    randomness (dropout), folded with the step and the device index in each step.

    It is immutable: ``state.replace(step=...)`` returns a new state.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def create_train_state(
    model, tx: optax.GradientTransformation, rng: jax.Array, sample_images, init_params=None
) -> TrainState:
    """Initialise a model's variables and the optimizer's state.

    The init key and the training key are split from ``rng``, so a seed fixes both.

    Args:
      model: a Flax module called as ``model(images, train=False)``.
      tx: the optax transformation whose state is created for the params.
      rng: a raw PRNG key, ``(2,)`` uint32 (``jax.random.PRNGKey(seed)``).
      sample_images: ``(B, H, W, C)`` images of the training shape (only the shape and dtype matter).
      init_params: optional ``params -> params`` applied before the optimizer state is made (e.g. a task's
        prior on a bias).

    Returns:
      A host :class:`attn_jax.train.TrainState` at step 0.

    It runs as one compiled program (cached per model, transformation and image shape), not initialiser
    by initialiser; a model, transformation or ``init_params`` that cannot be hashed runs op by op.
    """
    try:
        hash((model, tx, init_params))
    except TypeError:  # e.g. a module with a list field: no static argument of jit
        return _initialise(model, tx, rng, sample_images, init_params)
    return _initialise_compiled(model, tx, rng, sample_images, init_params)


def _initialise(model, tx, rng, sample_images, init_params) -> TrainState:
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


# one program instead of one compilation per initialiser and shape (op by op)
_initialise_compiled = jax.jit(_initialise, static_argnums=(0, 1, 4))


def abstract_train_state(model, tx, sample_images, init_params=None) -> TrainState:
    """The shapes and dtypes of :func:`attn_jax.train.create_train_state`, without computing it.

    Args:
      model, tx, sample_images, init_params: as for :func:`attn_jax.train.create_train_state`.

    Returns:
      A :class:`attn_jax.train.TrainState` of ``jax.ShapeDtypeStruct`` leaves (e.g. a checkpoint's restore
      target).
    """
    return jax.eval_shape(
        lambda: create_train_state(model, tx, jax.random.PRNGKey(0), sample_images, init_params)
    )
