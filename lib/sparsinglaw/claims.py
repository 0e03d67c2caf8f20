"""Each claim of the paper as a statistical check on the results tables of a profile (notebook 07,
`python -m sparsinglaw verify`).

A check states its statistic, its PASS/FAIL rule and a verdict: PASS (the rule for the claim holds),
FAIL (the data contradict the claim by the stated rule) or INCONCLUSIVE (neither; e.g. too few runs,
a fit that did not converge, an interval that straddles a threshold). A FAIL is a finding, not an error.

Read top to bottom: the claims' texts (what, where in the paper, statistic, rule); small statistics
helpers; one pure function per claim (DataFrames in, rows out, nothing read or written); the registry
(which tables each check reads); then `evaluate` (reads results/<profile>/ through the cached
`analysis.*_for` functions, never checkpoints), `write` (claims.csv + claims.md), `update_readme` and
`figure`. Inputs: sparsity, neurons and tokens (`python -m sparsinglaw measure`), sparse_inference
(notebook 06), pareto (notebook 02 or compute; needed when sparsity.pareto_runs names runs), and the
tables derived from them by analysis.py (fits, form_comparison, width_depth, width_depth_fit, scale_fit,
convergence_summary, domain_agreement, token_pairs, seed_agreement).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from . import analysis, laws
from .config import ProfileConfig, SparsingLawError, command_for, profile_flags
from .runs import as_bool, as_text, folder_lock, noting_stale_tables, provenance, results_dir, sidecar, write_table
from .train import atomic_write_text

ALPHA = 0.05  # significance level of every test below
P_MIN = 1e-15  # Stouffer: each run's |z| at most isf(P_MIN) = 7.9, the same bound either way
COLUMNS = ["id", "claim", "paper", "statistic", "value", "threshold", "verdict", "n", "note"]
VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")
PAPER_ACTIVATIONS = analysis.PAPER_LAWS  # what the paper's claims are about; runs of others are named, not judged
TREND_GROUPS = ("scale", "seeds")  # runs whose activation-vs-data trend is tested (not width_depth-only runs)
LOSS_TOL = 0.05  # "comparable loss": dense losses within 5% (relative) of each other
A0_BAND = 0.05  # equivalence band of the A0 slope: +-5 points of activation ratio per decade of N
PEARSON_PASS, PEARSON_FAIL = 0.5, 0.3  # per-token agreement: every lower bound >= 0.5 / some upper bound < 0.3
KS_PASS, KS_FAIL = 0.2, 0.5  # per-domain agreement: largest Kolmogorov-Smirnov distance <= 0.2 / > 0.5
PPL_PASS, PPL_FAIL = 0.02, 0.05  # PPL-1% held-out perplexity increase (ratio - 1)
ACC_PASS, ACC_FAIL = 1.0, 3.0  # PPL-1% held-out accuracy drop (percentage points)
ENUM_MAX = 8  # every ordering enumerated (ties kept) up to this many points (8! = 40,320 orderings)
EXACT_MAX = 14  # exact p of untied ranks up to this many points (by dynamic programming, _sum_sq_counts)
# dense-vs-MoE perplexity margin: two separately trained models differ by about this much by chance (the
# cpu profile's three seeds of relu-s1 end at dense losses 4.371-4.405, perplexities 3.5% apart)
MOE_MARGIN = 0.03
TRADEOFF_MARGIN = 0.01  # PPL-p% vs a baseline: activation ratios (at PPL +1%) closer than this are a tie
TRADEOFF_BASELINES = ("topk", "topk_batch", "fat")  # exact zeros have one point: shown, not judged
MONOTONE_TOL = 1e-3  # a step of the CETT sweep against the trend by more than this (ratio units) is a reversal

# where each base table comes from, (command, notebook): the message of a missing one names them
SOURCES = {"sparsity": ("measure", "02"), "neurons": ("measure", "02"), "tokens": ("measure", "02"),
           "sparse_inference": ("compute", "06_sparse_inference")}
FITTED = ("fits", "form_comparison", "width_depth", "width_depth_fit", "scale_fit", "convergence_summary",
          "domain_agreement", "token_pairs", "seed_agreement")  # the derived tables the checks read

# id -> (claim, where in the paper, statistic, PASS/FAIL rule)
_TREND_STAT = ("per run, Spearman rho(tokens, A at PPL-1%) over the checkpoints its law fit used (runs of "
               f"groups scale/seeds); one-sided p per run, exact up to {EXACT_MAX} points, else from rho's "
               "t-distribution (scipy's spearmanr); the seed replicas of one shape combined into one p by "
               "Stouffer's method, then the shapes' p by the same")
_A0_STAT = ("slope of A0 on log10 N (runs of group scale) with its interval, per decade of N: the wider of OLS "
            "(scatter between runs) and least squares with the A0 bootstrap intervals as known errors "
            "(laws.fit_A0_vs_scale)")
CLAIMS = {
    "relu_falls": ("ReLU activation ratio falls with training data", "Sec. 4.2, Fig. 4 (Eq. 4)", _TREND_STAT,
                   "PASS: combined p(rho < 0) < 0.05 and most shapes rho < 0; FAIL: combined p(rho > 0) < 0.05 and "
                   "most shapes rho > 0"),
    "silu_rises": ("SiLU activation ratio rises with training data", "Sec. 4.2, Fig. 4 (Eq. 5)", _TREND_STAT,
                   "PASS: combined p(rho > 0) < 0.05 and most shapes rho > 0; FAIL: combined p(rho < 0) < 0.05 and "
                   "most shapes rho < 0"),
    "law_forms": ("Eq. 4 (ReLU) / Eq. 5 (SiLU) fit at least as well as the alternative forms",
                  "Sec. 4.2, Eq. 4-5, Table 2; rebuttal (log, sigmoid forms)",
                  "per run, the paper form's AICc gap to the best other form (same points; forms Eq. 4, Eq. 5, "
                  "log, sigmoid; AICc counts identified parameters: 4 for Eq. 4, 3 for the others) and its "
                  "two parametric-bootstrap p's (laws.form_null): p, the share of data sets simulated from the "
                  "run's own paper-form fit whose gap is at least as large, and p_alt, the share of data sets "
                  "simulated from the best other form's fit whose gap is at most as large; each combined per "
                  "activation by Stouffer's method; the share of runs whose paper form is within 2 AICc of the "
                  "best (by AIC too) is reported, not judged (a true Eq. 4 is within 2 only a few times in ten)",
                  "PASS: every activation's combined p_alt < 0.05 / (activations judged: ReLU, SiLU or both) (the "
                  "paper form beats the best other one by more than it does on data that form made) and no "
                  "activation's combined p below that; FAIL: some activation's combined p below that (the other "
                  "forms beat the paper's by more than they do on data the paper's form made)"),
    "relu_sparser": ("ReLU is sparser than SiLU at comparable loss", "Sec. 4.2, Fig. 4 (losses: Fig. 11)",
                     "per scale, relu-X vs silu-X at the final checkpoint: A at PPL-1% and dense validation "
                     f"loss (comparable: relative difference <= {LOSS_TOL:.0%})",
                     "PASS: every pair comparable with A_relu < A_silu; FAIL: some comparable pair with "
                     "A_relu >= A_silu"),
    "width_depth_linear": ("Activation ratio rises linearly with the width-depth ratio below a bottleneck",
                           "Sec. 4.3, Fig. 5",
                           "continuous piecewise-linear fit (flat above the breakpoint) of A0 vs d_model/n_layers "
                           "(A_last when A0 has no fit): slope below the breakpoint, its interval the union of the "
                           "intervals over the breakpoint's interval, and whether the breakpoint interval ends "
                           "inside the data (at least two runs above every accepted breakpoint: a bottleneck seen)",
                           "PASS: slope interval > 0 and a bottleneck seen; FAIL: slope interval < 0"),
    "width_depth_loss": ("Limit loss is worse for the deepest, narrowest models", "Sec. 4.3, Fig. 6",
                         "fitted limit loss E (loss law of each width-depth run, bootstrap interval): the run with the "
                         "smallest d_model/n_layers against the other runs with a converged loss law (final losses "
                         "shown, not judged)",
                         "PASS: some other run's E interval lies entirely below the deepest run's; FAIL: the deepest "
                         "run's lies entirely below every other run's"),
    "a0_scale_weak_relu": ("ReLU limit A0 depends only weakly on scale", "Sec. 4.4, Fig. 7",
                           _A0_STAT, f"equivalence: PASS: interval within +-{A0_BAND:g}; FAIL: interval outside it"),
    "a0_scale_weak_silu": ("SiLU limit A0 depends only weakly on scale", "Sec. 4.4, Fig. 7", _A0_STAT,
                           f"equivalence: PASS: interval within +-{A0_BAND:g}; FAIL: interval outside it"),
    "small_converge_faster_relu": ("Smaller ReLU models converge faster", "Sec. 4.4, Fig. 8",
                                   "Spearman rho(N, |dA/d(D/N)|) at the common data-scale ratio D/N of the "
                                   "converged fits; exact one-sided permutation p (ranks taken as untied above "
                                   f"{ENUM_MAX} runs, t approximation above {EXACT_MAX})",
                                   "PASS: rho < 0 and p < 0.05; FAIL: rho > 0 and p < 0.05"),
    "small_converge_faster_silu": ("Smaller SiLU models converge faster", "Sec. 4.4, Fig. 8",
                                   "Spearman rho(N, |dA/d(D/N)|) at the common data-scale ratio D/N of the "
                                   "converged fits; exact one-sided permutation p (ranks taken as untied above "
                                   f"{ENUM_MAX} runs, t approximation above {EXACT_MAX})",
                                   "PASS: rho < 0 and p < 0.05; FAIL: rho > 0 and p < 0.05"),
    "patterns_agree": ("Activation patterns agree across scales (per token, per domain)", "Sec. 4.4, Fig. 9-10",
                       "per-token activation ratios: Pearson r with Fisher-z 95% interval for every pair of runs "
                       "of one activation; per-domain neuron-frequency distributions: largest pairwise "
                       "Kolmogorov-Smirnov distance",
                       f"PASS: every r lower bound >= {PEARSON_PASS} and max KS <= {KS_PASS}; FAIL: some r upper "
                       f"bound < {PEARSON_FAIL} or max KS > {KS_FAIL}"),
    "dense_beats_moe": ("A dense model with PPL-p% sparsity beats an MoE at the same activation ratio",
                        "Fig. 2 (Sec. 1)",
                        "per MoE run at its trained k of E experts (activation ratio k/E): its perplexity over "
                        "that of each dense Pareto run of its activation on its PPL-p% curve (c swept) at the "
                        "same activation ratio, minus 1 (measure.moe_comparison)",
                        f"PASS: every MoE above the dense curve by > {MOE_MARGIN:.0%}; FAIL: some MoE below it by "
                        f"> {MOE_MARGIN:.0%}"),
    "cett_best_tradeoff": ("PPL-p% keeps fewer neurons than Top-k and FAT-eps at the same perplexity",
                           "Fig. 3 (v4 Fig. 2)",
                           "per dense Pareto run (final checkpoint, one evaluation set), the activation ratio at "
                           "which each method's PPL ratio reaches 1.01, read along straight lines between its "
                           "points (measure.tradeoff): PPL-p% (CETT swept) against Top-k per token, Top-k per "
                           "batch and FAT-eps (exact zeros shown, not judged)",
                           f"PASS: PPL-p% below every baseline by > {TRADEOFF_MARGIN:g}; FAIL: some baseline below "
                           f"PPL-p% by > {TRADEOFF_MARGIN:g}"),
    "cett_monotone": ("PPL rises and the activation ratio falls monotonically with the CETT value",
                      "v4 Fig. 15 (Algorithm 1's bisection)",
                      "per dense Pareto run, the steps of its CETT sweep (c ascending): how the activation ratio "
                      "and the PPL ratio move",
                      f"PASS: every step lowers the activation ratio and raises the PPL ratio; FAIL: some step "
                      f"moves one against its trend by > {MONOTONE_TOL:g}"),
    "ppl1_lossless": ("PPL-1% sparse inference is nearly lossless", "Table 1",
                      "over the runs, at p = 1 on held-out text (domain all): max perplexity increase "
                      "exp(loss - dense loss) - 1 and max next-token accuracy drop",
                      f"PASS: <= {PPL_PASS:.0%} and <= {ACC_PASS:g} point; FAIL: > {PPL_FAIL:.0%} or "
                      f"> {ACC_FAIL:g} points"),
}


class MissingResults(SparsingLawError):
    """Results tables a check needs are not there yet (the CLI exits 1: run the stage that makes them)."""

    exit_code = 1


def _row(cid: str, value: str, verdict: str, n: int, note: str = "") -> dict:
    claim, paper, statistic, threshold = CLAIMS[cid]
    assert verdict in VERDICTS, verdict
    return {"id": cid, "claim": claim, "paper": paper, "statistic": statistic, "value": value,
            "threshold": threshold, "verdict": verdict, "n": int(n), "note": note}


def _g(v, digits: int = 3) -> str:
    return f"{v:.{digits}g}" if v is not None and np.isfinite(v) else "-"


def _interval(v, lo, hi) -> str:
    return f"{_g(v)} [{_g(lo)}, {_g(hi)}]"


def _in_groups(df: pd.DataFrame, groups) -> pd.DataFrame:
    gs = df["groups"].fillna("").astype(str).str.split(",")
    return df[gs.map(lambda g: any(x in g for x in groups))]


# -----------------------------------------------------------------------------------------------
# statistics


@functools.cache
def _exact_null(rx: tuple[float, ...], ry: tuple[float, ...]) -> np.ndarray:
    """Spearman's rho of every ordering of the ranks ry against the ranks rx (ties kept): the exact null
    distribution of rho with ties (permutation_p, up to ENUM_MAX points; untied ranks: _sum_sq_counts)."""
    x, y = np.asarray(rx), np.asarray(ry)
    perms = np.array([y[list(p)] for p in itertools.permutations(range(y.size))])
    x, perms = x - x.mean(), perms - perms.mean(axis=1, keepdims=True)
    return perms @ x / (np.linalg.norm(perms, axis=1) * np.linalg.norm(x))


def _exact_tail(null: np.ndarray, rho: float, alternative: str) -> float:
    """P(rho_perm <= rho) ("less") or P(rho_perm >= rho) ("greater"), with a tolerance for rounding."""
    eps = 1e-9
    return float(np.mean(null <= rho + eps) if alternative == "less" else np.mean(null >= rho - eps))


@functools.cache
def _sum_sq_counts(n: int) -> np.ndarray:
    """counts[S]: how many of the n! orderings of n untied ranks have sum of squared rank differences S
    (Spearman's rho = 1 - 6 S / (n (n^2 - 1))): the exact null distribution, by dynamic programming over the
    set of ranks given to the first i points (n 2^(n-1) steps: 0.03 s at n = 11, under a second at 14)."""
    top = n * (n * n - 1) // 3  # the largest S, of the reversed order
    layer = {0: np.zeros(top + 1, dtype=np.int64)}
    layer[0][0] = 1
    for i in range(n):
        nxt: dict[int, np.ndarray] = {}
        for used, counts in layer.items():
            for j in range(n):
                if not used >> j & 1:
                    d = (i - j) ** 2
                    into = nxt.get(used | 1 << j)
                    if into is None:
                        into = nxt[used | 1 << j] = np.zeros(top + 1, dtype=np.int64)
                    into[d:] += counts[:top + 1 - d]
        layer = nxt
    return layer[(1 << n) - 1]


def spearman_p(rho: float, n: int, alternative: str) -> float:
    """One-sided p-value of a Spearman rho over n points ("less": rho < 0, "greater": rho > 0): exact
    (the share of the n! orderings of n untied ranks with a rho at least as extreme) up to EXACT_MAX points,
    where the t approximation is too optimistic (it gives p = 0 for rho = -1 at n = 3, the exact p being
    1/6; at 11 points and rho -0.6, 0.0255 where the exact p is 0.0281); above, the t-distribution with
    n - 2 degrees of freedom, as scipy.stats.spearmanr computes it, kept within [1/n!, 1 - 1/n!]: no
    ordering of n points has an exact p below 1/n! (the t approximation gives 0 at rho = -1), and the same
    margin at the top keeps the two directions' p adding up to 1. 0.5 (no evidence either way) when rho is
    undefined or n < 3."""
    if not np.isfinite(rho) or n < 3:
        return 0.5
    if n <= EXACT_MAX:
        counts = _sum_sq_counts(int(n))
        S = (1 - rho) * n * (n * n - 1) / 6  # rho <= rho_obs exactly when S >= S_obs
        at = np.arange(counts.size)
        tail = counts[at >= S - 1e-6] if alternative == "less" else counts[at <= S + 1e-6]
        return float(tail.sum() / counts.sum())
    t = rho * math.sqrt((n - 2) / max((1 + rho) * (1 - rho), 1e-300))
    p = stats.t.cdf(t, n - 2) if alternative == "less" else stats.t.sf(t, n - 2)
    floor = math.exp(-math.lgamma(n + 1))  # 1/n!
    return float(min(max(p, floor), 1 - floor))


def stouffer(p: np.ndarray) -> float:
    """Stouffer's combination of one-sided p-values: sf(sum(isf(p_i)) / sqrt(k)). For continuous p-values
    it is symmetric (the combined p of the opposite direction is 1 minus it), so at most one direction can
    be significant, which Fisher's method does not guarantee when runs disagree. Exact p-values of few
    points are discrete and their two one-sided p add up to more than 1 (both include the observed rho),
    which makes both combined p larger: conservative, and still at most one direction significant. Each
    z = isf(p) is kept within +-isf(P_MIN), so that a p of 0 and a p of 1 weigh the same either way."""
    z_max = stats.norm.isf(P_MIN)
    z = np.clip(stats.norm.isf(np.asarray(p, float)), -z_max, z_max)
    return float(stats.norm.sf(z.sum() / math.sqrt(z.size)))


def _spearman(x, y) -> float:
    return float(stats.spearmanr(x, y).statistic) if np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")


def permutation_p(x, y, alternative: str) -> float:
    """Exact one-sided permutation p-value of Spearman's rho (every ordering of y against x, ties kept;
    "less": P(rho_perm <= rho), "greater": P(rho_perm >= rho)); above ENUM_MAX points, spearman_p (ranks
    taken as untied)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = _spearman(x, y)
    if not np.isfinite(rho):
        return float("nan")
    if x.size > ENUM_MAX:
        return spearman_p(rho, x.size, alternative)
    null = _exact_null(tuple(stats.rankdata(x).tolist()), tuple(stats.rankdata(y).tolist()))
    return _exact_tail(null, rho, alternative)


