"""`attn-jax train` / `python experiments/run.py`: absl flags around `train_and_evaluate`, any task.

attn-jax train --config experiments/configs/classification.py:spatial --config.lr=3e-3 --workdir runs/x
attn-jax train --config experiments/configs/detection.py:spatial --workdir runs/det
attn-jax eval  --config experiments/configs/segmentation.py --workdir runs/seg   # latest checkpoint
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (path[:arg])")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default: runs/<config name>-<time>)")


def _workdir(config) -> str:
    if _WORKDIR.value:
        return _WORKDIR.value
    name = config.get("name", "run").replace(",", "-")
    return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


_VERBOSE = False
_CALLBACKS: tuple = ()


def _quiet() -> None:
    """orbax and tfds log every save / load at INFO under absl; keep warnings unless -v/--verbosity."""
    if not _VERBOSE:
        logging.set_verbosity(logging.WARNING)


def train_main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _quiet()
    from attn_jax.train.loop import train_and_evaluate

    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config experiments/configs/classification.py")
    workdir = _workdir(config)
    summary = train_and_evaluate(config, workdir, callbacks=_CALLBACKS)
    print(json.dumps(summary, indent=2))
    if summary["stop_reason"] == "done":
        from attn_jax.train.tasks import get_task

        keys = [k for k in get_task(summary["task"]).headline if f"test_{k}" in summary]
        shown = ", ".join(f"{k} {summary[f'test_{k}']:.4f}" for k in keys)
        print(
            f"{summary['task']} test {shown} after {summary['step']} steps "
            f"(train {summary['train_time_s']:.0f} s, total {summary['wall_time_s']:.0f} s); "
            f"outputs in {summary['workdir']}"
        )
    else:
        print(f"stopped by SIGTERM at step {summary['step']}; checkpoint saved in {summary['workdir']}")


def eval_main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _quiet()
    from attn_jax.train.loop import evaluate_checkpoint

    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("eval needs --config and --workdir (a directory with checkpoints/)")
    print(json.dumps(evaluate_checkpoint(_CONFIG.value, _WORKDIR.value), indent=2))


def run(command: str, argv: list[str], callbacks=()) -> None:
    """Parse flags from argv (argv[0] = program name) and run "train" or "eval"; `callbacks` go to
    train_and_evaluate (e.g. attn_jax.viz.hooks.attention_png)."""
    global _VERBOSE, _CALLBACKS
    _CALLBACKS = tuple(callbacks)
    _VERBOSE = any(a.startswith(("-v", "--v")) for a in argv[1:])
    app.run({"train": train_main, "eval": eval_main}[command], argv=argv)
