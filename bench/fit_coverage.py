"""How often the fits' percentile-bootstrap intervals hold the true parameters, on synthetic data.

    python bench/fit_coverage.py [--form power] [--scale 0.2B] [--points 11] [--reps 300]

Data sets from Eq. 5 (SiLU; by default the paper's 0.2B fit: alpha 0.844, c 0.208, A0 0.390, D from 2
to 93, noise sd 0.001) or Eq. 4 (ReLU 0.2B: alpha 0.449, b -3.05, c 0.286, A0 0.0674, D from 3 to 93,
sd 0.0005); `--scale` takes another row of the paper's Table 2 as the truth (same D range and noise),
`--points` values of D (geometric), Gaussian noise, each fitted as the profiles fit (residual
bootstrap, 200 resamples, 2 starts per axis, no hold-out); prints per parameter how many of the 95%
intervals hold the truth. Not a speed benchmark: a statistical property of laws.fit, measured.
"""

from __future__ import annotations

import argparse

import numpy as np

from sparsinglaw import laws, paper
from sparsinglaw.cli import script_main, whole

RANGE = {"power": (2.0, 0.001), "logspace_power": (3.0, 0.0005)}  # the smallest D, the noise sd


def truth(form: str, scale: str) -> dict:
    """The paper's Table 2 parameters of `form` at `scale` (0.1B ... 1.2B; 2.4B for Eq. 4)."""
    t = paper.table2()
    row = t[(t["form"] == form) & (t["scale"] == scale)]
    if row.empty:
        raise SystemExit(f"no Table 2 row for {form} at {scale}; scales: {', '.join(t[t['form'] == form]['scale'])}")
    return {s: float(row[s].iloc[0]) for s in laws.FORMS[form].symbols}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--form", choices=sorted(RANGE), default="power")
    ap.add_argument("--scale", default="0.2B", help="the Table 2 row taken as the truth (default 0.2B)")
    ap.add_argument("--points", type=whole, default=11)
    ap.add_argument("--reps", type=whole, default=300)
    ap.add_argument("--seed", type=int, default=123)
    a = ap.parse_args()
    true, (d_min, sd) = truth(a.form, a.scale), RANGE[a.form]
    D = np.geomspace(d_min, 93, a.points)
    A_true = laws.FORMS[a.form].f(D, **true)
    rng = np.random.default_rng(a.seed)
    held, with_intervals = dict.fromkeys(true, 0), 0
    for _ in range(a.reps):
        r = laws.fit(a.form, D, A_true + rng.normal(0, sd, D.size), n_boot=200, n_grid=2, holdout_frac=0)
        if np.isfinite(r.intervals["A0"][0]):
            with_intervals += 1
            for k in true:
                lo, hi = r.intervals[k]
                held[k] += bool(lo <= true[k] <= hi)
    print(f"{a.form} at {a.scale}, {a.points} points, {a.reps} data sets, {with_intervals} with intervals; 95% "
          "intervals holding the truth: " + ", ".join(f"{k} {v}/{with_intervals}" for k, v in held.items()))


if __name__ == "__main__":
    script_main(main)
