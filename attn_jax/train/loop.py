"""`train_and_evaluate(config, workdir)`: the one training loop of every task, with eval, checkpoints,
metrics.

data -> task model -> step (shard_map over the mesh, or pmap) -> metrics / checkpoints. Resumes
automatically from the latest finalised checkpoint in <workdir>/checkpoints; SIGTERM saves and returns
cleanly; a non-finite loss or parameter stops with NonFiniteLossError and no checkpoint of the bad state.
Pictures and other by-products come from `callbacks` run at the end (this package draws nothing).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from attn_jax.data import make_pipeline
from attn_jax.train import checkpoint as ckpt
from attn_jax.train.config import model_differences
from attn_jax.train.distributed import configure_cpu_devices, maybe_initialize
from attn_jax.train.preemption import SigtermFlag
from attn_jax.train.runner import Runner, build_steps
from attn_jax.train.tasks.base import jsonable
from attn_jax.train.workdir_lock import workdir_lock
from attn_jax.train.writers import MetricWriter, progress_bar


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or parameters; the last good checkpoint is left as it was."""


class RunEnd(NamedTuple):
    """What an end-of-run callback receives: the config, the workdir, the task, its model, the final state
    (replicated / on device), the runner (eval steps) and the summary so far."""

    config: Any
    workdir: str
    task: Any
    model: Any
    state: Any
    runner: Runner
    summary: dict


Callback = Callable[[RunEnd], "dict | None"]


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _summarize(task, pending: list) -> dict:
    """Step metrics since the last check -> host means (sums added, norms of the last step)."""
    host = jax.device_get(pending)
    keys = [k for k in host[0] if k not in ("grad_norm", "param_norm")]
    sums = {k: sum(np.asarray(m[k], np.float64) for m in host) for k in keys}
    out = task.train_metrics(sums)
    out.update(grad_norm=float(host[-1]["grad_norm"]), param_norm=float(host[-1]["param_norm"]))
    return out


def _check_finite(metrics: dict, step: int, manager) -> None:
    if all(math.isfinite(metrics[k]) for k in ("loss", "param_norm")):
        return
    manager.wait_until_finished()
    good = manager.latest_step()
    raise NonFiniteLossError(
        f"non-finite training loss or parameters by step {step} (loss={metrics['loss']}, "
        f"param_norm={metrics['param_norm']}); stopped without saving. Last good checkpoint: "
        f"{'none' if good is None else f'step {good}'} in {manager.directory}. Lower config.lr, set "
        f"config.clip_norm, or config.skip_nonfinite > 0."
    )


def evaluate(runner: Runner, state, config, split: str = "test") -> dict:
    """The task's eval metrics over `split` (one ordered epoch, padding excluded; the first
    config.eval_examples examples, rounded up to whole batches, when that is > 0)."""
    loader = make_pipeline(
        config.dataset,
        split,
        batch_size=config.eval_batch_size,
        train=False,
        data_dir=config.data_dir,
        num_devices=runner.mesh.size,
        **runner.task.pipeline_kwargs(),
    )
    evaluator, seen, limit = runner.task.evaluator(), 0, config.get("eval_examples", 0)
    for batch in loader:
        evaluator.add(*runner.eval_host(state, batch))
        seen += config.eval_batch_size
        if limit and seen >= limit:
            break
    return jsonable(evaluator.result())


def _init_state(config, runner, manager, iterator):
    """(state, step): the latest readable checkpoint (iterator moved to its position) or a fresh state."""
    state, step = ckpt.restore_latest(manager, runner.abstract_state(), iterator)
    if state is None:
        return runner.place(runner.init_state(config.seed)), 0
    print(f"resumed from checkpoint step {step} in {manager.directory}", flush=True)
    return runner.from_restored(state), int(step)


def _train(config, runner, state, start, iterator, manager, writer, sigterm):
    """Steps start..num_train_steps; returns (state, last eval metrics, stop reason)."""
    task, total, pending, last_eval = runner.task, config.num_train_steps, [], None
    bar = progress_bar(total, start, config.get("progress", True))
    every = lambda n, s: (n and s % n == 0) or s == total  # noqa: E731
    # A SIGTERM may reach only some processes: they agree every `preemption_check_every_steps` steps (a
    # tiny all-gather; every step with one process), then all save the same step and stop together.
    check_every = 1 if jax.process_count() == 1 else config.get("preemption_check_every_steps", 10)
    stop = False
    for step in range(start + 1, total + 1):
        state, metrics = runner.train(state, runner.batch(next(iterator)))
        pending.append(metrics)
        bar.update(1)
        if step % check_every == 0 or step == total:
            stop = any_process(sigterm.requested)
        save_now = every(config.checkpoint_every_steps, step) or stop
        is_eval = every(config.eval_every_steps, step)
        if every(config.log_every_steps, step) or save_now or is_eval:
            train_metrics = _summarize(task, pending)
            pending = []
            _check_finite(train_metrics, step, manager)
            writer.write(step, "train", train_metrics)
            bar.set_postfix({k: f"{v:.4f}" for k, v in train_metrics.items() if k in ("loss", "accuracy")})
        if is_eval:
            last_eval = evaluate(runner, state, config)
            writer.write(step, "test", last_eval)
            shown = ", ".join(f"{k} {last_eval[k]:.4f}" for k in task.headline if k in last_eval)
            bar.write(f"step {step}: test {shown}")
        if save_now:
            ckpt.save(manager, step, state, iterator, metrics=last_eval if is_eval else None)
        if stop:
            bar.close()
            return state, last_eval, "sigterm"
    bar.close()
    return state, last_eval, "done"


