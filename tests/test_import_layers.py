"""The import layers in pyproject.toml [tool.importlinter] hold: `lint-imports` keeps every contract."""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _lint_imports(cwd: pathlib.Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: install the test extra (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([exe, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_every_import_contract_is_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout, result.stdout[-4000:]


def test_a_lower_layer_importing_a_higher_one_is_caught(tmp_path):
    """The contracts can fail: functional importing nn (a higher layer) breaks the layers contract."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "attn_jax", copy / "attn_jax")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    rogue = copy / "attn_jax" / "functional" / "_rogue.py"
    rogue.write_text("import flax.linen\nfrom attn_jax import nn\n")
    result = _lint_imports(copy)
    assert result.returncode != 0
    assert "attn_jax.functional is not allowed to import attn_jax.nn" in result.stdout
    assert "attn_jax.functional is not allowed to import flax" in result.stdout, result.stdout[-3000:]


def test_train_builders_importing_the_tasks_is_caught(tmp_path):
    """Inside attn_jax.train the tasks sit above the model builders: a builder that imports the tasks (the
    cycle that factory.py once hid in a function-level import) breaks the train layers contract."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "attn_jax", copy / "attn_jax")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    builders = copy / "attn_jax" / "train" / "builders.py"
    builders.write_text(
        builders.read_text() + "\n\ndef _late():\n    from attn_jax.train.tasks import make_task\n"
    )
    result = _lint_imports(copy)
    assert result.returncode != 0
    assert "attn_jax.train.builders is not allowed to import attn_jax.train.tasks" in result.stdout, (
        result.stdout[-3000:]
    )
