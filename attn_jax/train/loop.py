"""`train_and_evaluate(config, workdir)`: the one training loop of every task, with eval, checkpoints,
metrics.

data -> task model -> step (shard_map over the mesh, or pmap) -> metrics / checkpoints. Resumes
automatically from the latest verified checkpoint in <workdir>/checkpoints (a workdir holding a run of another
config is refused before anything is compiled; restart=True starts over); SIGTERM at any point saves,
verifies and returns cleanly; a full disk stops with DiskFullError (one line); a non-finite loss or parameter
stops with NonFiniteLossError and no checkpoint of the bad state.
Pictures and other by-products come from `callbacks` run at the end (this package draws nothing).
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
from attn_jax.train.config import COMPUTE_FIELDS, flat_fields, model_differences
from attn_jax.train.distributed import configure_cpu_devices, maybe_initialize
from attn_jax.train.preemption import SigtermFlag
from attn_jax.train.runner import Runner, build_steps
from attn_jax.train.tasks.base import jsonable
from attn_jax.train.watchdog import StallWatchdog
from attn_jax.train.workdir_lock import LOCK_PREFIX, workdir_lock
from attn_jax.train.writers import MetricWriter, progress_bar


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf loss or parameters; raised before the bad state is saved, so the last
    good checkpoint is left as it was. A subclass of ``FloatingPointError``; its message names the step and
    the remedies (a lower ``config.lr``, ``config.clip_norm``, ``config.skip_nonfinite``)."""


