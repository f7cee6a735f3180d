"""benchmarks/seeds_cost.py: the rows' arithmetic (cost per seed, the ratio to separate runs), the
command-line checks, and the --quick command's JSON (structure and positive numbers; never timings)."""

import json

import pytest

from benchmarks import seeds_cost as S


def _round(times, first=1.0, batch=16):
    return {"batch": batch, "first_call_s": first, "train_times": times}


def test_rows_give_the_cost_per_seed_and_the_ratio_to_separate_runs():
    per_k = {
        (1, "single"): [_round([0.010, 0.020, 0.030]), _round([0.020, 0.020, 0.020], first=3.0)],  # 20, 20 ms
        (4, "vmap"): [_round([0.050, 0.060, 0.070], first=5.0)],  # median 60 ms for 4 seeds: 15 per seed-step
        (4, "unroll"): [_round([0.100, 0.100, 0.100], first=2.0)],  # 100 ms: 25 ms per seed-step
    }
    rows = S.summarise(per_k)
    assert [(r["num_seeds"], r["variant"]) for r in rows] == [
        (1, "single seed"), (4, "one program (vmap)"), (4, "one program (unroll)"), (4, "separate"),
    ]  # fmt: skip
    single, one, mapped, separate = rows
    assert mapped["ms_per_seed_step"] == pytest.approx(25.0) and mapped["x_separate"] == pytest.approx(0.8)
    assert single["step_ms"] == pytest.approx(20.0) and single["x_separate"] == pytest.approx(1.0)
    assert single["first_call_s"] == pytest.approx(2.0)  # median of 1.0 and 3.0
    assert one["step_ms"] == pytest.approx(60.0) and one["ms_per_seed_step"] == pytest.approx(15.0)
    assert one["images_per_s_per_seed"] == pytest.approx(16 / 0.015)
    assert one["x_separate"] == pytest.approx(20.0 / 15.0)  # 4 separate steps of 20 ms vs one of 60 ms
    assert separate["step_ms"] == pytest.approx(80.0) and separate["ms_per_seed_step"] == pytest.approx(20.0)
    assert separate["images_per_s_per_seed"] == pytest.approx(16 / 0.020)
    assert separate["first_call_s"] == pytest.approx(8.0)  # four compilations of the single-seed program
    with pytest.raises(ValueError, match="K = 1"):
        S.summarise({(4, "vmap"): per_k[(4, "vmap")]})


def test_bad_command_lines_are_one_line_errors(capsys):
    for argv, message in ((["--seeds", "0"], "--seeds must be integers >= 1, got 0"),
                          (["--rounds", "0"], "--rounds must be >= 1, got 0")):  # fmt: skip
        with pytest.raises(SystemExit):
            S._parse(argv)
        assert message in capsys.readouterr().err
    assert S._parse(["--seeds", "4", "2"]).seeds == [1, 2, 4]  # K = 1 is what the others are compared with


def test_quick_command_writes_the_table_json(tmp_path, capsys):
    out = tmp_path / "seeds_cost.json"
    S.main(["--quick", "--seeds", "1", "2", "--modes", "unroll", "--out", str(out)])  # vmap: the row test
    payload = json.loads(out.read_text())
    assert payload["quick"] is True and payload["image"] == 32
    assert payload["config"] == "experiments/configs/classification.py:spatial,tiny"
    assert payload["environment"]["command"] and payload["environment"]["date_utc"]
    assert payload["machine"]["cores"] > 0 and len(payload["loadavg_before"]) == 3
    assert "load average" in payload["uptime_before"]
    rows = payload["results"]
    assert [(r["num_seeds"], r["variant"]) for r in rows] == [
        (1, "single seed"), (2, "one program (unroll)"), (2, "separate"),
    ]  # fmt: skip
    for row in rows:
        assert row["batch"] == 32
        for key in ("step_ms", "ms_per_seed_step", "images_per_s_per_seed", "x_separate", "first_call_s"):
            assert row[key] > 0, (row["variant"], key)
    assert (
        payload["modes"] == ["unroll"]
        and set(payload["raw"]) == {"1", "2 unroll"}
        and all(len(r[0]["train_times"]) == 2 for r in payload["raw"].values())
    )
    out = capsys.readouterr().out
    assert "| 2 | one program (unroll) | 32 |" in out and "(vmap)" not in out
