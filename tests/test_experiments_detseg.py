"""The detection / segmentation experiment runner end to end on tiny data (a few steps, whole eval set)."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_train_and_evaluate_tiny(task, tmp_path):
    runner = _load(ROOT / "experiments" / "detseg.py")
    config = _load(ROOT / "experiments" / "configs" / f"{task}.py").get_config("spatial,tiny")
    metrics = runner.train_and_evaluate(config, str(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["eval_examples"] == 64  # the whole tiny test split; the padded batch rows are dropped
    assert len(saved["history"]) == 2
    losses = [v for h in saved["history"] for k, v in h.items() if k.endswith("loss")]
    assert losses and np.all(np.isfinite(losses))
    keys = ("mAP", "AP50", "AP50_voc") if task == "detection" else ("mIoU", "pixel_accuracy")
    for k in keys:
        assert 0.0 <= metrics[k] <= 1.0 and saved[k] == pytest.approx(metrics[k])
