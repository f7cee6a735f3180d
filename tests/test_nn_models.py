"""attn_jax.nn registry and backbones, attn_jax.models: shapes, maps, jit, gradients, bf16."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.models import AttentionClassifier, AttentionDetector, AttentionSegmenter
from attn_jax.nn import (
    ATTENTION_REGISTRY,
    Decoder,
    ResNet18,
    ResNet34,
    ResNet50,
    SmallCNN,
    available_attention,
    create_attention,
)

NAMES = available_attention()
B, HW, C_IN = 2, 16, 1


def _images(seed=0, shape=(B, HW, HW, C_IN)):
    return jax.random.normal(jax.random.key(seed), shape)


def _map_shape(name, b, h, w, c):
    """The documented attention_map shape of each registry entry on a (b, h, w, c) input."""
    n = h * w
    return {
        "none": (b, h, w),
        "spatial": (b, h, w),
        "cbam": (b, h, w),
        "gate": (b, h, w),
        "se": (b, c),
        "eca": (b, c),
        "additive": (b, 1, n),
        "nonlocal": (b, n, n),
    }[name]


def _make(task, name, dtype=None):
    backbone = SmallCNN(features=(8, 16), stride=4, dtype=dtype)
    if task == "classifier":
        return AttentionClassifier(backbone, num_classes=5, attention=name, dtype=dtype)
    if task == "detector":
        return AttentionDetector(backbone, num_classes=5, num_anchors=3, attention=name, dtype=dtype)
    return AttentionSegmenter(
        backbone, Decoder((8, 8), dtype=dtype), num_classes=3, attention=name, dtype=dtype
    )


EXPECTED = {
    "classifier": lambda: (B, 5),
    "detector": lambda: ((B, 4, 4, 3, 5), (B, 4, 4, 3, 4)),
    "segmenter": lambda: (B, HW, HW, 3),
}


def test_registry_lists_every_entry_and_rejects_unknown_names():
    assert set(NAMES) == {"none", "spatial", "additive", "se", "cbam", "eca", "gate", "nonlocal"}
    assert set(ATTENTION_REGISTRY) == set(NAMES)
    with pytest.raises(ValueError, match="unknown attention 'bogus'.*additive.*spatial"):
        create_attention("bogus")
    with pytest.raises(ValueError, match="has no attribute"):
        create_attention("se", kernel_size=3)
    with pytest.raises(ValueError, match="unknown attention"):
        _make("classifier", "bogus").init(jax.random.key(0), _images())


@pytest.mark.parametrize("name", NAMES)
def test_attention_module_shapes_and_map(name):
    x = jax.random.normal(jax.random.key(1), (2, 6, 4, 8))
    module = create_attention(name)
    variables = jax.jit(module.init)(jax.random.key(0), x)
    y, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"]))(variables, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    (amap,) = state["intermediates"]["attention_map"]
    assert amap.shape == _map_shape(name, 2, 6, 4, 8)
    assert bool(jnp.all(jnp.isfinite(amap)))
    if name in ("additive", "nonlocal"):  # softmax rows
        np.testing.assert_allclose(amap.sum(-1), 1.0, rtol=1e-5)
    else:
        assert bool(jnp.all((amap >= 0) & (amap <= 1)))
    with pytest.raises(ValueError, match="x must have shape"):
        module.apply(variables, x[0])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("task", ["classifier", "detector", "segmenter"])
def test_model_shapes_jit_maps_and_grads(task, name):
    model = _make(task, name)
    images = _images()
    variables = jax.jit(model.init)(jax.random.key(0), images)

    def loss(params):
        v = {"params": params, "batch_stats": variables["batch_stats"]}
        out, state = model.apply(v, images, train=True, mutable=["batch_stats", "intermediates"])
        return sum(jnp.sum(o**2) for o in jax.tree.leaves(out)), (out, state["intermediates"])

    grads, (out, inter) = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    chex.assert_shape(out, EXPECTED[task]())
    chex.assert_tree_all_finite((out, grads))
    (amap,) = inter["attention"]["attention_map"]
    assert amap.shape == _map_shape(name, B, 4, 4, 16)
    if name != "none":  # the attention parameters get a gradient
        assert float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(grads["attention"]))) > 0


@pytest.mark.parametrize("task", ["classifier", "detector", "segmenter"])
def test_bf16_forward_close_to_fp32(task):
    images = _images(3)
    model32, model16 = _make(task, "spatial"), _make(task, "spatial", dtype=jnp.bfloat16)
    variables = model32.init(jax.random.key(0), images)
    out32 = jax.jit(model32.apply)(variables, images)  # train=False: running BatchNorm statistics
    out16 = jax.jit(model16.apply)(variables, images)  # same float32 params, bfloat16 compute
    for a, b in zip(jax.tree.leaves(out32), jax.tree.leaves(out16)):
        assert b.dtype == jnp.float32
        scale = float(jnp.max(jnp.abs(a)))
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.05 * scale + 1e-3)


def test_additive_pools_with_its_weights_and_accepts_a_query():
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 6))
    module = create_attention("additive", attention_dim=4)
    variables = module.init(jax.random.key(1), x)
    y, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"]))(variables, x)
    (context,) = state["intermediates"]["context"]
    (alpha,) = state["intermediates"]["attention_map"]
    expected = jnp.einsum("bmn,bnc->bmc", alpha, x.reshape(2, 15, 6))
    np.testing.assert_allclose(context, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jnp.mean(y, axis=(1, 2)), context[:, 0], rtol=1e-5, atol=1e-6)
    query = jax.random.normal(jax.random.key(2), (2, 3, 7))  # three given queries of size 7
    given = create_attention("additive", attention_dim=4)
    v2 = given.init(jax.random.key(1), x, guide=query)
    assert "query" not in v2["params"]
    _, state = given.apply(v2, x, guide=query, mutable=["intermediates"])
    assert state["intermediates"]["attention_map"][0].shape == (2, 3, 15)
    with pytest.raises(ValueError, match="guide"):
        given.apply(v2, x, guide=query[:1])
    with pytest.raises(ValueError, match="takes no guide"):
        create_attention("spatial").init(jax.random.key(0), x, guide=query)


def test_gate_uses_a_coarser_guide():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    g = jax.random.normal(jax.random.key(1), (2, 4, 4, 6))
    gate = create_attention("gate", inter_channels=3)
    variables = gate.init(jax.random.key(2), x, guide=g)
    y, state = gate.apply(variables, x, guide=g, mutable=["intermediates"])
    assert y.shape == x.shape and state["intermediates"]["attention_map"][0].shape == (2, 8, 8)
    assert variables["params"]["phi"]["kernel"].shape == (1, 1, 6, 3)


@pytest.mark.parametrize("stride", [4, 8])
def test_small_cnn_stride(stride):
    cnn = SmallCNN(features=(4, 8, 8), stride=stride)
    images = _images(shape=(1, 64, 64, 1))
    out = cnn.apply(cnn.init(jax.random.key(0), images), images)
    assert out.shape == (1, 64 // stride, 64 // stride, cnn.out_channels) and cnn.stride == stride
    with pytest.raises(ValueError, match="stride must be a power of 2"):
        SmallCNN(stride=3).init(jax.random.key(0), images)


@pytest.mark.parametrize(
    "ctor,channels,stride", [(ResNet18, 64, 32), (ResNet34, 64, 32), (ResNet50, 256, 32)]
)
def test_resnets_expose_channels_and_stride_and_update_batch_stats(ctor, channels, stride):
    net = ctor(num_filters=8)
    assert (net.out_channels, net.stride) == (channels, stride)
    images = _images(shape=(2, 32, 32, 3))
    variables = jax.eval_shape(net.init, jax.random.key(0), images)
    out = jax.eval_shape(lambda v, x: net.apply(v, x), variables, images)
    assert out.shape == (2, 1, 1, channels)
    small = ctor(num_filters=4, stem="small")
    assert small.stride == 8


def test_batchnorm_train_and_eval_modes():
    net = ResNet18(num_filters=4, stem="small", stage_sizes=(1, 1))
    images = _images(shape=(4, 8, 8, 3)) * 3 + 1
    variables = net.init(jax.random.key(0), images)
    _, updates = net.apply(variables, images, train=True, mutable=["batch_stats"])
    before, after = variables["batch_stats"]["bn_init"]["mean"], updates["batch_stats"]["bn_init"]["mean"]
    assert not np.allclose(before, after)
    assert net.apply(variables, images, train=False).shape == (4, 4, 4, net.out_channels)


def test_segmenter_resizes_to_input_resolution():
    model = AttentionSegmenter(SmallCNN((8, 8), stride=4), Decoder((8,)), num_classes=2)
    images = _images()
    out = model.apply(jax.jit(model.init)(jax.random.key(0), images), images)
    assert out.shape == (B, HW, HW, 2)
