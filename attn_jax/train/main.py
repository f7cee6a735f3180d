"""`attn-jax train` / `python experiments/run.py`: absl flags around `train_and_evaluate`, any task.

attn-jax train --config experiments/configs/classification.py:spatial --config.optim.lr=3e-3 --workdir runs/x
attn-jax train --config experiments/configs/detection.py:spatial --workdir runs/det
attn-jax eval  --config experiments/configs/segmentation.py --workdir runs/seg   # latest checkpoint
attn-jax train --config experiments/configs/classification.py --help            # every --config. field

Exit status: 0 done; EXIT_USAGE (2) a bad command line or config value, a workdir that is a file or in use,
a damaged data cache: one line on stderr, before anything is compiled; EXIT_PREEMPTED (75) stopped by SIGTERM
after saving a checkpoint; EXIT_INTERRUPTED (130) Ctrl-C; EXIT_FAILED (1) a full disk or a non-finite
loss, in one line. --restart starts over in a workdir that holds a run (of this config or another: another
config is refused without it). Without --workdir the run goes to
`command_line.default_workdir` (runs/<config name>[-<field>=<value>...]), the same for the same command, so
running the command again resumes it; the run directory and that command are printed at the start and on a
stop.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from typing import NamedTuple

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from attn_jax.data.memory_source import DamagedCacheError
from attn_jax.data.sources import get_adapter, load_source
from attn_jax.train import command_line as cl
from attn_jax.train import loop
from attn_jax.train.checkpoint import DiskFullError
from attn_jax.train.distributed import configure_cpu_devices, maybe_initialize
from attn_jax.train.loop import CheckpointMismatchError, NonFiniteLossError
from attn_jax.train.preemption import EXIT_PREEMPTED
from attn_jax.train.tasks import get_task
from attn_jax.train.workdir import check_workdir_config
from attn_jax.train.workdir_lock import WorkdirInUseError, acquire, release

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "output directory (default: runs/<config name>[-<field>=<value>...], same per command)"
)
_RESTART = flags.DEFINE_bool(
    "restart", False, "train: start over in a --workdir that holds a run (its files move to previous/<n>/)"
)
_REPLICA = flags.DEFINE_integer(
    "replica", None, "eval: only replica N of a run of config.num_seeds > 1 seeds (seed config.seed + N)"
)
EXIT_INTERRUPTED = 130  # Ctrl-C, the shell's 128 + SIGINT
EXIT_FAILED = 1  # the run failed (disk full, non-finite loss): one line on stderr


class Invocation(NamedTuple):
    """One command as given: argv (argv[0]: "attn-jax train" or the script, for messages), the
    end-of-run callbacks for train_and_evaluate, and whether -v / --verbosity was given."""

    argv: list[str]
    callbacks: tuple = ()
    verbose: bool = False


def _workdir(config, argv: list[str]) -> str:
    """--workdir, or the command's deterministic default (command_line.default_workdir)."""
    if _WORKDIR.value:
        return _WORKDIR.value
    return cl.default_workdir(config, cl.config_spec(argv[1:]) or "", argv[1:])


def _quiet(verbose: bool) -> None:
    """orbax and tfds log every save / load at INFO under absl; keep warnings unless -v/--verbosity."""
    if not verbose:
        logging.set_verbosity(logging.WARNING)


