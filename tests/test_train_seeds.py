"""K seeds in one program (config.num_seeds): replica i is the single-seed run of seed config.seed + i."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from attn_jax.train import loop
from attn_jax.train.seeds import SeedBatches, replica_seeds, seed_metrics, split_seeds
from attn_jax.train.tasks import get_task
from tests._train_models import TASKS, load_experiment_config

STEPS = 4


def _config(task, data_dir, seed, num_seeds, devices, **overrides):
    c = load_experiment_config(task)
    c.seed, c.num_seeds, c.num_devices, c.data.dir = seed, num_seeds, devices, data_dir
    c.num_train_steps, c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = STEPS, 2, 0, 2
    c.schedule.warmup_steps, c.data.eval_examples = 1, 32
    c.progress, c.tensorboard, c.png_examples, c.async_checkpoints = False, False, 0, False
    if task == "reading":
        c.reading.beam_width = 1  # the replicas' greedy reads are compared; no beam to compile
    c.update(overrides)
    return c


def _final_params(workdir: str, step: int = STEPS):
    """The params saved at `step`, read by orbax without a target (NumPy leaves)."""
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return state["params"]


def _records(workdir: str, split: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


@pytest.mark.parametrize(
    "task, devices, parallel, seeds_mode",
    [("classification", 1, "shard_map", "vmap"), ("classification", 2, "pmap", "vmap")]
    + [(t, 2, "shard_map", "vmap") for t in TASKS[1:]]
    # K copies of the single-seed step in the program, each with its own device collectives
    + [("classification", 2, "pmap", "unroll"), ("detection", 2, "shard_map", "unroll")],
)
def test_each_replica_equals_the_single_seed_run(task, devices, parallel, seeds_mode, data_dir, tmp_path):
    both = loop.train_and_evaluate(
        _config(task, data_dir, 5, 2, devices, parallel=parallel, seeds_mode=seeds_mode), str(tmp_path / "k2")
    )
    alone = loop.train_and_evaluate(
        _config(task, data_dir, 6, 1, devices, parallel=parallel), str(tmp_path / "s6")
    )
    # replica 1 trained with seed 6: the same init, data order, augmentation and dropout as the run of 6
    stacked, single = _final_params(str(tmp_path / "k2")), _final_params(str(tmp_path / "s6"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[1], b, rtol=2e-5, atol=2e-6), stacked, single)
    stats = both["seed_stats"]
    assert stats["seeds"] == [5, 6] and stats["num_seeds"] == 2
    metric = f"test_{get_task(task).best_metric}"
    np.testing.assert_allclose(stats["per_seed"][metric][1], alone[metric], rtol=1e-4, atol=1e-5)
    assert both[metric] == pytest.approx(np.mean(stats["per_seed"][metric]))
    # the train log carries each replica: replica 1's losses are the single run's
    got = [r["seed6/loss"] for r in _records(str(tmp_path / "k2"), "train")]
    assert got and all(r["loss"] == pytest.approx((r["seed5/loss"] + r["seed6/loss"]) / 2)
                       for r in _records(str(tmp_path / "k2"), "train"))  # fmt: skip
    want = [r["loss"] for r in _records(str(tmp_path / "s6"), "train")]
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_replicas_of_different_seeds_differ(data_dir, tmp_path):
    loop.train_and_evaluate(_config("classification", data_dir, 0, 2, 1), str(tmp_path))
    params = jax.tree.leaves(_final_params(str(tmp_path)))
    assert any(not np.allclose(p[0], p[1]) for p in params)


def test_a_resumed_k_seed_run_equals_the_uninterrupted_one_bitwise(data_dir, tmp_path):
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    loop.train_and_evaluate(_config("classification", data_dir, 0, 3, 2), whole)
    loop.train_and_evaluate(_config("classification", data_dir, 0, 3, 2, num_train_steps=2), parts)
    summary = loop.train_and_evaluate(_config("classification", data_dir, 0, 3, 2), parts)
    assert summary["resumed_from"] == 2 and summary["seed_stats"]["seeds"] == [0, 1, 2]
    jax.tree.map(np.testing.assert_array_equal, _final_params(whole), _final_params(parts))


def test_evaluate_checkpoint_reports_every_replica(data_dir, tmp_path):
    config = _config("segmentation", data_dir, 3, 2, 1)
    loop.train_and_evaluate(config, str(tmp_path))
    got = loop.evaluate_checkpoint(config, str(tmp_path))
    assert got["step"] == STEPS
    for name in ("mIoU", "pixel_accuracy"):
        per = [got[f"seed{s}/{name}"] for s in (3, 4)]
        assert got[name] == pytest.approx(np.mean(per)) and per[0] != per[1]
    one = loop.evaluate_checkpoint(config, str(tmp_path), replica=1)
    assert one["seed"] == 4 and one["mIoU"] == got["seed4/mIoU"] and "seed3/mIoU" not in one


def test_eval_replica_out_of_range_is_one_line_before_compiling(data_dir, tmp_path, capsys):
    from attn_jax.train import main

    config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments/configs/segmentation.py")
    argv = ["attn-jax eval", "--config", f"{config}:spatial,tiny", f"--config.data.dir={data_dir}",
            "--config.num_seeds=2", f"--workdir={tmp_path}", "--replica=2"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main.run("eval", argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == [
        "attn-jax eval: error: --replica=2 must be in [0, 2) (config.num_seeds=2)"
    ]


def test_auto_seeds_mode_unrolls_only_on_one_cpu_device():
    from attn_jax.train.seeds import resolve_seeds_mode

    assert resolve_seeds_mode("auto", "cpu", 1) == "unroll"
    assert resolve_seeds_mode("auto", "cpu", 2) == "vmap"  # one batched all-reduce per step, not K
    assert resolve_seeds_mode("auto", "gpu", 1) == resolve_seeds_mode("auto", "tpu", 1) == "vmap"
    assert (
        resolve_seeds_mode("vmap", "cpu", 1) == "vmap" and resolve_seeds_mode("unroll", "gpu", 4) == "unroll"
    )
    with pytest.raises(ValueError, match=r"^seeds_mode must be one of \('auto', 'vmap', 'unroll'\)"):
        resolve_seeds_mode("map", "cpu", 1)


def test_bad_seeds_mode_is_one_line():
    from attn_jax.train.seeds import over_seeds

    with pytest.raises(ValueError, match=r"^seeds_mode must be one of \('vmap', 'unroll'\), got 'scan'$"):
        over_seeds(lambda state, batch: (state, {}), "scan")


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "2"])
def test_bad_num_seeds_is_one_line(bad):
    with pytest.raises(ValueError, match=f"num_seeds must be an integer >= 1, got {bad!r}"):
        replica_seeds(ml_collections.ConfigDict({"seed": 0, "num_seeds": bad}))


class _Counter:
    """A grain-like iterator: batches {"x": [n]} and its position as bytes."""

    def __init__(self, start):
        self.n = start

    def __next__(self):
        self.n += 1
        return {"x": np.array([self.n, -self.n])}

    def get_state(self):
        return str(self.n).encode()

    def set_state(self, state):
        self.n = int(state.decode())


def test_seed_batches_stack_on_axis_one_and_restore_each_position():
    batches = SeedBatches([_Counter(0), _Counter(10)])
    np.testing.assert_array_equal(next(batches)["x"], [[1, 11], [-1, -11]])
    saved = batches.get_state()
    next(batches)
    batches.set_state(saved)
    np.testing.assert_array_equal(next(batches)["x"], [[2, 12], [-2, -12]])
    with pytest.raises(ValueError, match="a data state of 2 seeds cannot restore 3 seeds"):
        SeedBatches([_Counter(0)] * 3).set_state(saved)


def test_seed_metrics_and_their_inverse():
    per_seed = [{"loss": 1.0, "iou": [0.5, 0.25]}, {"loss": 3.0, "iou": [0.75, 0.5]}]
    flat = seed_metrics(per_seed, [7, 9])
    assert flat == {"loss": 2.0, "seed7/loss": 1.0, "seed7/iou": [0.5, 0.25], "seed9/loss": 3.0,
                    "seed9/iou": [0.75, 0.5]}  # fmt: skip
    assert split_seeds(flat, [7, 9]) == per_seed
