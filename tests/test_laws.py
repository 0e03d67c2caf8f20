"""laws.py on synthetic data with known parameters (seeded, deterministic).

Data: D log-spaced over 0.01-100 (1e9 tokens), 32 points, Gaussian noise sd 0.002 in activation
ratio; ReLU-like curves fall over ~0.07-0.28, SiLU-like curves rise over ~0.22-0.42.
Over 40 seeds (n_boot=200), the 95% intervals held the true value in 90-97% of fits per parameter,
so one fixed seed is a fair test, not a lucky one.
"""

import dataclasses
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats
from scipy.optimize import OptimizeResult

from sparsinglaw import laws

D = np.geomspace(0.01, 100, 32)
SD = 0.002
TRUTH = {
    "logspace_power": {"alpha": 0.5, "b": -1.5, "c": 0.5, "A0": 0.07},  # ReLU-like, 0.28 -> 0.07
    "power": {"alpha": 0.5, "c": 0.02, "A0": 0.42},  # SiLU-like, 0.22 -> 0.42
    "log": {"a": 2.0, "b": 1.0, "c": -0.03, "A0": 0.28},  # 0.28 -> 0.12
    "sigmoid": {"a": 1.08, "b": 1.0, "c": -0.1, "d": -1.27},  # 0.30 -> 0.08
}


def synthetic(form, seed=1, D=D):
    rng = np.random.default_rng(seed)
    return laws.FORMS[form].f(D, **TRUTH[form]) + rng.normal(0, SD, D.size)


def inside(result, symbol, value):
    lo, hi = result.intervals[symbol]
    return lo <= value <= hi


# ----------------------------------------------------------------------------- forms


def test_forms_are_the_papers_equations():
    assert laws.logspace_power(2.0, 0.5, -1.0, 0.3, 0.1) == pytest.approx(math.exp(-0.3 * 2**0.5 - 1) + 0.1)
    assert laws.power(4.0, 0.5, 0.02, 0.4) == pytest.approx(0.4 - 0.02 / 2)
    assert laws.log(3.0, 2.0, 1.0, -0.1, 0.3) == pytest.approx(-0.1 * math.log(7) + 0.3)
    assert laws.sigmoid(1.0, 1.1, 2.0, -0.5, 0.2) == pytest.approx(1.1 - 1 / (1 + 2 * math.exp(-0.3)))
    assert laws.loss_power(4.0, 2.0, 1.5, 0.5) == pytest.approx(2.75)
    assert laws.tokens_to_D(3e9) == pytest.approx(3.0)
    for name, form in laws.FORMS.items():
        assert len(form.symbols) == len(form.lower) == len(form.upper), name
        assert all(lo < hi for lo, hi in zip(form.lower, form.upper, strict=True)), name
    assert laws.FORMS["logspace_power"].symbols == ("alpha", "b", "c", "A0")
    assert laws.FORMS["power"].symbols == ("alpha", "c", "A0")
    assert laws.FORMS["log"].symbols == ("a", "b", "c", "A0")
    assert laws.FORMS["sigmoid"].symbols == ("a", "b", "c", "d")


def test_starting_grid_is_a_fixed_rule_of_the_data():
    A = synthetic("logspace_power")
    starts = list(laws.FORMS["logspace_power"].starts(D, A, 3))
    assert len(starts) == 27
    assert starts == list(laws.FORMS["logspace_power"].starts(D, A, 3))
    # A0 starts below min(A), at fixed fractions of it
    assert sorted({round(s[3] / A.min(), 6) for s in starts}) == [0.5, 0.725, 0.95]


# ----------------------------------------------------------------------------- recovery, one test per form


@pytest.mark.parametrize("form", ["logspace_power", "power"])
def test_limit_laws_recover_known_parameters(form):
    A = synthetic(form)
    r = laws.fit(form, D, A, n_boot=300, seed=0)
    assert r.converged, r.message
    assert r.unidentified == []
    for s, v in TRUTH[form].items():
        assert inside(r, s, v), (s, v, r.params[s], r.intervals[s])
        lo, hi = r.intervals[s]
        assert hi - lo < 0.2 * abs(v)  # informative, not just wide
    assert r.mse == pytest.approx(SD**2, rel=0.5)
    assert r.mae == pytest.approx(np.mean(np.abs(r.residuals)))
    assert r.n_used == D.size and r.dropped == []
    assert r.holdout["converged"], r.holdout["message"]
    # the true form beats every other form on AIC (40 of 40 seeds) and on hold-out error
    table = laws.compare_forms(D, A)
    assert table.form[0] == form
    assert list(table.aic) == sorted(table.aic)
    assert table.holdout_mse[0] == table.holdout_mse.min() == pytest.approx(r.holdout["mse"])


def _eq4_grid_oracle(D, A):
    """Least RSS of Eq. 4 over a dense (alpha, log c) grid, independent of the optimizer: for fixed alpha and c
    the curve is linear in (exp(b), A0), A = exp(b) g + A0 with g = exp(-c D**alpha), solved in closed form;
    only solutions inside the form's bounds (0 < exp(b) <= 1, 0 <= A0 <= 1) count."""
    alpha, log_c = np.meshgrid(np.linspace(0.02, 10, 400), np.linspace(-10, 80, 1200), indexing="ij")
    with np.errstate(all="ignore"):
        g = np.exp(-np.exp(log_c)[..., None] * D ** alpha[..., None])
    gm, Am = g.mean(-1, keepdims=True), A.mean()
    var = ((g - gm) ** 2).sum(-1)
    with np.errstate(all="ignore"):
        slope = ((g - gm) * (A - Am)).sum(-1) / var
        A0 = Am - slope * gm[..., 0]
        rss = ((A - (slope[..., None] * g + A0[..., None])) ** 2).sum(-1)
    feasible = (var > 0) & (slope > 0) & (slope <= 1) & (A0 >= 0) & (A0 <= 1)
    return rss[feasible].min()


@pytest.mark.parametrize("seed", range(6))
def test_eq4_reaches_the_least_squares_minimum_of_a_fast_transient(seed):
    """A transient that ends within two or three measured points (a cpu ReLU run's shape): c * D**alpha is
    pinned near the data while alpha and c trade along a ridge, where least squares in (alpha, c) stopped
    short of the minimum (its RSS 1.3-2.1x the grid oracle's on 4 of these 6 seeds, no start converged on a
    fifth). In Eq. 4's chart (u = log c + alpha log D_ref) the fit reaches the oracle's RSS and recovers A0."""
    Dn = np.geomspace(2.25e-4, 3e-3, 11)
    A = laws.logspace_power(Dn, 6.0, -4.0, 5e-4**-6, 0.19) + np.random.default_rng(seed).normal(0, 2e-3, Dn.size)
    r = laws.fit("logspace_power", Dn, A, n_boot=200)
    rss, oracle = float(np.sum(r.residuals**2)), _eq4_grid_oracle(Dn, A)
    assert 0.99 * oracle <= rss <= 1.001 * oracle, (rss, oracle)
    assert r.converged and r.unidentified == [], r.message
    assert r.params["A0"] == pytest.approx(0.19, abs=4e-3)
    lo, hi = r.intervals["A0"]  # intervals come (whether one holds 0.19 is coverage, bench/fit_coverage.py)
    assert lo < r.params["A0"] < hi and hi - lo < 0.01


def test_eq4_optimizer_coordinates_are_the_same_curves():
    law = laws.FORMS["logspace_power"]
    Dn = np.geomspace(2e-4, 3e-3, 9)
    x = np.array([3.0, -2.0, 4e9, 0.18])
    f_z, to_z, to_x, lo, hi = laws._coords(law, Dn, x)
    z = to_z(x)
    assert z[2] == pytest.approx(np.log(4e9) + 3.0 * np.mean(np.log(Dn)))  # u = log c + alpha log D_ref
    assert to_x(z) == pytest.approx(x, rel=1e-12)
    assert f_z(Dn, *z) == pytest.approx(law.f(Dn, *x), rel=1e-12)
    assert (lo[2], hi[2]) == (-np.inf, np.inf) and list(lo[[0, 1, 3]]) == [0, -30, 0]
    x3 = np.array([1.6, 2e-7, 0.45])  # Eq. 5: u = log c - alpha log D_ref
    f_z, to_z, to_x, lo, hi = laws._coords(laws.FORMS["power"], Dn, x3)
    z = to_z(x3)
    assert z[1] == pytest.approx(np.log(2e-7) - 1.6 * np.mean(np.log(Dn)))
    assert to_x(z) == pytest.approx(x3, rel=1e-12) and f_z(Dn, *z) == pytest.approx(laws.power(Dn, *x3), rel=1e-12)
    assert list(lo) == [0, -np.inf, 0] and list(hi) == [10, np.inf, 1]
    x3 = np.array([3.5, 0.6, 0.45])  # a form without a `chart` or `redundant` keeps its parameters
    f_plain, to_z, to_x, lo, hi = laws._coords(laws.FORMS["loss_power"], Dn, x3)
    assert list(to_z(x3)) == list(x3) and list(to_x(x3)) == list(x3) and list(lo) == [0, 0, 0]
    assert list(f_plain(Dn, *x3)) == list(laws.loss_power(Dn, *x3))


@pytest.mark.parametrize("form, x", [("power", (1.6, 0.05 * 2e-4**1.6, 0.46)),
                                     ("logspace_power", (0.8, -3.0, 0.4 * 2e-4**-0.8, 0.19))])
