"""The documentation site (docs/) builds with warnings as errors and documents the whole public API; the
Examples in the docstrings of attn_jax and of every public subpackage but attn_jax.train run as doctests;
every results JSON says what produced it, when and on what machine."""

import doctest
import glob
import importlib
import json
import os
import pkgutil
import posixpath
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every public (sub)package: the API reference must hold every name of each one's __all__.
PUBLIC_PACKAGES = (
    "attn_jax",
    "attn_jax.functional",
    "attn_jax.kernels",
    "attn_jax.nn",
    "attn_jax.models",
    "attn_jax.data",
    "attn_jax.detection",
    "attn_jax.losses",
    "attn_jax.metrics",
    "attn_jax.train",
    "attn_jax.train.tasks",
    "attn_jax.viz",
)
# The packages whose docstrings' Examples run here (attn_jax.train gets its Examples in a later pass).
DOCTESTED_PACKAGES = (
    "attn_jax.nn",
    "attn_jax.models",
    "attn_jax.viz",
    "attn_jax.functional",
    "attn_jax.kernels",
    "attn_jax.detection",
    "attn_jax.metrics",
    "attn_jax.data",
    "attn_jax.losses",
)


def documented_names(objects_inv: str) -> set[str]:
    """Every Python object (module, class, function, ...) the built site's inventory holds."""
    from sphinx.util.inventory import InventoryFile

    with open(objects_inv, "rb") as f:
        inventory = InventoryFile.load(f, "", posixpath.join)
    data = inventory.data if hasattr(inventory, "data") else inventory  # Sphinx >= 8.2 / older
    return {name for role, items in data.items() if role.startswith("py:") for name in items}


def missing_from_reference(names: set[str]) -> list[str]:
    """`package.name` for each name of a public package's __all__ that the reference does not document."""
    missing = []
    for package in PUBLIC_PACKAGES:
        module = importlib.import_module(package)
        assert module.__all__, package
        missing += [f"{package}.{n}" for n in module.__all__ if f"{package}.{n}" not in names]
    return missing


def test_site_builds_without_warnings_and_documents_every_public_name(tmp_path):
    out = tmp_path / "html"
    # -W: warnings are errors; -n: nitpicky, every cross-reference into attn_jax must resolve.
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n", "-q"]
    cmd += ["-d", str(tmp_path / "doctrees"), os.path.join(ROOT, "docs"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr

    names = documented_names(str(out / "objects.inv"))
    missing = missing_from_reference(names)
    assert not missing, f"public names missing from the API reference (docs/api/): {missing}"
    # the guides and the benchmark / CPU pages are part of the site, not only the API reference
    for page in ("getting_started", "guides/training", "benchmarks", "cpu", "ARCHITECTURE"):
        assert (out / f"{page}.html").is_file(), page


def test_reference_check_names_a_missing_public_name():
    # the check itself: an inventory without one public name reports exactly that name
    names = {f"{p}.{n}" for p in PUBLIC_PACKAGES for n in importlib.import_module(p).__all__}
    names.discard("attn_jax.viz.grad_cam")
    assert missing_from_reference(names) == ["attn_jax.viz.grad_cam"]


def _modules(package: str) -> list:
    pkg = importlib.import_module(package)
    mods = [pkg]
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        if not info.name.rsplit(".", 1)[-1] == "__main__":
            mods.append(importlib.import_module(info.name))
    return mods


def test_docstring_examples_run():
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    modules = [importlib.import_module("attn_jax")]
    for package in DOCTESTED_PACKAGES:
        modules += _modules(package)
    ran = []
    for module in modules:
        for test in finder.find(module, module.__name__):
            if test.examples and test.name.startswith(module.__name__):
                runner.run(test, clear_globs=True)
                ran.append(test.name)
    results = runner.summarize(verbose=False)
    print(f"ran the Examples of {len(ran)} docstrings ({results.attempted} statements)")
    assert results.failed == 0, f"{results.failed} docstring example(s) failed (output above)"
    # each module keeps its Examples: removing them would make this test pass vacuously
    assert len(ran) >= 80, ran


# Every measurement under these directories says what produced it, when and on what machine.
RESULTS_DIRS = ("experiments/results", "benchmarks/results")


def _entry(data: dict, *paths: str):
    """The first of the dotted `paths` present in `data` (e.g. "meta.command", "environment.command")."""
    for path in paths:
        node = data
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def _filled(value) -> bool:
    """A non-empty string, a positive count (cpu_count), or a non-empty list / dict of non-empty strings or
    counts (one command per run; the parts of a machine)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value > 0
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, dict):
        return bool(value) and all(_filled(v) for v in value.values())
    if isinstance(value, list):
        return bool(value) and all(_filled(v) for v in value)
    return False


def missing_provenance(data) -> list[str]:
    """Which of "command", "date" and "machine" a results JSON lacks. Accepted spellings: a top-level "meta"
    object (experiments/results), the benchmarks' "environment" (command, date_utc, cpu_count) and a
    top-level "machine" (a description string or a dict such as {"cpu_model": ..., "cores": ...})."""
    if not isinstance(data, dict):
        return ["command", "date", "machine"]
    missing = []
    if not _filled(_entry(data, "meta.command", "environment.command", "command")):
        missing.append("command")
    date = _entry(data, "meta.date", "environment.date_utc", "date")
    if not (isinstance(date, str) and re.match(r"\d{4}-\d{2}-\d{2}", date)):
        missing.append("date")
    if not _filled(_entry(data, "meta.machine", "machine", "environment.cpu_count")):
        missing.append("machine")
    return missing


def results_files() -> list[str]:
    files = []
    for folder in RESULTS_DIRS:
        files += sorted(glob.glob(os.path.join(ROOT, folder, "**", "*.json"), recursive=True))
    return files


def test_every_results_json_names_its_command_date_and_machine():
    files = results_files()
    assert len(files) >= 20, files  # both directories are searched, subfolders (results/cpu/) included
    bad = {}
    for path in files:
        with open(path) as f:
            missing = missing_provenance(json.load(f))
        if missing:
            bad[os.path.relpath(path, ROOT)] = missing
    assert not bad, f'results JSON without a command, date or machine (add a top-level "meta"): {bad}'


def test_provenance_check_names_what_is_missing():
    meta = {"command": "attn-jax train --config experiments/configs/classification.py", "date": "2026-12-02"}
    assert missing_provenance({"meta": {**meta, "machine": "2-core CPU"}}) == []
    assert missing_provenance({"meta": meta}) == ["machine"]
    assert missing_provenance({"meta": {**meta, "date": "yesterday", "machine": "x"}}) == ["date"]
    assert missing_provenance({"meta": {**meta, "command": {"run": ""}, "machine": "x"}}) == ["command"]
    environment = {"command": "attention.py", "date_utc": "2026-12-06T14:52:40+00:00", "cpu_count": 2}
    bench = {"environment": environment}
    assert missing_provenance(bench) == []
    assert missing_provenance({"runs": {}}) == ["command", "date", "machine"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
