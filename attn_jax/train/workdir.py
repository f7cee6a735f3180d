"""What a run directory holds and whether a config may train in it: the experiment's fields compared with
the saved run's (<workdir>/config.json), and a restart that moves the old run aside.

    check_workdir_config(config, "runs/cls")   # CheckpointMismatchError: another experiment's run
    check_run_config(config, "runs/cls")       # the same for the model fields only (eval of a checkpoint)
    set_previous_run_aside("runs/cls")         # --restart: the old files to runs/cls/previous/<n>/
"""

from __future__ import annotations

import json
import os

import jax

from attn_jax.train.checkpoint import CheckpointMismatchError
from attn_jax.train.config import COMPUTE_FIELDS, flat_fields, model_differences, upgrade_saved_config
from attn_jax.train.workdir_lock import LOCK_PREFIX

# Fields of a run's config that may change when it is resumed: how long it trains, how often it logs,
# evaluates and saves, how many checkpoints it keeps, where the data is, on which devices and how it is
# shown, and how the same model is computed (COMPUTE_FIELDS, cpu.*). Every other field (task, model.*, seed,
# data.dataset, data.batch_size, data.augment, optim.*, schedule.*, the task's group) defines the experiment.
RESUMABLE_FIELDS = (
    "name",
    "data.dir",
    "data.eval_batch_size",
    "data.eval_examples",
    "num_train_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_latest",
    "keep_best",
    "async_checkpoints",
    "cpu.devices",
    "cpu.matmul_grad",
    "num_devices",
    "parallel",
    "seeds_mode",
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
    given = flat_fields(json.loads(config.to_json_best_effort()))
    saved_flat = flat_fields(upgrade_saved_config(saved))
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