def test_a_fit_does_not_depend_on_the_unit_of_D(form, x):
    """The same data with D in 1e9 tokens and in 1e6 tokens (D * 1000) give the same fit and the same
    judgement. Eq. 5's c carries D's unit: a transient of 0.05 at D = 2e-4 with alpha 1.6 is c = 6e-8, which
    a bound check in c took for its bound 0 (not converged) while the same fit in 1e6 tokens, c = 0.4,
    converged; the judgement is now made in the chart's coordinates, which see only D/D_ref."""
    Dn = np.geomspace(2e-4, 3e-3, 11)
    A = laws.FORMS[form].f(Dn, *x) + np.random.default_rng(3).normal(0, 1e-3, Dn.size)
    r, r_k = laws.fit(form, Dn, A, n_boot=100), laws.fit(form, 1000 * Dn, A, n_boot=100)
    assert r.converged and r_k.converged, (r.message, r_k.message)
    assert r.unidentified == r_k.unidentified == []
    assert r.params["A0"] == pytest.approx(r_k.params["A0"], abs=1e-7)  # the solver stops within tol of the optimum
    assert r.params["alpha"] == pytest.approx(r_k.params["alpha"], rel=1e-6)
    unit = 1000.0 ** (-1 if form == "power" else 1)  # c D**-alpha (Eq. 5) or c D**alpha (Eq. 4) is the same term
    assert r.params["c"] == pytest.approx(r_k.params["c"] * unit ** r.params["alpha"], rel=1e-5)
    assert r.intervals["A0"] == pytest.approx(r_k.intervals["A0"], abs=1e-6)


@pytest.mark.parametrize("name", ["log", "sigmoid"])
def test_the_redundant_parameter_is_held_at_its_start(name):
    """b only acts with another parameter (a/b, b*exp(d)): the optimizer leaves it out of its coordinates,
    at its value in the start, and the curves are the same. The charts: log(a) for the logarithmic form,
    the midpoint -d/c for the sigmoid-like one."""
    form = laws.FORMS[name]
    x = np.array([300.0, 2.5, -0.02, 0.2]) if name == "log" else np.array([0.9, 2.5, -500.0, 0.3])
    f_z, to_z, to_x, lo, hi = laws._coords(form, RELU_D, x)
    z = to_z(x)
    expect = [math.log(300.0), -0.02, 0.2] if name == "log" else [0.9, -500.0, 0.3 / 500.0]
    assert z == pytest.approx(expect, rel=1e-14) and to_x(z) == pytest.approx(x, rel=1e-14)
    assert list(lo) == [-np.inf if name == "log" else 0, -np.inf, -np.inf] and list(hi[1:]) == [np.inf] * 2
    assert list(f_z(RELU_D, *(z * 1.01))) == list(form.f(RELU_D, *to_x(z * 1.01)))
    A = form.f(RELU_D, *x) + np.random.default_rng(0).normal(0, 1e-3, RELU_D.size)
    res = laws._lsq(form, RELU_D, A, x, laws.FitSpec())
    assert laws._ok(res) and res.x[1] == 2.5


def test_a_step_like_transient_puts_alpha_on_a_nuisance_bound():
    """A transient that ends between two measured points is a step: the least-squares optimum sharpens without
    end (alpha -> inf) and stops on alpha <= 10. Refitted with alpha <= 50, A0 stays within nuisance_tol,
    so the fit converges with the note; with a nuisance_tol below that move it does not."""
    Dn = np.geomspace(2.25e-4, 3e-3, 11)
    A = np.where(Dn < 4.5e-4, 0.21, 0.19) + np.random.default_rng(3).normal(0, 1e-3, Dn.size)
    r = laws.fit("logspace_power", Dn, A, n_boot=100)
    assert r.params["alpha"] == pytest.approx(10) and r.converged, r.message
    move = float(re.search(r"nuisance alpha=10 at bound 10 \(refitted with alpha <= 50, A0 moves by ([^ ,]+)",
                           r.message).group(1))
    assert move <= 1e-3
    assert r.params["A0"] == pytest.approx(A[Dn >= 4.5e-4].mean(), abs=1e-3)  # the plateau's mean
    strict = laws.fit("logspace_power", Dn, A, n_boot=0, nuisance_tol=move / 2)
    assert not strict.converged and "more than nuisance_tol" in strict.message
    # the refit with alpha free may run out of evaluations while it sharpens the step: each of them fits at
    # least as well as the bound's, so its A0 still answers how far the limit moves
    law, x = laws.FORMS["logspace_power"], np.array([r.params[s] for s in ("alpha", "b", "c", "A0")])
    res = OptimizeResult(x=x, status=1, cost=0.5 * float(np.sum(r.residuals**2)))
    ok, notes = laws._judge(law, Dn, A, res, laws.FitSpec(max_nfev=3))
    assert ok and any("before the refit's evaluation limit, within nuisance_tol" in n for n in notes), notes


def test_log_form_recovers_its_identified_parts():
    # c*log(a*D + b) + A0 has a one-dimensional ridge: (a, b, A0) -> (s*a, s*b, A0 - c*log(s)) gives the
    # same curve, so a, b and A0 are not separately identified. We check c, the identified combinations
    # a/b and A0 + c*log(b), and the pointwise bootstrap band against the true curve.
    form, truth = "log", TRUTH["log"]
    A = synthetic(form)
    r = laws.fit(form, D, A, n_boot=300, seed=0)
    assert r.converged, r.message
    assert sorted(r.unidentified) == ["A0", "a", "b"]
    assert all(np.isnan(r.intervals[s]).all() for s in ("a", "b", "A0"))
    assert inside(r, "c", truth["c"])
    p = r.params
    assert p["a"] / p["b"] == pytest.approx(truth["a"] / truth["b"], rel=0.15)
    assert p["A0"] + p["c"] * np.log(p["b"]) == pytest.approx(truth["A0"], abs=3 * SD)
    grid = np.geomspace(0.01, 100, 9)
    lo, hi = r.band(grid)
    true_curve = laws.log(grid, **truth)
    assert np.all((lo <= true_curve) & (true_curve <= hi))
    table = laws.compare_forms(D, A)
    assert table.form[0] == "log"


def test_sigmoid_form_recovers_its_identified_parts():
    # a - 1/(1 + b*exp(c*D + d)): b*exp(d) is one parameter, so b and d are not separately identified;
    # a, c and the combination d + log(b) are.
    form, truth = "sigmoid", TRUTH["sigmoid"]
    A = synthetic(form)
    r = laws.fit(form, D, A, n_boot=300, seed=0)
    assert r.converged, r.message
    assert sorted(r.unidentified) == ["b", "d"]
    assert inside(r, "a", truth["a"]) and inside(r, "c", truth["c"])
    p = r.params
    assert p["d"] + np.log(p["b"]) == pytest.approx(truth["d"] + np.log(truth["b"]), abs=0.1)
    # beats the log and power forms on AIC; logspace_power mimics this curve closely on 0.01-100
    # (it wins AIC on ~40% of seeds), so it is not the comparison here
    table = laws.compare_forms(D, A).set_index("form")
    assert table.aic["sigmoid"] < table.aic["log"] and table.aic["sigmoid"] < table.aic["power"]
    assert table.holdout_mse["sigmoid"] < table.holdout_mse["log"]


def test_default_bootstrap_has_1000_resamples():
    A = synthetic("logspace_power", seed=2)
    r = laws.fit("logspace_power", D, A)  # FitSpec() defaults
    assert r.spec.n_boot == 1000 and r.spec.level == 0.95
    assert r.boot.shape == (1000, 4)
    assert np.isfinite(r.boot).all(axis=1).sum() >= 900
    assert r.converged, r.message
    for s, v in TRUTH["logspace_power"].items():
        assert inside(r, s, v), (s, r.intervals[s])
    # seeded: the same spec gives the same intervals
    again = laws.fit("logspace_power", D, A, n_boot=50)
    assert again.intervals == laws.fit("logspace_power", D, A, n_boot=50).intervals
    # and the seed is what draws the resamples: another seed, other resamples, the same point estimate
    other = laws.fit("logspace_power", D, A, n_boot=50, seed=1)
    assert other.params == again.params and other.spec.seed == 1
    assert not np.array_equal(other.boot, again.boot, equal_nan=True)
    assert all(other.intervals[k] != again.intervals[k] for k in again.intervals)


def test_starts_do_not_depend_on_the_unit_of_D():
    # the grid is a rule of the data: the same curve on D/1000 fits just as well
    D_small = D / 1000
    A = synthetic("power", D=D)
    r = laws.fit("power", D_small, A, n_boot=0)
    assert r.converged, r.message
    assert r.params["alpha"] == pytest.approx(laws.fit("power", D, A, n_boot=0).params["alpha"], rel=1e-4)


def test_robust_loss_resists_an_outlier():
    A = synthetic("power")
    A[20] += 0.05  # one bad checkpoint
    plain = laws.fit("power", D, A, n_boot=0)
    robust = laws.fit("power", D, A, n_boot=0, loss="soft_l1", f_scale=2 * SD)
    truth = TRUTH["power"]["A0"]
    assert abs(robust.params["A0"] - truth) < abs(plain.params["A0"] - truth)
    assert robust.converged and robust.spec.loss == "soft_l1"


def test_pairs_bootstrap_and_log_residuals_run(monkeypatch):
    A = synthetic("power")
    r = laws.fit("power", D, A, n_boot=100, bootstrap="pairs", log_residuals=True)
    assert r.converged, r.message
    assert inside(r, "A0", TRUTH["power"]["A0"])
    # log_residuals: the fit minimises sum (log f - log A)^2; plain least squares sum (f - A)^2; each wins
    # on its own loss (were the option ignored, the two fits would be the same)
    plain = laws.fit("power", D, A, n_boot=0)

    def log_cost(p):
        return float(np.sum((np.log(laws.power(D, **p)) - np.log(A)) ** 2))

    assert r.params == pytest.approx(laws.fit("power", D, A, n_boot=0, log_residuals=True).params)
    assert log_cost(r.params) < log_cost(plain.params)
    assert np.sum(r.residuals**2) > np.sum(plain.residuals**2)
    # pairs: each resample is points (D_i, A_i) of the data drawn with replacement, not the same D with new A
    drawn, real = [], laws._lsq

    def spy(form, Db, Ab, x0, spec):
        drawn.append((np.array(Db), np.array(Ab)))
        return real(form, Db, Ab, x0, spec)

    monkeypatch.setattr(laws, "_lsq", spy)
    x = np.array([r.params[s] for s in laws.FORMS["power"].symbols])
    laws._bootstrap(laws.FORMS["power"], D, A, x, dataclasses.replace(r.spec, n_boot=5))
    assert len(drawn) == 5
    for Db, Ab in drawn:
        i = np.searchsorted(D, Db)
        assert np.array_equal(D[i], Db) and np.array_equal(A[i], Ab) and np.unique(Db).size < D.size


