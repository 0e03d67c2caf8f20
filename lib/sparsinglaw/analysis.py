"""From measured tables to the paper's laws (notebooks 03-05): fits, derived tables and their files.

Read top to bottom: constants; pure functions (measured DataFrames in, DataFrames out, nothing read
or written): the activation laws and the fit-form comparison (Fig. 4, Table 2), limit loss, width-depth
(Fig. 5-6), scale and convergence speed (Fig. 7-8, 12), dead neurons, per-domain and per-token
patterns (Fig. 9-10) and the side-by-side Table 2 (the verdicts on the paper's claims are claims.py's);
then the profile-level
`*_for(profile)` functions, which read results/<profile>/{sparsity,neurons,tokens}.csv, compute (or
reuse, when inputs, fit spec and ANALYSIS_VERSION are unchanged) and write results/<profile>/<table>.csv
with provenance, so that every figure of notebooks 03-05 can be redrawn from committed tables.

Symbols: D = training tokens / 1e9 (the paper's unit); A = activation ratio at PPL-p%; A0 its fitted
limit; N = non-embedding parameters; D/N = data-scale ratio (training tokens / N); E = limit loss.
Published numbers (paper.py) enter only `table2` (a side-by-side display), never a fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from . import laws, paper
from .config import ProfileConfig, SparsingLawError, command_for, in_repo, profile_flags, stable_hash
from .runs import (
    REQUIRED,
    RESULT_COLUMNS,
    as_bool,
    current,
    in_group,
    provenance,
    read_csv,
    read_table,
    repo_root,
    results_dir,
    sidecar,
    warn_if_stale,
    write_table,
)

ANALYSIS_VERSION = 5  # bump when a derived table changes meaning (invalidates the cached tables)
CODE_FILES = ("laws.py", "analysis.py")  # the fitting code; its sha256 is recorded, not part of the cache key

# the paper's law for each activation: Eq. 4 for ReLU (falls towards A0), Eq. 5 for SiLU (rises
# towards A0); the paper fits no other activation, we give ReLU-like ones Eq. 4 and smooth ones Eq. 5
# (a profile's fit.activation_forms chooses another of the two for them, or a law for a registered one)
FORM = {"relu": "logspace_power", "relu2": "logspace_power", "silu": "power", "gelu": "power",
        "gelu_tanh": "power"}
PAPER_LAWS = ("relu", "silu")  # the activations whose law is the paper's (not to be chosen by a profile)
LAWS = ("logspace_power", "power")  # the forms with a limit A0 that an activation's law may be
ALTERNATIVES = ("logspace_power", "power", "log", "sigmoid")  # the forms compared (rebuttal)
FORM_NULL_SIMS = 100  # simulated data sets per run for law_forms' test (laws.form_null; p in steps of 1/101)
RUN_COLUMNS = ["run", "activation", "groups", "d_model", "n_layers", "width_depth", "non_embedding_params"]
# the columns of a sparsity table that the fits read, and which hold numbers (load_results checks them)
FIT_INPUT = (RUN_COLUMNS + ["p", "tokens", "activation_ratio", "dense_loss"],
             ["d_model", "n_layers", "width_depth", "non_embedding_params", "p", "tokens", "activation_ratio",
              "dense_loss"])
NEURON_ID = ("run", "step", "layer", "neuron")  # neurons.csv columns that are not frequencies


def _with_intervals(*symbols):
    return [c for s in symbols for c in (s, f"{s}_lo", f"{s}_hi")]


# columns every table has even when no fit succeeded (so figures and checks can always index them)
# the hold-out check's columns are listed too, so that they exist even when no run could be fitted
FIT_COLUMNS = RUN_COLUMNS + ["p", "n_points", "D_min", "D_max", "D_min_used", "A_first", "A_last", "rho_tokens",
                             "dropped_tokens", "form", "converged", "n_used", "n_dropped", "dropped_index", "mse",
                             "mae", "aic", "aicc", "bic", *_with_intervals("alpha", "b", "c", "A0"), "message",
                             "holdout_frac", "holdout_n_fit", "holdout_n_test", "holdout_D_split", "holdout_mse",
                             "holdout_mae", "holdout_converged", "holdout_message"]
LOSS_COLUMNS = RUN_COLUMNS + ["n_points", "final_loss", "final_tokens", "form", "converged",
                              *_with_intervals("E", "B", "beta"), "message"]
WIDTH_DEPTH_COLUMNS = ["quantity", "kind", "n", "above", *_with_intervals("breakpoint", "slope_below", "slope_above"),
                       "intercept", "inside", "rss", "level", "best_lo", "best_hi", "best_x", "best_loss", "tol",
                       "message"]
SCALE_COLUMNS = ["activation", "quantity", "n", *_with_intervals("slope"), "intercept", "change_fit",
                 "change_observed", "weighted", "method", "level", "N_min", "N_max", "message"]


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """DataFrame of `rows` with at least `columns` (missing ones NaN, first in that order)."""
    df = pd.DataFrame(rows)
    for c in columns:
        if c not in df:
            df[c] = np.nan
    return df[columns + [c for c in df.columns if c not in columns]]


def fit_spec(profile: ProfileConfig) -> laws.FitSpec:
    """The profile's law-fit specification: its `fit:` section (FitSpec defaults for absent keys) but
    activation_forms (`activation_forms`)."""
    try:
        return laws.FitSpec.from_dict({k: v for k, v in profile.fit.items() if k != "activation_forms"})
    except ValueError as e:
        if str(e).startswith("unknown FitSpec field"):  # a section's keys: the FitSpec fields and one more
            raise ValueError(f"{e}; and activation_forms (analysis.activation_forms)") from None
        raise


def activation_forms(profile: ProfileConfig) -> dict[str, str]:
    """The law fitted to each activation: FORM, with the profile's `fit.activation_forms` (activation: form)
    for activations the paper gives no law, e.g. {gelu: logspace_power} for a GELU whose ratio falls."""
    chosen = profile.fit.get("activation_forms") or {}
    if not isinstance(chosen, dict):
        raise ValueError(f"activation_forms: expected a mapping activation: form, got {chosen!r}")
    for act, form in chosen.items():
        if act in PAPER_LAWS:
            raise ValueError(f"activation_forms: {act} keeps the paper's law ({FORM[act]}); the setting chooses "
                             f"the law of other activations")
        if form not in LAWS:
            raise ValueError(f"activation_forms: {act}: {form!r} is not a law with a limit A0; one of "
                             f"{', '.join(LAWS)} (Eq. 4, Eq. 5)")
    return {**FORM, **chosen}


def form_for(activation: str, forms: dict[str, str] | None = None) -> str:
    """The law form of `activation` in `forms` (activation_forms; default FORM)."""
    forms = FORM if forms is None else forms
    if activation not in forms:
        raise ValueError(f"no law form for activation {activation!r}; known: {sorted(forms)} (a profile's "
                         f"fit.activation_forms gives one, e.g. {{{activation}: logspace_power}})")
    return forms[activation]


def run_info(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run of a sparsity table (RUN_COLUMNS), in the table's order."""
    return table.drop_duplicates("run")[RUN_COLUMNS].reset_index(drop=True)