# -----------------------------------------------------------------------------------------------
# the claims: one pure function each (tables in, rows out)


def _not_judged(df: pd.DataFrame) -> str:
    """A note naming the runs of `df` whose activation the paper makes no claim about (e.g. gelu, relu2:
    analysis.FORM gives them a law of our choosing), which a check leaves out; "" when there are none."""
    other = df[~df["activation"].isin(PAPER_ACTIVATIONS)]
    if other.empty:
        return ""
    if "run" in other:
        what = ", ".join(f"{a} ({', '.join(dict.fromkeys(g['run']))})"
                         for a, g in other.groupby("activation", sort=False, dropna=False))
    else:  # a table of activations (scale_fit)
        what = ", ".join(dict.fromkeys(other["activation"]))
    return f"not judged, the paper's claims being about ReLU and SiLU only: {what}"


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _reached(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of runs whose PPL-1% target was reached, and a note naming the others (analysis gives
    those no fit: their activation ratios are not PPL-1%)."""
    if "message" not in df:
        return df, ""
    missed = df["message"].astype(str).str.contains(analysis.UNREACHED, regex=False)
    names = list(dict.fromkeys(df.loc[missed, "run"]))
    return df[~missed], (f"left out, PPL-1% not reached: {', '.join(names)}" if names else "")


SHAPE = ["d_model", "n_layers", "non_embedding_params"]  # runs alike in these are seed replicas of one shape


def _trend(fits: pd.DataFrame, cid: str, activation: str, sign: int) -> dict:
    """relu_falls (sign -1) / silu_rises (sign +1): per-run Spearman trends, the seed replicas of a shape
    combined by Stouffer into one p, then the shapes' p by Stouffer again, and "most" counts shapes: a shape
    is one vote however many seeds it has, and one z in the combination (sharper than one run's when its
    seeds agree: up to sqrt(k) for k seeds). Counted run by run, the cpu profile's three seeds of its
    smallest shape outvoted the other three shapes of each activation."""
    others = _not_judged(_in_groups(fits, TREND_GROUPS))
    f, missed = _reached(_in_groups(fits[fits["activation"] == activation], TREND_GROUPS))
    if f.empty:
        return _row(cid, "no runs", "INCONCLUSIVE", 0,
                    _joined(missed or f"no {activation} run in groups {'/'.join(TREND_GROUPS)}", others))
    rho = f["rho_tokens"].to_numpy(float)
    n_used = pd.to_numeric(f["n_used"], errors="coerce").fillna(0).to_numpy(int)
    n = np.where(n_used > 0, n_used, f["n_points"].to_numpy(int))  # rho_tokens is over all points if not fitted
    claimed, opposite = ("less", "greater") if sign < 0 else ("greater", "less")
    p_run = {d: np.array([spearman_p(r, k, d) for r, k in zip(rho, n, strict=True)]) for d in (claimed, opposite)}
    shape = (f[SHAPE].astype(str).agg("|".join, axis=1) if set(SHAPE) <= set(f.columns)
             else f["run"]).to_numpy()  # a table without the shape columns: each run its own shape
    shapes = list(dict.fromkeys(shape))
    p_shape = {d: np.array([stouffer(v[shape == s]) for s in shapes]) for d, v in p_run.items()}
    p_claim, p_opp = stouffer(p_shape[claimed]), stouffer(p_shape[opposite])
    # the same rule both ways: a combined p and most shapes (more than half) going that way
    going = int(np.sum(p_shape[claimed] < p_shape[opposite]))  # shapes going the claimed way
    against = int(np.sum(p_shape[opposite] < p_shape[claimed]))
    verdict = ("PASS" if p_claim < ALPHA and 2 * going > len(shapes) else
               "FAIL" if p_opp < ALPHA and 2 * against > len(shapes) else "INCONCLUSIVE")
    rel = "<" if sign < 0 else ">"
    other = ">" if sign < 0 else "<"
    runs = "" if len(shapes) == len(rho) else f" ({len(rho)} runs: seed replicas of one shape combined first)"
    value = (f"{going}/{len(shapes)} shapes rho {rel} 0{runs}, combined p(rho {rel} 0) = {p_claim:.2g}, "
             f"p(rho {other} 0) = {p_opp:.2g}; " + ", ".join(
        f"{r}: {v:+.2f} (n={k})" for r, v, k in zip(f["run"], rho, n, strict=True)))
    note = ("checkpoints of one run are autocorrelated (cumulative training), so the per-run p-values and "
            "their combination are optimistic")
    if np.isnan(rho).any():
        note += f"; {int(np.isnan(rho).sum())} run(s) without a rho counted as p = 0.5"
    return _row(cid, value, verdict, len(shapes), _joined(note, missed, others))


def relu_falls(fits: pd.DataFrame) -> dict:
    return _trend(fits, "relu_falls", "relu", -1)


def silu_rises(fits: pd.DataFrame) -> dict:
    return _trend(fits, "silu_rises", "silu", +1)


def law_forms(comparison: pd.DataFrame) -> dict:
    """The paper form's AICc gap to the best other form, tested per activation both ways (analysis.
    form_comparison): against the gaps of data simulated from the paper form itself (null_p; small: the
    paper form is rejected, FAIL) and from the best other form (alt_p; small: the others are, PASS). The share
    of runs within 2 AICc is reported only: at ~10 points AICc's penalty for Eq. 4's fourth parameter keeps
    the true law within 2 of the three-parameter forms only a few times in ten, so a rule on it would all but
    never pass a true law."""
    others = _not_judged(comparison)
    paper = comparison[as_bool(comparison["paper_form"]) & comparison["activation"].isin(PAPER_ACTIVATIONS)]
    c, missed = _reached(paper.drop_duplicates("run"))
    if c.empty:
        return _row("law_forms", "no runs", "INCONCLUSIVE", 0,
                    _joined(missed or "form_comparison has no ReLU or SiLU paper-form rows", others))
    ok = c["delta_aicc"].le(2.0)  # NaN (no AICc) is not ok
    share = float(ok.mean())
    null_p, alt_p = (pd.to_numeric(c[col], errors="coerce") if col in c else pd.Series(np.nan, index=c.index)
                     for col in ("null_p", "alt_p"))
    groups = list(c.groupby("activation", sort=False).groups.items())
    level = ALPHA / len(groups)  # Bonferroni over the activations
    combined = {a: stouffer(null_p.loc[i].fillna(0.5).to_numpy()) for a, i in groups}
    combined_alt = {a: stouffer(alt_p.loc[i].fillna(0.5).to_numpy()) for a, i in groups}
    rejected = [a for a, pc in combined.items() if pc < level]
    favoured = [a for a, pc in combined_alt.items() if pc < level]
    verdict = "FAIL" if rejected else "PASS" if len(favoured) == len(groups) else "INCONCLUSIVE"
    per = ", ".join(f"{a}: {int(ok.loc[i].sum())}/{len(i)} within 2, combined p = {combined[a]:.2g}, "
                    f"p_alt = {combined_alt[a]:.2g}" for a, i in groups)
    converged = ok & as_bool(c["converged"])
    value = (f"{int(ok.sum())}/{len(c)} runs ({share:.0%}) within 2 AICc; {per}; of these, {int(converged.sum())} "
             "with a converged paper-form fit")
    if rejected:  # what decides the FAIL first (the figure shows a value's first part)
        value = ", ".join(f"{a}'s combined p = {combined[a]:.3g} < {level:.3g}" for a in rejected) + "; " + value
    elif verdict == "PASS":  # and the PASS's
        value = ", ".join(f"{a}'s combined p_alt = {combined_alt[a]:.3g}" for a in favoured) + f" < {level:.3g}; " \
            + value
    if "delta_aic" in c:  # the same rule by AIC, without the small-sample correction (reported, not used)
        value += f"; by AIC {int(c['delta_aic'].le(2.0).sum())}/{len(c)}"
    worst = c.loc[~ok, ["run", "delta_aicc"]]
    low = null_p[null_p < ALPHA]
    untested = c.loc[null_p.isna(), "run"].tolist()
    untested_alt = c.loc[alt_p.isna() & null_p.notna(), "run"].tolist()
    n_sim = pd.to_numeric(c["null_n"], errors="coerce").max() if "null_n" in c else 0
    note = ("AICc on the same points and drop rule; a fit on a bound still counts as a curve; p per run from "
            f"{int(n_sim) if n_sim > 0 else 0} simulated data sets at most"
            + ("; paper form behind: " + ", ".join(f"{r} (dAICc {_g(d)})" for r, d in worst.itertuples(index=False))
               if len(worst) else "")
            + (f"; p < {ALPHA:g}: " + ", ".join(f"{r} ({_g(v)})" for r, v in zip(c.loc[low.index, "run"], low,
                                                                              strict=True)) if len(low) else "")
            + (f"; no test (counted as p = 0.5): {', '.join(untested)}" if untested else "")
            + (f"; no test of the other forms (counted as p_alt = 0.5): {', '.join(untested_alt)}"
               if untested_alt else ""))
    return _row("law_forms", value, verdict, len(c), _joined(note, missed, others))


def relu_sparser(sparsity: pd.DataFrame) -> dict:
    """relu-X vs silu-X (same name after the activation; activations relu and silu) at the final checkpoint,
    PPL-1%."""
    last = analysis.activation_points(sparsity, 1.0).groupby("run", sort=False).tail(1).set_index("run")
    last = _in_groups(last.reset_index(), TREND_GROUPS)
    others = _not_judged(last)
    last = last.set_index("run")
    act = last["activation"]
    pairs = [(r, "silu" + r[4:]) for r in last.index if r.startswith("relu") and act[r] == "relu"
             and "silu" + r[4:] in last.index and act["silu" + r[4:]] == "silu"]
    if not pairs:
        return _row("relu_sparser", "no relu-X/silu-X pairs", "INCONCLUSIVE", 0,
                    _joined(f"no silu run named like a relu run in groups {'/'.join(TREND_GROUPS)}", others))
    parts, comparable, sparser = [], [], []
    for r, s in pairs:
        a_r, a_s = last.loc[r, "activation_ratio"], last.loc[s, "activation_ratio"]
        l_r, l_s = last.loc[r, "dense_loss"], last.loc[s, "dense_loss"]
        rel = abs(l_r - l_s) / min(l_r, l_s)
        missed = [x for x in (r, s) if "reached" in last and not as_bool(last.loc[x, "reached"])]
        comparable.append(bool(rel <= LOSS_TOL) and not missed)
        sparser.append(bool(a_r < a_s))
        parts.append(f"{r}/{s}: A {a_r:.3f} vs {a_s:.3f}, loss {l_r:.3f} vs {l_s:.3f} ({rel:.1%})"
                     + (f", PPL-1% not reached for {' and '.join(missed)}" if missed else ""))
    comparable, sparser = np.array(comparable), np.array(sparser)
    verdict = ("FAIL" if np.any(comparable & ~sparser) else "PASS" if np.all(comparable & sparser)
               else "INCONCLUSIVE")
    note = ("" if comparable.all() else f"{int((~comparable).sum())} pair(s) not comparable (losses more than "
            f"{LOSS_TOL:.0%} apart, or PPL-1% not reached)")
    head = (f"ReLU sparser in {int((comparable & sparser).sum())} of the {int(comparable.sum())} comparable pairs "
            f"(losses within {LOSS_TOL:.0%}, PPL-1% reached), {len(pairs)} pairs in all")  # what the verdict judges
    return _row("relu_sparser", "; ".join([head, *parts]), verdict, len(pairs), _joined(note, others))


def width_depth_linear(wd_fit: pd.DataFrame) -> dict:
    """The piecewise-linear fit's slope below the breakpoint (A0 if fitted, else A_last)."""
    pw = wd_fit[wd_fit["kind"] == "piecewise_linear"].set_index("quantity")
    fitted = [q for q in ("A0", "A_last") if q in pw.index and np.isfinite(pw.loc[q, "slope_below"])]
    if not fitted:
        msgs = "; ".join(f"{q}: {pw.loc[q, 'message']}" for q in pw.index)
        return _row("width_depth_linear", "no piecewise fit", "INCONCLUSIVE", 0, msgs)
    q = fitted[0]
    r = pw.loc[q]
    lo, hi = r["slope_below_lo"], r["slope_below_hi"]
    inside = as_bool(r["inside"])
    verdict = ("FAIL" if np.isfinite(hi) and hi < 0 else "PASS" if np.isfinite(lo) and lo > 0 and inside
               else "INCONCLUSIVE")
    unplaced = laws.UNPLACED in str(r["message"])
    value = (f"{q}: slope below {_interval(r['slope_below'], lo, hi)} per unit of d_model/n_layers; breakpoint "
             f"{_interval(r['breakpoint'], r['breakpoint_lo'], r['breakpoint_hi'])}, "
             + ("every candidate: not placed by the data, no bottleneck seen" if unplaced else "inside the data"
                if inside else "interval reaching the last candidate: no bottleneck seen"))
    notes = [f"{q}: {r['message']}"] if isinstance(r["message"], str) and r["message"] else []
    if q != "A0" and "A0" in pw.index:
        notes.insert(0, f"A0 not used ({pw.loc['A0', 'message']})")
    return _row("width_depth_linear", value, verdict, int(r["n"]), "; ".join(notes))


