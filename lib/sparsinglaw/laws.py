"""The paper's laws and how we fit them (paper Section 4.2-4.4).

Read top to bottom: the law forms (Eq. 4, Eq. 5, the rebuttal's two alternatives and a limit-loss
law) and their registry `FORMS`; `FitSpec`, everything that determines a fit; `fit`, the one entry
point, and its `FitResult`; `compare_forms`; then the width-depth helpers (Fig. 5-6) and the scale
helpers (Fig. 7-8, 12). D is always training tokens / 1e9, the paper's unit.

Published numbers live in paper.py and are never read here: no fitted constant, start or default
in this module comes from the paper.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import optimize, stats

TOKENS_PER_D = 1e9  # D = training tokens / TOKENS_PER_D (the paper's unit, "1e9 tokens")


def tokens_to_D(tokens):
    """Training tokens -> D in units of 1e9 tokens."""
    return np.asarray(tokens, dtype=float) / TOKENS_PER_D


# ----------------------------------------------------------------------------- law forms


def logspace_power(D, alpha, b, c, A0):
    # Eq. 4 (ReLU): A(D) = exp(-c * D**alpha + b) + A0, decreasing towards the limit A0
    return np.exp(-c * D**alpha + b) + A0


def power(D, alpha, c, A0):
    # Eq. 5 (SiLU): A(D) = -c * D**(-alpha) + A0, increasing towards the limit A0
    return -c * D ** (-alpha) + A0


def log(D, a, b, c, A0):
    # rebuttal alternative: A(D) = c * log(a*D + b) + A0; no limit, and only a/b and A0 + c*log(b)
    # are identified (scaling a and b by s is undone by A0 -> A0 - c*log(s))
    return c * np.log(a * D + b) + A0


def sigmoid(D, a, b, c, d):
    # rebuttal alternative: A(D) = a - 1 / (1 + b*exp(c*D + d)); only b*exp(d) is identified
    with np.errstate(over="ignore"):  # exp -> inf is the form's own limit, A -> a
        return a - 1.0 / (1.0 + b * np.exp(c * D + d))


def loss_power(D, E, B, beta):
    # limit-loss law (ours; the paper states none): L(D) = E + B * D**(-beta), limit loss E
    return E + B * D ** (-beta)


# Fixed starting grids. Each is a rule of the data's simple statistics (min, max, spread, geometric
# mean and quantiles of D), the same rule for every data set; n values per grid axis. Parameters that
# enter linearly are solved from the others (they make the curve pass through an anchor point).


def _axis(lo, hi, n, log=True):
    """n values from lo to hi (geometric or linear); their middle when n == 1."""
    if n == 1:
        return np.array([math.sqrt(lo * hi) if log else (lo + hi) / 2])
    return np.geomspace(lo, hi, n) if log else np.linspace(lo, hi, n)


def _starts_logspace_power(D, A, n):
    # alpha in [0.1, 2]; c puts c*D**alpha in [0.3, 3] at the geometric-mean D; A0 at 50-95% of
    # min(A); b makes the curve pass through max(A) at the smallest D
    Dm = np.exp(np.mean(np.log(D)))
    for alpha, k, t in itertools.product(_axis(0.1, 2, n), _axis(0.3, 3, n), _axis(0.5, 0.95, n, False)):
        c = k / Dm**alpha
        A0 = t * A.min()
        yield alpha, np.log(max(A.max() - A0, 1e-9)) + c * D.min() ** alpha, c, A0


def _starts_power(D, A, n):
    # alpha in [0.1, 2]; A0 above max(A) by 1-100% of the spread of A; c makes the curve pass
    # through min(A) at the smallest D
    for alpha, s in itertools.product(_axis(0.1, 2, n), _axis(0.01, 1, n)):
        A0 = A.max() + s * np.ptp(A)
        yield alpha, (A0 - A.min()) * D.min() ** alpha, A0


def _starts_log(D, A, n):
    # b = 1 (a/b is what matters); a*D in [0.1, 10] at the geometric-mean D; c and A0 by least
    # squares of A on log(a*D + 1)
    Dm = np.exp(np.mean(np.log(D)))
    for k in _axis(0.1, 10, n):
        a = k / Dm
        c, A0 = np.polyfit(np.log(a * D + 1.0), A, 1)
        yield a, 1.0, c, A0


def _starts_sigmoid(D, A, n):
    # b = 1 (b*exp(d) is what matters); |c| * (max D - min D) in [1, 10], both signs; the midpoint
    # c*D + d = 0 at the 25-75% quantiles of D; a by least squares given the others
    for sign, k, q in itertools.product((-1.0, 1.0), _axis(1, 10, n), _axis(0.25, 0.75, n, False)):
        c = sign * k / np.ptp(D)
        d = -c * np.quantile(D, q)
        yield np.mean(A + 1.0 / (1.0 + np.exp(c * D + d))), 1.0, c, d


def _starts_loss_power(D, L, n):
    # beta in [0.1, 1]; E at 50-95% of min(L); B makes the curve pass through max(L) at the smallest D
    for beta, t in itertools.product(_axis(0.1, 1, n), _axis(0.5, 0.95, n, False)):
        E = t * L.min()
        yield E, (L.max() - E) * D.min() ** beta, beta


# Optimizer coordinates. A chart maps a form's parameters x to the coordinates z that its least squares moves
# in, and back: the same curves, with the bounds carried into z. Each answers a ridge or a limit on which
# least squares in x stopped short (`_coords` holds a redundant parameter on top).
inf, TINY = np.inf, np.finfo(float).tiny


def _chart_logspace_power(D, lo, hi):
    # Eq. 4: u = log(c) + alpha log(D_ref) in place of c, D_ref the geometric mean of D, so the term c * D**alpha
    # becomes exp(u) * (D/D_ref)**alpha. c spans many orders of magnitude and trades against alpha along a ridge
    # (only c * D**alpha near the data is pinned), on which (alpha, c) stopped short of the optimum; in z the
    # ridge runs along alpha with u nearly fixed. 0 <= c < inf becomes -inf < u < inf
    log_ref = float(np.mean(np.log(D)))

    def to_z(x):
        return np.array([x[0], x[1], np.log(max(x[2], TINY)) + x[0] * log_ref, x[3]])

    def to_x(z):
        return np.array([z[0], z[1], np.exp(z[2] - z[0] * log_ref), z[3]])

    return to_z, to_x, [lo[0], lo[1], -inf, lo[3]], [hi[0], hi[1], inf, hi[3]]


def _chart_power(D, lo, hi):
    # Eq. 5: u = log(c) - alpha log(D_ref) in place of c, D_ref the geometric mean of D, so the term c * D**-alpha
    # becomes exp(u) * (D/D_ref)**-alpha. c carries D's unit: a transient of 0.03 at D ~ 1e-3 (1e9 tokens) with
    # alpha 1.6 is c ~ 2e-7, which a bound check in c took for its bound 0 (the same fit with D in 1e6 tokens
    # has c ~ 0.02). In z the curve, its Jacobian and so the fit's judgement depend on D only through D/D_ref,
    # whatever D's unit. 0 <= c < inf becomes -inf < u < inf
    log_ref = float(np.mean(np.log(D)))

    def to_z(x):
        return np.array([x[0], np.log(max(x[1], TINY)) - x[0] * log_ref, x[2]])

    def to_x(z):
        return np.array([z[0], np.exp(z[1] + z[0] * log_ref), z[2]])

    return to_z, to_x, [lo[0], -inf, lo[2]], [hi[0], inf, hi[2]]


def _chart_log(D, lo, hi):
    # logarithmic form: log(a) in place of a, so that the pure-log limit a/b -> inf (with b held) is reached in
    # a few steps (moving a itself took 2-40 times the evaluations on the cpu and cpu-long runs and stopped
    # 0.3-0.4% above the minimum on two). 0 <= a < inf becomes -inf < log a < inf
    def to_z(x):
        return np.array([np.log(max(x[0], TINY)), *x[1:]])

    def to_x(z):
        return np.array([np.exp(z[0]), *z[1:]])

    return to_z, to_x, [-inf, *lo[1:]], [inf, *hi[1:]]


def _chart_sigmoid(D, lo, hi):
    # sigmoid-like form: the midpoint m = -d/c (where c*D + d = 0) in place of d, so that sharpening or
    # flattening the transition about its midpoint is one coordinate (in (c, d), a ridge along both). Measured,
    # not derived: from the same starts it reached minima 17% and 28% lower on 2 of the 30 cpu and cpu-long
    # runs (fast transients over the first points) and none higher; on 12 flat synthetic data sets it reached
    # a grid oracle's RSS on 10, (c, d) on 8 (tested). (c = 0, a constant curve, puts m at 0.)
    def to_z(x):
        return np.array([x[0], x[1], x[2], -x[3] / x[2] if x[2] != 0 else 0.0])

    def to_x(z):
        return np.array([z[0], z[1], z[2], -z[2] * z[3]])

    return to_z, to_x, list(lo), list(hi)


@dataclass(frozen=True)
class Form:
    f: Callable  # f(D, *params) -> A
    symbols: tuple  # parameter names, the paper's symbols, in f's order
    lower: tuple  # lower bounds (same order)
    upper: tuple  # upper bounds
    starts: Callable  # starts(D, A, n) -> iterable of start vectors (the fixed grid rule)
    equation: str  # where the form comes from
    k: int  # identified parameters, what AIC, AICc and BIC count (fewer than symbols when some only act together)
    limit: str | None = None  # the symbol of the law's limit (the quantity of interest), if it has one
    relaxed_upper: tuple | None = None  # upper bounds for the nuisance check of `_judge` (None: bounds are hard)
    redundant: str | None = None  # a symbol that only acts with another: held at its start value (`_coords`)
    chart: Callable | None = None  # chart(D, lower, upper) -> the optimizer's coordinates (`_coords`; None: x)
    ratio: bool = True  # its data are activation ratios, fractions in [0, 1] (checked by `fit`)


FORMS = {
    # c, alpha > 0; 0 < A0 < 1; b <= 0 because the transient at D -> 0, A(0) - A0 = exp(b), cannot exceed 1
    # for a ratio A in [0, 1] and A0 >= 0 (necessary only: A(0) <= 1 would need b <= log(1 - A0), which is not
    # imposed); b >= -30 keeps exp(b) > 0. With a long early transient the least-squares path runs along
    # alpha -> 0, b -> +inf (the curve tends to K * D**(-c*alpha) + A0, a pure power-law decay) and stops on
    # b <= 0; whether A0 depends on that bound is checked by refitting with b <= 30 (`_judge`). A transient that
    # ends between two measured points is a step: its best fit sharpens without end (alpha -> inf, c D**alpha
    # fixed at the step) and stops on alpha <= 10; that bound is checked the same way, with alpha <= 50.
    "logspace_power": Form(
        logspace_power, ("alpha", "b", "c", "A0"), (0, -30, 0, 0), (10, 0, inf, 1),
        _starts_logspace_power, "Eq. 4 (ReLU)", k=4, limit="A0", relaxed_upper=(50, 30, inf, 1),
        chart=_chart_logspace_power,
    ),
    # c, alpha > 0; 0 < A0 < 1
    "power": Form(power, ("alpha", "c", "A0"), (0, 0, 0), (10, inf, 1), _starts_power, "Eq. 5 (SiLU)", k=3,
                  limit="A0", chart=_chart_power),
    # a, b > 0 keep a*D + b > 0; c of either sign (decreasing or increasing); A0 is an intercept. Three
    # identified parameters: a/b, c and A0 + c*log(b); the fit holds b at its start (1)
    "log": Form(log, ("a", "b", "c", "A0"), (0, 0, -inf, -inf), (inf, inf, inf, inf), _starts_log,
                "rebuttal, logarithmic", k=3, redundant="b", chart=_chart_log),
    # b > 0 (no pole); c of either sign; the limit (a or a - 1) in (0, 1) needs 0 < a < 2. Three identified
    # parameters: a, c and b*exp(d); the fit holds b at its start (1)
    "sigmoid": Form(sigmoid, ("a", "b", "c", "d"), (0, 0, -inf, -inf), (2, inf, inf, inf), _starts_sigmoid,
                    "rebuttal, sigmoid-like", k=3, redundant="b", chart=_chart_sigmoid),
    # E, B, beta > 0
    "loss_power": Form(loss_power, ("E", "B", "beta"), (0, 0, 0), (inf, inf, 10), _starts_loss_power,
                       "limit-loss law (ours)", k=3, limit="E", ratio=False),
}


# ----------------------------------------------------------------------------- fit specification

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")  # scipy.optimize.least_squares losses


@dataclass
class FitSpec:
    n_boot: int = 1000  # bootstrap resamples for the intervals (0: no intervals)
    bootstrap: str = "residual"  # "residual": keep D, resample rescaled residuals; "pairs": resample points
    level: float = 0.95  # confidence level of the percentile intervals
    seed: int = 0  # seed of the bootstrap random generator
    loss: str = "linear"  # least-squares loss: "linear" or a robust one ("soft_l1", "huber", "cauchy", ...)
    f_scale: float = 0.01  # residual size (units of A) beyond which a robust loss down-weights a point
    log_residuals: bool = False  # fit log(A) - log(f(D)) instead of A - f(D) (needs A > 0)
    drop_first_n: int = 0  # drop this many points with the smallest D (warmup)
    drop_first_frac: float = 0.0  # drop the floor(frac * n) points with the smallest D (warmup)
    min_D: float = 0.0  # drop points with D < min_D (1e9 tokens)
    holdout_frac: float = 0.2  # hold out the ceil(frac * n_used) largest-D points for the extrapolation check
    n_grid: int = 3  # starting values per grid axis (the fixed rule of each form; see FORMS)
    tol: float = 1e-10  # ftol = xtol = gtol of each least-squares run
    max_nfev: int = 2000  # function evaluations allowed per least-squares run
    min_boot_ok: float = 0.9  # report intervals only if at least this share of resamples converge
    nuisance_tol: float = 1e-3  # a nuisance parameter may sit on its bound if lifting it moves the limit this little

    def __post_init__(self):
        kinds = {"int": numbers.Integral, "float": numbers.Real, "str": str, "bool": bool}
        values = {f.name: (getattr(self, f.name), f.type) for f in dataclasses.fields(self)}
        mistyped = [f"{name}={v!r} (expected {t})" for name, (v, t) in values.items()
                    if not isinstance(v, kinds[t]) or isinstance(v, bool) != (t == "bool")]
        if mistyped:
            raise ValueError(f"FitSpec: wrong type for {', '.join(mistyped)}")
        checks = {  # field: (valid, what is expected)
            "n_boot": (self.n_boot >= 0, ">= 0"),
            "bootstrap": (self.bootstrap in ("residual", "pairs"), "residual or pairs"),
            "level": (0 < self.level < 1, "strictly between 0 and 1, e.g. 0.95"),
            "loss": (self.loss in LOSSES, f"one of {', '.join(LOSSES)}"),
            "f_scale": (self.f_scale > 0, "> 0"),
            "drop_first_n": (self.drop_first_n >= 0, ">= 0"),
            "drop_first_frac": (0 <= self.drop_first_frac < 1, "in [0, 1)"),
            "min_D": (self.min_D >= 0, ">= 0"),
            "holdout_frac": (0 <= self.holdout_frac < 1, "in [0, 1)"),
            "n_grid": (self.n_grid >= 1, ">= 1"),
            "tol": (self.tol > 0, "> 0"),
            "max_nfev": (self.max_nfev >= 1, ">= 1"),
            "min_boot_ok": (0 <= self.min_boot_ok <= 1, "in [0, 1]"),
            "nuisance_tol": (self.nuisance_tol >= 0, ">= 0"),
        }
        bad = [f"{name}={getattr(self, name)!r} (expected {want})" for name, (ok, want) in checks.items() if not ok]
        if bad:
            raise ValueError(f"FitSpec: invalid {'; '.join(bad)}")

    @classmethod
    def from_dict(cls, fields):
        """FitSpec from a mapping such as a profile's `fit:` section; unknown or mistyped fields raise
        ValueError naming them."""
        return _resolve_spec(None, dict(fields))


def _resolve_spec(spec, overrides):
    if isinstance(spec, Mapping):  # a profile's `fit:` section as given
        spec = FitSpec.from_dict(spec)
    elif spec is not None and not isinstance(spec, FitSpec):
        raise TypeError(f"spec: expected a FitSpec or a mapping of its fields, got {type(spec).__name__}")
    spec = spec if spec is not None else FitSpec()
    names = {f.name for f in dataclasses.fields(FitSpec)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown FitSpec field(s) {', '.join(unknown)}; fields are {', '.join(sorted(names))}")
    return dataclasses.replace(spec, **overrides)


# ----------------------------------------------------------------------------- fitting pieces


def _form(name):
    if name not in FORMS:
        raise ValueError(f"unknown law form {name!r}; forms are {list(FORMS)}")
    return FORMS[name]


MAX_D = 1e6  # 1e15 tokens, a thousand times the paper's longest run: a larger D is tokens not divided by 1e9


def _check_data(D, A, log_residuals, ratio=False):
    D, A = np.asarray(D, dtype=float).ravel(), np.asarray(A, dtype=float).ravel()
    if D.shape != A.shape:
        raise ValueError(f"D and A differ in length: {D.size} vs {A.size}")
    for name, v in (("D", D), ("A", A)):
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise ValueError(f"{name} has {bad.size} non-finite value(s) at index {bad.tolist()}; "
                             "remove them explicitly before fitting")
    if np.any(D <= 0):
        raise ValueError(f"D must be > 0 (1e9 tokens); got min {D.min()}")
    if D.max() > MAX_D:
        raise ValueError(f"D is in units of 1e9 tokens; got max {D.max():.3g}, i.e. {D.max() * TOKENS_PER_D:.3g} "
                         "tokens: pass tokens_to_D(tokens)")
    if ratio and (A.min() < 0 or A.max() > 1):
        bad = np.flatnonzero((A < 0) | (A > 1))
        raise ValueError(f"A is an activation ratio, a fraction in [0, 1]; got {A[bad[0]]:g} at index {bad[0]} "
                         f"({bad.size} value(s) outside)" + ("; percentages? divide by 100" if A.max() > 1 else ""))
    if log_residuals and np.any(A <= 0):
        raise ValueError("log_residuals=True needs A > 0")
    return D, A


def _drop(D, A, spec):
    """Mask of the points kept, and one record per dropped point (index, D, A, reason)."""
    order = np.argsort(D, kind="stable")
    reasons = {}
    for i in order[: spec.drop_first_n]:
        reasons[i] = f"drop_first_n={spec.drop_first_n}"
    for i in order[: int(math.floor(spec.drop_first_frac * D.size))]:
        reasons.setdefault(i, f"drop_first_frac={spec.drop_first_frac}")
    for i in np.flatnonzero(D < spec.min_D):
        reasons.setdefault(i, f"min_D={spec.min_D}")
    keep = np.ones(D.size, dtype=bool)
    keep[list(reasons)] = False
    dropped = [{"index": int(i), "D": float(D[i]), "A": float(A[i]), "reason": reasons[i]}
               for i in sorted(reasons)]
    return keep, dropped


def _residuals(theta, f, D, A, log_residuals):
    with np.errstate(all="ignore"):
        pred = f(D, *theta)
        r = np.log(pred) - np.log(A) if log_residuals else pred - A
    return np.where(np.isfinite(r), r, 1e3)  # a start that leaves the domain gets a flat penalty


def _floats(x):
    return np.array(x, dtype=float)


def _chart(form, D):
    """The form's chart on data D for whole parameter vectors: (to_z, to_x, lower_z, upper_z); x itself and the
    form's bounds without one. Charts keep each parameter's place and its finite bounds."""
    lo, hi = np.array(form.lower, float), np.array(form.upper, float)
    if form.chart is None:
        return _floats, _floats, lo, hi
    to_z, to_x, lo, hi = form.chart(D, lo, hi)
    return to_z, to_x, np.array(lo, float), np.array(hi, float)


def _coords(form, D, x0):
    """The optimizer's coordinates for `form` on data D from the start x0: (f_z, to_z, to_x, lower_z, upper_z).
    z is the form's `chart` of x (x itself without one), less a `redundant` parameter (one that only acts with
    another), which is held at its value in x0: the same curves, without a direction that changes nothing for
    the optimizer to wander along (left free, the logarithmic form converged from no start on 4 of the 30 runs
    of cpu and cpu-long, and the sigmoid-like form stopped from some starts at minima many times worse than
    the held fit's)."""
    chart_z, chart_x, lo, hi = _chart(form, D)
    keep = np.array([s != form.redundant for s in form.symbols])
    held = chart_z(_floats(x0))[~keep]

    def to_z(x):
        return chart_z(_floats(x))[keep]

    def to_x(z):
        full = np.empty(keep.size)
        full[keep], full[~keep] = z, held
        with np.errstate(over="ignore", invalid="ignore"):
            return chart_x(full)

    def f_z(D_, *z):
        return form.f(D_, *to_x(z))

    return f_z, to_z, to_x, lo[keep], hi[keep]


def _lsq(form, D, A, x0, spec):
    """Bounded least squares of `form` on (D, A) from x0, in the form's optimizer coordinates (`_coords`);
    the result's x is in the form's own parameters."""
    f_z, to_z, to_x, lo, hi = _coords(form, D, x0)
    pad = 1e-6 * (1 + np.abs(np.where(np.isfinite(lo), lo, 0)))
    z0 = np.minimum(np.maximum(to_z(x0), lo + pad), hi - 1e-6 * (1 + np.abs(np.where(np.isfinite(hi), hi, 0))))
    res = optimize.least_squares(
        _residuals, z0, bounds=(lo, hi), args=(f_z, D, A, spec.log_residuals), method="trf",
        loss=spec.loss, f_scale=spec.f_scale, ftol=spec.tol, xtol=spec.tol, gtol=spec.tol,
        max_nfev=spec.max_nfev,
    )
    res.x = to_x(res.x)
    return res


def _ok(res):
    return res.status > 0 and np.all(np.isfinite(res.x)) and np.isfinite(res.cost)


def _multistart(form, D, A, spec):
    """Best converged least-squares run over the form's fixed grid of starts (None if none converged)."""
    best, n_starts, n_ok = None, 0, 0
    for x0 in form.starts(D, A, spec.n_grid):
        n_starts += 1
        if not np.all(np.isfinite(x0)):
            continue
        res = _lsq(form, D, A, x0, spec)
        if _ok(res):
            n_ok += 1
            if best is None or res.cost < best.cost:
                best = res
    return best, f"best of {n_starts} starts ({n_ok} converged)"


def _at_bounds(form, D, x):
    """(index, text) of each parameter whose value sits on a finite bound of the optimizer's coordinates (the
    form's chart on D): a bound that a chart moves to infinity (c >= 0 of Eq. 4 and Eq. 5) is approached, never
    reached, and what that means the flat and constant checks of `_judge` say."""
    to_z, _, lo, hi = _chart(form, D)
    out = []
    for j, (s, v, z) in enumerate(zip(form.symbols, x, to_z(x), strict=True)):
        for bound in (lo[j], hi[j]):
            if np.isfinite(bound) and abs(z - bound) <= 1e-6 * (1 + abs(bound)):
                out.append((j, f"{s}={v:.3g} at bound {bound:g}"))
    return out


def _soft(form, j, x):
    """Whether parameter j of x sits on an upper bound that `form.relaxed_upper` lifts (a nuisance bound)."""
    if form.relaxed_upper is None or form.symbols[j] == form.limit or form.relaxed_upper[j] == form.upper[j]:
        return False
    return abs(x[j] - form.upper[j]) <= 1e-6 * (1 + abs(form.upper[j]))


def _unidentified(form, D, x):
    """Symbols that the data cannot separate: the null space of the column-scaled Jacobian at x, taken in the
    optimizer's coordinates (the form's chart on D), where Eq. 4 and Eq. 5 see D only as D/D_ref: the same
    answer whatever D's unit (in c, Eq. 5's alpha column is -log(D) times c's, nearly parallel to it when
    log(D) is -9 to -6 and far from it when D is in 1e6 tokens)."""
    to_z, to_x, lo, hi = _chart(form, D)
    z = to_z(x)
    J = np.empty((D.size, z.size))
    for j in range(z.size):  # central differences (error ~h^2, far below the 1e-7 threshold) within bounds
        h = 1e-5 * (1 + abs(z[j]))
        up, dn = z.copy(), z.copy()
        up[j], dn[j] = min(z[j] + h, hi[j]), max(z[j] - h, lo[j])
        with np.errstate(all="ignore"):
            J[:, j] = (form.f(D, *to_x(up)) - form.f(D, *to_x(dn))) / (up[j] - dn[j])
    if not np.all(np.isfinite(J)):
        return list(form.symbols)
    # a column is zero when the curve does not move under a relative change of its coordinate: scaled by the
    # coordinate's size, so that a large one with a small derivative still counts
    norms = np.linalg.norm(J, axis=0)
    moves = norms * (1 + np.abs(z))
    zero = moves <= 1e-12 * max(moves.max(), 1e-300)
    _, s, Vt = np.linalg.svd(J[:, ~zero] / norms[~zero], full_matrices=False)
    null = Vt[s <= 1e-7 * s[0]] if s.size else np.empty((0, 0))
    free = np.array(form.symbols)[~zero]
    involved = set(free[np.any(np.abs(null) > 0.1, axis=0)]) if null.size else set()
    return [sym for sym, z in zip(form.symbols, zero, strict=True) if z or sym in involved]


FLAT = 1e-3  # a fitted curve spanning less than this share of the data's spread shows no trend: no law
BEAT_CONSTANT = 0.05  # a law with a limit must fit better than a constant at this level (F-test) to converge


def _rss(form, D, A, x) -> float:
    """Sum of squared plain residuals A - f(D) of `form` at x (whatever the loss; inf or NaN where the
    curve leaves its domain)."""
    with np.errstate(all="ignore"):
        return float(np.sum((A - form.f(D, *x)) ** 2))


def _n_log_mse(rss: float, n: int) -> float:
    """n * log(RSS / n), the Gaussian log-likelihood term of information_criteria (NaN for a non-finite RSS)."""
    return n * math.log(max(rss, 1e-300) / n) if np.isfinite(rss) else math.nan


def constant_test(form, D, A, x):
    """(F, p) of the nested F-test of `form` at x against a constant (the mean of A): whether the fitted
    curve explains more of A than a constant does, with k - 1 and n - k degrees of freedom (k identified
    parameters). The constant is the law's c -> 0 edge, where alpha is not identified: the F reference
    then makes p too small if anything, so a fit that fails this test shows no trend at all."""
    rss = _rss(form, D, A, x)
    rss0, df1, df2 = float(np.sum((A - A.mean()) ** 2)), form.k - 1, D.size - form.k
    if df2 <= 0 or not np.isfinite(rss):
        return math.nan, math.nan
    F = (rss0 - rss) / df1 / max(rss / df2, 1e-300)
    return F, float(stats.f.sf(F, df1, df2))


def _judge(form, D, A, res, spec, unidentified=None):
    """(converged, notes): a fit converges when the optimizer succeeded, everything is finite, A is not
    constant, the fitted curve is not flat (it spans more than FLAT of the spread of A), a law with a
    limit fits better than a constant (`constant_test` p < BEAT_CONSTANT: a decay carried by one or two
    points is no approach to a limit), the law's limit
    is identified (other values of it would not fit as well) and no parameter sits on a bound, except a
    nuisance bound (`Form.relaxed_upper`) that the limit does not depend on: refitted from the optimum
    with those bounds lifted, the limit moves by at most spec.nuisance_tol (the move is reported either
    way). A parameter that stopped short of its nuisance bound is held by it as well when that refit
    crosses the bound with a smaller cost. `unidentified`: _unidentified at res.x, when the caller has it
    already."""
    if res is None:
        return False, ["no start converged"]
    fails = [] if _ok(res) else [f"optimizer: {res.message}"]
    hits = _at_bounds(form, D, res.x)
    soft = [(j, text) for j, text in hits if _soft(form, j, res.x)]
    fails += [text for j, text in hits if (j, text) not in soft]
    again = None
    if form.relaxed_upper is not None:
        again = _lsq(dataclasses.replace(form, upper=form.relaxed_upper), D, A, res.x, spec)
        if not soft:  # trf scales a gradient by the distance to its bound, so it can stop short of one (b =
            # -7e-5 where the optimum is b = 0): a nuisance bound holds when lifting it lets the fit cross it
            soft = [(j, f"{s}={v:.3g} near bound {hi:g}") for j, (s, v, hi, up) in
                    enumerate(zip(form.symbols, res.x, form.upper, form.relaxed_upper, strict=True))
                    if s != form.limit and up != hi and np.isfinite(again.x[j]) and again.cost < res.cost
                    and again.x[j] > hi + 1e-6 * (1 + abs(hi))]
    with np.errstate(all="ignore"):
        span = float(np.ptp(form.f(D, *res.x)))
    if np.ptp(A) == 0:
        fails.append("A is constant over the used points: no law is identified")
    elif not span > FLAT * np.ptp(A):  # e.g. Eq. 4 on data that do not fall: its transient is 0 everywhere
        fails.append(f"the fitted curve is flat over the used points (it spans {span:.2g}, the data "
                     f"{np.ptp(A):.2g}): no approach to a limit is seen")
    elif form.limit is not None and not (const := constant_test(form, D, A, res.x))[1] < BEAT_CONSTANT:
        fails.append(f"the law fits no better than a constant (F = {const[0]:.2g}, p = {const[1]:.2g} >= "
                     f"{BEAT_CONSTANT:g}): no approach to a limit is seen")
    elif form.limit is not None and form.limit in (unidentified if unidentified is not None
                                                   else _unidentified(form, D, res.x)):
        fails.append(f"the limit {form.limit} is not identified: other values of it fit the data as well")
    notes = []
    if soft:
        # a step-like transient sharpens without end once alpha is free: the refit may run out of evaluations
        # on its way, each one a better fit than the bound's; how far the limit has moved by then is the answer
        stopped = again.status == 0 and np.all(np.isfinite(again.x)) and again.cost <= res.cost
        i = form.symbols.index(form.limit)
        move = abs(float(again.x[i] - res.x[i])) if _ok(again) or stopped else np.nan
        lifted = ", ".join(f"{form.symbols[j]} <= {form.relaxed_upper[j]:g}" for j, _ in soft)
        on = "; ".join(text for _, text in soft)
        how = (f"refitted with {lifted}, {form.limit} moves by {move:.2g}"
               + (" before the refit's evaluation limit" if stopped else "") if np.isfinite(move)
               else f"the refit with {lifted} failed")
        if np.isfinite(move) and move <= spec.nuisance_tol:
            notes.append(f"nuisance {on} ({how}, within nuisance_tol {spec.nuisance_tol:g})")
        else:
            fails.append(f"{on} ({how}, more than nuisance_tol {spec.nuisance_tol:g})")
    return not fails, fails + notes


def _enough_resamples(n_good, spec):
    """Whether enough bootstrap resamples converged for intervals (spec.min_boot_ok of spec.n_boot)."""
    return n_good >= spec.min_boot_ok * spec.n_boot


def _bootstrap(form, D, A, x, spec):
    """Percentile-bootstrap samples of the parameters, each resample started from the full-data fit x."""
    rng = np.random.default_rng(spec.seed)
    n, k = D.size, x.size
    pred = form.f(D, *x)
    r = np.log(A) - np.log(pred) if spec.log_residuals else A - pred
    # rescaled by the identified parameters (Form.k) so that resampled residuals are not too small
    r = (r - r.mean()) * math.sqrt(n / (n - form.k))
    out = np.full((spec.n_boot, k), np.nan)
    for i in range(spec.n_boot):
        if spec.bootstrap == "residual":
            Db, rb = D, rng.choice(r, n)
            Ab = pred * np.exp(rb) if spec.log_residuals else pred + rb
        else:
            idx = rng.integers(0, n, n)
            Db, Ab = D[idx], A[idx]
            if np.unique(Db).size < k + 1:
                continue
        res = _lsq(form, Db, Ab, x, spec)
        if _ok(res):
            out[i] = res.x
    return out


def _limit_on_bound(form, D, boot):
    """How many bootstrap samples put the law's limit on one of its bounds (0 for a form without a limit)."""
    if form.limit is None or not boot.size:
        return 0
    i = form.symbols.index(form.limit)
    return sum(any(j == i for j, _ in _at_bounds(form, D, theta)) for theta in boot if np.all(np.isfinite(theta)))


def _holdout(form, D, A, spec):
    """Fit on the smallest-D points, report the error on the ceil(frac * n) largest-D ones."""
    out = {"frac": spec.holdout_frac, "n_fit": 0, "n_test": 0, "D_split": np.nan,
           "mse": np.nan, "mae": np.nan, "converged": False, "message": "no hold-out (holdout_frac=0)"}
    if spec.holdout_frac == 0:
        return out
    order = np.argsort(D, kind="stable")
    n_test = math.ceil(spec.holdout_frac * D.size)
    fit_i, test_i = order[: D.size - n_test], order[D.size - n_test:]
    out.update(n_fit=fit_i.size, n_test=test_i.size, D_split=float(D[test_i].min()))
    if fit_i.size < len(form.symbols) + 1:
        out["message"] = f"too few points to fit before the split ({fit_i.size})"
        return out
    res, starts = _multistart(form, D[fit_i], A[fit_i], spec)
    converged, notes = _judge(form, D[fit_i], A[fit_i], res, spec)
    out.update(converged=converged, message="; ".join([starts, *notes]))
    if res is not None:
        err = A[test_i] - form.f(D[test_i], *res.x)
        out.update(mse=float(np.mean(err**2)), mae=float(np.mean(np.abs(err))))
    return out


# ----------------------------------------------------------------------------- the fit


def information_criteria(n_log_mse, n, k):
    """(AIC, BIC, AICc) of a Gaussian least-squares fit from n*log(RSS/n), n points and k identified
    parameters; K = k + 1 counts the noise variance too. AICc = AIC + 2K(K+1)/(n - K - 1) (Hurvich and
    Tsai's small-sample correction; infinite when n <= K + 1)."""
    K = k + 1
    aic = n_log_mse + 2 * K
    aicc = aic + 2 * K * (K + 1) / (n - K - 1) if n > K + 1 else math.inf
    return aic, n_log_mse + K * math.log(n), aicc


@dataclass
class FitResult:
    form: str  # key in FORMS
    params: dict  # paper symbol -> value (NaN when no start converged)
    intervals: dict  # paper symbol -> (lo, hi), percentile bootstrap at spec.level; NaN when not available
    mse: float  # mean squared residual of A over the used points
    mae: float  # mean absolute residual
    aic: float  # Gaussian AIC from the plain residuals (whatever the loss): n*log(RSS/n) + 2*(k+1)
    aicc: float  # AICc, AIC with the small-sample correction (information_criteria); k = Form.k, identified
    bic: float  # Gaussian BIC: n*log(RSS/n) + (k+1)*log(n); k identified parameters plus the noise variance
    residuals: np.ndarray  # A - f(D) over the used points, in input order
    converged: bool  # optimizer success, finite, A not constant, curve not flat, fits better than a constant
    # (F-test, constant_test), limit identified, no parameter on a bound but a harmless nuisance one (_judge)
    message: str  # how the fit went, and every caveat
    n_used: int  # points fitted after the drop rule
    dropped: list  # one dict per dropped point: index (input order), D, A, reason
    holdout: dict  # frac, n_fit, n_test, D_split, mse, mae, converged, message
    spec: FitSpec  # the specification used
    unidentified: list = field(default_factory=list)  # symbols the data cannot separate (intervals NaN)
    boot: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))  # bootstrap parameter samples
    D: np.ndarray = field(default_factory=lambda: np.empty(0))  # the used D
    A: np.ndarray = field(default_factory=lambda: np.empty(0))  # the used A

    def predict(self, D):
        """The fitted law at D (1e9 tokens)."""
        return FORMS[self.form].f(np.asarray(D, dtype=float), **self.params)

    def band(self, D):
        """Pointwise percentile-bootstrap band (lo, hi) of the fitted curve at D, at spec.level; NaN where
        the fit has no intervals (too few resamples converged, or none were drawn)."""
        D = np.asarray(D, dtype=float)
        ok = self.boot[np.all(np.isfinite(self.boot), axis=1)] if self.boot.size else self.boot
        if not len(ok) or not _enough_resamples(len(ok), self.spec):
            return np.full(D.shape, np.nan), np.full(D.shape, np.nan)
        with np.errstate(all="ignore"):
            curves = np.array([FORMS[self.form].f(D, *theta) for theta in ok])
        q = 50 * (1 - self.spec.level)
        return np.percentile(curves, q, axis=0), np.percentile(curves, 100 - q, axis=0)

    def to_row(self):
        """One flat dict for a CSV row: fit quality, parameters with intervals, hold-out, spec."""
        row = {"form": self.form, "converged": self.converged, "n_used": self.n_used,
               "n_dropped": len(self.dropped),
               "dropped_index": ";".join(str(d["index"]) for d in self.dropped),
               "mse": self.mse, "mae": self.mae, "aic": self.aic, "aicc": self.aicc, "bic": self.bic}
        for s, v in self.params.items():
            row[s], (row[f"{s}_lo"], row[f"{s}_hi"]) = v, self.intervals[s]
        row.update({f"holdout_{k}": v for k, v in self.holdout.items()})
        row["unidentified"] = ";".join(self.unidentified)
        row["message"] = self.message
        row.update({f"spec_{k}": v for k, v in dataclasses.asdict(self.spec).items()})
        return row


