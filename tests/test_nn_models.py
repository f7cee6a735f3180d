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


def test_models_are_hashable_and_check_their_arguments():
    model = AttentionClassifier(
        SmallCNN([4, 8], stride=4), 3, attention="se", attention_kwargs={"reduction": 2}
    )
    assert hash(model) == hash(model.clone())  # usable as a static jit argument
    assert model.backbone.features == (4, 8)
    with pytest.raises(ValueError, match="images must have shape"):
        model.init(jax.random.key(0), jnp.zeros((16, 16, 1)))
    with pytest.raises(ValueError, match="num_anchors must be >= 1"):
        AttentionDetector(SmallCNN(), num_classes=3, num_anchors=0)
    with pytest.raises(ValueError, match="unknown attention 'bogus'"):
        AttentionSegmenter(SmallCNN(), Decoder(), 2, attention="bogus")


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
    y16 = jax.jit(create_attention(name, dtype=jnp.bfloat16).apply)(variables, x)  # bf16 compute
    assert y16.dtype == x.dtype
    np.testing.assert_allclose(np.asarray(y16), np.asarray(y), atol=0.05 * float(jnp.max(jnp.abs(y))))
    loss = lambda v, x: jnp.sum(module.apply(v, x) ** 2)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)
    chex.assert_tree_all_finite(grads)
    if name != "none":  # the attention parameters get a gradient
        assert float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(grads[0]))) > 0
    with pytest.raises(ValueError, match="x must have shape"):
        module.apply(variables, x[0])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("task", ["classifier", "detector", "segmenter"])
def test_model_output_and_map_shapes(task, name):
    model = _make(task, name)
    images = jax.ShapeDtypeStruct((B, HW, HW, C_IN), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    out, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]), variables, images)
    chex.assert_shape(out, EXPECTED[task]())
    assert all(o.dtype == jnp.float32 for o in jax.tree.leaves(out))
    (amap,) = state["intermediates"]["attention"]["attention_map"]
    assert amap.shape == _map_shape(name, B, 4, 4, 16)


def _loss_and_outputs(model, variables, images):
    """Jitted gradient of a sum-of-squares loss in train mode, with the outputs and maps as aux."""

    def loss(params):
        v = {"params": params, "batch_stats": variables["batch_stats"]}
        out, state = model.apply(v, images, train=True, mutable=["batch_stats", "intermediates"])
        return sum(jnp.sum(o**2) for o in jax.tree.leaves(out)), (out, state["intermediates"])

    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])


@pytest.mark.parametrize("task", ["classifier", "detector", "segmenter"])
def test_model_jit_grads_and_bf16(task):
    images = _images(3)
    model32, model16 = _make(task, "spatial"), _make(task, "spatial", dtype=jnp.bfloat16)
    variables = jax.jit(model32.init)(jax.random.key(0), images)
    grads, (out, inter) = _loss_and_outputs(model32, variables, images)
    chex.assert_tree_all_finite((out, grads))
    assert inter["attention"]["attention_map"][0].shape == (B, 4, 4)
    out32 = jax.jit(model32.apply)(variables, images)  # train=False: running BatchNorm statistics
    out16 = jax.jit(model16.apply)(variables, images)  # same float32 params, bfloat16 compute
    chex.assert_trees_all_equal_shapes(out32, out)
    for a, b in zip(jax.tree.leaves(out32), jax.tree.leaves(out16)):
        assert b.dtype == jnp.float32
        scale = float(jnp.max(jnp.abs(a)))
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.05 * scale + 1e-3)


def test_additive_pools_with_its_weights_and_accepts_a_query():
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 6))
    module = create_attention("additive", attention_dim=4)
    variables = jax.jit(module.init)(jax.random.key(1), x)
    y, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"]))(variables, x)
    (context,) = state["intermediates"]["context"]
    (alpha,) = state["intermediates"]["attention_map"]
    expected = jnp.einsum("bmn,bnc->bmc", alpha, x.reshape(2, 15, 6))
    np.testing.assert_allclose(context, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jnp.mean(y, axis=(1, 2)), context[:, 0], rtol=1e-5, atol=1e-6)
    chunked = create_attention("additive", attention_dim=4, chunk_size=4)  # same params, keys 4 at a time
    y_chunked = jax.jit(chunked.apply)(variables, x)
    np.testing.assert_allclose(y_chunked, y, rtol=1e-5, atol=1e-6)
    query = jax.random.normal(jax.random.key(2), (2, 3, 7))  # three given queries of size 7
    given = create_attention("additive", attention_dim=4)
    v2 = jax.eval_shape(lambda: given.init(jax.random.key(1), x, guide=query))
    assert "query" not in v2["params"]
    _, state = jax.eval_shape(lambda v: given.apply(v, x, guide=query, mutable=["intermediates"]), v2)
    assert state["intermediates"]["attention_map"][0].shape == (2, 3, 15)
    with pytest.raises(ValueError, match="guide"):
        given.apply(v2, x, guide=query[:1])
    with pytest.raises(ValueError, match="takes no guide"):
        create_attention("spatial").init(jax.random.key(0), x, guide=query)