def width_depth_loss(points: pd.DataFrame) -> dict:
    """The deepest, narrowest width-depth run's limit loss E against the other runs, by their bootstrap
    intervals (analysis.width_depth's points): worse when some other run's interval lies entirely below
    its own (the one with the lowest upper bound is shown), better when its own lies below every other's;
    each run's final loss is described in the note."""
    d = points.sort_values("width_depth").reset_index(drop=True) if len(points) else points
    if len(d) < 3:
        return _row("width_depth_loss", f"{len(d)} width-depth run(s)", "INCONCLUSIVE", len(d),
                    "needs at least 3 runs of group width_depth")
    fitted = as_bool(d["loss_converged"]) & np.isfinite(d["E_lo"].astype(float)) & np.isfinite(d["E_hi"].astype(float))
    note = ""
    if d["final_loss"].notna().all():
        fl = d["final_loss"].astype(float)
        low = d.loc[fl.idxmin()]
        note = (f"final loss of each run (not judged): lowest {low['final_loss']:.4g} at d/L "
                f"{low['width_depth']:.3g}; the deepest run's {fl.iloc[0]:.4g} is "
                f"{math.exp(fl.iloc[0] - fl.min()) - 1:+.1%} in perplexity")
    deep, others = d.iloc[0], d.iloc[1:][fitted.iloc[1:]]
    if not fitted.iloc[0] or len(others) < 2:
        return _row("width_depth_loss", f"{int(fitted.sum())} of {len(d)} runs with a converged loss law and an E "
                    "interval (the deepest among them)" if fitted.iloc[0] else
                    f"no converged loss law with an E interval for the deepest run {deep['run']}",
                    "INCONCLUSIVE", int(fitted.sum()), note)
    surest = others.loc[others["E_hi"].astype(float).idxmin()]  # the other run most surely below the deepest

    def e(r) -> str:
        return f"{r['run']} (d/L {r['width_depth']:.3g}): E {_interval(r['E'], r['E_lo'], r['E_hi'])}"

    verdict = ("PASS" if float(deep["E_lo"]) > float(surest["E_hi"]) else
               "FAIL" if float(deep["E_hi"]) < others["E_lo"].astype(float).min() else "INCONCLUSIVE")
    return _row("width_depth_loss", f"deepest {e(deep)}; lowest upper bound among the others {e(surest)}",
                verdict, int(fitted.sum()), note)


