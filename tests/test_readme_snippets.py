"""Every ```python block of README.md runs, in order, in one namespace (as a reader would paste them).

A block that needs a large dataset may be preceded by a marker comment, invisible on the rendered page:
    <!-- readme-test: OLD => NEW -->        (several pairs separated by " ;; ")
each OLD text of the block is then replaced by NEW (a tiny config) before it runs; OLD must occur in it.
The data dir and working directory are temporary.
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>.*?) -->\n)?```python\n(?P<code>.*?)```", re.S)


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


def test_marker_substitutes_only_its_own_block():
    text = '<!-- readme-test: "big" => "tiny" -->\n```python\nx = "big"\n```\n```python\ny = "big"\n```\n'
    assert [code for _, code in readme_blocks(text)] == ['x = "tiny"\n', 'y = "big"\n']


def test_every_readme_python_block_runs(tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = readme_blocks(f.read())
    assert len(blocks) >= 5  # the tour's snippets: pure functions, models, data, detection, viz
    monkeypatch.setenv("ATTN_JAX_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for line, code in blocks:
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as err:
            pytest.fail(f"README.md python block at line {line} failed: {type(err).__name__}: {err}")