def fit(form, D, A, spec=None, **overrides) -> FitResult:
    """Fit law `form` (a key of FORMS) to activation ratios A at D (1e9 tokens).

    `spec` (a FitSpec or a mapping of its fields; default FitSpec()) and keyword overrides of its fields
    determine everything: the drop rule is applied first, then multi-start bounded least squares over
    the form's fixed grid keeps the lowest-cost converged start, then the percentile bootstrap
    (resamples started from that fit) gives the intervals, and a separate fit on the smallest-D points
    gives the hold-out error.
    Raises ValueError for non-finite or non-positive D, D above MAX_D (raw tokens), non-finite A, A
    outside [0, 1] for an activation-ratio form, or fewer points than parameters + 1 after dropping. A
    failed fit is returned with converged=False and the reason in `message`; intervals are then NaN.
    """
    spec = _resolve_spec(spec, overrides)
    law = _form(form)
    D, A = _check_data(D, A, spec.log_residuals, law.ratio)
    keep, dropped = _drop(D, A, spec)
    Du, Au, k = D[keep], A[keep], len(law.symbols)
    if Du.size < k + 1:
        raise ValueError(f"form {form!r} has {k} parameters and needs at least {k + 1} points; "
                         f"{Du.size} left of {D.size} after dropping {len(dropped)} by the drop rule")

    res, starts = _multistart(law, Du, Au, spec)
    x = res.x if res is not None else np.full(k, np.nan)
    unidentified = _unidentified(law, Du, x) if res is not None else list(law.symbols)
    converged, notes = _judge(law, Du, Au, res, spec, unidentified)
    if unidentified and res is not None:
        notes.append(f"not separately identified: {', '.join(unidentified)} (intervals NaN)")

    boot = np.empty((0, k))
    intervals = dict.fromkeys(law.symbols, (np.nan, np.nan))
    if converged and spec.n_boot > 0:
        boot = _bootstrap(law, Du, Au, x, spec)
        good = boot[np.all(np.isfinite(boot), axis=1)]
        if _enough_resamples(len(good), spec):
            q = 50 * (1 - spec.level)
            lo, hi = np.percentile(good, q, axis=0), np.percentile(good, 100 - q, axis=0)
            intervals = {s: (np.nan, np.nan) if s in unidentified else (float(lo[j]), float(hi[j]))
                         for j, s in enumerate(law.symbols)}
            if len(good) < spec.n_boot:
                notes.append(f"bootstrap: {spec.n_boot - len(good)}/{spec.n_boot} resamples failed")
            on_bound = _limit_on_bound(law, Du, good)
            if on_bound:  # kept: such a resample is a curve the data allow, so the interval must reach there
                notes.append(f"bootstrap: {on_bound}/{len(good)} resamples put {law.limit} on a bound (kept)")
        else:
            notes.append(f"only {len(good)}/{spec.n_boot} bootstrap resamples converged: no intervals")
    elif not converged:
        notes.append("no bootstrap for a fit that did not converge")

    with np.errstate(all="ignore"):
        resid = Au - law.f(Du, *x)
    n, rss = Du.size, float(np.sum(resid**2))
    aic, bic, aicc = information_criteria(_n_log_mse(rss, n), n, law.k)
    return FitResult(
        form=form, params={s: float(v) for s, v in zip(law.symbols, x, strict=True)}, intervals=intervals,
        mse=rss / n, mae=float(np.mean(np.abs(resid))), aic=aic, aicc=aicc, bic=bic,
        residuals=resid, converged=converged, message="; ".join([starts, *notes]), n_used=int(n),
        dropped=dropped, holdout=_holdout(law, Du, Au, spec), spec=spec, unidentified=unidentified,
        boot=boot, D=Du, A=Au,
    )


