"""claims.py: every claim's check on synthetic tables with known answers (a clear PASS, a clear FAIL and
an INCONCLUSIVE case each), the p-values against scipy's own computations, the README block
replacement, evaluate/write on a synthetic results folder, and `python -m sparsinglaw verify` and `fit`."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from conftest import REPO
from sparsinglaw import analysis, claims, config, laws, runs
from sparsinglaw.config import SparsingLawError

# -----------------------------------------------------------------------------------------------
# synthetic tables


def fits(rows) -> pd.DataFrame:
    """fits.csv rows: (run, activation, groups, rho_tokens, n_used)."""
    return pd.DataFrame([{"run": r, "activation": a, "groups": g, "rho_tokens": rho, "n_used": n, "n_points": 24}
                         for r, a, g, rho, n in rows])


def verdict(row_or_rows, cid=None) -> str:
    rows = row_or_rows if isinstance(row_or_rows, list) else [row_or_rows]
    return next(r for r in rows if cid is None or r["id"] == cid)["verdict"]


# -----------------------------------------------------------------------------------------------
# statistics against independent computations


def test_spearman_p_and_stouffer_match_scipy():
    rng = np.random.default_rng(0)
    ps, rhos = [], []
    for slope, n in ((-1.0, 16), (-0.3, 15), (0.2, 20)):  # above EXACT_MAX = 14: the t approximation
        x = np.arange(n, dtype=float)
        y = slope * x / n + rng.normal(0, 0.3, n)
        r = stats.spearmanr(x, y, alternative="less")
        rhos.append((r.statistic, n))
        ps.append(r.pvalue)
        assert claims.spearman_p(r.statistic, n, "less") == pytest.approx(r.pvalue, rel=1e-9)
        assert claims.spearman_p(r.statistic, n, "greater") == pytest.approx(
            stats.spearmanr(x, y, alternative="greater").pvalue, rel=1e-9)
    expect = stats.combine_pvalues(ps, method="stouffer").pvalue
    assert claims.stouffer(ps) == pytest.approx(expect, rel=1e-9)
    # the combined p that relu_falls reports is that same number
    row = claims.relu_falls(fits([(f"relu-s{i}", "relu", "scale", rho, n) for i, (rho, n) in enumerate(rhos)]))
    got = float(re.search(r"combined p\(rho < 0\) = ([0-9.e+-]+),", row["value"]).group(1))
    assert got == pytest.approx(expect, rel=0.05)


@pytest.mark.parametrize("n", [3, 5, 7, 8, 9])
def test_spearman_p_is_exact_for_few_points(n):
    """Up to EXACT_MAX points the per-run p is the exact permutation p (scipy's permutation test over every
    ordering as the oracle), not the t approximation, which gives p = 0 for a perfect trend at any n."""
    rng = np.random.default_rng(n)
    x = np.arange(n, dtype=float)

    def rho_of(yy, axis):  # Spearman's rho of x against every resample at once (untied ranks: Pearson of ranks)
        r = stats.rankdata(yy, axis=axis) - (n + 1) / 2
        return (r @ (x - x.mean())) / (np.linalg.norm(r, axis=axis) * np.linalg.norm(x - x.mean()))

    for y in (x[::-1].copy(), rng.permutation(n).astype(float), x.copy()):
        rho = stats.spearmanr(x, y).statistic
        assert rho_of(y, -1) == pytest.approx(rho)
        for alt in ("less", "greater"):
            ref = stats.permutation_test((y,), rho_of, permutation_type="pairings", alternative=alt,
                                         n_resamples=np.inf, vectorized=True).pvalue
            assert claims.spearman_p(rho, n, alt) == pytest.approx(ref), (y, alt)
    assert claims.spearman_p(-1.0, 3, "less") == pytest.approx(1 / 6)
    assert claims.spearman_p(-1.0, 8, "less") == pytest.approx(1 / 40320)
    # above it the t approximation, which gives 0 for a perfect trend, kept at the exact p of one: 1/n!
    assert claims.spearman_p(-1.0, 15, "less") == pytest.approx(1 / math.factorial(15), rel=1e-9)
    row = claims.relu_falls(fits([(f"relu-s{i}", "relu", "scale", -1.0, 3) for i in range(2)]))
    assert row["verdict"] == "INCONCLUSIVE"  # two perfect 3-point trends: combined p 0.09, not significant


@pytest.mark.parametrize("n", [11, 14])
def test_spearman_p_of_many_points_matches_a_monte_carlo_permutation_test(n):
    """Between ENUM_MAX and EXACT_MAX points the exact p comes from the distribution of the sum of squared
    rank differences (dynamic programming); the oracle: scipy's permutation test on 400,000 random orderings
    (standard error at p = 0.05: 0.00034). The t approximation is off by more here (n = 11, rho = -0.6:
    0.0255 against an exact 0.0281), and the tables' 11-point trends are judged on these p-values."""
    rng = np.random.default_rng(n)
    x = np.arange(n, dtype=float)

    def rho_of(yy, axis):
        r = stats.rankdata(yy, axis=axis) - (n + 1) / 2
        return (r @ (x - x.mean())) / (np.linalg.norm(r, axis=axis) * np.linalg.norm(x - x.mean()))

    for y in (rng.permutation(n).astype(float), -x + rng.normal(0, 4, n), x + rng.normal(0, 6, n)):
        rho = stats.spearmanr(x, y).statistic
        for alt in ("less", "greater"):
            ref = stats.permutation_test((y,), rho_of, permutation_type="pairings", alternative=alt,
                                         n_resamples=400_000, vectorized=True, batch=50_000, rng=rng).pvalue
            se = math.sqrt(max(ref * (1 - ref), 1e-4) / 400_000)
            assert claims.spearman_p(rho, n, alt) == pytest.approx(ref, abs=4 * se), (y, alt)
    assert claims._sum_sq_counts(n).sum() == math.factorial(n)  # every ordering counted once
    t_approx = stats.t.cdf(-0.6 * math.sqrt(9 / 0.64), 9)
    assert claims.spearman_p(-0.6, 11, "less") > t_approx + 0.002


def test_seed_replicas_of_one_shape_are_one_piece_of_evidence():
    """Two shapes whose activation ratio falls clearly and three seeds of a third shape rising a little:
    counted run by run the seeds outvote the two shapes (2 of 5 runs fall: INCONCLUSIVE); counted by shape
    (seeds combined by Stouffer first) 2 of 3 shapes fall, and the combined p is Stouffer's over the shapes,
    computed here by hand from scipy's normal distribution."""
    n = 11
    rows = [("relu-s2", "scale", -0.9, 40), ("relu-s3", "scale", -0.9, 64)] + [
        (name, "scale,seeds" if name == "relu-s1" else "seeds", 0.2, 32)
        for name in ("relu-s1", "relu-s1-seed1", "relu-s1-seed2")]
    f = pd.DataFrame([{"run": r, "activation": "relu", "groups": g, "rho_tokens": rho, "n_used": n, "n_points": 16,
                       "d_model": d, "n_layers": 4, "non_embedding_params": 12 * d * d * 4} for r, g, rho, d in rows])
    row = claims.relu_falls(f)
    z_fall = stats.norm.isf(claims.spearman_p(-0.9, n, "less"))
    z_seed = stats.norm.isf(claims.spearman_p(0.2, n, "less"))
    expect = stats.norm.sf((2 * z_fall + 3 * z_seed / math.sqrt(3)) / math.sqrt(3))
    got = float(re.search(r"combined p\(rho < 0\) = ([0-9.e+-]+),", row["value"]).group(1))
    assert got == pytest.approx(expect, rel=0.05) and expect < claims.ALPHA
    assert row["verdict"] == "PASS" and row["n"] == 3
    assert row["value"].startswith("2/3 shapes rho < 0 (5 runs: seed replicas of one shape combined first)")
    runs_alone = claims.relu_falls(f.drop(columns=["d_model"]))  # without the shape columns: each run a shape
    assert runs_alone["verdict"] == "INCONCLUSIVE" and runs_alone["value"].startswith("2/5 shapes rho < 0,")


def test_perfect_opposite_trends_cancel():
    """Two runs of 15 points, one perfectly falling and one perfectly rising, are no evidence either way
    (the t approximation's p = 0 and p = 1 used to weigh z = +37 against z = -8: both directions 'significant')."""
    n = 15
    floor = 1 / math.factorial(n)
    assert claims.spearman_p(-1.0, n, "less") == pytest.approx(floor, rel=1e-9)
    assert claims.spearman_p(-1.0, n, "greater") == pytest.approx(1 - floor, rel=1e-9)
    for rho in (-1.0, -0.999, -0.5, 0.0, 0.7, 1.0):  # the two directions add up to 1 above EXACT_MAX
        assert claims.spearman_p(rho, n, "less") + claims.spearman_p(rho, n, "greater") == pytest.approx(1.0)
    assert claims.stouffer([0.0, 1.0]) == pytest.approx(0.5)  # clipped symmetrically
    row = claims.relu_falls(fits([("relu-s1", "relu", "scale", -1.0, n), ("relu-s2", "relu", "scale", 1.0, n)]))
    assert row["verdict"] == "INCONCLUSIVE"
    assert row["value"].startswith("1/2 shapes rho < 0, combined p(rho < 0) = 0.5, p(rho > 0) = 0.5; ")
    row = claims.relu_falls(fits([("relu-s1", "relu", "scale", -1.0, n)] +
                                 [(f"relu-s{i}", "relu", "scale", 0.99, n) for i in (2, 3)]))
    assert row["verdict"] == "FAIL"  # two near-perfect rises outweigh one perfect fall, and only that way
    p_claim, p_opp = map(float, re.search(r"p\(rho < 0\) = (\S+), p\(rho > 0\) = (\S+);", row["value"]).groups())
    assert p_claim > 0.5 and p_opp < claims.ALPHA


@pytest.mark.parametrize("y,alternative", [([4, 3, 2, 1], "less"), ([1, 2, 4, 3], "greater"),
                                           ([2, 1, 4, 3], "greater"), ([3, 1, 2, 2], "less")])
def test_permutation_p_matches_scipy(y, alternative):
    x = [1e4, 2e4, 5e4, 1e5]

    def rho(yy):
        return stats.spearmanr(x, yy).statistic

    ref = stats.permutation_test((y,), rho, permutation_type="pairings", alternative=alternative).pvalue
    assert claims.permutation_p(x, y, alternative) == pytest.approx(ref)


def test_permutation_p_is_exact_up_to_eight_points():
    """8 runs (ENUM_MAX), speeds with ties: every one of the 8! orderings of the tied ranks, scipy's exact
    permutation test as the oracle (spearman_p's null of untied ranks gives another p here)."""
    x = np.array([1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6])
    y = np.array([2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0])

    def rho(yy, axis):  # Spearman's rho against x: Pearson of the (average) ranks
        r = stats.rankdata(yy, axis=axis) - 4.5
        xr = np.arange(8) - 3.5
        return (r @ xr) / (np.linalg.norm(r, axis=axis) * np.linalg.norm(xr))

    for alt in ("less", "greater"):
        ref = stats.permutation_test((y,), rho, permutation_type="pairings", alternative=alt, n_resamples=np.inf,
                                     vectorized=True).pvalue
        assert claims.permutation_p(x, y, alt) == pytest.approx(ref)
    untied = claims.spearman_p(stats.spearmanr(x, y).statistic, 8, "less")
    assert claims.permutation_p(x, y, "less") > 2 * untied  # the case under test: ties change the null