def activation_points(table: pd.DataFrame, p: float = 1.0, need: tuple[str, ...] = ()) -> pd.DataFrame:
    """The rows of a sparsity table at PPL-p%, sorted by tokens within each run (runs in table order),
    with D (1e9 tokens) and the data-scale ratio D/N (tokens per non-embedding parameter). The table
    needs RUN_COLUMNS, p, tokens (training tokens, a count) and the columns `need` (activation_ratio for
    the law fits, dense_loss for the limit loss), numbers where they are numeric (FIT_INPUT), a value in
    every row (groups may be empty)."""
    want = RUN_COLUMNS + ["p", "tokens", *need]
    missing = [c for c in want if c not in table.columns]
    if missing:
        raise ValueError(f"sparsity table without column(s) {', '.join(missing)}; this fit reads "
                         f"{', '.join(want)} (README: fitting your own measurements), got "
                         f"{', '.join(map(str, table.columns))}")
    if table.empty:
        raise ValueError("sparsity table without rows; the fits need measured points")
    for c in want:
        if c in FIT_INPUT[1] and not pd.api.types.is_numeric_dtype(table[c]):
            raise ValueError(f"sparsity table: column {c} holds text ({table[c].iloc[0]!r} ...), expected numbers")
        if c != "groups" and (empty := table[c].isna()).any():  # a missing value would drop a point, or a run
            raise ValueError(f"sparsity table: column {c} is empty in {int(empty.sum())} row(s) (the first of "
                             f"run {table.loc[empty, 'run'].iloc[0]!r}); every point needs a value")
    tokens = table["tokens"]
    odd = table[(tokens < 1) | ((tokens % 1 != 0) & (tokens < 1e6))]
    if len(odd):  # billions of tokens in this column fit a curve in D 1e9 times too small, and "converge"
        first = odd.iloc[0]
        why = "billions? multiply by 1e9" if first["tokens"] > 0 else "a count is positive"
        raise ValueError(f"sparsity table: tokens is a count of training tokens; got {float(first['tokens'])!r} for "
                         f"run {first['run']} ({why})")
    per_param = (tokens / table["non_embedding_params"]).groupby(table["run"], sort=False).max()
    if (per_param < 1e-3).any():  # whole billions pass the count check: D and D/N would be 1e9 times too small
        run = per_param.index[per_param < 1e-3][0]
        last = table.loc[table["run"] == run, "tokens"].max()
        raise ValueError(f"sparsity table: tokens is a count of training tokens; run {run} has at most "
                         f"{float(last)!r}, {per_param[run]:.2g} per non-embedding parameter (billions? multiply "
                         "by 1e9)")
    if "activation_ratio" in need:  # a percentage would fit laws 100 times too large, or fail as unconverged
        ratio = table["activation_ratio"]
        odd = table[(ratio < 0) | (ratio > 1)]
        if len(odd):
            first = odd.iloc[0]
            why = "percent? divide by 100" if first["activation_ratio"] > 1 else "a share is not negative"
            raise ValueError(f"sparsity table: activation_ratio is the share of active neurons, in [0, 1]; got "
                             f"{float(first['activation_ratio'])!r} for run {first['run']} ({why})")
    t = table[np.isclose(table["p"], p)]
    if t.empty:
        raise ValueError(f"no rows at p={p}; measured p: {sorted(table['p'].unique())}")
    if (twice := t.duplicated(["run", "tokens"])).any():  # a point counted twice would weigh twice in a fit
        first = t[twice].iloc[0]
        raise ValueError(f"sparsity table: run {first['run']} has more than one row at tokens {int(first['tokens'])} "
                         f"and p={p:g}; expected one point per checkpoint (a row repeated, or two runs of one name)")
    order = {r: i for i, r in enumerate(dict.fromkeys(t["run"]))}
    t = t.assign(_o=t["run"].map(order)).sort_values(["_o", "tokens"], kind="stable").drop(columns="_o")
    return t.assign(D=laws.tokens_to_D(t["tokens"]), data_scale_ratio=t["tokens"] / t["non_embedding_params"])


UNREACHED = "target was not reached"  # in the message of a run's fit rows: see _unreached


def _unreached(g: pd.DataFrame, p: float) -> str:
    """Why a run's points at PPL-p% are not fitted ("" when they are): the search reached no c with
    the target PPL ratio, so the c used is only a bound and the activation ratios are not PPL-p%."""
    if "reached" not in g or as_bool(g["reached"]).all():
        return ""
    return f"the PPL-{p:g}% {UNREACHED} (reached = False): its activation ratios are not PPL-{p:g}%"


def _info(g: pd.DataFrame) -> dict:
    return {k: g[k].iloc[0] for k in RUN_COLUMNS}


def _try_fit(fitter, *args):
    """(result, "") or (None, the ValueError's message): too few points must not stop the other runs."""
    try:
        return fitter(*args), ""
    except ValueError as e:
        return None, str(e)


def _failed(form: str, message: str, spec: laws.FitSpec) -> dict:
    """The row of a fit that could not be attempted (its other columns become NaN in the table)."""
    return {"form": form, "converged": False, "n_used": 0, "message": f"not fitted: {message}",
            **{f"spec_{k}": v for k, v in dataclasses.asdict(spec).items()}}


@dataclass
class Law:
    """A fitted law rebuilt from a table row (form + parameters), so derived quantities and figures
    need only the committed tables."""

    form: str
    params: dict

    def predict(self, D):
        return laws.FORMS[self.form].f(np.asarray(D, dtype=float), **self.params)

    @classmethod
    def from_row(cls, row) -> Law:
        return cls(row["form"], {s: float(row[s]) for s in laws.FORMS[row["form"]].symbols})


