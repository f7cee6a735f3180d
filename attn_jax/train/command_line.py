"""The command line of `attn-jax train|eval` and experiments/run.py: --help text and one-line usage errors.

Checks run before absl parses the flags, so that a bad config file, `:ARG` or `--config.<field>` ends in one
line naming it (exit EXIT_USAGE) instead of ml_collections' chained tracebacks.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.machinery
import importlib.util
import math
import numbers
import os
import re
import shlex

import jax
import jax.numpy as jnp

from attn_jax.data.pipeline import AUGMENTATIONS
from attn_jax.nn import available_attention
from attn_jax.train.config import TASK_FIELDS, base_config
from attn_jax.train.optim import OPTIMIZERS
from attn_jax.train.preemption import EXIT_PREEMPTED
from attn_jax.train.runner import PARALLEL_MODES
from attn_jax.train.seeds import SEEDS_MODES
from attn_jax.train.tasks import make_task

EXIT_USAGE = 2  # a bad command line (the shell convention, as argparse)
HELP_FLAGS = ("-h", "--help", "--helpshort", "-?")


class UsageFailure(Exception):
    """A bad command line; str() is the one-line message."""


def config_spec(argv: list[str]) -> str | None:
    """The value of --config in argv (`--config=X` or `--config X`), None when absent."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config":
            return argv[i + 1] if i + 1 < len(argv) else ""
    return None


def override_paths(argv: list[str]) -> list[str]:
    """Field paths given as --config.<path>[=VALUE] (or --noconfig.<path>), in order."""
    out = []
    for arg in argv:
        found = re.match(r"^--?(?:no)?config\.([^=]*)", arg)
        if found:
            out.append(found.group(1))
    return out


