"""Every attention module in attn_jax.nn against its formula written out in NumPy (float64).

Inputs and parameters are random: the Flax variables are initialised, then every parameter is moved by
Gaussian noise (so zero-initialised ones such as the non-local W_z matter too). The references below use
only NumPy and the papers' formulas: squeeze-excite (Hu et al. 2018), CBAM's channel and spatial gates
(Woo et al. 2018), ECA's 1-D conv over channels with its adaptive kernel size (Wang et al. 2020), the
attention gate (Oktay et al. 2018), the embedded-Gaussian non-local block (Wang et al. 2018), the 1x1 conv
+ sigmoid spatial gate and additive attention pooling (Bahdanau et al. 2015, Xu et al. 2015).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.nn import create_attention

B, H, W, C = 2, 8, 8, 16
SEEDS = [0, 1]  # for each family; the variants below use the first
RTOL = 1e-5  # float32 against float64: relative to each array's largest magnitude (at least 1)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def relu(x):
    return np.maximum(x, 0.0)


def dense(x, p):
    """x @ kernel + bias for a Dense or 1x1 Conv parameter dict (kernel (..., C_in, C_out))."""
    kernel = p["kernel"].reshape(p["kernel"].shape[-2:])
    return x @ kernel + (p["bias"] if "bias" in p else 0.0)


def conv2d_same(x, kernel, bias):
    """Cross-correlation of x (B, H, W, C_in) with kernel (k, k, C_in, C_out), zero padding k // 2."""
    k = kernel.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = sum(
        xp[:, i : i + x.shape[1], j : j + x.shape[2]] @ kernel[i, j] for i in range(k) for j in range(k)
    )
    return out + bias


