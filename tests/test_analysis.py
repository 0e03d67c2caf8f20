"""analysis.py on synthetic tables shaped like results/<profile>/{sparsity,neurons,tokens}.csv, drawn from
known laws (seeded, deterministic): parameters, breakpoint, slope and correlations are recovered, fit
tables carry the spec and the dropped points, and too few checkpoints give a clear non-converged row.

Data: 16 checkpoints log-spaced over D = 0.01-100 (1e9 tokens), Gaussian noise sd 0.002 in activation
ratio (the regime of test_laws.py, where 95% intervals were checked to cover the truth in 90-97% of
seeds); n_boot is small here to keep the file fast.
"""

import dataclasses
import re
import shutil
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import REPO
from sparsinglaw import analysis, claims, laws

SD = 0.002
TOKENS = np.geomspace(1e7, 1e11, 16).round()
RELU = {"alpha": 0.5, "b": -1.5, "c": 0.5, "A0": 0.07}
RELU_P2 = {"alpha": 0.5, "b": -1.2, "c": 0.4, "A0": 0.045}  # PPL-2%: a sparser law, rows of the same run
SILU = {"alpha": 0.5, "c": 0.02, "A0": 0.42}
SPEC = laws.FitSpec(n_boot=100, seed=0)


def run_rows(name, activation, params, groups="scale", d_model=32, n_layers=2, N=50_000, tokens=TOKENS, seed=0,
             loss=(3.0, 1.0, 0.3), p=1.0):
    """Rows of a sparsity.csv for one run whose activation ratio at PPL-p% follows the paper's law with
    `params` and whose dense loss follows E + B D^-beta (loss = (E, B, beta))."""
    rng = np.random.default_rng(seed)
    D = tokens / 1e9
    A = laws.FORMS[analysis.FORM[activation]].f(D, **params) + rng.normal(0, SD, D.size)
    E, B, beta = loss
    return pd.DataFrame({
        "run": name, "activation": activation, "groups": groups, "d_model": d_model, "n_layers": n_layers,
        "width_depth": d_model / n_layers, "non_embedding_params": N, "step": np.arange(D.size) + 1,
        "tokens": tokens.astype(int), "p": p, "cett": 0.2,
        "dense_loss": E + B * D**-beta + rng.normal(0, 1e-3, D.size),
        "sparse_loss": 0.0, "ppl_ratio": 1.01, "activation_ratio": A, "layer_ratios": "", "taus": "",
        "nonzero_ratio": A + 0.3 if activation == "relu" else np.nan,
        "dead_ratio": np.linspace(0.1, 0.05, D.size), "searched": False, "n_tokens": 4096,
    })


@pytest.fixture(scope="module")
def table():
    return pd.concat([
        run_rows("relu-s1", "relu", RELU_P2, seed=4, p=2.0),  # the same run at PPL-2%: never in a p = 1 fit
        run_rows("relu-s1", "relu", RELU, seed=1),
        run_rows("silu-s1", "silu", SILU, seed=2),
        run_rows("relu-short", "relu", RELU, seed=3, tokens=TOKENS[:3]),  # too few checkpoints for Eq. 4
    ], ignore_index=True)


@pytest.fixture(scope="module")
def fitted(table):
    return analysis.fit_activation_laws(table, SPEC)


# ----------------------------------------------------------------------------- activation laws


def test_activation_laws_recover_known_parameters(fitted):
    fits, curves = fitted
    for run, truth, form in (("relu-s1", RELU, "logspace_power"), ("silu-s1", SILU, "power")):
        r = fits.set_index("run").loc[run]
        assert r["form"] == form and r["converged"], r["message"]
        for s, v in truth.items():
            assert r[f"{s}_lo"] <= v <= r[f"{s}_hi"], (run, s, v, r[s], r[f"{s}_lo"], r[f"{s}_hi"])
        assert SD**2 / 4 < r["mse"] < 2 * SD**2  # RSS / n, about SD^2 (n - k) / n
        assert np.isfinite(r["holdout_mae"]) and r["holdout_mae"] < 5 * SD
    rho = fits.set_index("run")["rho_tokens"]
    assert rho["relu-s1"] < 0 < rho["silu-s1"]  # ReLU falls, SiLU rises
    c = curves[curves["run"] == "relu-s1"]
    assert len(c) == 64 and np.all(c["A_lo"] <= c["A_fit"] + 1e-12) and np.all(c["A_fit"] <= c["A_hi"] + 1e-12)
    assert set(curves["run"]) == {"relu-s1", "silu-s1"}  # no curve for a run that was not fitted


def test_fits_use_only_the_rows_at_the_requested_p(table, fitted):
    """relu-s1 also has PPL-2% rows (another law): its p = 1 fit is the fit of its p = 1 rows alone, and
    p = 2 fits the other rows."""
    r = fitted[0].set_index("run").loc["relu-s1"]
    p1 = table[(table["run"] == "relu-s1") & (table["p"] == 1.0)]
    alone = laws.fit("logspace_power", p1["tokens"] / 1e9, p1["activation_ratio"], SPEC)
    assert r["p"] == 1.0 and r["n_points"] == r["n_used"] == len(TOKENS)
    assert (r["A_first"], r["A_last"]) == tuple(p1["activation_ratio"].iloc[[0, -1]])
    assert r["A0"] == alone.params["A0"] and (r["A0_lo"], r["A0_hi"]) == alone.intervals["A0"]
    assert r["mse"] == pytest.approx(alone.mse, rel=1e-12)
    fits2, _ = analysis.fit_activation_laws(table[table["run"] == "relu-s1"], dataclasses.replace(SPEC, n_boot=0),
                                            p=2.0)
    r2 = fits2.iloc[0]
    assert r2["p"] == 2.0 and r2["n_points"] == len(TOKENS) and r2["converged"], r2["message"]
    assert r2["A0"] == pytest.approx(RELU_P2["A0"], abs=0.01)  # the PPL-2% law, not the p = 1 one (0.07)
    with pytest.raises(ValueError, match=r"no rows at p=5"):
        analysis.activation_points(table, 5.0)


def test_too_few_checkpoints_give_a_clear_non_converged_row(fitted):
    fits, _ = fitted
    r = fits.set_index("run").loc["relu-short"]
    assert not r["converged"] and r["n_points"] == 3
    assert "not fitted" in r["message"] and "at least 5 points" in r["message"]
    assert np.isnan(r["A0"]) and np.isnan(r["A0_lo"])


def test_a_profile_whose_runs_cannot_be_fitted_still_has_every_column(table):
    """Only too-short runs (as in a shrunk profile): the fits table has the columns notebooks 03-04 show."""
    fits, curves = analysis.fit_activation_laws(table[table["run"] == "relu-short"], SPEC)
    cols = ["run", "form", "converged", "n_used", "n_dropped", "mse", "holdout_mae", "rho_tokens", "message",
            "A0", "A0_lo", "A0_hi", "A_last"]
    assert len(fits[cols]) == 1 and not fits["converged"].iloc[0] and np.isnan(fits["holdout_mae"].iloc[0])
    assert curves.empty and list(curves.columns) == ["run", "D", "A_fit", "A_lo", "A_hi"]


def test_a_run_whose_ppl_p_target_was_not_reached_is_not_fitted(table):
    """A run whose search reached no c with PPL ratio 1 + p% (reached = False, as read back from CSV)
    has no PPL-p% activation ratios: its law fit and form comparison are rows that say so, never
    curves; the other runs are fitted as before."""
    import io

    t = table.assign(reached=np.where(table["run"] == "silu-s1", False, True))
    t = pd.read_csv(io.StringIO(t.to_csv(index=False)))
    fits, curves = analysis.fit_activation_laws(t, SPEC)
    r = fits.set_index("run").loc["silu-s1"]
    assert not r["converged"] and "PPL-1% target was not reached" in r["message"] and np.isnan(r["A0"])
    assert np.isnan(r["rho_tokens"])  # its ratios are not PPL-1%: no trend either
    assert set(curves["run"]) == {"relu-s1"} and fits.set_index("run").loc["relu-s1", "converged"]
    c = analysis.form_comparison(t, SPEC)
    silu = c[c["run"] == "silu-s1"]
    assert len(silu) == len(analysis.ALTERNATIVES) and not silu["converged"].any()
    assert silu["message"].str.contains("not reached").all()
    assert c[c["run"] == "relu-s1"]["converged"].any()


def test_fit_rows_carry_the_spec_and_the_dropped_points(table):
    spec = dataclasses.replace(SPEC, n_boot=0, drop_first_n=2)
    silu = table[table["run"] == "silu-s1"].copy()
    silu.iloc[:2, silu.columns.get_loc("activation_ratio")] = [0.60, 0.55]  # a warmup falling from above the rest
    fits, _ = analysis.fit_activation_laws(silu, spec)
    r = fits.iloc[0]
    assert r["n_dropped"] == 2 and r["n_used"] == len(TOKENS) - 2
    # the trend of the points the law used, not of the dropped warmup (which pulls rho down)
    used = stats.spearmanr(silu["tokens"].iloc[2:], silu["activation_ratio"].iloc[2:]).statistic
    assert r["rho_tokens"] == pytest.approx(used, abs=1e-12)
    assert used - stats.spearmanr(silu["tokens"], silu["activation_ratio"]).statistic > 0.2
    assert r["dropped_index"] == "0;1"
    assert r["dropped_tokens"] == f"{int(TOKENS[0])};{int(TOKENS[1])}"
    assert r["D_min_used"] == pytest.approx(TOKENS[2] / 1e9)
    for k, v in dataclasses.asdict(spec).items():
        assert r[f"spec_{k}"] == v, k


