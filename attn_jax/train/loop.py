"""`train_and_evaluate(config, workdir)`: the one training loop of every task, with eval, checkpoints,
metrics. Read `train_and_evaluate` top to bottom: its sections are devices and workdir, task and compiled
steps, input pipeline, checkpoints and the state to start from, the training loop (`_train`), the final
evaluation and the end-of-run callbacks, the summary.

Resumes automatically from the latest verified checkpoint in <workdir>/checkpoints (a workdir holding a run of
another config is refused before anything is compiled; restart=True starts over); SIGTERM at any point saves,
verifies and returns cleanly; a full disk stops with DiskFullError (one line); a non-finite loss or parameter
stops with NonFiniteLossError and no checkpoint of the bad state; a step that never finishes stops the run
with status 75 (attn_jax.train.watchdog). Pictures and other by-products come from `callbacks` run at the
end (this package draws nothing).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils

from attn_jax.data import make_pipeline
from attn_jax.train import checkpoint as ckpt
from attn_jax.train.checkpoint import CheckpointMismatchError, DiskFullError
from attn_jax.train.distributed import configure_cpu_devices, maybe_initialize
from attn_jax.train.preemption import SigtermFlag
from attn_jax.train.runner import Runner, build_steps
from attn_jax.train.seed_summary import SEEDS_BLOCK, summarize_seeds
from attn_jax.train.seeds import SeedBatches, replica_seeds, seed_metrics, split_seeds, take_replica
from attn_jax.train.tasks.base import jsonable
from attn_jax.train.watchdog import StallWatchdog
from attn_jax.train.workdir import check_run_config, check_workdir_config, set_previous_run_aside
from attn_jax.train.workdir_lock import workdir_lock
from attn_jax.train.writers import MetricWriter, progress_bar

__all__ = [
    "CheckpointMismatchError",
    "NonFiniteLossError",
    "RunEnd",
    "any_process",
    "check_workdir_config",
    "evaluate",
    "evaluate_checkpoint",
    "setup",
    "train_and_evaluate",
]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf loss or parameters; raised before the bad state is saved, so the last
    good checkpoint is left as it was. A subclass of ``FloatingPointError``; its message names the step
    and the remedies (a lower ``config.optim.lr``, ``config.optim.clip_norm``,
    ``config.optim.skip_nonfinite``)."""


class RunEnd(NamedTuple):
    """What an end-of-run callback of :func:`attn_jax.train.train_and_evaluate` receives.

    Its fields, in order: ``config`` (the experiment config), ``workdir`` (the run directory), ``task``
    (the :class:`attn_jax.train.tasks.Task`), ``model`` (the task's Flax module), ``state`` (the final
    :class:`attn_jax.train.TrainState`, on the devices as the runner places it; with ``config.num_seeds``
    K > 1 the first replica's state, seed ``config.seed``, on the host), ``runner`` (the
    :class:`attn_jax.train.Runner`, for further eval steps) and ``summary`` (the run's summary dict so
    far, final test metrics included).
    """

    config: Any
    workdir: str
    task: Any
    model: Any
    state: Any
    runner: Runner
    summary: dict


Callback = Callable[[RunEnd], "dict | None"]


# Training seconds are measured with this clock (durations only; a test may replace it).
_now = time.monotonic