def load_config(spec: str):
    """`path[:arg]` -> get_config(arg) of the file; UsageFailure naming the file on any failure."""
    if not spec:
        raise UsageFailure("--config needs a file, e.g. --config experiments/configs/classification.py")
    path, *arg = spec.split(":", 1)
    if not os.path.isfile(path):
        raise UsageFailure(f"config file {path!r} not found (from --config {spec})")
    if not os.access(path, os.R_OK):
        raise UsageFailure(f"config file {path!r} is not readable (from --config {spec})")
    try:
        loader = importlib.machinery.SourceFileLoader("_attn_jax_cli_config", path)
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
        loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any failure of the user's file is reported in one line
        raise UsageFailure(f"config file {path!r} failed to load: {_one_line(err)}") from None
    if not callable(getattr(module, "get_config", None)):
        raise UsageFailure(f"config file {path!r} has no get_config() function")
    try:
        return module.get_config(*arg)
    except Exception as err:  # noqa: BLE001 - e.g. an unknown `:ARG`
        raise UsageFailure(f"config {spec!r}: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def field_paths(config, prefix: str = "") -> dict:
    """{dotted path: value} of every field, sub-configs included (as their own path and their fields)."""
    out = {}
    for key in sorted(config.keys()):
        value, path = config[key], prefix + key
        out[path] = value
        if hasattr(value, "keys") and hasattr(value, "get_type"):
            out.update(field_paths(value, path + "."))
    return out


def check_overrides(config, argv: list[str], spec: str) -> None:
    """UsageFailure naming the first --config.<path> that is not a field of `config` (close names given)."""
    known = field_paths(config)
    for path in override_paths(argv):
        if path in known:
            continue
        close = difflib.get_close_matches(path, list(known), n=3, cutoff=0.8)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageFailure(
            f"unknown config field {path!r} (--config.{path}) in {spec}{hint} "
            f"(every field: --config {spec} --help)"
        )


def check_attention(config, spec: str) -> None:
    """UsageFailure when config.model.attention is not a registered attention name."""
    model = config.get("model") if hasattr(config, "get") else None
    name = model.get("attention") if model is not None else None
    if name is None:
        return
    known = available_attention()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageFailure(
            f"unknown attention {name!r} (config.model.attention of --config {spec}){hint}; "
            f"known: {', '.join(known)}"
        )


def check_model(config, spec: str) -> None:
    """UsageFailure when config.model does not build the task's model: the model is traced on one example
    of the dataset's image shape (jax.eval_shape: no compute, no data read, no backend started), so a bad
    field such as --config.model.features=abc is one line before training, not a traceback during it."""
    try:
        task = make_task(config)
        model = task.build_model(None)
    except (ValueError, TypeError, KeyError) as err:
        raise UsageFailure(f"--config {spec}: {_one_line(err)}") from None
    shape = task.meta.image_shape
    if any(size is None for size in shape):  # images of varying size: nothing to trace on
        return

    def init():
        keys = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
        return model.init(keys, jnp.zeros((1, *shape), jnp.float32), train=False)

    try:
        jax.eval_shape(init)
    except (ValueError, TypeError) as err:
        message = f"config.model of --config {spec} does not build a model: {_one_line(err)}"
        raise UsageFailure(message) from None


def _int_at_least(low: int):
    return lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low


def _number(low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False):
    def ok(v):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
            return False
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    return ok


# field path: (check, what the field must be). Fields a config does not have are skipped.
VALUE_RULES = {
    "data.batch_size": (
        _int_at_least(1),
        "an integer >= 1 (the global batch, over all devices and processes)",
    ),
    "data.eval_batch_size": (_int_at_least(1), "an integer >= 1"),
    "num_train_steps": (_int_at_least(1), "an integer >= 1"),
    "num_seeds": (_int_at_least(1), "an integer >= 1 (replicas trained in one program)"),
    "optim.lr": (_number(0.0, open_low=True), "a finite number > 0"),
    "optim.weight_decay": (_number(0.0), "a finite number >= 0"),
    "optim.momentum": (_number(0.0), "a finite number >= 0"),
    "schedule.warmup_steps": (_int_at_least(0), "an integer >= 0"),
    "schedule.end_lr_factor": (_number(0.0), "a finite number >= 0"),
    "optim.clip_norm": (_number(0.0), "a finite number >= 0 (0: no clipping)"),
    "optim.skip_nonfinite": (_int_at_least(0), "an integer >= 0 (0: off)"),
    "classification.label_smoothing": (_number(0.0, 1.0, open_high=True), "a number in [0, 1)"),
    "reading.label_smoothing": (_number(0.0, 1.0, open_high=True), "a number in [0, 1)"),
    "reading.length_penalty": (_number(0.0), "a finite number >= 0 (0: no length normalisation)"),
    "log_every_steps": (_int_at_least(0), "an integer >= 0 (0: only at the end)"),
    "eval_every_steps": (_int_at_least(0), "an integer >= 0 (0: only at the end)"),
    "checkpoint_every_steps": (_int_at_least(0), "an integer >= 0 (0: only at the end and on SIGTERM)"),
    "keep_latest": (_int_at_least(1), "an integer >= 1 (the resume point is the latest step)"),
    "keep_best": (_int_at_least(0), "an integer >= 0 (0: keep no best step)"),
    "data.eval_examples": (_int_at_least(0), "an integer >= 0 (0: the whole test split)"),
    "cpu.devices": (_int_at_least(0), "an integer >= 0 (0: JAX's default)"),
    "num_devices": (_int_at_least(0), "an integer >= 0 (0: all devices)"),
    "preemption_check_every_steps": (_int_at_least(1), "an integer >= 1"),
    "stall_timeout_s": (_number(0.0), "a finite number of seconds >= 0 (0: no stall watchdog)"),
    "png_examples": (_int_at_least(0), "an integer >= 0"),
    "detection.max_boxes": (_int_at_least(1), "an integer >= 1"),
}


def _choices() -> dict:
    """field: allowed values, for the fields that name one of a few things."""
    return {"optim.name": OPTIMIZERS, "parallel": PARALLEL_MODES, "seeds_mode": SEEDS_MODES}


def check_values(config, spec: str) -> None:
    """UsageFailure naming the first field of `config` whose value is out of range (VALUE_RULES), not one
    of its choices (optim.name, parallel) or an unknown augmentation: one line `--config.<field>=<value>
    must be ...`, before anything is compiled."""
    values = field_paths(config)
    for field, (ok, what) in VALUE_RULES.items():
        if field in values and not ok(values[field]):
            raise UsageFailure(f"--config.{field}={values[field]!r} must be {what} (--config {spec})")
    for field, known in _choices().items():
        if field in values and values[field] not in known:
            raise UsageFailure(
                f"--config.{field}={values[field]!r} must be one of {list(known)} (--config {spec})"
            )
    if config.data.augment is not None:
        augment = config.data.augment
        names = (augment,) if isinstance(augment, str) else tuple(augment)
        unknown = [a for a in names if a not in AUGMENTATIONS]
        if unknown:
            raise UsageFailure(
                f"--config.data.augment={augment!r}: unknown augmentation {unknown[0]!r}; known: "
                f"{list(AUGMENTATIONS)} (--config {spec})"
            )


def resolve_warmup(config, argv: list[str], spec: str) -> str | None:
    """Make config.schedule.warmup_steps < config.num_train_steps (the cosine decay needs a step).

    A warmup the config FILE sets at or past the run's length (a short run of a long recipe, e.g.
    `--config.num_train_steps=200` of a config warming up over 200) becomes num_train_steps // 2; the
    returned note says so (None when nothing changed). A warmup given on the command line is the user's
    choice: UsageFailure naming both values."""
    warmup, steps = config.schedule.warmup_steps, config.num_train_steps
    if warmup is None or steps is None or warmup < steps:
        return None
    if "schedule.warmup_steps" in override_paths(argv):
        raise UsageFailure(
            f"--config.schedule.warmup_steps={warmup} must be below num_train_steps={steps} (the cosine "
            f"decay needs at least one step) (--config {spec})"
        )
    config.schedule.warmup_steps = steps // 2
    return (
        f"note: the config's schedule.warmup_steps={warmup} is not below num_train_steps={steps}: warming "
        f"up over {config.schedule.warmup_steps} steps instead (half the run); set "
        "--config.schedule.warmup_steps to choose"
    )


# Fields left out of the default workdir's name: where the data is read, how the run is shown and on which
# devices it runs (a run resumes under any of them: checkpoints restore onto any device count).
NOT_IN_WORKDIR_NAME = (
    "name", "data.dir", "progress", "tensorboard", "png_examples", "async_checkpoints", "cpu.devices",
    "cpu.matmul_grad", "num_devices", "parallel", "seeds_mode", "coordinator", "preemption_check_every_steps",
    "stall_timeout_s",
)  # fmt: skip


def _value_text(value) -> str:
    if isinstance(value, tuple | list):
        return ",".join(_value_text(v) for v in value)
    return str(value)


def default_workdir(config, spec: str, argv: list[str]) -> str:
    """The workdir of a command without --workdir: runs/<config name>[-<field>=<value>...], the same
    every time the same command runs, so running it again resumes the run.

    <config name> is config.name (prefixed by the config file's name when it does not start with it);
    each --config.<field> given adds `<field>=<value>` (its final value; fields in NOT_IN_WORKDIR_NAME
    aside); over 80 characters of them become a 10-digit hash of the same text.

    Examples:
      attn-jax train --config experiments/configs/detection.py --config.num_train_steps=200
      -> runs/detection-spatial-num_train_steps=200
    """
    stem = os.path.splitext(os.path.basename(spec.split(":", 1)[0]))[0]
    name = str(config.name or stem).replace(",", "-")
    if not name.startswith(stem):
        name = f"{stem}-{name}"
    known = field_paths(config)
    parts = [
        f"{path}={_value_text(known[path])}"
        for path in dict.fromkeys(override_paths(argv))
        if path in known and path not in NOT_IN_WORKDIR_NAME
    ]
    suffix = re.sub(r"[^A-Za-z0-9._,=+-]", "", "-".join(parts))
    if len(suffix) > 80:
        suffix = "overrides-" + hashlib.sha256("-".join(parts).encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._,=+-]", "_", name)
    return os.path.join("runs", f"{name}-{suffix}" if suffix else name)


def shown_command(argv: list[str]) -> str:
    """argv (argv[0]: "attn-jax train" or a script path) as a shell command line to copy."""
    program, args = argv[0], argv[1:]
    head = f"python {shlex.quote(program)}" if program.endswith(".py") else program
    return " ".join([head, *map(shlex.quote, args)])


def validate(argv: list[str], required: bool = True):
    """Load --config FILE[:ARG] of argv and check its --config.<field> overrides name fields (before absl
    parses them); returns the loaded config (None when argv has no --config and it is not required)."""
    spec = config_spec(argv)
    if spec is None:
        if required:
            raise UsageFailure(
                "--config is required, e.g. --config experiments/configs/classification.py (see --help)"
            )
        return None
    config = load_config(spec)
    check_fields(config, spec)
    check_overrides(config, argv, spec)
    return config


def check_fields(config, spec: str) -> None:
    """UsageFailure when the config of `spec` lacks a field of attn_jax.train.config.base_config of its task
    (a config file written without base_config): the loop reads every one of them."""
    task = config.get("task") if hasattr(config, "get") else None
    if task not in TASK_FIELDS:
        raise UsageFailure(f"config {spec!r}: config.task={task!r} must be one of {sorted(TASK_FIELDS)}")
    have = field_paths(config)
    missing = [path for path in field_paths(base_config(task, "spatial")) if path not in have]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise UsageFailure(
            f"config {spec!r} lacks the fields {shown}: build it on "
            f"attn_jax.train.config.base_config({task!r}, ...), which holds every field and its default"
        )


def _type_name(config, key: str) -> str:
    try:
        kind = config.get_type(key)
    except Exception:  # noqa: BLE001 - a field without a fixed type
        return ""
    return getattr(kind, "__name__", str(kind))


def fields_text(spec: str) -> str:
    """Every field of the config `spec` with its default and type, one per line."""
    config = load_config(spec)
    lines = [f"Fields of --config {spec} (set any with --config.<field>=VALUE; tuples as '(a, b)'):"]
    for path, value in field_paths(config).items():
        if hasattr(value, "keys"):
            continue
        parent, _, key = path.rpartition(".")
        owner = config
        for part in filter(None, parent.split(".")):
            owner = owner[part]
        kind = _type_name(owner, key)
        lines.append(f"  --config.{path}={value!r}" + (f"  ({kind})" if kind else ""))
    return "\n".join(lines)


def help_text(command: str, program: str, argv: list[str]) -> str:
    """The --help of `command` ("train" or "eval"); with --config given, its fields and their defaults."""
    what = {
        "train": "Train (or resume) the config's task model; outputs, checkpoints, metrics in --workdir.",
        "eval": "Evaluate the latest readable checkpoint in --workdir: the config's model, its test split.",
    }[command]
    pad = " " * 24
    if command == "train":
        usage = "--config FILE[:ARG] [--config.<field>=VALUE ...] [--workdir DIR] [--restart] [-v N]"
        workdir = [
            "  --workdir DIR         output directory; one holding a run of this config is resumed. Default:",
            f"{pad}runs/<config name>[-<field>=<value> for each --config.<field> given],",
            f"{pad}the same for the same command (printed at the start)",
            "  --restart             start over in a --workdir that holds a run (of this config or",
            f"{pad}another: another config is refused without it); its files move to",
            f"{pad}<workdir>/previous/<n>/",
        ]
    else:
        usage = "--config FILE[:ARG] [--config.<field>=VALUE ...] --workdir DIR [-v N]"
        workdir = [
            "  --workdir DIR         directory of a run (the --workdir it was trained with, holding",
            f"{pad}checkpoints/)",
        ]
    text = [
        f"usage: {program} {usage}",
        "",
        what,
        "",
        "flags:",
        "  --config FILE[:ARG]   experiment config file, e.g. experiments/configs/classification.py:cbam",
        f"{pad}ARG: '<attention>[,tiny]', <attention> in attn_jax.nn.available_attention()",
        "  --config.<field>=V    override one config field, e.g. --config.optim.lr=3e-3",
        f"{pad}or --config.model.features='(8, 16)'",
        *workdir,
        "  -v N, --verbosity N   also log orbax / tfds INFO messages (default: warnings only)",
        "  -h, --help            this help; with --config FILE, also every --config.<field> and its default",
        "  --helpfull            every absl flag",
    ]
    if command == "train":
        text += [
            "",
            "Running the same command again, from the same directory, resumes the run from its latest",
            "checkpoint: the run directory and that command are printed at the start and on a stop.",
            "",
            "exit status: 0 finished; 1 failed (disk full, non-finite loss: one line saying what to do);",
            f"  {EXIT_USAGE} bad command line, config value, workdir or data (one line, before compiling);",
            f"  {EXIT_PREEMPTED} stopped by SIGTERM with a checkpoint saved (the same command resumes);",
            "  130 interrupted by Ctrl-C (the same command resumes from the last saved checkpoint)",
        ]
    spec = config_spec(argv)
    fields = fields_text(spec) if spec is not None else f"Every config field: {program} --config FILE --help"
    text += ["", fields]
    return "\n".join(text)
