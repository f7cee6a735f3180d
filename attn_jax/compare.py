"""`attn-jax compare`: the runs' test metrics with 95% intervals over seeds, and paired differences.

attn-jax compare RUN_A RUN_B ... [--baseline RUN] [--metrics m1,m2] [--output table.md] [--json out.json]
python -m attn_jax.compare RUN_A RUN_B ...          # the same

Each RUN is a workdir of a finished ``attn-jax train``: its ``summary.json`` (the seeds block of
:mod:`attn_jax.train.seed_summary`; a summary without one is a run of one seed, ``config.seed``) and its
``config.json``. The Markdown table on stdout gives, for each metric and run, the mean over seeds with its
95% Student-t interval, and the mean per-seed difference from the baseline run (the first RUN unless
``--baseline`` names another) with its 95% interval and the two-sided paired t-test p-value
(:func:`attn_jax.metrics.intervals.paired_difference`). Runs must be comparable: the same task, dataset and
seeds (so run i and the baseline share seed i's data order, and its initialisation where the models have
the same parameters); otherwise, or for a workdir without a finished summary, the command prints one line
``attn-jax compare: error: ...`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence

from attn_jax.metrics.intervals import paired_difference, seed_interval
from attn_jax.train import get_task
from attn_jax.train.config import upgrade_saved_config
from attn_jax.train.seed_summary import read_seed_metrics

PROG = "attn-jax compare"
CONFIDENCE = 0.95
NO_INTERVAL = "1 seed: no interval"


class CompareError(ValueError):
    """Runs that cannot be compared, or a workdir that holds no finished run; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished run, as ``attn-jax compare`` reads it from its workdir.

    Attributes:
      name: the config's name (``config.json``'s ``name``), else the workdir's basename.
      workdir: the run directory as given.
      task: the summary's task.
      dataset: the config's dataset.
      seeds: the K seeds, in replica order.
      per_seed: ``{metric: [K values]}`` for every numeric test metric (``test_<name>``); None where that
        seed's value was not finite.
    """

    name: str
    workdir: str
    task: str
    dataset: str
    seeds: list[int]
    per_seed: dict[str, list[float | None]]


def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise CompareError(f"{os.path.dirname(path) or '.'} holds no {what}: not a finished run's workdir")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise CompareError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def load_run(workdir: str) -> Run:
    """Read one run's ``summary.json`` and ``config.json``.

    Args:
      workdir: the run directory of a finished ``attn-jax train``.

    Returns:
      The :class:`Run`; a summary without a seeds block is K = 1 with seeds ``[config.seed]``.

    Raises:
      CompareError: either file is missing or unreadable, the run is unfinished (``stop_reason`` is not
        ``"done"``), the seeds block is malformed, or its K differs from ``config.num_seeds``.
    """
    summary = _read_json(os.path.join(workdir, "summary.json"), "summary.json")
    # grouped fields (data.dataset); runs saved with the older flat names read the same
    config = upgrade_saved_config(_read_json(os.path.join(workdir, "config.json"), "config.json"))
    if summary.get("stop_reason") != "done":
        raise CompareError(
            f"{workdir} is an unfinished run (summary stop_reason {summary.get('stop_reason')!r}, "
            "not 'done'): run its train command again to finish it"
        )
    try:
        seeds, per_seed = read_seed_metrics(summary, config.get("seed"))
    except ValueError as err:
        raise CompareError(f"{workdir}/summary.json: {err}") from None
    num_seeds = config.get("num_seeds", 1)
    if num_seeds != len(seeds):
        raise CompareError(
            f"{workdir}: summary.json holds {len(seeds)} seed(s) {seeds} "
            f"but config.num_seeds is {num_seeds!r}"
        )
    name = config.get("name") or os.path.basename(os.path.normpath(workdir))
    task = summary.get("task", config.get("task"))
    return Run(str(name), workdir, str(task), str(config.get("data", {}).get("dataset")), seeds, per_seed)


def _unique_names(runs: list[Run]) -> list[Run]:
    """Runs whose config names collide (one config, two workdirs) are named by their workdirs instead."""
    names = [r.name for r in runs]
    out = []
    for run in runs:
        if names.count(run.name) > 1:
            run = dataclasses.replace(run, name=os.path.normpath(run.workdir))
        out.append(run)
    return out


def check_comparable(runs: Sequence[Run]) -> None:
    """Raise CompareError unless every run has the baseline's (the first's) task, dataset, K and seeds.

    Args:
      runs: the runs, the baseline first.

    Raises:
      CompareError: one line naming the first run that differs and how.
    """
    base = runs[0]
    for run in runs[1:]:
        for what, mine, theirs in (
            ("task", run.task, base.task),
            ("dataset", run.dataset, base.dataset),
            ("number of seeds K", len(run.seeds), len(base.seeds)),
            ("seeds", sorted(run.seeds), sorted(base.seeds)),
        ):
            if mine != theirs:
                raise CompareError(
                    f"runs are not comparable: {run.name} ({run.workdir}) has {what} {mine!r}, "
                    f"the baseline {base.name} ({base.workdir}) has {theirs!r}"
                )


def _default_metrics(runs: Sequence[Run]) -> list[str]:
    """The task's headline metrics that every run has; else every numeric test metric they share."""
    shared = [m for m in runs[0].per_seed if all(m in r.per_seed for r in runs)]
    try:
        headline = [f"test_{m}" for m in get_task(runs[0].task).headline]
    except ValueError:
        headline = []
    return [m for m in headline if m in shared] or shared


