"""Benchmark case builders for benchmarks/run.py: each returns (jitted fn, args) for harness.measure_case.

Attention implementations of the same formula (context only, no weights returned):
    naive      the straightforward jitted formula, materialising the (B, m, n, a) tanh tensor
    default    attn_jax.additive_attention with its default arguments (chunk_size="auto")
    unchunked  attn_jax.additive_attention(chunk_size=None) (XLA, unchunked)
    chunked    attn_jax.additive_attention(chunk_size=...) (XLA, online softmax, recomputing VJP)
    pallas     attn_jax.kernels.additive_pallas (fused kernel; Triton on GPU, interpret mode elsewhere)
    pallas_fast  the same with fast_tanh=True (GPU tanh.approx.f32)
    pallas_tpu   attn_jax.kernels.additive_tpu (fused kernel; Mosaic on TPU, interpret mode elsewhere)
mode "fwd" times the context; "fwdbwd" the gradient of sum(context * g) w.r.t. every input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# W1-W3 from issue 2; L is the large shape of issue 8. d = d_q = d_k = d_v. "chunk": the chunk size the
# chunked XLA path uses there (W1-W3 as tuned in benchmarks/attention.py).
SHAPES = {
    "W1": {"B": 64, "m": 1, "n": 196, "d": 512, "a": 512, "chunk": 28},
    "W2": {"B": 8, "m": 64, "n": 1024, "d": 256, "a": 128, "chunk": 16},
    "W3": {"B": 4, "m": 1, "n": 4096, "d": 256, "a": 256, "chunk": 1024},
    "L": {"B": 32, "m": 256, "n": 4096, "d": 256, "a": 256, "chunk": 16},
}
SWEEP = {"B": 8, "m": 64, "d": 128, "a": 128, "chunk": 16}  # time vs n, n from the runner
IMPLS = ("naive", "default", "unchunked", "chunked", "pallas", "pallas_fast", "pallas_tpu")


def shape_dims(shape, n: int | None = None) -> dict:
    """Named shape, the sweep shape with `n` keys when shape == 'sweep', or a dict of B, m, n, d, a."""
    if isinstance(shape, dict):
        return dict(shape)
    return dict(SWEEP, n=n) if shape == "sweep" else dict(SHAPES[shape])


def attention_counts(dims: dict, mode: str) -> dict:
    """Work of one call: matmul-like flops and tanh evaluations (backward recomputes tanh once).

    Forward flops: projections 2(m + n) d a, the w_a reduction 2 m n a, the context 2 m n d (per
    batch element); forward+backward counts 3x the flops and 2x the tanh.
    """
    b, m, n, d, a = (dims[k] for k in ("B", "m", "n", "d", "a"))
    flops = 2 * b * ((m + n) * d * a + m * n * a + m * n * d)
    tanh = b * m * n * a
    if mode == "fwdbwd":
        flops, tanh = 3 * flops, 2 * tanh
    return {"flops": flops, "tanh": tanh}


def _inputs(dims: dict, dtype: str, seed: int = 0):
    b, m, n, d, a = (dims[k] for k in ("B", "m", "n", "d", "a"))
    ks = jax.random.split(jax.random.key(seed), 7)
    dt = jnp.dtype(dtype)
    return (
        jax.random.normal(ks[0], (b, m, d), dt),
        jax.random.normal(ks[1], (b, n, d), dt),
        jax.random.normal(ks[2], (b, n, d), dt),
        (jax.random.normal(ks[3], (d, a)) / d**0.5).astype(dt),
        (jax.random.normal(ks[4], (d, a)) / d**0.5).astype(dt),
        jax.random.normal(ks[5], (a,), dt),
        (0.1 * jax.random.normal(ks[6], (a,))).astype(dt),
    )


def naive_formula(q, h, v, w_q, w_k, w_a, bias):
    """The additive formula written straight: e = w_a . tanh(qW_q + hW_k + b), softmax, alpha @ v."""
    hidden = jnp.tanh((q @ w_q)[:, :, None, :] + (h @ w_k)[:, None, :, :] + bias)
    scores = jnp.einsum("bmna,a->bmn", hidden, w_a).astype(jnp.float32)
    return jnp.einsum("bmn,bnd->bmd", jax.nn.softmax(scores, axis=-1).astype(v.dtype), v)


def attention_fn(impl: str, chunk_size: int = 16):
    """(q, h, v, w_q, w_k, w_a, bias) -> context for one implementation name."""
    if impl == "naive":
        return naive_formula
    if impl == "pallas_tpu":
        from attn_jax.kernels.additive_tpu import tpu_additive_attention as kernel
    elif impl.startswith("pallas"):
        from attn_jax.kernels.additive_pallas import pallas_additive_attention

        kernel = functools.partial(pallas_additive_attention, fast_tanh=impl == "pallas_fast")
    else:
        from attn_jax import additive_attention

        kernel = additive_attention
        if impl != "default":
            kernel = functools.partial(kernel, chunk_size=chunk_size if impl == "chunked" else None)

    def fn(q, h, v, w_q, w_k, w_a, bias):
        return kernel(q, h, v, w_q=w_q, w_k=w_k, w_a=w_a, bias=bias, return_weights=False)[0]

    return fn


def attention_case(shape="W2", impl="unchunked", mode="fwd", dtype="float32", n=None, chunk_size=None):
    """Builder: jitted forward or forward+backward of one implementation on one shape."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    dims = shape_dims(shape, n)
    args = _inputs(dims, dtype)
    fn = attention_fn(impl, chunk_size or dims.get("chunk", 16))
    if mode == "fwd":
        return jax.jit(fn), args
    cot = jax.random.normal(jax.random.key(9), args[0].shape[:2] + args[2].shape[-1:], args[0].dtype)

    def loss(*xs):
        return jnp.sum((fn(*xs) * cot).astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=tuple(range(7)))), args


