"""PPL-p% sparsity, fast vs reference implementation: wall time, speedup, both answers, peak memory.

    python bench/ppl_p_speed.py --synthetic [--eval-tokens 16384] [--p 1] [--threads 1] [--search both]
    python bench/ppl_p_speed.py --checkpoint runs/cpu/<run>/ckpt_XXXXXXX.pt [--eval-tokens 32768]
    python bench/ppl_p_speed.py --checkpoint runs/gpu/<run>/ckpt_XXXXXXX.pt --compare-devices

Both implementations run on the same model and the same evaluation tokens, each in its own
subprocess so that its peak resident memory (``ru_maxrss``) is its own; the memory taken by setup
(model, tokens, torch) is reported separately, as "setup", so the difference is the algorithm's.
--checkpoint reads the model from a trainer checkpoint (state dict under "model", the run's
config.yaml next to it) and the first --eval-tokens validation tokens of the run's corpus.
--synthetic trains nothing: a random-init model with the cpu profile's relu-s4 widths (d_model 64, 4
layers, d_ff 160, seq 256) but vocab 4096 and head_dim 16 (the profile's: 2048 and 8), SiLU unless
--activation, and uniformly random tokens.
--search picks the fast implementation's search on c: "bisect" (the reference's probes, hence its
answer), "secant" (fewer sparse passes, possibly another crossing of a noisy ratio) or "both".
--device runs the workers on cuda (float32, TF32 off, as the measurement stage does there);
--compare-devices runs the fast bisection on the CPU and on CUDA and reports how far their answers
(c, thresholds, PPL ratio, activation ratio) lie apart: the precision check of PPL-p% on a GPU.
--compare-precision runs it in float32 and under bf16 autocast on --device: what a bf16 measurement
would change (why the measurement stage stays in float32).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from sparsinglaw import sparsity
from sparsinglaw.cli import script_main, whole
from sparsinglaw.model import ModelConfig, Transformer

SYNTHETIC = dict(vocab_size=4096, d_model=64, n_layers=4, head_dim=16, d_ff=160, seq_len=256)


def maxrss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_setup(args) -> tuple[Transformer, list, str]:
    """The model and the evaluation batches (identical in both workers: everything is seeded)."""
    if args.synthetic:
        torch.manual_seed(args.seed)
        cfg = ModelConfig(**SYNTHETIC, activation=args.activation)
        model = Transformer(cfg).eval()
        g = torch.Generator().manual_seed(args.seed + 1)
        n_seq = max(args.eval_tokens // cfg.seq_len, 1)
        toks = torch.randint(0, cfg.vocab_size, (n_seq, cfg.seq_len + 1), generator=g)
        batches = [(toks[i:i + args.batch_size, :-1], toks[i:i + args.batch_size, 1:])
                   for i in range(0, n_seq, args.batch_size)]
        return model, batches, f"synthetic random-init {cfg.activation} model, random tokens"
    import yaml

    from sparsinglaw.config import DataConfig
    from sparsinglaw.data import eval_batches, prepare
    from sparsinglaw.runs import data_cache_dir

    path = Path(args.checkpoint)
    cfg_all = yaml.safe_load((path.parent / "config.yaml").read_text())
    cfg = ModelConfig(**cfg_all["model"])
    model = Transformer(cfg)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    model.eval()
    data = prepare(DataConfig(**cfg_all["data"]), data_cache_dir(path.parents[2]), progress=False)
    batches = list(eval_batches(data.val, cfg.seq_len, args.batch_size, args.eval_tokens))
    return model, batches, f"{path} ({cfg.activation}, d_model {cfg.d_model}, {cfg.n_layers} layers)"


def worker(args) -> None:
    """Run one implementation and print its answer as one JSON line."""
    torch.set_num_threads(args.threads)
    model, batches, what = load_setup(args)
    if args.device == "cuda":  # float32 with TF32 off, as measure.measure_device sets it
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        model = model.to("cuda")
        batches = [tuple(t.to("cuda") for t in b) for b in batches]
        what += " on " + torch.cuda.get_device_name(0)
    n_tokens = sparsity.count_tokens(batches)
    setup_mb = maxrss_mb()
    t0 = time.perf_counter()
    impl, _, search = args.worker.partition("-")
    with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
        res = sparsity.ppl_p_sparsity(model, batches, p=args.p, impl=impl, tol=args.tol, search=search or "bisect")
    wall = time.perf_counter() - t0
    print(json.dumps({
        "impl": args.worker, "device": args.device + (" bf16" if args.bf16 else " fp32"),
        "what": what, "n_tokens": n_tokens, "wall_s": wall, "setup_mb": setup_mb,
        "peak_mb": maxrss_mb(), "cett": res.cett, "bracket": res.bracket, "ppl_ratio": res.mean_ratio,
        "activation_ratio": res.activation_ratio[0], "per_layer": res.active_per_layer[0],
        "thresholds": res.thresholds[0], "dense_loss": res.dense_loss[0], "n_dense": res.n_dense_passes,
        "n_sparse": res.n_sparse_passes, "trace": res.trace, "reached": res.reached}))


def run_worker(impl: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv, "--worker", impl], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{impl} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(fasts: list[dict], ref: dict, p: float, tol: float) -> None:
    print(f"model: {ref['what']}; {ref['n_tokens']} evaluation tokens; PPL-{p:g}%")
    print(f"{'':>14} {'wall s':>8} {'c':>9} {'act ratio':>10} {'PPL ratio':>10} {'dense/sparse':>13} "
          f"{'peak MiB':>9} {'setup MiB':>9}")
    for r in (*fasts, ref):
        print(f"{r['impl']:>14} {r['wall_s']:8.2f} {r['cett']:9.6f} {r['activation_ratio']:10.5f} "
              f"{r['ppl_ratio']:10.6f} {r['n_dense']:>6}/{r['n_sparse']:<6} {r['peak_mb']:9.0f} {r['setup_mb']:9.0f}"
              + ("" if r.get("reached", True) else f"  PPL-{p:g}% not reached: c is a lower bound"))
    for f in fasts:
        d_c, d_a = abs(f["cett"] - ref["cett"]), abs(f["activation_ratio"] - ref["activation_ratio"])
        d_r = abs(f["ppl_ratio"] - ref["ppl_ratio"])
        same = d_c <= tol and d_a <= 0.002 and d_r <= 0.001
        print(f"{f['impl']}: speedup {ref['wall_s'] / f['wall_s']:.1f}x; same answer: {same} (|dc| = {d_c:.1e}, "
              f"|d activation| = {d_a:.1e}, |d PPL ratio| = {d_r:.1e}); identical thresholds: "
              f"{f['thresholds'] == ref['thresholds']}")
        print("  c tried (c, mean ratio): " + ", ".join(f"({c:.4f}, {r:.5f})" for c, r in f["trace"]))


def compare_answers(cpu: dict, cuda: dict) -> None:
    """How far the second answer (CUDA float32, or bf16) lies from the first (CPU float32)."""
    print(f"model: {cuda['what']}; {cpu['n_tokens']} evaluation tokens")
    for r in (cpu, cuda):
        print(f"  {r['device']:>9}: c {r['cett']:.6f}  PPL ratio {r['ppl_ratio']:.6f}  activation ratio "
              f"{r['activation_ratio']:.6f}  dense loss {r['dense_loss']:.6f}  {r['wall_s']:.2f} s"
              + ("" if r.get("reached", True) else "  (target not reached: c is a lower bound)"))
    rel = max(abs(a - b) / max(abs(a), 1e-30) for a, b in zip(cpu["thresholds"], cuda["thresholds"], strict=True))
    print(f"  |dc| {abs(cpu['cett'] - cuda['cett']):.1e}; max relative threshold difference {rel:.1e}; "
          f"|d PPL ratio| {abs(cpu['ppl_ratio'] - cuda['ppl_ratio']):.1e}; |d activation ratio| "
          f"{abs(cpu['activation_ratio'] - cuda['activation_ratio']):.1e}; |d dense loss| "
          f"{abs(cpu['dense_loss'] - cuda['dense_loss']):.1e}; speedup {cpu['wall_s'] / cuda['wall_s']:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="trainer checkpoint .pt (config.yaml in the same folder)")
    src.add_argument("--synthetic", action="store_true", help="random-init model of relu-s4's widths, random tokens")
    ap.add_argument("--eval-tokens", type=whole, default=16384, help="evaluation tokens (default 16384)")
    ap.add_argument("--batch-size", type=whole, default=16, help="sequences per evaluation batch")
    ap.add_argument("--p", type=float, default=1.0, help="PPL-p%%: allowed perplexity increase in percent")
    ap.add_argument("--tol", type=float, default=sparsity.TOL, help="bisection tolerance on c")
    ap.add_argument("--activation", default="silu", help="activation of the --synthetic model")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --synthetic model and tokens")
    ap.add_argument("--threads", type=whole, default=1, help="torch threads in each worker")
    ap.add_argument("--search", choices=["bisect", "secant", "both"], default="both",
                    help="search on c of the fast implementation (default: run both)")
    ap.add_argument("--json", help="also write all answers to this JSON file")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the workers run")
    ap.add_argument("--compare-devices", action="store_true",
                    help="fast bisection on cpu and on cuda: how far apart the answers are")
    ap.add_argument("--bf16", action="store_true", help="run the workers under bf16 autocast")
    ap.add_argument("--compare-precision", action="store_true",
                    help="fast bisection in float32 and under bf16 autocast on --device")
    ap.add_argument("--worker", choices=["fast-bisect", "fast-secant", "reference"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.checkpoint and not Path(args.checkpoint).is_file():
        ap.error(f"--checkpoint {args.checkpoint}: no such file; expected a trainer checkpoint (runs/<profile>/"
                 "<run>/ckpt_*.pt)")
    if args.checkpoint and not (Path(args.checkpoint).parent / "config.yaml").is_file():
        ap.error(f"--checkpoint {args.checkpoint}: no config.yaml beside it; expected a checkpoint in its run folder")
    if (args.compare_devices or args.device == "cuda") and not torch.cuda.is_available():
        sys.exit("error: --compare-devices and --device cuda need a CUDA GPU; torch sees none")
    if args.worker:
        return worker(args)
    argv = list(sys.argv[1:])
    if args.compare_devices or args.compare_precision:
        argv = [a for a in argv if a not in ("--compare-devices", "--compare-precision")]
        if args.compare_devices:
            runs = [run_worker("fast-bisect", [*argv, "--device", d]) for d in ("cpu", "cuda")]
        else:
            runs = [run_worker("fast-bisect", argv), run_worker("fast-bisect", [*argv, "--bf16"])]
        compare_answers(*runs)
        if args.json:
            Path(args.json).write_text(json.dumps({r["device"]: r for r in runs}, indent=2))
        return
    searches = ["bisect", "secant"] if args.search == "both" else [args.search]
    fasts = [run_worker(f"fast-{s}", argv) for s in searches]
    ref = run_worker("reference", argv)
    report(fasts, ref, args.p, args.tol)
    if args.json:
        Path(args.json).write_text(json.dumps({"fast": fasts, "reference": ref}, indent=2))


if __name__ == "__main__":
    script_main(main)