def test_spearman_p_of_fewer_than_three_points_is_no_evidence():
    for rho, alt in itertools.product((-1.0, 1.0), ("less", "greater")):
        assert claims.spearman_p(rho, 2, alt) == 0.5


# -----------------------------------------------------------------------------------------------
# one clear PASS, FAIL and INCONCLUSIVE per claim


@pytest.mark.parametrize("rhos,expect", [
    ([-0.9, -0.8, -0.95], "PASS"),
    ([0.9, 0.8, 0.95], "FAIL"),
    ([-0.9, 0.8, -0.2], "INCONCLUSIVE"),
    ([-0.9, -0.8, 0.3], "PASS"),  # most runs fall and the combined p is small: one run the other way is noise
    ([-0.9, -0.8, np.nan], "PASS"),  # a run without a trend counts as p = 0.5, and not as falling
    ([-0.9, np.nan, np.nan], "INCONCLUSIVE"),  # 1 of 3 falling is not most
    ([0.9, 0.8, -0.3], "FAIL"),  # the same rule the other way
    ([0.99, 0.95, -0.3, -0.2], "INCONCLUSIVE"),  # combined p(rho > 0) 2e-8, but only 2 of 4 rise
])
def test_relu_falls(rhos, expect):
    f = fits([(f"relu-s{i}", "relu", "scale", r, 16) for i, r in enumerate(rhos)])
    assert verdict(claims.relu_falls(f)) == expect


def test_trend_uses_scale_and_seed_runs_only():
    f = fits([("relu-s1", "relu", "scale", -0.9, 16), ("relu-s1-seed1", "relu", "seeds", -0.8, 16),
              ("relu-s2", "relu", "scale,width_depth", -0.7, 16), ("relu-wd1", "relu", "width_depth", 0.9, 16)])
    row = claims.relu_falls(f)
    assert row["verdict"] == "PASS" and row["n"] == 3 and "relu-wd1" not in row["value"]
    f.loc[1, "rho_tokens"] = 0.3  # a seed replica going the other way: 2 of 3 fall, still PASS
    assert claims.relu_falls(f)["verdict"] == "PASS"
    f.loc[2, "rho_tokens"] = 0.9  # and a scale run too: 1 of 3
    assert claims.relu_falls(f)["verdict"] != "PASS"
    assert claims.relu_falls(f.iloc[3:])["verdict"] == "INCONCLUSIVE"  # no scale/seeds runs


@pytest.mark.parametrize("rhos,expect", [([0.9, 0.7], "PASS"), ([-0.9, -0.7], "FAIL"), ([0.3, -0.2], "INCONCLUSIVE")])
def test_silu_rises(rhos, expect):
    f = fits([(f"silu-s{i}", "silu", "scale", r, 16) for i, r in enumerate(rhos)]
             + [("relu-s1", "relu", "scale", 0.99, 16)])
    assert verdict(claims.silu_rises(f)) == expect


def comparison(delta_by_run: dict, converged=True, null_p=None, alt_p=None) -> pd.DataFrame:
    """form_comparison rows: the paper form's dAICc per run, its null_p and alt_p (run -> p; default 0.5)."""
    rows = []
    for run, d in delta_by_run.items():
        act = run.split("-")[0]
        for form in ("logspace_power", "power", "log", "sigmoid"):
            paper = form == ("logspace_power" if act == "relu" else "power")
            rows.append({"run": run, "activation": act, "form": form, "paper_form": paper,
                         "converged": converged or not paper, "delta_aic": 0.0,  # AIC is not what counts
                         "delta_aicc": d if paper else 0.0, "aicc": -100 + (d if paper else 0.0),
                         "null_p": (null_p or {}).get(run, 0.5) if paper else np.nan, "null_n": 100 if paper else 0,
                         "alt_form": "sigmoid" if paper else "", "alt_n": 100 if paper else 0,
                         "alt_p": (alt_p or {}).get(run, 0.5) if paper else np.nan})
    return pd.DataFrame(rows)


SMALL = {"relu-s1": 0.01, "relu-s2": 0.01, "silu-s1": 0.001, "silu-s2": 0.01}  # alt_p: combined below 0.025


@pytest.mark.parametrize("deltas,alt_p,expect", [
    # every paper form within 2 AICc, but no test favours it over the others (alt_p 0.5): the data cannot tell
    ({"relu-s1": 0.0, "relu-s2": 1.5, "silu-s1": 0.0}, None, "INCONCLUSIVE"),
    ({"relu-s1": -9.0, "relu-s2": -5.0, "silu-s1": -8.0}, SMALL, "PASS"),
    # the share within 2 AICc is not judged: 1/3 within 2, and the other forms beaten beyond their own noise
    ({"relu-s1": 5.0, "relu-s2": 4.0, "silu-s1": -8.0}, SMALL, "PASS"),
    ({"relu-s1": -9.0, "relu-s2": -5.0, "silu-s1": -8.0}, {"relu-s1": 0.01, "relu-s2": 0.01}, "INCONCLUSIVE"),
    # 1/3 and 0/3 within 2 AICc, but no gap larger than the paper form's own data give: not a FAIL
    ({"relu-s1": 0.0, "relu-s2": 5.0, "silu-s1": 30.0}, None, "INCONCLUSIVE"),
    ({"relu-s1": 5.0, "relu-s2": np.nan, "silu-s1": 30.0}, None, "INCONCLUSIVE"),  # no AICc counts as not within 2
])
def test_law_forms(deltas, alt_p, expect):
    assert verdict(claims.law_forms(comparison(deltas, alt_p=alt_p))) == expect


def test_law_forms_passes_when_every_activations_combined_alt_p_is_below_the_level():
    """PASS: for ReLU and SiLU each, the Stouffer-combined alt_p (the paper form beats the best other form
    by more than on data that form made) is below 0.05 / 2, and neither combined null_p is; the value
    leads with the PASS's reason."""
    deltas = {"relu-s1": -9.0, "relu-s2": -5.0, "silu-s1": -8.0, "silu-s2": -7.0}
    row = claims.law_forms(comparison(deltas, alt_p=SMALL))
    z_relu = stats.norm.sf(2 * stats.norm.isf(0.01) / np.sqrt(2))
    assert row["verdict"] == "PASS" and row["value"].startswith(f"relu's combined p_alt = {z_relu:.3g}")
    assert f"relu: 2/2 within 2, combined p = 0.5, p_alt = {z_relu:.2g}" in row["value"]
    # alt_p 0.1 each: combined 0.037, below 0.05 but not 0.025 (Bonferroni over relu and silu)
    weak = claims.law_forms(comparison(deltas, alt_p={**SMALL, "relu-s1": 0.1, "relu-s2": 0.1}))
    assert weak["verdict"] == "INCONCLUSIVE"
    # a rejected paper form (null_p) FAILs whatever alt_p says
    both = claims.law_forms(comparison(deltas, null_p={"silu-s1": 0.001, "silu-s2": 0.001}, alt_p=SMALL))
    assert both["verdict"] == "FAIL"
    old = comparison(deltas, alt_p=SMALL).drop(columns=["alt_form", "alt_p", "alt_n"])  # before the alt test
    row = claims.law_forms(old)
    assert row["verdict"] == "INCONCLUSIVE"
    assert "no test of the other forms (counted as p_alt = 0.5): relu-s1, relu-s2, silu-s1, silu-s2" in row["note"]


def test_law_forms_fails_only_when_the_gap_is_beyond_the_paper_forms_own_noise():
    """FAIL needs some activation's Stouffer-combined null p below 0.05 / 2 (ReLU and SiLU), whatever the
    share within 2 AICc; each activation is combined on its own."""
    deltas = {"relu-s1": 0.0, "relu-s2": 1.0, "relu-s3": 0.5, "silu-s1": 9.0, "silu-s2": 8.0}
    row = claims.law_forms(comparison(deltas, null_p={"silu-s1": 0.01, "silu-s2": 0.02}))
    z = stats.norm.isf(0.01) + stats.norm.isf(0.02)
    p_silu = stats.norm.sf(z / np.sqrt(2))  # 1.3e-3
    assert row["verdict"] == "FAIL" and f"silu: 0/2 within 2, combined p = {p_silu:.2g}" in row["value"]
    assert row["value"].startswith(f"silu's combined p = {p_silu:.3g} < 0.025; 3/5 runs")  # the FAIL's reason first
    assert "relu: 3/3 within 2, combined p = 0.5" in row["value"] and "silu-s1 (0.01), silu-s2 (0.02)" in row["note"]
    # each silu p 0.1: combined 0.037, below 0.05 but not below 0.025 (Bonferroni over relu and silu)
    p_two = stats.norm.sf(2 * stats.norm.isf(0.1) / np.sqrt(2))
    assert 0.025 < p_two < 0.05
    one = claims.law_forms(comparison(deltas, null_p={"silu-s1": 0.1, "silu-s2": 0.1}))
    assert f"combined p = {p_two:.2g}" in one["value"] and one["verdict"] == "INCONCLUSIVE"  # 3/5 within 2
    both = {**deltas, "silu-s1": 1.0, "silu-s2": 2.0}  # 5/5 within 2 and nothing rejected, nothing favoured
    assert claims.law_forms(comparison(both, null_p={"silu-s1": 0.1, "silu-s2": 0.1}))["verdict"] == "INCONCLUSIVE"
    old = comparison(deltas).drop(columns=["null_p", "null_n"])  # a table from before the test: p = 0.5 each
    row = claims.law_forms(old)
    assert row["verdict"] == "INCONCLUSIVE" and "no test (counted as p = 0.5): relu-s1, relu-s2" in row["note"]
def test_runs_whose_ppl1_was_not_reached_are_left_out_of_the_trends_and_law_forms():
    """analysis gives such a run no fit (its message says the target was not reached, rho NaN): it is
    neither evidence for nor against a law, and the note names it."""
    from sparsinglaw import analysis

    unreached = f"not fitted: the PPL-1% {analysis.UNREACHED} (reached = False)"
    c = comparison({"relu-s1": 0.0, "relu-s2": 5.0, "silu-s1": 0.0}).assign(message="")
    c.loc[c["run"] == "silu-s1", "message"] = unreached
    c.loc[c["run"] == "silu-s1", "delta_aicc"] = np.nan
    row = claims.law_forms(c)
    assert row["value"].startswith("1/2 runs") and row["verdict"] == "INCONCLUSIVE"  # not 1/3, FAIL
    assert "left out, PPL-1% not reached: silu-s1" in row["note"] and "silu-s1 (dAICc" not in row["note"]
    f = fits([("relu-s1", "relu", "scale", -0.9, 16), ("relu-s2", "relu", "scale", -0.8, 16),
              ("relu-s3", "relu", "scale", np.nan, 0)]).assign(message="")
    f.loc[f["run"] == "relu-s3", "message"] = unreached
    row = claims.relu_falls(f)
    assert row["n"] == 2 and "relu-s3" not in row["value"] and "not reached: relu-s3" in row["note"]
    only = claims.relu_falls(f[f["run"] == "relu-s3"])
    assert only["verdict"] == "INCONCLUSIVE" and "not reached: relu-s3" in only["note"]


