"""benchmarks/train_throughput.py: variant parsing, round medians, and the --quick command's JSON."""

import json

import pytest

from benchmarks import train_throughput as T


def test_variants_and_flag_variants():
    specs = T.parse_variants(["jax-1", "jax-4", "torch-compile"], ["nofm=--xla_cpu_enable_fast_math=false"])
    assert list(specs) == ["jax-1", "jax-4", "torch-compile", "jax-1[nofm]", "jax-4[nofm]"]
    assert specs["jax-4"] == {"framework": "jax", "devices": 4, "xla_flags": ""}
    assert specs["jax-4[nofm]"]["xla_flags"] == "--xla_cpu_enable_fast_math=false"
    assert specs["torch-compile"]["compiled"]
    assert not T.parse_variants(["torch-eager"])["torch-eager"]["compiled"]
    for bad in (["jax-0"], ["jax-x"], ["tf"]):
        with pytest.raises(ValueError, match="variant must be"):
            T.parse_variants(bad)
    with pytest.raises(ValueError, match="--jax-flags"):
        T.parse_variants(["jax-1"], ["noflag"])


def test_config_variants_set_a_dotted_field_to_a_literal_or_a_string():
    extras = ["bf16=model.dtype=bfloat16", "wide=model.features=(8, 16)"]
    specs = T.parse_variants(["jax-4", "torch-eager"], [], extras)
    assert list(specs) == ["jax-4", "torch-eager", "jax-4[bf16]", "jax-4[wide]"]
    assert specs["jax-4[bf16]"]["config"] == {"model.dtype": "bfloat16"}
    assert specs["jax-4[wide]"]["config"] == {"model.features": (8, 16)}
    assert specs["jax-4"].get("config") is None
    with pytest.raises(ValueError, match="--jax-config"):
        T.parse_variants(["jax-1"], [], ["model.dtype"])


def test_summary_is_the_median_of_the_round_medians():
    times = ([0.1, 0.2, 0.9], [0.4, 0.4, 0.4], [0.9, 5.0, 0.1])
    runs = [{"train_times": t} for t in times]
    row = T.summarise("jax-1", {"devices": 1}, runs, batch=64)
    assert row["train_round_ms"] == pytest.approx([200.0, 400.0, 900.0])
    assert row["train_ms"] == pytest.approx(400.0) and row["train_images_per_s"] == pytest.approx(64 / 0.4)
    assert "infer_images_per_s" not in row  # no round measured inference


def test_main_job_config_is_the_classification_experiment():
    c = T.main_job_config()
    assert (c.task, c.model.attention, tuple(c.model.features), c.model.stride) == (
        "classification", "spatial", (24, 48, 96, 128), 8,
    )  # fmt: skip
    assert (c.data.batch_size, c.classification.label_smoothing, c.optim.name) == (128, 0.1, "adamw")


def test_quick_command_writes_the_table_json(tmp_path, capsys):
    variants = ["jax-1"] + (["torch-eager"] if T._torch_available() else [])
    out = tmp_path / "tt.json"
    bad = "bad=--xla_cpu_no_such_flag=1"
    bad_field = "bad_backbone=model.backbone=nope"
    extras = ["--jax-flags", bad, "--jax-config", bad_field]
    T.main(["--quick", "--variants", *variants, *extras, "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["quick"] is True
    assert len(payload["loadavg_before"]) == 3 and payload["environment"]["loadavg"] is not None
    assert "load average" in payload["uptime"]
    rows = {r["variant"]: r for r in payload["results"]}
    assert list(rows) == [*variants, "jax-1[bad]", "jax-1[bad_backbone]"]
    assert "died with exit code" in rows["jax-1[bad]"]["error"]  # the flag reached the child's XLA
    assert "unknown backbone 'nope'" in rows["jax-1[bad_backbone]"]["error"]  # the field reached the model
    for name in variants:
        row = rows[name]
        assert row["batch"] == 16 and row["rounds"] == 1 and len(row["train_round_ms"]) == 1
        assert row["train_images_per_s"] > 0 and row["infer_images_per_s"] > 0
    assert "| jax-1 | 1 | 16 |" in capsys.readouterr().out