class RunEnd(NamedTuple):
    """What an end-of-run callback of :func:`attn_jax.train.train_and_evaluate` receives.

    Its fields, in order: ``config`` (the experiment config), ``workdir`` (the run directory), ``task``
    (the :class:`attn_jax.train.tasks.Task`), ``model`` (the task's Flax module), ``state`` (the final
    :class:`attn_jax.train.TrainState`, on the devices as the runner places it), ``runner`` (the
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


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
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
    """The task's eval metrics over one ordered epoch of a dataset split.

    Args:
      runner: the :class:`attn_jax.train.Runner` of the config (its eval step and task).
      state: the train state as :meth:`attn_jax.train.Runner.place` gives it.
      config: the experiment config (``dataset``, ``data_dir``, ``eval_batch_size`` and
        ``eval_examples``: when > 0, only the first that many examples, rounded up to whole batches).
      split: the dataset split to evaluate (default ``"test"``).

    Returns:
      A JSON-friendly dict of the task's eval metrics (e.g. ``loss`` and ``accuracy`` for
      classification); padding examples count for nothing.
    """
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
    """(state, step): the latest verified checkpoint (iterator moved to its position) or a fresh state."""
    state, step = ckpt.restore_latest(manager, runner.abstract_state(), iterator)
    if state is None:
        return runner.place(runner.init_state(config.seed)), 0
    print(f"resumed from checkpoint step {step} in {manager.directory}", flush=True)
    return runner.from_restored(state), int(step)


def _train(config, runner, state, start, iterator, manager, writer, sigterm, train_time):
    """Steps start..num_train_steps; returns (state, last eval metrics, stop reason). train_time():
    training seconds so far over all resumes (saved with each checkpoint)."""
    task, total, pending, last_eval = runner.task, config.num_train_steps, [], None
    if any_process(sigterm.requested):  # SIGTERM while compiling / restoring: nothing new to save
        return state, None, "sigterm"
    bar = progress_bar(total, start, config.get("progress", True))
    every = lambda n, s: (n and s % n == 0) or s == total  # noqa: E731
    # A SIGTERM may reach only some processes: they agree every `preemption_check_every_steps` steps (a
    # tiny all-gather; every step with one process), then all save the same step and stop together.
    check_every = 1 if jax.process_count() == 1 else config.get("preemption_check_every_steps", 10)
    stop = False
    # a step that never finishes (a CPU device stuck before an all-reduce) ends the run cleanly with
    # EXIT_STALLED and the checkpoints intact; armed once the first step has compiled
    watchdog = StallWatchdog(config.get("stall_timeout_s", 600), lambda: _stall_note(manager))
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
                train_metrics = _summarize(task, pending)
                pending = []
                _check_finite(train_metrics, step, manager)
                writer.write(step, "train", train_metrics)
                bar.set_postfix(
                    {k: f"{v:.4f}" for k, v in train_metrics.items() if k in ("loss", "accuracy")}
                )
            if is_eval:
                last_eval = evaluate(runner, state, config)
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


def _kept_checkpoints(directory) -> str:
    """What a stopped run leaves: its verified checkpoint steps (those with a checksum) in `directory`."""
    directory = os.path.abspath(str(directory))
    steps = ckpt.checksummed_steps(directory)
    return f"verified checkpoint steps {steps} in {directory} are kept" if steps else "no checkpoint yet"


def _stall_note(manager) -> str:
    """Where a stalled run stands: its checkpoints and how to resume."""
    return f"{_kept_checkpoints(manager.directory)}; run the same command again to resume"


def setup(config, model=None) -> Runner:
    """Devices, dataset facts, task, model, optimizer and compiled steps of `config`. CPU devices and
    multi-host start-up come first: both must precede any JAX operation."""
    _start_devices(config)
    return build_steps(config, model=model)


def _start_devices(config) -> None:
    configure_cpu_devices(config.get("cpu_devices", 0))
    maybe_initialize(config.get("coordinator") or None)


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


# Fields of a run's config that may change when it is resumed: how long it trains, how often it logs,
# evaluates and saves, how many checkpoints it keeps, where the data is, on which devices and how it is
# shown, and how the same model is computed (COMPUTE_FIELDS). Every other field (task, dataset, model.*,
# seed, batch_size, optimizer and its numbers, augment, the task's own fields) defines the experiment.
RESUMABLE_FIELDS = (
    "name",
    "data_dir",
    "num_train_steps",
    "eval_batch_size",
    "eval_examples",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_latest",
    "keep_best",
    "async_checkpoints",
    "cpu_devices",
    "num_devices",
    "parallel",
    "coordinator",
    "preemption_check_every_steps",
    "stall_timeout_s",
    "progress",
    "tensorboard",
    "png_examples",
    *COMPUTE_FIELDS,
)
PREVIOUS_RUNS = "previous"  # restart=True moves a workdir's old files to <workdir>/previous/<n>/


def run_config_differences(saved: dict, config) -> list[str]:
    """'field: saved value (run) != given value (given)' for each field that defines the experiment
    (all but RESUMABLE_FIELDS) where a run's saved config (the dict of <workdir>/config.json) and `config`
    differ. Model fields as in attn_jax.train.config.model_differences; other fields only when both sides
    have them (a field added or removed by another attn_jax version is not a difference)."""
    given, saved_flat = flat_fields(json.loads(config.to_json_best_effort())), flat_fields(saved)
    diffs = model_differences(saved, config)
    named = {d.split(":", 1)[0] for d in diffs}
    for key in sorted(set(saved_flat) & set(given)):
        if key in named or key in RESUMABLE_FIELDS or key.startswith("model."):
            continue
        if saved_flat[key] != given[key]:
            diffs.append(f"{key}: {saved_flat[key]!r} (run) != {given[key]!r} (given)")
    return sorted(diffs)


def check_workdir_config(config, workdir: str) -> None:
    """Refuse to train `config` in a workdir that holds a run of another experiment.

    Compares <workdir>/config.json (written by train_and_evaluate) with `config` over the fields that
    define the experiment (run_config_differences); reads only, so it can run before anything is compiled.

    Args:
      config: the config to train.
      workdir: the run directory.

    Raises:
      CheckpointMismatchError (a ValueError): one line naming the differing fields and how to go on (another
        --workdir, or restart=True / --restart to start over). Nothing when the workdir has no config.json
        or the configs agree.

    Examples:
      >>> check_workdir_config(config, "runs/cls")   # before attn-jax train compiles anything
    """
    path = os.path.join(workdir, "config.json")
    saved = _saved_config(path)
    if not isinstance(saved, dict):
        return
    diffs = run_config_differences(saved, config)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise CheckpointMismatchError(
            f"workdir {workdir} holds a run of another config ({shown}): resume it with its own config "
            f"({path}), pick another --workdir, or start over with --restart (restart=True; the old run's "
            f"files move to {os.path.join(workdir, PREVIOUS_RUNS)}/<n>/)"
        )


def set_previous_run_aside(workdir: str) -> str | None:
    """Move every file of a workdir's run (all but its lock files and PREVIOUS_RUNS) into
    <workdir>/previous/<n>/ (n = 1, 2, ...); returns that directory, None when there was nothing to move.
    Call with the workdir's lock held."""
    names = sorted(n for n in os.listdir(workdir) if n != PREVIOUS_RUNS and not n.startswith(LOCK_PREFIX))
    if not names or jax.process_index() != 0:
        return None
    parent = os.path.join(workdir, PREVIOUS_RUNS)
    os.makedirs(parent, exist_ok=True)
    taken = [int(n) for n in os.listdir(parent) if n.isdigit()]
    dest = os.path.join(parent, str(max(taken, default=0) + 1))
    os.makedirs(dest)
    for name in names:
        os.rename(os.path.join(workdir, name), os.path.join(dest, name))
    print(f"restart: the previous run's files in {workdir} moved to {dest}", flush=True)
    return dest


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
        check_workdir_config(config, workdir)
    with SigtermFlag() as sigterm:
        try:
            summary, state, runner, last_eval = _run(config, workdir, model, sigterm, restart, t0)
            if summary["stop_reason"] == "done":
                summary = _finish(config, workdir, runner, state, last_eval, summary, callbacks, sigterm)
            summary["wall_time_s"] = round(time.time() - t0, 2)
            if jax.process_index() == 0:
                path = os.path.join(workdir, "summary.json")
                ckpt.write_text_atomically(path, json.dumps(summary, indent=2))
        except Exception as err:
            if ckpt.is_disk_full(err):
                raise _disk_full(err, workdir) from None
            raise
    return summary


