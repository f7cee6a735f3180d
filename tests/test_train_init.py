"""create_train_state runs as one compiled program: the same state as initialising op by op (to a float32
rounding), the task's parameter adjustment and the optimizer state included; a model that cannot be a
static argument of jit (unhashable) still initialises, op by op."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_jax.train import parallel
from attn_jax.train import state as state_module
from attn_jax.train.runner import build_steps
from attn_jax.train.state import create_train_state
from tests._train_models import small_config, synthetic_meta


# detection: a task parameter adjustment (init_params); reading: an LSTM (orthogonal init) under nn.scan
@pytest.mark.parametrize("task", ["detection", "reading"])
def test_compiled_initialisation_is_the_op_by_op_one(task):
    runner = build_steps(small_config(task), parallel.make_mesh(1), meta=synthetic_meta(task))
    args = (runner.model, runner.tx, jax.random.PRNGKey(3), runner.sample_images(), runner.task.init_params)
    eager = state_module._initialise(*args)  # outside jit: every initialiser op by op
    compiled = create_train_state(*args)
    assert jax.tree.structure(compiled) == jax.tree.structure(eager)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(eager), jax.tree.leaves(compiled)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7, err_msg=str(path))
    if task == "detection":  # the task's init_params ran: the class head's prior bias, -log((1 - p) / p)
        leaves = jax.tree_util.tree_leaves_with_path(compiled.params)
        bias = [np.asarray(x) for p, x in leaves if "cls" in jax.tree_util.keystr(p) and x.ndim == 1]
        assert bias and np.allclose(bias[-1], -np.log((1 - 0.01) / 0.01), rtol=1e-5)


@dataclasses.dataclass
class _Unhashable:
    widths: list


class _ListFieldNet(nn.Module):
    """A module with a list field: hashing it raises TypeError."""

    spec: _Unhashable

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.spec.widths[0])(x.reshape(x.shape[0], -1))


def test_a_module_that_cannot_be_hashed_initialises_op_by_op():
    model = _ListFieldNet(_Unhashable([3]))
    with pytest.raises(TypeError):
        hash(model)
    state = create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), jnp.zeros((2, 4, 4, 1)))
    assert state.params["Dense_0"]["kernel"].shape == (16, 3) and int(state.step) == 0
