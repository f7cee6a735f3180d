"""Are the classifiers' attention maps faithful? Every explanation of every attention family's K seeds,
scored by deletion / insertion AUC, Average Drop and Increase in Confidence, with 95% intervals over seeds.

    python experiments/study.py --tasks classification        # first: the study's K-seed runs
    python experiments/faithfulness_study.py                  # then: score each family's replicas
    python experiments/faithfulness_study.py --tiny --study-root /tmp/study --examples 8   # seconds (tests)

It reads the classification runs of experiments/study.py (``<study-root>/classification/<family>/``, one
K-seed run per attention family) and scores replica 0 .. K-1 of each with ``python -m attn_jax.viz
faithfulness`` (attn_jax.viz.faithfulness.faithfulness_report): the family's own attention map, its
inverse, Grad-CAM, gradient x input, integrated gradients, a random map and the digits' mask (an oracle),
on the first ``--examples`` test images, the same images for every family and seed. A seed's value of a
metric is its mean over the images; over the K seeds each method gets a mean and a 95% Student-t interval
(attn_jax.metrics.intervals.seed_interval), and its paired difference from the random map of the same
model (paired_difference: same seed, same images), which says whether the map ranks the pixels the model
uses better than chance. Lower deletion AUC, higher insertion AUC, lower Average Drop and higher Increase
in Confidence mean more faithful.

Each replica's report is kept in ``<study-root>/faithfulness/<family>/replica_<i>/`` (faithfulness.{json,md,
png}); a replica whose report exists with the same settings is not scored again, so an interrupted run
resumes. Writes, into ``--results-dir`` (default experiments/results; <study-root>/results with --tiny),
``faithfulness_classification.json`` (per family and method: the per-seed values, mean, interval, and the
difference from random), ``faithfulness_classification.md`` (the tables and a verdict per family) and
``faithfulness_classification.png`` (deletion and insertion AUC per family and method, with intervals).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python experiments/faithfulness_study.py` puts only experiments/ on the path
    sys.path.insert(0, ROOT)

from experiments.study import read_json  # noqa: E402

FAMILIES = ("none", "spatial", "additive", "se", "cbam", "eca", "gate", "nonlocal")
METRICS = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")
# +1: higher is more faithful; -1: lower is
DIRECTION = {"deletion_auc": -1, "insertion_auc": 1, "average_drop": -1, "increase_in_confidence": 1}
REFERENCE = "random"  # each method's paired difference is taken against this map of the same model
RESULTS_DIR = os.path.join(ROOT, "experiments", "results")


class FaithfulnessStudyError(ValueError):
    """A study root without the runs to score; the message is one line."""


class StudyRun(NamedTuple):
    """One family's finished study run, its summary.json and config.json as read once."""

    workdir: str
    summary: dict
    config: dict

    @property
    def num_seeds(self) -> int:
        return int(self.config.get("num_seeds", 1))


def study_runs(study_root: str, families) -> dict[str, StudyRun]:
    """{family: StudyRun} of the study's classification runs that finished; one line when one is missing.

    Raises:
      FaithfulnessStudyError: a family's run is missing or unfinished.
    """
    runs = {}
    for family in families:
        workdir = os.path.join(study_root, "classification", family)
        summary = read_json(os.path.join(workdir, "summary.json"))
        config = read_json(os.path.join(workdir, "config.json"))
        if (
            not isinstance(summary, dict)
            or summary.get("stop_reason") != "done"
            or not isinstance(config, dict)
        ):
            raise FaithfulnessStudyError(
                f"no finished classification run of {family!r} in {workdir}: run "
                f"`python experiments/study.py --tasks classification --workdir-root {study_root}` first"
            )
        runs[family] = StudyRun(workdir, summary, config)
    return runs


def _settings(args) -> dict:
    return {"examples": args.examples, "steps": args.steps, "ig_steps": args.ig_steps, "target": args.target}


