"""Every notebook executes on the smoke profile (notebooks.execute, as make does) and writes its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsinglaw.notebooks import execute

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_smoke(path, tmp_path, isolated_roots):
    execute(path, tmp_path / path.name, "smoke", cwd=REPO)
    figs = isolated_roots["SPARSINGLAW_FIGURES"] / "smoke"
    mine = sorted(figs.glob(f"{path.name[:2]}_*.png"))
    assert mine, f"{path.name} wrote no figure into {figs}"
    for f in mine:
        assert f.stat().st_size > 1000 and f.with_suffix(".pdf").stat().st_size > 1000
    manifest = (figs / "MANIFEST.csv").read_text()
    assert all(f.name in manifest for f in mine)


def _run(path, out, replot=False):
    execute(path, out, "smoke", replot=replot, cwd=REPO)


def test_replot_needs_only_results(tmp_path, isolated_roots, monkeypatch):
    """make replot: with the results tables of a smoke run and an EMPTY runs folder (no checkpoint, no
    log), every notebook redraws its figures; the set of figures is exactly paper.FIGURES."""
    import pandas as pd

    from sparsinglaw import paper

    results = isolated_roots["SPARSINGLAW_RESULTS"] / "smoke"
    if not (results / "sparse_inference.csv").exists():  # this test run alone: compute the results first
        for path in NOTEBOOKS:
            _run(path, tmp_path / path.name)
    figs = isolated_roots["SPARSINGLAW_FIGURES"] / "smoke"
    before = {p.name: p.stat().st_mtime_ns for p in figs.glob("*.png")}
    empty = tmp_path / "no_runs"
    empty.mkdir()
    monkeypatch.setenv("SPARSINGLAW_RUNS", str(empty))
    for path in NOTEBOOKS:
        _run(path, tmp_path / f"replot_{path.name}", replot=True)
    assert not any(empty.iterdir()), "a replot wrote into the runs folder (trained or measured something)"
    after = {p.name: p.stat().st_mtime_ns for p in figs.glob("*.png")}
    assert set(after) == set(before) and all(after[k] > before[k] for k in before), "not every figure was redrawn"
    manifest = pd.read_csv(figs / "MANIFEST.csv")
    assert sorted({f.rsplit(".", 1)[0] for f in manifest["file"]}) == sorted(paper.FIGURES["file"])
    labels = dict(zip(paper.FIGURES["file"], paper.FIGURES["paper"], strict=True))
    assert all(labels[f.rsplit(".", 1)[0]] == p for f, p in zip(manifest["file"], manifest["paper"], strict=True))
    want = paper.FIGURES.set_index("file")["notebook"]
    got = manifest.assign(stem=manifest["file"].str.rsplit(".", n=1).str[0]).drop_duplicates("stem")
    assert all(r.notebook == want[r.stem] for r in got.itertuples())
