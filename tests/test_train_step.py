"""Data-parallel train step of every task: exact gradients, and 1-device == shard_map == pmap after several
SGD and AdamW steps (classification, detection, segmentation), eval outputs independent of the device
count, the task step equal bit for bit to the classification step it replaced, and the main job's
matrix-product convolutions (model.matmul_grad="strided") training like XLA's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

from attn_jax.train import parallel, step
from attn_jax.train.optim import make_optimizer
from attn_jax.train.runner import build_steps
from attn_jax.train.state import create_train_state
from attn_jax.train.tasks import get_task
from attn_jax.train.tasks.classification import classification_eval_sums, classification_loss
from tests._train_models import TASKS, TinyNet, small_config, synthetic_batches, synthetic_meta

N_DEV = 8


def _batches(n, size=16, hw=12, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.normal(size=(size, hw, hw, 1)).astype(np.float32),
            "label": rng.integers(0, 10, size=(size,)).astype(np.int32),
        }
        for _ in range(n)
    ]


def _state(model, tx, batch):
    return create_train_state(model, tx, jax.random.PRNGKey(0), jnp.asarray(batch["image"][:2]))


def _run_shard_map(tx, batches, num_devices):
    model = TinyNet(bn_axis_name="data")
    mesh = parallel.make_mesh(num_devices)
    fn = parallel.shard_map_step(
        functools.partial(step.train_step, model=model, tx=tx, loss_fn=classification_loss), mesh
    )
    state = parallel.replicate(_state(model, tx, batches[0]), mesh)
    for b in batches:
        state, metrics = fn(state, parallel.shard_batch(b, mesh))
    return jax.device_get(state), jax.device_get(metrics)


def _run_pmap(tx, batches):
    model = TinyNet(bn_axis_name="data")
    fn = parallel.pmap_step(
        functools.partial(step.train_step, model=model, tx=tx, loss_fn=classification_loss)
    )
    state = _state(model, tx, batches[0])
    for b in batches:
        state, metrics = fn(state, parallel.split_for_pmap(b))
    return jax.device_get(state), jax.device_get(metrics)


def _assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_devices_are_simulated():
    assert jax.device_count() == N_DEV


def test_gradient_equals_single_device_full_batch_gradient():
    batch = _batches(1)[0]
    model_ref = TinyNet()  # BatchNorm over the whole batch, no axis
    tx = optax.sgd(1.0)  # params - new_params == gradient
    state = _state(model_ref, tx, batch)
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, 0), 0)
    ref_grads, (ref_stats, ref_sums) = jax.grad(step.loss_and_updates, has_aux=True)(
        state.params, state.batch_stats, batch, rng, model=model_ref, loss_fn=classification_loss
    )
    new_state, metrics = _run_shard_map(tx, [batch], N_DEV)
    grads = jax.tree.map(lambda p, q: p - q, jax.device_get(state.params), new_state.params)
    _assert_trees_close(grads, ref_grads, atol=1e-6)
    _assert_trees_close(new_state.batch_stats, ref_stats)
    assert metrics["count"] == 16
    np.testing.assert_allclose(metrics["loss"], ref_sums["loss"], rtol=1e-5)


def test_naive_pmean_under_shard_map_would_scale_the_gradient():
    """The trap the step avoids: grad w.r.t. an unvarying input is already summed by autodiff."""
    mesh = parallel.make_mesh(N_DEV)
    w, x = jnp.array([1.0, -2.0]), jnp.arange(16.0).reshape(8, 2)
    loss = lambda w, x: jnp.mean((x @ w) ** 2)
    naive = lambda w, x: lax.pmean(jax.grad(loss)(w, x), "data")
    fn = jax.jit(jax.shard_map(naive, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))
    got = fn(parallel.replicate(w, mesh), parallel.shard_batch({"x": np.asarray(x)}, mesh)["x"])
    np.testing.assert_allclose(got, N_DEV * jax.grad(loss)(w, x), rtol=1e-6)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_one_device_shard_map_and_pmap_agree_after_several_steps(opt):
    tx = make_optimizer(
        opt,
        lr=0.1 if opt == "sgd" else 1e-2,
        total_steps=10,
        warmup_steps=1,
        weight_decay=1e-4,
        clip_norm=10.0,
    )
    batches = _batches(4)
    one, m_one = _run_shard_map(tx, batches, 1)
    many, m_many = _run_shard_map(tx, batches, N_DEV)
    pm, m_pm = _run_pmap(tx, batches)
    assert int(one.step) == int(many.step) == int(pm.step) == 4
    for other in (many, pm):
        _assert_trees_close(other.params, one.params)
        _assert_trees_close(other.batch_stats, one.batch_stats)
    assert not np.allclose(
        jax.device_get(_state(TinyNet(), tx, batches[0]).params["Dense_0"]["kernel"]),
        one.params["Dense_0"]["kernel"],
    )
    for m in (m_many, m_pm):
        np.testing.assert_allclose(m["loss"], m_one["loss"], rtol=1e-5)
        assert m["correct"] == m_one["correct"]


def test_eval_step_ignores_padding():
    model = TinyNet(bn_axis_name="data")
    batch = _batches(1)[0]
    tx = optax.sgd(0.1)
    state = _state(model, tx, batch)
    mesh = parallel.make_mesh(N_DEV)
    fn = parallel.shard_map_eval(
        functools.partial(step.eval_step, model=model, outputs_fn=classification_eval_sums), mesh
    )
    valid = np.arange(16) < 11
    padded = dict(batch, valid=valid)
    got = jax.device_get(fn(parallel.replicate(state, mesh), parallel.shard_batch(padded, mesh)))
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch["image"][:11])
    want = _reference_sums(logits, batch["label"][:11])
    assert got["count"] == 11
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    assert got["correct"] == want["correct"]


def _reference_sums(logits, labels):
    """NumPy: summed cross-entropy and correct predictions of (B, K) logits."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    loss = -logp[np.arange(len(labels)), labels].sum()
    return {"loss": loss, "correct": float((logits.argmax(-1) == labels).sum())}


