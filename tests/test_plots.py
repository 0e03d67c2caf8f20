"""Figures with nothing to draw say so, instead of showing bare axes (e.g. the seed-replica figure of a
profile without seed replicas, or the convergence speed when no law fit converged)."""

from __future__ import annotations

import csv
import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb, to_rgba

from sparsinglaw import laws, plots


def _texts(fig) -> list[str]:
    """Every text of a figure: in its axes, on the figure, and in the legends."""
    legends = [ax.get_legend() for ax in fig.axes] + list(fig.legends)
    return ([t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]
            + [t.get_text() for lg in legends if lg is not None for t in lg.get_texts()])


def _legend(ax) -> list[str]:
    """The legend texts of an axes, or of a figure's own legend."""
    lg = ax.get_legend() if isinstance(ax, plt.Axes) else (ax.legends[0] if ax.legends else None)
    return [t.get_text() for t in lg.get_texts()] if lg is not None else []


def test_activation_laws_of_an_empty_group_says_so():
    table = pd.DataFrame({"run": ["relu-s1"], "groups": ["scale"], "activation": ["relu"], "p": [1.0],
                          "tokens": [1000], "activation_ratio": [0.2], "non_embedding_params": [1000]})
    fig = plots.activation_laws(table, pd.DataFrame(), pd.DataFrame(), group="seeds")
    assert "this profile has no run in group 'seeds'" in _texts(fig)
    plt.close(fig)


def test_convergence_speed_without_converged_fits_says_so():
    curves = pd.DataFrame(columns=["run", "activation", "non_embedding_params", "data_scale_ratio", "dA_dratio"])
    fig = plots.convergence_speed(curves, pd.DataFrame(columns=["run", "activation", "ratio_common"]))
    assert any("no convergence speed to draw" in t for t in _texts(fig))
    plt.close(fig)


def test_save_marks_a_figure_with_bare_axes(tmp_path, monkeypatch, tiny_profile):
    monkeypatch.setenv("SPARSINGLAW_FIGURES", str(tmp_path))
    fig, ax = plt.subplots()
    plots.save(fig, "99_empty", tiny_profile, paper="none", notebook="test")
    assert f"nothing to draw for profile {tiny_profile.name}" in _texts(fig)
    fig2, ax2 = plt.subplots()
    ax2.plot([1, 2], [3, 4])
    plots.save(fig2, "99_full", tiny_profile, paper="none", notebook="test")
    assert _texts(fig2) == []  # a figure with data is left alone
    assert (tmp_path / tiny_profile.name / "99_empty.png").exists()
    plt.close("all")


def test_redrawn_unchanged_figure_keeps_its_manifest_row(tmp_path, monkeypatch, tiny_profile):
    """The same figure saved by another commit keeps the row naming the first; a changed one gets the new."""
    import csv

    from sparsinglaw import runs

    monkeypatch.setenv("SPARSINGLAW_FIGURES", str(tmp_path))

    def rows():
        with open(tmp_path / tiny_profile.name / "MANIFEST.csv", newline="") as f:
            return {r["file"]: r for r in csv.DictReader(f)}

    def draw(y):
        fig, ax = plt.subplots()
        ax.plot([1, 2], y)
        return fig

    monkeypatch.setattr(runs, "git_state", lambda: {"git_sha": "a" * 40, "git_dirty": False})
    plots.save(draw([3, 4]), "99_fig", tiny_profile, paper="none", notebook="test")
    monkeypatch.setattr(runs, "git_state", lambda: {"git_sha": "b" * 40, "git_dirty": True})
    plots.save(draw([3, 4]), "99_fig", tiny_profile, paper="none", notebook="test")
    assert {r["git_sha"] for r in rows().values()} == {"a" * 12}
    plots.save(draw([4, 3]), "99_fig", tiny_profile, paper="none", notebook="test")
    assert {r["git_sha"] for r in rows().values()} == {"b" * 12}
    monkeypatch.setattr(runs, "git_state", lambda: {"git_sha": "c" * 40, "git_dirty": False})
    plots.save(draw([4, 3]), "99_fig", tiny_profile, paper="none", notebook="test")
    assert {(r["git_sha"], r["git_dirty"]) for r in rows().values()} == {("c" * 12, "False")}  # clean replaces dirty
    # another machine of the same kind (another kernel build) redraws it: the row stays, byte for byte
    manifest = (tmp_path / tiny_profile.name / "MANIFEST.csv").read_bytes()
    from sparsinglaw import train as tr  # runs.provenance reads the versions from train.versions

    other = {"platform": "Linux-0.0-other", "cpu_capability": "DEFAULT"}
    monkeypatch.setattr(tr, "versions", lambda real=tr.versions: real() | other)
    monkeypatch.setattr(runs, "git_state", lambda: {"git_sha": "d" * 40, "git_dirty": False})
    plots.save(draw([4, 3]), "99_fig", tiny_profile, paper="none", notebook="test")
    assert (tmp_path / tiny_profile.name / "MANIFEST.csv").read_bytes() == manifest
    plt.close("all")


