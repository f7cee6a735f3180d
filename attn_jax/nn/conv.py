"""A 3x3 convolution whose training pass on XLA:CPU is a matrix product (the main job's strided convs).

    nn.Conv(width, (3, 3), (s, s), padding=1, conv_general_dilated_cls=MatmulGradConv)

A 3x3 convolution (stride 1 or 2) whose training pass is a matrix product. Under differentiation the
forward concatenates the input's nine shifted (strided) views on the channel axis, the (B, Ho, Wo, 9C)
patches, and multiplies them by the kernel as a (9C, O) matrix. The kernel gradient is then one product,
patches^T @ output gradient, instead of XLA:CPU's kernel-gradient convolution, which first transposes
the input to put the batch innermost (measurements: docs/cpu.md, benchmarks/results/cpu/
train_throughput_matmul_grad.json). For stride 2 the input gradient is a product too: output
gradient @ kernel^T gives the patches' gradient, (B·Ho·Wo, O) x (O, 9C), and the transpose of the nine
strided views adds it back onto the input (zero-interleaving pads and adds), instead of XLA's
input-dilated convolution. For stride 1 the input gradient is XLA's (a plain convolution). Without
differentiation (evaluation) the forward is `lax.conv_general_dilated` itself. All of this is for
XLA:CPU: a program lowered for GPU or TPU runs `lax.conv_general_dilated` (`lax.platform_dependent`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, precision=None, stride: int = 2):
    return lax.conv_general_dilated(
        x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=_DN, precision=precision
    )


def _patches(x, stride: int):
    """(B, H, W, C) -> (B, Ho, Wo, 9C): the 3x3 pad-1 windows, taps in the kernel's (kh, kw, c) order."""
    b, h, w, c = x.shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = [
        lax.slice(padded, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                  (1, stride, stride, 1))
        for i in range(3)
        for j in range(3)
    ]  # fmt: skip
    return jnp.concatenate(taps, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_grad_conv(x, w, stride: int):
    return _conv(x, w, None, stride)


def _matmul_fwd(x, w, stride: int):
    patches = _patches(x, stride)
    b, ho, wo, k = patches.shape
    y = (patches.reshape(-1, k) @ w.reshape(k, -1)).reshape(b, ho, wo, -1)
    return y, (patches, x, w)


def _matmul_bwd(stride: int, res, g):
    patches, x, w = res
    k, o = patches.shape[-1], g.shape[-1]
    dw = (g.reshape(-1, o).T @ patches.reshape(-1, k)).T.reshape(w.shape)
    if stride == 2:  # the patches' gradient, added back through the transpose of the strided views
        dpatches = (g.reshape(-1, o) @ w.reshape(k, o).T).reshape(patches.shape)
        (dx,) = jax.vjp(lambda x: _patches(x, stride), x)[1](dpatches)
    else:  # XLA's input gradient: a stride-1 convolution
        (dx,) = jax.vjp(lambda x: _conv(x, w, None, stride), x)[1](g)
    return dx, dw


_matmul_grad_conv.defvjp(_matmul_fwd, _matmul_bwd)


def matmul_grad_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                     preferred_element_type=None):  # fmt: skip
    """Drop-in for `lax.conv_general_dilated`: on CPU, the matrix-product training pass for NHWC 3x3 pad-1
    convolutions with equal strides of 1 or 2 and no precision request; XLA's convolution otherwise and
    on every other platform (chosen at lowering, `lax.platform_dependent`)."""
    strides = tuple(window_strides)
    simple = (
        strides in ((1, 1), (2, 2))
        and _plain_3x3_pad1(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                            feature_group_count, batch_group_count, preferred_element_type)
        and precision is None
    )  # fmt: skip
    xla = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type,
    )  # fmt: skip
    if not simple:
        return xla(lhs, rhs)
    # chosen when the program is lowered: the products on CPU, the vendor convolution on GPU / TPU
    return lax.platform_dependent(lhs, rhs, cpu=lambda x, w: _matmul_grad_conv(x, w, strides[0]), default=xla)


class MatmulGradConv:
    """For flax's `nn.Conv(conv_general_dilated_cls=MatmulGradConv)`: instances are `matmul_grad_conv`."""

    def __call__(self, *args, **kwargs):
        return matmul_grad_conv(*args, **kwargs)


def _plain_3x3_pad1(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                    batch_group_count, preferred_element_type) -> bool:  # fmt: skip
    """True for an NHWC 3x3 convolution padded 1 per side: no dilation, no groups, the input dtype out."""
    return (
        not isinstance(padding, str)
        and tuple(map(tuple, padding)) == ((1, 1), (1, 1))
        and rhs.shape[:2] == (3, 3)
        and lhs.ndim == 4
        and all(d in (None, (1, 1)) for d in (lhs_dilation, rhs_dilation))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and _is_nhwc(dimension_numbers)
    )


def _is_nhwc(dimension_numbers) -> bool:
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return dimension_numbers is not None and tuple(dimension_numbers) == _DN