def a0_scale_weak(scale_fit: pd.DataFrame) -> list[dict]:
    """Equivalence test of the A0 slope per decade of N against +-A0_BAND, one row per activation."""
    rows, others = [], _not_judged(scale_fit)
    for act in PAPER_ACTIVATIONS:
        cid = f"a0_scale_weak_{act}"
        g = scale_fit[scale_fit["activation"] == act].set_index("quantity")
        if "A0" not in g.index or not np.isfinite(g.loc["A0", "slope"]):
            msg = g.loc["A0", "message"] if "A0" in g.index else f"no {act} row in scale_fit"
            n = int(g.loc["A0", "n"]) if "A0" in g.index else 0
            ref = ""  # the final ratios' slope: no verdict, but what the runs show (it was in the note only)
            if "A_last" in g.index and np.isfinite(g.loc["A_last", "slope"]):
                a = g.loc["A_last"]
                ref = f"A_last slope {_interval(a['slope'], a['slope_lo'], a['slope_hi'])}/decade"
                msg += f"; for reference, {ref}"
            rows.append(_row(cid, f"no A0 fit ({ref}, for reference)" if ref else "no A0 fit", "INCONCLUSIVE", n,
                             _joined(msg, others)))
            continue
        r = g.loc["A0"]
        lo, hi = r["slope_lo"], r["slope_hi"]
        verdict = ("PASS" if -A0_BAND <= lo and hi <= A0_BAND else "FAIL" if lo > A0_BAND or hi < -A0_BAND
                   else "INCONCLUSIVE")
        how = f" ({r['method']})" if isinstance(r.get("method"), str) else ""
        value = (f"slope {_interval(r['slope'], lo, hi)} per decade of N{how}; fitted change "
                 f"{100 * r['change_fit']:+.1f} points over {r['N_max'] / r['N_min']:.1f}x N")
        rows.append(_row(cid, value, verdict, int(r["n"]),
                         _joined("paper: ReLU +1.7, SiLU -2.7 points over ~11x N (0.1B to 1.2B)", others)))
    return rows