def test_shard_batch_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="divide"):
        parallel.shard_batch({"image": np.zeros((6, 2))}, parallel.make_mesh(N_DEV))


def test_unknown_optimizer_is_a_value_error():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lamb", lr=0.1, total_steps=10)


def _task_run(task, opt, batches, num_devices, parallel_mode="shard_map", eval_batch=None):
    """State, last metrics and eval result after training `batches` on `num_devices` devices."""
    config = small_config(task, opt, parallel=parallel_mode)
    runner = build_steps(config, parallel.make_mesh(num_devices), meta=synthetic_meta(task))
    state = runner.place(runner.init_state(0))
    for b in batches:
        state, metrics = runner.train(state, runner.batch(b))
    result = {}
    if eval_batch is not None:
        evaluator = runner.task.evaluator()
        evaluator.add(*runner.eval_host(state, eval_batch))
        result = evaluator.result()
    return jax.device_get(state), jax.device_get(metrics), result


@pytest.mark.parametrize(("task", "opt"), [(task, "sgd") for task in TASKS] + [("classification", "adamw")])
def test_every_task_agrees_on_one_device_four_device_shard_map_and_pmap(task, opt):
    """SGD shows a gradient scale error (e.g. a psum instead of a pmean, or a loss normalised per device:
    each task normalises its own loss, so every task), AdamW the optimizer state (the same optax code for
    every task: one task); eval metrics on a padded batch must not depend on the device count."""
    batches = synthetic_batches(task, 3)
    eval_batch = dict(synthetic_batches(task, 1, seed=5)[0], valid=np.arange(16) < 13)
    eval_batch = eval_batch if opt == "sgd" else None  # the eval step once per task is enough
    one = _task_run(task, opt, batches, 1, eval_batch=eval_batch)
    init = jax.device_get(
        build_steps(small_config(task, opt), parallel.make_mesh(1), meta=synthetic_meta(task)).init_state(0)
    )
    assert not np.allclose(jax.tree.leaves(init.params)[0], jax.tree.leaves(one[0].params)[0])
    for mode in ("shard_map", "pmap"):
        state, metrics, result = _task_run(task, opt, batches, 4, mode, eval_batch)
        assert int(state.step) == int(one[0].step) == 3
        _assert_trees_close(state.params, one[0].params, rtol=5e-5, atol=5e-6)
        _assert_trees_close(state.batch_stats, one[0].batch_stats, rtol=5e-5, atol=5e-6)
        _assert_trees_close(metrics, one[1], rtol=5e-5, atol=1e-5)
        for k, v in one[2].items():
            np.testing.assert_allclose(result[k], v, rtol=1e-4, atol=1e-5, err_msg=f"{task} {mode} eval {k}")