def compare_forms(D, A, forms=("logspace_power", "power", "log", "sigmoid"), spec=None) -> pd.DataFrame:
    """One row per form (MSE, MAE, AIC, AICc, BIC, converged, hold-out errors), sorted by AICc.

    Same data, drop rule and spec for every form; the bootstrap is skipped (n_boot=0) because the
    table reports no intervals.
    """
    spec = dataclasses.replace(_resolve_spec(spec, {}), n_boot=0)
    rows = []
    for name in (forms,) if isinstance(forms, str) else forms:
        r = fit(name, D, A, spec)
        rows.append({"form": name, "n_params": len(r.params), "k": FORMS[name].k, "n_used": r.n_used, "mse": r.mse,
                     "mae": r.mae, "aic": r.aic, "aicc": r.aicc, "bic": r.bic, "converged": r.converged,
                     "holdout_mse": r.holdout["mse"], "holdout_mae": r.holdout["mae"], "message": r.message})
    return pd.DataFrame(rows).sort_values("aicc", kind="stable").reset_index(drop=True)


def _aicc_of(form, D, A, x):
    """AICc of `form` with parameters x on (D, A), from its plain residuals (as `fit` computes it)."""
    ll = _n_log_mse(_rss(form, D, A, x), D.size)
    return information_criteria(ll, D.size, form.k)[2] if np.isfinite(ll) else math.nan