def test_additive_module_chunks_large_grids_by_default_like_the_function(monkeypatch):
    # The module's default is the function's: chunk_size="auto" (chunked once the (B, m, n, a) tanh
    # tensor passes a few MiB), with the unchunked path's values.
    import attn_jax.nn.query as query_module

    seen = []
    original = query_module.additive_attention
    monkeypatch.setattr(
        query_module,
        "additive_attention",
        lambda *a, **kw: seen.append(kw["chunk_size"]) or original(*a, **kw),
    )
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 64))  # B*n*a = 8*1024*64 floats = 2 MiB ... x m=2
    module = create_attention("additive", num_queries=2)
    variables = jax.jit(module.init)(jax.random.key(1), x)
    y, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"]))(variables, x)
    unchunked = create_attention("additive", num_queries=2, chunk_size=None)
    y_whole, whole = jax.jit(lambda v, x: unchunked.apply(v, x, mutable=["intermediates"]))(variables, x)
    assert seen[0] == "auto" and seen[-1] is None
    from attn_jax.functional._auto import auto_chunk_size

    assert auto_chunk_size(8, 2, 1024, 96, jnp.float32) is not None  # this shape takes the chunked path
    np.testing.assert_allclose(y, y_whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        state["intermediates"]["attention_map"][0], whole["intermediates"]["attention_map"][0], atol=1e-7
    )


def test_gate_uses_a_coarser_guide():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    g = jax.random.normal(jax.random.key(1), (2, 4, 4, 6))
    gate = create_attention("gate", inter_channels=3)
    variables = jax.eval_shape(lambda: gate.init(jax.random.key(2), x, guide=g))
    y, state = jax.eval_shape(lambda v: gate.apply(v, x, guide=g, mutable=["intermediates"]), variables)
    assert y.shape == x.shape and state["intermediates"]["attention_map"][0].shape == (2, 8, 8)
    assert variables["params"]["phi"]["kernel"].shape == (1, 1, 6, 3)


@pytest.mark.parametrize("stride", [4, 8])
def test_small_cnn_stride(stride):
    cnn = SmallCNN(features=(4, 8, 8), stride=stride)
    images = jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32)
    out = jax.eval_shape(lambda x: cnn.apply(cnn.init(jax.random.key(0), x), x), images)
    assert out.shape == (1, 64 // stride, 64 // stride, cnn.out_channels) and cnn.stride == stride
    with pytest.raises(ValueError, match="stride must be a power of 2"):
        SmallCNN(stride=3).init(jax.random.key(0), images)


@pytest.mark.parametrize(
    "make, wanted",
    [
        (lambda: SmallCNN(features=("abc",)), r"SmallCNN features must be positive ints.*\('abc',\)"),
        (lambda: SmallCNN(features=(8, 0)), r"SmallCNN features must be positive ints.*\(8, 0\)"),
        (lambda: SmallCNN(features=()), r"SmallCNN features must be positive ints.*\(\)"),
        (lambda: SmallCNN(blocks_per_stage=0), "SmallCNN blocks_per_stage must be an int >= 1; got 0"),
        (lambda: Decoder(features=(16, 2.5)), r"Decoder features must be positive ints.*2\.5"),
    ],
)
def test_backbone_widths_and_depth_are_checked_when_built(make, wanted):
    with pytest.raises(ValueError, match=wanted):
        make()  # at construction, before any trace: blocks_per_stage=0 would otherwise build no conv at all


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


def _stem(variables, images):
    """The ResNet 'small' stem conv output (what bn_init normalises)."""
    kernel = variables["params"]["conv_init"]["kernel"]
    return jax.lax.conv_general_dilated(
        images, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def test_batchnorm_train_and_eval_modes():
    net = ResNet18(num_filters=4, stem="small", stage_sizes=(1, 1))
    images = _images(shape=(4, 8, 8, 3)) * 3 + 1
    variables = jax.jit(net.init)(jax.random.key(0), images)
    train_out, updates = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, images
    )
    before, after = variables["batch_stats"]["bn_init"]["mean"], updates["batch_stats"]["bn_init"]["mean"]
    np.testing.assert_allclose(
        after, 0.9 * before + 0.1 * jnp.mean(_stem(variables, images), axis=(0, 1, 2)), rtol=1e-4, atol=1e-5
    )
    eval_out = jax.jit(net.apply)(variables, images)  # running statistics: differs from batch statistics
    assert eval_out.shape == train_out.shape == (4, 4, 4, net.out_channels)
    assert not np.allclose(eval_out, train_out)


def test_segmenter_resizes_to_input_resolution():
    model = AttentionSegmenter(SmallCNN((8, 8), stride=4), Decoder((8,)), num_classes=2)
    images = jax.ShapeDtypeStruct((B, HW, HW, C_IN), jnp.float32)
    out = jax.eval_shape(lambda x: model.apply(model.init(jax.random.key(0), x), x), images)
    assert out.shape == (B, HW, HW, 2)