def _legacy_classification_loss(params, batch_stats, batch, rng, *, model, label_smoothing):
    """train_step's built-in loss before the tasks took it over, written out: mean smoothed cross-entropy
    of this device's examples, new batch_stats and the sums (loss, correct, count)."""
    logits, updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        batch["image"],
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": rng},
    )
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
    losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    w = jnp.ones_like(losses)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    sums = {"loss": jnp.sum(losses * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w)}
    return sums["loss"] / jnp.maximum(sums["count"], 1.0), (updates["batch_stats"], sums)


def _legacy_train_step(state, batch, *, model, tx, label_smoothing, axis_name="data"):
    """The classification train step as it was before the task interface (written out here)."""
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(axis_name))
    local_params = lax.pcast(state.params, axis_name, to="varying")
    grads, (batch_stats, sums) = jax.grad(_legacy_classification_loss, has_aux=True)(
        local_params, state.batch_stats, batch, rng, model=model, label_smoothing=label_smoothing
    )
    grads = lax.pmean(grads, axis_name)
    batch_stats = lax.pmean(batch_stats, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new, lax.psum(sums, axis_name)


def test_task_step_is_bitwise_the_classification_step_it_replaced():
    """The main job's numbers must not move: the task path (Runner, loss_fn=Classification.loss) gives
    exactly the parameters of the classification step with label smoothing that train_step once held
    (written out above)."""
    config = small_config("classification", "adamw", classification={"label_smoothing": 0.1})
    mesh = parallel.make_mesh(4)
    runner = build_steps(config, mesh, meta=synthetic_meta("classification"))
    legacy = parallel.shard_map_step(
        functools.partial(_legacy_train_step, model=runner.model, tx=runner.tx, label_smoothing=0.1), mesh
    )
    a = b = runner.place(runner.init_state(0))
    b = jax.tree.map(jnp.copy, b)
    for batch in synthetic_batches("classification", 3):
        a, _ = runner.train(a, runner.batch(batch))
        b, _ = legacy(b, parallel.shard_batch(batch, mesh))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_unknown_task_is_a_value_error_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'pose'; known: \['classification', 'detection'"):
        get_task("pose")


@pytest.mark.parametrize("num_devices", [1, 4])
def test_matmul_grad_strided_trains_like_xla_convolutions(num_devices):
    """The main job trains its stride-2 convs as matrix products (model.matmul_grad="strided"): through
    the runner (shard_map, BatchNorm over the device axis, AdamW) three steps land where XLA's
    convolutions do, up to float32 rounding."""

    def run(matmul_grad):
        config = small_config("classification", "adamw")
        config.cpu.matmul_grad = matmul_grad
        runner = build_steps(config, parallel.make_mesh(num_devices), meta=synthetic_meta("classification"))
        state = runner.place(runner.init_state(0))
        for batch in synthetic_batches("classification", 3):
            state, metrics = runner.train(state, runner.batch(batch))
        return jax.device_get(state), jax.device_get(metrics)

    products, xla = run("strided"), run("none")
    init = build_steps(
        small_config("classification"), parallel.make_mesh(1), meta=synthetic_meta("classification")
    )
    assert not np.allclose(jax.tree.leaves(init.init_state(0).params)[0], jax.tree.leaves(xla[0].params)[0])
    _assert_trees_close(products[0].params, xla[0].params, rtol=5e-5, atol=5e-6)
    _assert_trees_close(products[0].batch_stats, xla[0].batch_stats, rtol=5e-5, atol=5e-6)
    _assert_trees_close(products[1], xla[1], rtol=5e-5, atol=1e-5)
