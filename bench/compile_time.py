"""What torch.compile costs and gives, per compile scope: the first training step (where compilation
happens) and the steady step time, for a profile's runs, the whole model compiled against each block and
the head compiled apart (compute.compile: true vs blocks), eager beside them. Each measurement runs in a
process of its own, with an empty compile cache on disk (cold, as each run of a fresh machine is).

    python bench/compile_time.py [--profile gpu] [--runs relu-s1,relu-wd4] [--scopes eager,model,blocks]
                                 [--seq 256] [--batch 2] [--steps 24] [--device auto]

--seq and --batch shrink the runs' context and micro-batch (the default, 256 and 2, suits a CPU; on a GPU
pass the profile's, e.g. --seq 1024 --batch 128). Batches are random token ids. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from sparsinglaw.cli import script_main, whole

SCOPES = {"eager": False, "model": True, "blocks": "blocks"}


def one(profile: str, run_name: str, scope: str, seq: int, batch: int, steps: int, device: str) -> dict:
    """Train `steps` steps of `run_name` (shrunk to seq x batch) compiled as `scope`; the step times."""
    from sparsinglaw.config import load_profile
    from sparsinglaw.device import setup_torch
    from sparsinglaw.model import Transformer
    from sparsinglaw.train import compiled_forward, make_optimizer

    prof = load_profile(profile)
    run = prof.run(run_name)
    dev = setup_torch(device, 1)
    if dev.type == "cuda":  # as train() does: the step times are those of the trainer's matmuls
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    mcfg = dataclasses.replace(run.model, seq_len=seq)
    model = Transformer(mcfg).to(dev)
    opt = make_optimizer(model, run.train, fused=dev.type == "cuda")
    fwd = compiled_forward(model, model, SCOPES[scope])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, mcfg.vocab_size, (batch, seq), generator=g).to(dev) for _ in range(2))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with autocast:
            _, loss = fwd(x, y, return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"run": run_name, "scope": scope, "n_layers": mcfg.n_layers, "d_model": mcfg.d_model,
            "first_s": times[0], "step_ms": 1000 * statistics.median(times[2:]), "loss": loss.item(),
            "device": str(dev), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="gpu")
    ap.add_argument("--runs", default="relu-s1,relu-wd4", help="comma list of the profile's runs")
    ap.add_argument("--scopes", default="eager,model,blocks", help=f"comma list of {', '.join(SCOPES)}")
    ap.add_argument("--seq", type=whole, default=256, help="context length (tokens) instead of the run's")
    ap.add_argument("--batch", type=whole, default=2, help="sequences per step")
    ap.add_argument("--steps", type=whole, default=24, help="steps per measurement (at least 4)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # run:scope, in the child process
    a = ap.parse_args()
    if a.steps < 4:
        ap.error("--steps must be at least 4 (the first is compilation, the next is left out too)")
    bad = [s for s in a.scopes.split(",") if s not in SCOPES]
    if bad:
        ap.error(f"--scopes: unknown {', '.join(bad)}; choose from {', '.join(SCOPES)}")
    if a.one:
        run, scope = a.one.split(":")
        print(json.dumps(one(a.profile, run, scope, a.seq, a.batch, a.steps, a.device)))
        return
    rows = []
    for run in a.runs.split(","):
        for scope in a.scopes.split(","):
            cmd = [sys.executable, __file__, "--one", f"{run}:{scope}", "--profile", a.profile, "--seq", str(a.seq),
                   "--batch", str(a.batch), "--steps", str(a.steps), "--device", a.device]
            with tempfile.TemporaryDirectory() as cache:  # cold: nothing compiled before is reused
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"))
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"{run} ({scope}) failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['run']:<12} L={r['n_layers']:<3} d={r['d_model']:<4} {scope:<7} first step {r['first_s']:6.1f} s"
                  f"  then {r['step_ms']:7.1f} ms/step  loss {r['loss']:.4f}", flush=True)
    print(f"({rows[0]['device']}, torch {rows[0]['torch']}, seq {a.seq}, batch {a.batch}, one thread per process)")


if __name__ == "__main__":
    script_main(main)