def _refit(form, D, A, x, spec):
    """Least squares from x (a redundant parameter held at its value in x, as every fit holds it: `_coords`).
    The full parameter vector, or None if it failed."""
    res = _lsq(form, D, A, x, spec)
    return res.x if _ok(res) else None


def form_null(D, A, paper, others, spec=None, n_sim=None) -> dict:
    """Whether the data reject the `paper` form in favour of `others` more than its own noise would, and the
    other way round: two parametric bootstraps of delta = AICc(paper) - min AICc(others).

    AICc penalises Eq. 4's fourth identified parameter so much at ~10 points that the true law, simulated
    with a run's own fit and noise, comes within 2 AICc of the three-parameter alternatives only a few
    times in ten (they imitate the curve within the noise): "within 2 AICc" alone would reject a true law,
    and a true law would almost never pass it. So the observed delta is compared with its distribution on
    data simulated from a fitted curve plus its resampled rescaled residuals (as `_bootstrap` draws them;
    n_sim sets, default spec.n_boot), each form refitted from its fit to the real data (`_refit`):
    - the paper form's own fit (seed spec.seed): p = (1 + #{delta_sim >= delta}) / (1 + n_ok), small when
      the alternatives beat the paper form by more than they do on data the paper form made;
    - the best other form's fit (`alt`, the lowest AICc of `others`; seed [spec.seed, 1]): p_alt =
      (1 + #{delta_sim <= delta}) / (1 + n_alt), small when the paper form beats the alternatives by more
      than it does on data the best of them made.
    NaN (no test) when a fit fails, the paper form has no finite AICc (n <= k + 2 points) or n_sim is 0.
    Returns delta, p, n_sim, n_ok (the simulated sets whose paper-form refit converged), alt, p_alt, n_alt."""
    spec = _resolve_spec(spec, {})
    n_sim = spec.n_boot if n_sim is None else n_sim
    law = _form(paper)
    D, A = _check_data(D, A, spec.log_residuals, law.ratio)
    keep, _ = _drop(D, A, spec)
    Du, Au = D[keep], A[keep]
    out = {"delta": math.nan, "p": math.nan, "n_sim": int(n_sim), "n_ok": 0, "alt": "", "p_alt": math.nan,
           "n_alt": 0}
    forms = {name: _form(name) for name in (paper, *others)}
    if Du.size < max(len(f.symbols) for f in forms.values()) + 1:
        return out
    fits = {name: _multistart(f, Du, Au, spec)[0] for name, f in forms.items()}
    if fits[paper] is None:
        return out

    def delta(A_, xs):
        own = _aicc_of(law, Du, A_, xs[paper])
        rest = [_aicc_of(forms[n], Du, A_, x) for n, x in xs.items() if n != paper and x is not None]
        rest = [v for v in rest if np.isfinite(v)]
        return own - min(rest) if rest and np.isfinite(own) else math.nan

    aicc = {n: _aicc_of(forms[n], Du, Au, r.x) for n, r in fits.items() if n != paper and r is not None}
    aicc = {n: v for n, v in aicc.items() if np.isfinite(v)}  # as delta() on simulated data
    own = _aicc_of(law, Du, Au, fits[paper].x)
    out["delta"] = obs = own - min(aicc.values()) if aicc and np.isfinite(own) else math.nan
    if not np.isfinite(obs) or n_sim == 0:
        return out

    def simulate(truth, rng):
        """delta on n_sim data sets made by form `truth`'s fit plus its resampled rescaled residuals."""
        form = forms[truth]
        pred = form.f(Du, *fits[truth].x)
        r = np.log(Au) - np.log(pred) if spec.log_residuals else Au - pred
        r = (r - r.mean()) * math.sqrt(Du.size / (Du.size - form.k))
        sims = []
        for _ in range(n_sim):
            rb = rng.choice(r, Du.size)
            Ab = pred * np.exp(rb) if spec.log_residuals else pred + rb
            xs = {name: _refit(f, Du, Ab, fits[name].x, spec) if fits[name] is not None else None
                  for name, f in forms.items()}
            if xs[paper] is not None:  # a failed refit of another form leaves it out of that set's min, as on real data
                sims.append(delta(Ab, xs))
        return np.array([v for v in sims if np.isfinite(v)])

    sims = simulate(paper, np.random.default_rng(spec.seed))
    out.update(n_ok=int(sims.size), p=float((1 + np.sum(sims >= obs)) / (1 + sims.size)) if sims.size else math.nan)
    out["alt"] = alt = min(aicc, key=aicc.get)  # obs is finite: some other form has a finite AICc
    sims = simulate(alt, np.random.default_rng([spec.seed, 1]))
    out.update(n_alt=int(sims.size),
               p_alt=float((1 + np.sum(sims <= obs)) / (1 + sims.size)) if sims.size else math.nan)
    return out