# -----------------------------------------------------------------------------------------------
# activation laws (Fig. 4, Table 2) and the fit-form comparison (rebuttal)


def _by_run(points: pd.DataFrame, desc: str, progress: bool):
    """(run, points) per run, with a progress bar on stderr when `progress` (fits take seconds a run)."""
    from tqdm import tqdm  # plain text on stderr, in a notebook too (no widget library needed)

    groups = points.groupby("run", sort=False)
    return tqdm(groups, total=groups.ngroups, desc=desc, unit="run", disable=not progress, file=sys.stderr,
                leave=False)


def fit_activation_laws(table: pd.DataFrame, spec: laws.FitSpec, p: float = 1.0,
                        n_curve: int = 64, progress: bool = False, activation_forms: dict[str, str] | None = None
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit each run's activation ratio A at PPL-p% vs D with its activation's form (`activation_forms`,
    default FORM).

    Returns (fits, curves). fits: one row per run: run columns, p, n_points, D_min/D_max (all points),
    D_min_used, A_first/A_last (measured), rho_tokens (Spearman of A with tokens over the used points, or
    over all points of a run whose fit failed; NaN for a run whose PPL-p% target was not reached),
    dropped_tokens, then `FitResult.to_row()` (params with intervals, MSE/MAE/AIC/BIC, hold-out,
    convergence, message, dropped points, every spec field). A run with too few points gives a row with
    converged=False and the reason, never an exception. curves: run, D, A_fit, A_lo, A_hi (pointwise
    bootstrap band at spec.level) on n_curve log-spaced D over the run's measured range, converged fits only.
    """
    rows, curves = [], []
    for run, g in _by_run(activation_points(table, p, need=("activation_ratio",)), "Eq. 4/5 fits", progress):
        form = form_for(g["activation"].iloc[0], activation_forms)
        D, A = g["D"].to_numpy(), g["activation_ratio"].to_numpy()
        row = {**_info(g), "p": p, "n_points": len(g), "D_min": D.min(), "D_max": D.max(),
               "A_first": A[0], "A_last": A[-1]}
        why = _unreached(g, p)
        r, err = (None, why) if why else _try_fit(laws.fit, form, D, A, spec)
        Du, Au = (r.D, r.A) if r is not None else (D, A)  # the trend of the used points (all if not fitted)
        row["rho_tokens"] = (stats.spearmanr(Du, Au).statistic if Du.size > 2 and np.ptp(Au) > 0 and not why
                             else np.nan)
        if r is None:
            rows.append(row | _failed(form, err, spec))
            continue
        row |= {"D_min_used": r.D.min(),
                "dropped_tokens": ";".join(str(int(g["tokens"].iloc[d["index"]])) for d in r.dropped)}
        rows.append(row | r.to_row())
        if r.converged:
            grid = np.geomspace(D.min(), D.max(), n_curve)
            lo, hi = r.band(grid)
            curves.append(pd.DataFrame({"run": run, "D": grid, "A_fit": r.predict(grid), "A_lo": lo, "A_hi": hi}))
    cols = ["run", "D", "A_fit", "A_lo", "A_hi"]
    return _frame(rows, FIT_COLUMNS), pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=cols)


def form_comparison(table: pd.DataFrame, spec: laws.FitSpec, p: float = 1.0,
                    forms=ALTERNATIVES, progress: bool = False, activation_forms: dict[str, str] | None = None
                    ) -> pd.DataFrame:
    """Every form of `forms` on every run (same points and drop rule; no bootstrap): MSE, MAE, AIC, AICc,
    BIC (k identified parameters each), hold-out errors, convergence; delta_aic and delta_aicc from the run's
    lowest (any form with one); paper_form marks the law of the run's activation (the paper's for ReLU and
    SiLU; `activation_forms`, default FORM). On the paper
    form's row, null_p and null_n: laws.form_null's test of its AICc gap to the best other form against
    the gaps that data simulated from the paper form's own fit give (FORM_NULL_SIMS sets at most); alt_form,
    alt_p and alt_n: the same against data simulated from the best other form's fit (small alt_p: the paper
    form wins by more than it does on such data)."""
    out = []
    for _, g in _by_run(activation_points(table, p, need=("activation_ratio",)), "fit forms", progress):
        D, A = g["D"].to_numpy(), g["activation_ratio"].to_numpy()
        why, rows = _unreached(g, p), []
        for f in forms:  # one form at a time, so a form with too many parameters fails alone
            c, err = (None, why) if why else _try_fit(laws.compare_forms, D, A, (f,), spec)
            rows.append(c.iloc[0].to_dict() if c is not None else {"form": f, "converged": False,
                                                                     "message": f"not fitted: {err}"})
        c = _frame(rows, ["form", "n_params", "k", "n_used", "mse", "mae", "aic", "aicc", "bic", "converged",
                          "holdout_mse", "holdout_mae", "message"])
        paper = form_for(g["activation"].iloc[0], activation_forms)
        null, _ = (None, why) if why or paper not in forms else _try_fit(
            laws.form_null, D, A, paper, tuple(f for f in forms if f != paper), spec,
            min(spec.n_boot, FORM_NULL_SIMS))
        # over every form with a criterion (a fit on a bound is still a curve)
        c = c.assign(delta_aic=c["aic"] - c["aic"].min(), delta_aicc=c["aicc"] - c["aicc"].min(),
                     paper_form=c["form"] == paper)
        c["null_p"] = np.where(c["paper_form"], null["p"] if null else np.nan, np.nan)
        c["null_n"] = np.where(c["paper_form"], null["n_ok"] if null else 0, 0)
        c["alt_form"] = np.where(c["paper_form"], null["alt"] if null else "", "")
        c["alt_p"] = np.where(c["paper_form"], null["p_alt"] if null else np.nan, np.nan)
        c["alt_n"] = np.where(c["paper_form"], null["n_alt"] if null else 0, 0)
        for k, v in reversed(list(_info(g).items())):
            c.insert(0, k, v)
        out.append(c)
    return pd.concat(out, ignore_index=True)


# -----------------------------------------------------------------------------------------------
# limit loss (Fig. 6, 12)


def limit_loss(table: pd.DataFrame, spec: laws.FitSpec, p: float = 1.0) -> pd.DataFrame:
    """Per run: L(D) = E + B * D**(-beta) (laws.fit_limit_loss) on the dense validation loss (nats/token)
    of every stable checkpoint; E is the limit loss. final_loss is the last measured dense loss, a
    model-free robustness column. (spec.f_scale is in units of A; it matters only for a robust loss.)"""
    rows = []
    for _, g in activation_points(table, p, need=("dense_loss",)).groupby("run", sort=False):
        D, L = g["D"].to_numpy(), g["dense_loss"].to_numpy()
        row = {**_info(g), "n_points": len(g), "final_loss": L[-1], "final_tokens": int(g["tokens"].iloc[-1])}
        r, err = _try_fit(laws.fit_limit_loss, D, L, spec)
        rows.append(row | (r.to_row() if r is not None else _failed("loss_power", err, spec)))
    return _frame(rows, LOSS_COLUMNS)


def _with_losses(fits: pd.DataFrame, losses: pd.DataFrame) -> pd.DataFrame:
    """Per run: N, width-depth, A0 (+ interval, convergence), A_last, E (+ interval), final_loss."""
    a = fits[RUN_COLUMNS + ["form", "converged", "A0", "A0_lo", "A0_hi", "A_first", "A_last"]]
    e = losses[["run", "converged", "E", "E_lo", "E_hi", "final_loss"]].rename(columns={"converged": "loss_converged"})
    return a.merge(e, on="run", how="left")


# -----------------------------------------------------------------------------------------------
# width-depth (Fig. 5-6)


def width_depth(fits: pd.DataFrame, losses: pd.DataFrame, level: float = 0.95,
                loss_rel_tol: float = 0.01) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Limit activation ratio and limit loss vs width-depth ratio d_model / n_layers (runs of group
    "width_depth").

    Returns (points, summary). points: one row per run (A0 from the fits, A_last measured, E, final_loss).
    summary: for y in (A0 of converged fits, A_last): the continuous piecewise-linear fit, linear below
    the breakpoint (bottleneck) and flat above (laws.fit_piecewise_linear, breakpoint interval at
    `level`); for y in (E of converged fits, final_loss): the best range, the ratios whose loss is within
    loss_rel_tol (relative) of the lowest (laws.best_range). A quantity with too few runs gets a row
    whose message says so.
    """
    pts = _with_losses(in_group(fits, "width_depth"), losses).sort_values("width_depth").reset_index(drop=True)
    rows = []
    for y, use in (("A0", as_bool(pts["converged"])), ("A_last", pts["A_last"].notna())):
        d = pts[use]
        row = {"quantity": y, "kind": "piecewise_linear", "n": len(d)}
        try:
            rows.append(row | laws.fit_piecewise_linear(d["width_depth"], d[y], "flat", level).to_row())
        except ValueError as e:
            rows.append(row | {"message": f"not fitted: {e}"})
    for y, use in (("E", as_bool(pts["loss_converged"])), ("final_loss", pts["final_loss"].notna())):
        d = pts[use]
        row = {"quantity": y, "kind": "best_range", "n": len(d), "level": level}
        if len(d) < 2:
            rows.append(row | {"message": f"not computed: {len(d)} run(s) with a {y}"})
            continue
        tol = loss_rel_tol * float(d[y].min())
        lo, hi = laws.best_range(d["width_depth"], d[y], tol)
        best = d.loc[d[y].idxmin()]
        rows.append(row | {"best_lo": lo, "best_hi": hi, "best_x": best["width_depth"], "best_loss": best[y],
                           "tol": tol, "message": f"within {loss_rel_tol:.0%} of the lowest {y}"})
    return pts, _frame(rows, WIDTH_DEPTH_COLUMNS)


