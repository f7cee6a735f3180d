"""attn_jax.nn.conv: the matrix-product training pass of 3x3 convolutions equals XLA's convolution and its
gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from attn_jax.nn.conv import matmul_grad_conv

DN = ("NHWC", "HWIO", "NHWC")


def _grads(conv, x, w, cot, stride, padding):
    def loss(x, w):
        return jnp.sum(conv(x, w, stride, padding, dimension_numbers=DN) * cot)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)


PAD1 = ((1, 1), (1, 1))


@pytest.mark.parametrize("stride,hw,c,o", [(1, (8, 8), 3, 5), (2, (8, 8), 3, 5), (2, (7, 9), 24, 48),
                                           (1, (5, 3), 1, 2), (2, (1, 1), 2, 3)])  # fmt: skip
def test_matmul_grad_conv_equals_xla_up_to_rounding(stride, hw, c, o):
    k = jax.random.split(jax.random.key(4), 3)
    x, w = jax.random.normal(k[0], (2, *hw, c)), jax.random.normal(k[1], (3, 3, c, o))
    strides = (stride, stride)
    xla_out = lax.conv_general_dilated(x, w, strides, PAD1, dimension_numbers=DN)
    np.testing.assert_array_equal(matmul_grad_conv(x, w, strides, PAD1, dimension_numbers=DN), xla_out)
    trained_out = jax.vjp(lambda x: matmul_grad_conv(x, w, strides, PAD1, dimension_numbers=DN), x)[0]
    np.testing.assert_allclose(trained_out, xla_out, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(xla_out))))
    cot = jax.random.normal(k[2], xla_out.shape)
    ours = _grads(matmul_grad_conv, x, w, cot, strides, PAD1)
    xla = _grads(lax.conv_general_dilated, x, w, cot, strides, PAD1)
    if stride == 1:
        np.testing.assert_array_equal(ours[0], xla[0])  # the input gradient is XLA's own
    for mine, theirs in zip(ours, xla):  # stride 2: the input gradient is a product too
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(theirs))))


def _grad_hlo(conv, stride: int, argnum: int) -> str:
    """Lowered HLO of the gradient of sum(conv(x, w)) w.r.t. x (argnum 0) or w (1), 3x3 pad 1."""
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    loss = lambda x, w: jnp.sum(conv(x, w, (stride, stride), PAD1, dimension_numbers=DN))
    return jax.jit(jax.grad(loss, argnums=argnum)).lower(x, w).as_text()


@pytest.mark.parametrize("stride", [1, 2])
def test_matmul_grad_kernel_gradient_is_a_product_not_a_convolution(stride):
    xla = _grad_hlo(lax.conv_general_dilated, stride, 1)
    assert "convolution" in xla  # XLA: a kernel-gradient convolution
    ours = _grad_hlo(matmul_grad_conv, stride, 1)
    assert "convolution" not in ours and "dot_general" in ours


def test_matmul_grad_stride_2_input_gradient_is_a_product_not_a_dilated_convolution():
    xla = _grad_hlo(lax.conv_general_dilated, 2, 0)
    assert "lhs_dilate = [2, 2]" in xla  # XLA: an input-dilated convolution
    ours = _grad_hlo(matmul_grad_conv, 2, 0)
    assert "convolution" not in ours and "dot_general" in ours


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_matmul_grad_conv_lowered_for_an_accelerator_is_the_vendor_convolution(platform):
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    loss = lambda x, w: jnp.sum(matmul_grad_conv(x, w, (2, 2), PAD1, dimension_numbers=DN) ** 2)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
    exported = jax.export.export(grads, platforms=[platform])(x, w).mlir_module()
    assert "convolution" in exported and "dot_general" not in exported  # no patches, no products
    assert "convolution" not in grads.lower(x, w).as_text()  # CPU: the products


@pytest.mark.parametrize("stride,padding,precision", [((1, 1), "SAME", None), ((1, 2), PAD1, None),
                                                      ((1, 1), PAD1, lax.Precision.HIGHEST)])  # fmt: skip
def test_matmul_grad_other_convolutions_are_xla_s(stride, padding, precision):
    k = jax.random.split(jax.random.key(5), 3)
    x, w = jax.random.normal(k[0], (2, 8, 8, 3)), jax.random.normal(k[1], (3, 3, 3, 4))
    out = lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=DN)
    cot = jax.random.normal(k[2], out.shape)

    def grads(conv):
        loss = lambda x, w: jnp.sum(
            conv(x, w, stride, padding, dimension_numbers=DN, precision=precision) * cot
        )
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

    jax.tree.map(np.testing.assert_array_equal, grads(matmul_grad_conv), grads(lax.conv_general_dilated))


def _matmul_convs(net, x) -> int:
    """How many of `net`'s convs train through MatmulGradConv: custom_vjp calls in its training loss."""
    variables = net.init(jax.random.key(0), x)

    def loss(params):
        out, _ = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(out)

    return str(jax.make_jaxpr(loss)(variables["params"])).count("custom_vjp_call")


@pytest.mark.parametrize("choice, products", [(False, 0), ("none", 0), ("strided", 2), (True, 3), ("all", 3)])
def test_small_cnn_matmul_grad_choice_picks_the_convs(choice, products):
    from attn_jax.nn import SmallCNN

    x = jnp.ones((2, 16, 16, 1))
    assert _matmul_convs(SmallCNN((4, 8, 8), stride=4, matmul_grad=choice), x) == products  # 2 stride-2 convs


def test_main_job_classifier_trains_its_strided_convs_as_products():
    from attn_jax.train.builders import build_backbone
    from tests._train_models import load_experiment_config

    config = load_experiment_config("classification", "spatial")
    assert config.cpu.matmul_grad == "strided"
    assert _matmul_convs(build_backbone(config, bn_axis_name=None), jnp.ones((2, 64, 64, 1))) == 3


def test_small_cnn_rejects_an_unknown_matmul_grad():
    from attn_jax.nn import SmallCNN

    with pytest.raises(
        ValueError, match=r"matmul_grad must be one of \['none', 'strided', 'all'\] or a bool; got 'some'"
    ):
        SmallCNN((4, 8), stride=2, matmul_grad="some")


@pytest.mark.parametrize("choice", [True, "strided"])
def test_small_cnn_matmul_grad_same_model_and_gradients(choice):
    from attn_jax.nn import SmallCNN

    x = jax.random.normal(jax.random.key(6), (4, 16, 16, 1))
    nets = [SmallCNN((4, 8, 8), stride=4, matmul_grad=flag) for flag in ("none", choice)]
    variables = nets[0].init(jax.random.key(7), x)
    np.testing.assert_array_equal(nets[0].apply(variables, x), nets[1].apply(variables, x))  # evaluation

    def loss(params, net):
        out, _ = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(out * jnp.arange(out.size).reshape(out.shape) / out.size)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    for a, b in zip(
        jax.tree.leaves(grad(variables["params"], nets[0])),
        jax.tree.leaves(grad(variables["params"], nets[1])),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(a))))
    hlo = jax.jit(jax.grad(loss), static_argnums=1).lower(variables["params"], nets[1]).as_text()
    products = {True: 3, "strided": 2}[choice]
    assert hlo.count("dot_general") >= products * 2  # each such conv: a forward and a kernel-gradient product
