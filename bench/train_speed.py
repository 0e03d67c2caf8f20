"""Training throughput of the cpu profile's reference config: tokens/s (median of 3 timed windows),
FLOPs per token and achieved GFLOP/s, eager and torch.compile side by side in one process.

    python bench/train_speed.py [--profile cpu] [--run NAME] [--steps 20] [--threads 1] [--no-compile] [--neighbor]

--neighbor runs a busy Python loop in another process while timing, as when two runs share 2 cores:
it shows why the trainer uses one thread per process (see bench/RESULTS.md).

Batches are random token ids (throughput does not depend on the text), so no corpus is needed.
The reference run is the largest ReLU run of the profile's scale grid unless --run names another.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

from sparsinglaw.cli import script_main, whole
from sparsinglaw.config import load_profile, tokens_per_step
from sparsinglaw.device import setup_torch
from sparsinglaw.model import Transformer


def measure(model, opt, fwd, x, y, steps: int, grad_accum: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        for _ in range(grad_accum):
            _, loss = fwd(x, y)
            (loss / grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def bench(run, steps: int, compiled: bool, threads: int) -> dict:
    dev = setup_torch("cpu", threads)
    torch.manual_seed(0)
    m, t = run.model, run.train
    model = Transformer(m).to(dev)
    opt = torch.optim.AdamW(model.param_groups(t.lr, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2))
    fwd = torch.compile(model) if compiled else model
    x = torch.randint(0, m.vocab_size, (t.batch_size, m.seq_len))
    y = torch.randint(0, m.vocab_size, (t.batch_size, m.seq_len))
    t0 = time.perf_counter()
    measure(model, opt, fwd, x, y, 3, t.grad_accum)  # warm-up (and compilation)
    warm = time.perf_counter() - t0
    tps = tokens_per_step(m, t)
    rates = [steps * tps / measure(model, opt, fwd, x, y, steps, t.grad_accum) for _ in range(3)]
    tok_s = statistics.median(rates)
    fpt = model.flops_per_token()
    return {"mode": "compiled" if compiled else "eager", "threads": threads, "tok_s": tok_s,
            "rates": rates, "flops_per_token": fpt, "gflop_s": tok_s * fpt / 1e9, "warmup_s": warm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu", help="profile name or YAML path")
    ap.add_argument("--run", default=None, help="run to time (default: largest ReLU run of the scale grid)")
    ap.add_argument("--steps", type=whole, default=20, help="optimizer steps per timed window")
    ap.add_argument("--threads", type=whole, default=1, help="torch threads")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    ap.add_argument("--neighbor", action="store_true", help="keep another core busy while timing")
    a = ap.parse_args()
    neighbor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.neighbor else None
    try:
        run_bench(a)
    finally:
        if neighbor is not None:
            neighbor.kill()


def run_bench(a) -> None:
    p = load_profile(a.profile)
    if a.run:
        run = p.run(a.run)
    else:
        cands = [r for r in p.runs if "scale" in r.groups and r.model.activation == "relu"] or p.runs
        run = max(cands, key=lambda r: r.model.d_model * r.model.n_layers)
    m = run.model
    print(f"profile {p.name}, run {run.name}: d_model={m.d_model} n_layers={m.n_layers} d_ff={m.d_ff} "
          f"vocab={m.vocab_size} seq={m.seq_len} batch={run.train.batch_size}x{run.train.grad_accum}, "
          f"torch {torch.__version__}, {a.threads} thread(s){', busy neighbor process' if a.neighbor else ''}")
    modes = [False] if a.no_compile else [False, True]
    results = [bench(run, a.steps, c, a.threads) for c in modes]
    for r in results:
        print(f"  {r['mode']:9s} {r['tok_s']:10,.0f} tok/s (median of {', '.join(f'{v:,.0f}' for v in r['rates'])})  "
              f"{r['flops_per_token'] / 1e6:.2f} MFLOP/token  {r['gflop_s']:.2f} GFLOP/s  "
              f"warm-up {r['warmup_s']:.1f} s")
    if len(results) == 2:
        print(f"  compiled / eager = {results[1]['tok_s'] / results[0]['tok_s']:.2f}x")
    print("  MFU: unknown (no peak FLOP/s is known for this CPU)")


if __name__ == "__main__":
    script_main(main)