def test_runs_of_other_activations_are_named_not_judged():
    """The paper's claims are about ReLU and SiLU; a gelu or relu2 run gets a law of our choosing
    (analysis.FORM). law_forms FAILed on gelu runs alone ("gelu: combined p = 0.0004") and the trend, scale
    and speed checks dropped such runs without a word: now they are left out of every verdict and named."""
    deltas = {"relu-s1": 0.0, "relu-s2": 1.5, "silu-s1": 0.0, "gelu-s1": 9.0, "gelu-s2": 8.0}
    row = claims.law_forms(comparison(deltas, null_p={"gelu-s1": 1e-3, "gelu-s2": 1e-3}, alt_p=SMALL))
    assert row["verdict"] == "PASS" and row["n"] == 3 and "gelu" not in row["value"]
    assert row["note"].endswith("not judged, the paper's claims being about ReLU and SiLU only: "
                                "gelu (gelu-s1, gelu-s2)")
    only = claims.law_forms(comparison({"gelu-s1": 9.0}))
    assert only["verdict"] == "INCONCLUSIVE" and "gelu (gelu-s1)" in only["note"]
    f = fits([("relu-s1", "relu", "scale", -0.9, 16), ("relu-s2", "relu", "scale", -0.8, 16),
              ("relu2-s1", "relu2", "scale", 0.9, 16), ("relu2-s2", "relu2", "seeds", 0.5, 16),
              ("gelu-wd1", "gelu", "width_depth", 0.9, 16)])
    row = claims.relu_falls(f)
    assert row["verdict"] == "PASS" and row["n"] == 2 and "relu2" not in row["value"]
    assert "only: relu2 (relu2-s1, relu2-s2)" in row["note"] and "gelu" not in row["note"]  # the trend groups only
    assert "relu2 (relu2-s1, relu2-s2)" in claims.silu_rises(f)["note"]
    t = pd.concat([scale_fit((-0.02, 0.03), None), scale_fit((0.2, 0.3), None).assign(activation="gelu")])
    assert [r["verdict"] for r in claims.a0_scale_weak(t)] == ["PASS", "INCONCLUSIVE"]
    assert all(r["note"].endswith("only: gelu") for r in claims.a0_scale_weak(t))
    s = sparsity([("s1", 0.20, 4.0, 0.40, 4.05), ("s2", 0.15, 3.8, 0.38, 3.7)])
    s.loc[s["run"] == "relu-s2", "activation"] = "relu2"  # named like a relu run: no ReLU/SiLU pair
    row = claims.relu_sparser(s)
    assert row["n"] == 1 and "relu-s2/silu-s2" not in row["value"] and row["note"].endswith("only: relu2 (relu-s2)")
    assert claims._not_judged(pd.DataFrame({"run": ["a", "b"], "activation": ["relu", np.nan]})).endswith(
        "only: nan (b)")  # an activation missing from a table is still named
    gelu = conv_summary([1e-3, 2e-3, 3e-3]).assign(activation="gelu")
    gelu["run"] = gelu["run"].str.replace("relu", "gelu")
    rows = claims.small_converge_faster(pd.concat([conv_summary([-4e-3, -3e-3, -2e-3, -1e-3]), gelu]))
    assert [r["verdict"] for r in rows] == ["PASS", "INCONCLUSIVE"]
    assert all(r["note"].endswith("only: gelu (gelu-10000, gelu-20000, gelu-50000)") for r in rows)


def test_law_forms_counts_the_converged_paper_fits_without_using_them():
    row = claims.law_forms(comparison({"relu-s1": 0.0, "relu-s2": 1.5, "silu-s1": 0.0}, converged=False, alt_p=SMALL))
    assert row["verdict"] == "PASS" and "of these, 0 with a converged paper-form fit;" in row["value"]
    row = claims.law_forms(comparison({"relu-s1": 0.0, "relu-s2": 5.0, "silu-s1": 0.0}))
    assert row["value"].endswith("of these, 2 with a converged paper-form fit; by AIC 3/3")
    assert "relu-s2 (dAICc 5)" in row["note"]


def sparsity(pairs) -> pd.DataFrame:
    """sparsity.csv rows at p = 1: (suffix, A_relu, loss_relu, A_silu, loss_silu) -> two checkpoints per run."""
    rows = []
    for suffix, a_r, l_r, a_s, l_s in pairs:
        for act, a, loss in (("relu", a_r, l_r), ("silu", a_s, l_s)):
            for tokens, k in ((1e6, 1.2), (2e6, 1.0)):  # the final checkpoint is the one compared
                rows.append({"run": f"{act}-{suffix}", "activation": act, "groups": "scale", "d_model": 16,
                             "n_layers": 2, "width_depth": 8.0, "non_embedding_params": 5000, "p": 1.0,
                             "tokens": tokens, "activation_ratio": a * k, "dense_loss": loss * k})
    rows.append({**rows[0], "run": "relu-wd1", "groups": "width_depth", "activation_ratio": 0.9})  # unpaired
    return pd.DataFrame(rows)


@pytest.mark.parametrize("pairs,expect", [
    ([("s1", 0.20, 4.0, 0.40, 4.05), ("s2", 0.15, 3.8, 0.38, 3.7)], "PASS"),
    ([("s1", 0.20, 4.0, 0.40, 4.05), ("s2", 0.45, 3.8, 0.38, 3.7)], "FAIL"),
    ([("s1", 0.20, 4.0, 0.40, 4.05), ("s2", 0.15, 3.0, 0.38, 3.7)], "INCONCLUSIVE"),  # losses 23% apart
    # relative difference by the smaller loss (either loss within 5% of the other): 0.205 / 4.0 = 5.1% is not
    # comparable (by the larger it would be 4.9%), 0.5 / 10.0 = 5% exactly is
    ([("s1", 0.20, 4.0, 0.40, 4.05), ("s2", 0.45, 4.0, 0.38, 4.205)], "INCONCLUSIVE"),
    ([("s1", 0.20, 4.0, 0.40, 4.05), ("s2", 0.45, 10.5, 0.38, 10.0)], "FAIL"),
    ([("s1", 0.20, 4.0, 0.40, 4.05), ("s2", 0.38, 3.8, 0.38, 3.7)], "FAIL"),  # equal ratios: ReLU not sparser
])
def test_relu_sparser(pairs, expect):
    row = claims.relu_sparser(sparsity(pairs))
    assert row["verdict"] == expect and row["n"] == 2
    s2 = pairs[1]
    assert f"({abs(s2[2] - s2[4]) / min(s2[2], s2[4]):.1%})" in row["value"]
    comparable = [abs(p[2] - p[4]) / min(p[2], p[4]) <= 0.05 for p in pairs]
    sparser = sum(p[1] < p[3] for p, c in zip(pairs, comparable, strict=True) if c)
    assert row["value"].split(";")[0] == (f"ReLU sparser in {sparser} of the {sum(comparable)} comparable pairs "
                                          "(losses within 5%, PPL-1% reached), 2 pairs in all")  # the headline


def test_relu_sparser_does_not_compare_a_run_whose_ppl1_was_not_reached():
    """An unreached PPL-1% target (reached read back as the text "False") makes its pair not comparable:
    the pair that alone would FAIL is then INCONCLUSIVE, and the value names the run."""
    t = sparsity([("s1", 0.20, 4.0, 0.40, 4.05), ("s2", 0.45, 3.8, 0.38, 3.7)])
    t["reached"] = np.where(t["run"] == "silu-s2", "False", "True")
    row = claims.relu_sparser(t)
    assert row["verdict"] == "INCONCLUSIVE" and "PPL-1% not reached for silu-s2" in row["value"]
    assert "1 pair(s) not comparable" in row["note"]
    t["reached"] = "True"
    assert claims.relu_sparser(t)["verdict"] == "FAIL"


def wd_fit(lo, hi, quantity="A0", inside=True) -> pd.DataFrame:
    nan = float("nan")
    rows = [{"quantity": q, "kind": "piecewise_linear", "n": 6, "breakpoint": 20.0, "breakpoint_lo": 12.0,
             "breakpoint_hi": 30.0, "slope_below": (lo + hi) / 2, "slope_below_lo": lo, "slope_below_hi": hi,
             "inside": inside, "message": ""} if q == quantity else
            {"quantity": q, "kind": "piecewise_linear", "n": 3, "breakpoint": nan, "breakpoint_lo": nan,
             "breakpoint_hi": nan, "slope_below": nan, "slope_below_lo": nan, "slope_below_hi": nan,
             "inside": nan, "message": "not fitted: too few points"} for q in ("A0", "A_last")]
    return pd.DataFrame(rows + [{"quantity": "E", "kind": "best_range", "n": 6}])


@pytest.mark.parametrize("lo,hi,inside,expect", [
    (0.001, 0.004, True, "PASS"),
    (0.001, 0.004, False, "INCONCLUSIVE"),  # rising, but no bottleneck inside the data
    (-0.004, -0.001, True, "FAIL"),
    (-0.004, -0.001, False, "FAIL"),  # falling: contradicts the claim whether or not it flattens
    (-0.001, 0.004, True, "INCONCLUSIVE"),
])
def test_width_depth_linear(lo, hi, inside, expect):
    row = claims.width_depth_linear(wd_fit(lo, hi, inside=inside))
    assert row["verdict"] == expect and "breakpoint 20 [12, 30]" in row["value"]
    assert ("inside the data" in row["value"]) == inside


def test_width_depth_breakpoint_that_every_candidate_fits_is_said_to_be_unplaced():
    """Four runs put every candidate breakpoint inside the F-test interval (cpu: 13.1 [12, 18.7], the
    whole candidate range): the value says the data do not place it, not only that it reaches an edge."""
    x, y = [3.6, 12.0, 18.7, 32.0], [0.15, 0.19, 0.2, 0.205]
    fit = laws.fit_piecewise_linear(x, y, "flat")
    assert bool(fit.profile["accepted"].all()) and laws.UNPLACED in fit.message
    t = wd_fit(-0.001, 0.008, inside=False)
    t.loc[t["quantity"] == "A0", "message"] = fit.message
    row = claims.width_depth_linear(t)
    assert row["verdict"] == "INCONCLUSIVE"
    assert row["value"].endswith("breakpoint 20 [12, 30], every candidate: not placed by the data, no bottleneck seen")
    steep = laws.fit_piecewise_linear(np.linspace(2, 40, 12), np.minimum(np.linspace(2, 40, 12), 20) * 0.01)
    assert laws.UNPLACED not in steep.message  # twelve exact points place it


