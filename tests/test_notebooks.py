"""Every notebook executes on the smoke profile (papermill, as make does) and writes its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_smoke(path, tmp_path, isolated_roots):
    import papermill as pm

    out = tmp_path / path.name
    pm.execute_notebook(str(path), str(out), parameters={"profile": "smoke"}, kernel_name="python3",
                        cwd=str(REPO), progress_bar=False)
    figs = isolated_roots["SPARSINGLAW_FIGURES"] / "smoke"
    mine = sorted(figs.glob(f"{path.name[:2]}_*.png"))
    assert mine, f"{path.name} wrote no figure into {figs}"
    for f in mine:
        assert f.stat().st_size > 1000 and f.with_suffix(".pdf").stat().st_size > 1000
    manifest = (figs / "MANIFEST.csv").read_text()
    assert all(f.name in manifest for f in mine)