# ----------------------------------------------------------------------------- width-depth (Fig. 5-6)


UNPLACED = "the data do not place the breakpoint"  # in the message of a fit whose interval holds every candidate


def _check_level(level):
    if not (isinstance(level, numbers.Real) and 0 < level < 1):
        raise ValueError(f"level: expected a confidence level strictly between 0 and 1 (e.g. 0.95), got {level!r}")


@dataclass
class PiecewiseFit:
    above: str  # "flat" (constant above the breakpoint) or "linear"
    breakpoint: float  # profile-least-squares breakpoint (the bottleneck)
    breakpoint_interval: tuple  # profile-likelihood F-test interval at `level` (hull of accepted candidates)
    intercept: float  # b0
    slope_below: float  # b1
    slope_below_interval: tuple  # union of the OLS intervals at every breakpoint inside breakpoint_interval
    slope_above: float  # b1 + b2 ("linear") or 0 ("flat")
    slope_above_interval: tuple  # OLS interval at the chosen breakpoint ((0, 0) for "flat")
    rss: float  # residual sum of squares at the breakpoint
    n: int  # points
    level: float  # confidence level
    message: str  # caveats (e.g. an interval cut by the candidate range)
    inside: bool  # breakpoint_interval ends below the last candidate: >= 2 points lie above every accepted breakpoint
    profile: pd.DataFrame  # candidate breakpoint, rss, accepted (inside the interval)
    ols: object = field(repr=False, default=None)  # statsmodels results at the chosen breakpoint

    def predict(self, x):
        return self.ols.predict(_hinge(np.asarray(x, dtype=float), self.breakpoint, self.above))

    def to_row(self):
        row = {"above": self.above, "breakpoint": self.breakpoint, "intercept": self.intercept,
               "slope_below": self.slope_below, "slope_above": self.slope_above}
        for name in ("breakpoint", "slope_below", "slope_above"):
            row[f"{name}_lo"], row[f"{name}_hi"] = getattr(self, f"{name}_interval")
        return row | {"inside": self.inside, "rss": self.rss, "n": self.n, "level": self.level,
                      "message": self.message}


