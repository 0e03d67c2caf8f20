"""How often the fits' percentile-bootstrap intervals hold the true parameters, on synthetic data.

    python bench/fit_coverage.py [--form power] [--points 11] [--reps 300]

Data sets from Eq. 5 (SiLU; the paper's 0.2B fit: alpha 0.844, c 0.208, A0 0.390, D from 2 to 93,
noise sd 0.001) or Eq. 4 (ReLU 0.2B: alpha 0.449, b -3.05, c 0.286, A0 0.0674, D from 3 to 93, sd
0.0005), `--points` values of D (geometric), Gaussian noise, each fitted as the profiles fit (residual
bootstrap, 200 resamples, 2 starts per axis, no hold-out); prints per parameter how many of the 95%
intervals hold the truth. Not a speed benchmark: a statistical property of laws.fit, measured.
"""

from __future__ import annotations

import argparse

import numpy as np

from sparsinglaw import laws

TRUTH = {"power": ({"alpha": 0.844, "c": 0.208, "A0": 0.390}, 2.0, 0.001),
         "logspace_power": ({"alpha": 0.449, "b": -3.05, "c": 0.286, "A0": 0.0674}, 3.0, 0.0005)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--form", choices=sorted(TRUTH), default="power")
    ap.add_argument("--points", type=int, default=11)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=123)
    a = ap.parse_args()
    true, d_min, sd = TRUTH[a.form]
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
    print(f"{a.form}, {a.points} points, {a.reps} data sets, {with_intervals} with intervals; 95% intervals "
          "holding the truth: " + ", ".join(f"{k} {v}/{with_intervals}" for k, v in held.items()))


if __name__ == "__main__":
    main()
