"""The fused Pallas kernel (interpret mode on CPU) equals the XLA path: outputs and every gradient."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_jax
from attn_jax.kernels.additive_pallas import make_config, pallas_additive_attention
from tests._kernel_problems import ARG_NAMES, close, loss_of, problem

CASES = {
    # lead dims, m, n, d_q, d_k, d_v, a, mask probability, blocks (q, k, a)
    "plain": ((2,), 4, 8, 3, 5, 6, 8, None, {}),
    # n = 11 keys in 3 splits of 2 blocks of 4: the last split sees only padding
    "ragged_masked_split": (
        (2,),
        5,
        11,
        3,
        4,
        6,
        7,
        0.6,
        {"block_q": 2, "block_k": 4, "block_a": 2, "key_splits": 3},
    ),
    # tiles >= 16 take the matmul path (smaller ones a broadcast sum)
    "matmul_tiles": ((1,), 16, 20, 3, 3, 16, 4, 0.9, {"block_k": 16}),
    "leading_dims_tiled": ((2, 3), 3, 6, 4, 4, 2, 5, 0.7, {"block_q": 2, "block_k": 4}),
}


@pytest.mark.parametrize(
    "case, return_weights",
    [(c, True) for c in CASES] + [("ragged_masked_split", False)],
    ids=list(CASES) + ["ragged_masked_split-context_only"],
)
def test_outputs_and_gradients_match_xla(case, return_weights):
    lead, m, n, d_q, d_k, d_v, a, mask_p, blocks = CASES[case]
    args, mask = problem(list(CASES).index(case), lead, m, n, d_q, d_k, d_v, a, mask_p)
    if mask is not None:
        mask = mask.at[(0,) * len(lead) + (1,)].set(False)  # one fully masked row ("zero" mode)
    kernel = lambda *a_, **k: pallas_additive_attention(*a_, **k, **blocks)
    ctx_k, w_k = kernel(*args[:3], w_q=args[3], w_k=args[4], w_a=args[5], bias=args[6], mask=mask)
    ctx_x, w_x = attn_jax.additive_attention(
        *args[:3], w_q=args[3], w_k=args[4], w_a=args[5], bias=args[6], mask=mask
    )
    assert ctx_k.shape == lead + (m, d_v) and w_k.shape == lead + (m, n)
    close(ctx_k, ctx_x, "context")
    close(w_k, w_x, "weights")
    grads_k = jax.grad(loss_of(kernel, mask, return_weights=return_weights), argnums=range(7))(*args)
    grads_x = jax.grad(
        loss_of(attn_jax.additive_attention, mask, return_weights=return_weights), argnums=range(7)
    )(*args)
    for name, g_k, g_x in zip(ARG_NAMES, grads_k, grads_x):
        assert np.all(np.isfinite(g_k)), name
        close(g_k, g_x, f"d{name}")


def test_defaults_broadcast_mask_and_jit():
    """values=None (keys), no bias, an (m, n) mask broadcast over the batch, under jit."""
    args, mask = problem(3, (3,), 4, 9, 5, 5, 5, 6, 0.5, mask_shape=(4, 9))
    q, h, _, w_q, w_k, w_a, _ = args
    fn = jax.jit(lambda q, h: pallas_additive_attention(q, h, w_q=w_q, w_k=w_k, w_a=w_a, mask=mask))
    ctx_k, w_k_ = fn(q, h)
    ctx_x, w_x = attn_jax.additive_attention(q, h, w_q=w_q, w_k=w_k, w_a=w_a, mask=mask)
    close(ctx_k, ctx_x, "context")
    close(w_k_, w_x, "weights")


@pytest.mark.parametrize("mode", ["zero", "uniform", "nan"])
def test_fully_masked_rows(mode):
    args, _ = problem(5, (2,), 3, 5, 2, 3, 4, 4)
    mask = jnp.ones((2, 3, 5), bool).at[1, 2].set(False).at[0, 0, :2].set(False)
    kw = dict(w_q=args[3], w_k=args[4], w_a=args[5], bias=args[6], mask=mask, fully_masked=mode)
    ctx_k, w_k = pallas_additive_attention(*args[:3], block_k=2, **kw)
    ctx_x, w_x = attn_jax.additive_attention(*args[:3], **kw)
    np.testing.assert_array_equal(np.isnan(ctx_k), np.isnan(ctx_x))
    assert np.isnan(ctx_k[1, 2]).all() == (mode == "nan")
    close(np.nan_to_num(ctx_k), np.nan_to_num(ctx_x), "context")
    close(np.nan_to_num(w_k), np.nan_to_num(w_x), "weights")
    if mode == "zero":
        assert np.all(w_k[1, 2] == 0) and np.all(ctx_k[1, 2] == 0)
        assert np.all(w_k[0, 0, :2] == 0)  # masked keys get exactly zero


def test_uniform_mode_gradient_reaches_values():
    args, _ = problem(6, (1,), 2, 4, 3, 3, 2, 4)
    mask = jnp.ones((1, 2, 4), bool).at[0, 1].set(False)
    loss_k = loss_of(pallas_additive_attention, mask, fully_masked="uniform")
    loss_x = loss_of(attn_jax.additive_attention, mask, fully_masked="uniform")
    for name, g_k, g_x in zip(
        ARG_NAMES, jax.grad(loss_k, range(7))(*args), jax.grad(loss_x, range(7))(*args)
    ):
        close(g_k, g_x, f"d{name}")


def test_bfloat16_inputs_give_bfloat16_outputs():
    args, mask = problem(7, (2,), 3, 6, 4, 4, 4, 8, 0.8)
    bf = [x.astype(jnp.bfloat16) for x in args]
    kw = dict(w_q=bf[3], w_k=bf[4], w_a=bf[5], bias=bf[6], mask=mask)
    ctx_k, w_k = pallas_additive_attention(*bf[:3], **kw)
    ctx_x, w_x = attn_jax.additive_attention(*bf[:3], **kw)
    assert ctx_k.dtype == jnp.bfloat16 and w_k.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(ctx_k), np.float32(ctx_x), atol=2e-2)
    np.testing.assert_allclose(np.float32(w_k), np.float32(w_x), atol=1e-2)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"query": (2, 3, 6)}, "query"),
        ({"w_k": (3, 8)}, "w_k"),
        ({"w_a": (7,)}, "w_a"),
        ({"values": (2, 5, 4)}, "values"),
        ({"mask": (3, 4)}, "mask"),
    ],
)
def test_bad_input_raises_value_error(change, match):
    shapes = {"query": (2, 3, 4), "keys": (2, 6, 5), "values": (2, 6, 4), "mask": (3, 6)}
    shapes.update({k: v for k, v in change.items() if k in shapes})
    weights = {"w_q": (4, 8), "w_k": (5, 8), "w_a": (8,)}
    weights.update({k: v for k, v in change.items() if k in weights})
    arrays = {k: jnp.ones(s) for k, s in {**shapes, **weights}.items()}
    arrays["mask"] = arrays["mask"].astype(bool)
    with pytest.raises(ValueError, match=match):
        pallas_additive_attention(
            arrays["query"], arrays["keys"], arrays["values"], w_q=arrays["w_q"], w_k=arrays["w_k"],
            w_a=arrays["w_a"], mask=arrays["mask"],
        )  # fmt: skip
    with pytest.raises(ValueError, match="fully_masked"):
        pallas_additive_attention(
            jnp.ones((3, 4)), jnp.ones((6, 5)), w_q=jnp.ones((4, 8)), w_k=jnp.ones((5, 8)),
            w_a=jnp.ones(8), fully_masked="ignore",
        )  # fmt: skip


def test_gpu_tiles_are_powers_of_two_and_cover_theproblem():
    """The Triton lowering needs power-of-two tiles (>= 16 keys); padding must cover m, n, a."""
    cfg = make_config(m=100, n=4097, a=200, d_v=24, has_mask=True, interpret=False)
    for tile in (cfg.bq, cfg.bk, cfg.ba, cfg.a_pad, cfg.dv_pad):
        assert tile & (tile - 1) == 0, cfg
    assert cfg.bq == 32 and cfg.bk >= 16 and cfg.dv_pad >= 24
    assert cfg.m_pad >= 100 and cfg.m_pad % cfg.bq == 0
    assert cfg.n_pad >= 4097 and cfg.n_pad % cfg.bk == 0
    assert cfg.a_pad >= 200 and cfg.a_pad % cfg.ba == 0
    small = make_config(m=5, n=11, a=7, d_v=6, has_mask=False, interpret=False, block_q=3, block_k=4)
    assert small.bq == 4 and small.bk == 16 and small.dv_pad == 8
    # one query row per example (W3: B=4, m=1, n=4096): keys are split to give the GPU enough programs
    decode = make_config(m=1, n=4096, a=256, d_v=256, has_mask=False, interpret=False, batch=4)
    assert decode.bq == 1 and decode.splits > 1 and decode.n_pad % (decode.bk * decode.splits) == 0
    assert decode.ba * decode.bq * decode.bk <= 4096


@pytest.mark.parametrize(
    "lead, m, n, masked, fast",
    [((2,), 5, 40, True, False), ((4,), 1, 300, False, True)],
    ids=["tiles_masked", "one_query_fast_tanh"],
)
def test_kernels_lower_to_triton_for_gpu(lead, m, n, masked, fast):
    """Without a GPU: the forward and both backward kernels lower through Pallas' Triton backend (the
    step before PTX compilation), for the matmul tiles and for the one-query (broadcast-sum) tiles."""
    from jax import export

    args, mask = problem(8, lead, m, n, 8, 8, 16, 12, 0.5 if masked else None)

    def loss(q, h, v, w_q, w_k, w_a, b):
        ctx, w = pallas_additive_attention(
            q, h, v, w_q=w_q, w_k=w_k, w_a=w_a, bias=b, mask=mask, interpret=False, return_weights=masked,
            fast_tanh=fast,
        )  # fmt: skip
        return jnp.sum(ctx) + (jnp.sum(w * w) if masked else 0.0)

    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    grad = jax.jit(jax.grad(loss, argnums=range(7)))
    exported = export.export(grad, platforms=["cuda"], disabled_checks=[triton])(*args)
    names = re.findall(r'xla\.gpu\.triton.*?name = "(\w+)"', exported.mlir_module())
    assert sorted(names) == ["additive_bwd_dk", "additive_bwd_dq", "additive_fwd"]
    assert ("tanh.approx.f32" in exported.mlir_module()) == fast
