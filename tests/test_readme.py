"""The README's Python examples run, and its tables are the registries': scores, data sources, dump formats."""
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


def test_score_and_kind_tables_come_from_the_registries():
    text = _text()
    for family in ("measure", "transfer", "source", "dump"):
        assert f"<!-- registry:{family} -->" in text, f"the README has no {family} table"
    assert docs.render(text) == text, "README tables are stale: run python -m embedx.engine.docs README.md"


def test_kind_tables_list_every_registered_kind():
    """The source and dump tables name each registered kind once, with its spec and options: the table changes
    when the registry does (a kind registered in a new module shows without editing the README)."""
    from embedx.engine import kinds

    for family in kinds.FAMILIES:
        table = docs.table(family)
        rows = table.splitlines()[2:]
        assert [r.split("|")[1].strip().strip("`") for r in rows] == list(kinds.names(family))
        for k, row in zip(kinds.kinds(family).values(), rows):
            assert all(f"`{o.name}" in row for o in k.options)
