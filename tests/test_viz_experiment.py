"""The localisation experiment end to end on tiny data, and the viz CLI drawing its runs."""

import json
import os

import jax
import matplotlib.image as mpimg
import numpy as np
import pytest

from attn_jax.data import make_pipeline
from attn_jax.train import checkpoint as ckpt
from attn_jax.train.factory import build_model, build_optimizer
from attn_jax.train.state import create_train_state
from attn_jax.viz.__main__ import main as viz_main
from attn_jax.viz.runs import load_config, load_train_run
from experiments.localization import main as experiment_main


def test_experiment_writes_table_json_figure_and_cli_draws_its_runs(tmp_path, capsys):
    workdir = str(tmp_path / "loc")
    experiment_main(["--workdir", workdir, "--config", "tiny"])
    with open(os.path.join(workdir, "localization.json")) as f:
        report = json.load(f)
    methods = [r["method"] for r in report["rows"]]
    assert methods == ["spatial", "Grad-CAM (spatial model)", "se", "uniform map (chance)"]
    rows = {r["method"]: r for r in report["rows"]}
    assert 0.0 <= rows["spatial"]["accuracy"] <= 1.0
    for key in ("pointing_game", "energy", "pointing_untrained", "energy_untrained"):
        assert 0.0 <= rows["spatial"][key] <= 1.0
    assert rows["se"]["pointing_game"] is None  # channel attention has no map to score
    chance = rows["uniform map (chance)"]
    assert 0.0 < chance["energy"] < chance["pointing_game"] < 1.0  # mask area < box area
    with open(os.path.join(workdir, "localization.md")) as f:
        table = f.read()
    assert table.count("\n") == 2 + len(methods) and "| se | " in table
    assert mpimg.imread(os.path.join(workdir, "localization.png")).shape[0] > 100
    assert os.path.exists(os.path.join(workdir, "spatial", "config.json"))
    capsys.readouterr()
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


def test_cli_draws_an_attn_jax_train_run(tmp_path, capsys):
    """A checkpoint written by the train package's manager loads read-only with its experiment config."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = os.path.join(root, "experiments", "configs", "classification.py") + ":gate,tiny"
    config = load_config(spec)
    model = build_model(config, bn_axis_name=None)
    state = create_train_state(model, build_optimizer(config), jax.random.key(7), np.zeros((1, 32, 32, 1)))
    state = state.replace(params=jax.tree.map(lambda p: p + 0.5, state.params))
    iterator = iter(make_pipeline(config.data.dataset, "train", batch_size=16, train=True, num_devices=1))
    manager = ckpt.make_manager(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save(manager, 3, state, iterator)
    manager.close()
    _, variables, step = load_train_run(config, str(tmp_path))
    assert step == 3
    jax.tree.map(np.testing.assert_array_equal, variables["params"], state.params)
    out = str(tmp_path / "train_run.png")
    assert viz_main(["--config", spec, "--workdir", str(tmp_path), "--num-images", "2", "--out", out]) == out
    assert "trained runs" in capsys.readouterr().out
