"""Without an accelerator: both fused kernels, forward and backward, lower for the platform they are
meant for when exported from this CPU host, and `implementation="auto"` / `"pallas"` pick the kernel
per lowering platform (Triton on cuda, Mosaic on tpu, XLA or the interpreter on cpu). The tests read
the lowered module, so a change that silently drops a kernel fails."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import attn_jax
from attn_jax.kernels.additive_pallas import pallas_additive_attention
from attn_jax.kernels.additive_tpu import tpu_additive_attention
from tests._kernel_problems import problem

TRITON = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
TPU_KERNELS = ["additive_tpu_bwd_dk", "additive_tpu_bwd_dq", "additive_tpu_fwd"]
GPU_KERNELS = ["additive_bwd_dk", "additive_bwd_dq", "additive_fwd"]


def kernels_in(text):
    """(Mosaic kernel names in tpu_custom_calls, Triton kernel names) of a lowered module."""
    tpu = re.findall(r'tpu_custom_call.*?kernel_name = "(\w+)"', text)
    gpu = re.findall(r'xla\.gpu\.triton.*?name = "(\w+)"', text)
    return sorted(tpu), sorted(gpu)


def _grad_fn(attention, mask, **kw):
    """jit(grad) of a loss over context and weights: the forward and both backward kernels."""

    def loss(q, h, v, w_q, w_k, w_a, b):
        ctx, w = attention(q, h, v, w_q=w_q, w_k=w_k, w_a=w_a, bias=b, mask=mask, **kw)
        return jnp.sum(ctx * ctx) + jnp.sum(w * w)

    return jax.jit(jax.grad(loss, argnums=range(7)))


def _export(fn, platforms, args):
    return export.export(fn, platforms=platforms, disabled_checks=[TRITON])(*args)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tpu_kernel_lowers_through_mosaic(dtype):
    """a = 130 (two 128-wide chunks of attention dims), n = 300 (ragged key blocks), a mask."""
    args, mask = problem(0, (2,), 20, 300, 8, 8, 16, 130, 0.7)
    args = tuple(x.astype(dtype) for x in args)
    text = _export(_grad_fn(tpu_additive_attention, mask), ["tpu"], args).mlir_module()
    assert kernels_in(text) == (TPU_KERNELS, [])


def test_gpu_kernel_lowers_through_triton_without_a_gpu_host():
    """interpret=None (the default): the export for cuda from this CPU host carries the Triton kernels
    (before per-platform dispatch it carried the interpreter: default_backend() was "cpu")."""
    args, mask = problem(1, (2,), 5, 40, 8, 8, 16, 12, 0.5)
    text = _export(_grad_fn(pallas_additive_attention, mask), ["cuda"], args).mlir_module()
    assert kernels_in(text) == ([], GPU_KERNELS)


@pytest.mark.parametrize("implementation", ["auto", "pallas"])
@pytest.mark.parametrize("platform", ["tpu", "cuda", "cpu"])
def test_dispatch_picks_the_kernel_of_the_lowering_platform(implementation, platform):
    args, mask = problem(2, (2,), 6, 40, 8, 8, 16, 12, 0.5)
    fn = _grad_fn(attn_jax.additive_attention, mask, implementation=implementation)
    text = _export(fn, [platform], args).mlir_module()
    want = {"tpu": (TPU_KERNELS, []), "cuda": ([], GPU_KERNELS), "cpu": ([], [])}[platform]
    assert kernels_in(text) == want
    if platform == "cpu":  # "pallas" interprets the Triton kernel: a loop over its grid; "auto" is XLA
        assert ("while" in text) == (implementation == "pallas")


def test_auto_exported_for_cpu_runs_the_xla_path():
    """The cpu export of "auto" runs here and gives the XLA gradients. (One module for several platforms
    at once is not possible with a kernel inside: a compiled pallas_call has no cpu lowering.)"""
    args, mask = problem(3, (2,), 6, 40, 8, 8, 16, 12, 0.5)
    fn = _grad_fn(attn_jax.additive_attention, mask, implementation="auto")
    exported = _export(fn, ["cpu"], args)
    want = _grad_fn(attn_jax.additive_attention, mask)(*args)
    for got, ref in zip(exported.call(*args), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