# ----------------------------------------------------------------------------- drop rule, spec, failures


def test_drop_rule_drops_exactly_the_configured_points():
    A = synthetic("power")
    order = np.random.default_rng(0).permutation(D.size)  # input order must not matter
    Dp, Ap = D[order], A[order]
    r = laws.fit("power", Dp, Ap, n_boot=0, drop_first_n=2, drop_first_frac=0.1, min_D=0.05)
    n_frac = math.floor(0.1 * D.size)  # 3 smallest D
    expected = set(np.flatnonzero(Dp < 0.05)) | set(np.argsort(Dp)[:n_frac])
    assert {d["index"] for d in r.dropped} == expected
    assert r.n_used == D.size - len(expected) == r.residuals.size
    assert all(d["D"] == Dp[d["index"]] and d["A"] == Ap[d["index"]] for d in r.dropped)
    reasons = {d["index"]: d["reason"] for d in r.dropped}
    assert reasons[int(np.argmin(Dp))] == "drop_first_n=2"
    assert any(v == "min_D=0.05" for v in reasons.values())
    assert r.D.min() >= 0.05
    row = r.to_row()
    assert row["n_dropped"] == len(expected) and row["spec_min_D"] == 0.05
    at = laws.fit("power", D, A, n_boot=0, holdout_frac=0.0, min_D=D[5])  # D < min_D is dropped, D == min_D kept
    assert [d["index"] for d in at.dropped] == [0, 1, 2, 3, 4] and at.n_used == D.size - 5 and at.D.min() == D[5]


def test_too_few_points_raise():
    A = synthetic("logspace_power")
    with pytest.raises(ValueError, match="needs at least 5 points"):
        laws.fit("logspace_power", D[:4], A[:4])
    with pytest.raises(ValueError, match="after dropping"):
        laws.fit("logspace_power", D, A, min_D=50)


def test_nan_and_bad_input_raise():
    A = synthetic("power")
    A[3] = np.nan
    with pytest.raises(ValueError, match=r"A has 1 non-finite value\(s\) at index \[3\]"):
        laws.fit("power", D, A)
    with pytest.raises(ValueError, match="D must be > 0"):
        laws.fit("power", np.r_[0.0, D[1:]], synthetic("power"))
    with pytest.raises(ValueError, match="unknown law form"):
        laws.fit("cubic", D, synthetic("power"))
    with pytest.raises(ValueError, match="unknown FitSpec field"):
        laws.fit("power", D, synthetic("power"), nboot=10)
    with pytest.raises(ValueError, match="loss='l2'"):
        laws.FitSpec(loss="l2")


def test_data_outside_the_law_are_refused_with_the_likely_slip():
    """Activation ratios in percent or beyond [0, 1], and raw token counts for D (1e9 tokens), are
    refused naming the slip: a percent series was fitted to a flat curve at the bound A0 = 1, and raw
    tokens gave converged=True with c off by (1e9)**alpha. A loss is not a ratio: above 1 it is fitted."""
    A = synthetic("power")
    with pytest.raises(ValueError, match=r"A is an activation ratio, a fraction in \[0, 1\]; got [\d.]+ at index 0 "
                                         rf"\({D.size} value\(s\) outside\); percentages\? divide by 100"):
        laws.fit("power", D, 100 * A)
    bad = A.copy()
    bad[4] = -0.01
    with pytest.raises(ValueError, match=r"got -0.01 at index 4 \(1 value\(s\) outside\)$"):
        laws.fit("logspace_power", D, bad)
    with pytest.raises(ValueError, match=r"A is an activation ratio"):
        laws.form_null(D, 100 * A, "power", ("log",))
    with pytest.raises(ValueError, match=r"D is in units of 1e9 tokens; got max .*: pass tokens_to_D\(tokens\)"):
        laws.fit("power", D * 1e9, A)
    assert laws.fit("power", D / D.max() * 1e6, A, n_boot=0).n_used == D.size  # 1e15 tokens is still a D
    assert laws.fit_limit_loss(D, 3.0 + 2.0 * D**-0.3, n_boot=0).params["E"] == pytest.approx(3.0, rel=1e-6)


def test_spec_as_a_mapping_and_one_form_as_a_name():
    A = synthetic("power")
    assert laws.fit("power", D, A, {"n_boot": 0}).spec == laws.FitSpec(n_boot=0)
    with pytest.raises(TypeError, match="spec: expected a FitSpec or a mapping of its fields, got int"):
        laws.fit("power", D, A, 7)
    table = laws.compare_forms(D, A, "power")  # a name is one form, not its letters
    assert list(table["form"]) == ["power"]


def test_fit_spec_from_config_mapping():
    spec = laws.FitSpec.from_dict({"n_boot": 200, "min_D": 1, "loss": "huber", "log_residuals": True})
    assert spec.n_boot == 200 and spec.min_D == 1 and spec.loss == "huber" and spec.log_residuals
    with pytest.raises(ValueError, match=r"unknown FitSpec field\(s\) drop_first; fields are "):
        laws.FitSpec.from_dict({"drop_first": 2})
    with pytest.raises(ValueError, match="wrong type for n_boot='1000'"):
        laws.FitSpec.from_dict({"n_boot": "1000"})
    with pytest.raises(ValueError, match="wrong type for log_residuals=1"):
        laws.FitSpec.from_dict({"log_residuals": 1})


@pytest.mark.parametrize("form", ["logspace_power", "power", "log", "sigmoid"])
def test_constant_A_is_not_reported_as_converged(form):
    r = laws.fit(form, D, np.full(D.size, 0.1), n_boot=20)
    assert not r.converged
    assert "A is constant" in r.message
    assert all(np.isnan(v).all() for v in r.intervals.values())


def test_wrong_direction_is_flagged_not_converged():
    # decreasing ReLU-like data cannot be an increasing SiLU power law: c is pushed onto its bound
    r = laws.fit("power", D, synthetic("logspace_power"), n_boot=0)
    assert not r.converged
    assert "at bound" in r.message


def test_result_row_and_predict():
    A = synthetic("power")
    r = laws.fit("power", D, A, n_boot=50, holdout_frac=0.2)
    assert r.predict(D) == pytest.approx(A - r.residuals)
    assert (r.holdout["n_test"], r.holdout["n_fit"]) == (7, 25)  # 0.2 * 32 = 6.4 points: rounded up
    assert r.holdout["D_split"] == pytest.approx(np.sort(D)[D.size - r.holdout["n_test"]])
    row = r.to_row()
    for key in ("form", "converged", "mse", "mae", "aic", "bic", "alpha", "alpha_lo", "alpha_hi",
                "holdout_mse", "holdout_mae", "message", "spec_n_boot", "spec_seed"):
        assert key in row
    assert all(not isinstance(v, (dict, list, tuple, np.ndarray)) for v in row.values())
    pd.DataFrame([row])  # one CSV row
    k, n = 3, D.size
    assert r.aic == pytest.approx(n * np.log(np.sum(r.residuals**2) / n) + 2 * (k + 1))
    assert r.bic - r.aic == pytest.approx((k + 1) * (np.log(n) - 2))


def test_nuisance_bound_is_accepted_only_when_the_limit_does_not_move():
    # a pure power-law decay onto A0 = 0.17: Eq. 4's least squares runs along alpha -> 0, b -> inf and
    # stops on b <= 0; lifting the bound to b <= 30 moves A0 by ~0.002 here
    Dn = np.geomspace(1e-4, 3e-3, 11)
    A = 0.02 * (Dn / 1e-4) ** -0.5 + 0.17 + np.random.default_rng(0).normal(0, 3e-4, Dn.size)
    strict = laws.fit("logspace_power", Dn, A, n_boot=100, nuisance_tol=1e-3)
    assert strict.params["b"] == pytest.approx(0, abs=1e-9) and not strict.converged
    move = float(strict.message.split("A0 moves by ")[1].split(",")[0])
    assert 1e-3 < move < 5e-3 and "more than nuisance_tol" in strict.message
    assert all(math.isnan(v) for v in strict.intervals["A0"])
    loose = laws.fit("logspace_power", Dn, A, n_boot=100, nuisance_tol=5e-3)
    assert loose.converged and f"A0 moves by {move:.2g}" in loose.message and "nuisance b=" in loose.message
    assert loose.intervals["A0"][0] <= loose.params["A0"] <= loose.intervals["A0"][1]
    # only the bounds that Form.relaxed_upper lifts are nuisance bounds: rising data push c or alpha onto
    # their lower bound 0 (either flattens the transient; which one the solver reaches first differs
    # between machines' floating point)
    rising = laws.fit("logspace_power", Dn, 0.2 + 0.01 * np.log(Dn / 1e-4), n_boot=0, nuisance_tol=1.0)
    assert not rising.converged and "nuisance" not in rising.message
    assert re.search(r"(^|; )(c|alpha)=[^;]* at bound 0;", rising.message), rising.message
    # a decay onto 0 (no limit): b <= 0 holds A0 at 0.078, lifting it moves A0 by 0.07: not a nuisance
    to_zero = laws.fit("logspace_power", Dn, 0.3 * (Dn / 1e-4) ** -0.3, n_boot=0)
    assert not to_zero.converged and "more than nuisance_tol" in to_zero.message


