"""Notebooks are stored clean: no outputs, one parameters cell first, no logic, no I/O."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS if p.name.startswith("01_")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_clean(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"
    assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, "editor metadata"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for c in code:
        assert c.get("outputs") == [] and c.get("execution_count") is None, "stored with outputs"
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and params[0] is code[0], "exactly one parameters cell, the first code cell"
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith(
        f"# {path.name[:2]} ·"), "first cell: markdown title 'NN · title'"
    names = ast.parse("".join(params[0]["source"]))
    assert {t.id for n in names.body for t in getattr(n, "targets", [])} <= {"profile", "replot"}
    for c in code:
        src = "".join(c["source"])
        assert not any(line.lstrip().startswith(("!", "%")) for line in src.splitlines()), "shell or magic"
        tree = ast.parse(src)
        for node in ast.walk(tree):
            assert not isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Lambda), "logic belongs in lib/"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("open", "exec", "eval"), "file I/O or exec in a notebook"
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert all(m.split(".")[0] in {"sparsinglaw", "numpy", "pandas", "matplotlib", "seaborn"}
                           for m in mods), mods
        assert len(src.splitlines()) <= 15, "notebook cells stay short"