def test_form_comparison_prefers_the_true_form(table):
    comp = analysis.form_comparison(table[table["run"] != "relu-short"], dataclasses.replace(SPEC, n_boot=0))
    assert set(comp["form"]) == set(analysis.ALTERNATIVES)
    for run, form in (("relu-s1", "logspace_power"), ("silu-s1", "power")):
        c = comp[comp["run"] == run].set_index("form")
        assert c.loc[form, "paper_form"] and c["paper_form"].sum() == 1
        # the generating form has the lowest AIC and AICc, every other form is clearly behind (> 10)
        for crit in ("aic", "aicc"):
            assert c[f"delta_{crit}"].to_numpy() == pytest.approx((c[crit] - c[crit].min()).to_numpy())
            assert c.loc[form, f"delta_{crit}"] == 0
            assert (c[f"delta_{crit}"].drop(index=form) > 10).all(), c[f"delta_{crit}"]
        assert c.loc[form, "mse"] <= c["mse"].min() * 1.05  # the generating form fits (about) best
    short = analysis.form_comparison(table[table["run"] == "relu-short"], dataclasses.replace(SPEC, n_boot=0))
    assert not short["converged"].any() and short["message"].str.startswith("not fitted").all()


def test_form_comparison_carries_form_nulls_test_on_the_paper_forms_row(table):
    """null_p and null_n, on which law_forms' FAIL rests, and alt_form, alt_p and alt_n, on which its PASS
    rests, are laws.form_null's on the run's own points (FORM_NULL_SIMS or n_boot sets, whichever is fewer);
    the other forms' rows have none."""
    spec = dataclasses.replace(SPEC, n_boot=12)
    for run, act in (("relu-s1", "relu"), ("silu-s1", "silu")):
        sub = table[table["run"] == run]
        c = analysis.form_comparison(sub, spec).set_index("form")
        pts = analysis.activation_points(sub)
        paper = analysis.form_for(act)
        want = laws.form_null(pts["D"].to_numpy(), pts["activation_ratio"].to_numpy(), paper,
                              tuple(f for f in analysis.ALTERNATIVES if f != paper), spec, 12)
        assert want["n_ok"] > 0 and np.isfinite(want["p"])
        assert (c.loc[paper, "null_p"], c.loc[paper, "null_n"]) == (want["p"], want["n_ok"]), run
        assert want["n_alt"] > 0 and np.isfinite(want["p_alt"]) and want["alt"] in analysis.ALTERNATIVES
        assert (c.loc[paper, "alt_form"], c.loc[paper, "alt_p"], c.loc[paper, "alt_n"]) == (
            want["alt"], want["p_alt"], want["n_alt"]), run
        rest = c.drop(index=paper)
        assert rest["null_p"].isna().all() and (rest["null_n"] == 0).all()
        assert rest["alt_p"].isna().all() and (rest["alt_n"] == 0).all() and (rest["alt_form"] == "").all()


def test_activation_points_sort_each_run_by_tokens(table):
    """Rows in any order (a remeasured run appended, a hand-merged table): each run's points come back
    sorted by tokens, runs in the order they first appear, with D in 1e9 tokens and D/N in tokens per
    parameter; the first and last measured ratios, and the trend of a run too short to fit, follow."""
    shuffled = table.sample(frac=1, random_state=0)
    pts = analysis.activation_points(shuffled)
    assert list(dict.fromkeys(pts["run"])) == list(dict.fromkeys(shuffled.loc[shuffled["p"] == 1.0, "run"]))
    for run, g in pts.groupby("run", sort=False):
        assert g["tokens"].is_monotonic_increasing and len(g) == ((table["run"] == run) & (table["p"] == 1.0)).sum()
    assert np.array_equal(pts["D"], pts["tokens"] / 1e9)
    assert np.array_equal(pts["data_scale_ratio"], pts["tokens"] / pts["non_embedding_params"])
    fits, _ = analysis.fit_activation_laws(shuffled[shuffled["run"] == "relu-short"], SPEC)
    short = table[(table["run"] == "relu-short")]
    assert (fits["A_first"].iloc[0], fits["A_last"].iloc[0]) == tuple(short["activation_ratio"].iloc[[0, -1]])
    # not fitted (3 points): rho over all its points
    assert fits["rho_tokens"].iloc[0] == stats.spearmanr(short["tokens"], short["activation_ratio"]).statistic


def test_a_rising_law_keeps_its_last_measured_ratio(fitted, table):
    """A_first and A_last are the first and last checkpoints' ratios, not the extremes (a SiLU ratio rises:
    its last is no minimum)."""
    r = fitted[0].set_index("run").loc["silu-s1"]
    silu = table[table["run"] == "silu-s1"]["activation_ratio"]
    assert (r["A_first"], r["A_last"]) == (silu.iloc[0], silu.iloc[-1]) and silu.iloc[-1] > silu.min()


def test_curves_span_the_measured_range_on_a_log_grid_and_only_for_converged_fits(table):
    """With a warmup dropped, the curve still covers every measured D (log-spaced, the fitted law at
    each D); a ReLU run whose ratio rises gets a non-converged Eq. 4 fit: a row, never a curve."""
    spec = dataclasses.replace(SPEC, n_boot=0, drop_first_n=2)
    silu = table[table["run"] == "silu-s1"].copy()
    silu.iloc[:2, silu.columns.get_loc("activation_ratio")] = [0.60, 0.55]
    rising = run_rows("relu-up", "relu", RELU, seed=5).assign(
        activation_ratio=lambda d: 0.3 + 0.05 * np.log(d["tokens"] / 1e9))
    fits, curves = analysis.fit_activation_laws(pd.concat([silu, rising]), spec, n_curve=32)
    row = fits.set_index("run").loc["silu-s1"]
    assert row["converged"] and row["n_dropped"] == 2, row["message"]
    c = curves[curves["run"] == "silu-s1"]
    assert np.allclose(c["D"], np.geomspace(TOKENS[0] / 1e9, TOKENS[-1] / 1e9, 32), rtol=1e-12)
    assert np.allclose(c["A_fit"], analysis.Law.from_row(row).predict(c["D"]), rtol=1e-12)
    assert not fits.set_index("run").loc["relu-up", "converged"] and set(curves["run"]) == {"silu-s1"}


def test_a_run_with_one_unreached_checkpoint_is_not_fitted(table):
    """One checkpoint whose PPL-1% search reached no target is enough: those ratios are not PPL-1%."""
    silu = table[table["run"] == "silu-s1"].assign(reached=True)
    silu.iloc[5, silu.columns.get_loc("reached")] = False
    fits, curves = analysis.fit_activation_laws(silu, dataclasses.replace(SPEC, n_boot=0))
    assert not fits["converged"].iloc[0] and analysis.UNREACHED in fits["message"].iloc[0] and curves.empty


# ----------------------------------------------------------------------------- width-depth, scale, losses


def synthetic_fits(x, A0, width=0.002, groups="width_depth", activation="relu", N=None):
    """A fits-like table (what fit_activation_laws returns) with given limits A0 at x (width-depth ratios)."""
    n = len(x)
    return pd.DataFrame({
        "run": [f"r{i}" for i in range(n)], "activation": activation, "groups": groups, "d_model": 64,
        "n_layers": 2, "width_depth": x, "non_embedding_params": N if N is not None else 1e5, "form": "logspace_power",
        "converged": True, "A0": A0, "A0_lo": A0 - width, "A0_hi": A0 + width, "A_first": A0 + 0.1, "A_last": A0 + 0.01,
    })


def synthetic_losses(fits, E):
    return pd.DataFrame({"run": fits["run"], "converged": True, "E": E, "E_lo": E - 0.01, "E_hi": E + 0.01,
                         "final_loss": E + 0.2})


def test_width_depth_finds_the_bottleneck_and_the_best_range():
    rng = np.random.default_rng(0)
    x = np.array([2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192.0])
    A0 = 0.01 + 0.002 * np.minimum(x, 40) + rng.normal(0, 0.001, x.size)  # bottleneck at 40
    E = 3.0 + 0.05 * (np.log(x) - np.log(64)) ** 2  # best at 64
    # one more run (x = 10) whose activation and loss fits did not converge, with outliers A0 = 0.5 and E = 2:
    # left out of the A0 and E summaries (its measured A_last and final_loss still count)
    fits = synthetic_fits(np.r_[x, 10.0], np.r_[A0, 0.5]).assign(converged=[True] * x.size + [False])
    losses = synthetic_losses(fits, np.r_[E, 2.0]).assign(converged=[True] * x.size + ["False"])  # as from a CSV
    pts, summary = analysis.width_depth(fits, losses)
    assert list(pts["width_depth"]) == sorted(np.r_[x, 10.0])
    assert summary.set_index("quantity")["n"].to_dict() == {"A0": 12, "A_last": 13, "E": 12, "final_loss": 13}
    pw = summary[summary["kind"] == "piecewise_linear"].set_index("quantity")
    r = pw.loc["A0"]
    alone = laws.fit_piecewise_linear(x, A0, "flat")  # the converged runs only
    assert (r["breakpoint"], r["slope_below"]) == pytest.approx((alone.breakpoint, alone.slope_below), rel=1e-12)
    assert r["breakpoint_lo"] <= 40 <= r["breakpoint_hi"] and r["breakpoint_hi"] - r["breakpoint_lo"] < 30
    assert r["slope_below"] == pytest.approx(0.002, rel=0.1) and r["slope_below_lo"] > 0
    br = summary[summary["kind"] == "best_range"].set_index("quantity").loc["E"]
    assert br["best_x"] == 64 and br["best_lo"] <= 64 <= br["best_hi"]
    assert br["tol"] == pytest.approx(0.01 * E.min())
    # within 1% (0.03) of the lowest E where |log(x / 64)| <= sqrt(0.6) = 0.775, i.e. x in [29.5, 139]
    assert (br["best_lo"], br["best_hi"]) == (32.0, 128.0)
    # another level reaches the breakpoint and slope intervals (and is recorded), not only the best ranges
    _, at80 = analysis.width_depth(fits, losses, level=0.8)
    r80, want = at80.set_index("quantity").loc["A0"], laws.fit_piecewise_linear(x, A0, "flat", 0.8)
    assert (r80["breakpoint_lo"], r80["breakpoint_hi"]) == pytest.approx(want.breakpoint_interval, rel=1e-12)
    assert (r80["slope_below_lo"], r80["slope_below_hi"]) == pytest.approx(want.slope_below_interval, rel=1e-12)
    assert r80["slope_below_hi"] - r80["slope_below_lo"] < r["slope_below_hi"] - r["slope_below_lo"]
    assert (at80["level"] == 0.8).all()