def test_a_parameter_short_of_its_nuisance_bound_is_held_by_it():
    """trf scales a gradient by the distance to its bound, so Eq. 4's b can stop at -7e-5 where the least-squares
    optimum is on b = 0, beyond _at_bounds' reach: the bound is found by lifting it (the refit crosses it with a
    smaller cost) and judged as a bound hit is. Oracle: scipy's curve_fit of Eq. 4 with b held at 0 fits at
    least as well, so the bound holds b; A0 moves by more than nuisance_tol once b is free: not converged."""
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(2)
    D = np.linspace(5, 90, 12)
    A = np.exp(-0.286 * D**0.449 - 3.05) + 0.0674 + rng.normal(0, 5e-4, D.size)
    r = laws.fit("logspace_power", D, A, n_boot=0)
    assert -1e-3 < r.params["b"] < -1e-6, r.params
    rss = float(np.sum((A - r.predict(D)) ** 2))
    x0 = [r.params["alpha"], r.params["c"], r.params["A0"]]
    on_bound, _ = curve_fit(lambda D, alpha, c, A0: np.exp(-c * D**alpha) + A0, D, A, p0=x0,
                            bounds=([0, 0, 0], [10, np.inf, 1]))
    assert float(np.sum((A - np.exp(-on_bound[1] * D ** on_bound[0]) - on_bound[2]) ** 2)) <= rss * (1 + 1e-9)
    assert not r.converged
    assert re.search(r"b=-[\d.e-]+ near bound 0 \(refitted with b <= 30, A0 moves by [\d.e-]+ [^;]*more than "
                     r"nuisance_tol 0.001\)", r.message), r.message
    # an interior optimum: the refit with b <= 30 stays where it is, nothing is near a bound
    inner = laws.fit("logspace_power", D, np.exp(-0.3 * D**0.5 + np.log(0.2)) + 0.1, n_boot=0)
    assert inner.converged and "bound" not in inner.message, inner.message


def test_a_flat_fit_or_an_unidentified_limit_is_no_law():
    """Eq. 4 on data that rise: its best fit is a constant (the transient is 0 at every point, A0 anywhere
    from 0 to the level once it is), which is no law, whatever the bounds say; and a curve whose limit
    other values fit as well is none either."""
    Dn = np.geomspace(2e-4, 3e-3, 11)
    rng = np.random.default_rng(1)
    A = 0.19 + 0.004 * np.log(Dn / Dn[0]) + rng.normal(0, 0.002, Dn.size)
    r = laws.fit("logspace_power", Dn, A, n_boot=20)
    assert not r.converged and "the fitted curve is flat over the used points" in r.message, r.message
    assert np.ptp(r.predict(Dn)) < laws.FLAT * np.ptp(A)
    assert r.boot.size == 0 and all(np.isnan(v).all() for v in r.intervals.values())
    # the solver may stop inside the bounds or with alpha on its bound 0 (equally flat; which one depends
    # on the BLAS kernels), so the flat rule alone is judged on a flat curve with no parameter on a bound
    flat = np.array([0.01, -3.0, 1e-3, 0.19])  # the transient exp(b - c D**alpha) moves by ~1e-6
    assert not laws._at_bounds(laws.FORMS["logspace_power"], Dn, flat)
    ok, notes = laws._judge(laws.FORMS["logspace_power"], Dn, A, OptimizeResult(x=flat, status=1, cost=0.0,
                                                                                 message=""), laws.FitSpec())
    assert not ok and len(notes) == 1 and notes[0].startswith("the fitted curve is flat over the used points")
    # Eq. 4 with c * D**alpha tiny at every D: exp(b - c D**alpha) ~ exp(b) (1 - c D**alpha), so the
    # curve is a power-law decay onto A0 + exp(b), and A0 trades against b: the limit is not identified
    form, x = laws.FORMS["logspace_power"], np.array([0.5, -3.0, 1e-4, 0.2])
    A = form.f(Dn, *x)
    assert np.ptp(A) > 0 and "A0" in laws._unidentified(form, Dn, x)
    res = OptimizeResult(x=x, status=1, cost=0.0, message="")
    ok, notes = laws._judge(form, Dn, A, res, laws.FitSpec())
    assert not ok and notes == ["the limit A0 is not identified: other values of it fit the data as well"]
    # the same judge passes an identified decay
    x = np.array([0.5, -1.5, 5.0, 0.2])
    assert laws._judge(form, Dn, form.f(Dn, *x), OptimizeResult(x=x, status=1, cost=0.0, message=""),
                       laws.FitSpec()) == (True, [])


def test_flat_means_a_thousandth_of_the_data_spread():
    """Eq. 5 curves spanning 5e-4 and 2e-3 of the data's spread (by hand: span = c (D_min^-alpha -
    D_max^-alpha)): only the first is flat."""
    form, D = laws.FORMS["power"], np.geomspace(0.01, 100, 12)
    A = np.linspace(0.2, 0.4, D.size)
    unit = D.min() ** -0.5 - D.max() ** -0.5
    for share, flat in ((5e-4, True), (2e-3, False)):
        x = np.array([0.5, share * np.ptp(A) / unit, 0.5])
        ok, notes = laws._judge(form, D, A, OptimizeResult(x=x, status=1, cost=0.0, message=""), laws.FitSpec())
        assert any("flat" in n for n in notes) == flat, notes


def eq4_jacobian(D, alpha, b, c, A0):
    """dA/d(alpha, b, c, A0) of Eq. 4, A = exp(b - c D^alpha) + A0, by hand."""
    e = np.exp(b - c * D**alpha)
    return np.column_stack([-c * D**alpha * np.log(D) * e, e, -D**alpha * e, np.ones_like(D)])


def test_a_limit_is_unidentified_below_1e_7_of_the_largest_singular_value():
    """As c falls, Eq. 4's transient flattens into a constant that A0 trades against; the analytic
    Jacobian's column-scaled condition says where: A0 is flagged exactly when s_min / s_max <= 1e-7
    (ratios within a factor 3 of the threshold skipped: the code differentiates numerically)."""
    Dn, form, seen = np.geomspace(2e-4, 3e-3, 11), laws.FORMS["logspace_power"], set()
    for c in np.geomspace(1e-6, 1.0, 49):
        x = np.array([0.5, -3.0, c, 0.2])
        J = eq4_jacobian(Dn, *x)
        s = np.linalg.svd(J / np.linalg.norm(J, axis=0), compute_uv=False)
        ratio = s[-1] / s[0]
        if not 3e-8 <= ratio <= 3e-7:
            flagged = "A0" in laws._unidentified(form, Dn, x)
            assert flagged == (ratio < 1e-7), (c, ratio)
            seen.add(flagged)
    assert seen == {True, False}


def test_no_band_without_intervals():
    """The curve band of a fit whose bootstrap gave no intervals (fewer than min_boot_ok resamples
    converged) is NaN, like the intervals; with enough resamples it brackets the fit."""
    A = synthetic("logspace_power")
    r = laws.fit("logspace_power", D, A, n_boot=40)
    lo, hi = r.band(D)
    assert r.converged and np.all(lo <= r.predict(D) + 1e-9) and np.all(hi >= r.predict(D) - 1e-9)
    # 35 of 40 resamples converged, below min_boot_ok 0.9: no intervals (as fit gives), so no band
    failed = dataclasses.replace(r, boot=np.where(np.arange(40)[:, None] < 5, np.nan, r.boot))
    assert all(np.isnan(b).all() for b in failed.band(D))
    assert np.isfinite(dataclasses.replace(r, boot=r.boot[:36]).band(D)[0]).all()  # 36 of 40: enough


def _on_bound(r):
    good = r.boot[np.all(np.isfinite(r.boot), axis=1)]
    return good, int(np.sum(np.isclose(good[:, 3], 0, atol=1e-6) | np.isclose(good[:, 3], 1, atol=2e-6)))


def test_bootstrap_reports_resamples_with_the_limit_on_a_bound():
    # an Eq. 4 decay onto A0 = 0.003 (noise sd 0.002): the fit converges inside the bounds, but some
    # resamples (9 of 100 here) put A0 on its lower bound 0
    A = laws.logspace_power(D, 0.5, -1.5, 0.5, 0.003) + np.random.default_rng(2).normal(0, SD, D.size)
    r = laws.fit("logspace_power", D, A, n_boot=100)
    assert r.converged, r.message
    good, on_bound = _on_bound(r)
    assert on_bound > 0 and len(good) == 100  # the case under test happens
    assert f"{on_bound}/{len(good)} resamples put A0 on a bound (kept)" in r.message
    assert r.intervals["A0"][0] == pytest.approx(np.percentile(good[:, 3], 2.5))  # kept in the interval
    assert r.intervals["A0"][0] < 1e-6  # so the interval reaches the bound
    # no resample on a bound: no such note
    Dn = np.geomspace(1e-4, 3e-3, 11)
    A = 0.02 * (Dn / 1e-4) ** -0.5 + 0.17 + np.random.default_rng(0).normal(0, 3e-4, Dn.size)
    r = laws.fit("logspace_power", Dn, A, n_boot=100, nuisance_tol=5e-3)
    good, on_bound = _on_bound(r)
    assert on_bound == 0 and "on a bound (kept)" not in r.message
    assert r.intervals["A0"][0] == pytest.approx(np.percentile(good[:, 3], 2.5))


# ----------------------------------------------------------------------------- width-depth


X_RATIO = np.array([14, 20, 28, 36, 45, 57, 74, 90, 105, 128, 150, 200, 282, 400, 600], dtype=float)