def _select_metrics(runs: Sequence[Run], metrics: Sequence[str] | None) -> list[str]:
    if not metrics:
        chosen = _default_metrics(runs)
        if not chosen:
            raise CompareError(
                f"the runs share no numeric test metric (the baseline has {list(runs[0].per_seed)})"
            )
        return chosen
    chosen = []
    for metric in metrics:
        key = metric if metric.startswith("test_") else f"test_{metric}"
        lacking = [r.name for r in runs if key not in r.per_seed]
        if lacking:
            known = sorted(m.removeprefix("test_") for m in runs[0].per_seed)
            raise CompareError(f"--metrics: {metric!r} is not a test metric of {lacking[0]}; it has {known}")
        chosen.append(key)
    return chosen


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _interval_entry(values: list[float | None]) -> dict:
    """JSON of a metric over seeds: per-seed values, mean, std, low, high (None where undefined)."""
    entry = {"per_seed": values, "mean": None, "std": None, "low": None, "high": None}
    if all(v is not None for v in values):
        interval = seed_interval(values, CONFIDENCE)
        entry.update(
            mean=interval.mean,
            std=_none_if_nan(interval.std),
            low=_none_if_nan(interval.low),
            high=_none_if_nan(interval.high),
        )
    return entry


def _difference_entry(run_values: list[float | None], base_values: list[float | None]) -> dict:
    """JSON of the paired difference run - baseline: mean, std, low, high, p_value (None where undefined)."""
    entry = {"mean": None, "std": None, "low": None, "high": None, "p_value": None}
    if all(v is not None for v in run_values + base_values):
        d = paired_difference(run_values, base_values, CONFIDENCE)
        entry.update(
            mean=d.mean,
            std=_none_if_nan(d.std),
            low=_none_if_nan(d.low),
            high=_none_if_nan(d.high),
            p_value=_none_if_nan(d.p_value),
        )
    return entry


