"""Without an accelerator: the data-parallel train and eval steps (jit(shard_map) and pmap over the 8
simulated CPU devices of tests/conftest.py, float32 and bfloat16 models) export for tpu and cuda. The
tests read the lowered module: the batch is split over the mesh axis "data" (the state replicated), and
the model's additive attention (implementation="auto") carries that platform's fused kernel.

`export_step` takes a task: a model, per-device (train, eval) step functions and the batch, so that
other tasks' steps can be added to TASKS as they are written.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import export
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attn_jax.models import AttentionClassifier
from attn_jax.nn import SmallCNN
from attn_jax.train import parallel
from attn_jax.train.state import abstract_train_state, create_train_state
from attn_jax.train.step import AXIS, eval_step, train_step

DEVICES, BATCH = 8, 16
TRITON = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
KERNELS = {  # the kernel custom call of each platform: (pattern, forward name, backward names)
    "tpu": (
        r'tpu_custom_call.*?kernel_name = "(\w+)"',
        "additive_tpu_fwd",
        {"additive_tpu_bwd_dq", "additive_tpu_bwd_dk"},
    ),
    "cuda": (r'xla\.gpu\.triton.*?name = "(\w+)"', "additive_fwd", {"additive_bwd_dq", "additive_bwd_dk"}),
}


def classification_task(dtype):
    """(model, (train_fn, eval_fn) per device, batch of NumPy arrays) for the classifier."""
    backbone = SmallCNN(features=(8, 16), stride=4, dtype=dtype, bn_axis_name=AXIS)
    attention = {"implementation": "auto"}
    model = AttentionClassifier(backbone, 10, attention="additive", attention_kwargs=attention, dtype=dtype)
    tx = optax.sgd(0.1, momentum=0.9)
    steps = (functools.partial(train_step, model=model, tx=tx), functools.partial(eval_step, model=model))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(BATCH, 32, 32, 1)).astype(np.float32),
        "label": rng.integers(0, 10, BATCH).astype(np.int32),
    }
    return model, tx, steps, batch


TASKS = {"classification": classification_task}


def _spec(x, sharding=None):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def export_step(task, dtype, platform, mode, which):
    """Export one task's train or eval step, data-parallel by `mode` ("shard_map" | "pmap"), for
    `platform`; returns the jax.export.Exported."""
    model, tx, (train_fn, eval_fn), batch = TASKS[task](dtype)
    state = abstract_train_state(model, tx, batch["image"][:2])
    fn = train_fn if which == "train" else eval_fn
    if mode == "shard_map":
        mesh = parallel.make_mesh(DEVICES)
        replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
        step = (
            parallel.shard_map_step(fn, mesh, donate=False)
            if which == "train"
            else parallel.shard_map_eval(fn, mesh)
        )
        args = (
            jax.tree.map(lambda x: _spec(x, replicated), state),
            jax.tree.map(lambda x: _spec(x, split), batch),
        )
    else:
        pmapped = (
            parallel.pmap_step(fn) if which == "train" else jax.pmap(fn, axis_name=AXIS, in_axes=(None, 0))
        )
        step = jax.jit(pmapped)
        args = (jax.tree.map(_spec, state), jax.tree.map(_spec, parallel.split_for_pmap(batch, DEVICES)))
    return export.export(step, platforms=[platform], disabled_checks=[TRITON])(*args)


def _arg_shardings(text):
    """{argument location (e.g. "batch['image']"): sharding dims text} of the module's main function."""
    main = next(line for line in text.splitlines() if "func.func public @main" in line)
    pairs = re.findall(r'sdy\.sharding = #sdy\.sharding<@mesh, (\[[^>]*\])>\} loc\("([^"]+)"\)', main)
    return {loc: dims for dims, loc in pairs}


def _manual_in_shardings(text):
    """Sharding dims of each input of the module's (single) sdy.manual_computation."""
    (line,) = [line for line in text.splitlines() if "sdy.manual_computation(" in line]
    inputs = line.split("in_shardings=[", 1)[1].split("out_shardings=", 1)[0]
    return re.findall(r"<@mesh, (\[[^>]*\])>", inputs)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("which", ["train", "eval"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_step_exports_with_batch_sharding_and_kernel(task, which, dtype, platform, mode):
    exported = export_step(task, dtype, platform, mode, which)
    text = exported.mlir_module()
    assert exported.nr_devices == DEVICES
    assert re.search(rf'sdy\.mesh @\w+ = <\["{AXIS}"={DEVICES}\]>', text), "no 8-device data mesh"
    if mode == "shard_map":  # the global batch arrives split on axis 0, the state replicated
        shardings = _arg_shardings(text)
        batch = {k: v for k, v in shardings.items() if k.startswith("batch")}
        state = {k: v for k, v in shardings.items() if k.startswith("state")}
        assert batch and all(v.startswith(f'[{{"{AXIS}"}}') for v in batch.values()), batch
        assert state and all('"' not in v for v in state.values()), state
    # inside, one manual computation per device: its batch inputs split on axis 0 (pmap: the stacked
    # device axis), the state inputs (listed first) replicated
    inputs = _manual_in_shardings(text)
    n_batch = len(TASKS[task](dtype)[3])
    assert all(v.startswith(f'[{{"{AXIS}"}}') for v in inputs[-n_batch:]), inputs[-n_batch:]
    assert inputs[:-n_batch] and all('"' not in v for v in inputs[:-n_batch])
    pattern, forward, backward = KERNELS[platform]
    names = set(re.findall(pattern, text))
    assert forward in names
    assert (backward <= names) == (which == "train"), names
    assert ("bf16" in text) == (dtype == jnp.bfloat16)


def test_exported_bfloat16_step_runs_and_learns():
    """The bf16 train step exported for cpu runs on the 8 devices, keeps float32 parameters, and lowers
    the loss on a fixed batch like the float32 step (within 10 %) over five steps."""
    mesh = parallel.make_mesh(DEVICES)
    losses = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model, tx, (train_fn, _), batch = classification_task(dtype)
        state = parallel.replicate(
            create_train_state(model, tx, jax.random.PRNGKey(0), batch["image"][:2]), mesh
        )
        shards = parallel.shard_batch(batch, mesh)
        exported = export.export(parallel.shard_map_step(train_fn, mesh, donate=False), platforms=["cpu"])(
            state, shards
        )
        history = []
        for _ in range(5):
            state, metrics = exported.call(state, shards)
            history.append(float(metrics["loss"] / metrics["count"]))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
        losses[dtype] = history
    f32, bf16 = losses[jnp.float32], losses[jnp.bfloat16]
    assert np.all(np.isfinite(bf16)) and bf16[-1] < bf16[0] and f32[-1] < f32[0]
    np.testing.assert_allclose(bf16, f32, rtol=0.1)