def test_manifest_names_the_corpus_of_the_results(tmp_path, monkeypatch, tiny_profile):
    """A figure's MANIFEST row names the corpus its profile's results tables record (make replot on
    another machine, whose own corpus differs), not this machine's."""
    import csv

    from sparsinglaw import runs

    monkeypatch.setenv("SPARSINGLAW_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "results"))
    made_on = {"source": "elsewhere", "files": 1, "bytes": 1, "sha256": "e" * 64}
    runs.write_table(pd.DataFrame({"x": [1]}), runs.results_dir(tiny_profile.name) / "sparsity.csv",
                     {"corpus": made_on})
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    plots.save(fig, "99_fig", tiny_profile, paper="none", notebook="test")
    with open(tmp_path / "figures" / tiny_profile.name / "MANIFEST.csv", newline="") as f:
        assert {r["corpus"] for r in csv.DictReader(f)} == {"e" * 12}
    plt.close("all")


def test_width_depth_runs_are_ordered_and_named_by_their_ratio():
    rows = [("relu-wd9", 2.6e6, 9.14286), ("relu-wd4", 2.5e6, 4.0), ("relu-wd64", 2.4e6, 64.0)]
    table = pd.DataFrame([{"run": r, "groups": "width_depth", "activation": "relu", "p": 1.0, "tokens": t,
                           "activation_ratio": 0.1, "non_embedding_params": n, "width_depth": wd}
                          for r, n, wd in rows for t in (1000, 2000)])
    fits = pd.DataFrame([{"run": r, "converged": False, "dropped_tokens": "", "D_min_used": 0.0,
                          "activation": "relu", "form": "logspace_power"} for r, _, _ in rows])
    fig = plots.activation_laws(table, fits, pd.DataFrame(columns=["run", "D"]), group="width_depth")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["relu-wd4 (d/L 4, 2500k), no fit", "relu-wd9 (d/L 9.14, 2600k), no fit",
                      "relu-wd64 (d/L 64, 2400k), no fit"]
    plt.close(fig)


def _pareto_points() -> pd.DataFrame:
    """Hand-made Pareto points: a dense run's PPL-p% curve and an MoE (E = 4, trained k = 2)."""
    rows = [("silu-s2", "silu", "cett", c, 4.0, ppl, a) for c, ppl, a in
            ((0.05, 56.0, 0.6), (0.2, 60.0, 0.3), (0.4, 70.0, 0.2))]
    rows += [("silu-s2", "silu", "ppl-1%", 0.1, 4.0, 55.0 * 1.01, 0.45)]
    rows += [("silu-moe4", "silu", "moe", k, 4.1, ppl, k / 4)
             for k, ppl in ((1, 80.0), (2, 62.0), (3, 61.0), (4, 61.5))]
    return pd.DataFrame(rows, columns=["run", "activation", "method", "param", "dense_loss", "ppl", "activation_ratio"])


def test_moe_comparison_reads_the_dense_curve_at_the_moe_ratio(tiny_profile):
    from sparsinglaw import measure

    df = measure.moe_comparison(_pareto_points(), tiny_profile)  # smoke's silu-moe4: E = 4, top_k = 2
    assert list(df["k"]) == [1, 2, 3, 4] and list(df["trained_k"]) == [False, True, False, False]
    assert (df["dense_run"] == "silu-s2").all() and (df["n_experts"] == 4).all()
    dense = math.exp(4.0)  # c = 0: the unsparsified dense model closes the curve at ratio 1
    # k=1 (0.25): between (0.2, 70) and (0.3, 60) -> 65; k=2 (0.5): between (0.45, 55.55) and (0.6, 56)
    want = [65.0, 55.55 + (0.05 / 0.15) * (56.0 - 55.55), 56.0 + (0.15 / 0.4) * (dense - 56.0), dense]
    for got, w in zip(df["ppl_dense_at_ratio"], want, strict=True):
        assert got == pytest.approx(w)
    assert df["gap_pct"].iloc[0] == pytest.approx(100 * (80.0 / 65.0 - 1))
    assert list(df["ppl_dense_unsparsified"]) == pytest.approx([dense] * 4)
    below = _pareto_points()
    below.loc[below["method"] == "moe", "activation_ratio"] = 0.1  # sparser than the dense curve reaches
    assert measure.moe_comparison(below, tiny_profile)["ppl_dense_at_ratio"].isna().all()


def test_moe_vs_dense_draws_both_and_says_when_there_is_no_moe(tiny_profile):
    from sparsinglaw import measure

    pts = _pareto_points()
    fig = plots.moe_vs_dense(pts, measure.moe_comparison(pts, tiny_profile))
    labels = [ln.get_label() for ln in fig.axes[0].lines]
    assert any(lb.startswith("silu-s2: dense") for lb in labels)
    assert any(lb.startswith("silu-moe4: MoE, k of 4") and "trained k=2" in lb for lb in labels)
    plt.close(fig)
    dense_only = pts[pts["method"] != "moe"]
    fig = plots.moe_vs_dense(dense_only, measure.moe_comparison(dense_only, tiny_profile))
    assert any("no MoE run" in t for t in _texts(fig))
    plt.close(fig)
    fig = plots.pareto_curves(pts.assign(sparse_loss=4.1, ppl_ratio=1.0))  # the MoE gets no Fig. 3 panel
    assert [ax.get_title() for ax in fig.axes] == ["silu-s2 (silu)"]
    plt.close(fig)


def test_run_grid_labels_each_shape_once_and_marks_moe_runs():
    states = pd.DataFrame({
        "run": ["relu-s1", "silu-s1", "relu-s1-seed1", "silu-s4", "silu-moe16", "silu-moe4", "relu-wd9"],
        "activation": ["relu", "silu", "relu", "silu", "silu", "silu", "relu"],
        "n_experts": [0, 0, 0, 0, 16, 4, 0],
        "width_depth": [16.0, 16.0, 16.0, 16.0, 16.0, 16.0, 9.0],
        "non_embedding_params": [23712, 23712, 23712, 188992, 193088, 190016, 190000]})
    fig = plots.run_grid(states)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["moe4/moe16/s4", "s1 (+1 relu seed run)", "wd9"]
    plt.close(fig)
    more = pd.concat([states, pd.DataFrame({"run": ["silu-s1-seed1", "silu-s1-seed2"], "activation": "silu",
                                            "n_experts": 0, "width_depth": 16.0, "non_embedding_params": 23712})])
    fig = plots.run_grid(more)  # whose seeds they are: the activation names them
    assert "s1 (+1 relu, +2 silu seed runs)" in [t.get_text() for t in fig.axes[0].texts]
    plt.close(fig)
    fig = plots.run_grid(states)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["relu", "silu", "silu MoE"]
    fig.canvas.draw()
    xlabels = [t.get_text() for t in fig.axes[0].get_xticklabels(which="both") if t.get_text()]
    assert xlabels and not any("$" in t for t in xlabels), xlabels  # plain numbers, no 1.2x10^1 crowding
    plt.close(fig)


@pytest.mark.parametrize("lo,hi,expect", [
    (2.0, 200.0, [2, 5, 10, 20, 50, 100, 200]),  # wide: 1-2-5 per decade
    (11.0, 17.0, [11, 12, 13, 14, 15, 16, 17]),  # narrow (width-depth ratios 12-16): round values
])
def test_log_axis_ticks_stay_readable_on_narrow_ranges(lo, hi, expect):
    fig, ax = plt.subplots()
    ax.plot([lo, hi], [1, 1])
    plots.log_x(ax)
    ax.set_xlim(lo, hi)
    fig.canvas.draw()
    shown = [(lb.get_position()[0], lb.get_text()) for lb in ax.get_xticklabels() if lo <= lb.get_position()[0] <= hi]
    assert [v for v, _ in shown] == pytest.approx(expect)
    assert [text for _, text in shown] == [f"{v:g}" for v in expect]  # plain labels, no 1.2x10^1
    plt.close(fig)


def test_a_profile_without_pareto_runs_or_a_group_gets_figures_that_say_so(tmp_path, monkeypatch):
    """A profile may sweep no run (sparsity.pareto_runs: []) and lack a group (e.g. no width-depth grid):
    notebooks 01-02 then draw panels that say why they are empty, and nothing is trained or written."""
    from sparsinglaw import measure
    from sparsinglaw.config import load_profile

    for k in ("SPARSINGLAW_RUNS", "SPARSINGLAW_RESULTS"):
        monkeypatch.setenv(k, str(tmp_path / k))
    P = load_profile("smoke", overrides=["sparsity.pareto_runs=[]"])
    points = measure.pareto_for(P, compute=True)
    assert points.empty and list(points.columns) == measure.RESULT_COLUMNS["pareto"][0]
    assert not any(tmp_path.iterdir())  # nothing trained, measured or written
    for fig, why in ((plots.pareto_curves(points), "no dense run among sparsity.pareto_runs"),
                     (plots.cett_sweep(points), "no CETT sweep: no dense run among sparsity.pareto_runs"),
                     (plots.moe_vs_dense(points, measure.moe_comparison(points, P)), "no MoE run among "
                      "sparsity.pareto_runs"),
                     (plots.loss_curves({}, pd.DataFrame(columns=["run", "activation", "non_embedding_params"]),
                                        empty="this profile has no run in group 'width_depth'"),
                      "this profile has no run in group 'width_depth'")):
        assert why in [" ".join(t.split()) for t in _texts(fig)]  # an empty panel's text wraps to fit it
        plt.close(fig)


def test_form_comparison_marks_a_form_without_any_fit():
    """A form whose fit failed outright has no MSE: its slot says so instead of silently missing a bar, and
    the legend says what hatching means (a bar's own handle would carry the first run's hatch)."""
    rows = [("relu-s1", "logspace_power", 1e-5, True, True), ("relu-s1", "log", math.nan, False, False),
            ("silu-s1", "logspace_power", 2e-5, True, False), ("silu-s1", "log", 3e-5, False, False)]
    comparison = pd.DataFrame(rows, columns=["run", "form", "mse", "converged", "paper_form"])
    fig = plots.form_comparison(comparison)
    ax = fig.axes[0]
    no_fit = [ln for ln in ax.lines if ln.get_marker() == "v"]
    assert len(no_fit) == 1 and no_fit[0].get_xdata()[0] == pytest.approx(0.2)  # relu-s1, second of two forms
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:2] == ["logspace_power: Eq. 4 (ReLU)", "log: rebuttal, logarithmic"]  # each form and its source
    assert "no fit (no MSE)" in labels and "paper's form" in labels
    hatched = [t.get_text() for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
               if getattr(h, "get_hatch", lambda: None)()]
    assert hatched == ["paper's form"]
    plt.close(fig)


def test_convergence_speed_never_prints_nan_for_an_undefined_rho():
    curves = pd.DataFrame({"run": ["silu-s2", "silu-s4"], "activation": "silu", "non_embedding_params": [5e4, 2e5],
                           "data_scale_ratio": [10.0, 10.0], "dA_dratio": [1e-4, 2e-4]})
    summary = curves[["run", "activation", "non_embedding_params"]].assign(ratio_common=10.0, rho_N_speed=math.nan,
                                                                           dA_dratio_common=[1e-4, math.nan])
    with warnings.catch_warnings():
        # every speed at one D/N: no singular-axis warning from matplotlib
        warnings.filterwarnings("error", message="Attempting to set identical")
        fig = plots.convergence_speed(curves, summary)
    texts = _texts(fig)
    assert not any("nan" in t for t in texts), texts
    assert any("undefined:\n1 run(s) with a speed there" in t for t in texts)  # runs with a speed, not all
    assert fig.axes[0].get_xlim() == pytest.approx((5.0, 20.0))  # a factor of 2 either side of the one D/N
    plt.close(fig)


def test_width_depth_loss_shows_a_best_range_of_a_single_ratio():
    points = pd.DataFrame({"width_depth": [4.0, 16.0, 64.0], "loss_converged": True, "E": [2.8, 3.0, 3.3],
                           "E_lo": [2.5, 2.7, 3.0], "E_hi": [3.1, 3.3, 3.6], "final_loss": [4.3, 4.2, 4.25]})
    summary = pd.DataFrame([{"quantity": "E", "kind": "best_range", "best_lo": 4.0, "best_hi": 4.0}])
    fig = plots.width_depth_loss(points, summary)
    ax = fig.axes[0]
    marked = [ln for ln in ax.lines if list(ln.get_xdata()) == [4.0, 4.0]]
    assert marked and marked[0].get_label().startswith("best range (E): 4 only")
    plt.close(fig)


def _sparsity_rows(reached_last: bool) -> pd.DataFrame:
    return pd.DataFrame([{"run": "relu-s1", "groups": "scale", "activation": "relu", "p": 1.0, "tokens": t,
                          "activation_ratio": a, "non_embedding_params": 1000, "width_depth": 16.0,
                          "reached": reached_last or t < 3000}
                         for t, a in ((1000, 0.3), (2000, 0.25), (3000, 0.2))])