def test_piecewise_flat_recovers_breakpoint_and_slope():
    bp, slope, b0 = 114.0, 5e-4, 0.02  # 0.02 + 5e-4 * 114 = 0.077 above: "hovers around 8%"
    rng = np.random.default_rng(3)
    y = b0 + slope * np.minimum(X_RATIO, bp) + rng.normal(0, 0.002, X_RATIO.size)
    r = laws.fit_piecewise_linear(X_RATIO, y, above="flat")
    lo, hi = r.breakpoint_interval
    assert lo <= bp <= hi and hi - lo < 60
    assert r.slope_below_interval[0] <= slope <= r.slope_below_interval[1]
    assert r.slope_above == 0.0
    assert r.profile.rss.min() == pytest.approx(r.rss)
    assert r.predict(np.array([600.0]))[0] == pytest.approx(r.intercept + r.slope_below * r.breakpoint)
    assert set(r.to_row()) >= {"breakpoint", "breakpoint_lo", "breakpoint_hi", "slope_below_lo"}


def test_piecewise_linear_above_recovers_both_slopes():
    bp, s1, s2 = 100.0, 6e-4, 5e-5
    rng = np.random.default_rng(4)
    x = np.linspace(10, 400, 25)
    y = 0.02 + s1 * np.minimum(x, bp) + s2 * np.maximum(x - bp, 0) + rng.normal(0, 0.001, x.size)
    r = laws.fit_piecewise_linear(x, y, above="linear")
    assert r.breakpoint_interval[0] <= bp <= r.breakpoint_interval[1]
    assert r.slope_below_interval[0] <= s1 <= r.slope_below_interval[1]
    assert r.slope_above_interval[0] <= s2 <= r.slope_above_interval[1]
    with pytest.raises(ValueError, match="needs at least 5 points"):
        laws.fit_piecewise_linear(x[:4], y[:4], above="linear")


def test_piecewise_slope_interval_covers_every_accepted_breakpoint():
    rng = np.random.default_rng(3)
    y = 0.02 + 5e-4 * np.minimum(X_RATIO, 114.0) + rng.normal(0, 0.002, X_RATIO.size)
    r = laws.fit_piecewise_linear(X_RATIO, y, above="flat")
    assert r.inside  # a plateau of several points: the bottleneck is located inside the data
    # oracle: numpy least squares and the textbook t interval at every accepted breakpoint, by hand
    los, his = [], []
    for bp in r.profile.loc[r.profile["accepted"], "breakpoint"]:
        X = np.column_stack([np.ones_like(X_RATIO), np.minimum(X_RATIO, bp)])
        beta, rss = np.linalg.lstsq(X, y, rcond=None)[:2]
        se = math.sqrt(rss[0] / (y.size - 2) * np.linalg.inv(X.T @ X)[1, 1])
        t = stats.t.ppf(0.975, y.size - 2)
        los.append(beta[1] - t * se)
        his.append(beta[1] + t * se)
    assert r.slope_below_interval == pytest.approx((min(los), max(his)), rel=1e-9)
    at_best = np.asarray(r.ols.conf_int(alpha=0.05))[1]
    assert r.slope_below_interval[0] <= at_best[0] and at_best[1] <= r.slope_below_interval[1]


def test_piecewise_without_a_plateau_is_not_inside():
    rng = np.random.default_rng(4)
    y = 0.02 + 5e-4 * X_RATIO + rng.normal(0, 0.002, X_RATIO.size)  # one straight line, no bottleneck
    r = laws.fit_piecewise_linear(X_RATIO, y, above="flat")
    assert not r.inside and r.breakpoint_interval[1] == pytest.approx(np.unique(X_RATIO)[-2])
    assert r.to_row()["inside"] is False


def accepted_by_hand(x, y, level=0.95, per_gap=50):
    """The piecewise fit's profile, written out: candidates `per_gap` to a gap between the sorted distinct x
    from the 2nd to the next-to-last (two points at least on either side), least squares of y on
    [1, min(x, bp)] at each, accepted where F = (RSS - RSS_min) / (RSS_min / (n - 3)) <= F(level; 1, n - 3),
    3 parameters counting the breakpoint."""
    xs = np.unique(x)
    knots = xs[1:-1]
    cand = np.unique(np.concatenate([np.linspace(a, b, per_gap) for a, b in zip(knots[:-1], knots[1:])]))
    rss = np.array([np.linalg.lstsq(np.column_stack([np.ones_like(x), np.minimum(x, bp)]), y, rcond=None)[1][0]
                    for bp in cand])
    F = (rss - rss.min()) / (rss.min() / (x.size - 3))
    return cand, F <= stats.f.ppf(level, 1, x.size - 3)


def test_piecewise_candidates_and_f_test_by_hand():
    """Seed 6 puts one candidate's F between F(0.95; 1, 13) = 4.667 and F(0.95; 1, 12) = 4.747, so the
    degrees of freedom decide whether it is accepted."""
    y = 0.02 + 5e-4 * np.minimum(X_RATIO, 114.0) + np.random.default_rng(6).normal(0, 0.002, X_RATIO.size)
    r = laws.fit_piecewise_linear(X_RATIO, y, above="flat")
    cand, acc = accepted_by_hand(X_RATIO, y)
    assert r.profile["breakpoint"].to_numpy() == pytest.approx(cand)
    assert r.profile["accepted"].tolist() == acc.tolist()
    assert r.breakpoint_interval == pytest.approx((cand[acc].min(), cand[acc].max()))


def test_piecewise_interval_at_the_lower_edge_is_reported():
    y = 0.02 + 5e-4 * np.minimum(X_RATIO, 28.0) + np.random.default_rng(0).normal(0, 0.002, X_RATIO.size)
    r = laws.fit_piecewise_linear(X_RATIO, y, above="flat")
    _, acc = accepted_by_hand(X_RATIO, y)
    assert acc[0] and not acc[-1]  # the case under test: the interval reaches the lowest candidate only
    assert "edge of the candidate range" in r.message, r.message


def test_piecewise_fit_of_four_points_says_its_interval_is_the_whole_candidate_range():
    """cpu's width-depth A0: four runs, every candidate breakpoint accepted. "breakpoint 13.1 [12, 18.7]"
    read like a found interval; the message says that [12, 18.7] is all there was to choose from."""
    x, y = np.array([3.56, 12.0, 18.67, 96.0]), np.array([0.143, 0.175, 0.174, 0.184])
    r = laws.fit_piecewise_linear(x, y, above="flat")
    cand, acc = accepted_by_hand(x, y)
    assert acc.all() and r.breakpoint_interval == pytest.approx((12.0, 18.67))
    assert r.message == f"the interval is the whole candidate range (12 to 18.7): {laws.UNPLACED}"


def test_width_depth_and_scale_helpers_refuse_bad_input():
    """One line naming the input, not numpy's or statsmodels' error from inside (an SVD that did not
    converge, a zero-size reduction, a NaN best range, a silently ignored half interval)."""
    N, A0 = np.array([1.08e8, 2.41e8, 4.52e8, 7.6e8, 1.18e9]), np.array([.0614, .0674, .069, .0721, .0782])
    cases = [((N, np.r_[A0[:2], np.nan, A0[3:]]), {}, r"A0 is not finite at index \[2\] \(a fit that did not"),
             ((N, A0, A0 - 0.01), {}, "give both A0_lo and A0_hi"),
             ((N, A0, A0, A0), {}, r"A0_hi > A0_lo; not at index \[0, 1, 2, 3, 4\]"),
             ((N, A0, A0 - 0.01, np.r_[A0[:4], np.nan] + 0.01), {}, r"A0_hi is not finite at index \[4\]"),
             ((np.r_[0.0, N[1:]], A0), {}, r"N \(non-embedding parameters\) must be > 0; got min 0"),
             ((np.full(5, 1e8), A0), {}, "needs 2 or more distinct N, got 5 runs of N = 1e"),
             ((N[:4], A0), {}, "A0 has 5 values, N has 4"),
             ((N, A0), {"level": 95}, r"level: expected a confidence level strictly between 0 and 1 .*got 95")]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            laws.fit_A0_vs_scale(*args, **kwargs)
    with pytest.raises(ValueError, match="got 95"):
        laws.fit_piecewise_linear(X_RATIO, X_RATIO * 0.01, level=95)
    for x, loss, tol, match in (([1, 2, 3], [np.nan, 2.9, 2.8], 0.05, "1 of them not finite"),
                                ([], [], 0.05, "got 0 x, 0 losses"), ([1, 2], [3.0], 0.05, "got 2 x, 1 losses"),
                                ([1, 2], [3.0, 3.1], -0.1, "tol must be >= 0")):
        with pytest.raises(ValueError, match=match):
            laws.best_range(x, loss, tol)


def test_best_range_on_a_u_shaped_curve():
    x = np.array([14, 20, 28, 40, 57, 74, 100, 150, 200, 282, 400, 600], dtype=float)
    loss = 3.3 + 0.05 * (np.log(x) - np.log(150)) ** 2  # minimum at 150
    lo, hi = laws.best_range(x, loss, tol=0.02)
    # within tol where |log(x / 150)| <= sqrt(0.4) = 0.632, i.e. x in [79.7, 282.3]
    assert (lo, hi) == (100.0, 282.0)
    assert laws.best_range(x, loss, tol=0.0) == (150.0, 150.0)
    # a loss exactly at the minimum + tol is within it, on either side (3.0 + 0.5 = 3.5 exactly)
    assert laws.best_range([1, 2, 3, 4, 5, 6], [3.75, 3.5, 3.25, 3.0, 3.5, 3.75], tol=0.5) == (2.0, 5.0)
    # the range is the contiguous run around the minimum: 3.05 at x = 4 is within tol, 3.5 at x = 3 is not
    assert laws.best_range([1, 2, 3, 4, 5], [3.08, 3.0, 3.5, 3.05, 3.6], tol=0.1) == (1.0, 2.0)


# ----------------------------------------------------------------------------- scale


