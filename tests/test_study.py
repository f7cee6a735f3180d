"""experiments/study.py: the tiny study end to end (JSON, Markdown, PNG), its statistics against SciPy, its
resumption (a second invocation retrains nothing) and its command-line checks."""

import json
import os

import matplotlib.image as mpimg
import numpy as np
import pytest
import scipy.stats

from experiments import study


def _interval(values):
    """Mean and 95% Student-t interval, written out with NumPy float64 and SciPy."""
    values = np.asarray(values, np.float64)
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return values.mean(), values.mean() - half, values.mean() + half


def _summary_mtimes(root):
    return {
        family: os.stat(os.path.join(root, "classification", family, "summary.json")).st_mtime_ns
        for family in ("none", "spatial")
    }


def test_tiny_study_writes_its_results_and_a_second_run_retrains_nothing(tmp_path, data_dir, capsys):
    root = str(tmp_path / "study")
    argv = ["--tiny", "--tasks", "classification", "--families", "spatial", "--seeds", "2", "--steps", "3",
            "--workdir-root", root, "--data-dir", data_dir]  # fmt: skip
    study.main(argv)  # --families spatial: none is added, the baseline
    results = os.path.join(root, "results")
    with open(os.path.join(results, "study_classification.json")) as f:
        doc = json.load(f)
    assert list(doc["families"]) == ["none", "spatial"] and doc["baseline"] == "none"
    assert (doc["task"], doc["steps"], doc["num_seeds"], doc["seeds"]) == ("classification", 3, 2, [0, 1])
    assert doc["meta"]["command"].startswith("python experiments/study.py --tiny")
    assert doc["meta"]["date"][:2] == "20" and doc["meta"]["machine"]["cores"] > 0 and doc["meta"]["tiny"]
    per_seed = {}
    for family, entry in doc["families"].items():
        with open(os.path.join(root, "classification", family, "summary.json")) as f:
            summary = json.load(f)
        assert summary["stop_reason"] == "done" and summary["step"] == 3
        assert entry["trained_now"] and entry["train_time_s"] > 0
        accuracy = entry["metrics"]["test_accuracy"]
        # the run's own per-seed test accuracies, and their mean and interval as SciPy gives them
        assert accuracy["per_seed"] == summary["seed_stats"]["per_seed"]["test_accuracy"]
        per_seed[family] = accuracy["per_seed"]
        mean, low, high = _interval(accuracy["per_seed"])
        assert (accuracy["mean"], accuracy["low"], accuracy["high"]) == pytest.approx((mean, low, high))
    assert doc["families"]["none"]["vs_none"] is None
    diff = doc["families"]["spatial"]["vs_none"]["test_accuracy"]
    differences = np.subtract(per_seed["spatial"], per_seed["none"])
    assert diff["mean"] == pytest.approx(differences.mean())
    if np.ptp(differences) > 0:  # with equal differences the interval has no width and p is undefined
        assert (diff["low"], diff["high"]) == pytest.approx(_interval(differences)[1:])
        want_p = scipy.stats.ttest_rel(per_seed["spatial"], per_seed["none"]).pvalue
        assert diff["p_value"] == pytest.approx(want_p)
    with open(os.path.join(results, "study.md")) as f:
        table = f.read()
    assert "## classification" in table and "| none | " in table and "baseline" in table
    assert f"| spatial | {_interval(per_seed['spatial'])[0]:.4f} ± " in table
    assert f"{differences.mean():+.4f}" in table
    image = mpimg.imread(os.path.join(results, "study.png"))
    assert image.ndim == 3 and image.shape[1] > 200
    out = capsys.readouterr().out
    assert out.count("training 3 steps x 2 seeds") == 2

    before = _summary_mtimes(root)
    study.main(argv)
    assert _summary_mtimes(root) == before  # nothing was retrained
    out = capsys.readouterr().out
    assert out.count("finished run in") == 2 and "training" not in out
    with open(os.path.join(results, "study_classification.json")) as f:
        again = json.load(f)
    assert not any(entry["trained_now"] for entry in again["families"].values())
    assert again["families"]["spatial"]["metrics"] == doc["families"]["spatial"]["metrics"]

    # the same workdirs with another budget are another experiment: refused in one line, nothing trained
    with pytest.raises(SystemExit) as exc:
        study.main([*argv[:-6], "--steps", "5", *argv[-4:]])
    assert exc.value.code == 2
    assert "holds a run with num_train_steps 3, the study asks for 5" in capsys.readouterr().err
    assert _summary_mtimes(root) == before


def _fabricated(low: float, high: float) -> dict:
    """A study_<task>.json with made-up numbers: spatial's difference from none has the interval given."""
    metric = {"per_seed": [0.5, 0.6], "mean": 0.55, "std": 0.07, "low": 0.1, "high": 1.0}
    diff = {"mean": (low + high) / 2, "std": 0.01, "low": low, "high": high, "p_value": 0.03}
    families = {
        "none": {"metrics": {"test_accuracy": metric}, "vs_none": None},
        "spatial": {"metrics": {"test_accuracy": metric}, "vs_none": {"test_accuracy": diff}},
    }
    return {"task": "classification", "steps": 9, "num_seeds": 2, "seeds": [0, 1], "confidence": 0.95,
            "baseline": "none", "table_metrics": ["test_accuracy"], "families": families}  # fmt: skip


def test_markdown_marks_a_difference_whose_interval_excludes_zero():
    rows = lambda doc: [line for line in study.markdown([doc]).splitlines() if line.startswith("| ")]  # noqa: E731
    header, none, spatial = rows(_fabricated(0.01, 0.05))
    assert header == "| family | accuracy | Δ accuracy vs none | p |"
    assert none == "| none | 0.5500 ± 0.4500 | baseline | — |"
    assert spatial == "| spatial | 0.5500 ± 0.4500 | +0.0300 [+0.0100, +0.0500] * | 0.030 |"
    assert rows(_fabricated(-0.05, -0.01))[2].endswith("[-0.0500, -0.0100] * | 0.030 |")
    assert rows(_fabricated(-0.01, 0.05))[2].endswith("[-0.0100, +0.0500] | 0.030 |")  # includes 0: no mark


def test_command_line_checks(capsys):
    args = study.parse_args(["--tasks", "segmentation,classification", "--families", "cbam", "spatial",
                             "--steps", "detection=7", "--seeds", "3"])  # fmt: skip
    assert args.tasks == ["classification", "segmentation"]  # in the study's order
    assert args.families == ["none", "spatial", "cbam"]  # none is the baseline, always trained
    assert args.steps == {**study.DEFAULT_STEPS, "detection": 7} and args.seeds == 3
    assert args.results_dir == study.RESULTS_DIR
    assert study.parse_args(["--steps", "11", "--tasks", "detection"]).steps["detection"] == 11
    tiny = study.parse_args(["--tiny", "--workdir-root", "/tmp/r"])
    assert tiny.steps == {"classification": 16, "detection": 8, "segmentation": 8}  # the tiny configs' own
    assert tiny.results_dir == os.path.join("/tmp/r", "results")
    for argv, message in (
        (["--tasks", "reading"], "--tasks must name some of classification, detection, segmentation"),
        (["--families", "spatial,bogus"], "got 'bogus'"),
        (["--steps", "classification=0"], "N an integer >= 1; got 'classification=0'"),
        (["--steps", "decoding=4"], "--steps TASK=N must name a task"),
        (["--seeds", "1"], "--seeds must be an integer >= 2"),
    ):
        with pytest.raises(SystemExit):
            study.parse_args(argv)
        assert message in capsys.readouterr().err, argv
