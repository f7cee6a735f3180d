"""The Pallas TPU (Mosaic) kernel equals the XLA path: outputs and every gradient, ragged n and m,
several query / key / attention-dim blocks, masks, every fully-masked policy, bfloat16. On CPU it runs in
the Pallas TPU interpreter; on a TPU host (benchmarks/tpu_check.sh) the same tests compile it through
Mosaic. (Its lowering for TPU from a CPU host: tests/test_export_kernels.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_jax
from attn_jax.kernels.additive_tpu import make_tpu_config, tpu_additive_attention
from tests._kernel_problems import ARG_NAMES, close, loss_of, problem

CASES = {
    # lead dims, m, n, d_q, d_k, d_v, a, mask probability, tile overrides
    # no mask: the 120 padded keys (n = 8 in one 128-key block) are excluded by the ragged-n check alone
    "plain": ((2,), 4, 8, 3, 5, 6, 8, None, {}),
    # 3 query blocks (m = 20 in 8s), 3 key blocks (n = 300 in 128s, the last ragged), 3 chunks of a
    "ragged_masked_blocks": ((2,), 20, 300, 3, 4, 6, 20, 0.6, {"block_q": 8, "block_k": 128, "block_a": 8}),
    "leading_dims": ((2, 3), 3, 6, 4, 4, 2, 5, 0.7, {}),
}


ON_TPU = jax.default_backend() == "tpu"


def _kernel(**blocks):
    """The kernel: compiled on a TPU host (attention-dim chunks then must be 128 or all of a), else the
    TPU interpreter."""
    if ON_TPU:
        blocks.pop("block_a", None)
    return lambda *a, **k: tpu_additive_attention(*a, **k, interpret=None if ON_TPU else True, **blocks)


@pytest.mark.parametrize(
    "case, return_weights",
    [(c, True) for c in CASES] + [("ragged_masked_blocks", False)],
    ids=list(CASES) + ["ragged_masked_blocks-context_only"],
)
def test_outputs_and_gradients_match_xla(case, return_weights):
    lead, m, n, d_q, d_k, d_v, a, mask_p, blocks = CASES[case]
    args, mask = problem(10 + list(CASES).index(case), lead, m, n, d_q, d_k, d_v, a, mask_p)
    if mask is not None:
        mask = mask.at[(0,) * len(lead) + (1,)].set(False)  # one fully masked row ("zero" mode)
    kernel = _kernel(**blocks)
    kw = dict(w_q=args[3], w_k=args[4], w_a=args[5], bias=args[6], mask=mask)
    ctx_k, w_k = kernel(*args[:3], **kw)
    ctx_x, w_x = attn_jax.additive_attention(*args[:3], **kw)
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


def test_default_under_jit_with_broadcast_mask():
    """interpret=None: Mosaic on TPU, the generic Pallas interpreter elsewhere; here under jit with
    values=None, no bias and an (m, n) mask broadcast over the batch."""
    args, mask = problem(3, (3,), 4, 9, 5, 5, 5, 6, 0.5, mask_shape=(4, 9))
    q, h, _, w_q, w_k, w_a, _ = args
    fn = jax.jit(lambda q, h: tpu_additive_attention(q, h, w_q=w_q, w_k=w_k, w_a=w_a, mask=mask))
    ctx_k, w_k_ = fn(q, h)
    ctx_x, w_x = attn_jax.additive_attention(q, h, w_q=w_q, w_k=w_k, w_a=w_a, mask=mask)
    close(ctx_k, ctx_x, "context")
    close(w_k_, w_x, "weights")


@pytest.mark.parametrize("mode", ["zero", "uniform", "nan"])
def test_fully_masked_rows_and_gradients(mode):
    args, _ = problem(5, (2,), 3, 5, 2, 3, 4, 4)
    mask = jnp.ones((2, 3, 5), bool).at[1, 2].set(False).at[0, 0, :2].set(False)
    kw = dict(w_q=args[3], w_k=args[4], w_a=args[5], bias=args[6], mask=mask, fully_masked=mode)
    ctx_k, w_k = _kernel()(*args[:3], **kw)
    ctx_x, w_x = attn_jax.additive_attention(*args[:3], **kw)
    np.testing.assert_array_equal(np.isnan(ctx_k), np.isnan(ctx_x))
    assert np.isnan(ctx_k[1, 2]).all() == (mode == "nan")
    close(np.nan_to_num(ctx_k), np.nan_to_num(ctx_x), "context")
    close(np.nan_to_num(w_k), np.nan_to_num(w_x), "weights")
    if mode == "zero":
        assert np.all(w_k[1, 2] == 0) and np.all(ctx_k[1, 2] == 0)
        assert np.all(w_k[0, 0, :2] == 0)  # masked keys get exactly zero
    if mode == "nan":
        return  # a NaN row makes every gradient NaN, in both paths
    gk = jax.grad(loss_of(_kernel(), mask, fully_masked=mode), range(7))(*args)
    gx = jax.grad(loss_of(attn_jax.additive_attention, mask, fully_masked=mode), range(7))(*args)
    for name, g_k, g_x in zip(ARG_NAMES, gk, gx):
        close(g_k, g_x, f"d{name}")


def test_bfloat16_inputs_give_bfloat16_outputs_and_gradients():
    """bf16 values go to the MXU as bf16 (float32 accumulation): within bf16 rounding of the XLA path."""
    args, mask = problem(7, (2,), 9, 140, 4, 4, 4, 8, 0.8)
    bf = [x.astype(jnp.bfloat16) for x in args]
    kw = dict(w_q=bf[3], w_k=bf[4], w_a=bf[5], bias=bf[6], mask=mask)
    ctx_k, w_k = _kernel(block_k=128)(*bf[:3], **kw)
    ctx_x, w_x = attn_jax.additive_attention(*bf[:3], **kw)
    assert ctx_k.dtype == jnp.bfloat16 and w_k.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(ctx_k), np.float32(ctx_x), atol=2e-2)
    np.testing.assert_allclose(np.float32(w_k), np.float32(w_x), atol=1e-2)
    gk = jax.grad(loss_of(_kernel(block_k=128), mask), range(7))(*bf)
    gx = jax.grad(loss_of(attn_jax.additive_attention, mask), range(7))(*bf)
    for name, g_k, g_x in zip(ARG_NAMES, gk, gx):
        assert g_k.dtype == jnp.bfloat16, name
        scale = float(np.max(np.abs(np.float32(g_x))))
        np.testing.assert_allclose(np.float32(g_k), np.float32(g_x), atol=3e-2 * scale, err_msg=name)


def test_tiles_fit_the_8_by_128_layout():
    cfg = make_tpu_config(m=100, n=4097, a=200, d_v=24, has_mask=True, interpret=False)
    assert cfg.bq % 8 == 0 and cfg.bk % 128 == 0 and cfg.dv_pad % 128 == 0
    assert cfg.ac == 128 and cfg.a_pad == 256 and cfg.a_pad % cfg.ac == 0
    assert cfg.m_pad >= 100 and cfg.m_pad % cfg.bq == 0
    assert cfg.n_pad >= 4097 and cfg.n_pad % cfg.bk == 0
    one = make_tpu_config(m=1, n=50, a=7, d_v=6, has_mask=False, interpret=False)
    assert (one.bq, one.bk, one.ac, one.a_pad, one.m_pad, one.n_pad) == (8, 128, 8, 8, 8, 128)
    with pytest.raises(ValueError, match="block_k % 128"):
        make_tpu_config(m=8, n=64, a=8, d_v=8, has_mask=False, interpret=False, block_k=64)
    assert make_tpu_config(m=8, n=64, a=8, d_v=8, has_mask=False, interpret=True, block_k=64).bk == 64


def test_bad_input_raises_value_error():
    q, h = jnp.ones((2, 3, 4)), jnp.ones((2, 6, 5))
    with pytest.raises(ValueError, match="w_k"):
        tpu_additive_attention(q, h, w_q=jnp.ones((4, 8)), w_k=jnp.ones((3, 8)), w_a=jnp.ones(8))
    with pytest.raises(ValueError, match="fully_masked"):
        tpu_additive_attention(
            q, h, w_q=jnp.ones((4, 8)), w_k=jnp.ones((5, 8)), w_a=jnp.ones(8), fully_masked="ignore"
        )