def small_converge_faster(conv_summary: pd.DataFrame) -> list[dict]:
    """Spearman rho(N, |speed|) at the common D/N with an exact permutation p, one row per activation."""
    rows, others = [], _not_judged(conv_summary)
    for act in PAPER_ACTIVATIONS:
        cid = f"small_converge_faster_{act}"
        g = conv_summary[conv_summary["activation"] == act]
        msg = as_text(g, "message")
        steps = (f"left out, fits whose slope is not measured (a step, laws.is_step, or a transient whose alpha "
                 f"and c are not identified): {', '.join(g.loc[msg != '', 'run'])}" if (msg != "").any() else "")
        g = g[np.isfinite(g["dA_dratio_common"].to_numpy(float))]
        if len(g) < 3:
            rows.append(_row(cid, f"{len(g)} run(s)", "INCONCLUSIVE", len(g),
                             _joined(f"needs >= 3 converged {act} fits of group scale sharing a D/N range", steps,
                                     others)))
            continue
        N, speed = g["non_embedding_params"].to_numpy(float), np.abs(g["dA_dratio_common"].to_numpy(float))
        rho = _spearman(N, speed)
        if not np.isfinite(rho) or rho == 0:
            rows.append(_row(cid, f"rho = {_g(rho)}", "INCONCLUSIVE", len(g), _joined("no ordering to test", others)))
            continue
        p = permutation_p(N, speed, "less" if rho < 0 else "greater")
        verdict = "PASS" if rho < 0 and p < ALPHA else "FAIL" if rho > 0 and p < ALPHA else "INCONCLUSIVE"
        how = ("exact permutation" if len(g) <= ENUM_MAX else "exact permutation, ranks taken as untied"
               if len(g) <= EXACT_MAX else "t approximation")
        least = 1 / math.factorial(len(g)) if len(g) <= EXACT_MAX else 0.0  # ties: at least this
        value = (f"rho = {rho:+.2f} (point estimate: {'smaller' if rho < 0 else 'larger'} models faster) over "
                 f"{len(g)} runs"
                 + (f", too few for p < {ALPHA:g}" if least >= ALPHA else "")
                 + f"; at D/N = {_g(g['ratio_common'].iloc[0])}, one-sided p = {p:.3g} ({how})")
        note = (f"smallest attainable one-sided p with {len(g)} runs: 1/{math.factorial(len(g))} = "
                f"{1 / math.factorial(len(g)):.3g}" if len(g) <= EXACT_MAX else "")
        rows.append(_row(cid, value, verdict, len(g), _joined(note, steps, others)))
    return rows


