"""paper.py: the published numbers are transcribed consistently and each carries the citation."""

import numpy as np
import pandas as pd
import pytest

from sparsinglaw import paper


def test_table3_ratio_and_shapes():
    t = paper.table3()
    assert list(t.scale) == ["0.1B", "0.2B", "0.4B", "0.8B", "1.2B"]
    # w/d = d_h / L to the published one-decimal rounding
    assert np.allclose(t.width_depth, (t.d_h / t.L).round(1))
    assert (t.d_f == 2.5 * t.d_h).all()  # the paper (Table 3): d_f = 2.5 d_h
    # non-embedding parameters ~ L * (4 d_h^2 attention + 3 d_h d_f gated FFN), within 1%
    assert np.allclose(t.n_nonemb, t.L * (4 * t.d_h**2 + 3 * t.d_h * t.d_f), rtol=0.01)


# Table 2 as transcribed a second time, from the paper's table (v1) and v4's added row; every cell of
# paper.TABLE2 must agree with it ("-": Eq. 5 has no b)
TABLE2_AGAIN = """
relu 0.1B 0.101 -0.0151 3.20 0.0614
relu 0.2B 0.449 -3.05 0.286 0.0674
relu 0.4B 0.683 -3.46 0.0790 0.0690
relu 0.8B 1.01 -3.49 0.00797 0.0721
relu 1.2B 1.33 -3.89 0.000903 0.0782
silu 0.1B 0.479 - 0.102 0.409
silu 0.2B 0.844 - 0.208 0.390
silu 0.4B 1.03 - 0.420 0.385
silu 0.8B 0.995 - 0.562 0.383
silu 1.2B 0.967 - 0.538 0.382
relu 2.4B 1.53 -3.46 1.56e-4 0.0648
"""


def test_table2_every_cell_matches_a_second_transcription():
    """Every cell, and the trend Fig. 7 describes across the five v1 scales: the ReLU limit rises, the SiLU
    limit falls (a typo in a middle row breaks one or both)."""
    want = [line.split() for line in TABLE2_AGAIN.strip().splitlines()]
    t = paper.table2()
    got = t[["activation", "scale", "alpha", "b", "c", "A0"]].values.tolist()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:2] == w[:2]
        for x, y in zip(g[2:], w[2:], strict=True):
            assert (np.isnan(x) if y == "-" else x == float(y)), (g, w)
    v1 = t[t.version == "v1"]
    for act, rising in (("relu", True), ("silu", False)):
        a0 = v1[v1.activation == act].set_index("scale").loc[["0.1B", "0.2B", "0.4B", "0.8B", "1.2B"], "A0"]
        assert (np.diff(a0) > 0).all() if rising else (np.diff(a0) < 0).all(), (act, a0.tolist())


def test_table2_rows():
    t = paper.table2()
    assert len(t) == 11
    assert len(paper.table2("v1")) == 10
    main = t[t.version == "v1"]
    assert sorted(main.activation.value_counts().items()) == [("relu", 5), ("silu", 5)]
    v4 = t[t.version == "v4"]
    assert v4[["activation", "scale", "alpha", "b", "c", "A0"]].values.tolist() == [
        ["relu", "2.4B", 1.53, -3.46, 1.56e-4, 0.0648]]
    assert t[t.activation == "silu"].b.isna().all()  # Eq. 5 has no b
    assert t[t.activation == "relu"].b.notna().all()
    assert ((t.A0 > 0) & (t.A0 < 1)).all() and (t.alpha > 0).all() and (t.c > 0).all()
    assert t.loc[(t.activation == "relu") & (t.scale == "1.2B"), "c"].item() == pytest.approx(0.000903)


def test_scalar_constants():
    assert paper.WIDTH_DEPTH["bottleneck"] == 114.0
    assert paper.WIDTH_DEPTH["best_range"] == (74.0, 282.0)
    assert paper.WIDTH_DEPTH["limit_activation_ratio_above"] == 0.08
    assert paper.A0_SCALE_CHANGE["relu_points"] == 1.7 and paper.A0_SCALE_CHANGE["silu_points"] == -2.7
    t1 = paper.table1_averages().set_index("setting")
    assert t1.loc["PPL-1%"].tolist() == [-0.16, -0.30]
    assert t1.loc["PPL-10%"].tolist() == [-0.45, -3.64]


def test_every_constant_carries_the_citation():
    assert "2411.02335" in paper.CITATION
    constants = {n: v for n, v in vars(paper).items() if n.isupper() and n != "CITATION"}
    assert {"TABLE2", "TABLE3", "TABLE1_AVERAGES", "WIDTH_DEPTH", "A0_SCALE_CHANGE"} <= set(constants)
    for name, v in constants.items():
        if isinstance(v, pd.DataFrame):
            assert v.attrs["citation"] == paper.CITATION and v.attrs["source"], name
        else:
            assert v["citation"] == paper.CITATION and v["source"], name
    for df in (paper.table2(), paper.table2("v1"), paper.table3(), paper.table1_averages()):
        assert df.attrs["citation"] == paper.CITATION


def test_accessors_return_copies():
    t = paper.table3()
    t.loc[0, "d_h"] = -1
    assert paper.table3().d_h[0] == 768


def test_table2_limits_agree_with_the_fig7_change_the_text_quotes():
    """Section 4.4 quotes the change of A0 from 0.1B to 1.2B (Fig. 7) in points; Table 2's two rows must
    give it to the quoted one decimal (a typo in either would show here)."""
    t = paper.table2("v1").set_index(["activation", "scale"])
    ch = paper.A0_SCALE_CHANGE
    for act in ("relu", "silu"):
        points = 100 * (t.loc[(act, ch["to_scale"]), "A0"] - t.loc[(act, ch["from_scale"]), "A0"])
        assert round(points, 1) == ch[f"{act}_points"], act


def test_every_accessor_returns_a_copy():
    for get in (paper.table1_averages, paper.table2, lambda: paper.table2("v1"), paper.table3):
        before = get().copy(deep=True)
        changed = get()
        changed.loc[0, changed.select_dtypes("number").columns[0]] = -1
        pd.testing.assert_frame_equal(get(), before)


def test_figure_map_names_the_paper_item_each_notebook_files_its_figure_under():
    """paper.FIGURES and the notebooks' plots.save calls (which write the MANIFEST) agree on the notebook
    and on the paper's figure/table numbers of every figure (the notebooks may add words: "(analog)")."""
    import json
    import re
    from pathlib import Path

    saved = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        for file, item, nb in re.findall(r'save\(\s*fig,\s*"([^"]+)",\s*P,\s*paper="([^"]+)",\s*notebook="([^"]+)"',
                                         code):
            saved[file] = (item, nb)
    assert sorted(saved) == sorted(paper.FIGURES["file"])

    def refs(text):
        return set(re.findall(r"(?:v4 )?(?:Fig\.|Table|Section|Sec\.) \d+(?:-\d+)?", text))

    for r in paper.FIGURES.itertuples():
        item, nb = saved[r.file]
        assert nb == r.notebook, r.file
        if refs(item):
            assert refs(item) <= refs(r.paper), (r.file, item, r.paper)
        else:
            assert item == r.paper, r.file