# -----------------------------------------------------------------------------------------------
# scale (Fig. 7, 8, 12)


def scale(fits: pd.DataFrame, losses: pd.DataFrame, level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A0, A_last and E vs non-embedding parameters N per activation (runs of group "scale").

    Returns (points, summary). summary: per activation and quantity, laws.fit_A0_vs_scale (y on log10 N:
    OLS, or WLS with the bootstrap intervals as known errors when every one is finite and its slope
    interval is the wider): slope per decade of N with its interval, the fitted and observed change from
    the smallest to the largest model.
    """
    pts = _with_losses(in_group(fits, "scale"), losses).sort_values(["activation", "non_embedding_params"])
    pts = pts.reset_index(drop=True)
    rows = []
    for act, g in pts.groupby("activation", sort=False):
        for y, use, what in (("A0", as_bool(g["converged"]), "a converged law fit"),
                             ("A_last", g["A_last"].notna(), "a measured ratio"),
                             ("E", as_bool(g["loss_converged"]), "a converged limit-loss fit")):
            d = g[use]
            row = {"activation": act, "quantity": y, "n": len(d)}
            lo, hi = (d[f"{y}_lo"], d[f"{y}_hi"]) if f"{y}_lo" in d else (None, None)
            if lo is not None and not (np.all(np.isfinite(lo)) and np.all(hi > lo)):
                lo = hi = None  # unweighted when an interval is missing
            r, err = _try_fit(laws.fit_A0_vs_scale, d["non_embedding_params"], d[y], lo, hi, level)
            if r is None:
                rows.append(row | {"message": f"not fitted: {err}" + (
                    f" ({len(d)} of {len(g)} runs have {what})" if len(d) < len(g) else "")})
                continue
            r.pop("ols")
            rows.append(row | r | {"N_min": d["non_embedding_params"].min(), "N_max": d["non_embedding_params"].max(),
                                   "message": ""})
    return pts, _frame(rows, SCALE_COLUMNS)


def _listed(names: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def convergence(fits: pd.DataFrame, n: int = 64) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Convergence speed (Fig. 8): dA/d(D/N) of each converged fitted law vs the data-scale ratio D/N,
    runs of group "scale" (laws.convergence_speed).

    Returns (curves, summary). curves: run, activation, N, data_scale_ratio, dA_dratio over the run's
    fitted range. summary: per run, the speed at ratio_common, the geometric middle of the ratio range
    all converged runs of that activation share; rho_N_speed = Spearman of N with |speed| there
    (negative: smaller models converge faster, the paper's claim). A converged fit that is a step
    (laws.is_step: its slope between two checkpoints is not measured), or whose transient's alpha or c is
    not identified (`unidentified`: a step whose alpha stopped short of its bound; the data fix no slope),
    has no curve and is left out of the common range and the rho: its summary row has a NaN speed and a
    message that says so.
    """
    f = in_group(fits, "scale")
    f = f[as_bool(f["converged"])]
    step = np.array([laws.is_step(r["form"], r) for _, r in f.iterrows()], dtype=bool)
    loose = np.array([not step[i] and bool({"alpha", "c"} & set(str(r.get("unidentified", "") or "").split(";")))
                      for i, (_, r) in enumerate(f.iterrows())], dtype=bool)
    steps = [{"run": r["run"], "activation": r["activation"], "non_embedding_params": r["non_embedding_params"],
              "message": f"a step (alpha = {r['alpha']:g}, on its bound): its slope between two checkpoints is not "
                         "measured, no speed" if is_step else
                         f"its transient is not identified ({_listed(str(r['unidentified']).split(';'))} not "
                         "separately identified: alpha = "
                         f"{r['alpha']:g}, c = {r['c']:g}): its slope is not measured, no speed"}
             for (_, r), is_step in zip(f[step | loose].iterrows(), step[step | loose], strict=True)]
    f = f[~(step | loose)]
    cols = ["run", "activation", "non_embedding_params", "data_scale_ratio", "dA_dratio"]
    curves, rows = [], []
    for act, g in f.groupby("activation", sort=False):
        N = g["non_embedding_params"].to_numpy(float)
        lo = np.max(g["D_min_used"] * laws.TOKENS_PER_D / N)
        hi = np.min(g["D_max"] * laws.TOKENS_PER_D / N)
        common = math.sqrt(lo * hi) if lo < hi else np.nan
        speeds = []
        for (_, r), n_i in zip(g.iterrows(), N, strict=True):
            law = Law.from_row(r)
            ratio, dA = laws.convergence_speed(law, n_i, np.geomspace(r["D_min_used"], r["D_max"], n))
            curves.append(pd.DataFrame(dict(zip(cols, [r["run"], act, n_i, ratio, dA], strict=True))))
            at = laws.convergence_speed(law, n_i, [common * n_i / laws.TOKENS_PER_D])[1][0] if lo < hi else np.nan
            speeds.append(at)
            rows.append({"run": r["run"], "activation": act, "non_embedding_params": n_i, "ratio_common": common,
                         "dA_dratio_common": at, "message": ""})
        ok = np.isfinite(speeds)
        rho = stats.spearmanr(N[ok], np.abs(np.asarray(speeds)[ok])).statistic if ok.sum() > 2 else np.nan
        for row in rows[len(rows) - len(g):]:
            row["rho_N_speed"] = rho
    for row in steps:  # after the other rows, with their activation's common ratio and rho (NaN without any)
        same = [r for r in rows if r["activation"] == row["activation"] and r["message"] == ""]
        row |= {k: same[0][k] if same else np.nan for k in ("ratio_common", "rho_N_speed")}
        row["dA_dratio_common"] = np.nan
    rows += steps
    return (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=cols),
            pd.DataFrame(rows, columns=["run", "activation", "non_embedding_params", "ratio_common",
                                        "dA_dratio_common", "rho_N_speed", "message"]))