def _run(config, workdir, model, sigterm, restart, t0):
    """The training part of train_and_evaluate, under the workdir's lock: (summary, state, runner, eval)."""
    _start_devices(config)
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir):  # a second run on this workdir fails at once (WorkdirInUseError)
        if restart:
            set_previous_run_aside(workdir)
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("attn_jax_restart")
        runner = build_steps(config, model=model)
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
        _save_config(config, workdir)
        manager = writer = None
        ok = False
        try:
            manager = _manager(
                config, workdir, runner.task, keep_latest=config.keep_latest, keep_best=config.keep_best,
                async_save=config.get("async_checkpoints", True),
            )  # fmt: skip
            writer = MetricWriter(workdir, tensorboard=config.get("tensorboard", True))
            state, start = _init_state(config, runner, manager, iterator)
            prior = float(manager.step_record(start).get("train_time_s") or 0.0) if start else 0.0
            train_start = _now()
            train_time = lambda: prior + _now() - train_start  # noqa: E731
            state, last_eval, reason = _train(
                config, runner, state, start, iterator, manager, writer, sigterm, train_time
            )
            manager.wait_until_finished()  # every saved step has its checksum from here on
            train_s = train_time()
            ok = True
        finally:
            if ok:
                writer.close()
                manager.close()
            else:
                _close_quietly(writer and writer.close, manager and manager.wait_until_finished)
                _close_quietly(manager and manager.close)
                ckpt.remove_unfinished(os.path.join(workdir, "checkpoints"))
    if reason == "done" and any_process(sigterm.requested):
        reason = "sigterm"  # after the last save: the run stops here; run again for the final eval
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
    return summary, state, runner, last_eval


def _finish(config, workdir, runner, state, last_eval, summary, callbacks, sigterm) -> dict:
    """Final test metrics and callbacks of a finished run; after a SIGTERM no further callback starts (the
    summary then says "sigterm": the next run redoes the evaluation and the callbacks)."""
    summary.update({f"test_{k}": v for k, v in (last_eval or evaluate(runner, state, config)).items()})
    for callback in callbacks:
        if any_process(sigterm.requested):
            summary["stop_reason"] = "sigterm"  # checkpoints are saved and verified; run again to finish
            break
        summary.update(
            callback(RunEnd(config, workdir, runner.task, runner.model, state, runner, summary)) or {}
        )
    return summary


def _saved_config(path: str):
    """The JSON in a run's config.json, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def check_run_config(config, workdir: str) -> None:
    """CheckpointMismatchError naming the model-defining fields where <workdir>/config.json (written by
    train_and_evaluate) and `config` differ; nothing when they agree or the run saved no config."""
    path = os.path.join(workdir, "config.json")
    saved = _saved_config(path)
    if saved is None:
        return
    diffs = model_differences(saved, config)
    if diffs:
        raise CheckpointMismatchError(
            f"the checkpoint in {os.path.join(workdir, 'checkpoints')} was written by a different "
            f"model/config ({'; '.join(diffs)}); give the run's config (saved in {path})"
        )


def evaluate_checkpoint(config, workdir: str, *, model=None, split: str = "test") -> dict:
    """Eval metrics of the latest readable checkpoint of a run, on any device count.

    Args:
      config: the run's experiment config.
      workdir: the run directory; its checkpoints are read from ``<workdir>/checkpoints``.
      model: overrides the config's model (then the run's saved config is not compared with ``config``).
      split: the dataset split to evaluate (default ``"test"``).

    Returns:
      A dict with ``step`` (the checkpoint's step), ``split`` and the task's eval metrics of
      :func:`attn_jax.train.evaluate`.

    Raises:
      CheckpointMismatchError: the run's saved ``config.json`` names another model (task, dataset or a
        ``model`` field), or checkpoints exist but none restores into this config's train state.
      FileNotFoundError: there is no checkpoint in the workdir.
    """
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
    return {"step": step, "split": split, **evaluate(runner, state, config, split)}