def test_A0_vs_scale_recovers_a_known_slope():
    N = np.array([1.08e8, 2.41e8, 4.52e8, 7.60e8, 1.18e9])
    slope = 0.015
    rng = np.random.default_rng(5)
    A0 = 0.06 + slope * np.log10(N / N[0]) + rng.normal(0, 0.001, N.size)
    r = laws.fit_A0_vs_scale(N, A0)
    assert r["slope_lo"] <= slope <= r["slope_hi"]
    assert r["change_fit"] == pytest.approx(r["slope"] * np.log10(N[-1] / N[0]))
    assert r["change_observed"] == pytest.approx(A0[-1] - A0[0])
    w = laws.fit_A0_vs_scale(N, A0, A0 - 0.002, A0 + 0.002)
    assert w["weighted"] and w["slope"] == pytest.approx(r["slope"])  # equal weights: same slope
    # the observed change runs from the smallest N to the largest, whatever the row order
    assert laws.fit_A0_vs_scale([1e7, 1e5, 1e6], [0.30, 0.10, 0.25])["change_observed"] == pytest.approx(0.20)


def test_A0_vs_scale_takes_the_wider_of_ols_and_known_errors():
    N = np.array([1e5, 3e5, 8e5, 2e6])
    A0 = np.array([0.20, 0.192, 0.193, 0.18])
    x = np.log10(N)
    sxx = np.sum((x - x.mean()) ** 2)
    z = 1.959963984540054
    # oracle 1: OLS by hand, t interval with n - 2 degrees of freedom
    b = np.polyfit(x, A0, 1)
    s2 = np.sum((A0 - np.polyval(b, x)) ** 2) / (x.size - 2)
    ols_half = stats.t.ppf(0.975, x.size - 2) * math.sqrt(s2 / sxx)
    for half, method in ((0.001, "OLS"), (0.2, "WLS, known errors")):
        r = laws.fit_A0_vs_scale(N, A0, A0 - half, A0 + half)
        assert r["method"] == method
        # oracle 2: equal known errors sigma = half / z give slope se sigma / sqrt(Sxx), normal quantiles
        known_half = z * (half / z) / math.sqrt(sxx)
        assert (r["slope_hi"] - r["slope_lo"]) / 2 == pytest.approx(max(ols_half, known_half))
        assert r["slope"] == pytest.approx(b[0])  # equal weights: the same line either way
    # at level 0.8 the A0 intervals are 80% ones: sigma = half / z_0.9, and the slope's interval is 80% too
    z80 = 1.2815515655446004  # the normal 0.9 quantile
    r = laws.fit_A0_vs_scale(N, A0, A0 - 0.2, A0 + 0.2, level=0.8)
    assert r["method"] == "WLS, known errors" and r["level"] == 0.8
    assert (r["slope_hi"] - r["slope_lo"]) / 2 == pytest.approx(z80 * (0.2 / z80) / math.sqrt(sxx))
    r = laws.fit_A0_vs_scale(N, A0, A0 - 0.001, A0 + 0.001, level=0.8)
    assert (r["slope_hi"] - r["slope_lo"]) / 2 == pytest.approx(stats.t.ppf(0.9, x.size - 2) * math.sqrt(s2 / sxx))
    # two precise points and two vague ones: the known-error interval is narrow, the runs scatter: OLS
    r = laws.fit_A0_vs_scale(N, A0, A0 - np.array([0.1, 0.001, 0.1, 0.001]), A0 + np.array([0.1, 0.001, 0.1, 0.001]))
    assert r["method"] == "OLS" and (r["slope_hi"] - r["slope_lo"]) / 2 == pytest.approx(ols_half)


def test_information_criteria_count_identified_parameters():
    assert [laws.FORMS[f].k for f in ("logspace_power", "power", "log", "sigmoid", "loss_power")] == [4, 3, 3, 3, 3]
    A = synthetic("log")
    r = laws.fit("log", D, A, n_boot=0)
    n, rss = D.size, float(np.sum(r.residuals**2))
    K = 3 + 1  # a/b, c, A0 + c*log(b), and the noise variance
    assert r.aic == pytest.approx(n * math.log(rss / n) + 2 * K)
    assert r.bic == pytest.approx(n * math.log(rss / n) + K * math.log(n))
    assert r.aicc == pytest.approx(r.aic + 2 * K * (K + 1) / (n - K - 1))
    assert laws.information_criteria(0.0, 5, 4)[2] == math.inf  # n <= K + 1: no AICc
    c = laws.compare_forms(D, A)
    assert c["aicc"].is_monotonic_increasing and set(c["k"]) == {3, 4}


def test_convergence_speed_matches_the_analytic_derivative():
    A = synthetic("power")
    r = laws.fit("power", D, A, n_boot=0)
    N = 1e8
    D_grid = np.geomspace(0.1, 50, 20)
    ratio, dA = laws.convergence_speed(r, N, D_grid)
    alpha, c = r.params["alpha"], r.params["c"]
    analytic = c * alpha * D_grid ** (-alpha - 1) * N / laws.TOKENS_PER_D  # dA/dD * dD/d(D/N)
    assert ratio == pytest.approx(D_grid * 1e9 / N)
    assert dA == pytest.approx(analytic, rel=1e-6)


def test_limit_loss_fit():
    rng = np.random.default_rng(6)
    E, B, beta = 3.1, 1.2, 0.4
    loss = laws.loss_power(D, E, B, beta) + rng.normal(0, 0.005, D.size)
    r = laws.fit_limit_loss(D, loss, n_boot=200)
    assert r.form == "loss_power" and r.converged, r.message
    for s, v in {"E": E, "B": B, "beta": beta}.items():
        assert inside(r, s, v), (s, r.intervals[s])


def test_laws_does_not_import_paper():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(laws))
    names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "paper" not in names and not any(m and "paper" in m for m in modules)


def test_residual_bootstrap_rescales_by_the_identified_parameters(monkeypatch):
    """Residual bootstrap draws from the centered residuals times sqrt(n / (n - k)), k the identified
    parameters (Form.k: 3 for the log form's 4 symbols): fitted residuals are smaller than the noise by
    about that factor, and only identified parameters absorb noise."""
    form, n = laws.FORMS["log"], D.size
    A = synthetic("log")
    spec = laws.FitSpec(n_boot=5, seed=0)
    fitted = laws.fit("log", D, A, n_boot=0)
    x = np.array([fitted.params[s] for s in form.symbols])
    pred = form.f(D, *x)
    r = A - pred
    want = np.unique(np.round((r - r.mean()) * math.sqrt(n / (n - 3)), 12))
    drawn = []
    def lsq(_form, _D, Ab, x0, _spec):
        drawn.append(np.round(Ab - pred, 12))
        return OptimizeResult(x=x0, status=1, cost=0.0)

    monkeypatch.setattr(laws, "_lsq", lsq)
    laws._bootstrap(form, D, A, x, spec)
    assert len(drawn) == 5 and np.isin(np.concatenate(drawn), want).all()


def test_form_null_simulates_with_the_bootstraps_rescaled_residuals(monkeypatch):
    """form_null's simulated sets are a fit plus residuals drawn from its centered residuals times
    sqrt(n / (n - k)), as _bootstrap draws them: the paper form's fit for p, then the best other form's for
    p_alt. A smaller noise would narrow the null distribution and reject a true law more often."""
    A = synthetic("log")

    def noise(name):  # (fitted curve, the rescaled residuals it is simulated with)
        form = laws.FORMS[name]
        fitted = laws.fit(name, D, A, n_boot=0)
        pred = form.f(D, *[fitted.params[s] for s in form.symbols])
        r = A - pred
        return pred, r - r.mean(), np.unique(np.round((r - r.mean()) * math.sqrt(D.size / (D.size - form.k)), 9))

    drawn, real = [], laws._refit

    def refit(f, D_, Ab, x, spec):
        if f is laws.FORMS["log"]:  # once per simulated set, the paper form's refit
            drawn.append(Ab)
        return real(f, D_, Ab, x, spec)

    monkeypatch.setattr(laws, "_refit", refit)
    out = laws.form_null(D, A, "log", ("power",), laws.FitSpec(n_boot=0, seed=0), n_sim=6)
    assert len(drawn) == 12 and out["n_ok"] == 6 and out["alt"] == "power" and out["n_alt"] == 6
    for sets, name in ((drawn[:6], "log"), (drawn[6:], "power")):
        pred, centered, want = noise(name)
        got = np.round(np.concatenate(sets) - np.tile(pred, 6), 9)
        assert np.isin(got, want).all(), name
        assert not np.isin(got, np.unique(np.round(centered, 9))).all()  # the scale matters


# ----------------------------------------------------------------------------- rules checked by hand


def test_power_starts_lie_above_the_data_and_pass_through_its_first_point():
    # Eq. 5 rises towards A0: every start has A0 above max(A), by 1%, 10% and 100% of the spread of A, and
    # c puts the starting curve through min(A) at the smallest D
    A = synthetic("power")
    starts = list(laws.FORMS["power"].starts(D, A, 3))
    assert len(starts) == 9
    assert sorted({round((s[2] - A.max()) / np.ptp(A), 9) for s in starts}) == [0.01, 0.1, 1.0]
    for s in starts:
        assert laws.power(D.min(), *s) == pytest.approx(A.min())


def test_one_start_per_axis_is_the_middle_of_each_range():
    # n_grid=1: the geometric middle of a log axis, the arithmetic middle of a linear one
    A = synthetic("logspace_power")
    ((alpha, b, c, A0),) = laws.FORMS["logspace_power"].starts(D, A, 1)
    Dm = math.exp(np.mean(np.log(D)))
    assert alpha == pytest.approx(math.sqrt(0.1 * 2))
    assert c * Dm**alpha == pytest.approx(math.sqrt(0.3 * 3))
    assert A0 == pytest.approx((0.5 + 0.95) / 2 * A.min())
    assert laws.logspace_power(D.min(), alpha, b, c, A0) == pytest.approx(A.max())  # through max(A) at min(D)


