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


def _attend(path, q, h, v, w, **kw):
    """PATHS with the weights as an argument, and the TPU kernel."""
    if path == "dot_product":
        return dot_product_attention(q, h, v, **kw)
    if path == "tpu":
        from attn_jax.kernels.additive_tpu import tpu_additive_attention

        return tpu_additive_attention(q, h, v, **w, **kw)  # on CPU: the generic Pallas interpreter
    options = {"additive": {}, "chunked": dict(chunk_size=2), "pallas": dict(implementation="pallas")}[path]
    return additive_attention(q, h, v, **w, **options, **kw)


def _degenerate(case):
    """(query, keys, values, weights dict) of the small problem with one dimension 0."""
    q, h, v, w = Q, H, V, dict(W)
    if case == "B = 0":
        q, h, v = Q[:0], H[:0], V[:0]
    elif case == "d = 0":  # d_q = d_k = 0: every projection is 0, every score w_a . tanh(0)
        q, h, w["w_q"], w["w_k"] = Q[..., :0], H[..., :0], W["w_q"][:0], W["w_k"][:0]
    elif case == "a = 0":  # every score is an empty sum
        w = {k: x[..., :0] for k, x in W.items()}
    elif case == "d_v = 0":
        v = V[..., :0]
    elif case == "d = a = d_v = 0":  # the three at once (each alone is a separate case on the XLA paths)
        q, h, v = Q[..., :0], H[..., :0], V[..., :0]
        w = dict(w_q=W["w_q"][:0, :0], w_k=W["w_k"][:0, :0], w_a=W["w_a"][:0])
    return q, h, v, w


ONE_ZERO = ("B = 0", "d = 0", "a = 0", "d_v = 0")
DEGENERATE = [(path, case) for path in ("additive", "chunked") for case in ONE_ZERO]
DEGENERATE += [("dot_product", case) for case in ("B = 0", "d = 0", "d_v = 0")]
DEGENERATE += [(path, case) for path in ("pallas", "tpu") for case in ("B = 0", "d = a = d_v = 0")]


def _reference_numpy(q, h, v, w, mask, dot):
    """Float64 NumPy (context, weights) under "zero"; dot: scaled dot-product scores, else additive."""
    q, h, v = (np.asarray(x, np.float64) for x in (q, h, v))
    if dot:
        scores = q @ np.swapaxes(h, -1, -2) / (np.sqrt(q.shape[-1]) if q.shape[-1] else 1.0)
    else:
        w = {k: np.asarray(x, np.float64) for k, x in w.items()}
        pre = (q @ w["w_q"])[..., :, None, :] + (h @ w["w_k"])[..., None, :, :]
        scores = np.tanh(pre) @ w["w_a"]
    mask = np.broadcast_to(mask, scores.shape)
    ex = np.where(mask, np.exp(scores - scores.max(initial=0.0)), 0.0)  # small scores: no overflow
    weights = ex / np.maximum(ex.sum(-1, keepdims=True), 1e-300)  # a row without a valid key: 0
    return weights @ v, weights


@pytest.mark.parametrize("path, case", DEGENERATE)
def test_degenerate_shapes_give_the_formula_and_its_gradients(path, case):
    """A dimension 0 (no example; no query/key feature; no attention unit; no value feature) works on
    every path, forward and backward: an empty sum is 0 (d = 0: equal scores, weights uniform over the
    valid keys), and no output element means empty outputs and zero gradients."""
    q, h, v, w = _degenerate(case)
    mask = VALID[: q.shape[0]]

    def run(q, h, v, w):
        ctx, weights = _attend(path, q, h, v, w, mask=mask)
        return jnp.sum(jnp.sin(ctx)) + jnp.sum(weights * weights), (ctx, weights)

    grads, (ctx, weights) = jax.jit(jax.grad(run, argnums=(0, 1, 2, 3), has_aux=True))(q, h, v, w)
    want_ctx, want_w = _reference_numpy(q, h, v, w, mask, path == "dot_product")
    assert ctx.shape == want_ctx.shape and weights.shape == want_w.shape
    np.testing.assert_allclose(ctx, want_ctx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights, want_w, rtol=1e-5, atol=1e-6)
    for g, x in zip(jax.tree.leaves(grads), jax.tree.leaves((q, h, v, w))):
        assert g.shape == x.shape and np.isfinite(g).all()


def _problem(dtype):
    return [jnp.asarray(x, dtype) for x in (Q, H, V)], {k: jnp.asarray(x, dtype) for k, x in W.items()}


def test_float64_is_refused_by_the_float32_kernels():
    """The kernels compute in float32: float64 inputs are a ValueError naming the choice, not a float64
    result of float32 accuracy; implementation="xla" computes in float64."""
    from attn_jax.kernels.additive_pallas import pallas_additive_attention
    from attn_jax.kernels.additive_tpu import tpu_additive_attention

    with jax.enable_x64(True):
        (q, h, v), w = _problem(jnp.float64)
        with pytest.raises(ValueError, match=r"^implementation='pallas' computes in float32; got float64 "):
            additive_attention(q, h, v, **w, implementation="pallas")
        for kernel in (pallas_additive_attention, tpu_additive_attention):
            with pytest.raises(ValueError, match=rf"^{kernel.__name__} computes in float32; got float64"):
                kernel(q, h, v, **w)
        ctx, _ = additive_attention(q, h, v, **w, implementation="xla")
        want, _ = _reference_numpy(q, h, v, w, True, dot=False)
        assert ctx.dtype == jnp.float64
        np.testing.assert_allclose(ctx, want, rtol=1e-12, atol=1e-12)


def test_auto_keeps_float64_on_xla_where_it_would_pick_a_kernel():
    """implementation="auto" lowered for cuda picks the Triton kernel for float32 but XLA for float64."""
    from jax import export

    def lowered_for_cuda(dtype):
        (q, h, v), w = _problem(dtype)
        fn = jax.jit(lambda q, h, v: additive_attention(q, h, v, **w, implementation="auto")[0])
        triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
        return export.export(fn, platforms=["cuda"], disabled_checks=[triton])(q, h, v).mlir_module()

    assert "xla.gpu.triton" in lowered_for_cuda(jnp.float32)
    with jax.enable_x64(True):
        assert "xla.gpu.triton" not in lowered_for_cuda(jnp.float64)
