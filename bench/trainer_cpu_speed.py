"""Tokens/s of the trainer itself (`sparsinglaw.train.train`: data path, schedule, clipping, logging) on
CPU, for one run of a profile on random token ids: the median of the trainer's own log.csv windows after
the first two.

    python bench/trainer_cpu_speed.py [--profile cpu] [--run relu-s4] [--steps 120] [--label NAME]

It imports only config, data and train, so the same file measures an older checkout too
(`PYTHONPATH=<that checkout>/lib python bench/trainer_cpu_speed.py --label old`): run the two
alternately for a side-by-side comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sparsinglaw.config import DataConfig, load_profile
from sparsinglaw.data import TokenData
from sparsinglaw.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--run", default="relu-s4")
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps (log windows of 10)")
    ap.add_argument("--label", default="trainer", help="name printed with the result")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    run = load_profile(a.profile).run(a.run)
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, tokens=10**10, log_every=10,
                                                             resume_every=10**9))
    V, seq = run.model.vocab_size, run.model.seq_len
    ids = np.random.default_rng(0).integers(0, V, 1 << 22, dtype=np.uint16)
    n_val = 8 * (seq + 1)
    tokens = TokenData(root=Path("."), train=ids, val=ids[:n_val], train_domain=np.zeros(ids.size, np.uint8),
                       val_domain=np.zeros(n_val, np.uint8), domains=["code"], vocab_size=V, eot=0,
                       fingerprint={"source": "random"}, tokenizer_path=Path("none"))
    with tempfile.TemporaryDirectory() as d:
        train(run, DataConfig(), Path(d) / "run", tokens, device="cpu", progress=False, stop_after_step=a.steps)
        log = pd.read_csv(Path(d) / "run" / "log.csv")
    rates = log[log["split"] == "train"]["tok_s"].tolist()[2:]
    print(f"{a.label}: {a.profile}/{a.run} {statistics.median(rates):,.0f} tokens/s "
          f"(median of {len(rates)} windows of 10 steps)")


if __name__ == "__main__":
    main()