def patterns_agree(domain_agreement: pd.DataFrame, token_pairs: pd.DataFrame,
                   seed_agreement: pd.DataFrame | None = None) -> dict:
    """Per-token Pearson intervals and per-domain KS distances across every pair of runs; the note gives
    the same numbers between seed replicas of one shape (seed_agreement), the yardstick they are read
    against (it does not enter the verdict)."""
    tp = token_pairs[np.isfinite(token_pairs["pearson"].to_numpy(float))]
    da = domain_agreement[np.isfinite(domain_agreement["ks"].to_numpy(float))]
    if tp.empty and da.empty:
        return _row("patterns_agree", "no pairs", "INCONCLUSIVE", 0, "needs >= 2 runs of one activation")
    parts = []
    if len(tp):
        w = tp.loc[tp["pearson_lo"].idxmin()]
        lowest = _interval(w["pearson"], w["pearson_lo"], w["pearson_hi"])
        parts.append(f"Pearson r {tp['pearson'].min():.2f} to {tp['pearson'].max():.2f} over {len(tp)} pairs, "
                     f"lowest interval {lowest} ({w['run_a']}/{w['run_b']})")
    if len(da):
        w = da.loc[da["ks"].idxmax()]
        parts.append(f"max KS {w['ks']:.3f} ({w['run_a']}/{w['run_b']}, domain {w['domain']})")
    max_ks = da["ks"].max() if len(da) else np.nan
    fail = bool((tp["pearson_hi"] < PEARSON_FAIL).any() or max_ks > KS_FAIL)
    ok = (len(tp) and len(tp) == len(token_pairs) and (tp["pearson_lo"] >= PEARSON_PASS).all()
          and len(da) and len(da) == len(domain_agreement) and max_ks <= KS_PASS)
    verdict = "FAIL" if fail else "PASS" if ok else "INCONCLUSIVE"
    notes = []
    if len(tp) < len(token_pairs):
        notes.append(f"{len(token_pairs) - len(tp)} token pair(s) without a correlation (too few shared tokens)")
    if len(da) < len(domain_agreement):
        notes.append(f"{len(domain_agreement) - len(da)} domain pair(s) without a KS distance")
    if len(tp):
        notes.append(f"{int(tp['n_tokens'].min())} to {int(tp['n_tokens'].max())} shared tokens per pair")
    sr = pd.DataFrame() if seed_agreement is None else seed_agreement.dropna(subset=["pearson"])
    if len(sr):
        notes.append(f"yardstick, seed replicas (one shape and token budget): Pearson r {sr['pearson'].min():.2f} "
                     f"to {sr['pearson'].max():.2f} over {len(sr)} pairs, max KS {seed_agreement['max_ks'].max():.3f}")
    else:
        notes.append("no seed replicas of one shape to compare with")
    return _row("patterns_agree", "; ".join(parts), verdict, len(tp), "; ".join(notes))


def ppl1_lossless(sparse_inference: pd.DataFrame) -> dict:
    """Max held-out PPL increase and accuracy drop at p = 1 (domain all) over the runs."""
    s = sparse_inference[np.isclose(sparse_inference["p"].astype(float), 1.0) & (sparse_inference["domain"] == "all")]
    if s.empty:
        return _row("ppl1_lossless", "no p = 1 rows", "INCONCLUSIVE", 0,
                    "sparse_inference has no rows at p = 1, domain all")
    if (s[["accuracy", "dense_accuracy"]].to_numpy(float) > 1).any():
        raise SparsingLawError("sparse_inference.csv: accuracy above 1; expected a share of tokens in [0, 1]")
    inc = s["ppl_ratio"].astype(float) - 1
    drop = 100 * (s["dense_accuracy"].astype(float) - s["accuracy"].astype(float))
    bad = ~(np.isfinite(inc) & np.isfinite(drop))
    if bad.any():  # a max over the others would pass a run that was never measured
        return _row("ppl1_lossless", "no PPL ratio or accuracy for " + ", ".join(s.loc[bad, "run"]), "INCONCLUSIVE",
                    int((~bad).sum()), "sparse_inference has missing numbers at p = 1, domain all")
    a, b = s.loc[inc.idxmax()], s.loc[drop.idxmax()]
    verdict = ("FAIL" if inc.max() > PPL_FAIL or drop.max() > ACC_FAIL
               else "PASS" if inc.max() <= PPL_PASS and drop.max() <= ACC_PASS else "INCONCLUSIVE")
    value = (f"max PPL increase {inc.max():+.2%} ({a['run']}), max accuracy drop {drop.max():+.2f} points "
             f"({b['run']}); mean {inc.mean():+.2%}, {drop.mean():+.2f} points")
    note = ("held-out windows disjoint from the calibration set; calibration PPL ratio "
            f"{s['calib_ppl_ratio'].min():.4f} to {s['calib_ppl_ratio'].max():.4f} at the search's thresholds")
    if "calib_applied_ppl_ratio" in s:
        a = s["calib_applied_ppl_ratio"].astype(float)
        note += f", {a.min():.4f} to {a.max():.4f} at the applied (batch-averaged) ones"
    missed = s.loc[~as_bool(s["reached"]), "run"] if "reached" in s else []
    if len(missed):
        note += "; PPL-1% not reached for " + ", ".join(missed)
    return _row("ppl1_lossless", value, verdict, len(s), note)


def dense_beats_moe(moe: pd.DataFrame) -> dict:
    """Each MoE at its trained k against the dense PPL-p% curve of its activation (measure.moe_comparison)."""
    m = moe[moe["trained_k"].astype(bool) & (moe["dense_activation"] == moe["activation"])] if len(moe) else moe
    if m.empty:
        return _row("dense_beats_moe", "no MoE run", "INCONCLUSIVE", 0,
                    "no MoE run among sparsity.pareto_runs, or no dense run of its activation there")
    gap = m["gap_pct"].astype(float) / 100
    parts = [f"{r.moe_run} (k {r.k}/{r.n_experts}, A {r.activation_ratio:.3g}): PPL {r.ppl_moe:.4g} vs "
             f"{r.dense_run} {r.ppl_dense_at_ratio:.4g} ({g:+.1%})" if np.isfinite(g) else
             f"{r.moe_run} (k {r.k}/{r.n_experts}, A {r.activation_ratio:.3g}): sparser than every point of "
             f"{r.dense_run}'s curve, not compared"
             for r, g in zip(m.itertuples(index=False), gap, strict=True)]
    ok = gap.notna() & np.isfinite(gap)
    verdict = ("FAIL" if (gap[ok] < -MOE_MARGIN).any() else
               "PASS" if ok.all() and (gap > MOE_MARGIN).all() else "INCONCLUSIVE")
    note = "dense curve read by linear interpolation in the activation ratio; one evaluation set, one seed"
    head = (f"MoE above the dense curve by > {MOE_MARGIN:.0%} in {int((gap[ok] > MOE_MARGIN).sum())} of {len(m)} "
            f"comparisons, below it by > {MOE_MARGIN:.0%} in {int((gap[ok] < -MOE_MARGIN).sum())}"
            + (f", {int((~ok).sum())} not compared" if (~ok).any() else ""))  # the headline: every comparison
    return _row("dense_beats_moe", "; ".join([head, *parts]), verdict, int(ok.sum()), note)


