"""`attn-jax train` / `python experiments/run.py`: absl flags around `train_and_evaluate`, any task.

attn-jax train --config experiments/configs/classification.py:spatial --config.lr=3e-3 --workdir runs/x
attn-jax train --config experiments/configs/detection.py:spatial --workdir runs/det
attn-jax eval  --config experiments/configs/segmentation.py --workdir runs/seg   # latest checkpoint
attn-jax train --config experiments/configs/classification.py --help            # every --config. field

Exit status: 0 done; EXIT_USAGE (2) bad command line, in one line on stderr; EXIT_PREEMPTED (75) stopped by
SIGTERM after saving a checkpoint (run the same command again to resume).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from attn_jax.train import command_line as cl
from attn_jax.train.preemption import EXIT_PREEMPTED

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
    _quiet()
    from attn_jax.train.loop import train_and_evaluate

    config = _CONFIG.value
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
        print(
            f"stopped by SIGTERM at step {summary['step']}; checkpoint saved in {summary['workdir']}; "
            f"run the same command to resume (exit status {EXIT_PREEMPTED})"
        )
        raise SystemExit(EXIT_PREEMPTED)


def eval_main(argv) -> None:
    _quiet()
    from attn_jax.train.loop import CheckpointMismatchError, evaluate_checkpoint

    try:
        result = evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
    except (CheckpointMismatchError, FileNotFoundError) as err:
        _exit_with_error(argv[0], str(err), 1)
    print(json.dumps(result, indent=2))


def _exit_with_error(program: str, message: str, status: int = cl.EXIT_USAGE):
    """One line `program: error: message` on stderr, then exit with `status` (no traceback)."""
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status) from None


def _print_help(text: str) -> None:
    """Print to stdout; a reader that closes the pipe early (`--help | head`) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _flags_parser(command: str):
    """absl's flags_parser for `command`: --help (exit 0), then one-line usage errors (exit EXIT_USAGE)."""

    def parse(argv: list[str]) -> list[str]:
        program, rest = argv[0], argv[1:]
        try:
            if any(a in cl.HELP_FLAGS for a in rest):
                _print_help(cl.help_text(command, program, [a for a in rest if a not in cl.HELP_FLAGS]))
                raise SystemExit(0)
            cl.validate(rest)
            try:
                remaining = flags.FLAGS(argv)
            except flags.Error as err:  # e.g. --config.lr=abc, an unknown flag
                raise cl.UsageFailure(str(err).strip().splitlines()[0]) from None
            if len(remaining) > 1:
                raise cl.UsageFailure(f"unexpected arguments {remaining[1:]} (flags are --name=value)")
            spec = cl.config_spec(rest)
            cl.check_attention(_CONFIG.value, spec)
            cl.check_model(_CONFIG.value, spec)
            if command == "eval" and not _WORKDIR.value:
                raise cl.UsageFailure("eval needs --workdir (the directory of a run, with checkpoints/)")
        except cl.UsageFailure as err:
            _exit_with_error(program, str(err))
        return remaining

    return parse


def run(command: str, argv: list[str], callbacks=()) -> None:
    """Parse flags from argv (argv[0] = program name) and run "train" or "eval"; `callbacks` go to
    train_and_evaluate (e.g. attn_jax.viz.hooks.attention_png). `--help` exits 0; a bad command line
    exits cl.EXIT_USAGE with one line on stderr; a SIGTERM-stopped training exits EXIT_PREEMPTED."""
    global _VERBOSE, _CALLBACKS
    _CALLBACKS = tuple(callbacks)
    _VERBOSE = any(a.startswith(("-v", "--v")) for a in argv[1:])
    main = {"train": train_main, "eval": eval_main}[command]
    app.run(main, argv=argv, flags_parser=_flags_parser(command))