def test_width_depth_falls_back_to_last_ratio():
    row = claims.width_depth_linear(wd_fit(0.001, 0.004, "A_last"))
    assert row["verdict"] == "PASS" and row["value"].startswith("A_last") and "A0 not used" in row["note"]
    nothing = wd_fit(0.001, 0.004).assign(slope_below=np.nan)
    assert claims.width_depth_linear(nothing)["verdict"] == "INCONCLUSIVE"


def test_width_depth_uses_A0_when_both_quantities_are_fitted():
    t = wd_fit(0.001, 0.004)  # A0 rising
    falling = {"n": 6, "breakpoint": 20.0, "breakpoint_lo": 12.0, "breakpoint_hi": 30.0, "slope_below": -0.0025,
               "slope_below_lo": -0.004, "slope_below_hi": -0.001, "inside": True, "message": ""}
    for k, v in falling.items():
        t.loc[t["quantity"] == "A_last", k] = v
    row = claims.width_depth_linear(t)
    assert row["verdict"] == "PASS" and row["value"].startswith("A0: slope below 0.0025 [0.001, 0.004]")


def wd_points(rows) -> pd.DataFrame:
    """analysis.width_depth points: (width-depth ratio, E, E_lo, E_hi, loss converged, final loss), shuffled."""
    df = pd.DataFrame([{"run": f"relu-wd{x:g}", "width_depth": x, "E": e, "E_lo": lo, "E_hi": hi,
                        "loss_converged": ok, "final_loss": fl} for x, e, lo, hi, ok, fl in rows])
    return df.sample(frac=1, random_state=1)


WD_OTHERS = [(12.0, 3.0, 2.9, 3.1, True, 4.20), (32.0, 2.9, 2.8, 3.0, True, 4.10), (96.0, 3.1, 3.0, 3.2, True, 4.30)]


@pytest.mark.parametrize("deepest,others,expect,n", [
    ((3.6, 3.2, 3.05, 3.4, True, 4.4), WD_OTHERS, "PASS", 4),  # above relu-wd32's [2.8, 3.0]
    ((3.6, 3.0, 2.95, 3.1, True, 4.4), WD_OTHERS, "INCONCLUSIVE", 4),  # overlaps it
    ((3.6, 2.6, 2.5, 2.7, True, 4.4), WD_OTHERS, "FAIL", 4),  # below every other run's interval
    # below relu-wd32's interval, not below a fourth run's wide one
    ((3.6, 2.6, 2.5, 2.7, True, 4.4), WD_OTHERS + [(48.0, 3.0, 2.6, 3.5, True, 4.2)], "INCONCLUSIVE", 5),
    ((3.6, 3.2, 3.05, 3.4, False, 4.4), WD_OTHERS, "INCONCLUSIVE", 3),  # the deepest's loss law did not converge
    # one other run with a converged loss law
    ((3.6, 3.4, 3.3, 3.5, True, 4.4), WD_OTHERS[:1] + [(48.0, 2.0, 1.0, 3.9, False, 4.0)], "INCONCLUSIVE", 2),
    ((3.6, 2.85, 2.7, 2.95, True, 4.4), WD_OTHERS, "INCONCLUSIVE", 4),  # a lower E, but the intervals overlap
    # an unconverged other run with the lowest E is not the yardstick; relu-wd32 is
    ((3.6, 3.2, 3.05, 3.4, True, 4.4), WD_OTHERS + [(48.0, 2.0, 1.0, 3.9, False, 4.0)], "PASS", 4),
])
def test_width_depth_loss(deepest, others, expect, n):
    row = claims.width_depth_loss(wd_points([deepest, *others]))
    assert row["verdict"] == expect and row["n"] == n
    if n >= 4:
        assert row["value"].startswith("deepest relu-wd3.6 (d/L 3.6): E ") and \
            row["value"].endswith("lowest upper bound among the others relu-wd32 (d/L 32): E 2.9 [2.8, 3]")


def test_width_depth_loss_compares_with_the_surest_other_run_not_the_lowest_point():
    """The other run with the lowest E (2.8, a wide interval) is not the yardstick: one whose whole interval
    lies below the deepest's (2.85 [2.8, 2.9] against [3.0, 3.2]) makes the deepest surely worse."""
    row = claims.width_depth_loss(wd_points([(3.6, 3.1, 3.0, 3.2, True, 4.4), (12.0, 2.8, 2.0, 3.6, True, 4.2),
                                             (32.0, 2.85, 2.8, 2.9, True, 4.1), (96.0, 2.9, 2.85, 2.95, True, 4.3)]))
    assert row["verdict"] == "PASS" and row["value"].endswith("others relu-wd32 (d/L 32): E 2.85 [2.8, 2.9]")


def test_width_depth_loss_describes_the_final_losses_without_judging_them():
    row = claims.width_depth_loss(wd_points([(3.6, 3.0, 2.95, 3.1, True, 4.4), *WD_OTHERS]))
    assert row["note"] == ("final loss of each run (not judged): lowest 4.1 at d/L 32; the deepest run's "
                           f"4.4 is {math.exp(0.3) - 1:+.1%} in perplexity")
    few = claims.width_depth_loss(wd_points(WD_OTHERS[:2]))
    assert few["verdict"] == "INCONCLUSIVE" and few["value"] == "2 width-depth run(s)"
    assert claims.width_depth_loss(pd.DataFrame())["n"] == 0