def _classifier(attention: str):
    from attn_jax.models import AttentionClassifier
    from attn_jax.nn import SmallCNN

    return AttentionClassifier(
        SmallCNN(features=(32, 64, 128), stride=8), num_classes=10, attention=attention
    )


def _images(batch: int, image: int):
    k1, k2 = jax.random.split(jax.random.key(0))
    images = jax.random.normal(k1, (batch, image, image, 1), jnp.float32)
    labels = jax.random.randint(k2, (batch,), 0, 10)
    return images, labels


def model_forward_case(attention="additive", batch=64, image=64):
    """Builder: jitted inference forward of AttentionClassifier (SmallCNN backbone, 64x64x1 images)."""
    model = _classifier(attention)
    images, _ = _images(batch, image)
    variables = model.init(jax.random.key(1), images[:1], train=False)
    return jax.jit(lambda variables, x: model.apply(variables, x, train=False)), (variables, images)


def train_step_case(attention="additive", batch=64, image=64, devices=1):
    """Builder: the project's data-parallel train step (shard_map over `devices`), AdamW."""
    from attn_jax.train.optim import make_optimizer
    from attn_jax.train.parallel import make_mesh, replicate, shard_batch, shard_map_step
    from attn_jax.train.state import create_train_state
    from attn_jax.train.step import train_step
    from attn_jax.train.tasks.classification import classification_loss

    model = _classifier(attention)
    tx = make_optimizer("adamw", lr=1e-3, total_steps=1000)
    images, labels = _images(batch, image)
    mesh = make_mesh(devices)
    state = replicate(create_train_state(model, tx, jax.random.PRNGKey(0), images[:1]), mesh)
    batch_arrays = shard_batch({"image": images, "label": labels}, mesh)
    step_fn = functools.partial(train_step, model=model, tx=tx, loss_fn=classification_loss)
    step = shard_map_step(step_fn, mesh, donate=False)
    return step, (state, batch_arrays)