def setup(config, model=None) -> Runner:
    """Devices, dataset facts, task, model, optimizer and compiled steps of `config`. CPU devices and
    multi-host start-up come first: both must precede any JAX operation."""
    configure_cpu_devices(config.get("cpu_devices", 0))
    maybe_initialize(config.get("coordinator") or None)
    return build_steps(config, model=model)


def _manager(config, workdir, task, **kwargs):
    """The run's checkpoint manager (<workdir>/checkpoints), best-k by the task's eval metric."""
    return ckpt.make_manager(os.path.join(workdir, "checkpoints"), best_metric=task.best_metric, **kwargs)


def _save_config(config, workdir) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1) if hasattr(config, "to_json_best_effort") else "{}")


def train_and_evaluate(config, workdir: str, *, model=None, callbacks: Sequence[Callback] = ()) -> dict:
    """Train `config`'s task (config.task: classification, detection, segmentation) on its dataset,
    evaluating and checkpointing in `workdir`.

    Returns the summary also written to <workdir>/summary.json: final test metrics (test_<name>), steps,
    wall time, stop reason ("done" or "sigterm"). `model` overrides the config's model (tests, notebooks);
    its BatchNorm must average over the axis "data" for exact data parallelism. Each callback gets a
    RunEnd after a finished run; the dicts they return are added to the summary.
    """
    t0 = time.time()
    runner = setup(config, model)
    iterator = iter(
        make_pipeline(
            config.dataset,
            "train",
            batch_size=config.batch_size,
            train=True,
            seed=config.seed,
            data_dir=config.data_dir,
            num_devices=runner.mesh.size,
            augment=config.get("augment"),
            **runner.task.pipeline_kwargs(),
        )
    )
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir):  # a second run on this workdir fails at once (WorkdirInUseError)
        _save_config(config, workdir)
        manager = _manager(
            config, workdir, runner.task, keep_latest=config.keep_latest, keep_best=config.keep_best,
            async_save=config.get("async_checkpoints", True),
        )  # fmt: skip
        writer = MetricWriter(workdir, tensorboard=config.get("tensorboard", True))
        try:
            state, start = _init_state(config, runner, manager, iterator)
            train_start = time.time()
            with SigtermFlag() as sigterm:
                state, last_eval, reason = _train(
                    config, runner, state, start, iterator, manager, writer, sigterm
                )
            manager.wait_until_finished()
            train_s = time.time() - train_start
        finally:
            writer.close()
            manager.close()
    summary = {
        "workdir": os.path.abspath(workdir),
        "task": runner.task.name,
        "stop_reason": reason,
        "step": int(jax.device_get(state.step)),
        "resumed_from": start,
        "train_time_s": round(train_s, 2),
        "wall_time_s": round(time.time() - t0, 2),
        "devices": runner.mesh.size,
        "processes": jax.process_count(),
        "attention": config.model.get("attention"),
    }
    if reason == "done":
        summary.update({f"test_{k}": v for k, v in (last_eval or evaluate(runner, state, config)).items()})
        for callback in callbacks:
            summary.update(
                callback(RunEnd(config, workdir, runner.task, runner.model, state, runner, summary)) or {}
            )
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


class CheckpointMismatchError(ValueError):
    """The checkpoints of a workdir were written by another model or config than the one given."""


def check_run_config(config, workdir: str) -> None:
    """CheckpointMismatchError naming the model-defining fields where <workdir>/config.json (written by
    train_and_evaluate) and `config` differ; nothing when they agree or the run saved no config."""
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return
    diffs = model_differences(saved, config)
    if diffs:
        raise CheckpointMismatchError(
            f"the checkpoint in {os.path.join(workdir, 'checkpoints')} was written by a different "
            f"model/config ({'; '.join(diffs)}); give the run's config (saved in {path})"
        )


def evaluate_checkpoint(config, workdir: str, *, model=None, split: str = "test") -> dict:
    """Eval metrics of the latest readable checkpoint in <workdir>/checkpoints (any device count).

    CheckpointMismatchError when the run's saved config names another model (task, dataset, model.*) or
    when checkpoints exist but none restores into this config's train state; FileNotFoundError when
    there is no checkpoint."""
    if model is None:
        check_run_config(config, workdir)
    runner = setup(config, model)
    manager = _manager(config, workdir, runner.task, async_save=False, read_only=True)
    try:
        steps = list(manager.all_steps())
        state, step = _init_state(config, runner, manager, None)
    finally:
        manager.close()
    directory = os.path.join(workdir, "checkpoints")
    if step == 0 and steps:
        raise CheckpointMismatchError(
            f"none of the checkpoint steps {sorted(steps)} in {directory} restores into this config's model "
            "and optimizer state: written by a different model/config, or damaged (see the messages above)"
        )
    if step == 0:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    return {"step": step, "split": split, **evaluate(runner, state, config, split)}