def cett_best_tradeoff(tradeoff: pd.DataFrame) -> dict:
    """PPL-p% against each baseline at PPL +1% (measure.tradeoff, p = 1). A bound becomes an interval of
    the activation ratio ("=": the point; "<=": at most it; ">": above it): PPL-p% wins a comparison when
    its interval lies below the baseline's by more than TRADEOFF_MARGIN, loses it when above by more."""
    if tradeoff.empty:
        return _row("cett_best_tradeoff", "no Pareto run", "INCONCLUSIVE", 0,
                    "no dense run among sparsity.pareto_runs (results/<profile>/pareto.csv)")

    def interval(r) -> tuple[float, float]:
        a = float(r["activation_ratio"])
        return {"=": (a, a), "<=": (0.0, a), ">": (a, 1.0)}[r["bound"]]

    def shown(r) -> str:
        if r["bound"] == "none":
            return "no finite point"
        return f"{'' if r['bound'] == '=' else r['bound'] + ' '}{float(r['activation_ratio']):.3g}"

    parts, wins, losses, n, uncompared = [], 0, 0, 0, 0
    for run, sub in tradeoff.groupby("run", sort=False):
        by = {r["method"]: r for _, r in sub.iterrows()}
        if "cett" not in by or by["cett"]["bound"] == "none":  # its baselines cannot be judged: no PASS
            uncompared += 1
            parts.append(f"{run}: no PPL-p% curve")
            continue
        c_lo, c_hi = interval(by["cett"])
        text = [f"PPL-p% {shown(by['cett'])}"]
        for m in TRADEOFF_BASELINES:
            if m in by:
                n += 1
                if by[m]["bound"] != "none":
                    b_lo, b_hi = interval(by[m])
                    wins += c_hi < b_lo - TRADEOFF_MARGIN
                    losses += c_lo > b_hi + TRADEOFF_MARGIN
                text.append(f"{m} {shown(by[m])}")
        if "zeros" in by:  # one point, at the dense PPL: shown as measured
            text.append(f"exact zeros {float(by['zeros']['activation_ratio']):.3g} (one point)")
        parts.append(f"{run}: " + ", ".join(text))
    verdict = "FAIL" if losses else "PASS" if n and wins == n and not uncompared else "INCONCLUSIVE"
    note = (f"{wins} of {n} comparisons won, {losses} lost; activation ratio at PPL ratio 1.01, one evaluation "
            "set and one seed per run")
    head = (f"PPL-p% sparser than the baseline in {wins} of {n} comparisons, denser in {losses}"
            + (f", {uncompared} run(s) without a PPL-p% curve" if uncompared else ""))  # the headline: every run
    return _row("cett_best_tradeoff", "; ".join([head, *parts]), verdict, n, note)


def cett_monotone(points: pd.DataFrame) -> dict:
    """Each dense Pareto run's CETT sweep, c ascending: the activation ratio must fall and the PPL ratio
    rise at every step. A step against the trend by more than MONOTONE_TOL is a reversal (FAIL); a smaller
    one, a flat step, or a run with one value of c (no step) leaves the verdict INCONCLUSIVE. A value of c
    swept twice counts once, at the mean of its points."""
    sweep = points[points["method"] == "cett"] if len(points) else points
    if sweep.empty:
        return _row("cett_monotone", "no CETT sweep", "INCONCLUSIVE", 0,
                    "no dense run among sparsity.pareto_runs (results/<profile>/pareto.csv)")
    parts, strict, reversed_, falling, rising, steps = [], True, False, 0, 0, 0
    for run, sub in sweep.groupby("run", sort=False):
        # one point per c (a value swept twice: its mean), c ascending; a run needs two to show a trend
        sub = sub.groupby("param", as_index=False)[["activation_ratio", "ppl_ratio"]].mean()
        strict &= len(sub) >= 2
        da = np.diff(sub["activation_ratio"].to_numpy(float))
        dr = np.diff(sub["ppl_ratio"].to_numpy(float))
        strict &= bool((da < 0).all() and (dr > 0).all())
        reversed_ |= bool((da > MONOTONE_TOL).any() or (dr < -MONOTONE_TOL).any())
        a, r, c = (sub[k].astype(float) for k in ("activation_ratio", "ppl_ratio", "param"))
        falling, rising, steps = falling + int((da < 0).sum()), rising + int((dr > 0).sum()), steps + len(da)
        parts.append(f"{run} ({len(sub)} values of c, {c.iloc[0]:g} to {c.iloc[-1]:g}): A {a.iloc[0]:.3g} to "
                     f"{a.iloc[-1]:.3g}, {int((da < 0).sum())} of {len(da)} steps falling; PPL ratio "
                     f"{r.iloc[0]:.4f} to {r.iloc[-1]:.4f}, {int((dr > 0).sum())} of {len(dr)} rising")
    verdict = "FAIL" if reversed_ else "PASS" if strict else "INCONCLUSIVE"
    head = (f"A falls at {falling} of {steps} steps of c, the PPL ratio rises at {rising} of {steps} "
            f"({len(parts)} run(s))")  # the headline (claims.figure, compare): both trends, every run
    return _row("cett_monotone", "; ".join([head, *parts]), verdict, sweep["run"].nunique(),
                "final checkpoint, one evaluation set; on one evaluation set every threshold grows with c, so the "
                "activation ratio cannot rise (its half of the rule checks the code): the PPL half is the test")


# -----------------------------------------------------------------------------------------------
# registry: each check and the tables it reads (names of `inputs`)

REGISTRY = [
    (relu_falls, ("fits",)),
    (silu_rises, ("fits",)),
    (law_forms, ("form_comparison",)),
    (relu_sparser, ("sparsity",)),
    (width_depth_linear, ("width_depth_fit",)),
    (width_depth_loss, ("width_depth",)),
    (a0_scale_weak, ("scale_fit",)),
    (small_converge_faster, ("convergence_summary",)),
    (patterns_agree, ("domain_agreement", "token_pairs", "seed_agreement")),
    (cett_best_tradeoff, ("tradeoff",)),
    (cett_monotone, ("pareto",)),
    (ppl1_lossless, ("sparse_inference",)),
    (dense_beats_moe, ("moe_comparison",)),
]


def summary(rows: list[dict]) -> str:
    """Claim rows (one check or several, e.g. those of one notebook) as lines: verdict, id, value."""
    return "\n".join(f"{r['verdict']:<12} {r['id']}: {r['value']}" + (f"  ({r['note']})" if r["note"] else "")
                     for r in rows)