def test_width_depth_with_too_few_runs_says_so():
    fits = synthetic_fits(np.array([4.0, 16.0]), np.array([0.02, 0.03]))
    _, summary = analysis.width_depth(fits, synthetic_losses(fits, np.array([3.0, 3.1])))
    pw = summary[summary["kind"] == "piecewise_linear"]
    assert pw["breakpoint"].isna().all() and pw["message"].str.contains("needs at least 4 points").all()


def test_width_depth_uses_its_group_and_two_runs_give_a_best_range():
    """Only runs of group "width_depth" count (a scale run with a lower loss is not the best ratio);
    two runs are enough for a best range, one is not."""
    fits = pd.concat([synthetic_fits(np.array([8.0, 32.0]), np.array([0.02, 0.03])),
                      synthetic_fits(np.array([16.0]), np.array([0.5]), groups="scale").assign(run="s0")],
                     ignore_index=True)
    losses = synthetic_losses(fits, np.array([3.0, 3.1, 2.0]))
    pts, summary = analysis.width_depth(fits, losses)
    assert list(pts["run"]) == ["r0", "r1"]
    br = summary[summary["kind"] == "best_range"].set_index("quantity")
    assert br.loc["E", "n"] == 2 and (br.loc["E", "best_x"], br.loc["E", "best_loss"]) == (8.0, 3.0)
    assert (br.loc["E", "best_lo"], br.loc["E", "best_hi"]) == (8.0, 8.0)  # 3.1 is more than 1% above 3.0
    assert (br.loc["final_loss", "best_x"], br.loc["final_loss", "tol"]) == (8.0, pytest.approx(0.01 * 3.2))
    _, one = analysis.width_depth(fits.iloc[[0]], losses.iloc[[0]])
    one = one[one["kind"] == "best_range"]
    assert one["best_x"].isna().all() and one["message"].str.startswith("not computed: 1 run(s)").all()


def test_scale_recovers_the_slope_per_decade():
    N = np.array([2e4, 5e4, 1e5, 2e5, 5e5])
    A0 = 0.05 + 0.01 * np.log10(N) + np.random.default_rng(1).normal(0, 5e-4, N.size)
    # a sixth run (N = 3e5) whose activation and loss fits did not converge, with outliers A0 = 0.4 and E = 1:
    # left out of the A0 and E slopes (its measured A_last still counts)
    fits = synthetic_fits(np.full(N.size + 1, 16.0), np.r_[A0, 0.4], width=1e-3, groups="scale", N=np.r_[N, 3e5])
    fits["converged"] = [True] * N.size + [False]
    losses = synthetic_losses(fits, np.r_[4 - 0.2 * np.log10(N), 1.0]).assign(converged=[True] * N.size + [False])
    pts, summary = analysis.scale(fits, losses)
    assert len(pts) == 6 and summary.set_index("quantity")["n"].to_dict() == {"A0": 5, "A_last": 6, "E": 5}
    r = summary.set_index(["activation", "quantity"]).loc[("relu", "A0")]
    assert r["weighted"] and r["n"] == 5 and r["slope_lo"] <= 0.01 <= r["slope_hi"]
    # equal interval widths: the weighted and the plain fit have the OLS slope of the converged runs
    assert r["slope"] == pytest.approx(np.polyfit(np.log10(N), A0, 1)[0], rel=1e-9)
    assert r["change_fit"] == pytest.approx(0.01 * np.log10(25), abs=3e-3)
    e = summary.set_index(["activation", "quantity"]).loc[("relu", "E")]
    assert e["slope"] == pytest.approx(-0.2, abs=1e-6)
    relu, _ = claims.a0_scale_weak(summary)  # the table feeds its claim: 0.01 per decade is inside +-0.05
    assert relu["verdict"] == "PASS" and relu["value"].startswith(f"slope {r['slope']:.3g} [")


def test_scale_summary_is_plain_ols_at_the_level_without_usable_intervals():
    """Runs of group "scale" only, points sorted by N; with no A0 intervals (or one of zero width) the
    slope is plain OLS with its t interval at `level` (hand computation), N_min and N_max the range."""
    N = np.array([5e5, 2e4, 1e5, 5e4, 2e5])
    A0 = 0.05 + 0.01 * np.log10(N) + np.random.default_rng(2).normal(0, 5e-4, N.size)
    other = synthetic_fits(np.array([16.0]), np.array([0.9]), groups="width_depth", N=np.array([1e6])).assign(run="w0")
    level, x = 0.8, np.log10(N)
    slope, intercept = np.polyfit(x, A0, 1)
    se = np.sqrt(np.sum((A0 - intercept - slope * x) ** 2) / (N.size - 2) / np.sum((x - x.mean()) ** 2))
    half = stats.t.ppf(0.5 + level / 2, N.size - 2) * se
    for width in (np.nan, np.array([1e-3, 1e-3, 0.0, 1e-3, 1e-3])):
        fits = pd.concat([synthetic_fits(np.full(N.size, 16.0), A0, width=width, groups="scale", N=N), other],
                         ignore_index=True)
        pts, summary = analysis.scale(fits, synthetic_losses(fits, 4 - 0.2 * np.log10(fits["non_embedding_params"])),
                                      level=level)
        assert "w0" not in set(pts["run"]) and list(pts["non_embedding_params"]) == sorted(N)
        r = summary.set_index(["activation", "quantity"]).loc[("relu", "A0")]
        assert not r["weighted"] and r["method"] == "OLS" and r["level"] == level
        assert (r["slope"], r["slope_lo"], r["slope_hi"]) == pytest.approx((slope, slope - half, slope + half),
                                                                            rel=1e-9)
        assert (r["N_min"], r["N_max"], r["n"]) == (2e4, 5e5, 5)


def test_scale_without_enough_fitted_runs_says_how_many_have_a_fit():
    """"needs at least 3 scales, got 0" read as if the profile had no scales (three gelu sizes, none
    with a converged law): the message says how many of the runs have what the fit needs."""
    N = np.array([2e4, 5e4, 1e5, 2e5])
    fits = synthetic_fits(np.full(N.size, 16.0), np.full(N.size, 0.1), groups="scale", N=N)
    fits["converged"] = [True, True, False, False]
    _, summary = analysis.scale(fits, synthetic_losses(fits, 4.0))
    r = summary.set_index(["activation", "quantity"])
    assert r.loc[("relu", "A0"), "message"] == ("not fitted: fit_A0_vs_scale needs at least 3 scales, got 2 (2 of 4 "
                                                 "runs have a converged law fit)")
    assert r.loc[("relu", "A_last"), "message"] == ""  # every run has a measured ratio


def test_limit_loss_recovers_E(table):
    losses = analysis.limit_loss(table[table["run"] == "relu-s1"], dataclasses.replace(SPEC, n_boot=50))
    r = losses.iloc[0]
    assert r["converged"], r["message"]
    assert r["E_lo"] <= 3.0 <= r["E_hi"] and r["beta_lo"] <= 0.3 <= r["beta_hi"]
    assert r["final_loss"] == pytest.approx(3 + 100**-0.3, abs=5e-3)


def test_limit_loss_final_loss_is_the_last_checkpoint(table):
    """final_loss and final_tokens are those of the last checkpoint (rows in any order), even when an
    earlier checkpoint had a lower loss."""
    relu = table[(table["run"] == "relu-s1") & (table["p"] == 1.0)].copy()
    relu.iloc[-1, relu.columns.get_loc("dense_loss")] += 0.1  # the last loss is not the lowest
    r = analysis.limit_loss(relu.sample(frac=1, random_state=1), dataclasses.replace(SPEC, n_boot=0)).iloc[0]
    assert r["final_loss"] == relu["dense_loss"].iloc[-1] > relu["dense_loss"].min()
    assert r["final_tokens"] == int(TOKENS[-1]) and r["n_points"] == len(TOKENS)