# -----------------------------------------------------------------------------------------------
# dead neurons and exact zeros (rebuttal), per-domain and per-token patterns (Fig. 9-10)


def dead_neurons(table: pd.DataFrame, p: float = 1.0) -> pd.DataFrame:
    """Per run: dead-neuron ratio (active on < dead_freq of the tokens at PPL-p%) and the share of
    non-zero ReLU outputs (nonzero_ratio, the activation ratio of exact zeros) at the first and last
    stable checkpoint, with Spearman's rho against tokens."""
    rows = []
    for _, g in activation_points(table, p).groupby("run", sort=False):
        row = _info(g) | {"n_points": len(g)}
        for y in ("dead_ratio", "nonzero_ratio"):
            v = g[y].to_numpy(float)
            rho = stats.spearmanr(g["tokens"], v).statistic if np.all(np.isfinite(v)) and np.ptp(v) > 0 else np.nan
            row |= {f"{y}_first": v[0], f"{y}_last": v[-1], f"{y}_rho_tokens": rho}
        rows.append(row)
    return pd.DataFrame(rows)


def domains(neurons: pd.DataFrame) -> list[str]:
    """The frequency columns of neurons.csv: "all" first, then one per data domain."""
    return [c for c in neurons.columns if c not in NEURON_ID]


def domain_distributions(neurons: pd.DataFrame, table: pd.DataFrame,
                         group: str | None = "scale") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Neuron activation frequencies (share of tokens on which a neuron is active, PPL-1%, final
    checkpoint) per data domain, for the runs of `group` (Fig. 9; v4 Fig. 16 per layer).

    Returns (summary, agreement). summary: per run, domain and layer (-1 = all layers): n_neurons, mean,
    median, q10, q90. agreement: per activation, domain and pair of runs (smaller first): the
    Kolmogorov-Smirnov statistic and the Wasserstein distance between their distributions (all layers).
    """
    info = in_group(run_info(table), group)
    nr = neurons.merge(info[["run", "activation", "non_embedding_params"]], on="run")
    rows = []
    for dom in domains(neurons):
        for run, g in nr.groupby("run", sort=False):
            rows.append({"run": run, "domain": dom, "layer": -1} | _describe(g[dom]))
            for layer, gl in g.groupby("layer"):
                rows.append({"run": run, "domain": dom, "layer": int(layer)} | _describe(gl[dom]))
    summary = pd.DataFrame(rows, columns=["run", "domain", "layer", "n_neurons", "mean", "median", "q10", "q90"])
    summary = summary.merge(info[["run", "activation", "non_embedding_params"]], on="run")
    return summary, _distribution_pairs(neurons, info)


def _distribution_pairs(neurons: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """domain_distributions' agreement table for the runs of `info` (run_info rows)."""
    pairs = []
    for act, g in info.sort_values("non_embedding_params").groupby("activation", sort=False):
        for a, b in itertools.combinations(g["run"], 2):
            for dom in domains(neurons):
                x, y = neurons.loc[neurons["run"] == a, dom].dropna(), neurons.loc[neurons["run"] == b, dom].dropna()
                if len(x) and len(y):
                    pairs.append({"activation": act, "domain": dom, "run_a": a, "run_b": b,
                                  "ks": stats.ks_2samp(x, y).statistic, "wasserstein": stats.wasserstein_distance(x, y),
                                  "mean_a": x.mean(), "mean_b": y.mean()})
    cols = ["activation", "domain", "run_a", "run_b", "ks", "wasserstein", "mean_a", "mean_b"]
    return pd.DataFrame(pairs, columns=cols)