def score_replica(workdir: str, replica: int, out: str, args) -> tuple[dict, bool, float | None]:
    """One replica's faithfulness report (read back when it exists with the same settings); (report,
    scored now, seconds its scoring took: None when a saved report does not say)."""
    from attn_jax.viz.faithfulness import faithfulness_report

    settings = {**_settings(args), "run": os.path.abspath(workdir), "replica": replica}
    saved = read_json(os.path.join(out, "faithfulness.json"))
    saved_settings = read_json(os.path.join(out, "settings.json"))
    if isinstance(saved, dict) and isinstance(saved_settings, dict):
        if {k: saved_settings.get(k) for k in settings} == settings:
            return saved, False, saved_settings.get("scored_in_s")
    start = time.perf_counter()
    report = faithfulness_report(
        workdir, examples=args.examples, steps=args.steps, ig_steps=args.ig_steps, out=out,
        target=args.target, batch_size=args.batch_size, replica=replica,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    with open(os.path.join(out, "settings.json"), "w") as f:
        json.dump({**settings, "scored_in_s": seconds}, f)
    return report, True, seconds


def _finite(x: float) -> float | None:
    return None if x != x else float(x)


def _interval_cell(values: list[float]) -> dict:
    """{"values", "mean", "low", "high"} of per-seed values: mean and 95% Student-t interval (None bounds
    where undefined, e.g. one seed)."""
    from attn_jax.metrics.intervals import seed_interval

    interval = seed_interval(values)
    return {
        "values": values,
        "mean": interval.mean,
        "low": _finite(interval.low),
        "high": _finite(interval.high),
    }


def aggregate(reports: dict[str, list[dict]]) -> dict:
    """Per family and method: each metric's per-seed values (the mean over images of each replica), their
    mean and 95% interval, and the paired difference from the random map of the same replica.

    Args:
      reports: {family: [replica 0's report, replica 1's, ...]} as faithfulness_report writes them.

    Returns:
      {family: {"seeds": [...], "methods": {method: {metric: {"values", "mean", "low", "high",
      "vs_random": {"mean", "low", "high", "p_value"} | None}}}, "notes": [...]}}.
    """
    from attn_jax.metrics.intervals import paired_difference

    out = {}
    for family, replicas in reports.items():
        methods = [m for m in replicas[0]["methods"] if all(m in r["methods"] for r in replicas)]
        seeds = [r["replica_seed"] for r in replicas]
        entry = {"seeds": seeds, "methods": {}, "notes": replicas[0].get("notes", [])}
        for method in methods:
            row = {}
            for metric in METRICS:
                values = [r["methods"][method][metric]["mean"] for r in replicas]
                cell = {**_interval_cell(values), "vs_random": None}
                if method != REFERENCE and REFERENCE in methods:
                    base = [r["methods"][REFERENCE][metric]["mean"] for r in replicas]
                    diff = paired_difference(values, base)
                    cell["vs_random"] = {
                        "mean": diff.mean,
                        "low": _finite(diff.low),
                        "high": _finite(diff.high),
                        "p_value": _finite(diff.p_value),
                    }
                row[metric] = cell
            entry["methods"][method] = row
        out[family] = entry
    return out


def verdict(entry: dict) -> str:
    """One phrase per family on its own attention map: faithful when its deletion AUC is below and its
    insertion AUC above the random map's with both intervals excluding zero; inverted when both are
    significantly on the wrong side; otherwise not distinguishable from random."""
    if "attention" not in entry["methods"]:
        return "no spatial map"
    better, worse = [], []
    for metric in ("deletion_auc", "insertion_auc"):
        diff = entry["methods"]["attention"][metric]["vs_random"]
        if diff is None or diff["low"] is None:
            return "one seed: no interval"
        if DIRECTION[metric] > 0:  # higher is more faithful: the difference's interval above 0 is better
            better.append(diff["low"] > 0)
            worse.append(diff["high"] < 0)
        else:
            better.append(diff["high"] < 0)
            worse.append(diff["low"] > 0)
    if all(better):
        return "faithful"
    if all(worse):
        return "inverted"
    if any(better):
        return "partly faithful"
    return "not better than random"


def _cell(cell: dict) -> str:
    if cell["low"] is None:
        return f"{cell['mean']:.3f}"
    return f"{cell['mean']:.3f} ± {(cell['high'] - cell['low']) / 2:.3f}"


def _diff_cell(diff: dict | None) -> str:
    if diff is None:
        return "reference"
    if diff["low"] is None:
        return f"{diff['mean']:+.3f}"
    star = " *" if diff["low"] > 0 or diff["high"] < 0 else ""
    return f"{diff['mean']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]{star}"


def markdown(doc: dict) -> str:
    """The tables of faithfulness_classification.md."""
    families = doc["families"]
    methods = doc["methods"]
    k = doc["num_seeds"]
    lines = [
        f"# Faithfulness of the classifiers' explanations ({k} seeds per family)",
        "",
        f"Study runs: {doc['study_steps']} steps per run; {doc['examples']} test images per replica "
        f"(the same for every family and seed); curves of {doc['steps']} steps, deletion baseline "
        f"{doc['baselines']['deletion']}, insertion baseline {doc['baselines']['insertion']}; target: the "
        f"{doc['target']} class. Cells: mean over seeds ± 95% Student-t half-width.",
        "",
    ]
    for metric, title in (("deletion_auc", "Deletion AUC (lower = more faithful)"),
                          ("insertion_auc", "Insertion AUC (higher = more faithful)")):  # fmt: skip
        lines += [f"## {title}", "", "| family | test accuracy | " + " | ".join(methods) + " |",
                  "|---|---|" + "---|" * len(methods)]  # fmt: skip
        for family, entry in families.items():
            cells = [_cell(entry["methods"][m][metric]) if m in entry["methods"] else "-" for m in methods]
            lines.append(f"| {family} | {_cell(entry['test_accuracy'])} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Each family's attention map against the random map of the same model",
        "",
        "Paired by seed (same model, same images): mean difference [95% interval], * where the interval "
        "excludes 0. Faithful: deletion below and insertion above random, both significant.",
        "",
        "| family | Δ deletion AUC | Δ insertion AUC | Δ Average Drop | Δ Increase in Confidence | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for family, entry in families.items():
        if "attention" not in entry["methods"]:
            lines.append(f"| {family} | - | - | - | - | {verdict(entry)} |")
            continue
        cells = [_diff_cell(entry["methods"]["attention"][m]["vs_random"]) for m in METRICS]
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {verdict(entry)} |")
    scoring = doc["meta"]["scoring_time_s"]
    took = "scoring time not recorded" if scoring is None else f"scoring {scoring:.0f} s"
    meta = doc["meta"]
    lines += ["", f"Command: `{meta['command']}`; {took}, this invocation {meta['wall_time_s']:.0f} s, load "
              f"{meta['loadavg'][0]:.1f} at the end.", ""]  # fmt: skip
    return "\n".join(lines)


def plot(doc: dict, path: str) -> str:
    """Deletion and insertion AUC per family (x) and method (markers) with their 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families, methods = list(doc["families"]), doc["methods"]
    fig, axes = plt.subplots(1, 2, figsize=(13.5, 4), squeeze=False)
    for ax, metric in zip(axes[0], ("deletion_auc", "insertion_auc"), strict=True):
        width = 0.8 / len(methods)
        for j, method in enumerate(methods):
            xs, ys, errs = [], [], []
            for i, family in enumerate(families):
                cell = doc["families"][family]["methods"].get(method, {}).get(metric)
                if cell is None:
                    continue
                xs.append(i - 0.4 + (j + 0.5) * width)
                ys.append(cell["mean"])
                errs.append(0.0 if cell["low"] is None else (cell["high"] - cell["low"]) / 2)
            ax.errorbar(xs, ys, yerr=errs, fmt="o", ms=4, capsize=2, label=method)
        ax.set_xticks(range(len(families)), families, rotation=30)
        ax.set_title(metric.replace("_", " ") + (" (lower = faithful)" if DIRECTION[metric] < 0 else
                                                 " (higher = faithful)"))  # fmt: skip
        ax.grid(axis="y", alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"Classification explanations, mean over {doc['num_seeds']} seeds with 95% intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python experiments/faithfulness_study.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--study-root", default=os.path.join("runs", "study"), help="experiments/study.py's root")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), help=f"some of {', '.join(FAMILIES)}")
    p.add_argument("--examples", type=int, default=64, help="test images per replica (default 64)")
    p.add_argument("--steps", type=int, default=32, help="steps of the deletion / insertion curves")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated gradients' path points")
    p.add_argument("--target", default="predicted", choices=("predicted", "label"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--results-dir", default=None, help="default experiments/results (--tiny: <root>/results)")
    p.add_argument("--tiny", action="store_true", help="a tiny study's runs (tests)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:
        p.error(f"--families: unknown {unknown}; known: {', '.join(FAMILIES)}")
    for name in ("examples", "steps", "ig_steps", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.results_dir is None:
        args.results_dir = os.path.join(args.study_root, "results") if args.tiny else RESULTS_DIR
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = "python experiments/faithfulness_study.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    try:
        runs = study_runs(args.study_root, args.families)
    except FaithfulnessStudyError as e:
        print(f"faithfulness_study: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    counts = {run.num_seeds for run in runs.values()}
    if len(counts) != 1:
        print(f"faithfulness_study: error: the runs have different numbers of seeds {sorted(counts)}",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    reports, scoring_s = {}, []
    for family, run in runs.items():
        reports[family] = []
        for replica in range(run.num_seeds):
            out = os.path.join(args.study_root, "faithfulness", family, f"replica_{replica}")
            report, scored, seconds = score_replica(run.workdir, replica, out, args)
            print(f"{family} replica {replica}: " + (f"scored in {seconds:.0f} s" if scored else "read back"),
                  flush=True)  # fmt: skip
            reports[family].append(report)
            scoring_s.append(seconds)
    families = aggregate(reports)
    from attn_jax.train.seed_summary import read_seed_metrics

    for family, run in runs.items():
        _, per_seed = read_seed_metrics(run.summary, run.config.get("seed"))
        families[family]["test_accuracy"] = _interval_cell(per_seed.get("test_accuracy", []))
        families[family]["verdict"] = verdict(families[family])
    first = next(iter(reports.values()))[0]
    methods = [m for m in first["methods"]]
    for entry in reports.values():
        methods += [m for m in entry[0]["methods"] if m not in methods]
    doc = {
        "meta": {
            "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
            "loadavg": list(os.getloadavg()),
            "wall_time_s": time.perf_counter() - start,
            # the replicas' scoring, summed over this and earlier invocations (None: one did not record it)
            "scoring_time_s": None if None in scoring_s else sum(scoring_s),
            "tiny": args.tiny,
        },
        "study_root": os.path.abspath(args.study_root),
        "study_steps": next(iter(runs.values())).config.get("num_train_steps"),
        "num_seeds": counts.pop(),
        "examples": first["examples"],
        "steps": first["steps"],
        "ig_steps": first["ig_steps"],
        "target": first["target"],
        "baselines": first["baselines"],
        "reference": REFERENCE,
        "methods": methods,
        "families": families,
    }
    os.makedirs(args.results_dir, exist_ok=True)
    stem = os.path.join(args.results_dir, "faithfulness_classification")
    with open(stem + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    text = markdown(doc)
    with open(stem + ".md", "w") as f:
        f.write(text)
    plot(doc, stem + ".png")
    print(text)
    print(f"wrote {stem}.json, {stem}.md, {stem}.png")
    return doc


if __name__ == "__main__":
    main()