def test_convergence_speed_is_the_derivative_and_ranks_sizes():
    # the same law in units of the data-scale ratio for three sizes: A(D) = f(D * 1e9 / N); then
    # dA/d(D/N) at a common ratio is the same, so make the smaller models' curves steeper
    rows = []
    for i, (N, c) in enumerate(((1e4, 2.0), (1e5, 1.0), (1e6, 0.5))):
        rows.append({"run": f"relu-{i}", "activation": "relu", "groups": "scale", "non_embedding_params": N,
                     "form": "power", "converged": True, "alpha": 0.5, "c": c * 0.01, "A0": 0.3,
                     "D_min_used": 0.01, "D_max": 10.0})
    fits = pd.DataFrame(rows)
    curves, summary = analysis.convergence(fits, n=16)
    one = curves[curves["run"] == "relu-1"]
    D = one["data_scale_ratio"] * 1e5 / 1e9
    exact = 0.5 * 0.01 * D**-1.5 * 1e5 / 1e9  # d/dD of -c D^-alpha, times dD/d(ratio) = N / 1e9
    assert np.allclose(one["dA_dratio"], exact, rtol=1e-6)
    ratio = summary["ratio_common"].iloc[0]
    assert 0.01 * 1e9 / 1e4 <= ratio <= 10 * 1e9 / 1e6  # inside every run's range
    assert ratio == pytest.approx(np.sqrt(1e3 * 1e4))  # the geometric middle of the shared range 1e3-1e4
    for (N, c), speed in zip(((1e4, 2.0), (1e5, 1.0), (1e6, 0.5)), summary["dA_dratio_common"], strict=True):
        D_at = ratio * N / 1e9  # the speed there is the same derivative, at each run's own D
        assert speed == pytest.approx(0.5 * c * 0.01 * D_at**-1.5 * N / 1e9, rel=1e-6)
    assert summary["rho_N_speed"].iloc[0] == pytest.approx(-1.0)
    relu = claims.small_converge_faster(summary)[0]  # right order, but 3 runs cannot reach p < 0.05
    assert relu["verdict"] == "INCONCLUSIVE"
    assert relu["value"].startswith("rho = -1.00 (point estimate: smaller models faster) over 3 runs, too few")
    assert "p = 0.167" in relu["value"]
    _, two = analysis.convergence(fits.iloc[:2], n=16)  # two converged fits: no rank correlation
    assert np.isnan(two["rho_N_speed"]).all() and claims.small_converge_faster(two)[0]["value"] == "2 run(s)"
    apart = fits.copy()
    apart.loc[2, ["D_min_used", "D_max"]] = [0.0005, 0.001]  # D/N 0.5-1 for N = 1e6: no range shared with the others
    _, apart_summary = analysis.convergence(apart, n=16)
    assert np.isnan(apart_summary["rho_N_speed"]).all()
    assert claims.small_converge_faster(apart_summary)[0]["verdict"] == "INCONCLUSIVE"


def test_convergence_ranks_sizes_by_the_size_of_a_falling_speed():
    """Eq. 4 laws fall, so every speed is negative: sizes are ranked by |speed| (rho(N, |speed|) = -1 when the
    smaller models fall faster; the signed speeds would give +1). A fit that did not converge is left out."""
    k, sizes = 0.01, ((1e4, -0.5), (1e5, -1.0), (1e6, -1.5))  # (N, b)
    # A(D) = exp(-k r^0.5 + b) + A0 with r = D * 1e9 / N: one law in D/N, scaled by exp(b), which falls with N
    rows = [{"run": f"relu-{i}", "activation": "relu", "groups": "scale", "non_embedding_params": N,
             "form": "logspace_power", "converged": True, "alpha": 0.5, "b": b, "c": k * (1e9 / N) ** 0.5, "A0": 0.1,
             "D_min_used": 0.01, "D_max": 10.0} for i, (N, b) in enumerate(sizes)]
    rows.append({**rows[0], "run": "relu-x", "non_embedding_params": 3e4, "converged": False, "b": 0.0, "c": 3.0})
    curves, summary = analysis.convergence(pd.DataFrame(rows), n=16)
    assert list(summary["run"]) == ["relu-0", "relu-1", "relu-2"] and set(curves["run"]) == set(summary["run"])
    r = np.sqrt(1e3 * 1e4)  # the shared D/N range is 1e3 (N = 1e4 from D = 0.01) to 1e4 (N = 1e6 up to D = 10)
    assert summary["ratio_common"].to_numpy() == pytest.approx(np.full(3, r))
    exact = np.array([-0.5 * k * r**-0.5 * np.exp(-k * r**0.5 + b) for _, b in sizes])  # dA/dr of the law above
    assert summary["dA_dratio_common"].to_numpy() == pytest.approx(exact, rel=1e-6) and (exact < 0).all()
    expected = stats.spearmanr([N for N, _ in sizes], np.abs(exact)).statistic
    assert expected == pytest.approx(-1.0) and summary["rho_N_speed"].to_numpy() == pytest.approx(np.full(3, expected))


def test_convergence_leaves_out_a_step_whose_slope_is_not_measured():
    """A converged Eq. 4 fit with alpha on its bound is a step between two checkpoints (laws.is_step): its
    limit may be measured, its slope is not (cpu relu-s1: alpha 10, dA/d(D/N) -6e-9 at D/N 5.8, and -7.9e-4
    when alpha <= 1, at twice the RSS, 7.9e-5). It gets no curve and no speed, does not narrow the
    common range, is named in the summary and in the claim's note; the other runs keep their speeds."""
    k, sizes = 0.01, ((1e4, -0.5), (1e5, -1.0), (1e6, -1.5), (3e6, -1.6))
    rows = [{"run": f"relu-{i}", "activation": "relu", "groups": "scale", "non_embedding_params": N,
             "form": "logspace_power", "converged": True, "alpha": 0.5, "b": b, "c": k * (1e9 / N) ** 0.5, "A0": 0.1,
             "D_min_used": 0.01, "D_max": 10.0} for i, (N, b) in enumerate(sizes)]
    step = {**rows[1], "run": "relu-step", "non_embedding_params": 2e5, "alpha": 10.0, "c": 1e20, "D_max": 1.0}
    curves, summary = analysis.convergence(pd.DataFrame([*rows, step]), n=16)
    _, without = analysis.convergence(pd.DataFrame(rows), n=16)
    assert "relu-step" not in set(curves["run"])
    s = summary.set_index("run")
    assert np.isnan(s.loc["relu-step", "dA_dratio_common"]) and "a step (alpha = 10" in s.loc["relu-step", "message"]
    kept = s.drop(index="relu-step")
    assert kept["dA_dratio_common"].to_numpy() == pytest.approx(without["dA_dratio_common"].to_numpy(), rel=1e-12)
    assert (s["ratio_common"] == without["ratio_common"].iloc[0]).all()  # D_max 1 would have narrowed the range
    assert (kept["message"] == "").all() and s.loc["relu-step", "rho_N_speed"] == without["rho_N_speed"].iloc[0]
    row = claims.small_converge_faster(summary)[0]
    assert row["n"] == 4 and "left out, fits whose slope is not measured (a step, laws.is_step, or a transient whose " \
        "alpha and c are not identified): relu-step" in row["note"]
    assert laws.is_step("logspace_power", step) and not laws.is_step("logspace_power", {**step, "alpha": 9.99})
    assert laws.is_step("logspace_power", {**step, "alpha": "9.999999999999998"})  # as a CSV can give it back
    with warnings.catch_warnings():  # a table without steps reads its message column back as NaN floats
        warnings.simplefilter("error")
        quiet = claims.small_converge_faster(without.assign(message=np.nan))[0]
    assert "steps" not in quiet["note"]
    assert not laws.is_step("power", {"alpha": 10.0, "c": 1.0, "A0": 0.3})  # Eq. 5's alpha <= 10 is a hard bound


def test_convergence_leaves_out_a_fit_whose_transient_is_not_identified():
    """A converged Eq. 4 fit whose alpha and c the data cannot separate (`unidentified`; cpu relu-wd12:
    alpha 9.12, just short of its bound, c 1.5e34, flat after its second checkpoint) has no measured slope
    either: a speed of 0 there would rank it slowest. Left out as a step is, named in its message."""
    k, sizes = 0.01, ((1e4, -0.5), (1e5, -1.0), (1e6, -1.5), (3e6, -1.6))
    rows = [{"run": f"relu-{i}", "activation": "relu", "groups": "scale", "non_embedding_params": N,
             "form": "logspace_power", "converged": True, "alpha": 0.5, "b": b, "c": k * (1e9 / N) ** 0.5, "A0": 0.1,
             "D_min_used": 0.01, "D_max": 10.0, "unidentified": np.nan} for i, (N, b) in enumerate(sizes)]
    loose = {**rows[1], "run": "relu-loose", "non_embedding_params": 2e5, "alpha": 9.12, "c": 1.5e34,
             "unidentified": "alpha;c"}
    D = np.geomspace(loose["D_min_used"], loose["D_max"], 5)
    flat = analysis.Law.from_row(pd.Series(loose)).predict(D)
    assert np.ptp(flat) == 0  # its fitted curve: flat over the range, a slope of 0 if it were kept
    _, summary = analysis.convergence(pd.DataFrame([*rows, loose]), n=16)
    _, without = analysis.convergence(pd.DataFrame(rows), n=16)
    s = summary.set_index("run")
    assert np.isnan(s.loc["relu-loose", "dA_dratio_common"])
    assert "its transient is not identified (alpha and c not separately identified: alpha = 9.12" in \
        s.loc["relu-loose", "message"]
    assert s.drop(index="relu-loose")["dA_dratio_common"].to_numpy() == pytest.approx(
        without["dA_dratio_common"].to_numpy(), rel=1e-12)
    assert "relu-loose" in claims.small_converge_faster(summary)[0]["note"]