def _describe(v: pd.Series) -> dict:
    v = v.dropna().to_numpy(float)
    if not v.size:
        return {"n_neurons": 0}
    q10, q50, q90 = np.quantile(v, [0.1, 0.5, 0.9])
    return {"n_neurons": v.size, "mean": v.mean(), "median": q50, "q10": q10, "q90": q90}


def token_pairs(tokens: pd.DataFrame, table: pd.DataFrame, group: str | None = "scale",
                min_count: int = 1, level: float = 0.95) -> pd.DataFrame:
    """Per-token activation ratios (share of neurons active on a token, averaged per vocabulary id,
    PPL-1%, final checkpoint) compared pairwise across the runs of `group` with the same activation
    (Fig. 10): over the tokens seen at least min_count times by both runs, Pearson's r with its Fisher-z
    interval at `level` and Spearman's rho."""
    info = in_group(run_info(table), group).sort_values("non_embedding_params")
    t = tokens[tokens["count"] >= min_count]
    wide = t.pivot_table(index="token_id", columns="run", values="activation_ratio").reindex(columns=info["run"])
    z = stats.norm.ppf(0.5 + level / 2)
    rows = []
    for act, g in info.groupby("activation", sort=False):
        N = dict(zip(g["run"], g["non_embedding_params"], strict=True))
        for a, b in itertools.combinations(g["run"], 2):
            d = wide[[a, b]].dropna()
            row = {"activation": act, "run_a": a, "run_b": b, "N_a": N[a], "N_b": N[b], "n_tokens": len(d)}
            if len(d) > 3 and d[a].std() > 0 and d[b].std() > 0:
                r = stats.pearsonr(d[a], d[b]).statistic
                fz, half = math.atanh(float(np.clip(r, -1 + 1e-12, 1 - 1e-12))), z / math.sqrt(len(d) - 3)
                row |= {"pearson": r, "pearson_lo": math.tanh(fz - half), "pearson_hi": math.tanh(fz + half),
                        "spearman": stats.spearmanr(d[a], d[b]).statistic}
            rows.append(row)
    cols = ["activation", "run_a", "run_b", "N_a", "N_b", "n_tokens", "pearson", "pearson_lo", "pearson_hi", "spearman"]
    return pd.DataFrame(rows, columns=cols)


# runs equal in these (shape and training budget: the last measured tokens) are seed replicas
REPLICA_COLUMNS = ["activation", "d_model", "n_layers", "non_embedding_params", "budget"]


def seed_agreement(neurons: pd.DataFrame, tokens: pd.DataFrame, table: pd.DataFrame,
                   level: float = 0.95) -> pd.DataFrame:
    """The comparisons of Fig. 9-10 between seed replicas (runs with equal REPLICA_COLUMNS: one shape,
    one token budget), over every run of the table: how far apart two runs are when only the seed
    differs, the yardstick for the cross-scale numbers of token_pairs and domain_distributions. One row
    per pair: token_pairs' columns, then the largest KS statistic over the domains (max_ks) and its domain."""
    cols = ["activation", "run_a", "run_b", "N_a", "N_b", "n_tokens", "pearson", "pearson_lo", "pearson_hi",
            "spearman", "max_ks", "max_ks_domain"]
    info = run_info(table).assign(budget=lambda d: d["run"].map(table.groupby("run")["tokens"].max()))
    frames = []
    for _, g in info.groupby(REPLICA_COLUMNS, sort=False):
        if len(g) < 2:
            continue
        tp = token_pairs(tokens, table[table["run"].isin(g["run"])], group=None, level=level)
        da = _distribution_pairs(neurons, g)
        worst = {frozenset((r.run_a, r.run_b)): (r.ks, r.domain)
                 for r in da.sort_values("ks").itertuples()}  # the largest KS of each pair wins
        ks = [worst.get(frozenset((a, b)), (np.nan, "")) for a, b in zip(tp["run_a"], tp["run_b"], strict=True)]
        frames.append(tp.assign(max_ks=[k for k, _ in ks], max_ks_domain=[d for _, d in ks]))
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


# -----------------------------------------------------------------------------------------------
# side by side with the paper


def _fmt(v, lo=np.nan, hi=np.nan) -> str:
    if not np.isfinite(v):
        return "-"
    return f"{v:.3g} [{lo:.3g}, {hi:.3g}]" if np.isfinite(lo) and np.isfinite(hi) else f"{v:.3g}"


def table2(fits: pd.DataFrame, group: str | None = "scale") -> pd.DataFrame:
    """Our Table 2 analog (alpha, b, c, A0 with bootstrap intervals, as text) above the paper's Table 2
    (paper.table2(), display only), per activation; our runs are named with N in thousands."""
    rows = []
    for _, r in in_group(fits, group).iterrows():
        row = {"activation": r["activation"], "source": "ours",
               "model": f"{r['run']} ({r['non_embedding_params'] / 1e3:.0f}k)", "form": r["form"]}
        for s in ("alpha", "b", "c", "A0"):
            row[s] = _fmt(r.get(s, np.nan), r.get(f"{s}_lo", np.nan), r.get(f"{s}_hi", np.nan))
        row["converged"] = bool(r["converged"])
        rows.append(row)
    for _, r in paper.table2().iterrows():
        rows.append({"activation": r["activation"], "source": f"paper ({r['version']})", "model": r["scale"],
                     "form": r["form"], **{s: _fmt(r[s]) for s in ("alpha", "b", "c", "A0")}, "converged": True})
    out = pd.DataFrame(rows)
    out["_a"] = out["activation"].map({a: i for i, a in enumerate(dict.fromkeys(out["activation"]))})
    return out.sort_values(["_a"], kind="stable").drop(columns="_a").reset_index(drop=True)


