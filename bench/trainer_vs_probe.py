"""Our trainer against the bare GPU probe at the probe's shapes, side by side in one call.

    python bench/trainer_vs_probe.py --probe PATH/gpu_probe.py [--shapes 1M,108M] [--scopes blocks,model]
                                     [--out RESULTS.md]
    python bench/trainer_vs_probe.py --device cpu --shapes tiny --no-compile     (the CPU smoke check)

For every shape the probe (its own process, PROBE_SIZES=<shape>) and our trainer (its own process:
`sparsinglaw.train.train` itself, with its data path, schedule, clipping, logging and step-loss checks,
on random token ids) train the same model shape: seq 1024, vocab 8192, bf16 autocast, torch.compile,
fused AdamW. Our tokens/s is the median of the trainer's own log.csv windows (train.log_every steps
each) after the first two (compilation and warm-up). The table gives both and their ratio; the goal is
>= 1.0x at 1M and 108M non-embedding parameters. The --out file is rewritten after every measurement,
so a run cut off at its time limit keeps the rows it finished.

`--scopes` says what of our trainer torch.compile compiles: `blocks` (each block and the head apart, as
the gpu profile trains: compute.compile: blocks) or `model` (the whole model, as the probe does); the
table's last column names it. At each shape our trainer in the first scope runs first, then the probe:
a call cut off at its time limit loses the probe's row, whose numbers are already known (the GPU issue
quotes them), rather than ours. The other scopes follow once every shape has both rows, then `--eager
1M`, our trainer without torch.compile at that shape (tokens/s and warm-up seconds beside the compiled
rows').
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sparsinglaw.cli import script_main, whole

# name: (d_model, n_layers, d_ff, heads, batch), as in the probe's SIZES; "tiny" is the CPU check
SHAPES = {
    "1M": (128, 4, 512, 2, 256),
    "4M": (256, 4, 1024, 4, 192),
    "16M": (384, 7, 1536, 6, 128),
    "64M": (640, 10, 2560, 10, 64),
    "108M": (768, 12, 3072, 12, 64),
    "tiny": (32, 2, 64, 2, 2),
}
SEQ, VOCAB = 1024, 8192
STEPS = {"1M": 160, "4M": 120, "16M": 100, "64M": 60, "108M": 60, "tiny": 8}


def trainer_run(shape: str, device: str, compile_: bool | str, steps: int, log_every: int,
                profile_out: Path | None = None, profile_steps: int = 12, compile_mode: str = "default") -> dict:
    """Train `steps` optimizer steps of `shape` with sparsinglaw's trainer (`compile_`: False, True for the
    whole model, or "blocks"); tokens/s from its log. With `profile_out`, a second short run under
    torch.profiler writes its kernel table there (where the time goes, if the trainer trails the probe)."""
    import torch
    from trainer_cpu_speed import random_tokens, trainer_rates  # bench/, beside this file

    from sparsinglaw.config import RunConfig, TrainConfig
    from sparsinglaw.device import peak_flops, resolve_device
    from sparsinglaw.model import ModelConfig, num_params_from_config

    d, L, f, heads, batch = SHAPES[shape]
    seq = SEQ if shape != "tiny" else 128
    model = ModelConfig(vocab_size=VOCAB, d_model=d, n_layers=L, head_dim=d // heads, d_ff=f, seq_len=seq)
    # train.tokens so large that no checkpoint mark falls inside the timed steps
    tcfg = TrainConfig(tokens=10**12, batch_size=batch, log_every=log_every, resume_every=10**9,
                       eval_tokens=seq, checkpoints=2)
    run = RunConfig(name=f"bench-{shape}", groups=[], model=model, train=tcfg)
    tokens = random_tokens(VOCAB, seq, max(4 * batch * (seq + 1), 1 << 22))
    kw = {"device": device, "compile": compile_, "compile_mode": compile_mode}
    rates, wall = trainer_rates(run, tokens, steps, **kw)
    timed = rates[2:] if len(rates) > 2 else rates
    dev = torch.device(resolve_device(device))
    if profile_out is not None:  # optional: a failure here is written to the file, never costs the row above
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        # a log row within its steps (trainer_rates reads log.csv: 12 steps logged every 20 wrote none)
        short = dataclasses.replace(run, train=dataclasses.replace(tcfg, log_every=min(log_every, profile_steps)))
        try:
            with profile(activities=acts) as prof:
                trainer_rates(short, tokens, profile_steps, **kw)
            text = prof.key_averages().table(sort_by=key, row_limit=30)
        except Exception as e:
            text = f"profiling failed: {type(e).__name__}: {e}"
        Path(profile_out).write_text(f"{shape}: {profile_steps} steps of sparsinglaw.train.train (compilation "
                                     f"included on the CPU side), sorted by {key}\n{text}\n")
    peak = peak_flops(dev)
    tok_s = statistics.median(timed)
    n_nonemb = num_params_from_config(model, non_embedding=True)
    warm = max(wall - steps * batch * seq / tok_s, 0.0)  # set-up and compilation: what the steps do not explain
    return {"shape": shape, "who": "trainer" if compile_ else "trainer-eager", "compile_mode": compile_mode,
            "compile_scope": scope_of(compile_),
            "tok_s": tok_s, "windows": rates, "wall_s": wall, "warm_s": warm, "n_nonemb": n_nonemb,
            "batch": batch, "seq": seq, "steps": steps,
            "mfu_nonemb": 6 * n_nonemb * tok_s / peak if peak else None, "peak": peak,
            "mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None}


def probe_run(probe: Path, shape: str, measure_s: float) -> dict:
    """The probe at one shape in its own process; tokens/s parsed from its summary table. Its MFU is kept
    with the probe's own peak (PEAK_FLOPS, default 790e12), not device.peak_flops as our trainer's: the two
    MFUs have different denominators, so the table compares tokens/s only."""
    env = dict(os.environ, PROBE_SIZES=shape, PROBE_MEASURE_S=str(measure_s), PROBE_BUDGET_S="600")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
    # the last matching line: the summary table comes at the end, after any progress lines of that shape
    found = list(re.finditer(rf"^\s*{re.escape(shape)}\s+\d+\s+\d+\s+([\d.]+)M\s+(\d+)\s+([\d.]+)\s+([\d.]+)",
                             r.stdout, re.M))
    m = found[-1] if found else None
    if not m:
        return {"shape": shape, "who": "probe", "error": (r.stdout + r.stderr)[-300:], "wall_s": wall}
    return {"shape": shape, "who": "probe", "tok_s": float(m.group(3)) * 1e6, "n_nonemb": float(m.group(1)) * 1e6,
            "batch": int(m.group(2)), "mfu_nonemb_at_probe_peak": float(m.group(4)) / 100,
            "probe_peak": float(env.get("PEAK_FLOPS", 790e12)), "wall_s": wall}


def _find(results: list[dict], shape: str, who: str) -> dict | None:
    return next((r for r in results if r["shape"] == shape and r["who"] == who), None)


def scope_of(compile_: bool | str) -> str | None:
    """The compile scope of a trainer row: "blocks", "model" (the whole model) or None (eager)."""
    return "blocks" if compile_ == "blocks" else ("model" if compile_ else None)


def _compiled(t: dict | None) -> str:
    """The table's "trainer compile" cell: what torch.compile compiled, and its mode unless the default."""
    if t is None:
        return "-"
    if t["who"] == "trainer-eager":
        return "none (eager)"
    what = {"blocks": "blocks", "model": "whole model"}.get(t.get("compile_scope"), "?")
    mode = t.get("compile_mode", "default")
    return what if mode == "default" else f"{what}, {mode}"


