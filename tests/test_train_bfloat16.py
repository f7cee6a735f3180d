"""bfloat16 end to end on CPU: for every task, the tiny experiment config trained by the library loop with
config.model.dtype="bfloat16" (bf16 compute, float32 parameters) learns like the same run in float32.

Tolerances (the README's "bfloat16" paragraph states them): after STEPS steps on the tiny datasets, the
task's test metric (accuracy, AP50_voc, mIoU) within METRIC_ATOL of the float32 run's, and the last
logged train loss within LOSS_RTOL of it.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from attn_jax.train import loop
from attn_jax.train.tasks import get_task, make_task
from tests._train_models import TASKS, load_experiment_config, synthetic_meta

STEPS, LOG_EVERY = 48, 8
METRIC_ATOL, LOSS_RTOL = 0.02, 0.05


def bf16_config(task, dtype, data_dir):
    """The task's tiny config, `dtype` compute, lr 1e-2 so that 48 steps move the metrics."""
    c = load_experiment_config(task)
    c.data.dir, c.model.dtype = data_dir, dtype
    if task == "reading":
        c.reading.beam_width = 1  # the metric compared is greedy sequence accuracy: no beam to compile
    c.optim.lr, c.schedule.warmup_steps, c.num_train_steps = 1e-2, 2, STEPS
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = LOG_EVERY, 0, STEPS
    c.progress, c.tensorboard, c.png_examples = False, False, 0
    return c


@pytest.fixture(scope="module", params=TASKS)
def runs(request, data_dir, tmp_path_factory):
    """{dtype: (summary, train losses by logged step, final params)} of the task's two runs."""
    task, out = request.param, {}
    for dtype in ("float32", "bfloat16"):
        workdir = str(tmp_path_factory.mktemp(f"{task}_{dtype}"))
        summary = loop.train_and_evaluate(bf16_config(task, dtype, data_dir), workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
        losses = [r["loss"] for r in records if r["split"] == "train"]
        state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(STEPS), "state"))
        out[dtype] = (summary, losses, state["params"])
    return task, out


def test_bfloat16_run_trains_with_float32_parameters(runs):
    task, out = runs
    summary, losses, params = out["bfloat16"]
    assert summary["stop_reason"] == "done" and summary["step"] == STEPS
    assert len(losses) == STEPS // LOG_EVERY and np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    leaves = jax.tree.leaves(params)
    assert leaves and all(np.asarray(x).dtype == np.float32 for x in leaves)


def test_bfloat16_run_reaches_the_float32_metric(runs):
    task, out = runs
    metric = f"test_{get_task(task).best_metric}"
    (f32, f32_losses, _), (bf16, bf16_losses, _) = out["float32"], out["bfloat16"]
    assert abs(bf16[metric] - f32[metric]) <= METRIC_ATOL, (metric, bf16[metric], f32[metric])
    np.testing.assert_allclose(bf16_losses[-1], f32_losses[-1], rtol=LOSS_RTOL)


def _eqns(jaxpr):
    """All equations of a jaxpr, those of its sub-jaxprs (jit, custom_vjp ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _eqns(sub)


@pytest.mark.parametrize("task", TASKS)
def test_bfloat16_config_computes_in_bfloat16(task):
    """The model of a bf16 config has float32 parameters and runs every convolution and matmul on bf16
    operands; a float32 config on float32 ones. Additive attention's score reduction and weighted sum run
    in float32 by design (attn_jax.functional: its own precision tests), so products made there are left
    out (the reader's decoder calls it at every step)."""
    for dtype in ("float32", "bfloat16"):
        config = load_experiment_config(task)
        config.model.dtype = dtype
        model = make_task(config, synthetic_meta(task)).build_model(bn_axis_name=None)
        images = jnp.zeros((2, 16, 16, 1), jnp.float32)
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))
        jaxpr = jax.make_jaxpr(model.apply)(variables, images)
        ops = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name in ("conv_general_dilated", "dot_general")]
        ops = [e for e in ops if "attn_jax/functional/" not in str(e.source_info.traceback)]
        operand_dtypes = {v.aval.dtype for e in ops for v in e.invars}
        want = jnp.dtype(dtype)
        assert ops and operand_dtypes == {want}, operand_dtypes
