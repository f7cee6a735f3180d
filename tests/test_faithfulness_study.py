"""experiments/faithfulness_study.py: a tiny K-seed study's replicas scored end to end (each replica's own
weights, statistics over seeds against SciPy, resumption), the verdict rule, and its one-line errors; the
--replica argument of `python -m attn_jax.viz faithfulness`."""

import json
import os

import matplotlib.image as mpimg
import numpy as np
import pytest
import scipy.stats

from experiments import faithfulness_study, study


def _interval(values):
    """Mean and 95% Student-t interval, written out with NumPy float64 and SciPy."""
    values = np.asarray(values, np.float64)
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return values.mean(), values.mean() - half, values.mean() + half


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, data_dir):
    """A tiny study: none and spatial, 2 seeds, 3 steps (classification)."""
    root = str(tmp_path_factory.mktemp("faithfulness_study") / "study")
    study.main(["--tiny", "--tasks", "classification", "--families", "spatial", "--seeds", "2", "--steps",
                "3", "--workdir-root", root, "--data-dir", data_dir])  # fmt: skip
    return root


def _argv(root):
    return ["--tiny", "--study-root", root, "--families", "none", "spatial", "--examples", "4",
            "--steps", "4", "--ig-steps", "2", "--batch-size", "4"]  # fmt: skip


def test_scores_every_replica_and_gives_intervals_over_seeds(tiny_study, capsys):
    root = tiny_study
    doc = faithfulness_study.main(_argv(root))
    results = os.path.join(root, "results")
    with open(os.path.join(results, "faithfulness_classification.json")) as f:
        assert json.load(f)["families"].keys() == doc["families"].keys() == {"none", "spatial"}
    assert doc["num_seeds"] == 2 and doc["study_steps"] == 3 and doc["examples"] == 4
    reports = {}
    for family in ("none", "spatial"):
        reports[family] = []
        for replica in (0, 1):
            path = os.path.join(root, "faithfulness", family, f"replica_{replica}", "faithfulness.json")
            with open(path) as f:
                report = json.load(f)
            assert (report["replica"], report["replica_seed"]) == (replica, replica)
            reports[family].append(report)
        # the two replicas are two models: their gradient maps, hence their scores, differ
        a, b = (r["methods"]["gradient_x_input"]["deletion_auc"]["mean"] for r in reports[family])
        assert a != b
    assert "attention" not in doc["families"]["none"]["methods"]  # no attention, no map
    assert doc["families"]["none"]["verdict"] == "no spatial map"
    cell = doc["families"]["spatial"]["methods"]["attention"]["deletion_auc"]
    values = [r["methods"]["attention"]["deletion_auc"]["mean"] for r in reports["spatial"]]
    assert cell["values"] == values
    mean, low, high = _interval(values)
    assert cell["mean"] == pytest.approx(mean)
    if np.ptp(values) > 0:
        assert (cell["low"], cell["high"]) == pytest.approx((low, high))
    base = [r["methods"]["random"]["deletion_auc"]["mean"] for r in reports["spatial"]]
    diff = cell["vs_random"]
    assert diff["mean"] == pytest.approx(np.mean(np.subtract(values, base)))
    if np.ptp(np.subtract(values, base)) > 0:
        assert diff["p_value"] == pytest.approx(scipy.stats.ttest_rel(values, base).pvalue)
    assert doc["families"]["spatial"]["methods"]["random"]["deletion_auc"]["vs_random"] is None
    with open(os.path.join(root, "classification", "spatial", "summary.json")) as f:
        accuracy = json.load(f)["seed_stats"]["per_seed"]["test_accuracy"]
    assert doc["families"]["spatial"]["test_accuracy"]["values"] == accuracy
    with open(os.path.join(results, "faithfulness_classification.md")) as f:
        table = f.read()
    assert "## Deletion AUC" in table and f"| spatial | {_interval(accuracy)[0]:.3f}" in table
    assert f"{diff['mean']:+.3f} [" in table
    image = mpimg.imread(os.path.join(results, "faithfulness_classification.png"))
    assert image.ndim == 3 and image.shape[1] > 400
    assert capsys.readouterr().out.count("scored in") == 4

    # a second run scores nothing again and gives the same numbers
    again = faithfulness_study.main(_argv(root))
    assert capsys.readouterr().out.count("read back") == 4
    assert again["families"] == doc["families"]


def _entry(deletion: tuple[float, float], insertion: tuple[float, float]) -> dict:
    """A family entry whose attention map differs from random by the intervals given."""

    def cell(low, high):
        return {"vs_random": {"mean": (low + high) / 2, "low": low, "high": high, "p_value": 0.01}}

    return {"methods": {"attention": {"deletion_auc": cell(*deletion), "insertion_auc": cell(*insertion)}}}


@pytest.mark.parametrize(
    ("deletion", "insertion", "want"),
    [
        ((-0.2, -0.1), (0.1, 0.2), "faithful"),  # deletes faster and inserts faster than random
        ((0.1, 0.2), (-0.2, -0.1), "inverted"),
        ((-0.2, -0.1), (-0.1, 0.1), "partly faithful"),
        ((-0.1, 0.1), (-0.1, 0.1), "not better than random"),
        ((-0.1, 0.1), (-0.2, -0.1), "not better than random"),
    ],
)
def test_verdict_needs_both_intervals_on_the_faithful_side(deletion, insertion, want):
    assert faithfulness_study.verdict(_entry(deletion, insertion)) == want


def test_a_missing_study_run_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        faithfulness_study.main(["--study-root", str(tmp_path), "--families", "spatial"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no finished classification run of 'spatial'" in err


def test_replica_outside_the_runs_seeds_is_one_line(tiny_study, capsys):
    from attn_jax.viz import faithfulness

    workdir = os.path.join(tiny_study, "classification", "spatial")
    with pytest.raises(SystemExit) as exc:
        faithfulness.main(["--workdir", workdir, "--replica", "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--replica must be in [0, 2) (the run's num_seeds); got 2" in err