def scale_fit(relu, silu) -> pd.DataFrame:
    rows = []
    for act, iv in (("relu", relu), ("silu", silu)):
        lo, hi = iv if iv else (np.nan, np.nan)
        rows.append({"activation": act, "quantity": "A0", "n": 4 if iv else 0, "slope": (lo + hi) / 2,
                     "slope_lo": lo, "slope_hi": hi, "change_fit": 0.01, "N_min": 1e4, "N_max": 1e5,
                     "message": "" if iv else "not fitted: needs at least 3 scales"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("relu,silu,expect", [
    ((-0.02, 0.03), (-0.049, 0.0), ("PASS", "PASS")),
    ((0.06, 0.1), (-0.3, -0.06), ("FAIL", "FAIL")),
    ((-0.1, -0.001), None, ("INCONCLUSIVE", "INCONCLUSIVE")),  # straddles the band; no fit
    ((-0.05, 0.05), (-0.05, 0.0), ("PASS", "PASS")),  # the band's edges are within it
])
def test_a0_scale_weak(relu, silu, expect):
    rows = claims.a0_scale_weak(scale_fit(relu, silu))
    assert [r["id"] for r in rows] == ["a0_scale_weak_relu", "a0_scale_weak_silu"]
    assert tuple(r["verdict"] for r in rows) == expect


def test_a0_scale_weak_without_an_a0_fit_shows_the_last_ratio_slope_in_its_value():
    """No A0 fit: the A_last slope was in the note only, so a headline "no A0 fit" hid a SiLU final ratio
    falling 0.143 per decade (cpu), outside the band; it is in the value now, marked as reference."""
    t = pd.concat([scale_fit((-0.02, 0.03), None), pd.DataFrame([{
        "activation": "silu", "quantity": "A_last", "n": 4, "slope": -0.143, "slope_lo": -0.277,
        "slope_hi": -0.0095, "message": ""}])], ignore_index=True)
    row = claims.a0_scale_weak(t)[1]
    assert row["verdict"] == "INCONCLUSIVE"
    assert row["value"] == "no A0 fit (A_last slope -0.143 [-0.277, -0.0095]/decade, for reference)"
    assert claims.a0_scale_weak(scale_fit((-0.02, 0.03), None))[1]["value"] == "no A0 fit"


def conv_summary(relu_speeds, silu_speeds=()) -> pd.DataFrame:
    rows = []
    for act, speeds in (("relu", relu_speeds), ("silu", silu_speeds)):
        for N, s in zip((1e4, 2e4, 5e4, 1e5), speeds, strict=False):
            rows.append({"run": f"{act}-{N:g}", "activation": act, "non_embedding_params": N, "ratio_common": 12.0,
                         "dA_dratio_common": s})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("speeds,expect", [
    ([-4e-3, -3e-3, -2e-3, -1e-3], "PASS"),  # |speed| falls with N: rho = -1, p = 1/24
    ([1e-3, 2e-3, 3e-3, 4e-3], "FAIL"),
    ([-4.7e-4, 0.0, -8.8e-4, -6.4e-4], "INCONCLUSIVE"),  # the stale cpu numbers: rho = +0.6
])
def test_small_converge_faster(speeds, expect):
    rows = claims.small_converge_faster(conv_summary(speeds, [1e-3, 2e-3]))
    assert verdict(rows, "small_converge_faster_relu") == expect
    assert verdict(rows, "small_converge_faster_silu") == "INCONCLUSIVE"  # 2 runs only


def test_small_converge_faster_says_the_direction_and_when_too_few_runs_can_decide():
    """Three runs cannot reach p < 0.05 (the least exact p is 1/3! = 0.167): the value's headline says so,
    and which way the point estimate goes (cpu: larger models faster, against the paper)."""
    three = claims.small_converge_faster(conv_summary([1e-3, 2e-3, 3e-3]))[0]
    assert three["verdict"] == "INCONCLUSIVE"
    assert three["value"] == ("rho = +1.00 (point estimate: larger models faster) over 3 runs, too few for p < 0.05; "
                              "at D/N = 12, one-sided p = 0.167 (exact permutation)")
    four = claims.small_converge_faster(conv_summary([-4e-3, -3e-3, -2e-3, -1e-3]))[0]
    assert four["value"].startswith("rho = -1.00 (point estimate: smaller models faster) over 4 runs; at D/N = 12, "
                                    "one-sided p = 0.0417")


def patterns(r_intervals, ks) -> tuple[pd.DataFrame, pd.DataFrame]:
    tp = pd.DataFrame([{"activation": "relu", "run_a": "a", "run_b": f"b{i}", "n_tokens": 500, "pearson": (lo + hi) / 2,
                        "pearson_lo": lo, "pearson_hi": hi} for i, (lo, hi) in enumerate(r_intervals)])
    da = pd.DataFrame([{"activation": "relu", "domain": d, "run_a": "a", "run_b": "b", "ks": k}
                       for d, k in zip(("all", "code"), ks, strict=True)])
    return da, tp


@pytest.mark.parametrize("r_intervals,ks,expect", [
    ([(0.7, 0.8), (0.55, 0.65)], (0.1, 0.15), "PASS"),
    ([(0.7, 0.8), (0.1, 0.25)], (0.1, 0.15), "FAIL"),  # one pair clearly uncorrelated
    ([(0.7, 0.8), (0.55, 0.65)], (0.1, 0.6), "FAIL"),  # one domain's distributions clearly differ
    ([(0.7, 0.8), (0.4, 0.5)], (0.1, 0.3), "INCONCLUSIVE"),
    ([(0.7, 0.8), (0.2, 0.45)], (0.1, 0.15), "INCONCLUSIVE"),  # r 0.325: below 0.3 only at its lower bound
    ([(0.7, 0.8), (0.5, 0.65)], (0.1, 0.2), "PASS"),  # exactly at the PASS bounds (r lower bound 0.5, KS 0.2)
    ([(0.7, 0.8), (0.45, 0.65)], (0.1, 0.15), "INCONCLUSIVE"),  # r 0.55, but its lower bound is below 0.5
    ([(0.7, 0.8), (0.1, 0.4)], (0.1, 0.15), "INCONCLUSIVE"),  # r 0.25, but its upper bound is not below 0.3
])
def test_patterns_agree(r_intervals, ks, expect):
    assert verdict(claims.patterns_agree(*patterns(r_intervals, ks))) == expect


def test_patterns_agree_does_not_pass_on_a_missing_ks():
    row = claims.patterns_agree(*patterns([(0.7, 0.8), (0.55, 0.65)], (0.1, np.nan)))
    assert row["verdict"] == "INCONCLUSIVE" and "1 domain pair(s) without a KS distance" in row["note"]


def test_patterns_agree_does_not_pass_with_a_pair_without_a_correlation():
    da, tp = patterns([(0.7, 0.8), (0.55, 0.65), (0.6, 0.7)], (0.1, 0.15))
    tp.loc[2, ["n_tokens", "pearson", "pearson_lo", "pearson_hi"]] = [3, np.nan, np.nan, np.nan]
    row = claims.patterns_agree(da, tp)
    assert row["verdict"] == "INCONCLUSIVE" and "1 token pair(s) without a correlation" in row["note"]


def test_patterns_agree_names_the_seed_yardstick_without_using_it():
    da, tp = patterns([(0.7, 0.8), (0.4, 0.5)], (0.1, 0.3))
    seeds = tp.assign(pearson=[0.3, 0.6], max_ks=[0.25, 0.1])
    row = claims.patterns_agree(da, tp, seeds)
    assert row["verdict"] == "INCONCLUSIVE" and row["value"] == claims.patterns_agree(da, tp)["value"]
    assert "(one shape and token budget): Pearson r 0.30 to 0.60 over 2 pairs, max KS 0.250" in row["note"]
    assert "no seed replicas" in claims.patterns_agree(da, tp, seeds.iloc[:0])["note"]


def inference_table(ppl_ratios, acc_drops) -> pd.DataFrame:
    rows = []
    for i, (r, d) in enumerate(zip(ppl_ratios, acc_drops, strict=True)):
        for p, k in ((0, 0.0), (1, 1.0), (5, 10.0)):  # p = 5 rows are far worse and must be ignored
            for dom in ("all", "code"):
                rows.append({"run": f"relu-s{i}", "p": p, "domain": dom, "dense_accuracy": 0.40,
                             "accuracy": 0.40 - k * d / 100 * (1 if dom == "all" else 5),
                             "ppl_ratio": 1 + k * (r - 1) * (1 if dom == "all" else 5), "calib_ppl_ratio": 1.01,
                             "calib_applied_ppl_ratio": 1.0 + 0.001 * (i + 8), "reached": p != 5})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("ppl,acc,expect", [
    ([1.01, 1.015], [0.2, 0.5], "PASS"),
    ([1.01, 1.08], [0.2, 0.5], "FAIL"),
    ([1.01, 1.01], [0.2, 4.0], "FAIL"),
    ([1.01, 1.03], [0.2, 0.5], "INCONCLUSIVE"),
    ([1.0, 1.03], [0.2, 0.5], "INCONCLUSIVE"),  # the mean increase is 1.5%, the max 3%: the max counts
    ([1.01, 1.015], [0.2, 2.0], "INCONCLUSIVE"),  # perplexity fine, an accuracy drop between 1 and 3 points
    ([1.01, 1.015], [0.2, 2.9], "INCONCLUSIVE"),
])
def test_ppl1_lossless(ppl, acc, expect):
    row = claims.ppl1_lossless(inference_table(ppl, acc))
    assert row["verdict"] == expect and row["n"] == 2
    assert row["note"].endswith("1.0100 to 1.0100 at the search's thresholds, 1.0080 to 1.0090 at the applied "
                                "(batch-averaged) ones")  # p = 5 rows (not reached) are not p = 1's


def test_ppl1_lossless_does_not_pass_over_a_run_without_numbers():
    t = inference_table([1.01, 1.015], [0.2, 0.5])
    t.loc[(t["run"] == "relu-s1") & (t["p"] == 1) & (t["domain"] == "all"), "ppl_ratio"] = np.nan
    row = claims.ppl1_lossless(t)
    assert row["verdict"] == "INCONCLUSIVE" and row["value"] == "no PPL ratio or accuracy for relu-s1"
    assert row["n"] == 1


def test_ppl1_lossless_names_a_run_whose_target_was_not_reached():
    t = inference_table([1.01, 1.015], [0.2, 0.5])
    t.loc[(t["run"] == "relu-s1") & (t["p"] == 1), "reached"] = False
    assert claims.ppl1_lossless(t)["note"].endswith("; PPL-1% not reached for relu-s1")


def moe_table(gaps: list[float | None], other: float = -50.0) -> pd.DataFrame:
    """measure.moe_comparison rows: one SiLU MoE per gap (percent; None: below the dense curve) at its
    trained k, plus rows that must be ignored (another k; the dense run of the other activation)."""
    rows = []
    for i, g in enumerate(gaps):
        base = {"moe_run": f"silu-moe{4 << i}", "activation": "silu", "n_experts": 4 << i,
                "activation_ratio": 2 / (4 << i), "ppl_moe": 60.0, "ppl_dense_unsparsified": 55.0}
        at = math.nan if g is None else 60.0 / (1 + g / 100)
        rows.append({**base, "k": 2, "trained_k": True, "dense_run": "silu-s4", "dense_activation": "silu",
                     "ppl_dense_at_ratio": at, "gap_pct": math.nan if g is None else g})
        rows.append({**base, "k": 1, "trained_k": False, "dense_run": "silu-s4", "dense_activation": "silu",
                     "ppl_dense_at_ratio": 70.0, "gap_pct": other})
        rows.append({**base, "k": 2, "trained_k": True, "dense_run": "relu-s4", "dense_activation": "relu",
                     "ppl_dense_at_ratio": 70.0, "gap_pct": other})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("gaps,expect,n", [
    ([5.0, 8.0, 3.5], "PASS", 3),
    ([5.0, 2.0], "INCONCLUSIVE", 2),  # one within the 3% margin
    ([5.0, -4.0], "FAIL", 2),
    ([5.0, -2.0], "INCONCLUSIVE", 2),  # below the dense curve, but within the 3% margin
    ([5.0, None], "INCONCLUSIVE", 1),  # the MoE is sparser than the dense curve reaches
    ([], "INCONCLUSIVE", 0),
])
def test_dense_beats_moe(gaps, expect, n):
    table = moe_table(gaps) if gaps else pd.DataFrame(columns=["trained_k"])
    row = claims.dense_beats_moe(table)
    assert row["verdict"] == expect and row["n"] == n
    if gaps:
        above = sum(g is not None and g > 3 for g in gaps)
        below = sum(g is not None and g < -3 for g in gaps)
        skipped = f", {gaps.count(None)} not compared" if None in gaps else ""
        assert row["value"].startswith(f"MoE above the dense curve by > 3% in {above} of {len(gaps)} comparisons, "
                                       f"below it by > 3% in {below}{skipped}; silu-moe4 (k 2/4, A 0.5): PPL 60 vs "
                                       "silu-s4")
        assert "relu-s4" not in row["value"]
    if None in gaps:
        assert row["value"].endswith("silu-moe8 (k 2/8, A 0.25): sparser than every point of silu-s4's curve, "
                                     "not compared")


def tradeoff_table(cett, baselines: dict, zeros=None) -> pd.DataFrame:
    """measure.tradeoff rows of one run: cett and each baseline as (activation ratio, bound)."""
    rows = [("relu-s4", "cett", *cett)] + [("relu-s4", m, *v) for m, v in baselines.items()]
    if zeros is not None:
        rows.append(("relu-s4", "zeros", zeros, "<="))
    return pd.DataFrame(rows, columns=["run", "method", "activation_ratio", "bound"]).assign(activation="relu")


@pytest.mark.parametrize("cett,baselines,expect,wins", [
    ((0.18, "="), {"topk": (0.29, "="), "topk_batch": (0.28, "="), "fat": (0.28, "=")}, "PASS", 3),
    ((0.18, "="), {"topk": (0.29, "="), "fat": (0.185, "=")}, "INCONCLUSIVE", 1),  # fat within the 0.01 margin
    ((0.18, "="), {"topk": (0.29, "="), "fat": (0.175, "=")}, "INCONCLUSIVE", 1),  # fat fewer, within the margin
    ((0.18, "="), {"topk": (0.29, "="), "fat": (0.165, "=")}, "FAIL", 1),  # fat fewer by more than 0.01
    ((0.18, "="), {"topk": (0.25, ">")}, "PASS", 1),  # topk above its densest point 0.25
    ((0.18, "="), {"topk": (0.18, ">")}, "INCONCLUSIVE", 0),  # above 0.18: not by the margin for sure
    ((0.18, "="), {"topk": (0.30, "<=")}, "INCONCLUSIVE", 0),  # at most 0.30: could be below 0.18
    ((0.18, "="), {"topk": (0.15, "<=")}, "FAIL", 0),  # at most 0.15: below PPL-p% by more than 0.01
    ((0.10, "<="), {"topk": (0.15, "=")}, "PASS", 1),  # PPL-p% at most 0.10
    ((0.30, ">"), {"topk": (0.25, "=")}, "FAIL", 0),  # PPL-p% above 0.30
    ((0.20, "<="), {"topk": (0.15, "=")}, "INCONCLUSIVE", 0),  # PPL-p% at most 0.20: above or below 0.15
    ((0.10, ">"), {"topk": (0.25, "=")}, "INCONCLUSIVE", 0),  # PPL-p% above 0.10: above or below 0.25
])
def test_cett_best_tradeoff(cett, baselines, expect, wins):
    row = claims.cett_best_tradeoff(tradeoff_table(cett, baselines, zeros=0.38))
    assert row["verdict"] == expect and row["n"] == len(baselines)
    assert row["note"].startswith(f"{wins} of {len(baselines)} comparisons won")
    lost = {"FAIL": 1}.get(expect, 0)  # each FAIL case above loses one comparison
    assert row["value"].split(";")[0] == (f"PPL-p% sparser than the baseline in {wins} of {len(baselines)} "
                                          f"comparisons, denser in {lost}")


def test_cett_best_tradeoff_shows_exact_zeros_without_judging_them():
    """Exact zeros at most 0.05 (far below PPL-p%) do not make a FAIL: one point, shown only."""
    row = claims.cett_best_tradeoff(tradeoff_table((0.18, "="), {"topk": (0.29, "="), "fat": (0.25, ">")}, 0.05))
    assert row["verdict"] == "PASS"
    assert row["value"] == ("PPL-p% sparser than the baseline in 2 of 2 comparisons, denser in 0; "
                            "relu-s4: PPL-p% 0.18, topk 0.29, fat > 0.25, exact zeros 0.05 (one point)")
    assert claims.cett_best_tradeoff(tradeoff_table((0.18, "="), {}))["verdict"] == "INCONCLUSIVE"
    empty = claims.cett_best_tradeoff(pd.DataFrame(columns=["run", "method", "activation_ratio", "bound"]))
    assert empty["verdict"] == "INCONCLUSIVE" and empty["n"] == 0


def test_cett_best_tradeoff_needs_every_run_compared():
    """A run whose PPL-p% curve is missing (or has no finite point) cannot carry its baselines: the other run's
    wins do not make a PASS. A baseline without a finite point is counted and decides nothing."""
    won = tradeoff_table((0.18, "="), {"topk": (0.29, "="), "fat": (0.28, "=")})
    alone = tradeoff_table((0.18, "="), {"topk": (0.05, "="), "fat": (0.05, "=")}).assign(run="relu-s3")
    for bad in (alone[alone["method"] != "cett"], alone.assign(bound=alone["bound"].where(alone["method"] != "cett",
                                                                                          "none"))):
        row = claims.cett_best_tradeoff(pd.concat([won, bad]))
        assert row["verdict"] == "INCONCLUSIVE" and "relu-s3: no PPL-p% curve" in row["value"] and row["n"] == 2
        assert row["value"].split(";")[0].endswith(", 1 run(s) without a PPL-p% curve")
    none = tradeoff_table((0.18, "="), {"topk": (0.29, "="), "fat": (math.nan, "none")})
    row = claims.cett_best_tradeoff(none)
    assert row["verdict"] == "INCONCLUSIVE" and row["n"] == 2 and "fat no finite point" in row["value"]


def cett_sweep(steps_a, steps_r, run="relu-s4") -> pd.DataFrame:
    """A CETT sweep whose activation ratio and PPL ratio move by the given steps (c ascending, rows shuffled),
    plus a Top-k point that must be ignored."""
    a = 0.5 + np.concatenate([[0], np.cumsum(steps_a)])
    r = 1.0 + np.concatenate([[0], np.cumsum(steps_r)])
    c = 0.05 * np.arange(1, len(a) + 1)
    df = pd.DataFrame({"run": run, "method": "cett", "param": c, "activation_ratio": a, "ppl_ratio": r})
    df = pd.concat([df, pd.DataFrame([{"run": run, "method": "topk", "param": 8, "activation_ratio": 0.9,
                                       "ppl_ratio": 0.5}])])
    return df.sample(frac=1, random_state=0)


@pytest.mark.parametrize("steps_a,steps_r,expect", [
    ([-0.1, -0.05, -0.02], [0.01, 0.02, 0.1], "PASS"),
    ([-0.1, 0.0, -0.02], [0.01, 0.02, 0.1], "INCONCLUSIVE"),  # a flat step of the activation ratio
    ([-0.1, -0.05, -0.02], [0.01, -0.0005, 0.1], "INCONCLUSIVE"),  # PPL dips by less than 1e-3
    ([-0.1, -0.05, -0.02], [0.01, -0.002, 0.1], "FAIL"),  # ... by more
    ([-0.1, 0.002, -0.02], [0.01, 0.02, 0.1], "FAIL"),  # the activation ratio rises by more than 1e-3
])
def test_cett_monotone(steps_a, steps_r, expect):
    row = claims.cett_monotone(pd.concat([cett_sweep(steps_a, steps_r),
                                          cett_sweep([-0.1] * 3, [0.01] * 3, run="silu-s4")]))
    assert row["verdict"] == expect and row["n"] == 2
    assert row["value"].split("; ")[1].startswith("relu-s4 (4 values of c, 0.05 to 0.2): A 0.5 to ")
    assert row["note"].endswith("the activation ratio cannot rise (its half of the rule checks the code): the PPL "
                                "half is the test")


def test_cett_monotone_needs_a_step_and_counts_a_repeated_c_once():
    one = cett_sweep([], [])
    row = claims.cett_monotone(one)
    assert row["verdict"] == "INCONCLUSIVE" and "(1 values of c, 0.05 to 0.05)" in row["value"]
    # c = 0.1 swept twice, its points on either side of the trend: their mean (0.4, 1.015) is in order, in any
    # row order
    rows = pd.DataFrame({"run": "relu-s4", "method": "cett", "param": [0.05, 0.1, 0.1, 0.2],
                         "activation_ratio": [0.5, 0.45, 0.35, 0.3], "ppl_ratio": [1.0, 1.03, 1.0, 1.05]})
    for seed in range(4):
        row = claims.cett_monotone(rows.sample(frac=1, random_state=seed))
        assert row["verdict"] == "PASS" and "(3 values of c, 0.05 to 0.2)" in row["value"]


def test_cett_monotone_counts_the_steps():
    """Per run, and over every run in the headline (the value up to its first ';', which the claims figure
    and compare show): a step against either trend shows there."""
    row = claims.cett_monotone(cett_sweep([-0.1, 0.0, -0.02], [0.01, -0.0005, 0.1]))
    assert row["value"] == ("A falls at 2 of 3 steps of c, the PPL ratio rises at 2 of 3 (1 run(s)); "
                            "relu-s4 (4 values of c, 0.05 to 0.2): A 0.5 to 0.38, 2 of 3 steps falling; "
                            "PPL ratio 1.0000 to 1.1095, 2 of 3 rising")
    two = pd.concat([cett_sweep([-0.1, -0.05, -0.02], [0.01, 0.02, 0.1]),
                     cett_sweep([-0.1, -0.05], [0.01, -0.02], run="silu-s4")])
    row = claims.cett_monotone(two)
    assert row["value"].split(";")[0] == "A falls at 5 of 5 steps of c, the PPL ratio rises at 4 of 5 (2 run(s))"
    assert row["verdict"] == "FAIL"
    assert claims.cett_monotone(pd.DataFrame(columns=["run", "method"]))["verdict"] == "INCONCLUSIVE"


def test_check_gives_every_claim_once():
    tables = {"fits": fits([("relu-s1", "relu", "scale", -0.9, 16), ("silu-s1", "silu", "scale", 0.9, 16)]),
              "form_comparison": comparison({"relu-s1": 0.0, "silu-s1": 0.0}),
              "sparsity": sparsity([("s1", 0.2, 4.0, 0.4, 4.0)]), "width_depth_fit": wd_fit(0.001, 0.004),
              "width_depth": wd_points(WD_OTHERS),
              "scale_fit": scale_fit((-0.02, 0.03), None), "convergence_summary": conv_summary([1e-3] * 4),
              "domain_agreement": patterns([(0.7, 0.8)], (0.1, 0.1))[0],
              "token_pairs": patterns([(0.7, 0.8)], (0.1, 0.1))[1],
              "seed_agreement": patterns([(0.7, 0.8)], (0.1, 0.1))[1].assign(max_ks=0.1),
              "sparse_inference": inference_table([1.01], [0.1]), "moe_comparison": moe_table([5.0]),
              "pareto": cett_sweep([-0.1], [0.01]), "tradeoff": tradeoff_table((0.18, "="), {"topk": (0.3, "=")})}
    df = claims.check(tables)
    assert list(df.columns) == claims.COLUMNS
    assert sorted(df["id"]) == sorted(claims.CLAIMS)
    assert set(df["verdict"]) <= set(claims.VERDICTS)
    assert df["n"].dtype.kind == "i"


def test_markdown_lists_each_claim_with_its_value_threshold_and_verdict():
    df = pd.DataFrame([claims._row("relu_falls", "p = 0.01 | rho < 0", "PASS", 3),
                       claims._row("ppl1_lossless", "max +3%\nmean +1%", "FAIL", 2)], columns=claims.COLUMNS)
    md = claims.markdown(df, "cpu", "0123456789abcdef")
    t1, t2 = claims.CLAIMS["relu_falls"][3], claims.CLAIMS["ppl1_lossless"][3]
    assert "|" not in t1 + t2
    c1, c2 = claims.CLAIMS["relu_falls"][0], claims.CLAIMS["ppl1_lossless"][0]
    assert md == ("Claims checked on profile `cpu` (measurements of git 0123456789ab): "
                  "1 PASS, 1 FAIL, 0 INCONCLUSIVE.\n\n"
                  "| claim | statistic value | threshold | verdict |\n|---|---|---|---|\n"
                  f"| {c1} (`relu_falls`) | p = 0.01 \\| rho < 0 | {t1} | **PASS** |\n"
                  f"| {c2} (`ppl1_lossless`) | max +3% mean +1% | {t2} | **FAIL** |\n")
    other = claims.markdown(df, "cpu", "0123456789abcdef", other_shas={"pareto": "fedcba9876543210"})
    assert other.startswith("Claims checked on profile `cpu` (measurements of git 0123456789ab; pareto.csv of git "
                            "fedcba987654): 1 PASS")


# -----------------------------------------------------------------------------------------------
# README block


def test_update_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    before = "# title\n\n<!-- claims:gpu:start -->\ngpu table\n<!-- claims:gpu:end -->\n"
    after = "\ntail | with | pipes\n"
    readme.write_text(before + "<!-- claims:cpu:start -->\nold table\nmore\n<!-- claims:cpu:end -->" + after)
    assert claims.update_readme("new table\n", readme, "cpu") is True
    text = readme.read_text()
    assert text == before + "<!-- claims:cpu:start -->\nnew table\n<!-- claims:cpu:end -->" + after
    stamp = readme.stat().st_mtime_ns
    assert claims.update_readme("new table\n", readme, "cpu") is False  # the same block: not rewritten
    assert readme.read_text() == text and readme.stat().st_mtime_ns == stamp
    assert claims.update_readme("newer\n", readme, "cpu") is True  # idempotent on the markers
    assert readme.read_text().count("<!-- claims:cpu:start -->") == 1 and "newer" in readme.read_text()


@pytest.mark.parametrize("text", ["no markers\n", "<!-- claims:cpu:end -->\n<!-- claims:cpu:start -->\n",
                                  "<!-- claims:cpu:start -->\n<!-- claims:cpu:end -->\n" * 2,  # two blocks
                                  "<!-- claims:smoke:start -->\n<!-- claims:smoke:end -->\n"])
def test_update_readme_needs_the_markers(tmp_path, text):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(SparsingLawError, match="claims:cpu:start"):
        claims.update_readme("x", readme, "cpu")
    assert readme.read_text() == text
    with pytest.raises(SparsingLawError, match="claims:cpu:start"):  # no file, no folder: the same message
        claims.update_readme("x", tmp_path / "no" / "README.md", "cpu")


def _until(start: float, seconds: float, least: int = 20):
    """Yield 0, 1, 2, ... from wall time `start` until `start + seconds` (processes racing in one window), and
    at least `least` times (a worker that started late still takes part)."""
    import time

    time.sleep(max(start - time.time(), 0.0))
    i = 0
    while time.time() < start + seconds or i < least:
        yield i
        i += 1


def _race_readme(path: str, name: str, start: float) -> int:
    """Update one profile's block again and again; after each update that block must be the one written."""
    n = 0
    for i in _until(start, 1.5):
        claims.update_readme(f"{name} {i}", path, name)
        assert f"{name} {i}\n" in open(path).read(), f"{name}'s block {i} lost to a stale copy"
        n += 1
    return n


def _race_tables(folder: str, role: str, start: float) -> int:
    """The writer replaces a table and its sidecar again and again; the reader reads the pair meanwhile."""
    path = Path(folder) / "t.csv"
    n = 0
    for i in _until(start, 1.5):
        if role == "write":
            runs.write_table(pd.DataFrame({"x": [i] * (1 + i % 50)}), path, {"stage": "test"})
        else:
            assert runs.read_table(path, ["x"], ["x"])["x"].nunique() == 1
        n += 1
    return n


def test_two_verifies_at_once_keep_both_readme_blocks_and_tables_read_whole(tmp_path):
    """verify for cpu and gpu at once: each read, edited and wrote the README unlocked, so one put back the
    other's stale block (and their fixed temp name made a rename fail). A reader of a results table while
    write_table replaced it could read the new CSV beside the old sidecar and refuse it as edited by hand."""
    import multiprocessing as mp
    import time
    from concurrent.futures import ProcessPoolExecutor

    readme = tmp_path / "README.md"
    readme.write_text("".join(f"<!-- claims:{p}:start -->\n<!-- claims:{p}:end -->\n" for p in ("cpu", "gpu")))
    runs.write_table(pd.DataFrame({"x": [0]}), tmp_path / "t.csv", {"stage": "test"})
    with ProcessPoolExecutor(4, mp_context=mp.get_context("spawn")) as pool:
        start = time.time() + 6  # after every worker has started (when one starts late, it still races a while)
        futs = [pool.submit(_race_readme, str(readme), p, start) for p in ("cpu", "gpu")]
        futs += [pool.submit(_race_tables, str(tmp_path), role, start) for role in ("write", "read")]
        counts = [f.result() for f in futs]
    text = readme.read_text()
    assert f"cpu {counts[0] - 1}\n" in text and f"gpu {counts[1] - 1}\n" in text
    assert not list(tmp_path.glob(".*.tmp"))


# -----------------------------------------------------------------------------------------------
# evaluate / write / verify on a synthetic results folder

TOKENS = np.geomspace(1e7, 1e11, 8).round()
RUNS = {  # name: (activation, groups, N, law parameters)
    "relu-s1": ("relu", "scale,seeds", 3000, {"alpha": 0.5, "b": -1.5, "c": 0.5, "A0": 0.07}),
    "relu-s2": ("relu", "scale,width_depth", 10000, {"alpha": 0.6, "b": -1.5, "c": 0.4, "A0": 0.08}),
    "silu-s1": ("silu", "scale,seeds", 3000, {"alpha": 0.5, "c": 0.02, "A0": 0.42}),
    "silu-s2": ("silu", "scale", 10000, {"alpha": 0.6, "c": 0.02, "A0": 0.40}),
}


def synthetic_results(profile: config.ProfileConfig, ppl_ratio: float) -> None:
    """results/<profile>/{sparsity,neurons,tokens,sparse_inference}.csv with provenance sidecars (the
    sparse-inference one names the profile's settings, as notebook 06 writes it)."""
    name = profile.name
    from sparsinglaw import laws

    rng = np.random.default_rng(0)
    folder = runs.results_dir(name)
    sp, neurons, tokens, inf = [], [], [], []
    for run, (act, groups, N, params) in RUNS.items():
        form = "logspace_power" if act == "relu" else "power"
        A = laws.FORMS[form].f(TOKENS / 1e9, **params) + rng.normal(0, 0.002, TOKENS.size)
        loss = 3.0 + (N / 1e4) ** -0.2 + (TOKENS / 1e9) ** -0.3
        for k, t in enumerate(TOKENS):
            sp.append({"run": run, "activation": act, "groups": groups, "d_model": 16, "n_layers": 2,
                       "width_depth": 8.0, "non_embedding_params": N, "step": k, "tokens": t, "p": 1.0, "cett": 0.1,
                       "dense_loss": loss[k], "sparse_loss": loss[k] + 0.01, "ppl_ratio": 1.01,
                       "activation_ratio": A[k], "nonzero_ratio": 0.5, "dead_ratio": 0.0, "n_tokens": 1000,
                       "reached": True})
        for layer, neuron in np.ndindex(2, 20):
            f = rng.beta(2, 8)
            neurons.append({"run": run, "step": 7, "layer": layer, "neuron": neuron, "all": f, "code": f, "prose": f})
        base = rng.uniform(0.05, 0.5, 50)
        tokens += [{"run": run, "token_id": i, "count": 5, "activation_ratio": b + rng.normal(0, 0.01)}
                   for i, b in enumerate(base)]
        for p in (0, 1):
            inf.append({"run": run, "p": p, "domain": "all", "accuracy": 0.40, "dense_accuracy": 0.40,
                        "ppl_ratio": ppl_ratio if p else 1.0, "calib_ppl_ratio": 1.01,
                        "calib_applied_ppl_ratio": 1.012, "reached": True})
    for table, rows in (("sparsity", sp), ("neurons", neurons), ("tokens", tokens), ("sparse_inference", inf)):
        meta = {"synthetic": True, "git_sha": "0123456789abcdef", "corpus": SYNTH_CORPUS}
        if table == "sparse_inference":
            meta |= {"config_hash": profile.config_hash(), "inference": dataclasses.asdict(profile.inference)}
        runs.write_table(pd.DataFrame(rows), folder / f"{table}.csv", meta)


# the corpus the synthetic measurements name: every table derived from them names it too (not this machine's)
SYNTH_CORPUS = {"source": "synthetic", "files": 1, "bytes": 1, "sha256": "5" * 64}


@pytest.fixture(scope="module")
def synth_profile(tmp_path_factory, session_roots):
    """configs/smoke.yaml saved as <tmp>/synth.yaml, few bootstrap resamples, with synthetic results
    (PPL-1% ratio 1.10: ppl1_lossless FAILs)."""
    raw = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    raw["fit"]["n_boot"] = 10
    raw["sparsity"]["pareto_runs"] = []  # no Pareto sweep: the synthetic results hold no pareto.csv
    path = tmp_path_factory.mktemp("claims") / "synth.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in session_roots.items():
            mp.setenv(k, str(v))
        synthetic_results(config.load_profile(path), ppl_ratio=1.10)
    return path


def test_evaluate_and_write(synth_profile):
    P = config.load_profile(synth_profile)
    df = claims.evaluate(P)
    assert sorted(df["id"]) == sorted(claims.CLAIMS)
    v = df.set_index("id")["verdict"]
    assert v["ppl1_lossless"] == "FAIL" and v["relu_falls"] == "PASS" and v["relu_sparser"] == "PASS"
    md = claims.write(P, df)
    folder = runs.results_dir("synth")
    back = runs.read_table(folder / "claims.csv", claims.COLUMNS)
    assert list(back["id"]) == list(df["id"]) and back.attrs["meta"]["profile"] == "synth"
    text = (folder / "claims.md").read_text()
    # the header names the commit of the measurements (sparsity.csv's sidecar), not the checking code's
    assert text == md and text.startswith("Claims checked on profile `synth` (measurements of git 0123456789ab): ")
    assert back.attrs["meta"]["git_sha"] != "0123456789abcdef"
    assert back.attrs["meta"]["corpus"] == SYNTH_CORPUS  # the measurements' corpus
    assert text.count("\n| ") == len(df) + 1 and "**FAIL**" in text
    recorded = back.attrs["meta"]["inputs"]  # the base tables judged, by sha256 (compare checks them)
    assert set(recorded) == {f"{t}.csv" for t in ("sparsity", "neurons", "tokens", "sparse_inference", *claims.FITTED)}
    assert recorded["sparsity.csv"] == hashlib.sha256((folder / "sparsity.csv").read_bytes()).hexdigest()
    side = folder / "sparse_inference.meta.json"  # a measurement table remade at another commit is named
    before = side.read_text()
    try:
        side.write_text(json.dumps({**json.loads(before), "git_sha": "fedcba9876543210"}))
        assert claims.write(P, df).startswith("Claims checked on profile `synth` (measurements of git 0123456789ab; "
                                              "sparse_inference.csv of git fedcba987654): ")
    finally:
        side.write_text(before)
        claims.write(P, df)


def test_evaluate_passes_progress_to_the_fits(synth_profile, monkeypatch):
    from sparsinglaw import analysis

    seen, fit_profile = [], analysis.fit_profile
    monkeypatch.setattr(analysis, "fit_profile", lambda *a, **k: seen.append(k.get("progress")) or fit_profile(*a, **k))
    P = config.load_profile(synth_profile)
    claims.evaluate(P, progress=False)
    claims.evaluate(P)
    assert seen == [False, True]


def unmeasured_profile(tmp_path):
    """configs/smoke.yaml saved as <tmp>/unmeasured.yaml: a profile without any results."""
    path = tmp_path / "unmeasured.yaml"
    path.write_text((REPO / "configs" / "smoke.yaml").read_text())
    return path


def test_missing_tables_are_one_error(tmp_path):
    P = config.load_profile(unmeasured_profile(tmp_path))
    with pytest.raises(claims.MissingResults) as e:
        claims.evaluate(P)
    msg = str(e.value)
    assert "\n" not in msg
    for t in ("sparsity", "neurons", "tokens", "sparse_inference", "pareto"):
        assert f"{t}.csv" in msg
    assert f"pareto.csv: python -m sparsinglaw compute --profile {(tmp_path / 'unmeasured.yaml').resolve()} " \
           "(or notebook 02)" in msg
    # the commands load this profile again: a profile outside configs/ is named by its YAML path
    where = str((tmp_path / "unmeasured.yaml").resolve())
    assert f"python -m sparsinglaw measure --profile {where} (or notebook 02)" in msg
    assert f"python -m sparsinglaw compute --profile {where} (or notebook 06_sparse_inference)" in msg
    assert f"make them first: python -m sparsinglaw compute --profile {where} makes them all (train, measure" in msg


def test_a_missing_pareto_table_is_refused_when_the_profile_sweeps_runs(synth_profile):
    """Without pareto.csv the Pareto, CETT-sweep and MoE claims would read "no run" and verify would pass
    quietly: a profile whose sparsity.pareto_runs names runs needs the table (the synthetic one names none)."""
    assert len(claims.evaluate(config.load_profile(synth_profile), progress=False)) == len(claims.CLAIMS)
    P = config.load_profile(synth_profile, overrides=["sparsity.pareto_runs=[relu-s2]"])
    with pytest.raises(claims.MissingResults) as e:
        claims.evaluate(P, progress=False)
    assert "missing results table(s) pareto; make them first: pareto.csv: python -m sparsinglaw compute" in str(e.value)
    r = _cli("verify", "--profile", str(synth_profile), "--set", "sparsity.pareto_runs=[relu-s2]", "--no-progress")
    assert r.returncode == 1 and "missing results table(s) pareto" in r.stderr, r.stderr


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO / "lib"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "sparsinglaw", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_verify_exits_0_with_fail_verdicts(synth_profile, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- claims:synth:start -->\n<!-- claims:synth:end -->\nbottom\n")
    r = _cli("verify", "--profile", str(synth_profile), "--readme", str(readme))
    assert r.returncode == 0, r.stderr
    assert "**FAIL**" in r.stdout and "ppl1_lossless" in r.stdout
    text = readme.read_text()
    assert text.startswith("top\n<!-- claims:synth:start -->\nClaims checked on profile `synth`")
    assert text.endswith(" |\n<!-- claims:synth:end -->\nbottom\n")
    assert (runs.results_dir("synth") / "claims.md").read_text() in text


def test_verify_exits_1_when_results_are_missing(tmp_path):
    r = _cli("verify", "--profile", str(unmeasured_profile(tmp_path)))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    where = str((tmp_path / "unmeasured.yaml").resolve())
    assert "sparsity" in r.stderr and "sparse_inference" in r.stderr and f"measure --profile {where}" in r.stderr


def test_verify_readme_without_markers_is_an_error(synth_profile, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("nothing here\n")
    r = _cli("verify", "--profile", str(synth_profile), "--readme", str(readme))
    assert r.returncode == 2 and "claims:synth:start" in r.stderr and "Traceback" not in r.stderr
    assert readme.read_text() == "nothing here\n"


def test_fit_prints_every_law_beside_the_paper_and_writes_its_tables(synth_profile):
    """`fit`: the synthetic runs' Eq. 4 / Eq. 5 limits come back near the A0 they were drawn with, the
    printed table holds exactly those numbers next to the paper's rows, and every fit table is written."""
    from sparsinglaw import analysis

    r = _cli("fit", "--profile", str(synth_profile))
    assert r.returncode == 0, r.stderr
    fits = pd.read_csv(runs.results_dir("synth") / "fits.csv").set_index("run")
    for run, (_, _, _, params) in RUNS.items():
        assert fits.loc[run, "converged"] and abs(fits.loc[run, "A0"] - params["A0"]) < 0.01, run
        line = next(x for x in r.stdout.splitlines() if f" {run} (" in x)
        assert analysis._fmt(fits.loc[run, "A0"], fits.loc[run, "A0_lo"], fits.loc[run, "A0_hi"]) in line
    assert "paper (v1)" in r.stdout and "1.2B" in r.stdout
    verdicts = claims.evaluate(config.load_profile(synth_profile)).set_index("id")["verdict"]
    for cid in ("relu_falls", "silu_rises", "law_forms", "width_depth_linear", "width_depth_loss", "patterns_agree"):
        assert f"{verdicts[cid]:<12} {cid}: " in r.stdout  # the same verdicts as `verify`
    for name in analysis.FIT_TABLES:  # each with the corpus of the measurements it was fitted to
        meta = json.loads((runs.results_dir("synth") / f"{name}.meta.json").read_text())
        assert meta["corpus"] == SYNTH_CORPUS, name


def test_fit_refit_recomputes_every_table_once_and_leaves_unchanged_files(synth_profile):
    """`fit --refit` (after an edit of the fitting code): each derived table is computed once, and with
    the same code and inputs the files, sidecars included, stay byte for byte as they were."""
    from sparsinglaw import analysis

    folder = runs.results_dir("synth")
    assert _cli("fit", "--profile", str(synth_profile), "--no-progress").returncode == 0
    files = [folder / f"{n}{ext}" for n in analysis.FIT_TABLES for ext in (".csv", ".meta.json")]
    before = [f.read_bytes() for f in files]
    r = _cli("fit", "--profile", str(synth_profile), "--refit", "--no-progress")
    assert r.returncode == 0, r.stderr
    computing = [line for line in r.stderr.splitlines() if ": computing " in line]
    assert computing and all(line.endswith(" (refit) ...") for line in computing)
    assert sorted(re.findall(r"(\w+)\.csv", " ".join(computing))) == sorted(analysis.FIT_TABLES)
    assert [f.read_bytes() for f in files] == before


def test_fit_without_results_is_one_message(tmp_path):
    r = _cli("fit", "--profile", str(unmeasured_profile(tmp_path)))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    where = str((tmp_path / "unmeasured.yaml").resolve())
    assert "sparsity.csv" in r.stderr and f"python -m sparsinglaw measure --profile {where}" in r.stderr


def test_figure(tmp_path):
    from matplotlib import colors as mcolors

    df = pd.DataFrame([{"id": cid, "value": "x = 1; more", "verdict": v}
                       for cid, v in zip(claims.CLAIMS, itertools.cycle(claims.VERDICTS))])
    fig = claims.figure(df)
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert math.isfinite(fig.get_size_inches()[1])
    # one line per claim, top to bottom: its id, its verdict in a box of the verdict's colour, the headline
    colors = {"PASS": "#009E73", "FAIL": "#D55E00", "INCONCLUSIVE": "#999999"}
    texts = fig.axes[0].texts
    ids = [t.get_text() for t in texts if t.get_text() in claims.CLAIMS]
    assert ids == list(df["id"])
    boxes = [(t.get_text(), t.get_bbox_patch().get_facecolor()) for t in texts if t.get_bbox_patch() is not None]
    assert [v for v, _ in boxes] == list(df["verdict"])
    assert all(mcolors.to_hex(fc) == colors[v].lower() for v, fc in boxes)
    assert sum(t.get_text() == "x = 1" for t in texts) == len(df)  # the value up to its first ';'
    counts = ", ".join(f"{(df['verdict'] == v).sum()} {v.lower()}" for v in claims.VERDICTS)
    assert fig.axes[0].get_title(loc="left").endswith(counts)


# ----------------------------------------------------------------------------- width_depth_loss bounds, unfitted trends


def test_width_depth_loss_fails_only_when_the_whole_interval_is_below():
    """FAIL needs the deepest run's whole interval below every other's: E 2.75 lies below every other lower
    bound (the least 2.8), but its interval reaches 2.85, into relu-wd32's [2.8, 3.0]."""
    overlapping = wd_points([(3.6, 2.75, 2.6, 2.85, True, 4.4), *WD_OTHERS])
    assert claims.width_depth_loss(overlapping)["verdict"] == "INCONCLUSIVE"
    assert claims.width_depth_loss(wd_points([(3.6, 2.7, 2.6, 2.79, True, 4.4), *WD_OTHERS]))["verdict"] == "FAIL"


def test_width_depth_loss_touching_intervals_are_not_separated():
    """The deepest's [3.0, 3.4] and relu-wd32's [2.8, 3.0] share 3.0: neither lies entirely below the other."""
    touching = wd_points([(3.6, 3.2, 3.0, 3.4, True, 4.4), *WD_OTHERS])
    assert claims.width_depth_loss(touching)["verdict"] == "INCONCLUSIVE"


def test_trend_of_an_unfitted_run_counts_all_its_points():
    """A run whose law fit failed has no n_used (0 or NaN), and its rho is over all n_points checkpoints; that
    n counts (p 0.5 would hide the trend). Oracle: scipy's one-sided t-test p of Spearman's rho at n = 24,
    combined by scipy's Stouffer."""
    f = pd.DataFrame([{"run": f"relu-s{i}", "activation": "relu", "groups": "scale", "rho_tokens": -0.9,
                       "n_used": n_used, "n_points": 24} for i, n_used in enumerate((0, np.nan, 0))])
    row = claims.relu_falls(f)
    assert row["verdict"] == "PASS" and row["value"].count("(n=24)") == 3
    t = -0.9 * math.sqrt(22 / (1 - 0.81))
    p_one = stats.t.cdf(t, 22)
    combined = stats.combine_pvalues([p_one] * 3, method="stouffer").pvalue
    got = float(row["value"].split("combined p(rho < 0) = ")[1].split(",")[0])
    assert got == pytest.approx(combined, rel=0.05)


def test_relu_sparser_compares_the_final_checkpoints():
    """At the first checkpoint ReLU is the denser, at the final one the sparser, the rows in reverse order:
    the final checkpoints decide (PASS)."""
    rows = []
    for act, first, final in (("relu", 0.50, 0.20), ("silu", 0.40, 0.40)):
        for tokens, a in ((1e6, first), (2e6, final)):
            rows.append({"run": f"{act}-s1", "activation": act, "groups": "scale", "d_model": 16, "n_layers": 2,
                         "width_depth": 8.0, "non_embedding_params": 5000, "p": 1.0, "tokens": tokens,
                         "activation_ratio": a, "dense_loss": 4.0})
    t = pd.DataFrame(rows).iloc[::-1]  # rows in any order: the checkpoint with the most tokens counts
    row = claims.relu_sparser(t)
    assert row["verdict"] == "PASS" and "A 0.200 vs 0.400" in row["value"]


def test_explain_shows_the_rows_in_full():
    """Notebook 07's section cells showed the claims table, whose cells cut values and notes at 50
    characters ("combined p(rho < 0) = 0.04, p(rho > 0) = 0.96;..."): explain prints them whole."""
    long = "; ".join(f"relu-s{i}: -0.{i}1 (n=11)" for i in range(1, 9))
    df = pd.DataFrame([claims._row("relu_falls", long, "INCONCLUSIVE", 8, "checkpoints are autocorrelated"),
                       claims._row("cett_monotone", "every step", "PASS", 2)])
    text = claims.explain(df, ["cett_monotone", "relu_falls"])
    lines = text.splitlines()
    assert lines[0] == "cett_monotone: PASS (n = 2)" and lines[1] == "  value: every step"
    assert lines[2].startswith("  threshold: PASS:") and "note:" not in "".join(lines[:lines.index(
        "relu_falls: INCONCLUSIVE (n = 8)")])  # an empty note is left out
    assert " ".join(text.split()).count(long) == 1 and "note: checkpoints are autocorrelated" in text
    assert max(map(len, lines)) <= 110


def test_a_damaged_fit_table_or_another_csv_does_not_stop_the_fits(synth_profile, tmp_path, monkeypatch):
    """load_results reads the measurement tables only: a derived table that no longer parses (cut inside
    a quoted message) is computed again by the fits that write it, and another CSV in the folder is left
    alone; both stopped every fit, verify and replot with pandas' ParserError."""
    P = config.load_profile(synth_profile)
    analysis.fit_profile(P, progress=False)
    shutil.copytree(runs.results_dir("synth"), tmp_path / "synth")
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path))
    fits = tmp_path / "synth" / "fits.csv"
    good = fits.read_bytes()
    broken = b'a,b\n"x'  # pandas: "EOF inside string"
    with pytest.raises(ValueError):
        pd.read_csv(io.BytesIO(broken))
    fits.write_bytes(broken)
    (tmp_path / "synth" / "notes.csv").write_bytes(broken)
    assert sorted(analysis.load_results(P)) == ["neurons", "sparsity", "tokens"]
    analysis.fit_profile(P, progress=False)
    assert fits.read_bytes() == good and (tmp_path / "synth" / "notes.csv").read_bytes() == broken
