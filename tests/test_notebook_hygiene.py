"""Notebooks are stored clean: no outputs, one parameters cell first, no logic, no I/O."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from conftest import committed

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_numbered_from_00_without_gaps_and_each_draws_a_listed_figure():
    from sparsinglaw import paper

    assert [p.name[:3] for p in NOTEBOOKS] == [f"{i:02d}_" for i in range(len(NOTEBOOKS))] and len(NOTEBOOKS) >= 8
    assert [p.stem for p in NOTEBOOKS] == sorted(set(paper.FIGURES["notebook"]))


def _saves(path: Path) -> list[tuple[str, str, str]]:
    """(file, paper, notebook) of every plots.save call of a notebook, from its source."""
    out = []
    for c in json.loads(path.read_text())["cells"]:
        if c["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse("".join(c["source"]))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "save":
                kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
                out.append((ast.literal_eval(node.args[1]), kw["paper"], kw["notebook"]))
    return out


def test_the_paper_labels_are_one_list():
    """paper.FIGURES is the list of where each paper item is rebuilt: the notebooks' plots.save calls file
    each figure under its label, the README's table shows it, and the committed MANIFESTs record it."""
    import csv

    from sparsinglaw import paper

    want = {r.file: (r.paper, r.notebook) for r in paper.FIGURES.itertuples()}
    saves = [s for p in NOTEBOOKS for s in _saves(p)]
    assert len(saves) == len(want) and {f: (pp, nb) for f, pp, nb in saves} == want
    readme = (REPO / "README.md").read_text()
    for r in paper.FIGURES.itertuples():
        assert f"| {r.paper} | {r.what} | `{r.notebook}` | [{r.file}.png](figures/cpu/{r.file}.png) |" in readme
    for manifest in committed("figures/*/MANIFEST.csv") or [REPO / "figures" / "cpu" / "MANIFEST.csv"]:
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and {r["file"].rsplit(".", 1)[0]: (r["paper"], r["notebook"]) for r in rows} == want, manifest


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_clean(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"
    assert set(nb["metadata"]) == {"kernelspec"}, "editor metadata or language_info (what make strip removes)"
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


# -----------------------------------------------------------------------------------------------
# what the notebooks' markdown says agrees with the code and the committed results

COMMITTED = [p for p in ("cpu", "cpu-long") if (REPO / "results" / p / "sparsity.csv").is_file()]
needs_results = pytest.mark.skipif(not COMMITTED, reason="no committed results/cpu or results/cpu-long")


def _cells(name: str, kind: str) -> list[str]:
    nb = json.loads((REPO / "notebooks" / name).read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == kind]


def test_the_claims_notebook_shows_every_claim():
    from sparsinglaw import claims

    code = "\n".join(_cells("07_claims.ipynb", "code"))
    assert [cid for cid in claims.CLAIMS if f'"{cid}"' not in code] == []


@needs_results
def test_the_checkpoint_count_of_the_cett_search_is_the_profiles():
    """A count typed into the markdown ("the last five stable-stage checkpoints") must be every committed
    profile's sparsity.n_last; better, the markdown names the setting."""
    import re

    from sparsinglaw.config import load_profile

    words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "ten": 10}
    n_last = {load_profile(p).sparsity.n_last for p in COMMITTED}
    for nb in NOTEBOOKS:
        for md in _cells(nb.name, "markdown"):
            for w in re.findall(r"last (\w+) stable-stage checkpoints", md.replace("\n", " ")):
                n = words.get(w, int(w) if w.isdigit() else None)
                assert n is None or n_last == {n}, f"{nb.name}: 'last {w}' but sparsity.n_last is {n_last}"


@pytest.mark.parametrize("profile", [p for p in ("cpu", "cpu-long", "smoke")
                                     if (REPO / "results" / p / "pareto.csv").is_file()])
