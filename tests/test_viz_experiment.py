"""The localisation experiment end to end on tiny data, and the viz CLI drawing its runs."""

import json
import os

import matplotlib.image as mpimg
import pytest

from attn_jax.viz.__main__ import main as viz_main
from experiments.localization import main as experiment_main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("loc"))
    experiment_main(["--workdir", path, "--config", "tiny"])
    return path


def test_experiment_writes_table_json_and_figure(workdir):
    report = json.load(open(os.path.join(workdir, "localization.json")))
    methods = [r["method"] for r in report["rows"]]
    assert methods == ["spatial", "Grad-CAM (spatial model)", "se", "uniform map (chance)"]
    rows = {r["method"]: r for r in report["rows"]}
    assert 0.0 <= rows["spatial"]["accuracy"] <= 1.0
    for key in ("pointing_game", "energy", "pointing_untrained", "energy_untrained"):
        assert 0.0 <= rows["spatial"][key] <= 1.0
    assert rows["se"]["pointing_game"] is None  # channel attention has no map to score
    chance = rows["uniform map (chance)"]
    assert 0.0 < chance["energy"] < chance["pointing_game"] < 1.0  # mask area < box area
    table = open(os.path.join(workdir, "localization.md")).read()
    assert table.count("\n") == 2 + len(methods) and "| se | " in table
    assert mpimg.imread(os.path.join(workdir, "localization.png")).shape[0] > 100
    assert os.path.exists(os.path.join(workdir, "spatial", "config.json"))


def test_cli_draws_trained_runs_and_untrained_fallback(workdir, tmp_path, capsys):
    out = str(tmp_path / "viz.png")
    argv = ["--workdir", workdir, "--dataset", "cluttered_digits/tiny", "--attention", "spatial,se,gate",
            "--num-images", "2", "--grad-cam", "--widths", "4,8,8,8", "--out", out]  # fmt: skip
    assert viz_main(argv) == out
    printed = capsys.readouterr().out
    assert "untrained (no run in --workdir): gate" in printed  # spatial and se were trained
    png = mpimg.imread(out)
    assert png.shape[0] > 100 and png.shape[1] > 4 * 100  # 2 rows; image + 3 families + Grad-CAM
    with pytest.raises(SystemExit, match="unknown --attention"):
        viz_main(["--attention", "bogus", "--out", out])