def test_drop_first_frac_rounds_down():
    A = synthetic("power")
    r = laws.fit("power", D, A, n_boot=0, holdout_frac=0.0, drop_first_frac=0.1)  # 0.1 * 32 = 3.2: 3 points
    assert [d["index"] for d in r.dropped] == [0, 1, 2] and r.n_used == D.size - 3
    assert {d["reason"] for d in r.dropped} == {"drop_first_frac=0.1"}


def test_robust_loss_uses_its_f_scale():
    # oracle: scipy's least_squares on the same residuals, loss and f_scale, started at the truth
    A = synthetic("power")
    A[20] += 0.05
    r = laws.fit("power", D, A, n_boot=0, holdout_frac=0.0, loss="soft_l1", f_scale=2 * SD)
    ref = optimize.least_squares(lambda p: laws.power(D, *p) - A, list(TRUTH["power"].values()), loss="soft_l1",
                                 f_scale=2 * SD, ftol=1e-12, xtol=1e-12, gtol=1e-12)
    assert ref.success and list(r.params.values()) == pytest.approx(ref.x, rel=1e-6)


@pytest.mark.parametrize("options", [{"log_residuals": True}, {"loss": "soft_l1", "f_scale": 2 * SD}])
def test_residual_bootstrap_resamples_centered_residuals_with_replacement(monkeypatch, options):
    """Resample i is pred + e (log_residuals: pred * exp(e)), e drawn with replacement from the centered
    residuals A - pred (log(A) - log(pred)) times sqrt(n / (n - k)). Least-squares residuals of these forms
    average 0 at an interior fit (A0, or exp(b) and A0 together, absorb any shift); those of a robust loss
    with an outlier do not, so there centering changes the values."""
    form, n = laws.FORMS["power"], D.size
    A = synthetic("power")
    A[20] += 0.05
    fitted = laws.fit("power", D, A, n_boot=0, holdout_frac=0.0, **options)
    x = np.array([fitted.params[s] for s in form.symbols])
    pred = form.f(D, *x)
    log_residuals = options.get("log_residuals", False)
    e = np.log(A) - np.log(pred) if log_residuals else A - pred
    if not log_residuals:
        assert abs(e.mean()) > 1e-4  # the case under test: centering moves every value
    want = (e - e.mean()) * math.sqrt(n / (n - 3))
    drawn = []

    def lsq(_form, _D, Ab, x0, _spec):
        drawn.append(np.log(Ab / pred) if log_residuals else Ab - pred)
        return OptimizeResult(x=x0, status=1, cost=0.0)

    monkeypatch.setattr(laws, "_lsq", lsq)
    laws._bootstrap(form, D, A, x, dataclasses.replace(fitted.spec, n_boot=5))
    assert len(drawn) == 5
    for d in drawn:
        assert np.abs(d[:, None] - want[None, :]).min(axis=1).max() < 1e-12
        assert np.unique(np.round(d, 12)).size < n  # drawn with replacement: some residual repeats


def test_pairs_bootstrap_draws_every_point_and_skips_degenerate_resamples(monkeypatch):
    # 6 points, Eq. 5 (3 parameters): a resample with fewer than 4 distinct D is not fitted (its row is NaN)
    form = laws.FORMS["power"]
    Dn = np.geomspace(0.01, 100, 6)
    A = laws.power(Dn, **TRUTH["power"]) + np.random.default_rng(7).normal(0, SD, Dn.size)
    x = np.array(list(TRUTH["power"].values()))
    calls, real = [], laws._lsq

    def spy(f, Db, Ab, x0, spec):
        res = real(f, Db, Ab, x0, spec)
        calls.append((np.array(Db), laws._ok(res)))
        return res

    monkeypatch.setattr(laws, "_lsq", spy)
    boot = laws._bootstrap(form, Dn, A, x, laws.FitSpec(n_boot=200, bootstrap="pairs", seed=0))
    assert 0 < len(calls) < 200  # both kinds of resample happen
    assert all(np.unique(Db).size >= 4 for Db, _ in calls)
    assert np.isnan(boot).all(axis=1).sum() == 200 - sum(ok for _, ok in calls)
    assert set(np.concatenate([Db for Db, _ in calls])) == set(Dn)  # every point can be drawn


def test_holdout_needs_as_many_points_before_the_split_as_a_fit():
    # Eq. 4 has 4 parameters and needs 5 points; 6 points with holdout_frac 0.2 leave 4 before the split
    Dn = np.geomspace(0.01, 100, 6)
    r = laws.fit("logspace_power", Dn, laws.logspace_power(Dn, **TRUTH["logspace_power"]), n_boot=0)
    h = r.holdout
    assert (h["n_fit"], h["n_test"]) == (4, 2)
    assert h["message"] == "too few points to fit before the split (4)"
    assert not h["converged"] and np.isnan(h["mse"]) and np.isnan(h["mae"])


