"""`attn-jax compare`: the table's means, 95% intervals, paired differences and p-values against values worked
out by hand for fabricated workdirs; pairing by seed; runs of one seed (today's summary.json, no seeds
block); one-line errors (exit 2) for runs that are not comparable or not finished."""

import json
import math
import os

import numpy as np
import pytest

from attn_jax import cli
from attn_jax.compare import main

# t quantile 0.975 with 2 degrees of freedom (closed form (2p - 1) / sqrt(2p(1 - p))); with 2 degrees of
# freedom the two-sided p-value of t is 1 - |t| / sqrt(2 + t^2).
T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
SEEDS = [0, 1, 2]
NONE = {"test_accuracy": [0.90, 0.92, 0.94], "test_loss": [0.40, 0.30, 0.35]}
# accuracy - none: [0.03, 0.04, 0.02] (mean 0.03, std 0.01, t = 3 sqrt 3); loss: [-0.1, -0.05, -0.15]
SPATIAL = {"test_accuracy": [0.93, 0.96, 0.96], "test_loss": [0.30, 0.25, 0.20]}
# by seed 0, 1, 2: accuracy [0.92, 0.95, 0.95], written in the order of seeds [2, 0, 1]
CBAM_SEEDS = [2, 0, 1]
CBAM = {"test_accuracy": [0.95, 0.92, 0.95], "test_loss": [0.35, 0.40, 0.30]}


def write_run(root, dirname, per_seed, seeds=SEEDS, *, name=None, task="classification", block=True,
              dataset="cluttered_digits/tiny", stop_reason="done", num_seeds=None, extra=None):  # fmt: skip
    """A workdir as a finished run leaves it: summary.json (with the seeds block unless block=False, then
    one seed: the first of each list) and config.json."""
    workdir = os.path.join(str(root), dirname)
    os.makedirs(workdir)
    summary = {"workdir": workdir, "task": task, "stop_reason": stop_reason, "step": 16, "resumed_from": 0}
    summary.update({m: float(np.mean(v if block else v[:1])) for m, v in per_seed.items()})
    summary.update(extra or {})
    if block:
        summary["seed_stats"] = {
            "num_seeds": len(seeds),
            "seeds": list(seeds),
            "per_seed": per_seed,
            "mean": {m: float(np.mean(v)) for m, v in per_seed.items()},
            "std": {m: float(np.std(v, ddof=1)) for m, v in per_seed.items()},
            "ci95": {m: None for m in per_seed},  # not read by compare, which works from per_seed
        }
    config = {
        "task": task,
        "name": name or dirname,
        "data": {"dataset": dataset},
        "seed": seeds[0],
        "optim": {"lr": 0.003},
    }
    if block:
        config["num_seeds"] = len(seeds) if num_seeds is None else num_seeds
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config, f)
    return workdir


def rows(table: str) -> dict:
    """{(metric, run): [mean, CI, Δ, CI of Δ, p]} of a printed table."""
    out = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| metric"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0], cells[1]] = cells[2:]
    return out


def run_compare(capsys, *args):
    main([str(a) for a in args])
    return capsys.readouterr().out


