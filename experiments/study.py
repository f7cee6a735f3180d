"""The study: every attention family on every task, K seeds each, with 95% intervals and paired differences
against no attention.

    python experiments/study.py                                    # every task and family, K = 5
    python experiments/study.py --tasks classification --families none spatial cbam
    python experiments/study.py --steps classification=3200 --tasks classification --families none spatial
    python experiments/study.py --tiny --tasks classification --families none spatial --seeds 2 --steps 4 \
        --workdir-root /tmp/study                                  # seconds (tests)

For each task (classification, detection, segmentation) and attention family (none, spatial, additive, se,
cbam, eca, gate, nonlocal) it trains the task's experiment config (experiments/configs/<task>.py:<family>)
with ``config.num_seeds = K`` (default 5): the K seeds (0 .. K-1) in one compiled program
(attn_jax.train.seeds), one run per family and task, in ``<workdir-root>/<task>/<family>/``. Every family
trains on the same seeds, so seed i gives each of them the same data order and augmentation and the
differences are paired by seed. ``none`` is always trained: it is the baseline.

The study is resumable: a run whose ``summary.json`` says ``stop_reason: "done"`` (with the same steps and
K) is skipped, an unfinished one resumes from its latest checkpoint; run the same command again after an
interruption. A workdir that holds a run of other steps or another K is refused (one line): pick another
``--workdir-root``.

Step budgets (``--steps``; one number for every task or TASK=N entries), chosen so that each task's part
(8 families x K = 5 seeds) trains within 60 minutes on the 2-core CPU, compilation and the final evaluation
included. The estimate comes from one short timed run of each task's config (spatial attention) at K = 5,
with the study's eval batch:

    attn-jax train --config experiments/configs/TASK.py --config.num_seeds=5 \
        --config.num_train_steps=30 --config.log_every_steps=10 --config.checkpoint_every_steps=0 \
        --config.data.eval_batch_size=100 --config.stall_timeout_s=3600 \
        --config.progress=False --config.tensorboard=False --config.png_examples=0 --workdir /tmp/est/TASK

measured on 2026-12-07 on the shared 2-core AMD EPYC at load average 4.3-4.8 (other jobs running):

    task            s/step, 5 seeds   start + compile   eval, whole split   study's eval   steps   per task
    classification  1.48              30 s              72 s                whole, 72 s    200     53 min
    detection       0.98              22 s              261 s               2000, 52 s     300     49 min
    segmentation    2.45              20 s              470 s               1000, 47 s     120     48 min

(per task = 8 x (start + compile + study's eval + steps x s/step); the evaluation of a subset is scaled
from the whole split's). The 7 to 12 minutes left cover the families that cost more than spatial attention
(not timed). On a quieter machine more steps fit: time the command above there and give --steps.
These budgets are far below the configs' own (3,200 / 2,000 / 2,000 steps): the models are not trained to
convergence, and the study compares the families at equal, short budgets. The warmup is the config's,
capped at a tenth of the steps; the learning rate decays over the study's steps (cosine); evaluation is at
the end only, on the whole test split (classification) or its first 2,000 / 1,000 examples (detection /
segmentation: the K-model evaluation of the whole split would take longer than the training), the same
examples for every family.

Writes, into ``--results-dir`` (default experiments/results; <workdir-root>/results with --tiny):
``study_<task>.json`` per task (per family: the per-seed test metrics, their mean, std and 95% Student-t
interval, and the paired difference from ``none`` with its interval and p-value, as
attn_jax.compare.compare_runs computes them; each run's training and wall time; the command, date and
machine), ``study.md`` (one table per task: mean ± 95% CI half-width, difference from none [95% CI], * where
that interval excludes 0, p-value) and ``study.png`` (one panel per task: each family's mean of the task's
main metric with its 95% interval and the per-seed values). Both cover every study_<task>.json in the
results directory made with the same --tiny.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python experiments/study.py` puts only experiments/ on the path
    sys.path.insert(0, ROOT)

from benchmarks.harness import cpu_model  # noqa: E402

TASKS = ("classification", "detection", "segmentation")
FAMILIES = ("none", "spatial", "additive", "se", "cbam", "eca", "gate", "nonlocal")
BASELINE = "none"
# the default step budget of each task: its part of the study within 60 minutes on the 2-core CPU at K = 5
DEFAULT_STEPS = {"classification": 200, "detection": 300, "segmentation": 120}
# the metrics of each task's Markdown table (the plot shows the first); the JSON holds every headline metric
TABLE_METRICS = {
    "classification": ("accuracy",),
    "detection": ("AP50_voc", "mAP"),
    "segmentation": ("mIoU", "pixel_accuracy"),
}
# the test examples each run is evaluated on (0: the whole split of 10,000); the first N of the split, the
# same for every family: the K-model evaluation of the whole split takes 260 s (detection) and 470 s
# (segmentation) per run at load 4.5, more than the training budget
EVAL_EXAMPLES = {"classification": 0, "detection": 2000, "segmentation": 1000}
DEFAULT_SEEDS = 5
STALL_TIMEOUT_S = 3600.0  # the study's runs: the final evaluation of K models counts as one stalled step
RESULTS_DIR = os.path.join(ROOT, "experiments", "results")


def experiment_config(task: str, family: str, tiny: bool):
    """experiments/configs/<task>.py's get_config("<family>[,tiny]"), loaded by path as the CLI does."""
    path = os.path.join(ROOT, "experiments", "configs", f"{task}.py")
    spec = importlib.util.spec_from_file_location(f"_study_{task}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(family + (",tiny" if tiny else ""))


def run_config(task: str, family: str, *, num_seeds: int, steps: int, tiny: bool, data_dir: str | None):
    """The config of one study run: the task's experiment config for `family` with K seeds and `steps`
    steps; the warmup capped at a tenth of the steps, evaluation at the end, a checkpoint every quarter."""
    c = experiment_config(task, family, tiny)
    c.seed, c.num_seeds, c.num_train_steps = 0, num_seeds, steps
    c.schedule.warmup_steps = min(c.schedule.warmup_steps, steps // 10)
    c.log_every_steps = max(1, min(c.log_every_steps, steps // 4))
    c.eval_every_steps = 0
    c.checkpoint_every_steps = max(1, steps // 4)
    c.keep_latest, c.keep_best = 1, 0
    c.progress, c.tensorboard, c.png_examples = False, False, 0
    # the eval step runs K models at once: the config's eval batch split over them keeps its memory (a
    # segmentation eval batch of 500 x 5 seeds took 18 GB); the final evaluation runs under the stall
    # watchdog, so it gets longer than a single model's
    c.data.eval_batch_size = max(1, c.data.eval_batch_size // num_seeds)
    if not tiny:
        c.data.eval_examples = EVAL_EXAMPLES[task]
    c.stall_timeout_s = max(c.stall_timeout_s, STALL_TIMEOUT_S)
    if data_dir is not None:
        c.data.dir = data_dir
    return c


def read_json(path: str):
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class StudyError(ValueError):
    """A workdir that holds another experiment's run; the message is one line."""


def is_finished(workdir: str, config) -> bool:
    """Whether `workdir` holds this run finished (summary.json's stop_reason "done").

    Raises:
      StudyError: the workdir holds a run of other steps or another number of seeds.
    """
    saved = read_json(os.path.join(workdir, "config.json"))
    if isinstance(saved, dict):
        for field in ("num_train_steps", "num_seeds"):
            if saved.get(field) != config[field]:
                raise StudyError(
                    f"{workdir} holds a run with {field} {saved.get(field)!r}, the study asks for "
                    f"{config[field]!r}: pick another --workdir-root"
                )
    summary = read_json(os.path.join(workdir, "summary.json"))
    return isinstance(summary, dict) and summary.get("stop_reason") == "done"


def train_task(task: str, families, args) -> dict[str, dict]:
    """Train (or skip, when finished) every family's run of `task`; {family: {workdir, trained}}."""
    from attn_jax.train import train_and_evaluate

    runs = {}
    for family in families:
        workdir = os.path.join(args.workdir_root, task, family)
        config = run_config(task, family, num_seeds=args.seeds, steps=args.steps[task], tiny=args.tiny,
                            data_dir=args.data_dir)  # fmt: skip
        if is_finished(workdir, config):
            print(f"{task}/{family}: finished run in {workdir}, skipped", flush=True)
            runs[family] = {"workdir": workdir, "trained": False, "eval_examples": config.data.eval_examples}
            continue
        print(
            f"{task}/{family}: training {args.steps[task]} steps x {args.seeds} seeds in {workdir}",
            flush=True,
        )
        start = time.perf_counter()
        summary = train_and_evaluate(config, workdir)
        if summary.get("stop_reason") != "done":
            raise SystemExit(f"{task}/{family} stopped ({summary.get('stop_reason')}): run the study again")
        print(f"{task}/{family}: done in {time.perf_counter() - start:.0f} s", flush=True)
        runs[family] = {"workdir": workdir, "trained": True, "eval_examples": config.data.eval_examples}
    return runs


def task_results(task: str, runs: dict[str, dict], args, command: str) -> dict:
    """The study_<task>.json document: every family's metrics over seeds and its paired difference from
    none (attn_jax.compare.compare_runs of the runs, none first)."""
    from attn_jax.compare import compare_runs, load_run

    families = list(runs)
    loaded = [load_run(runs[f]["workdir"]) for f in families]
    comparison = compare_runs(loaded)
    out = {
        "meta": {
            "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "cpu_model": cpu_model() or "unknown",
                "cores": os.cpu_count(),
                "platform": platform.platform(),
            },  # fmt: skip
            "loadavg": list(os.getloadavg()),
            "tiny": args.tiny,
        },
        "task": task,
        "steps": args.steps[task],
        "eval_examples": runs[BASELINE]["eval_examples"],
        "num_seeds": comparison["num_seeds"],
        "seeds": comparison["seeds"],
        "confidence": comparison["confidence"],
        "baseline": BASELINE,
        "metrics": comparison["metrics"],
        "table_metrics": [f"test_{m}" for m in TABLE_METRICS[task]],
        "families": {},
    }
    for family, entry in zip(families, comparison["runs"], strict=True):
        summary = read_json(os.path.join(runs[family]["workdir"], "summary.json")) or {}
        out["families"][family] = {
            "workdir": runs[family]["workdir"],
            "trained_now": runs[family]["trained"],
            "train_time_s": summary.get("train_time_s"),
            "wall_time_s": summary.get("wall_time_s"),
            "metrics": entry["metrics"],
            "vs_none": entry["vs_baseline"],
        }
    return out


def _cell_mean(entry: dict) -> str:
    if entry["mean"] is None:
        return "non-finite"
    if entry["low"] is None:
        return f"{entry['mean']:.4f}"
    return f"{entry['mean']:.4f} ± {(entry['high'] - entry['low']) / 2:.4f}"


def _cell_difference(diff: dict | None) -> str:
    if diff is None:
        return "baseline"
    if diff["mean"] is None:
        return "non-finite"
    if diff["low"] is None:
        return f"{diff['mean']:+.4f}"
    star = " *" if diff["low"] > 0 or diff["high"] < 0 else ""
    return f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]{star}"


def _cell_p(diff: dict | None) -> str:
    if diff is None or diff["mean"] is None:
        return "—"
    p = diff["p_value"]
    if p is None:
        return "—"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def _test_examples(limit: int) -> str:
    return f"the first {limit} test examples" if limit else "the whole test split"


def markdown(documents: list[dict]) -> str:
    """One Markdown table per task: each family's mean ± 95% CI half-width and its paired difference from
    none [95% CI] (* where the interval excludes 0) with the paired t-test p-value."""
    lines = []
    for doc in documents:
        level = f"{doc['confidence']:.0%}"
        lines += [
            f"## {doc['task']}",
            "",
            f"{doc['steps']} steps, K = {doc['num_seeds']} seeds {doc['seeds']}, "
            f"{_test_examples(doc.get('eval_examples', 0))}; mean ± half-width of the "
            f"{level} Student-t interval over seeds; Δ = family − {doc['baseline']}, paired by seed, "
            f"[{level} CI], * where it excludes 0; p: paired t-test.",
            "",
        ]
        header, rule = ["family"], ["---"]
        for metric in doc["table_metrics"]:
            name = metric.removeprefix("test_")
            header += [name, f"Δ {name} vs {doc['baseline']}", "p"]
            rule += ["---:", "---:", "---:"]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
        for family, entry in doc["families"].items():
            cells = [family]
            for metric in doc["table_metrics"]:
                diff = (entry["vs_none"] or {}).get(metric)
                cells += [_cell_mean(entry["metrics"][metric]), _cell_difference(diff), _cell_p(diff)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(documents: list[dict], path: str) -> str:
    """One panel per task: each family's mean of the task's main metric with its 95% interval (bars) and
    the per-seed values (dots); the dashed line is none's mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(documents), figsize=(max(5.5, 4.5 * len(documents)), 3.9), squeeze=False)
    for ax, doc in zip(axes[0], documents, strict=True):
        metric = doc["table_metrics"][0]
        names = list(doc["families"])
        for x, family in enumerate(names):
            entry = doc["families"][family]["metrics"][metric]
            seeds = [v for v in entry["per_seed"] if v is not None]
            ax.scatter(np.full(len(seeds), x) + np.linspace(-0.15, 0.15, len(seeds)), seeds, s=8,
                       color="0.6", zorder=1)  # fmt: skip
            if entry["mean"] is None:
                continue
            low = entry["low"] if entry["low"] is not None else entry["mean"]
            high = entry["high"] if entry["high"] is not None else entry["mean"]
            diff = (doc["families"][family]["vs_none"] or {}).get(metric)
            excludes_zero = (
                diff is not None and diff["low"] is not None and (diff["low"] > 0 or diff["high"] < 0)
            )
            ax.errorbar(x, entry["mean"], yerr=[[entry["mean"] - low], [high - entry["mean"]]], fmt="o",
                        capsize=4, color="C3" if excludes_zero else "C0", zorder=2)  # fmt: skip
        base = doc["families"].get(doc["baseline"], {}).get("metrics", {}).get(metric, {})
        if base.get("mean") is not None:
            ax.axhline(base["mean"], color="0.4", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_title(
            f"{doc['task']}: {metric.removeprefix('test_')}\n{doc['steps']} steps, K = {doc['num_seeds']}"
        )
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "means and 95% intervals over seeds\n"
        "(red: the paired Δ vs none excludes 0; dots: seeds; dashed: none)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _names(values, known, flag: str) -> list[str]:
    """Space- or comma-separated names, each one of `known`, in the order of `known`, without repeats."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{flag} must name some of {', '.join(known)}; got {unknown[0]!r}")
    return [n for n in known if n in names]


def _steps(values, tasks, tiny: bool) -> dict[str, int]:
    """--steps N (every task) or TASK=N entries; the others keep DEFAULT_STEPS (with --tiny, the tiny
    configs' num_train_steps)."""
    steps = (
        {t: experiment_config(t, BASELINE, True).num_train_steps for t in TASKS}
        if tiny
        else dict(DEFAULT_STEPS)
    )
    for value in values or ():
        task, sep, number = value.rpartition("=")
        if sep and task not in TASKS:
            raise ValueError(f"--steps TASK=N must name a task of {', '.join(TASKS)}; got {value!r}")
        if not number.isdigit() or int(number) < 1:
            raise ValueError(f"--steps must be N or TASK=N with N an integer >= 1; got {value!r}")
        for name in [task] if sep else tasks:
            steps[name] = int(number)
    return steps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"some of {', '.join(TASKS)}")
    p.add_argument("--families", nargs="+", default=list(FAMILIES),
                   help=f"some of {', '.join(FAMILIES)} (none is always added: the baseline)")  # fmt: skip
    p.add_argument(
        "--seeds", type=int, default=DEFAULT_SEEDS, help="K: seeds per run, trained in one program"
    )
    p.add_argument("--steps", nargs="+", metavar="N|TASK=N",
                   help=f"training steps per run (default {DEFAULT_STEPS})")  # fmt: skip
    p.add_argument("--workdir-root", default=os.path.join("runs", "study"))
    p.add_argument("--results-dir", default=None, help="default experiments/results (--tiny: <root>/results)")
    p.add_argument("--data-dir", default=None, help="the TFDS directory (default: the configs')")
    p.add_argument("--tiny", action="store_true", help="the tiny configs and datasets (tests)")
    args = p.parse_args(argv)
    try:
        args.tasks = _names(args.tasks, TASKS, "--tasks")
        args.families = _names([BASELINE, *args.families], FAMILIES, "--families")
        args.steps = _steps(args.steps, args.tasks, args.tiny)
    except ValueError as err:
        p.error(str(err))
    if args.seeds < 2:
        p.error(f"--seeds must be an integer >= 2 (one seed has no interval), got {args.seeds}")
    if args.results_dir is None:
        args.results_dir = os.path.join(args.workdir_root, "results") if args.tiny else RESULTS_DIR
    return args


def collected(results_dir: str, tiny: bool) -> list[dict]:
    """Every study_<task>.json in results_dir made with the same --tiny, in task order."""
    documents = []
    for task in TASKS:
        doc = read_json(os.path.join(results_dir, f"study_{task}.json"))
        if isinstance(doc, dict) and doc.get("meta", {}).get("tiny") == tiny:
            documents.append(doc)
    return documents


def main(argv=None) -> dict[str, dict]:
    args = parse_args(argv)
    command = "python experiments/study.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.results_dir, exist_ok=True)
    start = time.perf_counter()
    documents = {}
    for task in args.tasks:
        task_start = time.perf_counter()
        try:
            runs = train_task(task, args.families, args)
        except StudyError as err:
            print(f"study.py: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        doc = task_results(task, runs, args, command)
        doc["meta"]["task_wall_time_s"] = round(time.perf_counter() - task_start, 1)
        path = os.path.join(args.results_dir, f"study_{task}.json")
        with open(path, "w") as f:
            json.dump(doc, f, indent=1, allow_nan=False)
            f.write("\n")
        documents[task] = doc
        print(f"{task}: {doc['meta']['task_wall_time_s']:.0f} s; wrote {path}", flush=True)
    everything = collected(args.results_dir, args.tiny)
    table = markdown(everything)
    with open(os.path.join(args.results_dir, "study.md"), "w") as f:
        f.write(table)
    figure = plot(everything, os.path.join(args.results_dir, "study.png"))
    print("\n" + table)
    print(f"total {time.perf_counter() - start:.0f} s; wrote {args.results_dir}/study.md and {figure}")
    return documents


if __name__ == "__main__":
    main()