def test_unreached_ppl_p_points_are_crossed_not_passed_off_as_ppl_p():
    """A row with reached = False has only a lower bound on c: the law figure and the sparse-inference
    figure cross it and say so; a table where every target was reached draws no cross."""
    fits = pd.DataFrame([{"run": "relu-s1", "converged": False, "dropped_tokens": "", "D_min_used": 0.0,
                          "activation": "relu", "form": "logspace_power"}])
    empty = pd.DataFrame(columns=["run", "D"])
    for reached, crossed in ((True, []), (False, [3.0e-3])):
        t = _sparsity_rows(reached)
        t["reached"] = t["reached"].astype(str)  # as read back from CSV text
        fig = plots.activation_laws(t, fits, empty)
        xs = [x for ln in fig.axes[0].lines if ln.get_marker() == "x" for x in ln.get_xdata()]
        assert xs == pytest.approx(crossed)
        labels = [tx.get_text() for tx in fig.axes[0].get_legend().get_texts()]
        assert any("not reached" in lb for lb in labels) == (not reached)
        plt.close(fig)
    df = pd.DataFrame([{"run": "relu-s1", "activation": "relu", "non_embedding_params": 1000, "domain": "all",
                        "n_tokens": 100, "p": p, "activation_ratio": a, "ppl_ratio": r, "reached": p != 10.0}
                       for p, a, r in ((0.0, 0.4, 1.0), (1.0, 0.2, 1.01), (10.0, 0.1, 1.05))])
    fig = plots.sparse_inference(df)
    crosses = [ln for ln in fig.axes[0].lines if ln.get_marker() == "x"]
    assert [x for ln in crosses for x in ln.get_xdata()] == pytest.approx([0.1])
    assert "target not reached (c a lower bound)" in [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    plt.close(fig)


def test_token_pairs_say_when_pairs_are_left_out():
    runs_ = ["relu-s1", "relu-s2", "relu-s3"]
    tokens = pd.DataFrame([{"run": r, "token_id": i, "activation_ratio": 0.1 * (i % 3) + 0.01 * j}
                           for j, r in enumerate(runs_) for i in range(10)])
    pairs = pd.DataFrame([{"activation": "relu", "run_a": a, "run_b": b, "pearson": 0.5, "pearson_lo": 0.4,
                           "pearson_hi": 0.6, "spearman": 0.5, "n_tokens": 10}
                          for a, b in (("relu-s1", "relu-s2"), ("relu-s1", "relu-s3"), ("relu-s2", "relu-s3"))])
    silu = pd.DataFrame([{**pairs.iloc[0].to_dict(), "activation": "silu", "run_a": "silu-s1", "run_b": "silu-s2"}])
    tokens = pd.concat([tokens, tokens[tokens["run"] != "relu-s3"].replace({"relu-s1": "silu-s1",
                                                                            "relu-s2": "silu-s2"})])
    fig = plots.token_pairs(tokens, pd.concat([pairs, silu], ignore_index=True), max_cols=2)
    assert fig._suptitle.get_text().endswith("; first 2 of 3 relu pairs shown")  # silu's one pair is all shown
    plt.close(fig)
    fig = plots.token_pairs(tokens, pairs)
    assert "shown" not in fig._suptitle.get_text()
    plt.close(fig)


# -----------------------------------------------------------------------------------------------
# the figure defects a review found against the tables


def _train_log(runs_: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    """A train_log.csv of hand-made runs (name, group, params, width-depth ratio): train rows every 20
    steps (4096 tokens a step), a steep first third, validation rows at two checkpoints."""
    train = [6.953, 5.917, 5.468, 5.083, 4.90, 4.80, 4.72, 4.66, 4.61, 4.57]
    rows = []
    for k, (run, group, n, wd) in enumerate(runs_):
        head = {"run": run, "groups": group, "activation": "relu", "d_model": 32, "n_layers": 2, "width_depth": wd,
                "non_embedding_params": n}
        rows += [head | {"step": 20 * (i + 1), "tokens": 81920 * (i + 1), "split": "train", "loss": v + 0.01 * k}
                 for i, v in enumerate(train)]
        rows += [head | {"step": s_, "tokens": 4096 * s_, "split": "val", "loss": v}
                 for s_, v in ((100, 5.0), (200, 4.7))]
    return pd.DataFrame(rows)


def test_train_loss_is_drawn_as_logged_without_smoothing(monkeypatch, tiny_profile):
    """Each train row is already the mean over log_every steps: the line is those means, unsmoothed (a
    centred rolling mean with partial windows bent the steep first rows), and the title says so."""
    log = _train_log([("relu-s1", "scale", 23712, 16.0)])
    monkeypatch.setattr(plots, "train_log_table", lambda *a, **k: log)
    fig = plots.loss_curves_for(tiny_profile, "scale", compute=False)
    line = next(ln for ln in fig.axes[0].lines if ln.get_label().startswith("relu-s1"))
    train = log[log["split"] == "train"]
    assert list(line.get_xdata()) == pytest.approx(list(train["tokens"] / 1e6))
    assert list(line.get_ydata()) == pytest.approx(list(train["loss"]))  # 6.953, 5.917, 5.468, ...
    assert "mean over each 20 steps" in fig._suptitle.get_text()
    plt.close(fig)


def test_width_depth_loss_curves_are_ordered_coloured_and_named_by_their_ratio(monkeypatch, tiny_profile):
    """Width-depth runs have about one size: their order, colour ramp and labels follow d_h / L."""
    log = _train_log([("relu-wd32", "width_depth", 94528, 32.0), ("relu-wd3.6", "width_depth", 106592, 3.5556),
                      ("relu-wd96", "width_depth", 106272, 96.0), ("relu-wd12", "width_depth", 106416, 12.0)])
    monkeypatch.setattr(plots, "train_log_table", lambda *a, **k: log)
    fig = plots.loss_curves_for(tiny_profile, "width_depth", compute=False)
    assert _legend(fig.axes[0]) == ["relu-wd3.6 (d/L 3.56, 107k)", "relu-wd12 (d/L 12, 106k)",
                                    "relu-wd32 (d/L 32, 95k)", "relu-wd96 (d/L 96, 106k)"]
    lines = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("relu-")]
    cmap = plt.get_cmap("viridis", 5)
    assert [ln.get_color() for ln in lines] == [cmap(i) for i in range(4)]  # the ramp in d/L order
    plt.close(fig)
    log = _train_log([("relu-s2", "scale", 55480, 13.3), ("relu-s1", "scale", 23712, 16.0)])
    monkeypatch.setattr(plots, "train_log_table", lambda *a, **k: log)
    fig = plots.loss_curves_for(tiny_profile, "scale", compute=False)  # other groups: by size, as before
    assert _legend(fig.axes[0]) == ["relu-s1 (24k)", "relu-s2 (55k)"]  # as README and the other legends
    plt.close(fig)


def test_size_ticks_round_once():
    """55.48 thousand parameters is the tick "55" (rounding to 55.5 first made it "56", while legends and
    README say 55k)."""
    fig, ax = plt.subplots()
    plots._ticks_at(ax, np.array([23712, 55480, 106416, 188992]) / 1e3)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["24", "55", "106", "189"]
    plt.close(fig)
    assert [plots._count(n) for n in (23712, 99999, 106416, 1234567)] == ["24k", "100k", "0.11M", "1.23M"]


def _speeds():
    """Three converged ReLU runs; relu-s2's law is flat (dA/d(D/N) exactly 0) over the second half of its
    range, the common ratio 20 included; relu-s3 has no converged fit; silu runs have none at all."""
    ratio = np.geomspace(5.0, 80.0, 9)
    laws = (("relu-s1", 2e4, -1e-4 / ratio), ("relu-s2", 5e4, np.where(ratio < 15, -3e-4, 0.0)),
            ("relu-s4", 2e5, -5e-3 / ratio))
    curves = pd.concat([pd.DataFrame({"run": run, "activation": "relu", "non_embedding_params": n,
                                      "data_scale_ratio": ratio, "dA_dratio": dA}) for run, n, dA in laws],
                       ignore_index=True)
    summary = pd.DataFrame({"run": ["relu-s1", "relu-s2", "relu-s4"], "activation": "relu",
                            "non_embedding_params": [2e4, 5e4, 2e5], "ratio_common": 20.0,
                            "dA_dratio_common": [-5e-6, 0.0, -2.5e-4], "rho_N_speed": 0.5})
    runs_ = pd.DataFrame({"run": ["relu-s1", "relu-s2", "relu-s3", "relu-s4", "silu-s1", "silu-s2"],
                          "activation": ["relu"] * 4 + ["silu"] * 2,
                          "non_embedding_params": [2e4, 5e4, 1e5, 2e5, 2e4, 5e4]})
    return curves, summary, runs_


def test_convergence_speed_draws_every_speed_behind_the_rho_zeros_included():
    """A log axis never draws dA/d(D/N) = 0: every run's speed at the common ratio is a point inside the
    axes, a zero one at the axis' "0 (flat)"."""
    curves, summary, _ = _speeds()
    fig = plots.convergence_speed(curves, summary)  # the runs of the curves only
    ax = fig.axes[0]
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    box = ax.get_window_extent()
    for _, r in summary.iterrows():
        want = (r["ratio_common"], abs(r["dA_dratio_common"]))
        drawn = [ln for ln in ax.lines if any(np.isclose(x, want[0]) and np.isclose(y, want[1], rtol=1e-9, atol=0)
                                               for x, y in zip(ln.get_xdata(), ln.get_ydata(), strict=True))]
        assert drawn, f"{r['run']}: no point at the common ratio"
        px, py = ax.transData.transform(want)
        assert np.isfinite(py) and box.y0 - 1 <= py <= box.y1 + 1 and lo <= want[1] <= hi, r["run"]
    zero = [t.get_text() for t in ax.get_yticklabels() if t.get_position()[1] == 0]
    assert zero == ["0 (flat)"]
    flat = next(ln for ln in ax.lines if ln.get_label().startswith("relu-s2"))
    ys = np.asarray(flat.get_ydata(), float)
    assert np.isfinite(ax.transData.transform(np.c_[flat.get_xdata(), ys])[:, 1]).all()  # the flat stretch too
    plt.close(fig)


def test_convergence_speed_names_the_scale_runs_without_a_converged_fit():
    """Every activation of the scale group gets a panel; runs without a converged fit are named in it, and
    a panel with no curve says why it is empty."""
    curves, summary, runs_ = _speeds()
    fig = plots.convergence_speed(curves, summary, runs_)
    assert [ax.get_title() for ax in fig.axes] == ["relu", "silu"]
    assert "no converged fit: relu-s3" in _legend(fig.axes[0])
    silu = [t.get_text() for t in fig.axes[1].texts]
    assert len(silu) == 1 and "silu-s1, silu-s2" in silu[0] and "no convergence speed to draw" in silu[0]
    assert not fig.axes[1].lines
    plt.close(fig)


def test_convergence_speed_names_a_step_apart_from_the_runs_without_a_fit():
    """A converged fit that is a step has no curve (analysis.convergence: its slope is not measured); its
    summary row's message says so, and the panel names it as a step, not as a run without a fit."""
    curves, summary, runs_ = _speeds()
    msg = "a step (alpha = 10, on its bound): its slope between two checkpoints is not measured, no speed"
    summary = pd.concat([summary.assign(message=""),
                         pd.DataFrame([{"run": "relu-s3", "activation": "relu", "non_embedding_params": 1e5,
                                        "ratio_common": 20.0, "dA_dratio_common": np.nan, "rho_N_speed": 0.5,
                                        "message": msg},
                                       {"run": "silu-s2", "activation": "silu", "non_embedding_params": 5e4,
                                        "ratio_common": np.nan, "dA_dratio_common": np.nan, "rho_N_speed": np.nan,
                                        "message": msg}])], ignore_index=True)
    fig = plots.convergence_speed(curves, summary, runs_)
    legend = _legend(fig.axes[0])
    assert "a step, no measured slope: relu-s3" in legend and "no converged fit" not in legend
    silu = [t.get_text() for t in fig.axes[1].texts]
    assert len(silu) == 1 and "no converged law fit among\nsilu-s1;" in silu[0]
    assert "steps (no measured slope):\nsilu-s2" in silu[0]
    plt.close(fig)


def _empty_width_depth():
    cols = ["run", "activation", "groups", "d_model", "n_layers", "width_depth", "non_embedding_params", "form",
            "converged", "A0", "A0_lo", "A0_hi", "A_first", "A_last", "loss_converged", "E", "E_lo", "E_hi",
            "final_loss"]
    summary = pd.DataFrame([{"quantity": q, "kind": k, "n": 0, "breakpoint": math.nan, "best_lo": math.nan,
                             "best_hi": math.nan, "message": "not computed"}
                            for q, k in (("A0", "piecewise_linear"), ("A_last", "piecewise_linear"),
                                         ("E", "best_range"), ("final_loss", "best_range"))])
    return pd.DataFrame(columns=cols), summary


@pytest.mark.parametrize("draw", [plots.width_depth_activation, plots.width_depth_loss])
def test_width_depth_figures_of_a_profile_without_that_group_say_so(draw):
    """cpu-long has no width-depth runs: the limit figures say so (an empty errorbar still counts as data,
    so save()'s own fallback never fired) and claim no piecewise fit or legend."""
    from sparsinglaw import paper

    points, summary = _empty_width_depth()
    fig = draw(points, summary, paper.WIDTH_DEPTH)
    assert _texts(fig) == ["this profile has no run in group 'width_depth'"]
    plt.close(fig)


def test_width_depth_loss_says_what_its_best_ranges_rest_on_and_keeps_the_legend_off_the_data():
    points = pd.DataFrame({"width_depth": [3.6, 12.0, 18.7, 32.0, 96.0], "loss_converged": True,
                           "E": [2.79, 2.90, 2.83, 2.86, 3.36], "E_lo": [1.87, 2.34, 2.40, 2.24, 3.13],
                           "E_hi": [3.34, 3.33, 3.15, 3.25, 3.57], "final_loss": [4.32, 4.19, 4.17, 4.17, 4.24]})
    summary = pd.DataFrame([
        {"quantity": "E", "kind": "best_range", "best_lo": 3.6, "best_hi": 3.6, "message": "within 1% of the lowest E"},
        {"quantity": "final_loss", "kind": "best_range", "best_lo": 12.0, "best_hi": 32.0,
         "message": "within 1% of the lowest final_loss"}])
    fig = plots.width_depth_loss(points, summary)
    ax = fig.axes[0]
    assert ax.get_legend() is None and len(fig.legends) == 1  # the figure's legend, below the axes
    labels = _legend(fig)
    assert "E within 1% of the lowest: 3.6 only\n(point estimates; every E interval overlaps the lowest's)" in labels
    assert "last-checkpoint loss within 1% of the lowest: 12-32" in labels  # the final_loss range is drawn
    span = [p for p in ax.patches if p.get_label().startswith("last-checkpoint")]
    assert len(span) == 1 and span[0].get_hatch()
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    assert not box.overlaps(ax.get_window_extent())  # outside the axes
    assert not box.overlaps(ax.xaxis.label.get_window_extent())  # and below the axis label (it overlapped it)
    assert box.y0 >= 0  # inside the figure
    plt.close(fig)
    apart = points.assign(E_lo=[1.87, 2.34, 2.40, 2.24, 3.35])  # wd96's interval clear of the lowest's
    fig = plots.width_depth_loss(apart, summary)
    assert any("(point estimates; 3 of 4 other E intervals overlap the lowest's)" in lb for lb in _legend(fig))
    plt.close(fig)


def test_layer_thresholds_tell_groups_apart_and_keep_the_legend_off_the_lines():
    rows = [("relu-s1", "scale,seeds", 23712, 16.0), ("relu-s4", "scale", 188992, 16.0),
            ("relu-s1-seed1", "seeds", 23712, 16.0), ("relu-wd32", "width_depth", 94528, 32.0),
            ("relu-wd3.6", "width_depth", 106592, 3.56), ("relu-wd12", "width_depth", 106416, 12.0)]
    table = pd.DataFrame([{"run": r, "groups": g, "activation": "relu", "non_embedding_params": n,
                           "width_depth": wd, "n_layers": 2, "p": 1.0, "tokens": 1000, "taus": "0.5;0.6",
                           "layer_ratios": "0.2;0.18"} for r, g, n, wd in rows])
    fig = plots.layer_thresholds(table)
    a1, a2 = fig.axes
    style = {ln.get_label().split(" ")[0]: (ln.get_linestyle(), ln.get_marker(), ln.get_color()) for ln in a2.lines}
    assert {style[r][:2] for r in ("relu-s1", "relu-s4")} == {("-", "o")}  # relu-s1 seeds the replicas: scale
    assert style["relu-s1-seed1"][:2] == (":", "^")
    assert {style[r][:2] for r in ("relu-wd32", "relu-wd3.6", "relu-wd12")} == {("--", "s")}
    assert len({style[r][2] for r in ("relu-wd32", "relu-wd3.6", "relu-wd12")}) == 3  # shaded apart by d/L
    assert a2.get_legend() is None and a1.get_legend() is None and len(fig.legends) == 1
    labels = _legend(fig)
    assert [lb for lb in labels if lb.startswith("relu-wd")] == [
        "relu-wd3.6 (d/L 3.56, L=2)", "relu-wd12 (d/L 12, L=2)", "relu-wd32 (d/L 32, L=2)"]
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert not any(legend.overlaps(ax.get_window_extent()) for ax in (a1, a2))
    plt.close(fig)


def test_claims_figure_wraps_a_long_headline_instead_of_cutting_it():
    from sparsinglaw import claims

    long = ("A0: slope below 0.00387 [-0.00015, 0.0062] per unit of d_model/n_layers (above it flat), "
            "bottleneck 13.4")
    df = pd.DataFrame([{"id": "width_depth_linear", "value": long + "; n = 5", "verdict": "INCONCLUSIVE"},
                       {"id": "relu_falls", "value": "short; x", "verdict": "PASS"}])
    fig = claims.figure(df)
    texts = [t.get_text() for t in fig.axes[0].texts]
    wrapped = next(t for t in texts if t.startswith("A0:"))
    assert " ".join(wrapped.split("\n")) == long  # all of it, nothing cut
    assert "..." not in wrapped and 2 <= len(wrapped.split("\n")) and max(map(len, wrapped.split("\n"))) <= 70
    short = claims.figure(df.assign(value="short; x"))
    assert fig.get_size_inches()[1] > short.get_size_inches()[1]  # the figure grows with the wrapped lines
    plt.close("all")


def test_token_pair_tick_labels_never_run_together():
    runs_ = [f"relu-s{i}" for i in range(1, 5)]
    rng = np.random.default_rng(0)
    tokens = pd.DataFrame([{"run": r, "token_id": i, "activation_ratio": 0.12 + 0.16 * rng.random()}
                           for r in runs_ for i in range(200)])
    pairs = pd.DataFrame([{"activation": "relu", "run_a": a, "run_b": b, "pearson": 0.5, "pearson_lo": 0.4,
                           "pearson_hi": 0.6, "spearman": 0.5, "n_tokens": 200}
                          for j, a in enumerate(runs_) for b in runs_[j + 1:]])
    fig = plots.token_pairs(tokens, pairs)
    fig.canvas.draw()
    for ax in (a for a in fig.axes if a.get_visible()):
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            lo, hi = (ax.get_xlim() if labels is ax.get_xticklabels() else ax.get_ylim())
            shown = [t for t in labels if t.get_text()]
            boxes = [t.get_window_extent() for t in shown]
            assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), \
                [t.get_text() for t in shown]
    plt.close(fig)