def _hinge(x, bp, above):
    # continuous: y = b0 + b1*x + b2*max(x - bp, 0) ("linear"), or y = b0 + b1*min(x, bp) ("flat")
    if above == "linear":
        return np.column_stack([np.ones_like(x), x, np.maximum(x - bp, 0)])
    return np.column_stack([np.ones_like(x), np.minimum(x, bp)])


def fit_piecewise_linear(x, y, above="flat", level=0.95, grid_per_gap=50) -> PiecewiseFit:
    """Continuous one-breakpoint fit of y (limit activation ratio) vs x (width-depth ratio d_h/L).

    Linear below the breakpoint, constant (`above="flat"`) or linear (`above="linear"`) above. The
    breakpoint minimises the profile residual sum of squares over `grid_per_gap` candidates in every
    gap between sorted data x (statsmodels OLS at each candidate), with at least two points below and
    one ("flat") or two ("linear") above. Its interval is the profile-likelihood F-test set
    {bp : (RSS(bp) - RSS_min) / (RSS_min / (n - p)) <= F(level; 1, n - p)}, p counting the breakpoint,
    reported as the hull of accepted candidates; `inside` says whether it ends below the last candidate.
    The slope interval below the breakpoint is the union of the statsmodels OLS intervals at every
    accepted breakpoint, so it carries the breakpoint's own uncertainty (at the chosen breakpoint alone
    it would not); the slope interval above ("linear") is the OLS one at the chosen breakpoint.
    """
    if above not in ("flat", "linear"):
        raise ValueError(f"above must be 'flat' or 'linear', got {above!r}")
    _check_level(level)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise ValueError("x and y must be finite arrays of the same length")
    p = 4 if above == "linear" else 3  # b0, b1, (b2,) bp
    xs = np.unique(x)
    if x.size < p + 1 or xs.size < p:
        raise ValueError(f"piecewise fit with above={above!r} needs at least {p + 1} points, {p} distinct x")
    knots = xs[1: xs.size - (2 if above == "linear" else 1)]  # >= 2 points below, >= 1 or 2 above
    gaps = [np.linspace(a, b, grid_per_gap) for a, b in zip(knots[:-1], knots[1:], strict=True)]
    cand = np.unique(np.concatenate(gaps or [knots]))
    rss = np.array([sm.OLS(y, _hinge(x, bp, above)).fit().ssr for bp in cand])
    i = int(np.argmin(rss))
    bp, rss_min = float(cand[i]), float(rss[i])
    accepted = (rss - rss_min) / max(rss_min / (x.size - p), 1e-300) <= stats.f.ppf(level, 1, x.size - p)
    lo, hi = float(cand[accepted].min()), float(cand[accepted].max())
    message = ""
    if accepted.all():
        message = f"the interval is the whole candidate range ({lo:.3g} to {hi:.3g}): {UNPLACED}"
    elif accepted[0] or accepted[-1]:
        message = "breakpoint interval reaches the edge of the candidate range (it may be wider)"
    ols = sm.OLS(y, _hinge(x, bp, above)).fit()
    alpha = 1 - level
    below = np.array([np.asarray(sm.OLS(y, _hinge(x, b, above)).fit().conf_int(alpha=alpha))[1]
                      for b in cand[accepted]])
    if above == "linear":
        t = ols.t_test([0, 1, 1])
        slope_above, slope_above_ci = float(ols.params[1] + ols.params[2]), tuple(
            float(v) for v in np.asarray(t.conf_int(alpha=alpha)).ravel())
    else:
        slope_above, slope_above_ci = 0.0, (0.0, 0.0)
    return PiecewiseFit(
        above=above, breakpoint=bp, breakpoint_interval=(lo, hi), intercept=float(ols.params[0]),
        slope_below=float(ols.params[1]), slope_below_interval=(float(below[:, 0].min()), float(below[:, 1].max())),
        slope_above=slope_above, slope_above_interval=slope_above_ci, rss=rss_min, n=int(x.size), level=level,
        message=message, inside=not bool(accepted[-1]), ols=ols,
        profile=pd.DataFrame({"breakpoint": cand, "rss": rss, "accepted": accepted}),
    )


