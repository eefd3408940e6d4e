"""The README's Python examples run, and its score tables are the registry's."""
import os
import re

from embedx.engine import docs

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _text():
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", _text(), re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)  # the examples write their stores here
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert os.path.isdir(tmp_path / "coco.zarr")


def test_score_tables_come_from_the_registry():
    text = _text()
    assert "<!-- registry:measure -->" in text and "<!-- registry:transfer -->" in text
    assert docs.render(text) == text, "README tables are stale: run python -m embedx.engine.docs README.md"