def pool2x2(x, reduce):
    """Non-overlapping 2x2 pooling of (B, H, W, C) with H, W even."""
    b, h, w, c = x.shape
    return reduce(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def ref_none(x, p, guide):
    return x, {"attention_map": np.ones(x.shape[:3])}


def ref_spatial(x, p, guide):
    a = sigmoid(dense(x, p["conv"]))  # (B, H, W, 1)
    return x * a, {"attention_map": a[..., 0]}


def ref_se(x, p, guide):
    squeezed = x.mean(axis=(1, 2))
    a = sigmoid(dense(relu(dense(squeezed, p["fc1"])), p["fc2"]))  # (B, C)
    return x * a[:, None, None, :], {"attention_map": a}


def ref_cbam(x, p, guide):
    mlp = lambda v: dense(relu(dense(v, p["fc1"])), p["fc2"])
    channel = sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
    x = x * channel[:, None, None, :]
    pooled = np.stack([x.mean(-1), x.max(-1)], -1)  # (B, H, W, 2): channel-wise mean and max
    spatial = sigmoid(conv2d_same(pooled, p["conv"]["kernel"], p["conv"]["bias"]))
    return x * spatial, {"attention_map": spatial[..., 0], "channel_map": channel}


def ref_eca(x, p, guide):
    kernel = p["conv"]["kernel"][:, 0, 0]  # (k,), no bias
    k = kernel.shape[0]
    s = np.pad(x.mean(axis=(1, 2)), ((0, 0), (k // 2, k // 2)))  # (B, C + k - 1)
    a = sigmoid(sum(kernel[t] * s[:, t : t + x.shape[-1]] for t in range(k)))  # 1-D conv along channels
    return x * a[:, None, None, :], {"attention_map": a}


def ref_gate(x, p, guide, upsample2x):
    g = pool2x2(x, np.mean) if guide is None else guide
    theta = dense(x, p["theta"])  # no bias
    phi = np.moveaxis(upsample2x(np.moveaxis(dense(g, p["phi"]), -1, 1)), 1, -1)  # to x's grid
    a = sigmoid(dense(relu(theta + phi), p["psi"]))
    return x * a, {"attention_map": a[..., 0]}


def ref_nonlocal(x, p, guide, subsample=False):
    b, h, w, c = x.shape
    theta = dense(x, p["theta"]).reshape(b, h * w, -1)
    phi, g = dense(x, p["phi"]), dense(x, p["g"])
    if subsample:
        phi, g = pool2x2(phi, np.max), pool2x2(g, np.max)
    phi, g = phi.reshape(b, -1, phi.shape[-1]), g.reshape(b, -1, g.shape[-1])
    f = softmax(theta @ phi.transpose(0, 2, 1))  # (B, n, n'): softmax_j theta_i . phi_j
    y = (f @ g).reshape(b, h, w, -1)
    return x + dense(y, p["w_z"]), {"attention_map": f}


def ref_additive(x, p, guide):
    b, h, w, c = x.shape
    query = p["query"] if guide is None else guide  # learned (m, C) or given (B, m, d_q)
    query = np.broadcast_to(query, (b,) + query.shape[-2:])
    keys = x.reshape(b, h * w, c)
    q = query @ p["w_q"] + p["bias"]  # (B, m, a)
    k = keys @ p["w_k"]  # (B, n, a)
    e = np.tanh(q[:, :, None, :] + k[:, None, :, :]) @ p["w_a"]  # (B, m, n)
    alpha = softmax(e)
    context = alpha @ keys  # (B, m, C)
    gate = (h * w) * alpha.mean(axis=1).reshape(b, h, w, 1)
    return x * gate, {"attention_map": alpha, "context": context}


def _run(name, x, seed, guide=None, **attrs):
    """Apply module `name` with randomly perturbed parameters -> (y, sown maps, params), all float64."""
    module = create_attention(name, **attrs)
    variables = module.init(jax.random.key(seed), jnp.asarray(x, jnp.float32), guide=guide)
    rng = np.random.default_rng(1000 + seed)
    params = jax.tree.map(
        lambda v: np.asarray(v, np.float32) + 0.5 * rng.standard_normal(v.shape).astype(np.float32),
        variables.get("params", {}),
    )
    y, state = module.apply({"params": params}, jnp.asarray(x, jnp.float32), guide=guide,
                            mutable=["intermediates"])  # fmt: skip
    maps = {k: np.asarray(v[0], np.float64) for k, v in state["intermediates"].items()}
    params64 = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    return np.asarray(y, np.float64), maps, params64


def _close(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    assert np.all(np.isfinite(want)), f"{what}: reference not finite"
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, equal_nan=False, err_msg=what)


def _check(name, seed, got, want):
    y, maps = got
    ref_y, ref_maps = want
    assert set(maps) == set(ref_maps), f"{name}, seed {seed}: sown {sorted(maps)}, want {sorted(ref_maps)}"
    for key, value in ref_maps.items():
        _close(maps[key], value, f"{name} {key}, seed {seed}")
    _close(y, ref_y, f"{name} output, seed {seed}")


def _x(seed, shape=(B, H, W, C)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(np.float64)


REFERENCES = {
    "none": ref_none,
    "spatial": ref_spatial,
    "se": ref_se,
    "cbam": ref_cbam,
    "eca": ref_eca,
    "nonlocal": ref_nonlocal,
    "additive": ref_additive,
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(REFERENCES))
def test_module_matches_numpy_reference(name, seed):
    x = _x(seed)
    y, maps, params = _run(name, x, seed)
    _check(name, seed, (y, maps), REFERENCES[name](x, params, None))


@pytest.mark.parametrize("seed", SEEDS[:1])
@pytest.mark.parametrize(
    "name, attrs",
    [("se", dict(reduction=2)), ("cbam", dict(reduction=2, kernel_size=3)), ("eca", dict(kernel_size=5))],
)
def test_module_attributes_match_numpy_reference(name, attrs, seed):
    x = _x(seed)
    y, maps, params = _run(name, x, seed, **attrs)
    if "reduction" in attrs:
        assert params["fc1"]["kernel"].shape == (C, C // attrs["reduction"]), f"{name} hidden size"
    _check(name, seed, (y, maps), REFERENCES[name](x, params, None))


@pytest.mark.parametrize("seed", SEEDS[:1])
def test_nonlocal_subsampled_matches_numpy_reference(seed):
    x = _x(seed)
    y, maps, params = _run("nonlocal", x, seed, subsample=True)
    assert maps["attention_map"].shape == (B, H * W, H * W // 4)
    _check("nonlocal subsample", seed, (y, maps), ref_nonlocal(x, params, None, subsample=True))


@pytest.mark.parametrize("seed", SEEDS[:1])
@pytest.mark.parametrize("with_guide", [False, True], ids=["self-gating", "guide"])
def test_attention_gate_matches_numpy_reference(seed, with_guide, upsample2x_bilinear):
    x = _x(seed)
    guide = _x(seed + 100, (B, H // 2, W // 2, 6)) if with_guide else None
    y, maps, params = _run("gate", x, seed, guide=None if guide is None else jnp.asarray(guide, jnp.float32))
    _check("gate", seed, (y, maps), ref_gate(x, params, guide, upsample2x_bilinear))


@pytest.mark.parametrize("seed", SEEDS[:1])
def test_additive_with_a_query_matches_numpy_reference(seed):
    x = _x(seed)
    query = _x(seed + 100, (B, 3, 5))  # (B, m, d_q): three queries of width 5
    y, maps, params = _run("additive", x, seed, guide=jnp.asarray(query, jnp.float32), attention_dim=7)
    assert maps["attention_map"].shape == (B, 3, H * W)
    _check("additive", seed, (y, maps), ref_additive(x, params, query))


@pytest.mark.parametrize("channels, k", [(8, 3), (16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5)])
def test_eca_adaptive_kernel_size(channels, k):
    # ECA-Net: k = |log2(C) / 2 + 1 / 2| rounded down to an integer, then up to the next odd one.
    x = jax.ShapeDtypeStruct((1, 1, 1, channels), jnp.float32)
    variables = jax.eval_shape(create_attention("eca").init, jax.random.key(0), x)
    assert variables["params"]["conv"]["kernel"].shape == (k, 1, 1), channels