def best_range(x, loss, tol):
    """(lo, hi): the data x around the minimum of `loss` whose loss is within `tol` (absolute, loss units)
    of the minimum, walking outwards from the minimum and stopping at the first point above it (the
    paper's "best range" of width-depth ratios). No interpolation: lo and hi are data x."""
    x, loss = np.asarray(x, dtype=float).ravel(), np.asarray(loss, dtype=float).ravel()
    if x.size == 0 or x.shape != loss.shape or not (np.all(np.isfinite(x)) and np.all(np.isfinite(loss))):
        raise ValueError(f"best_range: x and loss must be finite arrays of one length >= 1; got {x.size} x, "
                         f"{loss.size} losses, {int(np.sum(~np.isfinite(loss)))} of them not finite")
    if not tol >= 0:
        raise ValueError(f"best_range: tol must be >= 0 (loss units), got {tol}")
    order = np.argsort(x)
    x, loss = x[order], loss[order]
    i = int(np.argmin(loss))
    threshold = loss[i] + tol
    lo = hi = i
    while lo > 0 and loss[lo - 1] <= threshold:
        lo -= 1
    while hi < x.size - 1 and loss[hi + 1] <= threshold:
        hi += 1
    return float(x[lo]), float(x[hi])


# ----------------------------------------------------------------------------- scale (Fig. 7-8, 12)