def test_convergence_common_ratio_uses_the_fitted_range_of_the_scale_runs():
    """The shared D/N range starts at each run's first *used* point (D_min_used, after a dropped warmup,
    not D_min), and only runs of group "scale" take part (a width-depth run does not narrow it)."""
    rows = [{"run": f"relu-{i}", "activation": "relu", "groups": "scale", "non_embedding_params": N,
             "form": "power", "converged": True, "alpha": 0.5, "c": 0.01, "A0": 0.3, "D_min": 0.001,
             "D_min_used": 0.01, "D_max": 10.0} for i, N in enumerate((1e4, 1e5, 1e6))]
    rows.append({**rows[0], "run": "relu-wd", "groups": "width_depth", "non_embedding_params": 1e7})
    curves, summary = analysis.convergence(pd.DataFrame(rows), n=8)
    assert list(summary["run"]) == ["relu-0", "relu-1", "relu-2"] and "relu-wd" not in set(curves["run"])
    assert summary["ratio_common"].to_numpy() == pytest.approx(np.full(3, np.sqrt(1e3 * 1e4)), rel=1e-12)
    one = curves[curves["run"] == "relu-0"]
    assert one["data_scale_ratio"].to_numpy() == pytest.approx(np.geomspace(0.01, 10, 8) * 1e9 / 1e4, rel=1e-12)


# ----------------------------------------------------------------------------- patterns, dead neurons


def test_token_pairs_recovers_the_correlation():
    rng = np.random.default_rng(0)
    n, r_true = 2000, 0.8
    a = rng.normal(0, 1, n)
    b = r_true * a + np.sqrt(1 - r_true**2) * rng.normal(0, 1, n)
    tokens = pd.concat([pd.DataFrame({"run": run, "token_id": np.arange(n), "count": 5, "activation_ratio": v})
                        for run, v in (("relu-s1", 0.1 + 0.01 * a), ("relu-s2", 0.1 + 0.01 * b))])
    info = pd.concat([run_rows(r, "relu", RELU, N=N, tokens=TOKENS[:1])
                      for r, N in (("relu-s2", 2e5), ("relu-s1", 1e5))])
    corr = analysis.token_pairs(tokens, info)
    r = corr.iloc[0]
    assert (r["run_a"], r["run_b"]) == ("relu-s1", "relu-s2")  # smaller model first
    assert r["n_tokens"] == n and r["pearson_lo"] <= r_true <= r["pearson_hi"]
    assert r["spearman"] == pytest.approx(r_true, abs=0.05)
    assert analysis.token_pairs(tokens, info, min_count=6)["n_tokens"].iloc[0] == 0


def test_domain_distributions_summary_and_agreement():
    rng = np.random.default_rng(0)
    frames = []
    for run in ("relu-s1", "relu-s2"):
        L, F = 2, 500
        layer, neuron = np.divmod(np.arange(L * F), F)
        frames.append(pd.DataFrame({"run": run, "step": 10, "layer": layer, "neuron": neuron,
                                    "all": rng.beta(1, 10, L * F), "code": rng.beta(1, 10, L * F),
                                    "prose": rng.beta(1, 10, L * F)}))
    neurons = pd.concat(frames, ignore_index=True)
    info = pd.concat([run_rows(r, "relu", RELU, N=N, tokens=TOKENS[:1])
                      for r, N in (("relu-s1", 1e5), ("relu-s2", 2e5))])
    summary, agreement = analysis.domain_distributions(neurons, info)
    assert analysis.domains(neurons) == ["all", "code", "prose"]
    assert len(summary) == 2 * 3 * (1 + 2)  # runs x domains x (all layers + each layer)
    whole = summary[(summary["layer"] == -1) & (summary["domain"] == "all")]
    assert whole["n_neurons"].tolist() == [1000, 1000] and np.allclose(whole["mean"], 1 / 11, atol=0.01)
    for r in summary[summary["layer"] >= 0].itertuples():  # each layer's own neurons (oracle: numpy)
        v = neurons.loc[(neurons["run"] == r.run) & (neurons["layer"] == r.layer), r.domain].to_numpy()
        assert r.n_neurons == 500 and r.mean == pytest.approx(v.mean())
        assert (r.q10, r.median, r.q90) == pytest.approx(tuple(np.quantile(v, [0.1, 0.5, 0.9])))
    assert len(agreement) == 3 and (agreement["ks"] < 0.1).all()  # same distribution: small distances
    for r in agreement.itertuples():  # the distances between the two runs' columns (oracle: scipy directly)
        assert (r.run_a, r.run_b) == ("relu-s1", "relu-s2")  # smaller model first
        x, y = (neurons.loc[neurons["run"] == run, r.domain] for run in (r.run_a, r.run_b))
        assert r.ks == pytest.approx(stats.ks_2samp(x, y).statistic) and r.ks > 0
        assert r.wasserstein == pytest.approx(stats.wasserstein_distance(x, y))


def test_seed_agreement_compares_only_runs_of_one_shape():
    rng = np.random.default_rng(1)
    n, L, F = 1500, 2, 400
    base = rng.normal(0, 1, n)
    ratio = {"relu-s1": base, "relu-s1-seed1": base + 0.5 * rng.normal(0, 1, n),  # r = 1/sqrt(1.25)
             "relu-s1-seed2": rng.normal(0, 1, n), "relu-s2": base, "relu-s1-short": base}
    tokens = pd.concat([pd.DataFrame({"run": run, "token_id": np.arange(n), "count": 3,
                                      "activation_ratio": 0.2 + 0.01 * v}) for run, v in ratio.items()])
    layer, neuron = np.divmod(np.arange(L * F), F)
    freq = {"relu-s1": rng.beta(1, 10, L * F), "relu-s1-seed1": rng.beta(1, 10, L * F),
            "relu-s1-seed2": rng.beta(1, 3, L * F), "relu-s2": rng.beta(1, 10, L * F),
            "relu-s1-short": rng.beta(1, 10, L * F)}
    neurons = pd.concat([pd.DataFrame({"run": run, "step": 10, "layer": layer, "neuron": neuron, "all": f,
                                       "code": f, "prose": np.clip(f + 0.2 * (run == "relu-s1-seed2"), 0, 1)})
                         for run, f in freq.items()])
    info = pd.concat([run_rows("relu-s1", "relu", RELU, tokens=TOKENS[:1]),
                      run_rows("relu-s1-seed1", "relu", RELU, groups="seeds", tokens=TOKENS[:1]),
                      run_rows("relu-s1-seed2", "relu", RELU, groups="seeds", tokens=TOKENS[:1]),
                      run_rows("relu-s2", "relu", RELU, d_model=40, n_layers=3, N=100_000, tokens=TOKENS[:1]),
                      run_rows("relu-s1-short", "relu", RELU, tokens=TOKENS[:1] / 2)])  # relu-s1's shape, half the data
    seeds = analysis.seed_agreement(neurons, tokens, info)
    pairs = {frozenset((a, b)): r for a, b, r in zip(seeds["run_a"], seeds["run_b"], seeds.itertuples(), strict=True)}
    assert set(pairs) == {frozenset(p) for p in (("relu-s1", "relu-s1-seed1"), ("relu-s1", "relu-s1-seed2"),
                                                 ("relu-s1-seed1", "relu-s1-seed2"))}  # not relu-s2, relu-s1-short
    near = pairs[frozenset(("relu-s1", "relu-s1-seed1"))]
    assert near.pearson == pytest.approx(np.corrcoef(base, ratio["relu-s1-seed1"])[0, 1], abs=1e-9)
    assert near.pearson_lo <= 1 / np.sqrt(1.25) <= near.pearson_hi and near.n_tokens == n
    far = pairs[frozenset(("relu-s1", "relu-s1-seed2"))]
    ks_oracle = max(stats.ks_2samp(freq["relu-s1"], g).statistic
                    for g in (freq["relu-s1-seed2"], np.clip(freq["relu-s1-seed2"] + 0.2, 0, 1)))
    assert far.max_ks == pytest.approx(ks_oracle) and far.max_ks_domain == "prose"
    assert abs(far.pearson) < 0.1
    alone = analysis.seed_agreement(neurons, tokens, info[info["run"].isin(["relu-s1", "relu-s2"])])
    assert alone.empty and list(alone.columns) == list(seeds.columns)


def test_dead_neurons(table):
    dead = analysis.dead_neurons(table).set_index("run")
    assert dead.loc["relu-s1", "dead_ratio_first"] == pytest.approx(0.1)
    assert dead.loc["relu-s1", "dead_ratio_rho_tokens"] == pytest.approx(-1.0)
    assert np.isnan(dead.loc["silu-s1", "nonzero_ratio_first"])


def pair_tables(values, counts=None, groups=None):
    """tokens.csv rows (one per run and token id, activation ratios `values[run]`, counts 5 unless
    `counts[run]` says otherwise) and sparsity rows naming those runs (ReLU, N = 1e5, 2e5, ... in the
    order of `values`, group "scale" unless `groups[run]` says otherwise)."""
    n = len(next(iter(values.values())))
    tokens = pd.concat([pd.DataFrame({"run": run, "token_id": np.arange(n), "activation_ratio": v,
                                      "count": (counts or {}).get(run, 5)}) for run, v in values.items()])
    info = pd.concat([run_rows(run, "relu", RELU, N=1e5 * (i + 1),
                               groups=(groups or {}).get(run, "scale"), tokens=TOKENS[:1])
                      for i, run in enumerate(values)])
    return tokens, info