def compare_runs(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> dict:
    """Each run's metrics over seeds and its paired differences from the baseline (the first run).

    Args:
      runs: comparable runs (:func:`check_comparable`), the baseline first.
      metrics: the metrics to compare, with or without the ``test_`` prefix; None for the task's headline
        metrics (every shared numeric test metric for a task without one).

    Returns:
      Strict JSON (None where a value is undefined, never NaN): ``task``, ``dataset``, ``seeds`` (the
      baseline's order, by which every run is paired), ``num_seeds``, ``confidence``, ``baseline`` (its
      name), ``metrics`` and ``runs``: one dict per run with ``name``, ``workdir``, ``metrics``
      (``{metric: {per_seed, mean, std, low, high}}``) and ``vs_baseline``
      (``{metric: {mean, std, low, high, p_value}}`` of run - baseline; None for the baseline itself).

    Raises:
      CompareError: the runs are not comparable, or a metric is missing from a run.
    """
    runs = _unique_names(list(runs))
    check_comparable(runs)
    chosen = _select_metrics(runs, metrics)
    base = runs[0]
    out = {
        "task": base.task,
        "dataset": base.dataset,
        "seeds": base.seeds,
        "num_seeds": len(base.seeds),
        "confidence": CONFIDENCE,
        "baseline": base.name,
        "metrics": chosen,
        "runs": [],
    }
    for i, run in enumerate(runs):
        order = [run.seeds.index(s) for s in base.seeds]  # pair by seed, in the baseline's order
        values = {m: [run.per_seed[m][j] for j in order] for m in chosen}
        entry = {
            "name": run.name,
            "workdir": run.workdir,
            "metrics": {m: _interval_entry(values[m]) for m in chosen},
            "vs_baseline": None,
        }
        if i > 0:
            entry["vs_baseline"] = {m: _difference_entry(values[m], base.per_seed[m]) for m in chosen}
        out["runs"].append(entry)
    return out


def _number(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "non-finite"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _interval_cell(entry: dict, num_seeds: int, mark_zero: bool = False) -> str:
    if entry["mean"] is None:
        return "non-finite"
    if num_seeds == 1:
        return NO_INTERVAL
    low, high = entry["low"], entry["high"]
    cell = f"[{low:+.4f}, {high:+.4f}]" if mark_zero else f"[{low:.4f}, {high:.4f}]"
    return cell + (" *" if mark_zero and (low > 0 or high < 0) else "")


def _p_cell(entry: dict, num_seeds: int) -> str:
    if entry["mean"] is None:
        return "non-finite"
    if num_seeds == 1:
        return "—"
    p = entry["p_value"]
    if p is None:
        return "undefined (no spread)"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def markdown_table(comparison: dict) -> str:
    """The Markdown table of :func:`compare_runs`' result: one row per metric and run.

    Args:
      comparison: what :func:`compare_runs` returns.

    Returns:
      A heading line, the table (metric, run, mean, 95% CI, difference from the baseline, its 95% CI,
      p-value; ``*`` marks a difference whose interval excludes 0) and a line on how to read it.
    """
    k = comparison["num_seeds"]
    level = f"{comparison['confidence']:.0%}"
    lines = [
        f"{comparison['task']} on {comparison['dataset']}, {k} seed(s) {comparison['seeds']}; "
        f"{level} Student-t intervals over seeds; "
        f"Δ = run − {comparison['baseline']} (baseline), paired by seed.",
        "",
        f"| metric | run | mean | {level} CI | Δ vs baseline | {level} CI of Δ | p (paired t) |",
        "|---|---|---:|---|---:|---|---:|",
    ]
    for metric in comparison["metrics"]:
        label = metric.removeprefix("test_")
        for run in comparison["runs"]:
            entry = run["metrics"][metric]
            cells = [label, run["name"], _number(entry["mean"]), _interval_cell(entry, k)]
            diff = (run["vs_baseline"] or {}).get(metric)
            if diff is None:
                cells += ["baseline", "—", "—"]
            else:
                cells += [_number(diff["mean"], signed=True), _interval_cell(diff, k, True), _p_cell(diff, k)]
            lines.append("| " + " | ".join(cells) + " |")
    if k == 1:
        lines += ["", f"{NO_INTERVAL}: one seed gives no spread to measure."]
    elif len(comparison["runs"]) > 1:
        lines += ["", "* the interval of Δ excludes 0."]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare finished runs: mean and 95% CI over seeds per test metric, and the paired "
        "difference from a baseline run with its CI and p-value, as a Markdown table.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="workdirs of finished runs (summary.json)")
    parser.add_argument(
        "--baseline", metavar="RUN", help="the baseline run: a RUN or its name (default: the first RUN)"
    )
    parser.add_argument(
        "--metrics", metavar="m1,m2", help="comma-separated metrics (default: the task's headline metrics)"
    )
    parser.add_argument("--output", metavar="table.md", help="also write the Markdown table to this file")
    parser.add_argument(
        "--json", dest="json_path", metavar="out.json", help="also write the comparison as JSON to this file"
    )
    return parser


def _order_baseline_first(workdirs: list[str], names: list[str], baseline: str | None) -> int:
    """The index of the --baseline run among the workdirs (path or name), -1 when it is none of them."""
    if baseline is None:
        return 0
    for i, workdir in enumerate(workdirs):
        if os.path.realpath(workdir) == os.path.realpath(baseline):
            return i
    matches = [i for i, name in enumerate(names) if name == baseline]
    if len(matches) > 1:
        raise CompareError(f"--baseline {baseline!r} names {len(matches)} runs: give its workdir instead")
    return matches[0] if matches else -1


def _write(path: str, text: str, flag: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as err:
        raise CompareError(f"{flag} {path}: {err.strerror or err}") from None


def main(argv: list[str] | None = None) -> None:
    """The ``attn-jax compare`` command: print the comparison table of finished runs.

    Args:
      argv: the arguments after the command name (``RUN ... [--baseline RUN] [--metrics m1,m2]
        [--output table.md] [--json out.json]``); None for ``sys.argv[1:]``.

    Raises:
      SystemExit: status 2 for a bad command line (argparse's usage), and for runs that are not comparable
        or not finished (one line, ``attn-jax compare: error: ...``, on stderr).
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        workdirs = list(args.runs)
        real = [os.path.realpath(w) for w in workdirs]
        twice = [w for i, w in enumerate(workdirs) if real[i] in real[:i]]
        if twice:
            raise CompareError(f"RUN {twice[0]} is given twice")
        runs = [load_run(w) for w in workdirs]
        index = _order_baseline_first(workdirs, [r.name for r in runs], args.baseline)
        if index < 0 and not os.path.isdir(args.baseline):
            raise CompareError(
                f"--baseline {args.baseline!r} is neither a RUN's workdir or name nor a workdir"
            )
        if index < 0:
            runs.insert(0, load_run(args.baseline))
        else:
            runs.insert(0, runs.pop(index))
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
        if args.metrics is not None and not metrics:
            raise CompareError(f"--metrics must name at least one metric, got {args.metrics!r}")
        comparison = compare_runs(runs, metrics)
        table = markdown_table(comparison)
        if args.output:
            _write(args.output, table, "--output")
        if args.json_path:
            command = " ".join([PROG, shlex.join(sys.argv[1:] if argv is None else argv)])
            date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            document = {"meta": {"command": command, "date": date}, **comparison}
            _write(args.json_path, json.dumps(document, indent=2, allow_nan=False) + "\n", "--json")
    except CompareError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