def fit_A0_vs_scale(N, A0, A0_lo=None, A0_hi=None, level=0.95) -> dict:
    """Slope of the limit A0 on log10(N), N = non-embedding parameters (statsmodels), per decade of N.

    Without intervals: OLS, its interval from the scatter between runs (t, n - 2 degrees of freedom).
    With A0_lo and A0_hi (intervals at the same `level`), also weighted least squares that takes
    sigma = (hi - lo) / (2 z) as known errors (normal quantiles), and the fit with the wider slope
    interval is reported (`method`). Both are needed: a bootstrap interval sees one run's residuals, not
    how another seed of the same shape would land (cpu-long's three relu-s2 seeds have A0 0.194-0.2016, a
    spread of 0.0075, while two of their intervals are 0.003 and 0.005 wide), so the known-error interval
    alone is too narrow when runs scatter more than their intervals say; OLS alone would ignore an A0 that
    is barely determined.
    (WLS with its noise scale estimated from the residuals is not used: it sees only relative weights,
    and two precise points fix the line and its scale whatever the others do.)
    Returns slope with its interval, intercept, method, the fitted change slope * log10(max N / min N),
    the observed change A0(max N) - A0(min N), and the statsmodels results under "ols".
    """
    N, A0 = np.asarray(N, dtype=float).ravel(), np.asarray(A0, dtype=float).ravel()
    _check_level(level)
    if (A0_lo is None) != (A0_hi is None):
        raise ValueError("fit_A0_vs_scale: give both A0_lo and A0_hi (the intervals of A0), or neither")
    given = {"N": N, "A0": A0} | ({} if A0_lo is None else {"A0_lo": np.asarray(A0_lo, dtype=float).ravel(),
                                                               "A0_hi": np.asarray(A0_hi, dtype=float).ravel()})
    for name, v in given.items():
        if v.shape != N.shape:
            raise ValueError(f"fit_A0_vs_scale: {name} has {v.size} values, N has {N.size}")
        if not np.all(np.isfinite(v)):
            at = np.flatnonzero(~np.isfinite(v)).tolist()
            raise ValueError(f"fit_A0_vs_scale: {name} is not finite at index {at} (a fit that did not converge "
                             "has no A0 or interval: leave its run out)")
    if np.any(N <= 0):
        raise ValueError(f"fit_A0_vs_scale: N (non-embedding parameters) must be > 0; got min {N.min():g}")
    if N.size < 3:
        raise ValueError(f"fit_A0_vs_scale needs at least 3 scales, got {N.size}")
    if np.unique(N).size < 2:
        raise ValueError(f"fit_A0_vs_scale needs 2 or more distinct N, got {N.size} runs of N = {N[0]:g}")
    X = sm.add_constant(np.log10(N))
    ols, method = sm.OLS(A0, X).fit(), "OLS"
    if A0_lo is not None:
        width = given["A0_hi"] - given["A0_lo"]
        if np.any(width <= 0):
            raise ValueError(f"fit_A0_vs_scale: an interval of A0 must have A0_hi > A0_lo; not at index "
                             f"{np.flatnonzero(width <= 0).tolist()}")
        sigma = width / (2 * stats.norm.ppf(0.5 + level / 2))
        known = sm.WLS(A0, X, weights=1 / sigma**2).fit(cov_type="fixed scale")  # scale 1: the sigmas as given
        if np.ptp(known.conf_int(alpha=1 - level)[1]) > np.ptp(ols.conf_int(alpha=1 - level)[1]):
            ols, method = known, "WLS, known errors"
    lo, hi = np.asarray(ols.conf_int(alpha=1 - level))[1]
    return {"slope": float(ols.params[1]), "slope_lo": float(lo), "slope_hi": float(hi), "method": method,
            "intercept": float(ols.params[0]),
            "change_fit": float(ols.params[1] * np.log10(N.max() / N.min())),
            "change_observed": float(A0[np.argmax(N)] - A0[np.argmin(N)]), "n": int(N.size),
            "weighted": A0_lo is not None and A0_hi is not None, "level": level, "ols": ols}


def is_step(form, params) -> bool:
    """Whether a fit of `form` (a key of FORMS; params: symbol -> value) is a step: Eq. 4's alpha on its bound,
    where a transient that ends between two measured points sharpens without end (FORMS). Its limit may be
    measured (`_judge`'s nuisance check) but its slope is not: where between the points the step falls, and
    how steep it is, the data do not say."""
    law = _form(form)
    if "alpha" not in law.symbols:
        return False
    return _soft(law, law.symbols.index("alpha"), np.array([float(params[s]) for s in law.symbols]))


def convergence_speed(result, N, D_grid, rel_step=1e-4):
    """(ratio, dA/dratio): the slope of a fitted sparsity-data curve against the data-scale ratio
    D_tokens / N (N non-embedding parameters), at D_grid (1e9 tokens), by central differences of
    result.predict with step rel_step * D (error ~rel_step**2, relative)."""
    D = np.asarray(D_grid, dtype=float)
    h = rel_step * D
    dA_dD = (result.predict(D + h) - result.predict(D - h)) / (2 * h)
    return D * TOKENS_PER_D / N, dA_dD * N / TOKENS_PER_D  # dD/dratio = N / 1e9


def fit_limit_loss(D, loss, spec=None, **overrides) -> FitResult:
    """Limit-loss fit of one run: L(D) = E + B * D**(-beta) (form "loss_power"), through `fit`; the
    limit loss is params["E"]."""
    return fit("loss_power", D, loss, spec, **overrides)