def check(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every check of REGISTRY on `tables` (name -> DataFrame): the claims table (COLUMNS)."""
    rows = []
    for fn, needs in REGISTRY:
        out = fn(*(tables[n] for n in needs))
        rows.extend(out if isinstance(out, list) else [out])
    return pd.DataFrame(rows, columns=COLUMNS)


# -----------------------------------------------------------------------------------------------
# profile level: results/<profile>/ in, claims.csv and claims.md out


def _profile(profile: ProfileConfig | str) -> ProfileConfig:
    if isinstance(profile, ProfileConfig):
        return profile
    from .config import load_profile

    return load_profile(profile)


PARETO_SOURCE = ("compute", "02")  # pareto.csv: needed when the profile sweeps runs (sparsity.pareto_runs)


def missing_tables(profile: ProfileConfig) -> list[str]:
    """The base tables (SOURCES, and pareto when sparsity.pareto_runs names runs) absent from
    results/<profile>/: without pareto.csv the Pareto, CETT-sweep and MoE claims would read "no run"."""
    folder = results_dir(profile.name)
    need = [*SOURCES, *(["pareto"] if profile.sparsity.pareto_runs else [])]
    return [t for t in need if not (folder / f"{t}.csv").is_file()]


def inputs(profile: ProfileConfig, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Every table the checks read: the base tables and the cached derived ones of analysis.py (computed
    and written to results/<profile>/ only when missing or stale, with progress bars unless `progress` is
    False). Raises one SparsingLawError naming every missing base table and the command that makes it."""
    missing = missing_tables(profile)
    if missing:
        folder = results_dir(profile.name)
        how = "; ".join(f"{t}.csv: {command_for(profile, *SOURCES.get(t, PARETO_SOURCE))}" for t in missing)
        if len(missing) > 1:  # one command makes every one of them
            how = (f"python -m sparsinglaw compute {profile_flags(profile)} makes them all (train, measure, "
                   f"Pareto sweeps, sparse inference), or one by one: {how}")
        raise MissingResults(f"{folder}: missing results table(s) {', '.join(missing)}; make them first: {how}")
    from .inference import read_inference

    t = analysis.fit_profile(profile, progress=progress)
    si = read_inference(profile, columns=["run", "p", "domain", "accuracy", "dense_accuracy", "ppl_ratio",
                                          "calib_ppl_ratio", "calib_applied_ppl_ratio", "reached"])
    pareto = results_dir(profile.name) / "pareto.csv"  # absent only when the profile sweeps no run
    from .measure import RESULT_COLUMNS, moe_comparison, read_results, tradeoff

    points = read_results(profile, "pareto") if pareto.is_file() else pd.DataFrame(
        columns=RESULT_COLUMNS["pareto"][0])
    moe = moe_comparison(points, profile) if len(points) else pd.DataFrame(columns=["trained_k"])
    return {**{k: t[k] for k in FITTED}, "sparsity": analysis.load_results(profile)["sparsity"],
            "sparse_inference": si, "moe_comparison": moe, "pareto": points, "tradeoff": tradeoff(points)}


def evaluate(profile: ProfileConfig | str, progress: bool = True) -> pd.DataFrame:
    """The claims table of a profile (COLUMNS; one row per claim id, verdict PASS/FAIL/INCONCLUSIVE). The
    results tables made under other settings than the profile's now, used with a StaleTableWarning, are
    named in df.attrs["stale_inputs"]; `write` records them in claims.md and its sidecar."""
    with noting_stale_tables() as stale:
        df = check(inputs(_profile(profile), progress))
    df.attrs["stale_inputs"] = sorted({p.name for p in stale})
    return df


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown(df: pd.DataFrame, profile_name: str, git_sha: str, stale: list[str] = (),
             other_shas: dict[str, str] | None = None) -> str:
    """claims.md: a header line naming the profile and the git sha its measurements were made at (so the
    file changes only when the results or the verdicts do; `other_shas`: measurement tables made at
    another commit, table -> sha), the `stale` input tables if any, then claim | value | threshold | verdict."""
    counts = ", ".join(f"{(df['verdict'] == v).sum()} {v}" for v in VERDICTS)
    others = "".join(f"; {t}.csv of git {sha[:12]}" for t, sha in sorted((other_shas or {}).items()))
    lines = [f"Claims checked on profile `{profile_name}` (measurements of git {git_sha[:12]}{others}): {counts}.",
             ""]
    if stale:
        lines += [f"**Stale inputs**: {', '.join(stale)} were made under other settings than the profile's now "
                  "(other data, runs or stage settings): the verdicts that read them describe those settings; "
                  "rerun the stages that write them (the warnings of `verify` name each) and verify again.", ""]
    lines += ["| claim | statistic value | threshold | verdict |", "|---|---|---|---|"]
    for r in df.itertuples(index=False):
        lines.append(f"| {_cell(r.claim)} (`{r.id}`) | {_cell(r.value)} | {_cell(r.threshold)} | **{r.verdict}** |")
    return "\n".join(lines) + "\n"


JUDGED = (*SOURCES, "pareto", *FITTED)  # the tables of results/<profile>/ whose rows the checks read


def judged_on(folder: Path) -> dict[str, str]:
    """sha256 of each table in `folder` that the checks read (JUDGED), by file name: what claims.csv's
    sidecar records as `inputs`, so that `compare` can tell verdicts judged on other tables than the
    folder holds now (a measure rerun, or a refit, without verify)."""
    names = [f"{t}.csv" for t in JUDGED]
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names if (folder / n).is_file()}


def write(profile: ProfileConfig | str, df: pd.DataFrame) -> str:
    """Write results/<profile>/claims.csv (+ provenance sidecar) and claims.md; returns the Markdown."""
    profile = _profile(profile)
    folder = results_dir(profile.name)
    meta = provenance(profile, tables=tuple(folder / f"{t}.csv" for t in SOURCES))  # the measurements' corpus
    meta["inputs"] = judged_on(folder)
    stale = list(df.attrs.get("stale_inputs") or [])
    if stale:
        meta["stale_inputs"] = stale
    write_table(df, folder / "claims.csv", meta)  # its sidecar names the code that first wrote these verdicts
    sha = str(sidecar(folder / "sparsity.csv").get("git_sha") or meta["git_sha"])  # the commit that measured
    others = {t: str(o) for t in ("pareto", "sparse_inference") if (folder / f"{t}.csv").is_file()
              and (o := sidecar(folder / f"{t}.csv").get("git_sha")) and o != sha}  # remade at another commit
    md = markdown(df, profile.name, sha, stale, others)
    atomic_write_text(folder / "claims.md", md)  # a temp file of this process's own: two verifies at once
    return md


def update_readme(md_text: str, readme_path: str | Path, profile_name: str) -> bool:
    """Replace what lies between `<!-- claims:<profile>:start -->` and `<!-- claims:<profile>:end -->`
    in the README with md_text; nothing outside the markers changes. Missing markers are an error.
    Returns whether the file changed (an unchanged block is not rewritten)."""
    path = Path(readme_path)
    start, end = f"<!-- claims:{profile_name}:start -->", f"<!-- claims:{profile_name}:end -->"
    no_markers = SparsingLawError(f"{path}: expected one '{start}' line followed by one '{end}' line; add them "
                                  "where the claims table should go")
    if not path.is_file():
        raise no_markers
    with folder_lock(path.parent.resolve()):  # read, edit, write as one: two verifies (cpu, gpu) at once
        text = path.read_text()
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i or text.count(start) != 1 or text.count(end) != 1:
            raise no_markers
        new = text[:i + len(start)] + "\n" + md_text.rstrip("\n") + "\n" + text[j:]
        if new == text:
            return False
        atomic_write_text(path, new)
    return True


def explain(df: pd.DataFrame, ids, width: int = 110) -> str:
    """The rows `ids` of a claims table in full (a table's cells cut long values and notes short): per
    claim its verdict and n, then its value, rule and note, wrapped (notebook 07)."""
    t, out = df.set_index("id"), []
    for cid in ids:
        r = t.loc[cid]
        out.append(f"{cid}: {r['verdict']} (n = {r['n']})")
        for key in ("value", "threshold", "note"):
            if str(r[key]) not in ("", "nan"):
                out.append(textwrap.fill(f"{key}: {r[key]}", width, initial_indent="  ", subsequent_indent="    ",
                                         break_on_hyphens=False))
    return "\n".join(out)


def figure(df: pd.DataFrame, width: int = 70):
    """The verdicts at a glance: one line per claim, a coloured verdict box and the headline number (the
    value up to its first ';', wrapped at `width` characters, never cut; the figure grows with its lines)."""
    import matplotlib.pyplot as plt

    from .plots import DOUBLE, style

    style()
    colors = {"PASS": "#009E73", "FAIL": "#D55E00", "INCONCLUSIVE": "#999999"}
    heads = [textwrap.wrap(str(v).split(";")[0], width) or [""] for v in df["value"]]
    gap = 0.55  # height of each extra line of a wrapped headline, in rows
    heights = [1 + gap * (len(h) - 1) for h in heads]
    total = sum(heights)
    fig, ax = plt.subplots(figsize=(DOUBLE[0], 0.28 * total + 0.5))
    top = total - 0.5
    for r, head, h in zip(df.itertuples(index=False), heads, heights, strict=True):
        y = top - h / 2
        top -= h
        ax.text(0.0, y, r.id, va="center", ha="left", fontsize=7, family="monospace")
        ax.text(0.34, y, r.verdict, va="center", ha="center", fontsize=6.5, color="white", fontweight="bold",
                bbox={"boxstyle": "round,pad=0.25", "fc": colors[r.verdict], "ec": "none"})
        ax.text(0.44, y, "\n".join(head), va="center", ha="left", fontsize=6, linespacing=1.3)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.7, total - 0.3)
    ax.axis("off")
    counts = ", ".join(f"{(df['verdict'] == v).sum()} {v.lower()}" for v in VERDICTS)
    ax.set_title(f"Claims of the paper as statistical checks: {counts}", loc="left")
    return fig