def test_the_sparse_inference_figure_is_filed_as_an_analog_of_table_1():
    """Notebook 06 measures held-out perplexity, not the paper's downstream tasks: its MANIFEST rows say
    "Table 1 (analog)", in the notebook and in the committed manifests."""
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    nb = json.loads((repo / "notebooks" / "06_sparse_inference.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert 'paper="Table 1 (analog)"' in code and 'paper="Table 1"' not in code
    for manifest in sorted((repo / "figures").glob("*/MANIFEST.csv")):
        rows = pd.read_csv(manifest)
        assert set(rows.loc[rows["file"].str.startswith("06_sparse_inference"), "paper"]) <= {"Table 1 (analog)"}, \
            manifest


# -----------------------------------------------------------------------------------------------
# what each figure draws, read back from its artists and checked against the data it was given


def _line(ax, label: str):
    found = [ln for ln in ax.lines if ln.get_label() == label]
    assert len(found) == 1, [ln.get_label() for ln in ax.lines]
    return found[0]


def _xy(line) -> tuple[list[float], list[float]]:
    return list(np.asarray(line.get_xdata(), float)), list(np.asarray(line.get_ydata(), float))


def _hollow(ax) -> list:
    return [ln for ln in ax.lines if ln.get_marker() == "o" and ln.get_markerfacecolor() == "none"]


def _errorbar(ax, label: str):
    """(x, y, [y_lo, y_hi of the first point, y_lo, y_hi of the second, ...]) of the errorbar labelled `label`."""
    c = next(c for c in ax.containers if c.get_label() == label)
    x, y = _xy(c.lines[0])
    bars = [v for seg in c.lines[2][0].get_segments() for v in (seg[0][1], seg[1][1])] if c.lines[2] else []
    return x, y, bars


def test_run_grid_places_each_run_at_its_ratio_and_size():
    states = pd.DataFrame({"run": ["relu-s1", "relu-s4", "silu-moe4", "relu-s5", "relu-wd9"],
                           "activation": ["relu", "relu", "silu", "relu", "relu"],
                           "n_experts": [0, 0, 4, 0, 0], "width_depth": [16.0, 16.0, 16.0, 16.0, 9.0],
                           "non_embedding_params": [23712, 188992, 190016, 207000, 190000]})
    fig = plots.run_grid(states)
    ax = fig.axes[0]
    for coll in ax.collections:
        mine = states[states["activation"].where(states["n_experts"] == 0, states["activation"] + " MoE")
                      == coll.get_label()]
        assert np.asarray(coll.get_offsets()).tolist() == mine[["width_depth", "non_embedding_params"]].values.tolist()
    assert sorted(c.get_label() for c in ax.collections) == ["relu", "silu MoE"]
    # s5 is 10% larger than s4: another shape; moe4 within 3% of s4: the same
    assert sorted(t.get_text() for t in ax.texts) == ["moe4/s4", "s1", "s5", "wd9"]
    assert ax.get_legend().get_title().get_text() == "5 runs"
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
    plt.close(fig)


def test_loss_curves_put_validation_dots_at_their_tokens_and_name_the_usual_log_interval(monkeypatch, tiny_profile):
    log = _train_log([("relu-s1", "scale", 23712, 16.0)])
    last = log[log["split"] == "train"].iloc[[-1]].assign(step=210, tokens=4096 * 210, loss=4.55)  # a short last gap
    log = pd.concat([log, last], ignore_index=True)
    monkeypatch.setattr(plots, "train_log_table", lambda *a, **k: log)
    fig = plots.loss_curves_for(tiny_profile, "scale", compute=False)
    dots = [ln for ln in fig.axes[0].lines if ln.get_marker() == "o" and ln.get_linestyle() == "None"]
    val = log[log["split"] == "val"]
    assert len(dots) == 1 and _xy(dots[0]) == (pytest.approx(list(val["tokens"] / 1e6)), list(val["loss"]))
    assert "mean over each 20 steps" in fig._suptitle.get_text()  # the usual gap, not the short last one
    plt.close(fig)


def test_pareto_curves_draw_the_dense_level_and_the_ppl_p_points():
    pts = _pareto_points().assign(sparse_loss=4.1, ppl_ratio=1.0)
    fig = plots.pareto_curves(pts)
    ax = fig.axes[0]
    assert _xy(_line(ax, "dense"))[1] == pytest.approx([math.exp(4.0)] * 2)
    assert _xy(_line(ax, "PPL-1%")) == ([0.45], [pytest.approx(55.55)])
    assert _line(ax, "PPL-1%").get_marker() == "*"
    assert _xy(_line(ax, "PPL-p% (CETT swept)")) == ([0.2, 0.3, 0.6], [70.0, 60.0, 56.0])  # by activation ratio
    plt.close(fig)


def test_moe_vs_dense_draws_the_moes_perplexity_and_rings_the_trained_k(tiny_profile):
    from sparsinglaw import measure

    pts = _pareto_points()
    fig = plots.moe_vs_dense(pts, measure.moe_comparison(pts, tiny_profile))
    ax = fig.axes[0]
    moe = next(ln for ln in ax.lines if ln.get_label().startswith("silu-moe4: MoE"))
    assert _xy(moe) == ([0.25, 0.5, 0.75, 1.0], [80.0, 62.0, 61.0, 61.5])
    rings = [ln for ln in _hollow(ax) if ln.get_markersize() == 9 and len(ln.get_xdata())]
    assert "ringed: the MoE as trained (its k)" in _legend(ax)  # the rings explained
    assert len(rings) == 1 and _xy(rings[0]) == ([0.5], [62.0])  # k = 2 of 4
    plt.close(fig)


def test_cett_sweep_draws_the_ppl_ratio_and_the_activation_ratio_against_c():
    df = pd.DataFrame({"run": "silu-s2", "activation": "silu", "method": ["cett", "cett", "cett", "topk"],
                       "param": [0.4, 0.05, 0.2, 8], "ppl_ratio": [1.2, 1.005, 1.05, 3.0],
                       "activation_ratio": [0.2, 0.6, 0.3, 0.1], "ppl": [60.0, 50.2, 52.5, 150.0]})
    fig = plots.cett_sweep(df)
    a1, a2 = fig.axes
    assert _xy(_line(a1, "silu-s2")) == ([0.05, 0.2, 0.4], [1.005, 1.05, 1.2])
    assert _xy(_line(a2, "silu-s2")) == ([0.05, 0.2, 0.4], [0.6, 0.3, 0.2])
    assert a1.get_yscale() == "log"
    assert _xy(_line(a1, "dotted: PPL-1% (ratio 1.01)"))[1] == [1.01, 1.01]  # the PPL-1% target, said in the legend
    assert a1.yaxis.get_minor_formatter()(1.1) == "1.1"  # not 1.1 x 10^0
    plt.close(fig)


def test_layer_thresholds_draw_the_final_checkpoint_layer_by_layer():
    rows = [(1.0, 1000, "0.1;0.2", "0.3;0.35"), (1.0, 2000, "0.5;0.7", "0.2;0.18"), (10.0, 3000, "9;9", "0.01;0.01")]
    table = pd.DataFrame([{"run": "relu-s1", "groups": "scale", "activation": "relu", "non_embedding_params": 23712,
                           "width_depth": 16.0, "n_layers": 2, "p": p, "tokens": t, "taus": taus, "layer_ratios": r}
                          for p, t, taus, r in rows])
    fig = plots.layer_thresholds(table)
    a1, a2 = fig.axes
    assert _xy(_line(a1, "relu-s1 (L=2)")) == ([1.0, 2.0], [0.5, 0.7])
    assert _xy(_line(a2, "relu-s1 (L=2)")) == ([1.0, 2.0], [0.2, 0.18])
    assert a1.get_yscale() == "log"
    plt.close(fig)


def _law_inputs():
    """relu-s1 (converged; its first point dropped, fitted from D = 0.002 on) and relu-s2 (no fit, as CSV
    text), at p = 1 and p = 10."""
    tokens = [1e6, 2e6, 3e6, 4e6]
    table = pd.DataFrame([{"run": run, "groups": "scale", "activation": "relu", "p": p, "tokens": t,
                           "activation_ratio": a + d + (0.5 if p == 10 else 0), "non_embedding_params": n}
                          for run, n, d in (("relu-s1", 1000, 0.0), ("relu-s2", 2000, 0.01)) for p in (1.0, 10.0)
                          for t, a in zip(tokens, (0.4, 0.3, 0.25, 0.22), strict=True)])
    fits = pd.DataFrame([{"run": "relu-s1", "converged": "True", "dropped_tokens": "1000000", "D_min_used": 0.002,
                          "A0": 0.2, "activation": "relu", "form": "logspace_power"},
                         {"run": "relu-s2", "converged": "False", "dropped_tokens": "", "D_min_used": 0.001,
                          "A0": 0.15, "activation": "relu", "form": "logspace_power"}])
    D = [0.001, 0.002, 0.003, 0.004]  # the fit's unit: 1e9 tokens
    curves = pd.DataFrame([{"run": run, "D": d, "A_fit": a, "A_lo": a - 0.01, "A_hi": a + 0.01}
                           for run in ("relu-s1", "relu-s2") for d, a in zip(D, (0.4, 0.3, 0.26, 0.23), strict=True)])
    return table, fits, curves


def test_the_fitted_curve_starts_at_the_first_fitted_point_between_grid_points():
    """The law's grid starts at the first checkpoint; a fit that drops early points starts between two grid
    points, and the curve starts there (interpolated in log D), not at the next grid point after it."""
    table, fits, curves = _law_inputs()
    fits.loc[fits["run"] == "relu-s1", "D_min_used"] = 0.0025
    fig = plots.activation_laws(table, fits, curves)
    ax = fig.axes[0]
    law = next(ln for ln in ax.lines if ln.get_linestyle() == "-" and len(ln.get_xdata()) > 1)
    w = math.log(1.25) / math.log(1.5)  # 0.0025 between the grid's 0.002 and 0.003, in log D
    xs, ys = _xy(law)
    assert xs == pytest.approx([2.5, 3.0, 4.0]) and ys == pytest.approx([0.3 + w * (0.26 - 0.3), 0.26, 0.23])
    v = ax.collections[0].get_paths()[0].vertices  # the band starts there too
    assert v[:, 0].min() == pytest.approx(2.5)
    plt.close(fig)


def test_activation_laws_draw_the_used_points_and_the_fit_over_its_range():
    fig = plots.activation_laws(*_law_inputs())
    ax = fig.axes[0]
    assert _legend(ax) == ["relu-s1 (1k)", "relu-s2 (2k), no fit", "hollow: dropped before fitting (fit.drop_*)",
                           "dotted: the fitted limit $A_0$"]  # what the marks mean, in the figure
    assert [_line(ax, r).get_marker() for r in ("relu-s1 (1k)", "relu-s2 (2k), no fit")] == ["o", "s"]  # one a run
    assert _xy(_line(ax, "relu-s1 (1k)")) == ([2.0, 3.0, 4.0], [0.3, 0.25, 0.22])  # p = 1 only, millions of tokens
    assert [_xy(ln) for ln in _hollow(ax) if len(ln.get_xdata())] == [([1.0], [0.4])]  # relu-s1's dropped point
    fit = [ln for ln in ax.lines if ln.get_marker() == "None" and ln.get_linestyle() == "-"]
    assert len(fit) == 1 and _xy(fit[0]) == ([2.0, 3.0, 4.0], [0.3, 0.26, 0.23])  # relu-s2: no fit, no curve
    band = ax.collections[0].get_paths()[0].vertices[:, 0]
    assert len(ax.collections) == 1 and (band.min(), band.max()) == (2.0, 4.0)
    assert [_xy(ln)[1] for ln in ax.lines if ln.get_linestyle() == ":" and len(ln.get_xdata())] == [[0.2, 0.2]]
    plt.close(fig)


def test_form_comparison_hatches_the_papers_form_and_crosses_unconverged_fits():
    rows = [("relu-s1", "logspace_power", 1e-5, True, True), ("relu-s1", "log", math.nan, False, False),
            ("silu-s1", "logspace_power", 2e-5, True, False), ("silu-s1", "log", 3e-5, False, False)]
    fig = plots.form_comparison(pd.DataFrame(rows, columns=["run", "form", "mse", "converged", "paper_form"]))
    ax = fig.axes[0]
    assert [[bool(b.get_hatch()) for b in c] for c in ax.containers] == [[True, False], [False, False]]
    assert [b.get_height() for b in ax.containers[0]] == [1e-5, 2e-5]
    crosses = [ln for ln in ax.lines if ln.get_marker() == "x"]
    assert len(crosses) == 1 and _xy(crosses[0]) == ([pytest.approx(1.2)], [pytest.approx(3e-5 * 1.3)])  # silu-s1, log
    assert ax.get_yscale() == "log"
    plt.close(fig)


def test_dead_neurons_draw_dead_ratios_and_relus_exact_non_zeros_largest_run_darkest():
    from matplotlib.colors import to_rgb

    tokens = [1e6, 2e6]
    runs_ = [("relu-s1", "relu", 1000, [0.01, 0.02], [0.5, 0.4]), ("relu-s2", "relu", 4000, [0.03, 0.05], [0.45, 0.35]),
             ("silu-s1", "silu", 1000, [0.0, 0.0], [math.nan, math.nan])]
    table = pd.DataFrame([{"run": r, "groups": "scale", "activation": act, "p": 1.0, "tokens": t, "dead_ratio": d,
                           "nonzero_ratio": nz, "activation_ratio": 0.2, "non_embedding_params": n}
                          for r, act, n, dead, nonzero in runs_
                          for t, d, nz in zip(tokens, dead, nonzero, strict=True)])
    fig = plots.dead_neurons(table)
    a1, a2 = fig.axes
    for r, _, _, dead, _ in runs_:
        assert _xy(_line(a1, r)) == ([1.0, 2.0], dead)
    assert sorted(ln.get_label() for ln in a2.lines if not ln.get_label().startswith("_")) == [
        "relu-s1 exact non-zeros", "relu-s2 exact non-zeros"]  # SiLU has no exact zeros
    assert _xy(_line(a2, "relu-s1 exact non-zeros")) == ([1.0, 2.0], [0.5, 0.4])
    dashed = [ln for ln in a2.lines if ln.get_linestyle() == "--"]
    assert [_xy(ln) for ln in dashed] == [([1.0, 2.0], [0.2, 0.2])] * 2
    big, small = (np.array(to_rgb(_line(a1, r).get_color())) for r in ("relu-s2", "relu-s1"))
    assert big.tolist() == pytest.approx(list(to_rgb(plots.color("relu"))))  # the largest: the activation's colour
    assert (small >= big).all() and small.sum() > big.sum()  # smaller: lighter
    plt.close(fig)


def test_width_depth_activation_draws_converged_limits_and_a_fit_flat_above_the_bottleneck():
    points = pd.DataFrame({"width_depth": [4.0, 16.0, 64.0], "converged": [True, True, False],
                           "A0": [0.14, 0.26, 1e-12], "A0_lo": [0.12, 0.22, math.nan], "A0_hi": [0.15, 0.3, math.nan],
                           "A_last": [0.15, 0.27, 0.3]})
    summary = pd.DataFrame([{"quantity": "A0", "kind": "piecewise_linear", "breakpoint": 20.0, "breakpoint_lo": 10.0,
                             "breakpoint_hi": 30.0, "slope_below": 0.01, "intercept": 0.1, "inside": True}])
    fig = plots.width_depth_activation(points, summary)
    ax = fig.axes[0]
    x, y, bars = _errorbar(ax, "fitted limit $A_0$")
    assert (x, y) == ([4.0, 16.0], [0.14, 0.26]) and bars == pytest.approx([0.12, 0.15, 0.22, 0.3])
    assert _xy(_line(ax, "last checkpoint")) == ([4.0, 16.0, 64.0], [0.15, 0.27, 0.3])
    xs, ys = _xy(_line(ax, "piecewise fit (A0), bottleneck 20"))
    xs = np.array(xs)
    assert (xs.min(), xs.max()) == (4.0, 64.0)
    assert ys == pytest.approx(list(np.where(xs < 20, 0.1 + 0.01 * xs, 0.3)))  # rising, then flat at 0.3
    assert [_xy(ln)[0] for ln in ax.lines if ln.get_linestyle() == "--"] == [[20.0, 20.0]]
    span = ax.patches[0]
    assert len(ax.patches) == 1 and (span.get_x(), span.get_x() + span.get_width()) == (10.0, 30.0)
    plt.close(fig)
    # a breakpoint whose interval reaches the candidates' edge (as CSV text) is no bottleneck: the label says so
    fig = plots.width_depth_activation(points, summary.assign(inside="False"))
    assert "piecewise fit (A0), breakpoint 20\n(candidates' edge: no bottleneck)" in _legend(fig.axes[0])
    plt.close(fig)
    # every candidate inside the interval: the data do not place the breakpoint, and the label says so
    unplaced = f"the interval is the whole candidate range (10 to 30): {laws.UNPLACED}"
    fig = plots.width_depth_activation(points, summary.assign(inside="False", message=unplaced))
    assert "piecewise fit (A0), breakpoint not placed\n(any of 10-30 fits)" in _legend(fig.axes[0])
    assert not [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--"]  # no breakpoint drawn as if found
    assert len(fig.axes[0].patches) == 1  # the interval, every candidate, stays shaded
    plt.close(fig)


def test_width_depth_loss_shades_each_best_range_where_it_is_and_compares_with_the_lowest_e():
    points = pd.DataFrame({"width_depth": [4.0, 16.0, 64.0], "loss_converged": True, "E": [2.8, 3.0, 3.3],
                           "E_lo": [2.0, 2.9, 3.2], "E_hi": [3.6, 3.1, 3.5], "final_loss": [4.3, 4.2, 4.25]})
    summary = pd.DataFrame([
        {"quantity": "E", "kind": "best_range", "best_lo": 4.0, "best_hi": 16.0,
         "message": "within 10% of the lowest E"},
        {"quantity": "final_loss", "kind": "best_range", "best_lo": 4.0, "best_hi": 16.0,
         "message": "within 1% of the lowest final_loss"}])
    fig = plots.width_depth_loss(points, summary)
    ax = fig.axes[0]
    # the lowest E is wd4's, whose interval every other one overlaps (wd64's does not overlap wd16's)
    assert "E within 10% of the lowest: 4-16\n(point estimates; every E interval overlaps the lowest's)" in _legend(fig)
    assert [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches] == [(4.0, 16.0), (4.0, 16.0)]
    plt.close(fig)


def test_a0_vs_scale_draws_converged_limits_and_the_a0_line_in_log10_n():
    points = pd.DataFrame({"activation": ["relu", "relu", "relu", "silu"], "non_embedding_params": [2e4, 5e4, 2e5, 2e4],
                           "converged": [True, True, False, False], "A0": [0.2, 0.21, 1e-12, 1e-12],
                           "A0_lo": [0.18, 0.2, math.nan, math.nan], "A0_hi": [0.22, 0.23, math.nan, math.nan],
                           "A_last": [0.19, 0.2, 0.22, 0.4]})
    summary = pd.DataFrame([
        {"activation": "relu", "quantity": "A_last", "n": 3, "slope": 0.5, "slope_lo": 0.4, "slope_hi": 0.6,
         "intercept": 0.0, "N_min": 2e4, "N_max": 2e5},
        {"activation": "relu", "quantity": "A0", "n": 2, "slope": 0.01, "slope_lo": 0.005, "slope_hi": 0.015,
         "intercept": 0.15, "N_min": 2e4, "N_max": 5e4},
        {"activation": "silu", "quantity": "A0", "n": 0, "slope": math.nan, "slope_lo": math.nan, "slope_hi": math.nan,
         "intercept": math.nan, "N_min": math.nan, "N_max": math.nan}])
    fig = plots.a0_vs_scale(points, summary)
    relu, silu = fig.axes
    x, y, _ = _errorbar(relu, "fitted limit $A_0$")
    assert (x, y) == ([20.0, 50.0], [0.2, 0.21])  # thousands of parameters; the unconverged 2e5 is hollow only
    assert _xy(_line(relu, "last checkpoint")) == ([20.0, 50.0, 200.0], [0.19, 0.2, 0.22])
    xs, ys = _xy(_line(relu, "slope +1.0 [+0.5, +1.5] points / decade of N"))
    assert (xs[0], xs[-1]) == pytest.approx((20.0, 50.0))
    assert ys == pytest.approx([0.15 + 0.01 * math.log10(1e3 * v) for v in xs])
    assert "no A0 line: 0 converged fit(s)" in _legend(silu)
    plt.close(fig)


@pytest.mark.parametrize("draw", ["a0_vs_scale", "width_depth_activation"])
def test_an_interval_that_runs_to_a_bound_of_a0_does_not_set_the_y_range(draw):
    """A bootstrap interval whose end is a bound of A0 (0 or 1: the resampled fits ran there) is no end: the
    y axis keeps to the estimates and the other ends, and a triangle at the axis edge marks the bar running
    off it, named once in the legend. Drawn to 0, the cpu figures used 11-24% of their height."""
    pts = pd.DataFrame({"activation": "relu", "non_embedding_params": [2e4, 5e4, 1e5], "converged": True,
                        "A0": [0.20, 0.18, 0.17], "A0_lo": [0.19, 3e-17, 0.16], "A0_hi": [0.21, 0.185, 0.9999999],
                        "A_last": [0.21, 0.19, 0.175], "width_depth": [4.0, 16.0, 64.0]})
    summ = pd.DataFrame(columns=["activation", "quantity", "n", "slope", "kind", "breakpoint", "best_lo", "best_hi"])
    fig = getattr(plots, draw)(pts, summ)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert 0.15 < lo < 0.16 and 0.21 < hi < 0.22  # the estimates, the finite ends and the hollow points
    x, y, _ = _errorbar(ax, "fitted limit $A_0$")
    assert y == [0.20, 0.18, 0.17]  # the bars are drawn whole, running off the axis
    x0 = 50.0 if draw == "a0_vs_scale" else 16.0
    x1 = 100.0 if draw == "a0_vs_scale" else 64.0
    marks = {ln.get_marker(): _xy(ln) for ln in ax.lines if ln.get_marker() in ("v", "^") and len(ln.get_xdata())}
    assert marks == {"v": ([x0], [lo]), "^": ([x1], [hi])}
    assert "interval runs to the bound 0 and 1" in _legend(ax)
    plt.close(fig)
    ok = pts.assign(A0_lo=[0.19, 0.17, 0.16], A0_hi=[0.21, 0.185, 0.18])  # no end at a bound: matplotlib's range
    fig = getattr(plots, draw)(ok, summ)
    assert not any("runs to the bound" in t for t in _legend(fig.axes[0]))
    plt.close(fig)


def test_convergence_speed_draws_each_laws_absolute_speed():
    curves, summary, _ = _speeds()
    fig = plots.convergence_speed(curves, summary)
    ax = fig.axes[0]
    for run, g in curves.groupby("run"):
        line = next(ln for ln in ax.lines if ln.get_label().startswith(f"{run} ("))
        assert _xy(line) == (list(g["data_scale_ratio"]), list(g["dA_dratio"].abs()))
    plt.close(fig)


def test_domain_distributions_are_density_histograms_from_zero_to_the_highest_frequency():
    freq = {"relu-s1": ([0.1, 0.2, 0.2, 0.5], [0.1, 0.1, 0.3, 0.4]),
            "relu-s2": ([0.05, 0.3, 0.6, 0.6], [0.2, 0.2, 0.5, 0.55]),
            "relu-s1-seed1": ([0.9, 0.95, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9])}
    neurons = pd.DataFrame([{"run": r, "step": 100, "layer": 0, "neuron": i, "all": a, "code": c}
                            for r, (alls, codes) in freq.items()
                            for i, (a, c) in enumerate(zip(alls, codes, strict=True))])
    table = pd.DataFrame({"run": list(freq), "groups": ["scale", "scale", "seeds"], "activation": "relu",
                          "non_embedding_params": [1000, 2000, 1000]})
    fig = plots.domain_distributions(neurons, table, bins=4)
    assert [ax.get_title() for ax in fig.axes] == ["relu, all", "relu, code"]
    edges = np.linspace(0, 0.6, 5)  # up to the highest frequency of the group's runs (the seed run is not drawn)
    for ax, d in zip(fig.axes, (0, 1), strict=True):
        assert len(ax.patches) == 2
        for patch, run in zip(ax.patches, ("relu-s1", "relu-s2"), strict=True):
            xy = patch.get_xy()
            want, _ = np.histogram(freq[run][d], edges, density=True)
            assert xy[0::2, 0] == pytest.approx(edges) and xy[1:-1:2, 1] == pytest.approx(want)
    plt.close(fig)


def test_a_domain_without_measured_tokens_is_an_empty_panel_that_says_so():
    """neurons.csv keeps an all-nan column for a domain with no measured validation token: its panel says
    so, with no histogram and no numpy warning (an empty density histogram divided by zero)."""
    neurons = pd.DataFrame([{"run": "relu-s1", "step": 100, "layer": 0, "neuron": i, "all": 0.1 * (i + 1),
                             "prose": np.nan} for i in range(4)])
    table = pd.DataFrame({"run": ["relu-s1"], "groups": ["scale"], "activation": "relu",
                          "non_embedding_params": [1000]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.domain_distributions(neurons, table, bins=4)
    full, empty = fig.axes
    assert len(full.patches) == 1 and not empty.patches
    assert [x.get_text() for x in empty.texts] == ["no validation token of this\ndomain was measured"]
    plt.close(fig)


def test_layer_distributions_draw_each_layer_at_its_relative_depth():
    summary = pd.DataFrame([{"run": "relu-s1", "activation": "relu", "non_embedding_params": 1000, "domain": dom,
                             "layer": layer, "median": m + (dom == "code"), "q10": m - 0.05, "q90": m + 0.1}
                            for dom in ("all", "code") for layer, m in ((-1, 0.2), (0, 0.25), (1, 0.15))])
    fig = plots.layer_distributions(summary)
    x, y, bars = _errorbar(fig.axes[0], "relu-s1 (L=2)")  # layer -1 is the whole model, not a layer
    assert (x, y) == ([0.25, 0.75], [0.25, 0.15]) and bars == pytest.approx([0.2, 0.35, 0.1, 0.25])
    plt.close(fig)


def test_token_pairs_plot_run_a_across_and_run_b_up():
    tokens = pd.DataFrame([{"run": r, "token_id": i, "activation_ratio": v}
                           for i in range(5) for r, v in (("relu-s1", 0.1 + 0.01 * i), ("relu-s2", 0.3 - 0.02 * i))])
    pairs = pd.DataFrame([{"activation": "relu", "run_a": "relu-s1", "run_b": "relu-s2", "pearson": -1.0,
                           "pearson_lo": -1.0, "pearson_hi": -1.0, "spearman": -1.0, "n_tokens": 5}])
    fig = plots.token_pairs(tokens, pairs)
    ax = fig.axes[0]
    dots = [ln for ln in ax.lines if ln.get_marker() == "."]
    assert len(dots) == 1 and _xy(dots[0]) == (pytest.approx([0.1, 0.11, 0.12, 0.13, 0.14]),
                                                pytest.approx([0.3, 0.28, 0.26, 0.24, 0.22]))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("relu-s1", "relu-s2")
    plt.close(fig)


def test_limit_loss_vs_scale_draws_only_converged_limits_as_fitted():
    points = pd.DataFrame({"activation": "relu", "non_embedding_params": [2e4, 5e4], "loss_converged": [True, False],
                           "E": [3.0, 2.5], "E_lo": [2.9, math.nan], "E_hi": [3.1, math.nan], "final_loss": [3.5, 3.2]})
    fig = plots.limit_loss_vs_scale(points)
    ax = fig.axes[0]
    x, y, bars = _errorbar(ax, "relu: fitted limit loss E")
    assert (x, y) == ([20.0], [3.0]) and bars == pytest.approx([2.9, 3.1])
    assert _xy(_line(ax, f"relu: {plots.LAST_LOSS}")) == ([20.0, 50.0], [3.5, 3.2])
    plt.close(fig)


def test_sparse_inference_draws_the_increase_in_percent_all_first():
    rows = [("code", 60, [(0.0, 0.38, 1.0), (1.0, 0.19, 1.012), (10.0, 0.09, 1.12)]),
            ("all", 100, [(0.0, 0.4, 1.0), (1.0, 0.2, 1.01), (10.0, 0.1, 1.1)])]
    df = pd.DataFrame([{"run": "relu-s1", "activation": "relu", "non_embedding_params": 1000, "domain": dom,
                        "n_tokens": n, "p": p, "activation_ratio": a, "ppl_ratio": r, "reached": True}
                       for dom, n, pts in rows for p, a, r in pts])
    fig = plots.sparse_inference(df)
    assert [ax.get_title() for ax in fig.axes] == ["all (100 held-out tokens)", "code (60 held-out tokens)"]
    for ax, (_, _, pts) in zip(fig.axes, reversed(rows), strict=True):
        assert _xy(_line(ax, "relu-s1")) == ([a for _, a, _ in pts], pytest.approx([100 * (r - 1) for *_, r in pts]))
        assert sorted(_xy(ln)[1][0] for ln in ax.lines if ln.get_linestyle() == ":") == [1.0, 10.0]  # no line at 0
        marks = {ln.get_xdata()[0]: ln for ln in ax.lines if ln.get_marker() in ("o", "s", "D")}
        assert [marks[a].get_markerfacecolor() == "none" for _, a, _ in pts] == [True, False, False]  # dense: hollow
    plt.close(fig)


# -----------------------------------------------------------------------------------------------
# what each figure draws beyond its data: scales, filled/hollow markers, quoted paper values, save()


def _is_hollow(line) -> bool:
    return line.get_marker() not in (None, "None", "") and line.get_markerfacecolor() == "none"


def _is_filled(line) -> bool:
    return line.get_marker() not in (None, "None", "") and line.get_markerfacecolor() != "none"


# --- run_grid draws MoE runs as hollow diamonds, dense runs filled -----------------------------

def test_run_grid_moe_runs_are_hollow_diamonds_dense_runs_is_filled():
    states = pd.DataFrame({"run": ["silu-s4", "silu-moe4"], "activation": ["silu", "silu"], "n_experts": [0, 4],
                           "width_depth": [16.0, 16.0], "non_embedding_params": [188992, 190016]})
    fig = plots.run_grid(states)
    coll = {c.get_label(): c for c in fig.axes[0].collections}
    silu = to_rgba("#D55E00")  # Okabe-Ito vermillion, by hand
    dense, moe = coll["silu"], coll["silu MoE"]
    assert dense.get_facecolor()[0].tolist() == pytest.approx(list(silu))
    fc = moe.get_facecolor()
    assert len(fc) == 0 or (fc[:, 3] == 0).all()  # hollow: no face
    assert moe.get_edgecolor()[0].tolist() == pytest.approx(list(silu))
    plt.close(fig)


# --- axis scales of the figures -----------------------------------------

def test_loss_curves_put_tokens_on_a_log_axis():
    log = _train_log([("relu-s1", "scale", 23712, 16.0)])
    info = log.drop_duplicates("run")[["run", "activation", "non_embedding_params", "width_depth"]]
    fig = plots.loss_curves({"relu-s1": log}, info)
    assert fig.axes[0].get_xscale() == "log"
    plt.close(fig)


def test_moe_vs_dense_puts_the_activation_ratio_on_a_log_axis(tiny_profile):
    from sparsinglaw import measure

    rows = [("silu-s2", "silu", "cett", c, 4.0, ppl, a) for c, ppl, a in ((0.05, 56.0, 0.6), (0.2, 60.0, 0.3))]
    rows += [("silu-moe4", "silu", "moe", k, 4.1, ppl, k / 4) for k, ppl in ((1, 80.0), (2, 62.0), (3, 61.0),
                                                                               (4, 61.5))]
    pts = pd.DataFrame(rows, columns=["run", "activation", "method", "param", "dense_loss", "ppl", "activation_ratio"])
    fig = plots.moe_vs_dense(pts, measure.moe_comparison(pts, tiny_profile))
    assert fig.axes[0].get_xscale() == "log"
    plt.close(fig)


def test_dead_neurons_put_tokens_on_log_axes():
    table = pd.DataFrame([{"run": "relu-s1", "groups": "scale", "activation": "relu", "p": 1.0, "tokens": t,
                           "dead_ratio": 0.01, "nonzero_ratio": 0.5, "activation_ratio": 0.2,
                           "non_embedding_params": 1000} for t in (1e6, 2e6)])
    fig = plots.dead_neurons(table)
    assert [ax.get_xscale() for ax in fig.axes] == ["log", "log"]
    plt.close(fig)


def test_width_depth_loss_puts_the_ratio_on_a_log_axis():
    points = pd.DataFrame({"width_depth": [4.0, 16.0, 64.0], "loss_converged": True, "E": [2.8, 3.0, 3.3],
                           "E_lo": [2.5, 2.7, 3.0], "E_hi": [3.1, 3.3, 3.6], "final_loss": [4.3, 4.2, 4.25]})
    fig = plots.width_depth_loss(points, pd.DataFrame(columns=["quantity", "kind", "best_lo", "best_hi"]))
    assert fig.axes[0].get_xscale() == "log"
    plt.close(fig)


def test_convergence_speed_y_axis_is_symlog_linear_below_1e_4_of_the_fastest():
    curves, summary, _ = _speeds()
    fig = plots.convergence_speed(curves, summary)
    ax = fig.axes[0]
    top = 5e-3 / 5.0  # fastest speed, by hand: relu-s4 at D/N = 5
    assert ax.get_yscale() == "symlog"
    assert ax.yaxis.get_transform().linthresh == pytest.approx(top * 1e-4)
    assert ax.get_ylim() == pytest.approx((0.0, 3 * top))
    assert ax.get_xscale() == "log"
    # the speeds at the common ratio: hollow rings
    rings = [ln for ln in ax.lines if len(ln.get_xdata()) == 1 and ln.get_xdata()[0] == 20.0]
    assert sorted(_xy(ln)[1][0] for ln in rings) == pytest.approx([0.0, 5e-6, 2.5e-4])
    assert all(_is_hollow(ln) for ln in rings)
    plt.close(fig)


# --- pareto_curves draws exact zeros and caps the y axis at 1.3x the dense PPL -----------

def test_pareto_curves_draw_exact_zeros_and_cap_the_axis_at_1_3_dense():
    rows = [("relu-s1", "relu", "cett", c, 4.0, ppl, a) for c, ppl, a in ((0.05, 56.0, 0.6), (0.2, 60.0, 0.3))]
    rows += [("relu-s1", "relu", "topk", 8, 4.0, 500.0, 0.05), ("relu-s1", "relu", "zeros", 0, 4.0, 54.6, 0.42)]
    pts = pd.DataFrame(rows, columns=["run", "activation", "method", "param", "dense_loss", "ppl", "activation_ratio"])
    fig = plots.pareto_curves(pts)
    ax = fig.axes[0]
    z = _line(ax, "exact zeros (ReLU-like)")
    assert _xy(z) == ([0.42], [54.6]) and z.get_marker() == "x"
    assert ax.get_ylim()[1] == pytest.approx(1.3 * math.exp(4.0))  # 70.98: the top-k point at 500 is cut off
    assert ax.get_title() == "relu-s1 (relu); 1 point above PPL 71, off the axis"  # and the title says so
    plt.close(fig)


# --- activation_laws band limits and shading by size ------------------------------------

def test_activation_laws_band_spans_a_lo_to_a_hi_at_each_d():
    fig = plots.activation_laws(*_law_inputs())
    v = fig.axes[0].collections[0].get_paths()[0].vertices
    for x, lo, hi in ((2.0, 0.29, 0.31), (3.0, 0.25, 0.27), (4.0, 0.22, 0.24)):  # A_fit -+ 0.01, D >= 0.002
        ys = v[np.isclose(v[:, 0], x), 1]
        assert (ys.min(), ys.max()) == pytest.approx((lo, hi)), x
    plt.close(fig)


def test_activation_laws_shade_the_largest_run_darkest():
    fig = plots.activation_laws(*_law_inputs())
    ax = fig.axes[0]
    rgb = np.array([0x00, 0x72, 0xB2]) / 255  # relu's colour, by hand
    big = to_rgb(_line(ax, "relu-s2 (2k), no fit").get_color())
    small = to_rgb(_line(ax, "relu-s1 (1k)").get_color())
    assert list(big) == pytest.approx(list(rgb))
    assert list(small) == pytest.approx(list(rgb + (1 - rgb) * 0.6))  # the smaller of 2: mixed 60% with white
    plt.close(fig)
    mixes = [(np.array(plots._shade("relu", i, 6)) - rgb) / (1 - rgb) for i in range(6)]  # six: evenly spaced
    assert [m[1] for m in mixes] == pytest.approx([0.6, 0.48, 0.36, 0.24, 0.12, 0.0])


# --- the paper's values as quoted above the panels ----------------------------------

def test_the_paper_values_are_quoted_as_the_paper_gives_them():
    from sparsinglaw import paper

    wd = pd.DataFrame({"width_depth": [4.0, 16.0], "converged": True, "A0": [0.1, 0.2], "A0_lo": [0.05, 0.15],
                       "A0_hi": [0.15, 0.25], "A_last": [0.12, 0.22], "loss_converged": True, "E": [3.0, 2.9],
                       "E_lo": [2.8, 2.7], "E_hi": [3.2, 3.1], "final_loss": [4.0, 3.9]})
    empty = pd.DataFrame(columns=["kind", "quantity", "breakpoint", "best_lo", "best_hi"])
    fig = plots.width_depth_activation(wd, empty, paper.WIDTH_DEPTH)
    # Fig. 5, Sec. 4.3
    assert fig.axes[0].get_title(loc="left") == "paper (0.1B): bottleneck ~114, limit activation ratio ~0.08 above it"
    plt.close(fig)
    fig = plots.width_depth_loss(wd, empty, paper.WIDTH_DEPTH)
    assert fig.axes[0].get_title(loc="left") == "paper (0.1B): best range 74-282"  # Fig. 6
    plt.close(fig)
    pts = pd.DataFrame({"activation": ["relu", "silu"], "non_embedding_params": [2e4, 2e4], "converged": False,
                        "A0": math.nan, "A0_lo": math.nan, "A0_hi": math.nan, "A_last": [0.2, 0.4]})
    summ = pd.DataFrame(columns=["activation", "quantity", "n", "slope"])
    fig = plots.a0_vs_scale(pts, summ, paper.A0_SCALE_CHANGE)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["relu; paper 0.1B->1.2B: +1.7 points",
                                                             "silu; paper 0.1B->1.2B: -2.7 points"]  # Fig. 7
    plt.close(fig)


# --- fitted limits filled, last-checkpoint values hollow ----------------------------------

def test_last_checkpoint_values_are_hollow_fitted_limits_is_filled():
    pts = pd.DataFrame({"activation": "relu", "non_embedding_params": [2e4, 5e4], "converged": True,
                        "A0": [0.2, 0.21], "A0_lo": [0.18, 0.2], "A0_hi": [0.22, 0.23], "A_last": [0.19, 0.2],
                        "loss_converged": True, "E": [3.0, 2.9], "E_lo": [2.9, 2.8], "E_hi": [3.1, 3.0],
                        "final_loss": [3.5, 3.2], "width_depth": [4.0, 16.0]})
    summ = pd.DataFrame(columns=["activation", "quantity", "n", "slope", "kind", "breakpoint", "best_lo", "best_hi"])

    def fitted(ax, label):
        return next(c for c in ax.containers if c.get_label() == label).lines[0]

    fig = plots.a0_vs_scale(pts, summ)
    ax = fig.axes[0]
    assert _is_hollow(_line(ax, "last checkpoint")) and _is_filled(fitted(ax, "fitted limit $A_0$"))
    plt.close(fig)
    fig = plots.limit_loss_vs_scale(pts)
    ax = fig.axes[0]
    assert _is_hollow(_line(ax, f"relu: {plots.LAST_LOSS}")) and _is_filled(fitted(ax, "relu: fitted limit loss E"))
    plt.close(fig)
    for draw, label, last in ((plots.width_depth_activation, "fitted limit $A_0$", "last checkpoint"),
                              (plots.width_depth_loss, "fitted limit loss $E$", plots.LAST_LOSS)):
        fig = draw(pts, summ)
        ax = fig.axes[0]
        assert _is_hollow(_line(ax, last)) and _is_filled(fitted(ax, label))
        plt.close(fig)


# --- sparse_inference marker legend and x range ------------------------------------

def test_sparse_inference_marker_legend_and_activation_ratio_range():
    df = pd.DataFrame([{"run": "relu-s1", "activation": "relu", "non_embedding_params": 1000, "domain": "all",
                        "n_tokens": 100, "p": p, "activation_ratio": a, "ppl_ratio": r, "reached": True}
                       for p, a, r in ((0.0, 0.4, 1.0), (1.0, 0.2, 1.01), (10.0, 0.1, 1.1))])
    fig = plots.sparse_inference(df)
    ax = fig.axes[-1]
    lg = ax.get_legend()
    got = [(t.get_text(), h.get_marker(), h.get_markerfacecolor() == "none")
           for t, h in zip(lg.get_texts(), lg.legend_handles, strict=True)]
    assert got == [("dense", "o", True), ("PPL-1%", "s", False), ("PPL-10%", "D", False),
                   ("dotted: the p% targets", "None", False)]  # the targets' lines explained
    assert fig.axes[0].get_xlim() == pytest.approx((0.0, 1.02))  # activation ratios on one fixed scale
    plt.close(fig)


# --- save() -----------------------------------------------------------------------

def test_save_records_paper_and_notebook_and_strips_timestamps(tmp_path, monkeypatch, tiny_profile):
    monkeypatch.setenv("SPARSINGLAW_FIGURES", str(tmp_path))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    assert plots.save(fig, "99_fig", tiny_profile, paper="Fig. 99", notebook="99_test") == ["99_fig.png", "99_fig.pdf"]
    out = tmp_path / tiny_profile.name
    with open(out / "MANIFEST.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["paper"], r["notebook"], r["profile"]) for r in rows] == [
        ("99_fig.pdf", "Fig. 99", "99_test", tiny_profile.name), ("99_fig.png", "Fig. 99", "99_test",
                                                                  tiny_profile.name)]
    pdf, png = (out / "99_fig.pdf").read_bytes(), (out / "99_fig.png").read_bytes()
    assert b"/CreationDate" not in pdf and b"/ModDate" not in pdf and b"/Producer" not in pdf
    assert b"Software" not in png
    plt.close(fig)


def test_save_leaves_a_panel_that_says_why_it_is_empty_alone(tmp_path, monkeypatch, tiny_profile):
    monkeypatch.setenv("SPARSINGLAW_FIGURES", str(tmp_path))
    fig = plots.cett_sweep(pd.DataFrame(columns=["run", "activation", "method", "param"]))
    plots.save(fig, "99_cett", tiny_profile, paper="none", notebook="test")
    assert fig.texts == []  # no "nothing to draw" laid over the panels' own reason
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == [
        "no CETT sweep: no dense run\namong sparsity.pareto_runs"] * 2
    plt.close(fig)


def test_a_run_in_scale_and_width_depth_is_drawn_as_width_depth():
    """_group_of: width_depth, else scale, else seeds, else the first group, whatever the order listed."""
    assert plots._group_of("scale,width_depth") == plots._group_of("width_depth,scale") == "width_depth"
    assert plots._group_of("seeds,scale") == "scale" and plots._group_of("seeds") == "seeds"
    assert plots._group_of("moe") == "moe" and plots._group_of(float("nan")) == ""