def test_token_pairs_interval_is_fishers_and_counts_are_inclusive():
    """Pearson's r with the Fisher-z interval at `level` (scipy's confidence_interval, the oracle) and
    Spearman's rho over the tokens seen at least min_count times by both runs; runs of other groups
    are not paired."""
    rng = np.random.default_rng(3)
    n = 40
    a = rng.normal(0, 1, n)
    b = 0.6 * a + 0.8 * rng.normal(0, 1, n)
    b[:3] = 5 + np.arange(3)  # outliers: Pearson and Spearman differ
    count_b = np.where(np.arange(n) % 4 == 0, 2, 3)  # a quarter seen twice: left out at min_count = 3
    tokens, info = pair_tables({"relu-s1": 0.1 + 0.01 * a, "relu-s2": 0.1 + 0.01 * b, "relu-w": 0.1 + 0.01 * a},
                               counts={"relu-s2": count_b}, groups={"relu-w": "width_depth"})
    keep = count_b >= 3
    for level in (0.95, 0.8):
        r = analysis.token_pairs(tokens, info, min_count=3, level=level)
        assert len(r) == 1 and tuple(r.iloc[0][["run_a", "run_b"]]) == ("relu-s1", "relu-s2")
        r = r.iloc[0]
        oracle = stats.pearsonr(a[keep], b[keep])
        lo, hi = oracle.confidence_interval(level)
        assert r["n_tokens"] == keep.sum() == 30
        assert (r["pearson"], r["pearson_lo"], r["pearson_hi"]) == pytest.approx((oracle.statistic, lo, hi), rel=1e-9)
        assert r["spearman"] == pytest.approx(stats.spearmanr(a[keep], b[keep]).statistic, rel=1e-12)
        assert abs(r["spearman"] - r["pearson"]) > 0.01


def test_token_pairs_need_four_shared_tokens():
    """Fisher's interval needs n > 3: four shared tokens give r with an interval, three give none."""
    v = np.array([0.1, 0.3, 0.2, 0.5])
    w = np.array([0.2, 0.25, 0.3, 0.4])
    tokens, info = pair_tables({"relu-s1": v, "relu-s2": w})
    r = analysis.token_pairs(tokens, info).iloc[0]
    lo, hi = stats.pearsonr(v, w).confidence_interval(0.95)
    assert r["n_tokens"] == 4 and (r["pearson_lo"], r["pearson_hi"]) == pytest.approx((lo, hi), rel=1e-9)
    three = analysis.token_pairs(tokens[tokens["token_id"] < 3], info).iloc[0]
    assert three["n_tokens"] == 3 and np.isnan(three[["pearson", "pearson_lo", "pearson_hi", "spearman"]]
                                               .to_numpy(float)).all()


@pytest.mark.parametrize("sign", [1, -1])
def test_token_pairs_of_perfectly_linear_ratios(sign):
    """r = +1 or -1 exactly: Fisher's z is infinite there, so the interval collapses onto r (scipy's own
    interval gives [r, r]); r = -1 raised a math domain error that stopped every pattern table."""
    v = np.array([0.1, 0.2, 0.3, 0.4, 0.6])
    tokens, info = pair_tables({"relu-s1": v, "relu-s2": 0.35 + sign * (v - 0.35)})
    r = analysis.token_pairs(tokens, info).iloc[0]
    oracle = stats.pearsonr(v, 0.35 + sign * (v - 0.35))
    assert oracle.statistic == sign and tuple(oracle.confidence_interval(0.95)) == (sign, sign)
    assert r["pearson"] == sign and r["spearman"] == pytest.approx(sign, abs=1e-12)
    assert (r["pearson_lo"], r["pearson_hi"]) == pytest.approx((sign, sign), abs=1e-9)


def test_seed_replicas_need_the_same_token_budget():
    """Same shape, same first checkpoint, but half the training tokens: not a seed replica of the full run."""
    rng = np.random.default_rng(4)
    n = 200
    tokens = pd.concat([pd.DataFrame({"run": run, "token_id": np.arange(n), "count": 3,
                                      "activation_ratio": 0.2 + 0.01 * rng.normal(0, 1, n)})
                        for run in ("relu-a", "relu-b", "relu-half")])
    neurons = pd.concat([pd.DataFrame({"run": run, "step": 10, "layer": 0, "neuron": np.arange(50),
                                       "all": rng.beta(1, 10, 50)}) for run in ("relu-a", "relu-b", "relu-half")])
    info = pd.concat([run_rows("relu-a", "relu", RELU), run_rows("relu-b", "relu", RELU, groups="seeds"),
                      run_rows("relu-half", "relu", RELU, tokens=TOKENS[:8])])
    seeds = analysis.seed_agreement(neurons, tokens, info)
    assert list(zip(seeds["run_a"], seeds["run_b"], strict=True)) == [("relu-a", "relu-b")]


def test_dead_neurons_first_last_and_trend_follow_the_checkpoints(table):
    """first and last are the first and last checkpoints' values (not the extremes) and rho is
    Spearman's against tokens (scipy, the oracle)."""
    relu = table[(table["run"] == "relu-s1") & (table["p"] == 1.0)].copy()
    dead = np.random.default_rng(5).uniform(0.02, 0.2, len(relu))
    relu["dead_ratio"] = dead
    r = analysis.dead_neurons(relu.sample(frac=1, random_state=2)).iloc[0]
    assert (r["dead_ratio_first"], r["dead_ratio_last"]) == (dead[0], dead[-1])
    assert dead[0] != dead.max() and dead[-1] != dead.min()
    assert r["dead_ratio_rho_tokens"] == pytest.approx(stats.spearmanr(relu["tokens"], dead).statistic, rel=1e-12)
    nz = relu["nonzero_ratio"].to_numpy()
    assert (r["nonzero_ratio_first"], r["nonzero_ratio_last"]) == (nz[0], nz[-1])


def test_domain_distributions_skip_missing_domains_and_other_groups():
    """A run measured without a domain (its column empty, as when runs saw different domain lists) has
    no neurons there and no distance for it; runs of another group are left out."""
    rng = np.random.default_rng(6)
    L, F = 2, 100
    layer, neuron = np.divmod(np.arange(L * F), F)
    freq = {run: rng.beta(1, 10, L * F) for run in ("relu-s1", "relu-s2", "relu-w")}
    neurons = pd.concat([pd.DataFrame({"run": run, "step": 10, "layer": layer, "neuron": neuron, "all": f,
                                       "code": np.nan if run == "relu-s2" else f}) for run, f in freq.items()],
                        ignore_index=True)
    info = pd.concat([run_rows("relu-s1", "relu", RELU, N=1e5, tokens=TOKENS[:1]),
                      run_rows("relu-s2", "relu", RELU, N=2e5, tokens=TOKENS[:1]),
                      run_rows("relu-w", "relu", RELU, N=3e5, groups="width_depth", tokens=TOKENS[:1])])
    summary, agreement = analysis.domain_distributions(neurons, info)
    assert set(summary["run"]) == {"relu-s1", "relu-s2"} and set(agreement["domain"]) == {"all"}
    code = summary[(summary["run"] == "relu-s2") & (summary["domain"] == "code")]
    assert (code["n_neurons"] == 0).all() and code["mean"].isna().all()
    r = agreement.iloc[0]
    assert (r["run_a"], r["run_b"]) == ("relu-s1", "relu-s2")
    assert r["ks"] == pytest.approx(stats.ks_2samp(freq["relu-s1"], freq["relu-s2"]).statistic, rel=1e-12)


def test_table2_puts_ours_next_to_the_papers(fitted):
    t = analysis.table2(fitted[0])
    assert {"ours", "paper (v1)", "paper (v4)"} <= set(t["source"])
    ours = t[t["source"] == "ours"].set_index("activation")
    assert "[" in ours.loc["silu", "A0"]  # value [lo, hi]
    assert ours.loc["silu", "b"] == "-"  # Eq. 5 has no b


def test_table2_names_runs_by_size_and_shows_only_its_group(fitted):
    wd = fitted[0].iloc[[0]].assign(run="relu-wd", groups="width_depth")
    ours = analysis.table2(pd.concat([fitted[0], wd]))
    ours = ours[ours["source"] == "ours"]
    assert list(ours["model"]) == ["relu-s1 (50k)", "relu-short (50k)", "silu-s1 (50k)"]  # N = 50,000


# ----------------------------------------------------------------------------- profile level: files and cache


