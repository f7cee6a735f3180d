"""The seeds block of summary.json (attn_jax.train.seed_summary): per-seed values, mean, sample std and the
95% Student-t interval worked out by hand; strict JSON (null, never NaN) for one seed and for non-finite
values; the reader of summaries with and without the block; and the module's imports."""

import ast
import json
import math

import pytest

from attn_jax.train import seed_summary
from attn_jax.train.seed_summary import SEEDS_BLOCK, read_seed_metrics, summarize_seeds

T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t quantile 0.975, 2 degrees of freedom (closed form)


def _three_seeds():
    return [
        {"test_accuracy": 0.5, "test_loss": 2.0, "attention_png": "a.png", "test_per_class_iou": [0.1]},
        {"test_accuracy": 1.0, "test_loss": 1.0, "attention_png": "b.png", "test_per_class_iou": [0.2]},
        {"test_accuracy": 1.5, "test_loss": 3.0, "attention_png": "c.png", "test_per_class_iou": [0.3]},
    ]


def test_three_seeds_by_hand():
    block = summarize_seeds(_three_seeds(), seeds=[7, 8, 9])
    assert block["num_seeds"] == 3 and block["seeds"] == [7, 8, 9]
    assert block["per_seed"] == {"test_accuracy": [0.5, 1.0, 1.5], "test_loss": [2.0, 1.0, 3.0]}
    assert block["mean"] == {"test_accuracy": pytest.approx(1.0), "test_loss": pytest.approx(2.0)}
    assert block["std"] == {"test_accuracy": pytest.approx(0.5), "test_loss": pytest.approx(1.0)}
    half_acc, half_loss = T_975_DF2 * 0.5 / math.sqrt(3), T_975_DF2 * 1.0 / math.sqrt(3)
    assert block["ci95"]["test_accuracy"] == [pytest.approx(1 - half_acc), pytest.approx(1 + half_acc)]
    assert block["ci95"]["test_loss"] == [pytest.approx(2 - half_loss), pytest.approx(2 + half_loss)]
    assert set(block) == {"num_seeds", "seeds", "per_seed", "mean", "std", "ci95"}


def test_one_seed_has_null_std_and_interval_in_strict_json():
    block = summarize_seeds([{"test_accuracy": 0.97, "test_num_images": 64}], seeds=[0])
    assert block["per_seed"] == {"test_accuracy": [0.97], "test_num_images": [64.0]}
    assert block["mean"] == {"test_accuracy": 0.97, "test_num_images": 64.0}
    assert block["std"] == {"test_accuracy": None, "test_num_images": None}
    assert block["ci95"] == {"test_accuracy": None, "test_num_images": None}
    text = json.dumps(block, allow_nan=False)  # raises on NaN
    assert '"ci95": {"test_accuracy": null' in text


def test_a_non_finite_seed_value_is_null_with_null_statistics():
    per_seed = [{"test_mAP": 0.5, "test_AR100": 0.25}, {"test_mAP": float("nan"), "test_AR100": 0.75}]
    block = summarize_seeds(per_seed, seeds=[0, 1])
    assert block["per_seed"]["test_mAP"] == [0.5, None]
    assert block["mean"]["test_mAP"] is None and block["std"]["test_mAP"] is None
    assert block["ci95"]["test_mAP"] is None
    assert block["mean"]["test_AR100"] == pytest.approx(0.5)
    json.dumps(block, allow_nan=False)


def test_bools_and_non_numbers_are_left_out():
    block = summarize_seeds([{"test_accuracy": 1.0, "test_flag": True, "note": "x"}] * 2, seeds=[0, 1])
    assert list(block["per_seed"]) == ["test_accuracy"]


@pytest.mark.parametrize(
    "per_seed, seeds, match",
    [
        ([{"test_a": 1.0}], [], r"^seeds must be a non-empty list of ints, got \[\]$"),
        ([{"test_a": 1.0}] * 2, [0, 0], r"^seeds must be distinct, got \[0, 0\]$"),
        ([{"test_a": 1.0}], [1.5], r"^seeds must be a non-empty list of ints, got \[1\.5\]$"),
        ([{"test_a": 1.0}], [True], r"^seeds must be a non-empty list of ints, got \[True\]$"),
        ([{"test_a": 1.0}], [0, 1], r"^per_seed must hold one dict per seed \(2\), got 1$"),
        ([{"test_a": 1.0}, 3.0], [0, 1], r"^per_seed must hold dicts of metrics, got 3\.0 for seed 1$"),
        (
            [{"test_a": 1.0}, {"test_b": 1.0}],
            [0, 1],
            r"^per_seed must hold the same numeric metrics for every seed: seed 1 has \['test_b'\], "
            r"seed 0 has \['test_a'\]$",
        ),
    ],
)
def test_bad_input_is_a_one_line_error(per_seed, seeds, match):
    with pytest.raises(ValueError, match=match):
        summarize_seeds(per_seed, seeds)


def test_reader_takes_a_summary_without_a_block_as_one_seed_of_the_config():
    # the keys a finished `attn-jax train` writes today (no seeds block)
    summary = {
        "workdir": "/tmp/t1", "task": "classification", "stop_reason": "done", "step": 16,
        "resumed_from": 0, "train_time_s": 4.09, "devices": 1, "attention": "spatial",
        "test_loss": 2.2999, "test_accuracy": 0.078125, "attention_png": "/tmp/t1/attention_maps.png",
    }  # fmt: skip
    assert read_seed_metrics(summary, config_seed=3) == (
        [3],
        {"test_loss": [2.2999], "test_accuracy": [0.078125]},
    )
    with pytest.raises(
        ValueError, match=r"^config_seed must be an int for a summary without seeds, got None$"
    ):
        read_seed_metrics(summary, config_seed=None)


def test_reader_returns_the_block_written_to_json():
    block = summarize_seeds(_three_seeds(), seeds=[4, 2, 3])
    summary = json.loads(json.dumps({"task": "classification", "test_accuracy": 1.0, SEEDS_BLOCK: block}))
    seeds, per_seed = read_seed_metrics(summary, config_seed=0)  # the block wins over the config seed
    assert seeds == [4, 2, 3]
    assert per_seed == {"test_accuracy": [0.5, 1.0, 1.5], "test_loss": [2.0, 1.0, 3.0]}


@pytest.mark.parametrize(
    "block, match",
    [
        ({"seeds": [0, 1], "per_seed": {"test_a": [1.0]}}, r'\["per_seed"\]\["test_a"\] must hold 2 numbers'),
        ({"seeds": [0, 1], "per_seed": {"test_a": [1.0, "x"]}}, r'\["per_seed"\]\["test_a"\] must hold 2'),
        ({"seeds": [0, 0], "per_seed": {}}, r'^summary\["seed_stats"\]\["seeds"\] must be distinct'),
        ({"per_seed": {}}, r'^summary\["seed_stats"\]\["seeds"\] must be a non-empty list of ints, got None'),
        ([1, 2], r'^summary\["seed_stats"\] must be a dict with "seeds" and "per_seed"'),
    ],
)
def test_reader_rejects_a_malformed_block(block, match):
    with pytest.raises(ValueError, match=match):
        read_seed_metrics({SEEDS_BLOCK: block}, config_seed=0)


def test_module_imports_only_numpy_scipy_and_the_intervals():
    with open(seed_summary.__file__) as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    third_party = {m for m in imported if m.split(".")[0] not in {"__future__", "math", "collections"}}
    assert third_party <= {"numpy", "scipy", "scipy.stats", "attn_jax.metrics.intervals"}, third_party