def _check_workdir_path(workdir: str) -> None:
    """UsageFailure when `workdir`, or the first of its parents that exists, is not a writable directory."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise cl.UsageFailure(f"--workdir {workdir} is a file, not a directory")
    parent = os.path.abspath(workdir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise cl.UsageFailure(f"--workdir {workdir}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise cl.UsageFailure(f"--workdir {workdir}: {parent} is not writable")


def _check_run_config(config, workdir: str) -> None:
    """UsageFailure when `workdir` holds a run of another config (loop.check_workdir_config)."""
    try:
        check_workdir_config(config, workdir)
    except CheckpointMismatchError as err:
        raise cl.UsageFailure(str(err)) from None


def _check_devices(config, fields=("batch_size", "eval_batch_size")) -> None:
    """Start the devices as training will (CPU device count, multi-host) and check the batch sizes
    (config.data.<field>) divide over them: UsageFailure naming the field. Starts the backend; compiles
    nothing."""
    configure_cpu_devices(config.cpu.devices)
    try:
        maybe_initialize(config.coordinator or None)
    except ValueError as err:
        raise cl.UsageFailure(str(err)) from None
    available, processes = jax.device_count(), jax.process_count()
    devices = config.num_devices or available
    if devices > available:
        raise cl.UsageFailure(f"--config.num_devices={devices} but {available} device(s) available")
    for field in fields:
        size = config.data[field]
        if size % devices or size % processes:
            raise cl.UsageFailure(
                f"--config.data.{field}={size} must divide by the {devices} devices"
                + (f" and {processes} processes" if processes > 1 else "")
                + f" (a multiple of {devices * processes // math.gcd(devices, processes)})"
            )


def _check_data(config, splits=("train", "test")) -> None:
    """Open the train and test splits as training will (cluttered_digits is built on first use), so a
    damaged or missing dataset is reported now rather than after compiling or at the first evaluation."""
    adapter = get_adapter(config.data.dataset, config.task)
    for split in splits:
        try:
            load_source(adapter, split, config.data.dir)
        except (DamagedCacheError, FileNotFoundError) as err:
            raise cl.UsageFailure(str(err)) from None


def _check_lock(workdir: str) -> None:
    """UsageFailure when another live process holds the workdir (taken and released at once: the loop
    takes it for the run; a stale lock of a dead process is removed)."""
    try:
        release(acquire(workdir))
    except WorkdirInUseError as err:
        raise cl.UsageFailure(str(err)) from None


def preflight(config, workdir: str, restart: bool = False) -> None:
    """Every check of a training command that needs more than the config: the workdir path, a run of
    another config in it (unless `restart`), the devices and batch sizes, the data, the workdir lock.
    UsageFailure on the first problem; compiles nothing."""
    _check_workdir_path(workdir)
    if not restart:
        _check_run_config(config, workdir)
    _check_devices(config)
    _check_data(config)
    _check_lock(workdir)


def train_main(invocation: Invocation, argv) -> None:
    """absl main of `train` (argv: absl's remaining arguments, unused; the flags are parsed)."""
    _quiet(invocation.verbose)
    program, restart = invocation.argv[0], _RESTART.value
    # the command that resumes: this one (without --restart, which would start over again)
    command = cl.shown_command([a for a in invocation.argv if not a.startswith(("--restart", "--norestart"))])
    config = _config()
    workdir = _workdir(config, invocation.argv)
    try:
        preflight(config, workdir, restart)
    except cl.UsageFailure as err:
        _exit_with_error(program, str(err))
    default = "" if _WORKDIR.value else " (the default for this command)"
    again = "this command again without --restart" if restart else "the same command again"
    print(f"workdir {os.path.abspath(workdir)}{default}", flush=True)
    print(f"to resume after a stop, run {again} from {os.getcwd()}: {command}", flush=True)

    try:
        summary = loop.train_and_evaluate(config, workdir, callbacks=invocation.callbacks, restart=restart)
    except (WorkdirInUseError, DamagedCacheError, CheckpointMismatchError) as err:
        _exit_with_error(program, str(err))
    except (DiskFullError, NonFiniteLossError) as err:
        _exit_with_error(program, " ".join(str(err).split()), EXIT_FAILED)
    except KeyboardInterrupt:
        print(
            f"{program}: interrupted; the checkpoints saved so far are in {os.path.abspath(workdir)}; "
            f"resume with: {command}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(EXIT_INTERRUPTED) from None
    print(json.dumps(summary, indent=2))
    if summary["stop_reason"] == "done":
        keys = [k for k in get_task(summary["task"]).headline if f"test_{k}" in summary]
        shown = ", ".join(f"{k} {summary[f'test_{k}']:.4f}" for k in keys)
        print(
            f"{summary['task']} test {shown} after {summary['step']} steps "
            f"(training {summary['train_time_s']:.0f} s over all resumes, this command "
            f"{summary['wall_time_s']:.0f} s); "
            f"outputs in {summary['workdir']}"
        )
    else:
        print(
            f"stopped by SIGTERM at step {summary['step']}; checkpoint saved in {summary['workdir']}; "
            f"run the same command to resume: {command} (exit status {EXIT_PREEMPTED})",
            flush=True,
        )
        raise SystemExit(EXIT_PREEMPTED)


def eval_main(invocation: Invocation, argv) -> None:
    """absl main of `eval`: the latest checkpoint's test metrics as JSON."""
    _quiet(invocation.verbose)
    try:
        _check_devices(_config(), fields=("eval_batch_size",))
        _check_data(_config(), splits=("test",))
    except cl.UsageFailure as err:
        _exit_with_error(argv[0], str(err))
    try:
        result = loop.evaluate_checkpoint(_config(), _WORKDIR.value, replica=_REPLICA.value)
    except (CheckpointMismatchError, FileNotFoundError) as err:
        _exit_with_error(argv[0], str(err), 1)
    except ValueError as err:  # --replica out of range: before anything is compiled
        _exit_with_error(argv[0], str(err))
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


def _config():
    """The config of this command, as parsed by _flags_parser (--config FILE[:ARG] and its overrides)."""
    return flags.FLAGS["config"].value


def _define_config(config, argv: list[str]) -> None:
    """The absl flag `config` holding the loaded `config`, with a --config.<field> flag for each override in
    argv, after clearing the last command's (a second run in one process parses its own command line:
    tests, notebooks); the other flags go back to their defaults."""
    for name in [n for n in flags.FLAGS if n == "config" or n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    config_flags.DEFINE_config_dict(
        "config", config, "experiment config (--config FILE[:ARG])", sys_argv=argv
    )


def _without_config_file(argv: list[str]) -> list[str]:
    """argv less --config FILE[:ARG] (loaded by command_line.validate; absl parses the overrides)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("--config="):
            out.append(arg)
    return out


def _flags_parser(command: str):
    """absl's flags_parser for `command`: --help (exit 0), then one-line usage errors (exit EXIT_USAGE)."""

    def parse(argv: list[str]) -> list[str]:
        program, rest = argv[0], argv[1:]
        try:
            if any(a in cl.HELP_FLAGS for a in rest):
                _print_help(cl.help_text(command, program, [a for a in rest if a not in cl.HELP_FLAGS]))
                raise SystemExit(0)
            argv = _without_config_file(argv)  # the file is loaded once, here; absl parses the overrides
            _define_config(cl.validate(rest), argv)
            try:
                remaining = flags.FLAGS(argv)
            except flags.Error as err:  # e.g. --config.optim.lr=abc, an unknown flag
                raise cl.UsageFailure(str(err).strip().splitlines()[0]) from None
            if len(remaining) > 1:
                raise cl.UsageFailure(f"unexpected arguments {remaining[1:]} (flags are --name=value)")
            spec = cl.config_spec(rest)
            config = _config()
            cl.check_values(config, spec)
            note = cl.resolve_warmup(config, rest, spec)
            cl.check_attention(config, spec)
            cl.check_model(config, spec)
            if command == "eval" and not _WORKDIR.value:
                raise cl.UsageFailure("eval needs --workdir (the directory of a run, with checkpoints/)")
        except cl.UsageFailure as err:
            _exit_with_error(program, str(err))
        if note:
            print(f"{program}: {note}", file=sys.stderr, flush=True)
        return remaining

    return parse


def run(command: str, argv: list[str], callbacks=()) -> None:
    """Parse flags from argv (argv[0] = program name) and run "train" or "eval"; `callbacks` go to
    train_and_evaluate (e.g. attn_jax.viz.hooks.attention_png). `--help` exits 0; a bad command line
    exits cl.EXIT_USAGE with one line on stderr; a SIGTERM-stopped training exits EXIT_PREEMPTED."""
    verbose = any(a.startswith(("-v", "--v")) for a in argv[1:])
    invocation = Invocation(list(argv), tuple(callbacks), verbose)
    main = functools.partial({"train": train_main, "eval": eval_main}[command], invocation)
    app.run(main, argv=list(argv), flags_parser=_flags_parser(command))