def test_profile_tables_are_written_with_provenance_and_cached(table, isolated_roots, monkeypatch, capsys):
    from sparsinglaw import runs
    from sparsinglaw.config import load_profile

    P = dataclasses.replace(load_profile("smoke"), fit={"n_boot": 20, "seed": 0})
    folder = runs.results_dir(P.name)
    runs.write_table(table, folder / "sparsity.csv", {"profile": P.name})
    capsys.readouterr()
    fits, curves = analysis.activation_laws_for(P)
    err = capsys.readouterr().err  # a fit that takes minutes says what it computes, and how long it took
    assert "computing fits.csv, fit_curves.csv (missing or stale)" in err and "written in" in err
    assert (folder / "fits.csv").exists() and (folder / "fit_curves.csv").exists()
    meta = pd.read_json(folder / "fits.meta.json", typ="series")
    assert meta["fit_spec"]["n_boot"] == 20 and meta["analysis_version"] == analysis.ANALYSIS_VERSION
    assert set(fits["run"]) == set(table["run"])
    with monkeypatch.context() as m:  # undo only this patch (the autouse fixture's roots stay)
        m.setattr(analysis, "fit_activation_laws", lambda *a, **k: pytest.fail("recomputed a cached table"))
        again, _ = analysis.activation_laws_for(P)  # same inputs and spec: read back
    pd.testing.assert_frame_equal(fits, again)
    assert "computing" not in capsys.readouterr().err
    assert meta["code"] == analysis.code_hash()  # the fitting code that wrote it, recorded
    sidecar = (folder / "fits.meta.json").read_bytes()
    todo = {"fits", "fit_curves", "scale"}
    with monkeypatch.context() as m:  # refit: recomputed though cached, once, and taken out of the set
        calls, real = [], analysis.fit_activation_laws
        m.setattr(analysis, "fit_activation_laws", lambda *a, **k: calls.append(1) or real(*a, **k))
        analysis.activation_laws_for(P, refit=todo)
        analysis.activation_laws_for(P, refit=todo)
    assert calls == [1] and todo == {"scale"} and "(refit)" in capsys.readouterr().err
    assert (folder / "fits.meta.json").read_bytes() == sidecar  # same bytes, same provenance: left as it was
    with monkeypatch.context() as m:  # reused though the fitting code changed since: said, with the remedy,
        m.setattr(analysis, "code_hash", lambda: "0" * 16)  # once (fit_profile reuses fits.csv four times)
        analysis.activation_laws_for(P)
        analysis.activation_laws_for(P)
    err = capsys.readouterr().err
    assert err.count("reusing fits.csv, fit_curves.csv, fitted by another version of laws.py and analysis.py") == 1
    assert f"; {analysis.refit_command(P)} recomputes them" in err and "computing" not in err
    assert analysis.refit_command(P) == "python -m sparsinglaw fit --profile smoke --refit"
    odd = dataclasses.replace(P, path="/x y/my.yaml", overrides=["fit.loss=soft_l1", "fit.tag=a b"])
    assert analysis.refit_command(odd) == ("python -m sparsinglaw fit --profile '/x y/my.yaml' --set fit.loss=soft_l1 "
                                           "--set 'fit.tag=a b' --refit")
    analysis.activation_laws_for(P)
    assert capsys.readouterr().err == ""  # the same code: nothing to say
    at2, _ = analysis.activation_laws_for(P, p=2.0)  # another p: fitted on the PPL-2% rows, not read back
    assert set(at2["run"]) == {"relu-s1"} and "computing fits.csv" in capsys.readouterr().err
    P2 = dataclasses.replace(P, fit={"n_boot": 0})  # another spec: recomputed
    assert analysis.activation_laws_for(P2)[0]["alpha_lo"].isna().all()
    analysis.activation_laws_for(P)  # P's tables again (P2 replaced them), then sparsity.csv is remeasured
    runs.write_table(table[table["run"] != "relu-short"], folder / "sparsity.csv", {"profile": P.name})
    capsys.readouterr()
    remeasured, _ = analysis.activation_laws_for(P)  # the same spec on another sparsity.csv: recomputed
    assert "computing fits.csv, fit_curves.csv (missing or stale)" in capsys.readouterr().err
    assert set(remeasured["run"]) == {"relu-s1", "silu-s1"}
    with pytest.raises(ValueError, match="unknown FitSpec field"):
        analysis.fit_spec(dataclasses.replace(P, fit={"nboot": 3}))


def test_every_profile_fit_section_is_a_fit_spec():
    from sparsinglaw.config import load_profile

    for name in ("smoke", "cpu", "gpu", "paper"):
        assert isinstance(analysis.fit_spec(load_profile(name)), laws.FitSpec)


def test_a_profile_chooses_the_law_of_an_activation_the_paper_does_not_fit(table):
    """gelu gets Eq. 5 by default (smooth like SiLU), a rising law that cannot follow a falling ratio: a
    GELU run whose ratio falls as Eq. 4 has it got no converged fit. fit.activation_forms chooses Eq. 4
    for it; ReLU and SiLU keep the paper's laws, and only the two laws with a limit A0 may be chosen."""
    from sparsinglaw import config

    gelu = run_rows("relu-s1", "relu", RELU, seed=1).assign(run="gelu-s1", activation="gelu")
    default, _ = analysis.fit_activation_laws(gelu, SPEC)
    assert default["form"].iloc[0] == "power" and not default["converged"].iloc[0]
    profile = config.load_profile("smoke", overrides=["fit.activation_forms={gelu: logspace_power}"])
    forms = analysis.activation_forms(profile)
    assert forms == {**analysis.FORM, "gelu": "logspace_power"}
    chosen, _ = analysis.fit_activation_laws(gelu, SPEC, activation_forms=forms)
    assert chosen["form"].iloc[0] == "logspace_power" and chosen["converged"].iloc[0], chosen["message"].iloc[0]
    comp = analysis.form_comparison(gelu, dataclasses.replace(SPEC, n_boot=0), activation_forms=forms)
    assert comp.loc[comp["paper_form"], "form"].tolist() == ["logspace_power"]
    assert analysis.fit_spec(profile) == analysis.fit_spec(config.load_profile("smoke"))  # not a FitSpec field
    assert "activation_forms" in analysis._spec_payload(profile)  # another cache key
    assert "activation_forms" not in analysis._spec_payload(config.load_profile("smoke"))
    for value, error in (("{relu: power}", "relu keeps the paper's law (logspace_power)"),
                         ("{gelu: sigmoid}", "gelu: 'sigmoid' is not a law with a limit A0"),
                         ("[gelu]", "expected a mapping activation: form")):
        with pytest.raises(ValueError, match=re.escape(error)):
            analysis.activation_forms(config.load_profile("smoke", overrides=[f"fit.activation_forms={value}"]))
    with pytest.raises(ValueError, match=re.escape("fit.activation_forms gives one, e.g. {mine: logspace_power}")):
        analysis.form_for("mine", forms)


def test_a_refit_with_overrides_into_the_committed_results_says_so(tmp_path, monkeypatch, capsys):
    """Derived tables of a built-in profile computed with --set overrides into the repository's results/
    replace the committed ones: one note per folder says so and how to restore them; none for the
    profile as it is, nor for a results folder elsewhere (SPARSINGLAW_RESULTS)."""
    from sparsinglaw import config

    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "smoke.yaml", tmp_path / "configs" / "smoke.yaml")
    (tmp_path / "results" / "smoke").mkdir(parents=True)
    monkeypatch.setenv("SPARSINGLAW_ROOT", str(tmp_path))
    monkeypatch.setattr(analysis, "_NOTED", set())
    committed, elsewhere = tmp_path / "results" / "smoke", tmp_path / "elsewhere" / "smoke"
    changed = config.load_profile("smoke", overrides=["fit.n_boot=7"])
    for profile, folder in ((config.load_profile("smoke"), committed), (changed, elsewhere)):
        analysis._note_overridden(profile, folder)
    assert capsys.readouterr().err == ""
    analysis._note_overridden(changed, committed)  # no table of the folder committed: no git checkout to offer
    err = capsys.readouterr().err
    assert f"--set fit.n_boot=7 replace the ones in {committed} (SPARSINGLAW_RESULTS=" in err and "git" not in err
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    (committed / "fits.csv").write_text("run\n")
    for args in (["init", "-q"], ["add", "results"], ["commit", "-qm", "tables"]):
        subprocess.run(git + args, check=True, capture_output=True)
    monkeypatch.setattr(analysis, "_NOTED", set())
    analysis._note_overridden(changed, committed)
    analysis._note_overridden(changed, committed)
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and f"--set fit.n_boot=7 replace the committed ones in {committed}" in err
    assert f"git checkout {committed} restores them" in err


def test_derived_tables_follow_their_inputs_not_only_the_fits(monkeypatch, tmp_path):
    """width_depth.csv is keyed on limit_loss.csv too: remeasured dense losses (the same activation
    ratios, so fits.csv keeps its bytes) give new final losses; the profile's fit level reaches the
    best-range rows."""
    from sparsinglaw import runs
    from sparsinglaw.config import load_profile

    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path))
    P = dataclasses.replace(load_profile("smoke"), fit={"n_boot": 0, "seed": 0, "level": 0.9})
    folder = runs.results_dir(P.name)
    meta = {"profile": P.name, "corpus": {"fingerprint": "synthetic"}}
    wd = pd.concat([run_rows("relu-a", "relu", RELU, groups="width_depth", seed=1),
                    run_rows("relu-b", "relu", RELU, groups="width_depth", d_model=64, seed=2, loss=(2.9, 1.0, 0.3))])
    for shift in (0.0, 0.5):
        measured = wd.assign(dense_loss=wd["dense_loss"] + shift)
        runs.write_table(measured, folder / "sparsity.csv", meta)
        pts, summary = analysis.width_depth_for(P, progress=False)
        if not shift:
            fits_bytes = (folder / "fits.csv").read_bytes()
        last = measured.groupby("run")["dense_loss"].last()
        assert pts.set_index("run")["final_loss"].to_dict() == pytest.approx(last.to_dict(), rel=1e-12)
        br = summary[summary["kind"] == "best_range"].set_index("quantity")
        assert br.loc["final_loss", "best_x"] == 32.0 and (br["level"] == 0.9).all()
    assert (folder / "fits.csv").read_bytes() == fits_bytes


