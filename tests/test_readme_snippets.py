"""Every ```python block of README.md and docs/**/*.md runs, and so does every shell block the docs mark as
quick.

Python blocks run in order, one namespace per file (as a reader would paste them), in a temporary working
directory and data dir. A block that needs a large dataset may be preceded by a marker comment, invisible
on the rendered page:
    <!-- readme-test: OLD => NEW -->        (several pairs separated by " ;; ")
each OLD text of the block is then replaced by NEW (a tiny config) before it runs; OLD must occur in it.

A ```bash block preceded by
    <!-- test: run -->
is a command the docs present as quick (seconds): it runs with `bash -euo pipefail` in a temporary
directory that links to the repository's experiments/ and benchmarks/.
"""

import glob
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>.*?) -->\n)?```python\n(?P<code>.*?)```", re.S)
SHELL = re.compile(r"<!-- test: run -->\n```(?:bash|sh|console)\n(?P<code>.*?)```", re.S)
# any fence that opens a Python block, however it is spelled: none of them may escape BLOCK
ANY_PYTHON_FENCE = re.compile(r"^\s*```+\s*\{?(?:python3?|py|ipython3?|pycon)\b", re.M | re.I)
ANY_RUN_MARKER = re.compile(r"<!--\s*test:\s*run\s*-->")


def markdown_files() -> list[str]:
    """README.md and every Markdown page of the docs site, relative to the repository root."""
    docs = sorted(glob.glob("docs/**/*.md", root_dir=ROOT, recursive=True))
    return ["README.md", *docs]


def readme_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code with marker substitutions applied) of every fenced python block."""
    out = []
    for match in BLOCK.finditer(text):
        code = match["code"]
        for pair in (match["marker"] or "").split(" ;; "):
            if not pair:
                continue
            old, new = pair.split(" => ")
            assert old in code, f"readme-test marker text {old!r} not in the block that follows it"
            code = code.replace(old, new)
        line = text.count("\n", 0, match.start("code")) + 1
        out.append((line, code))
    return out


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, script) of every shell block marked <!-- test: run -->."""
    return [(text.count("\n", 0, m.start("code")) + 1, m["code"]) for m in SHELL.finditer(text)]


def _read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def test_marker_substitutes_only_its_own_block():
    text = '<!-- readme-test: "big" => "tiny" -->\n```python\nx = "big"\n```\n```python\ny = "big"\n```\n'
    assert [code for _, code in readme_blocks(text)] == ['x = "tiny"\n', 'y = "big"\n']


def test_block_finders_see_every_block_and_only_marked_shell():
    text = "```python\na = 1\n```\n<!-- test: run -->\n```bash\necho hi\n```\n```bash\necho unmarked\n```\n"
    assert readme_blocks(text) == [(2, "a = 1\n")]
    assert shell_blocks(text) == [(6, "echo hi\n")]
    # a fence spelled otherwise is counted by the loose pattern, so the run-count check below catches it
    assert len(ANY_PYTHON_FENCE.findall("```py\nx\n```\n```{python}\ny\n```\n")) == 2


def test_every_python_block_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTN_JAX_DATA_DIR", str(tmp_path / "tfds"))
    ran, found = 0, 0
    for path in markdown_files():
        text = _read(path)
        blocks = readme_blocks(text)
        found += len(ANY_PYTHON_FENCE.findall(text))
        workdir = tmp_path / path.replace("/", "_")
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        namespace = {"__name__": "readme"}
        for line, code in blocks:
            try:
                exec(compile(code, f"{path}:{line}", "exec"), namespace)
            except Exception as err:
                pytest.fail(f"{path} python block at line {line} failed: {type(err).__name__}: {err}")
            ran += 1
    print(f"ran {ran} python blocks of {len(markdown_files())} Markdown files")
    assert ran >= found, f"ran {ran} python blocks, but the Markdown holds {found}"
    assert ran >= 9  # the README's tour and the guides' examples


def test_quick_shell_commands_run(tmp_path):
    env = dict(os.environ, ATTN_JAX_DATA_DIR=str(tmp_path / "tfds"))
    for name in ("experiments", "benchmarks"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    ran, found = 0, 0
    for path in markdown_files():
        text = _read(path)
        found += len(ANY_RUN_MARKER.findall(text))
        for line, script in shell_blocks(text):
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            where = f"{path} shell block at line {line}"
            assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{script}\n{proc.stderr[-3000:]}"
            ran += 1
    print(f"ran {ran} quick shell blocks")
    assert ran >= found, f"ran {ran} marked shell blocks, but the Markdown marks {found}"
    assert ran >= 2
