"""Figures with nothing to draw say so, instead of showing bare axes (e.g. the seed-replica figure of a
profile without seed replicas, or the convergence speed when no law fit converged)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from sparsinglaw import plots


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]


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