def test_pattern_tables_are_recomputed_when_edited_remeasured_or_versioned(monkeypatch, tmp_path, capsys):
    """token_pairs.csv edited by hand (its sha256 no longer the sidecar's), tokens.csv remeasured, or a
    new ANALYSIS_VERSION: each recomputes the pattern tables, which then hold scipy's numbers."""
    from sparsinglaw import runs
    from sparsinglaw.config import load_profile

    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path))
    P = load_profile("smoke")
    folder = runs.results_dir(P.name)
    meta = {"profile": P.name, "corpus": {"fingerprint": "synthetic"}}
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, 50), rng.normal(0, 1, 50)
    tokens, info = pair_tables({"relu-s1": 0.1 + 0.01 * a, "relu-s2": 0.1 + 0.01 * (a + b)})
    neurons = pd.concat([pd.DataFrame({"run": run, "step": 10, "layer": 0, "neuron": np.arange(30),
                                       "all": rng.beta(1, 10, 30)}) for run in ("relu-s1", "relu-s2")])
    for name, df in (("sparsity", info), ("neurons", neurons), ("tokens", tokens)):
        runs.write_table(df, folder / f"{name}.csv", meta)

    def pearson():
        capsys.readouterr()
        r = analysis.patterns_for(P)[2]["pearson"].iloc[0]
        return r, capsys.readouterr().err

    oracle = stats.pearsonr(a, a + b).statistic
    r, err = pearson()
    assert r == pytest.approx(oracle, rel=1e-12) and "missing or stale" in err
    r, err = pearson()
    assert r == pytest.approx(oracle, rel=1e-12) and "computing" not in err  # cached
    csv = folder / "token_pairs.csv"
    runs.read_csv(csv).assign(pearson=0.5).to_csv(csv, index=False)  # a hand edit of the cached table
    r, err = pearson()
    assert r == pytest.approx(oracle, rel=1e-12) and "missing or stale" in err
    runs.write_table(tokens.assign(activation_ratio=np.r_[0.1 + 0.01 * a, 0.1 + 0.01 * (a - b)]),
                     folder / "tokens.csv", meta)  # remeasured
    r, err = pearson()
    assert r == pytest.approx(stats.pearsonr(a, a - b).statistic, rel=1e-12) and "missing or stale" in err
    monkeypatch.setattr(analysis, "ANALYSIS_VERSION", analysis.ANALYSIS_VERSION + 1)
    _, err = pearson()
    assert "missing or stale" in err
    assert runs.sidecar(folder / "domains.csv")["analysis_version"] == analysis.ANALYSIS_VERSION


# ----------------------------------------------------------------------------- pair order and p in the pattern tables


def test_domain_agreement_puts_the_smaller_model_first_whatever_the_table_order():
    """The bigger run listed first: run_a is still the smaller model. Oracle: scipy's KS distance."""
    rng = np.random.default_rng(7)
    freq = {"relu-big": rng.beta(1, 10, 300), "relu-small": rng.beta(1, 5, 300)}
    neurons = pd.concat([pd.DataFrame({"run": r, "step": 1, "layer": 0, "neuron": np.arange(300), "all": f})
                         for r, f in freq.items()], ignore_index=True)
    info = pd.concat([run_rows("relu-big", "relu", RELU, N=2e5, tokens=TOKENS[:1]),
                      run_rows("relu-small", "relu", RELU, N=1e5, tokens=TOKENS[:1])])
    _, agreement = analysis.domain_distributions(neurons, info)
    r = agreement.iloc[0]
    assert (r["run_a"], r["run_b"]) == ("relu-small", "relu-big")
    assert r["mean_a"] == pytest.approx(freq["relu-small"].mean())
    assert r["mean_b"] == pytest.approx(freq["relu-big"].mean())
    assert r["ks"] == pytest.approx(stats.ks_2samp(freq["relu-small"], freq["relu-big"]).statistic, rel=1e-12)


def test_a_table_of_ones_own_without_a_column_is_refused_naming_it(table, isolated_roots):
    """A sparsity table made by hand (README: fitting your own measurements) without a column a fit reads,
    or with text where numbers belong, is refused naming the column (it was a pandas KeyError or a numpy
    TypeError); through load_results, before any fit; an empty neuron table gives empty summaries."""
    with pytest.raises(ValueError, match=r"sparsity table without column\(s\) activation_ratio; this fit reads run, "
                                         r".*, p, tokens, activation_ratio \(README: fitting your own measurements\)"):
        analysis.fit_activation_laws(table.rename(columns={"activation_ratio": "act_ratio"}), SPEC)
    with pytest.raises(ValueError, match=r"without column\(s\) dense_loss; this fit reads .*, dense_loss"):
        analysis.limit_loss(table.drop(columns="dense_loss"), SPEC)
    with pytest.raises(ValueError, match=r"without column\(s\) groups; "):
        analysis.form_comparison(table.drop(columns="groups"), SPEC)
    with pytest.raises(ValueError, match=r"column p holds text \('1%' ...\), expected numbers"):
        analysis.fit_activation_laws(table.assign(p="1%"), SPEC)
    with pytest.raises(ValueError, match="sparsity table without rows; the fits need measured points"):
        analysis.fit_activation_laws(table.iloc[:0].astype(object), SPEC)  # as a CSV of its header alone reads
    gap = table.assign(activation_ratio=table["activation_ratio"].where(table.index != 3))
    with pytest.raises(ValueError, match=r"column activation_ratio is empty in 1 row\(s\) \(the first of run "
                                         rf"'{table['run'].iloc[3]}'\); every point needs a value"):
        analysis.fit_activation_laws(gap, SPEC)
    one = table[(table["run"] == "relu-s1") & (table["p"] == 1)].assign(groups=np.nan)  # groups may be empty
    assert analysis.fit_activation_laws(one, SPEC)[0]["run"].tolist() == ["relu-s1"]
    with pytest.raises(ValueError, match=r"tokens is a count of training tokens; got 0.01 for run relu-s1 \(billions\? "
                                         r"multiply by 1e9\)"):
        analysis.fit_activation_laws(table.assign(tokens=table["tokens"] / 1e9), SPEC)
    with pytest.raises(ValueError, match=r"got -1.0 for run relu-s1 \(a count is positive\)"):
        analysis.fit_activation_laws(table.assign(tokens=-1.0), SPEC)
    pct = re.escape(repr(float(table["activation_ratio"].iloc[0] * 100)))
    with pytest.raises(ValueError, match=r"activation_ratio is the share of active neurons, in \[0, 1\]; got "
                                         rf"{pct} for run relu-s1 \(percent\? divide by 100\)"):
        analysis.fit_activation_laws(table.assign(activation_ratio=table["activation_ratio"] * 100), SPEC)
    with pytest.raises(ValueError, match=r"got -0.5 for run relu-s1 \(a share is not negative\)"):
        analysis.fit_activation_laws(table.assign(activation_ratio=-0.5), SPEC)
    assert len(analysis.limit_loss(table.assign(activation_ratio=-0.5), SPEC))  # a column that fit does not read
    whole = table.assign(tokens=np.ceil(table["tokens"] / 1e9))  # whole billions: 1, 2, ... pass as counts
    with pytest.raises(ValueError, match=r"run [\w.-]+ has at most 1.0, .* per non-embedding parameter \(billions\? "
                                         r"multiply by 1e9\)"):
        analysis.fit_activation_laws(whole, SPEC)
    row = table[table["p"] == 1].iloc[2]
    twice = pd.concat([table, row.to_frame().T.astype(table.dtypes)], ignore_index=True)  # it would weigh twice
    with pytest.raises(ValueError, match=rf"run {row['run']} has more than one row at tokens {int(row['tokens'])} "
                                         r"and p=1; expected one point per checkpoint"):
        analysis.fit_activation_laws(twice, SPEC)
    # counts computed in floating point (np.geomspace) are counts: only small fractional ones are refused
    fits, _ = analysis.fit_activation_laws(table.assign(tokens=table["tokens"] + 0.25), SPEC)
    assert len(fits) == table["run"].nunique()
    from sparsinglaw import runs
    from sparsinglaw.config import load_profile

    P = load_profile("smoke")
    folder = runs.results_dir(P.name)
    runs.write_table(table.drop(columns="activation_ratio"), folder / "sparsity.csv", {"profile": P.name})
    with pytest.raises(runs.TableError, match=r"sparsity.csv: missing column\(s\) activation_ratio; expected at least "
                                              r"the columns run, .*, dense_loss; rerun python -m sparsinglaw measure"):
        analysis.load_results("smoke")
    runs.write_table(table.assign(tokens="many"), folder / "sparsity.csv", {"profile": P.name})
    with pytest.raises(runs.TableError, match=r"sparsity.csv: line 2, column tokens: 'many' is not a number"):
        analysis.load_results("smoke")
    empty = pd.DataFrame(columns=["run", "step", "layer", "neuron", "all"])
    summary, agreement = analysis.domain_distributions(empty, table)
    assert summary.empty and agreement.empty and {"run", "domain", "mean", "activation"} <= set(summary.columns)


def test_dead_neurons_read_the_requested_p():
    """At p = 2 the PPL-2% rows count, at p = 1 the PPL-1% rows (hand numbers: first, last, and rho = +1 / -1
    for a dead ratio rising / falling with tokens)."""
    rows = []
    for p, dead in ((1.0, [0.30, 0.20, 0.10]), (2.0, [0.05, 0.06, 0.07])):
        for k, d in enumerate(dead):
            rows.append({"run": "relu-s1", "activation": "relu", "groups": "scale", "d_model": 16, "n_layers": 2,
                         "width_depth": 8.0, "non_embedding_params": 5000, "tokens": 1e6 * (k + 1), "p": p,
                         "dead_ratio": d, "nonzero_ratio": 0.5 + d})
    t = pd.DataFrame(rows)
    cols = ["dead_ratio_first", "dead_ratio_last", "dead_ratio_rho_tokens"]
    assert analysis.dead_neurons(t, p=2.0).iloc[0][cols].tolist() == pytest.approx([0.05, 0.07, 1.0])
    assert analysis.dead_neurons(t, p=1.0).iloc[0][cols].tolist() == pytest.approx([0.30, 0.10, -1.0])