def peak_note(results: list[dict]) -> str:
    """The table's caption: the two MFUs have different peaks (ours device.peak_flops, e.g. 989e12 for an
    H200; the probe's its PEAK_FLOPS, 790e12 unless set), so the rows compare tokens/s."""
    ours = next((r["peak"] for r in results if r.get("peak")), None)
    theirs = next((r["probe_peak"] for r in results if r.get("probe_peak")), None)
    ours_s = f"{ours:.3g} FLOP/s" if ours else "no known peak here"
    theirs_s = f"{theirs:.3g} FLOP/s" if theirs else "its PEAK_FLOPS (790e12 unless set)"
    return (f"MFU is ours over device.peak_flops ({ours_s}); the probe's own MFU (raw numbers below) is over "
            f"{theirs_s}: different peaks, so compare tokens/s.")


def table(results: list[dict]) -> str:
    lines = [peak_note(results), "",
             "| shape | non-emb params | batch x seq | probe tok/s | trainer tok/s | trainer / probe "
             "| trainer MFU (non-emb, our peak) | trainer warm-up s | trainer compile |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shape in dict.fromkeys(r["shape"] for r in results):
        p = _find(results, shape, "probe")
        ours = [r for r in results if r["shape"] == shape]
        compiled = [r for r in ours if r["who"] == "trainer"] or ([None] if p else [])  # None: not run
        for t in compiled + [r for r in ours if r["who"] == "trainer-eager"]:
            label = f"{shape} (trainer eager)" if t and t["who"] == "trainer-eager" else shape
            pt = f"{p['tok_s']:,.0f}" if p and "tok_s" in p else ("error" if p else "not run")
            tt = f"{t['tok_s']:,.0f}" if t and "tok_s" in t else ("error" if t else "not run")
            ratio = f"{t['tok_s'] / p['tok_s']:.2f}x" if p and t and "tok_s" in p and "tok_s" in t else "-"
            mfu = f"{100 * t['mfu_nonemb']:.1f}%" if t and t.get("mfu_nonemb") else "-"
            warm = f"{t['warm_s']:.1f}" if t and "warm_s" in t else "-"
            n = (t or {}).get("n_nonemb") or (p or {}).get("n_nonemb", 0)
            bs = f"{t['batch']} x {t['seq']}" if t and "batch" in t else f"{(p or {}).get('batch', '?')} x {SEQ}"
            if p and t and "batch" in t and p.get("batch") not in (None, t["batch"]):  # the probe halves on OOM
                bs += f" (probe: {p['batch']})"
            lines.append(f"| {label} | {n / 1e6:.2f}M | {bs} | {pt} | {tt} | {ratio} | {mfu} | {warm} "
                         f"| {_compiled(t)} |")
    return "\n".join(lines)


SCOPES = {"blocks": "blocks", "model": True}  # --scopes: train()'s compile argument


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probe", type=Path, default=None, help="path of gpu_probe.py (omit: trainer only)")
    ap.add_argument("--shapes", default="1M,108M", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu", "auto"])
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--scopes", default="blocks",
                    help="comma list of what torch.compile compiles in our trainer: blocks (each block and the head "
                         "apart, as the gpu profile) and/or model (the whole model); the first runs beside the probe")
    ap.add_argument("--compile-mode", default="default",
                    choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                    help="torch.compile mode of our trainer (reduce-overhead adds CUDA graphs)")
    ap.add_argument("--steps", type=whole, default=None, help="optimizer steps per trainer run (default per shape)")
    ap.add_argument("--log-every", type=whole, default=None, help="steps per timed window (default steps // 8)")
    ap.add_argument("--probe-seconds", type=float, default=15.0, help="the probe's timed seconds per shape")
    ap.add_argument("--out", type=Path, default=None, help="also write the table and the raw numbers here")
    ap.add_argument("--profile-dir", type=Path, default=None,
                    help="also write a torch.profiler kernel table of our trainer (its first scope) per shape: "
                         "DIR/trainer_<shape>.txt")
    ap.add_argument("--eager", default="", help="comma list of shapes also trained by our trainer without compile")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one trainer run, JSON out
    a = ap.parse_args()
    shapes = [s for s in a.shapes.split(",") if s]
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        ap.error(f"unknown shape(s) {bad}; known: {', '.join(SHAPES)}")
    scopes = [s for s in a.scopes.split(",") if s]
    if not scopes or any(s not in SCOPES for s in scopes):
        ap.error(f"--scopes {a.scopes!r}: expected a comma list of {', '.join(SCOPES)}")
    eager = [s for s in a.eager.split(",") if s]
    if a.profile_dir:
        a.profile_dir.mkdir(parents=True, exist_ok=True)
    if a.one:
        steps = a.steps or STEPS[a.one]
        prof = a.profile_dir / f"trainer_{a.one}.txt" if a.profile_dir else None
        compile_ = False if a.no_compile else SCOPES[scopes[0]]
        r = trainer_run(a.one, a.device, compile_, steps, a.log_every or max(steps // 8, 1), prof,
                        compile_mode=a.compile_mode)
        print("RESULT " + json.dumps(r))
        return
    results = []
    # our trainer (first scope) and the probe at each shape, then the other scopes, then the eager runs (a
    # call cut short loses these first)
    todo = [(shape, who, scopes[0]) for shape in shapes for who in ("trainer", "probe")]
    todo += [(shape, "trainer", scope) for scope in scopes[1:] for shape in shapes if not a.no_compile]
    todo += [(shape, "trainer-eager", None) for shape in eager if not a.no_compile]
    for shape, who, scope in todo:
        if who == "probe":
            if a.probe is None:
                continue
            results.append(probe_run(a.probe, shape, a.probe_seconds))
        else:
            results.append(trainer_subprocess(a, shape, compiled=who == "trainer" and not a.no_compile, scope=scope,
                                              kernels=scope == scopes[0] or a.no_compile))
        print(f"{who} {shape}: {results[-1]}", flush=True)
        write_table(results, a.out)
    print(table(results))


def trainer_subprocess(a: argparse.Namespace, shape: str, compiled: bool, scope: str | None = None,
                       kernels: bool = True) -> dict:
    """One trainer run in its own process (a clean CUDA context and compile cache per measurement), compiled
    as `scope` (blocks or model); with `kernels` and --profile-dir, also its kernel table."""
    cmd = [sys.executable, __file__, "--one", shape, "--shapes", shape, "--device", a.device]
    cmd += ["--scopes", scope] if compiled and scope else []
    cmd += [] if compiled else ["--no-compile"]
    cmd += ["--compile-mode", a.compile_mode]
    cmd += ["--steps", str(a.steps)] if a.steps else []
    cmd += ["--log-every", str(a.log_every)] if a.log_every else []
    if a.profile_dir and kernels and (compiled or a.no_compile):  # one kernel table per shape: the compiled run's
        cmd += ["--profile-dir", str(a.profile_dir)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        return {"shape": shape, "who": "trainer" if compiled else "trainer-eager", "error": r.stderr[-300:],
                "compile_scope": scope if compiled else None, "compile_mode": a.compile_mode}
    return json.loads(line[len("RESULT "):])


def write_table(results: list[dict], out: Path | None) -> None:
    """The table and the raw numbers, rewritten after every measurement."""
    if out is not None:
        out.write_text(table(results) + "\n\n```\n" + json.dumps(results, indent=1) + "\n```\n")


if __name__ == "__main__":
    script_main(main)
