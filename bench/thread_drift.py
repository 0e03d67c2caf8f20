"""Do ReLU and MoE runs drift apart more than dense SiLU runs under float rounding differences?

Trains each named run of a profile twice, with 1 and with 2 torch threads: the same config, data and seed,
but matrix products summed in another order, the kind of rounding difference another machine brings.
Then compares the two trainings: the first logged step whose training loss differs (log.csv keeps six
decimals), the largest difference of the logged training losses, the difference of the final validation
losses, and the relative difference of the final weights, ||w1 - w2|| / ||w1||.

    python bench/thread_drift.py [--profile cpu] [--runs relu-s1 silu-s1 relu-s4 silu-s4 silu-moe4] [--root DIR]

The runs go to DIR/threads1 and DIR/threads2 (default: a temporary folder, removed at the end); finished
runs there are reused. Runs one training at a time (the 2-thread one needs both cores of a laptop).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from sparsinglaw.cli import script_main
from sparsinglaw.config import load_profile
from sparsinglaw.runs import load_log, run_dir


def train(profile: str, name: str, root: Path, threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "sparsinglaw", "train", "--profile", profile, "--run", name, "--runs-dir",
           str(root), "--set", f"compute.threads={threads}", "--no-progress"]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


def final_weights(d: Path) -> dict:
    return torch.load(sorted(d.glob("ckpt_0*.pt"))[-1], weights_only=True)["model"]


def compare(profile, name: str, roots: list[Path]) -> dict:
    run = profile.run(name)
    logs = [load_log(profile, run, r) for r in roots]
    train_rows = [g[g["split"] == "train"].set_index("step")["loss"] for g in logs]
    diff = (train_rows[0] - train_rows[1]).abs().dropna()
    val = [g[g["split"] == "val"]["loss"].iloc[-1] for g in logs]
    w1, w2 = (final_weights(run_dir(profile, run, r)) for r in roots)
    num = sum(float((w1[k].double() - w2[k].double()).pow(2).sum()) for k in w1) ** 0.5
    den = sum(float(w1[k].double().pow(2).sum()) for k in w1) ** 0.5
    first = diff.index[diff > 0]
    return {"run": name, "activation": run.model.activation, "experts": run.model.n_experts,
            "steps": int(diff.index.max()), "first_differs": int(first[0]) if len(first) else None,
            "max_train_diff": float(diff.max()), "final_val_diff": abs(val[0] - val[1]), "weights_rel_diff": num / den}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--runs", nargs="+", default=["relu-s1", "silu-s1", "relu-s4", "silu-s4", "silu-moe4"])
    ap.add_argument("--root", type=Path, default=None)
    args = ap.parse_args()
    profile = load_profile(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        roots = [root / "threads1", root / "threads2"]
        rows = []
        for name in args.runs:
            for threads, r in zip((1, 2), roots, strict=True):
                train(args.profile, name, r, threads)
            rows.append(compare(profile, name, roots))
            print(rows[-1], flush=True)
    print(f"\n{'run':<12} {'act':<5} {'E':>2} {'steps':>5} {'first':>5} {'max |dtrain|':>12} {'|dval|':>9} "
          f"{'|dw|/|w|':>9}")
    for r in rows:
        print(f"{r['run']:<12} {r['activation']:<5} {r['experts']:>2} {r['steps']:>5} {str(r['first_differs']):>5} "
              f"{r['max_train_diff']:>12.2e} {r['final_val_diff']:>9.2e} {r['weights_rel_diff']:>9.2e}")


if __name__ == "__main__":
    script_main(main)