# -----------------------------------------------------------------------------------------------
# profile level: results/<profile>/ tables in, derived tables out (cached by inputs + spec + version)


MEASURED = ("sparsity", "neurons", "tokens")  # the measurement tables every fit is computed from


def load_results(profile: ProfileConfig | str) -> dict[str, pd.DataFrame]:
    """The measurement tables of results/<profile>/ (MEASURED: sparsity, and neurons and tokens where
    present) by name, read with runs.read_table's integrity checks: one edited by hand, cut short, or
    without a readable sidecar is refused, not fitted; for a loaded profile, one measured under other data,
    runs or sparsity settings (its stage_hash) gets a StaleTableWarning; one without a column the fits
    read (FIT_INPUT, runs.RESULT_COLUMNS), or with text in a numeric one, is refused naming it.
    Derived tables are read where they are reused (_cached), so a damaged one, or another CSV in the
    folder, does not stop the fits that would write it again."""
    name = profile if isinstance(profile, str) else profile.name
    folder = results_dir(name)
    measure_cmd = command_for(profile, "measure", "02")
    if not (folder / "sparsity.csv").exists():
        raise SparsingLawError(f"{folder / 'sparsity.csv'}: not measured yet; make it with {measure_cmd}")
    expect = None if isinstance(profile, str) else current(profile, "measure")
    out = {}
    for path in (folder / f"{name}.csv" for name in MEASURED):
        if path.exists():
            columns = FIT_INPUT if path.stem == "sparsity" else RESULT_COLUMNS.get(path.stem, ((), ()))
            out[path.stem] = read_table(path, *columns, expect=expect, fix=f"rerun {measure_cmd}",
                                        required=REQUIRED.get(path.stem, ()))
            out[path.stem].attrs = {}
    return out