def fail_compare(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attn-jax compare: error: "), err
    return err


def interval(mean, std, n=3):
    half = T_975_DF2 * std / math.sqrt(n)
    return mean - half, mean + half


@pytest.fixture
def three_runs(tmp_path):
    return (
        write_run(tmp_path, "none", NONE, name="classification-none-tiny"),
        write_run(tmp_path, "spatial", SPATIAL, name="classification-spatial-tiny"),
        write_run(tmp_path, "cbam", CBAM, CBAM_SEEDS, name="classification-cbam-tiny"),
    )


def test_table_numbers_by_hand(capsys, three_runs):
    table = rows(run_compare(capsys, *three_runs))
    low, high = interval(0.92, 0.02)
    assert table["accuracy", "classification-none-tiny"] == [
        "0.9200", f"[{low:.4f}, {high:.4f}]", "baseline", "—", "—",
    ]  # fmt: skip
    low, high = interval(0.95, math.sqrt(0.0003))  # deviations -0.02, 0.01, 0.01
    d_low, d_high = interval(0.03, 0.01)
    p = 1 - 3 * math.sqrt(3) / math.sqrt(2 + 27)
    assert table["accuracy", "classification-spatial-tiny"] == [
        "0.9500", f"[{low:.4f}, {high:.4f}]", "+0.0300", f"[{d_low:+.4f}, {d_high:+.4f}] *", f"{p:.4f}",
    ]  # fmt: skip
    d_low, d_high = interval(-0.1, 0.05)
    p = 1 - 2 * math.sqrt(3) / math.sqrt(2 + 12)
    assert d_high > 0 and table["loss", "classification-spatial-tiny"][2:] == [
        "-0.1000", f"[{d_low:+.4f}, {d_high:+.4f}]", f"{p:.4f}",
    ]  # fmt: skip
    assert len(table) == 6  # accuracy and loss (the task's headline metrics) for three runs


def test_runs_are_paired_by_seed_not_by_position(capsys, three_runs):
    # cbam by seed: [0.92, 0.95, 0.95] - [0.90, 0.92, 0.94] = [0.02, 0.03, 0.01]: mean 0.02, std 0.01;
    # paired by position ([0.95, 0.92, 0.95] - ...) the differences would be [0.05, 0.00, 0.01]
    table = rows(run_compare(capsys, *three_runs))
    d_low, d_high = interval(0.02, 0.01)
    p = 1 - 2 * math.sqrt(3) / math.sqrt(2 + 12)
    assert table["accuracy", "classification-cbam-tiny"][2:] == [
        "+0.0200", f"[{d_low:+.4f}, {d_high:+.4f}]", f"{p:.4f}",
    ]  # fmt: skip
    # cbam's loss by seed equals none's: every difference is 0 (by position they would be -0.05, 0.1, -0.05)
    assert table["loss", "classification-cbam-tiny"][2:] == [
        "+0.0000",
        "[+0.0000, +0.0000]",
        "undefined (no spread)",
    ]


def test_json_and_markdown_files(capsys, three_runs, tmp_path):
    out_md, out_json = tmp_path / "table.md", tmp_path / "out.json"
    printed = run_compare(capsys, *three_runs, "--output", out_md, "--json", out_json)
    assert out_md.read_text() == printed
    data = json.loads(out_json.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert data["meta"]["command"].startswith("attn-jax compare ")
    assert data["baseline"] == "classification-none-tiny" and data["seeds"] == SEEDS
    assert data["metrics"] == ["test_accuracy", "test_loss"] and data["num_seeds"] == 3
    spatial = data["runs"][1]
    acc = spatial["metrics"]["test_accuracy"]
    assert acc["per_seed"] == SPATIAL["test_accuracy"]
    assert acc["mean"] == pytest.approx(0.95, rel=1e-12) and acc["std"] == pytest.approx(
        math.sqrt(3e-4), rel=1e-9
    )
    assert [acc["low"], acc["high"]] == pytest.approx(list(interval(0.95, math.sqrt(3e-4))), rel=1e-9)
    diff = spatial["vs_baseline"]["test_accuracy"]
    assert diff["mean"] == pytest.approx(0.03, rel=1e-9) and diff["std"] == pytest.approx(0.01, rel=1e-9)
    assert [diff["low"], diff["high"]] == pytest.approx(list(interval(0.03, 0.01)), rel=1e-9)
    assert diff["p_value"] == pytest.approx(1 - math.sqrt(27 / 29), rel=1e-9)
    assert data["runs"][0]["vs_baseline"] is None


@pytest.mark.parametrize("choose", ["name", "path"])
def test_baseline_option(capsys, three_runs, choose):
    baseline = "classification-spatial-tiny" if choose == "name" else three_runs[1]
    text = run_compare(capsys, *three_runs, "--baseline", baseline)
    assert "Δ = run − classification-spatial-tiny (baseline)" in text
    table = rows(text)
    d_low, d_high = interval(-0.03, 0.01)
    assert table["accuracy", "classification-spatial-tiny"][2] == "baseline"
    assert table["accuracy", "classification-none-tiny"][2:4] == [
        "-0.0300",
        f"[{d_low:+.4f}, {d_high:+.4f}] *",
    ]
    assert list(table)[0] == ("accuracy", "classification-spatial-tiny")  # the baseline's row first


def test_a_baseline_outside_the_runs_is_added_first(capsys, three_runs):
    table = rows(run_compare(capsys, three_runs[1], "--baseline", three_runs[0]))
    assert list(table)[:2] == [
        ("accuracy", "classification-none-tiny"),
        ("accuracy", "classification-spatial-tiny"),
    ]
    assert table["accuracy", "classification-spatial-tiny"][2] == "+0.0300"


def test_one_seed_runs_as_train_writes_them_today(capsys, tmp_path):
    # no seeds block: K = 1 with seeds [config.seed]; no interval, no p-value, but the difference
    a = write_run(tmp_path, "a", {"test_accuracy": [0.9716]}, [0], block=False, extra={"attention_png": "x"})
    b = write_run(tmp_path, "b", {"test_accuracy": [0.9747]}, [0], block=False)
    text = run_compare(capsys, a, b, "--metrics", "accuracy")
    table = rows(text)
    assert table["accuracy", "a"] == ["0.9716", "1 seed: no interval", "baseline", "—", "—"]
    assert table["accuracy", "b"] == ["0.9747", "1 seed: no interval", "+0.0031", "1 seed: no interval", "—"]
    assert "1 seed: no interval: one seed gives no spread to measure." in text


def test_metrics_option_accepts_names_with_and_without_prefix(capsys, three_runs):
    assert {m for m, _ in rows(run_compare(capsys, *three_runs, "--metrics", "loss"))} == {"loss"}
    assert {m for m, _ in rows(run_compare(capsys, *three_runs, "--metrics", "test_loss,accuracy"))} == {
        "loss", "accuracy",
    }  # fmt: skip
    err = fail_compare(capsys, *three_runs, "--metrics", "mIoU")
    assert (
        "--metrics: 'mIoU' is not a test metric of classification-none-tiny; it has ['accuracy', 'loss']"
        in err
    )


def test_default_metrics_are_the_task_headline(capsys, tmp_path):
    values = {f"test_{m}": [0.1, 0.2] for m in ("mAP", "AP50", "AP75", "APm", "AR100", "AP50_voc")}
    values["test_num_images"] = [64, 64]
    a = write_run(tmp_path, "a", values, [0, 1], task="detection")
    b = write_run(tmp_path, "b", values, [0, 1], task="detection")
    metrics = [m for m, run in rows(run_compare(capsys, a, b)) if run == "a"]
    assert metrics == ["AP50_voc", "AP50", "AP75", "mAP", "AR100"]


@pytest.mark.parametrize(
    "change, wanted",
    [
        ({"task": "segmentation"}, "has task 'segmentation', the baseline"),
        ({"dataset": "mnist"}, "has dataset 'mnist', the baseline"),
        ({"seeds": [0, 1]}, "has number of seeds K 2, the baseline"),
        ({"seeds": [0, 1, 5]}, "has seeds [0, 1, 5], the baseline"),
    ],
)
def test_runs_that_are_not_comparable_are_refused(capsys, tmp_path, change, wanted):
    base = write_run(tmp_path, "base", {"test_accuracy": [0.9, 0.8, 0.7]})
    seeds = change.pop("seeds", SEEDS)
    other = write_run(tmp_path, "other", {"test_accuracy": [0.9, 0.8, 0.7][: len(seeds)]}, seeds, **change)
    err = fail_compare(capsys, base, other)
    assert err.startswith("attn-jax compare: error: runs are not comparable: other (") and wanted in err, err


def test_missing_unfinished_and_inconsistent_runs_are_refused(capsys, tmp_path):
    done = write_run(tmp_path, "done", NONE)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no summary.json: not a finished run's workdir" in fail_compare(capsys, done, empty)
    stopped = write_run(tmp_path, "stopped", NONE, stop_reason="sigterm")
    err = fail_compare(capsys, done, stopped)
    assert f"{stopped} is an unfinished run (summary stop_reason 'sigterm', not 'done')" in err
    odd = write_run(tmp_path, "odd", NONE, num_seeds=5)
    assert "summary.json holds 3 seed(s) [0, 1, 2] but config.num_seeds is 5" in fail_compare(
        capsys, done, odd
    )
    assert f"RUN {done} is given twice" in fail_compare(capsys, done, done)
    assert "--baseline 'nosuch' is neither" in fail_compare(capsys, done, "--baseline", "nosuch")


def test_runs_of_one_config_in_two_workdirs_are_named_by_workdir(capsys, tmp_path):
    a = write_run(tmp_path, "a", NONE, name="classification-spatial-tiny")
    b = write_run(tmp_path, "b", SPATIAL, name="classification-spatial-tiny")
    assert {run for _, run in rows(run_compare(capsys, a, b))} == {a, b}


def test_cli_dispatches_compare_and_lists_it(capsys, three_runs):
    cli.main(["attn-jax", "compare", *three_runs[:2], "--metrics", "accuracy"])
    assert rows(capsys.readouterr().out)["accuracy", "classification-spatial-tiny"][2] == "+0.0300"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["attn-jax", "--help"])
    assert exit_info.value.code == 0
    assert "attn-jax compare RUN_A RUN_B ... [--baseline RUN]" in capsys.readouterr().out
