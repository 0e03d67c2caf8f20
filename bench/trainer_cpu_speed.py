"""Tokens/s of the trainer itself (`sparsinglaw.train.train`: data path, schedule, clipping, logging) on
CPU, for one run of a profile on random token ids: the median of the trainer's own log.csv windows after
the first two.

    python bench/trainer_cpu_speed.py [--profile cpu] [--run relu-s4] [--steps 120] [--label NAME]

It imports only config, data and train, so the same file measures an older checkout too
(`PYTHONPATH=<that checkout>/lib python bench/trainer_cpu_speed.py --label old`): run the two
alternately for a side-by-side comparison. `random_tokens` and `trainer_rates` also serve
bench/trainer_vs_probe.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sparsinglaw.cli import script_main, whole
from sparsinglaw.config import DataConfig, load_profile
from sparsinglaw.data import TokenData
from sparsinglaw.train import train


def random_tokens(vocab: int, seq_len: int, n: int = 1 << 22) -> TokenData:
    """Uniformly random token ids as the trainer's corpus (throughput does not depend on the text)."""
    ids = np.random.default_rng(0).integers(0, vocab, n, dtype=np.uint16)
    n_val = 8 * (seq_len + 1)
    return TokenData(root=Path("."), train=ids, val=ids[:n_val], train_domain=np.zeros(n, np.uint8),
                     val_domain=np.zeros(n_val, np.uint8), domains=["code"], vocab_size=vocab, eot=0,
                     fingerprint={"source": "random", "files": 0, "bytes": 2 * n, "sha256": ""},
                     tokenizer_path=Path("none"))


def trainer_rates(run, tokens: TokenData, steps: int, **train_kw) -> tuple[list[float], float]:
    """`steps` optimizer steps of `run` with the trainer in a throwaway folder: the tokens/s of each of
    its log windows, and the wall seconds (compilation included). train.tokens should be large enough
    that no checkpoint mark falls inside the steps."""
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):  # the trainer's notes on its corpus do not fit random ids
                train(run, DataConfig(), Path(d) / "run", tokens, progress=False, stop_after_step=steps, **train_kw)
        finally:  # the trainer's other lines, also when it fails
            print("".join(line for line in said.getvalue().splitlines(keepends=True)
                          if not line.startswith("note: ")), end="")
        wall = time.perf_counter() - t0
        log = pd.read_csv(Path(d) / "run" / "log.csv")
    return log[log["split"] == "train"]["tok_s"].tolist(), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--run", default="relu-s4")
    ap.add_argument("--steps", type=whole, default=120, help="optimizer steps (log windows of 10)")
    ap.add_argument("--label", default="trainer", help="name printed with the result")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    run = load_profile(a.profile).run(a.run)
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, tokens=10**10, log_every=10,
                                                             resume_every=10**9))
    rates, _ = trainer_rates(run, random_tokens(run.model.vocab_size, run.model.seq_len), a.steps, device="cpu")
    rates = rates[2:]
    print(f"{a.label}: {a.profile}/{a.run} {statistics.median(rates):,.0f} tokens/s "
          f"(median of {len(rates)} windows of 10 steps)")


if __name__ == "__main__":
    script_main(main)
