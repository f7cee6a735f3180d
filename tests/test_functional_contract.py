"""The functional input contract: bool masks only, float inputs only, NaN scores never hidden, empty inputs
handled alike by both paths, the "nan" policy's gradients finite outside its NaN rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.functional import additive_attention, attention_context, dot_product_attention, masked_softmax

M, N, D, A, DV = 3, 5, 4, 6, 7
_k = jax.random.split(jax.random.key(0), 6)
Q = jax.random.normal(_k[0], (2, M, D))
H = jax.random.normal(_k[1], (2, N, D))
V = jax.random.normal(_k[2], (2, N, DV))
W = dict(w_q=jax.random.normal(_k[3], (D, A)), w_k=jax.random.normal(_k[4], (D, A)))
W["w_a"] = jax.random.normal(_k[5], (A,))
VALID = jnp.ones((2, M, N), bool).at[:, 0, :].set(False)  # row 0 fully masked, rows 1-2 see every key

PATHS = {
    "additive": lambda q, h, v, **kw: additive_attention(q, h, v, **W, **kw),
    "chunked": lambda q, h, v, **kw: additive_attention(q, h, v, **W, chunk_size=2, **kw),
    "dot_product": lambda q, h, v, **kw: dot_product_attention(q, h, v, **kw),
    "pallas": lambda q, h, v, **kw: additive_attention(q, h, v, **W, implementation="pallas", **kw),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "mask", [jnp.where(VALID, 0.0, -jnp.inf), VALID.astype(jnp.float32), VALID.astype(jnp.int32)]
)
def test_float_or_int_mask_is_rejected_with_the_convention(path, mask):
    with pytest.raises(ValueError, match=r"mask must be a bool array, True = may attend.*mask == 0"):
        PATHS[path](Q, H, V, mask=mask)


def test_float_mask_is_rejected_by_masked_softmax():
    with pytest.raises(ValueError, match=r"mask must be a bool array.*got dtype float32"):
        masked_softmax(jnp.zeros((M, N)), jnp.where(VALID[0], 0.0, -jnp.inf))


@pytest.mark.parametrize("policy", ["zero", "uniform", "nan"])
@pytest.mark.parametrize("path", PATHS)
def test_nan_score_at_a_valid_key_makes_its_row_nan(path, policy):
    keys = H.at[:, 2, :].set(jnp.nan)  # key 2 scores NaN for every query; values stay finite
    mask = VALID.at[:, 2, 2].set(False)  # row 2 masks the NaN key out: it must stay finite
    context, weights = PATHS[path](Q, keys, V, mask=mask, fully_masked=policy)
    assert np.isnan(context[:, 1]).all()
    assert np.isfinite(context[:, 2]).all() and np.isfinite(weights[:, 2]).all()
    assert np.isnan(weights[:, 1]).all()


@pytest.mark.parametrize("policy", ["zero", "uniform", "nan"])
def test_nan_score_at_a_valid_key_makes_its_row_nan_in_the_tpu_kernel(policy):
    """The TPU (Mosaic) kernel, run in the Pallas TPU interpreter, follows the same NaN policy."""
    from attn_jax.kernels.additive_tpu import tpu_additive_attention

    keys = H.at[:, 2, :].set(jnp.nan)
    mask = VALID.at[:, 2, 2].set(False)
    context, weights = tpu_additive_attention(Q, keys, V, **W, mask=mask, fully_masked=policy, interpret=True)
    assert np.isnan(context[:, 1]).all() and np.isnan(weights[:, 1]).all()
    assert np.isfinite(context[:, 2]).all() and np.isfinite(weights[:, 2]).all()
    assert np.isnan(context[:, 0]).all() == (policy == "nan")  # the fully-masked row follows its policy


@pytest.mark.parametrize("policy", ["zero", "uniform", "nan"])
@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_nan_or_inf_score_makes_masked_softmax_row_nan(policy, bad):
    scores = jnp.zeros((M, N)).at[1, 3].set(bad)
    weights = masked_softmax(scores, VALID[0], fully_masked=policy)
    assert np.isnan(weights[1]).all()
    assert np.isfinite(weights[2]).all()


@pytest.mark.parametrize("name", ["query", "keys", "values"])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
@pytest.mark.parametrize("path", PATHS)
def test_integer_or_bool_inputs_are_rejected(path, name, dtype):
    args = dict(q=Q, h=H, v=V)
    key = {"query": "q", "keys": "h", "values": "v"}[name]
    args[key] = (args[key] > 0).astype(dtype)
    with pytest.raises(ValueError, match=rf"{name} must have a floating dtype .*got {jnp.dtype(dtype)}"):
        PATHS[path](args["q"], args["h"], args["v"])


def test_integer_inputs_are_rejected_by_softmax_and_context():
    with pytest.raises(ValueError, match=r"scores must have a floating dtype"):
        masked_softmax(jnp.ones((M, N), jnp.int32))
    with pytest.raises(ValueError, match=r"values must have a floating dtype"):
        attention_context(jnp.ones((M, N)), jnp.ones((N, DV), jnp.int32))


@pytest.mark.parametrize("path", PATHS)
def test_list_inputs_are_rejected_by_name(path):
    with pytest.raises(ValueError, match=r"query must be an array .*got list"):
        PATHS[path](np.asarray(Q).tolist(), H, V)


@pytest.mark.parametrize("path", PATHS)
def test_nan_policy_keeps_other_rows_gradients_finite(path):
    def loss(q, h, v):
        context, _ = PATHS[path](q, h, v, mask=VALID, fully_masked="nan")
        return jnp.sum(context[:, 1:])  # the loss leaves out the NaN (fully masked) row 0

    context, _ = PATHS[path](Q, H, V, mask=VALID, fully_masked="nan")
    assert np.isnan(context[:, 0]).all()
    for g in jax.grad(loss, argnums=(0, 1, 2))(Q, H, V):
        assert np.isfinite(g).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("masked", [False, True])
def test_empty_queries_give_empty_outputs(path, masked):
    mask = VALID[:, :0] if masked else None
    context, weights = PATHS[path](Q[:, :0], H, V, mask=mask)
    assert context.shape == (2, 0, DV) and weights.shape == (2, 0, N)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("masked", [False, True])
def test_no_keys_is_rejected_identically_by_both_paths(path, masked):
    mask = VALID[:, :, :0] if masked else None
    with pytest.raises(ValueError, match=r"keys has n = 0 positions .*attention needs n >= 1"):
        PATHS[path](Q, H[:, :0], V[:, :0], mask=mask)


def test_masked_softmax_over_no_position_is_empty():
    assert masked_softmax(jnp.zeros((M, 0)), jnp.zeros((M, 0), bool)).shape == (M, 0)