def test_holdout_error_is_that_of_a_fit_on_the_earlier_points():
    A = synthetic("power")
    r = laws.fit("power", D, A, n_boot=0, holdout_frac=0.25)  # 8 largest-D points held out
    early = laws.fit("power", D[:24], A[:24], n_boot=0, holdout_frac=0.0)
    err = A[24:] - laws.power(D[24:], **early.params)
    assert r.holdout["mse"] == pytest.approx(np.mean(err**2), rel=1e-9)
    assert r.holdout["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-9)
    assert r.holdout["converged"] == early.converged


def test_aicc_is_infinite_only_up_to_k_plus_two_points():
    # K = k + 1 = 5: AICc needs n > K + 1 = 6
    assert laws.information_criteria(0.0, 6, 4)[2] == math.inf
    assert laws.information_criteria(0.0, 7, 4) == pytest.approx((10.0, 5 * math.log(7), 10.0 + 2 * 5 * 6 / 1))


def test_intervals_need_enough_converged_resamples(monkeypatch):
    # 10 of 50 resamples failed: 40 < min_boot_ok 0.9 * 50, no intervals (failed rows do not count)
    A = synthetic("power")
    real = laws._bootstrap

    def fewer(form, Du, Au, x, spec):
        out = real(form, Du, Au, x, spec)
        out[:10] = np.nan
        return out

    monkeypatch.setattr(laws, "_bootstrap", fewer)
    r = laws.fit("power", D, A, n_boot=50, holdout_frac=0.0)
    assert r.converged and all(np.isnan(v).all() for v in r.intervals.values())
    assert "only 40/50 bootstrap resamples converged: no intervals" in r.message


@pytest.mark.parametrize("level,q", [(0.95, 2.5), (0.8, 10.0)])
def test_intervals_and_band_are_bootstrap_percentiles(level, q):
    A = synthetic("logspace_power")
    r = laws.fit("logspace_power", D, A, n_boot=40, holdout_frac=0.0, level=level)
    assert r.converged and np.isfinite(r.boot).all()
    row = r.to_row()
    for j, s in enumerate(laws.FORMS["logspace_power"].symbols):
        lo, hi = np.percentile(r.boot[:, j], [q, 100 - q])
        assert r.intervals[s] == pytest.approx((lo, hi), rel=1e-12)
        assert (row[f"{s}_lo"], row[f"{s}_hi"]) == r.intervals[s] and row[s] == r.params[s]
    grid = np.geomspace(0.01, 100, 7)
    curves = np.array([np.exp(-c * grid**alpha + b) + A0 for alpha, b, c, A0 in r.boot])
    lo, hi = r.band(grid)
    assert lo == pytest.approx(np.percentile(curves, q, axis=0), rel=1e-12)
    assert hi == pytest.approx(np.percentile(curves, 100 - q, axis=0), rel=1e-12)


def test_compare_forms_ranks_by_aicc_not_aic():
    # 10 points of the sigmoid form: Eq. 4 (4 identified parameters) fits them better and wins on AIC by 4.7,
    # but its small-sample penalty is 7 larger, so the sigmoid (3) comes first by AICc
    Dn = np.geomspace(0.01, 100, 10)
    A = laws.sigmoid(Dn, **TRUTH["sigmoid"]) + np.random.default_rng(5).normal(0, SD, Dn.size)
    t = laws.compare_forms(Dn, A, forms=("logspace_power", "sigmoid"))
    n = Dn.size
    K = t["k"] + 1
    by_hand = n * np.log(t["mse"]) + 2 * K + 2 * K * (K + 1) / (n - K - 1)
    assert t["aicc"].to_numpy() == pytest.approx(by_hand.to_numpy())
    assert list(t["form"]) == ["sigmoid", "logspace_power"] and t["aicc"].is_monotonic_increasing
    assert t["aic"].iloc[1] < t["aic"].iloc[0]  # the case under test: AIC would order them the other way


# a ReLU run of the cpu profile: 11 checkpoints from 0.2M to 3M tokens (D in 1e9), Eq. 4 with its noise
RELU_D = np.geomspace(2e-4, 3e-3, 11)
RELU_EQ4 = {"alpha": 1.0, "b": -3.0, "c": 800.0, "A0": 0.19}
OTHERS = ("power", "log", "sigmoid")


def test_form_null_does_not_reject_a_true_eq4_that_the_2_aicc_rule_rejects():
    """Eq. 4 is the truth: AICc keeps it within 2 of the best three-parameter form on few of these data
    sets, but its gap is no larger than on data simulated from its own fit, so p is not small."""
    fast = laws.FitSpec(n_grid=2, n_boot=30)
    within, rejected = 0, 0
    for seed in range(8):
        A = laws.logspace_power(RELU_D, **RELU_EQ4) + np.random.default_rng(seed).normal(0, 0.002, RELU_D.size)
        t = laws.compare_forms(RELU_D, A, ("logspace_power", *OTHERS), fast)
        gap = float(t.loc[t["form"] == "logspace_power", "aicc"].iloc[0] - t.loc[t["form"] != "logspace_power",
                                                                                   "aicc"].min())
        r = laws.form_null(RELU_D, A, "logspace_power", OTHERS, fast)
        assert r["delta"] == pytest.approx(gap) and r["n_ok"] >= 27  # the table's gap, tested
        within += gap <= 2
        rejected += r["p"] < 0.05
    assert within <= 3 and rejected <= 1  # 8 true laws: the 2-AICc rule drops most, the test at most one


def test_form_null_rejects_eq4_on_sigmoid_data():
    fast = laws.FitSpec(n_grid=2, n_boot=30)
    A = laws.sigmoid(RELU_D, 1.15, 1.0, -3000.0, 2.0) + np.random.default_rng(1).normal(0, 0.001, RELU_D.size)
    r = laws.form_null(RELU_D, A, "logspace_power", OTHERS, fast)
    assert r["delta"] > 10 and r["p"] == pytest.approx(1 / 31)  # no simulated gap reaches the observed one


def test_form_null_favours_eq4_when_the_other_forms_cannot_imitate_it():
    """The test the other way: Eq. 4 with a transient over two decades of D (16 points) is beaten by no other
    form, and it beats the best of them (the logarithmic form) by more than it does on data that form made:
    p_alt is the least it can be, 1/31, while p is not small. On the sigmoid data that reject Eq. 4, and on
    cpu-like data where the sigmoid-like form imitates Eq. 4 within the noise, p_alt is not small."""
    fast = laws.FitSpec(n_grid=2, n_boot=30)
    D16 = np.geomspace(1e-4, 1e-2, 16)
    A = laws.logspace_power(D16, 0.5, -2.0, 30.0, 0.19) + np.random.default_rng(0).normal(0, 5e-4, D16.size)
    r = laws.form_null(D16, A, "logspace_power", OTHERS, fast)
    assert r["delta"] < -20 and r["alt"] == "log" and r["n_alt"] == 30
    assert r["p_alt"] == pytest.approx(1 / 31) and r["p"] > 0.2
    A = laws.sigmoid(RELU_D, 1.15, 1.0, -3000.0, 2.0) + np.random.default_rng(1).normal(0, 0.001, RELU_D.size)
    r = laws.form_null(RELU_D, A, "logspace_power", OTHERS, fast)
    assert r["alt"] == "sigmoid" and r["p_alt"] > 0.2
    A = laws.logspace_power(RELU_D, **RELU_EQ4) + np.random.default_rng(0).normal(0, 0.002, RELU_D.size)
    r = laws.form_null(RELU_D, A, "logspace_power", OTHERS, fast)
    assert r["p_alt"] > 0.2 and r["p"] > 0.05


def test_form_null_without_a_finite_aicc_or_simulations_is_no_test():
    A = laws.logspace_power(RELU_D, **RELU_EQ4)
    six = laws.form_null(RELU_D[:6], A[:6], "logspace_power", OTHERS, laws.FitSpec(n_grid=2, n_boot=10))
    assert math.isnan(six["p"]) and six["n_ok"] == 0  # Eq. 4's AICc is infinite at 6 points (K = 5)
    assert math.isnan(six["p_alt"]) and six["n_alt"] == 0
    none = laws.form_null(RELU_D, A, "logspace_power", OTHERS, laws.FitSpec(n_grid=2, n_boot=0))
    assert math.isnan(none["p"]) and np.isfinite(none["delta"]) and math.isnan(none["p_alt"])


@pytest.mark.parametrize("name", ["log", "sigmoid"])
def test_refit_holds_the_redundant_parameter_and_finds_the_same_optimum(name):
    """Holding b (which acts only with a, or with d) reaches the free fit's residual sum of squares."""
    form = laws.FORMS[name]
    rng = np.random.default_rng(3)
    A = laws.logspace_power(RELU_D, **RELU_EQ4) + rng.normal(0, 0.002, RELU_D.size)
    spec = laws.FitSpec(n_grid=2)
    best, _ = laws._multistart(form, RELU_D, A, spec)
    A2 = A + rng.normal(0, 0.001, RELU_D.size)
    x = laws._refit(form, RELU_D, A2, best.x, spec)
    free = optimize.least_squares(lambda th: form.f(RELU_D, *th) - A2, best.x, bounds=(form.lower, form.upper),
                                  method="trf", ftol=1e-12, xtol=1e-12, gtol=1e-12, max_nfev=20000)
    j = form.symbols.index(form.redundant)
    assert x[j] == best.x[j]
    rss = np.sum((form.f(RELU_D, *x) - A2) ** 2)
    assert rss == pytest.approx(2 * free.cost, rel=1e-4)


def test_a_decay_carried_by_one_point_is_not_a_converged_law():
    """Flat data (sd 0.002) whose first point sits 0.006 high: Eq. 4 puts its transient on that point and
    passes every other check, but it fits no better than a constant (F-test by hand), so it has not
    converged and gets no A0 interval."""
    A = 0.2 + np.random.default_rng(3).normal(0, 0.002, RELU_D.size)
    A[0] += 0.006
    r = laws.fit("logspace_power", RELU_D, A, laws.FitSpec(n_grid=2, n_boot=20))
    rss, rss0, n = float(np.sum(r.residuals**2)), float(np.sum((A - A.mean()) ** 2)), A.size
    F = (rss0 - rss) / 3 / (rss / (n - 4))
    assert laws.constant_test(laws.FORMS["logspace_power"], RELU_D, A, np.array(list(r.params.values()))) == \
        pytest.approx((F, stats.f.sf(F, 3, n - 4)))
    assert stats.f.sf(F, 3, n - 4) > 0.05 and not r.converged and math.isnan(r.intervals["A0"][0])
    fails = [m for m in r.message.split("; ")[1:] if not m.startswith(("nuisance", "not separately", "no bootstrap"))]
    assert len(fails) == 1 and fails[0].startswith("the law fits no better than a constant")  # the one reason
    A[0] += 0.02  # a clear early transient over several points fits far better than a constant
    A[1:3] += [0.01, 0.004]
    assert laws.fit("logspace_power", RELU_D, A, laws.FitSpec(n_grid=2, n_boot=0)).converged


def _log_grid_oracle(D, A):
    """Least RSS of the logarithmic form's closure, c * log(1 + r*D) + A0' (r = a/b), independently of `fit`:
    linear in (c, A0') for fixed r, so a dense grid of r with a closed-form solve, plus its two limits, the
    pure log (r -> inf: A on log D) and the line (r -> 0: A on D)."""
    rs = np.geomspace(1e-4 / D.max(), 1e8 / D.min(), 6000)
    bases = [np.log1p(r * D) for r in rs] + [np.log(D), D]
    return min(float(np.linalg.lstsq(np.column_stack([g, np.ones_like(D)]), A, rcond=None)[1].sum())
               for g in bases)


@pytest.mark.parametrize("seed", range(8))
def test_the_log_form_reaches_the_least_squares_minimum_of_its_closure(seed):
    """A weak logarithmic trend in noise (a flat cpu run's shape), where the best fit can lie at the form's
    pure-log limit (a/b -> inf): moved in log(a), the fit reaches the grid oracle's RSS on all 8 seeds; moved
    in a itself it stopped 0.04% and 0.5% above it on two (checked by setting `chart=None`)."""
    A = -0.002 * np.log(RELU_D) + 0.18 + np.random.default_rng(seed).normal(0, 0.002, RELU_D.size)
    r = laws.fit("log", RELU_D, A, n_boot=0)
    rss, oracle = float(np.sum(r.residuals**2)), _log_grid_oracle(RELU_D, A)
    assert 0.999 * oracle <= rss <= 1.0001 * oracle, (rss / oracle, r.message)


def _sigmoid_oracle(D, A):
    """Least RSS of the sigmoid-like form a - 1/(1 + exp(c*D + d)) (b*exp(d) is one parameter), independently of
    `fit`: linear in a for fixed (c, d), so a grid of (c, d) (|c| * span(D) from 1e-2 to 1e6, c*D + d over
    [-40, 40] beyond the data) with a in closed form, then the 10 best grid points polished by Nelder-Mead."""
    def rss(c, d):
        with np.errstate(over="ignore"):
            r = A + 1 / (1 + np.exp(c * D + d))
        return float(((r - r.mean()) ** 2).sum())

    cands = []
    for c in np.concatenate([-np.geomspace(1e-2, 1e6, 150), np.geomspace(1e-2, 1e6, 150)]) / np.ptp(D):
        lo, hi = sorted((-c * D.min(), -c * D.max()))
        ds = np.linspace(lo - 40, hi + 40, 400)
        with np.errstate(over="ignore"):
            r = A[None, :] + 1 / (1 + np.exp(c * D[None, :] + ds[:, None]))
        grid = ((r - r.mean(1, keepdims=True)) ** 2).sum(1)
        cands.append((grid.min(), c, ds[grid.argmin()]))
    cands.sort()
    polished = [optimize.minimize(lambda p, c=c: rss(p[0] * c, p[1]), [1.0, d], method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-16, "maxiter": 4000}).fun
                for _, c, d in cands[:10]]
    return min(cands[0][0], *polished)


def test_the_sigmoid_form_mostly_reaches_the_least_squares_minimum_on_flat_data():
    """Flat data in noise (a ReLU run that has converged): the sigmoid-like form's least squares has many
    local minima (fast exponential tails, c*D + d far from 0). Moving the midpoint -d/c in place of d, the
    fit from the cpu profile's 8 starts reaches the oracle's RSS (within 0.1%) on 10 of these 12 data sets;
    in (c, d) it did on 8 (checked by setting `chart=None`): a better chance, not a guarantee."""
    form, spec, ratios = laws.FORMS["sigmoid"], laws.FitSpec(n_grid=2), []
    for seed in range(12):
        A = 0.18 + np.random.default_rng(seed).normal(0, 0.002, RELU_D.size)
        best, _ = laws._multistart(form, RELU_D, A, spec)
        ratios.append(2 * best.cost / _sigmoid_oracle(RELU_D, A))
    assert min(ratios) > 0.999, ratios  # the oracle is the least RSS
    assert sum(r <= 1.001 for r in ratios) >= 10, np.round(ratios, 4)
