"""A stride-2 3x3 convolution whose input gradient avoids XLA:CPU's slow input-dilated convolution.

    nn.Conv(width, (3, 3), (2, 2), padding=1, conv_general_dilated_cls=SubpixelGradConv)

The forward pass and the kernel gradient are exactly `lax.conv_general_dilated`'s. The input gradient of
a stride-2 convolution is a transposed convolution, which XLA lowers to a convolution over the output
gradient dilated with zeros (`lhs_dilate=2`); on CPU that runs on the generic Eigen path at ~4x the
useful work. Here it is computed as its four sub-pixel phases (Shi et al. 2016): input pixel (2j+p, 2k+q)
only receives kernel taps of one parity, so each phase is a stride-1 convolution of the output gradient
with a 1x1, 1x2, 2x1 or 2x2 slice of the kernel, and the phases are interleaved. Same sum, different
order: equal to XLA's gradient up to float32 rounding.

    nn.Conv(width, (3, 3), (s, s), padding=1, conv_general_dilated_cls=MatmulGradConv)

A 3x3 convolution (stride 1 or 2) whose training pass is a matrix product. Under differentiation the
forward concatenates the input's nine shifted (strided) views on the channel axis, the (B, Ho, Wo, 9C)
patches, and multiplies them by the kernel as a (9C, O) matrix. The kernel gradient is then one product,
patches^T @ output gradient, instead of XLA:CPU's kernel-gradient convolution, which first transposes
the input to put the batch innermost. For stride 2 the input gradient is a product too: output
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
# input phase p (row 2j+p) <- (kernel row, output-gradient row offset) pairs, for 3 taps, stride 2, pad 1
_TAPS = {0: ((1, 0),), 1: ((2, 0), (0, 1))}


def _conv(x, w, precision=None, stride: int = 2):
    return lax.conv_general_dilated(
        x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=_DN, precision=precision
    )


def _phase(g, w, p: int, q: int, precision):
    """Input-gradient phase (p, q): stride-1 correlation of g (B, Ho, Wo, O) with w taps: (B, Ho, Wo, C)."""
    rows, cols = _TAPS[p], _TAPS[q]
    k = jnp.stack([jnp.stack([w[a, b] for b, _ in cols]) for a, _ in rows])  # (kh, kw, C, O)
    k = jnp.swapaxes(k, 2, 3)  # correlate g with the transposed taps: (kh, kw, O, C)
    pad = ((0, len(rows) - 1), (0, len(cols) - 1))  # offsets 0 and +1: g[j], g[j + 1] (zero past the end)
    return lax.conv_general_dilated(g, k, (1, 1), pad, dimension_numbers=_DN, precision=precision)


@jax.custom_vjp
def _subpixel_conv(x, w, precision):
    return _conv(x, w, precision)


def _fwd(x, w, precision):
    return _conv(x, w, precision), (x, w, precision)


def _bwd(res, g):
    x, w, precision = res
    (dw,) = jax.vjp(lambda w: _conv(x, w, precision), w)[1](g)  # XLA's own kernel gradient
    b, h, wd, c = x.shape
    phases = [[_phase(g, w, p, q, precision) for q in (0, 1)] for p in (0, 1)]
    dx = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # (B, Ho, 2, Wo, 2, C)
    return dx.reshape(b, h, wd, c).astype(x.dtype), dw, None


_subpixel_conv.defvjp(_fwd, _bwd)


def subpixel_grad_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                       dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                       preferred_element_type=None):  # fmt: skip
    """Drop-in for `lax.conv_general_dilated`: the sub-pixel input gradient for NHWC 3x3 stride-2 pad-1
    convolutions of even-sized inputs, `lax.conv_general_dilated` itself for anything else."""
    simple = (
        tuple(window_strides) == (2, 2)
        and _plain_3x3_pad1(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                            feature_group_count, batch_group_count, preferred_element_type)
        and lhs.shape[1] % 2 == 0
        and lhs.shape[2] % 2 == 0
    )  # fmt: skip
    if simple:
        return _subpixel_conv(lhs, rhs, precision)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type,
    )  # fmt: skip


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


class SubpixelGradConv:
    """For flax's `nn.Conv(conv_general_dilated_cls=SubpixelGradConv)`: instances are `subpixel_grad_conv`."""

    def __call__(self, *args, **kwargs):
        return subpixel_grad_conv(*args, **kwargs)