def train_and_evaluate(
    config, workdir: str, *, model=None, callbacks: Sequence[Callback] = (), restart: bool = False
) -> dict:
    """Train `config`'s task (config.task: classification, detection, segmentation) on its dataset,
    evaluating and checkpointing in `workdir`; resumes from the latest verified checkpoint there.

    Args:
      config: the experiment config (``experiments/configs/<task>.py``).
      workdir: the run directory; it holds ``checkpoints/``, ``config.json``, ``metrics.jsonl``, ``tb/``
        and ``summary.json``.
      model: overrides the config's model (tests, notebooks); its BatchNorm must average over the axis
        ``"data"`` for exact data parallelism.
      callbacks: each is called with a :class:`attn_jax.train.RunEnd` after a finished run; the dicts they
        return are added to the summary.
      restart: start over in a workdir that holds a run, whose files move to
        ``<workdir>/previous/<n>/`` first.

    Returns:
      The summary dict, also written to ``<workdir>/summary.json``. It holds the final test metrics
      (``test_<name>``), ``step``, ``resumed_from``, ``train_time_s`` (training time over all resumes),
      ``wall_time_s`` (of this call), ``devices``, ``processes`` and ``stop_reason``, which is ``"done"``
      or ``"sigterm"`` (SIGTERM at any point stops after the step in flight is saved and verified; run
      again to resume).

    Raises:
      CheckpointMismatchError: the workdir holds a run of another config (before anything is compiled or
        written), or its checkpoint does not restore into this config.
      WorkdirInUseError: another live run holds the workdir.
      DiskFullError: the disk filled up; one line naming the verified steps kept.
      NonFiniteLossError: the loss or parameters became NaN / Inf (the last good checkpoint is kept).
    """
    t0 = time.time()
    if not restart:
        check_workdir_config(config, workdir)  # another experiment's run: refused before anything starts
    with SigtermFlag() as sigterm, _disk_full_in_one_line(workdir):
        # ## Devices and the workdir, held by this run until training ends
        _start_devices(config)
        os.makedirs(workdir, exist_ok=True)
        with workdir_lock(workdir):  # a second run on this workdir fails at once (WorkdirInUseError)
            if restart:
                set_previous_run_aside(workdir)
                if jax.process_count() > 1:
                    multihost_utils.sync_global_devices("attn_jax_restart")

            # ## Task, model, optimizer and the compiled train / eval steps
            runner = build_steps(config, model=model)

            # ## Input pipeline: this process's share of each global batch, in its data seed's order; with K
            # seeds one pipeline per replica seed, their batches stacked on axis 1 (attn_jax.train.seeds)
            iterators = [
                iter(make_pipeline(
                    config.data.dataset, "train", batch_size=config.data.batch_size, train=True, seed=seed,
                    data_dir=config.data.dir, num_devices=runner.mesh.size, augment=config.data.augment,
                    **runner.task.pipeline_kwargs(),
                ))
                for seed in runner.seeds
            ]  # fmt: skip
            iterator = iterators[0] if len(iterators) == 1 else SeedBatches(iterators)
            _save_config(config, workdir)

            # ## Checkpoints, metric writers and the state to start from (the latest verified checkpoint)
            with _run_files(config, workdir, runner.task) as (manager, writer):
                state, start = _init_state(config, runner, manager, iterator)
                prior = float(manager.step_record(start).get("train_time_s") or 0.0) if start else 0.0
                train_start = _now()
                train_time = lambda: prior + _now() - train_start  # noqa: E731

                # ## Training: steps start+1 .. num_train_steps, logging, evaluating, saving
                state, last_eval, reason = _train(
                    config, runner, state, start, iterator, manager, writer, sigterm, train_time
                )
                manager.wait_until_finished()  # every saved step has its checksum from here on
                train_s = train_time()
        if reason == "done" and any_process(sigterm.requested):
            reason = "sigterm"  # after the last save: the run stops here; run again for the final eval

        # ## Final evaluation and the end-of-run callbacks (after a SIGTERM no further callback starts:
        # the summary says "sigterm" and the next run redoes them)
        summary = {
            "workdir": os.path.abspath(workdir),
            "task": runner.task.name,
            "stop_reason": reason,
            "step": int(np.max(jax.device_get(state.step))),  # (K,) equal steps with K seeds
            "resumed_from": start,
            "train_time_s": round(train_s, 2),
            "wall_time_s": round(time.time() - t0, 2),
            "devices": runner.mesh.size,
            "processes": jax.process_count(),
            "attention": config.model.attention,
        }
        if reason == "done":
            final = last_eval or evaluate(runner, state, config)
            summary.update({f"test_{k}": v for k, v in final.items() if "/" not in k})
            if len(runner.seeds) > 1:  # per-seed values, mean, std and 95% interval of each test metric
                per_seed = [{f"test_{k}": v for k, v in m.items()} for m in split_seeds(final, runner.seeds)]
                summary[SEEDS_BLOCK] = summarize_seeds(per_seed, runner.seeds)
            for callback in callbacks:
                if any_process(sigterm.requested):
                    summary["stop_reason"] = "sigterm"  # checkpoints are saved and verified; run again
                    break
                shown = state if len(runner.seeds) == 1 else take_replica(jax.device_get(state), 0)
                end = RunEnd(config, workdir, runner.task, runner.model, shown, runner, summary)
                summary.update(callback(end) or {})

        # ## The summary, <workdir>/summary.json
        summary["wall_time_s"] = round(time.time() - t0, 2)
        if jax.process_index() == 0:
            ckpt.write_text_atomically(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _train(config, runner, state, start, iterator, manager, writer, sigterm, train_time):
    """Steps start..num_train_steps; returns (state, last eval metrics, stop reason). train_time():
    training seconds so far over all resumes (saved with each checkpoint)."""
    task, total, pending, last_eval = runner.task, config.num_train_steps, [], None
    if any_process(sigterm.requested):  # SIGTERM while compiling / restoring: nothing new to save
        return state, None, "sigterm"
    bar = progress_bar(total, start, config.progress)
    every = lambda n, s: (n and s % n == 0) or s == total  # noqa: E731
    # A SIGTERM may reach only some processes: they agree every `preemption_check_every_steps` steps (a
    # tiny all-gather; every step with one process), then all save the same step and stop together.
    check_every = 1 if jax.process_count() == 1 else config.preemption_check_every_steps
    stop = False
    # a step that never finishes (a CPU device stuck before an all-reduce) ends the run cleanly with
    # EXIT_STALLED and the checkpoints intact; armed once the first step has compiled
    watchdog = StallWatchdog(config.stall_timeout_s, lambda: _stall_note(manager))
    try:
        for step in range(start + 1, total + 1):
            state, metrics = runner.train(state, runner.batch(next(iterator)))
            watchdog.start()  # the first call arms it, later ones only record progress
            pending.append(metrics)
            bar.update(1)
            manager.checksum_finished_saves()  # a finished background save gets its checksum now
            if step % check_every == 0 or step == total:
                stop = any_process(sigterm.requested)
            save_now = every(config.checkpoint_every_steps, step) or stop
            is_eval = every(config.eval_every_steps, step)
            if every(config.log_every_steps, step) or save_now or is_eval:
                train_metrics = _summarize(task, pending, runner.seeds)
                pending = []
                _check_finite(train_metrics, step, manager)
                writer.write(step, "train", train_metrics)
                bar.set_postfix(
                    {k: f"{v:.4f}" for k, v in train_metrics.items() if k in ("loss", "accuracy")}
                )
            if is_eval:
                last_eval = evaluate(runner, state, config, on_batch=watchdog.beat)
                writer.write(step, "test", last_eval)
                shown = ", ".join(f"{k} {last_eval[k]:.4f}" for k in task.headline if k in last_eval)
                bar.write(f"step {step}: test {shown}")
            if save_now:
                metrics = last_eval if is_eval else None
                ckpt.save(
                    manager, step, state, iterator, metrics=metrics, train_time_s=round(train_time(), 3)
                )
            if stop:
                bar.close()
                return state, last_eval, "sigterm"
    finally:
        watchdog.stop()
    bar.close()
    return state, last_eval, "done"


def _init_state(config, runner, manager, iterator):
    """(state, step): the latest verified checkpoint (iterator moved to its position) or a fresh state."""
    state, step = ckpt.restore_latest(manager, runner.abstract_state(), iterator)
    if state is None:
        return runner.place(runner.init_state(config.seed)), 0
    print(f"resumed from checkpoint step {step} in {manager.directory}", flush=True)
    return runner.from_restored(state), int(step)


def _summarize(task, pending: list, seeds: list[int]) -> dict:
    """Step metrics since the last check -> host means (sums added, norms of the last step); with K seeds
    each replica's (``seed<s>/<name>``) and their mean (attn_jax.train.seeds.seed_metrics)."""
    host = jax.device_get(pending)
    keys = [k for k in host[0] if k not in ("grad_norm", "param_norm")]
    sums = {k: sum(np.asarray(m[k], np.float64) for m in host) for k in keys}
    norms = {k: np.asarray(host[-1][k], np.float64) for k in ("grad_norm", "param_norm")}
    per_seed = []
    for i in range(len(seeds)):
        pick = (lambda x: x) if len(seeds) == 1 else (lambda x, i=i: x[i])  # noqa: E731
        out = task.train_metrics({k: pick(v) for k, v in sums.items()})
        out.update({k: float(pick(v)) for k, v in norms.items()})
        per_seed.append(out)
    return seed_metrics(per_seed, seeds)


def _check_finite(metrics: dict, step: int, manager) -> None:
    if all(math.isfinite(metrics[k]) for k in ("loss", "param_norm")):
        return
    manager.wait_until_finished()
    good = manager.latest_step()
    raise NonFiniteLossError(
        f"non-finite training loss or parameters by step {step} (loss={metrics['loss']}, "
        f"param_norm={metrics['param_norm']}); stopped without saving. Last good checkpoint: "
        f"{'none' if good is None else f'step {good}'} in {manager.directory}. Lower config.optim.lr, set "
        f"config.optim.clip_norm, or config.optim.skip_nonfinite > 0."
    )


def evaluate(runner: Runner, state, config, split: str = "test", *, on_batch=None) -> dict:
    """The task's eval metrics over one ordered epoch of a dataset split.

    Args:
      runner: the :class:`attn_jax.train.Runner` of the config (its eval step and task).
      state: the train state as :meth:`attn_jax.train.Runner.place` gives it.
      config: the experiment config (``dataset``, ``data_dir``, ``eval_batch_size`` and
        ``eval_examples``: when > 0, only the first that many examples, rounded up to whole batches).
      split: the dataset split to evaluate (default ``"test"``).
      on_batch: called with no arguments after each evaluated batch (the loop passes its stall watchdog's
        ``beat``: a long evaluation that makes progress is no stall); None for nothing.

    Returns:
      A JSON-friendly dict of the task's eval metrics (e.g. ``loss`` and ``accuracy`` for
      classification); padding examples count for nothing. With ``config.num_seeds`` K > 1: each
      replica's metrics under ``seed<s>/<name>`` and each scalar metric's mean over the replicas under
      its own name.
    """
    loader = make_pipeline(
        config.data.dataset,
        split,
        batch_size=config.data.eval_batch_size,
        train=False,
        data_dir=config.data.dir,
        num_devices=runner.mesh.size,
        **runner.task.pipeline_kwargs(),
    )
    evaluators, seen, limit = [runner.task.evaluator() for _ in runner.seeds], 0, config.data.eval_examples
    for batch in loader:
        sums, per_example = runner.eval_host(state, batch)
        if len(evaluators) == 1:
            evaluators[0].add(sums, per_example)
        else:  # K seeds: sums (K, ...), per-example outputs (b, K, ...)
            for i, evaluator in enumerate(evaluators):
                evaluator.add(take_replica(sums, i), jax.tree.map(lambda x, i=i: x[:, i], per_example))
        seen += config.data.eval_batch_size
        if on_batch is not None:
            on_batch()
        if limit and seen >= limit:
            break
    return seed_metrics([jsonable(e.result()) for e in evaluators], runner.seeds)


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def setup(config, model=None) -> Runner:
    """Devices, dataset facts, task, model, optimizer and compiled steps of `config`. CPU devices and
    multi-host start-up come first: both must precede any JAX operation."""
    _start_devices(config)
    return build_steps(config, model=model)


def _start_devices(config) -> None:
    configure_cpu_devices(config.cpu.devices)
    maybe_initialize(config.coordinator or None)


def _manager(config, workdir, task, **kwargs):
    """The run's checkpoint manager (<workdir>/checkpoints), best-k by the task's eval metric (steps saved
    before metrics went into their metadata are ranked by <workdir>/metrics.jsonl)."""
    return ckpt.make_manager(
        os.path.join(workdir, "checkpoints"),
        best_metric=task.best_metric,
        metrics_log=os.path.join(workdir, "metrics.jsonl"),
        **kwargs,
    )


def _save_config(config, workdir) -> None:
    if jax.process_index() == 0:
        text = config.to_json_best_effort(indent=1) if hasattr(config, "to_json_best_effort") else "{}"
        ckpt.write_text_atomically(os.path.join(workdir, "config.json"), text)


@contextlib.contextmanager
def _run_files(config, workdir: str, task):
    """The run's checkpoint manager and metric writer, closed when training ends; after a failure they are
    closed quietly and unfinished checkpoint files removed (the verified steps stay)."""
    manager = writer = None
    try:
        manager = _manager(
            config, workdir, task, keep_latest=config.keep_latest, keep_best=config.keep_best,
            async_save=config.async_checkpoints,
        )  # fmt: skip
        writer = MetricWriter(workdir, tensorboard=config.tensorboard)
        yield manager, writer
    except BaseException:
        _close_quietly(writer and writer.close, manager and manager.wait_until_finished)
        _close_quietly(manager and manager.close)
        ckpt.remove_unfinished(os.path.join(workdir, "checkpoints"))
        raise
    writer.close()
    manager.close()


@contextlib.contextmanager
def _disk_full_in_one_line(workdir: str):
    """A full disk anywhere in the run becomes one DiskFullError line naming the verified steps kept."""
    try:
        yield
    except Exception as err:
        if ckpt.is_disk_full(err):
            raise _disk_full(err, workdir) from None
        raise


def _close_quietly(*closers) -> None:
    """Close what a failed run opened; a second failure (e.g. the disk is still full) is not raised."""
    for close in closers:
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def _disk_full(err: BaseException, workdir: str) -> DiskFullError:
    """One line: what filled up, which verified checkpoints are kept, what to do."""
    kept = _kept_checkpoints(os.path.join(workdir, "checkpoints"))
    first = ckpt.disk_full_error(err, f"writing the run in {workdir}")
    return DiskFullError(
        f"{first}; {kept}; free space (or pass another --workdir), then run the same command to resume",
        first.errno,
    )


def _kept_checkpoints(directory) -> str:
    """What a stopped run leaves: its verified checkpoint steps (those with a checksum) in `directory`."""
    directory = os.path.abspath(str(directory))
    steps = ckpt.checksummed_steps(directory)
    return f"verified checkpoint steps {steps} in {directory} are kept" if steps else "no checkpoint yet"


def _stall_note(manager) -> str:
    """Where a stalled run stands: its checkpoints and how to resume."""
    return f"{_kept_checkpoints(manager.directory)}; run the same command again to resume"


def evaluate_checkpoint(
    config, workdir: str, *, model=None, split: str = "test", replica: int | None = None
) -> dict:
    """Eval metrics of the latest readable checkpoint of a run, on any device count.

    Args:
      config: the run's experiment config.
      workdir: the run directory; its checkpoints are read from ``<workdir>/checkpoints``.
      model: overrides the config's model (then the run's saved config is not compared with ``config``).
      split: the dataset split to evaluate (default ``"test"``).
      replica: with ``config.num_seeds`` K > 1, only replica ``replica``'s metrics (seed
        ``config.seed + replica``); None for every replica's and their means.

    Returns:
      A dict with ``step`` (the checkpoint's step), ``split`` and the task's eval metrics of
      :func:`attn_jax.train.evaluate` (with ``replica``: that replica's, and its ``seed``).

    Raises:
      ValueError: ``replica`` is not in ``[0, K)`` (before anything is compiled).
      CheckpointMismatchError: the run's saved ``config.json`` names another model (task, dataset or a
        ``model`` field), or checkpoints exist but none restores into this config's train state.
      FileNotFoundError: there is no checkpoint in the workdir.
    """
    seeds = replica_seeds(config)
    if replica is not None and not 0 <= replica < len(seeds):
        raise ValueError(f"--replica={replica} must be in [0, {len(seeds)}) (config.num_seeds={len(seeds)})")
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
            f"none of the checkpoint steps {sorted(steps)} in {directory} restores verified into this "
            "config's model and optimizer state: written by a different model/config, damaged, or without "
            "checksum (see the messages above)"
        )
    if step == 0:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    metrics = evaluate(runner, state, config, split)
    if replica is not None:
        return {"step": step, "split": split, "seed": seeds[replica], **split_seeds(metrics, seeds)[replica]}
    return {"step": step, "split": split, **metrics}