def test_the_cett_sweep_text_says_what_the_sweep_shows(profile):
    """v4 Fig. 15: as c grows the PPL ratio rises and the activation ratio falls; the markdown of notebook 02
    must not say that both grow."""
    import pandas as pd

    d = pd.read_csv(REPO / "results" / profile / "pareto.csv")
    for _, g in d[d["method"] == "cett"].groupby("run"):
        g = g.sort_values("param")
        assert g["activation_ratio"].is_monotonic_decreasing
    md = next(m for m in _cells("02_ppl_p_sparsity.ipynb", "markdown") if "vs CETT" in m.split("\n")[0])
    assert "Both grow" not in md and "activation ratio falls" in md


@needs_results
def test_the_a0_line_text_states_the_rule_the_committed_fits_used():
    """scale_fit rows with every interval known still report OLS when its interval is the wider: the markdown
    of Fig. 7 must state that rule, not 'weighted by the intervals when all exist'."""
    import pandas as pd

    fits = pd.concat([pd.read_csv(REPO / "results" / p / "scale_fit.csv") for p in COMMITTED])
    weighted_but_ols = fits[fits["weighted"].astype(str).eq("True") & fits["method"].eq("OLS")]
    md = next(m for m in _cells("05_parameter_scale.ipynb", "markdown") if "(paper Fig. 7)" in m.split("\n")[0])
    if len(weighted_but_ols):
        assert "weighted by the intervals when all exist" not in md
        assert "wider of OLS" in md and "known errors" in md


@needs_results
def test_the_run_grid_text_does_not_place_our_ratios_in_the_papers_band():
    import pandas as pd

    from sparsinglaw import paper

    lo, hi = paper.TABLE3["width_depth"].min(), paper.TABLE3["width_depth"].max()
    t = pd.concat([pd.read_csv(REPO / "results" / p / "sparsity.csv") for p in COMMITTED])
    scale = t[t["groups"].str.split(",").map(lambda g: "scale" in g)]
    if not scale["width_depth"].between(0.8 * lo, 1.2 * hi).any():
        assert not any("near the paper's" in m for m in _cells("00_overview.ipynb", "markdown"))


def test_strip_leaves_what_test_clean_asks_for_and_keeps_the_parameters_tag(tmp_path):
    """`make strip` (notebooks.strip): outputs, execution counts, editor metadata and the language info go,
    and papermill's injected-parameters cell (an executed copy's profile), the kernelspec becomes python3, a
    cell's tags (papermill's `parameters`) stay; a clean file is left as it is and reported unchanged."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    from sparsinglaw import notebooks

    params = new_code_cell("profile = 'smoke'", execution_count=1,
                           metadata={"tags": ["parameters"], "collapsed": True, "scrolled": False})
    work = new_code_cell("print(1)", execution_count=2, metadata={"ExecuteTime": {"end_time": "now"}},
                         outputs=[new_output("stream", name="stdout", text="1\n")])
    injected = new_code_cell('# Parameters\nprofile = "cpu"\n', metadata={"tags": ["injected-parameters"]})
    nb = new_notebook(cells=[new_markdown_cell("# 99 · test", metadata={"editable": False}), params, injected, work],
                      metadata={"kernelspec": {"display_name": "venv", "language": "python", "name": "venv"},
                                "language_info": {"name": "python", "version": "3.12"}, "widgets": {}})
    path = tmp_path / "99_test.ipynb"
    nbformat.write(nb, path)
    assert notebooks.strip(path)
    got = json.loads(path.read_text())
    assert got["metadata"] == {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
    assert [c["metadata"] for c in got["cells"]] == [{}, {"tags": ["parameters"]}, {}]
    assert [(c["outputs"], c["execution_count"]) for c in got["cells"][1:]] == [([], None), ([], None)]
    assert ["".join(c["source"]) for c in got["cells"]] == ["# 99 · test", "profile = 'smoke'", "print(1)"]
    stripped = path.read_bytes()
    assert not notebooks.strip(path) and path.read_bytes() == stripped
