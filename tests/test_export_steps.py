"""Without an accelerator: every task's data-parallel train and eval steps, as the library builds them
(`attn_jax.train.build_steps` from the task's experiment config), export for tpu and cuda: jit(shard_map)
and pmap over the 8 simulated CPU devices of tests/conftest.py, float32 and bfloat16 compute.

The configs are the tiny ones of experiments/configs/<task>.py with additive attention on its fused
kernel (implementation="auto") and 16x16 images. The tests read the lowered module: the batch is split
over the mesh axis "data" (the state replicated), and the attention carries that platform's kernel
(forward; the backward kernels too in the train step).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attn_jax.train import TASKS as REGISTERED_TASKS
from attn_jax.train import build_steps, parallel
from attn_jax.train.step import AXIS
from tests._train_models import TASKS, load_experiment_config, synthetic_batches, synthetic_meta

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


def export_config(task, dtype, mode):
    """The task's tiny experiment config: additive attention on the fused kernel, `dtype` compute."""
    c = load_experiment_config(task, "additive,tiny")
    c.model.attention_kwargs = {"implementation": "auto"}
    c.model.dtype, c.parallel = dtype, mode
    return c


def runner_and_batch(task, dtype, mode):
    """(the library's Runner of the task over the 8-device mesh, one global NumPy batch)."""
    config = export_config(task, dtype, mode)
    runner = build_steps(config, parallel.make_mesh(DEVICES), meta=synthetic_meta(task))
    (batch,) = synthetic_batches(
        task, 1, size=BATCH, max_boxes=config.detection.max_boxes if task == "detection" else 4
    )
    batch["valid"] = np.ones(BATCH, bool)  # eval batches say which examples are padding
    return runner, batch


def _spec(x, sharding=None):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def export_step(runner, batch, platform, which):
    """Export the runner's train or eval step for `platform`; returns the jax.export.Exported."""
    step = runner.train if which == "train" else runner.eval
    state = runner.abstract_state()
    if runner.mode == "shard_map":
        split = NamedSharding(runner.mesh, P(AXIS))
        args = (state, jax.tree.map(lambda x: _spec(x, split), batch))
    else:  # pmap: the state unplaced, the batch stacked (devices, per-device batch, ...)
        state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        args = (state, jax.tree.map(_spec, runner.batch(batch)))
        step = jax.jit(step)
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


def test_every_registered_task_is_exported():
    assert set(TASKS) == set(REGISTERED_TASKS)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("which", ["train", "eval"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_step_exports_with_batch_sharding_and_kernel(task, which, dtype, mode, platform):
    runner, batch = runner_and_batch(task, dtype, mode)
    exported = export_step(runner, batch, platform, which)
    text = exported.mlir_module()
    assert exported.nr_devices == DEVICES
    assert re.search(rf'sdy\.mesh @\w+ = <\["{AXIS}"={DEVICES}\]>', text), "no 8-device data mesh"
    if mode == "shard_map":  # the global batch arrives split on axis 0, the state replicated
        shardings = _arg_shardings(text)
        batch_in = {k: v for k, v in shardings.items() if k.startswith("batch")}
        state_in = {k: v for k, v in shardings.items() if k.startswith("state")}
        assert "batch['image']" in batch_in, batch_in
        assert all(v.startswith(f'[{{"{AXIS}"}}') for v in batch_in.values()), batch_in
        assert state_in and all('"' not in v for v in state_in.values()), state_in
    # inside, one manual computation per device: its batch inputs split on axis 0 (pmap: the stacked
    # device axis), the state inputs (listed first) replicated
    inputs = _manual_in_shardings(text)
    n_state = len(jax.tree.leaves(runner.abstract_state()))
    n_batch = sum(i >= n_state for i in exported.module_kept_var_idx)  # the batch arrays the step reads
    assert n_batch and all(v.startswith(f'[{{"{AXIS}"}}') for v in inputs[-n_batch:]), inputs[-n_batch:]
    assert inputs[:-n_batch] and all('"' not in v for v in inputs[:-n_batch]), inputs[:-n_batch]
    pattern, forward, backward = KERNELS[platform]
    names = set(re.findall(pattern, text))
    assert forward in names
    assert (backward <= names) == (which == "train"), names
    assert ("bf16" in text) == (dtype == "bfloat16")


def test_exported_bfloat16_step_runs_and_learns():
    """The classifier's bf16 train step, built by the library and exported for cpu, runs on the 8
    devices, keeps float32 parameters, and lowers the loss on a fixed batch like the float32 step
    (within 10 %) over five steps."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        runner, batch = runner_and_batch("classification", dtype, "shard_map")
        state, shards = runner.place(runner.init_state(0)), runner.batch(batch)
        exported = export.export(runner.train, platforms=["cpu"])(runner.abstract_state(), shards)
        history = []
        for _ in range(5):
            state, metrics = exported.call(state, shards)
            history.append(float(metrics["loss"] / metrics["count"]))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
        losses[dtype] = history
    f32, bf16 = losses["float32"], losses["bfloat16"]
    assert np.all(np.isfinite(bf16)) and bf16[-1] < bf16[0] and f32[-1] < f32[0]
    np.testing.assert_allclose(bf16, f32, rtol=0.1)