def _sha(profile: ProfileConfig, table: str) -> str:
    path = results_dir(profile.name) / f"{table}.csv"
    if not path.exists():
        raise SparsingLawError(f"{path}: missing; make it with {command_for(profile, 'measure', '02')}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_hash() -> str:
    """sha256 (16 hex digits) of the fitting code (CODE_FILES), recorded in each derived table's sidecar."""
    here = Path(__file__).parent
    return hashlib.sha256(b"".join((here / f).read_bytes() for f in CODE_FILES)).hexdigest()[:16]


def refit_command(profile: ProfileConfig) -> str:
    """The `fit --refit` command line for this profile (config.profile_flags: its name or YAML path, and
    its --set overrides)."""
    return f"python -m sparsinglaw fit {profile_flags(profile)} --refit"


def _cached(profile: ProfileConfig, outputs: tuple[str, ...], inputs: tuple[str, ...], payload: dict,
            compute, refit: set[str] | None = None) -> tuple[pd.DataFrame, ...]:
    """Tables `outputs` of results/<profile>/: reused when their sidecars carry the key of (inputs'
    sha256, payload, ANALYSIS_VERSION) and their own sha256 still matches, else compute() and write
    them with provenance (with the corpus their inputs' sidecars record). Always returned as read back
    from the CSV (what a replot sees).

    Reused by their inputs' bytes, a table whose measurement input was made under other settings than the
    profile's now gets the StaleTableWarning load_results gives when it computes one.

    The code is not part of the key (a comment edit would refit every table): a table reused though
    laws.py or analysis.py changed since it was written gets a note on stderr. Outputs named in `refit`
    are recomputed whatever their sidecars say, and taken out of it (a later call reuses them)."""
    folder = results_dir(profile.name)
    hashes = {t: _sha(profile, t) for t in inputs}
    key = stable_hash({"v": ANALYSIS_VERSION, "inputs": hashes, **payload})[:16]
    names = ", ".join(f"{n}.csv" for n in outputs)
    metas = {}
    for name in outputs:
        csv = folder / f"{name}.csv"
        m = sidecar(csv)  # a missing or unreadable one is {}: its table is computed again
        if csv.exists() and m.get("analysis_key") == key and \
                m.get("sha256") == hashlib.sha256(csv.read_bytes()).hexdigest():
            metas[name] = m

    if len(metas) < len(outputs) or (refit is not None and refit & set(outputs)):
        why = "refit" if len(metas) == len(outputs) else "missing or stale"
        for t in inputs:  # a damaged input is refused before the line that announces the computation
            read_table(folder / f"{t}.csv", fix=f"rerun {command_for(profile, 'measure', '02')}" if t in MEASURED
                       else f"recompute it: {refit_command(profile)}", required=REQUIRED.get(t, ()))
        _note_overridden(profile, folder)
        print(f"{folder}: computing {names} ({why}) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        meta = provenance(profile, tables=tuple(folder / f"{t}.csv" for t in inputs), analysis_key=key,
                          analysis_version=ANALYSIS_VERSION, code=code_hash(), inputs=hashes, **payload)
        for name, df in zip(outputs, compute(), strict=True):
            write_table(df, folder / f"{name}.csv", meta)
        print(f"{folder}: {names} written in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if refit is not None:
            refit.difference_update(outputs)
    else:
        for t in inputs:  # reused by the inputs' bytes: made under the profile's settings now? (as load_results)
            if t in MEASURED:
                warn_if_stale(folder / f"{t}.csv", hashes[t], current(profile, "measure"),
                              fix=f"rerun {command_for(profile, 'measure', '02')}")
        if any(m.get("code", code_hash()) != code_hash() for m in metas.values()) and \
                (str(folder), names) not in _NOTED:  # once a process: fit_profile reuses fits.csv four times
            _NOTED.add((str(folder), names))
            print(f"{folder}: reusing {names}, fitted by another version of {' and '.join(CODE_FILES)}; "
                  f"{refit_command(profile)} recomputes them", file=sys.stderr, flush=True)
    return tuple(read_csv(folder / f"{n}.csv") for n in outputs)


_NOTED: set = set()  # results folders (and reused tables) whose note was printed in this process


def _note_overridden(profile: ProfileConfig, folder: Path) -> None:
    """Once per folder and process: derived tables of a built-in profile computed with --set overrides
    into this repository's results/ replace the committed ones (fit --set fit.loss=... on results/cpu
    did so without a word)."""
    committed = (repo_root() / "results").resolve()
    if not profile.overrides or not in_repo(profile) or str(folder) in _NOTED or \
            committed not in folder.resolve().parents:
        return
    _NOTED.add(str(folder))
    sets = " ".join(f"--set {o}" for o in profile.overrides)
    import subprocess

    try:  # committed tables (git tracks files in the folder) can be restored; a profile's own ones cannot
        tracked = subprocess.run(["git", "ls-files", "--", str(folder)], cwd=repo_root(), capture_output=True,
                                 text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        tracked = False
    restore = f"git checkout {folder} restores them; " if tracked else ""
    print(f"note: tables computed with {sets} replace the {'committed ' if tracked else ''}ones in {folder} "
          f"({restore}SPARSINGLAW_RESULTS=<another folder> holding a copy of results/ keeps them apart)",
          file=sys.stderr, flush=True)


def _spec_payload(profile: ProfileConfig, **args) -> dict:
    chosen = profile.fit.get("activation_forms")  # in the key only when set: the default key stays as it was
    return {"fit_spec": dataclasses.asdict(fit_spec(profile)), "args": args,
            **({"activation_forms": activation_forms(profile)} if chosen else {})}


# Each *_for below: `refit`, a set of table names to recompute even when cached (fit_profile's --refit);
# `progress`, per-run bars on stderr for the fits that take seconds a run.


def activation_laws_for(profile: ProfileConfig, p: float = 1.0, refit: set[str] | None = None,
                        progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """fit_activation_laws on results/<profile>/sparsity.csv -> fits.csv, fit_curves.csv."""
    return _cached(profile, ("fits", "fit_curves"), ("sparsity",), _spec_payload(profile, p=p),
                   lambda: fit_activation_laws(load_results(profile)["sparsity"], fit_spec(profile), p,
                                               progress=progress, activation_forms=activation_forms(profile)),
                   refit)


def form_comparison_for(profile: ProfileConfig, p: float = 1.0, refit: set[str] | None = None,
                        progress: bool = True) -> pd.DataFrame:
    """form_comparison on results/<profile>/sparsity.csv -> form_comparison.csv."""
    return _cached(profile, ("form_comparison",), ("sparsity",), _spec_payload(profile, p=p),
                   lambda: (form_comparison(load_results(profile)["sparsity"], fit_spec(profile), p,
                                            progress=progress, activation_forms=activation_forms(profile)),),
                   refit)[0]


def limit_loss_for(profile: ProfileConfig, p: float = 1.0, refit: set[str] | None = None) -> pd.DataFrame:
    """limit_loss on results/<profile>/sparsity.csv -> limit_loss.csv."""
    return _cached(profile, ("limit_loss",), ("sparsity",), _spec_payload(profile, p=p),
                   lambda: (limit_loss(load_results(profile)["sparsity"], fit_spec(profile), p),), refit)[0]


def width_depth_for(profile: ProfileConfig, p: float = 1.0, refit: set[str] | None = None,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """width_depth from the profile's fits and limit losses -> width_depth.csv, width_depth_fit.csv."""
    fits, _ = activation_laws_for(profile, p, refit, progress)
    losses = limit_loss_for(profile, p, refit)
    return _cached(profile, ("width_depth", "width_depth_fit"), ("fits", "limit_loss"), {},
                   lambda: width_depth(fits, losses, fit_spec(profile).level), refit)


def scale_for(profile: ProfileConfig, p: float = 1.0, refit: set[str] | None = None,
              progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """scale from the profile's fits and limit losses -> scale.csv, scale_fit.csv."""
    fits, _ = activation_laws_for(profile, p, refit, progress)
    losses = limit_loss_for(profile, p, refit)
    return _cached(profile, ("scale", "scale_fit"), ("fits", "limit_loss"), {},
                   lambda: scale(fits, losses, fit_spec(profile).level), refit)


def convergence_for(profile: ProfileConfig, p: float = 1.0, refit: set[str] | None = None,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """convergence from the profile's fits -> convergence.csv, convergence_summary.csv."""
    fits, _ = activation_laws_for(profile, p, refit, progress)
    return _cached(profile, ("convergence", "convergence_summary"), ("fits",), {}, lambda: convergence(fits),
                   refit)


def patterns_for(profile: ProfileConfig, refit: set[str] | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """domain_distributions, token_pairs and seed_agreement on neurons.csv and tokens.csv -> domains.csv,
    domain_agreement.csv, token_pairs.csv, seed_agreement.csv."""
    def compute():
        t = load_results(profile)
        return (*domain_distributions(t["neurons"], t["sparsity"]), token_pairs(t["tokens"], t["sparsity"]),
                seed_agreement(t["neurons"], t["tokens"], t["sparsity"]))

    return _cached(profile, ("domains", "domain_agreement", "token_pairs", "seed_agreement"),
                   ("sparsity", "neurons", "tokens"), {}, compute, refit)


FIT_TABLES = ("fits", "fit_curves", "form_comparison", "limit_loss", "width_depth", "width_depth_fit", "scale",
              "scale_fit", "convergence", "convergence_summary", "domains", "domain_agreement", "token_pairs",
              "seed_agreement")


def fit_profile(profile: ProfileConfig, p: float = 1.0, refit: bool = False,
                progress: bool = True) -> dict[str, pd.DataFrame]:
    """Every fit and comparison of notebooks 03-05 on results/<profile>/ (each cached as above), by
    table name (FIT_TABLES): what `python -m sparsinglaw fit` prints and `verify` checks. `refit`:
    recompute every table, cached or not (after an edit of the fitting code), each once."""
    todo = set(FIT_TABLES) if refit else None
    fits, curves = activation_laws_for(profile, p, todo, progress)
    wd, wd_fit = width_depth_for(profile, p, todo, progress)
    sc, sc_fit = scale_for(profile, p, todo, progress)
    conv, conv_summary = convergence_for(profile, p, todo, progress)
    doms, agreement, pairs, seed_pairs = patterns_for(profile, todo)
    out = {"fits": fits, "fit_curves": curves, "form_comparison": form_comparison_for(profile, p, todo, progress),
           "limit_loss": limit_loss_for(profile, p, todo), "width_depth": wd, "width_depth_fit": wd_fit,
           "scale": sc, "scale_fit": sc_fit, "convergence": conv, "convergence_summary": conv_summary,
           "domains": doms, "domain_agreement": agreement, "token_pairs": pairs, "seed_agreement": seed_pairs}
    assert tuple(out) == FIT_TABLES and not todo
    return out
