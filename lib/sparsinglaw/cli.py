"""Command line: `python -m sparsinglaw train|measure|compute|fit|runs|verify|compare ...` for scripts and clusters.

Every run of a sweep is an independent command (`train --profile P --run NAME`), so a scheduler's
job array spreads a sweep over a cluster; `-j N` spreads it over local cores. `compute` does every
stage that needs the models (train, measure, Pareto sweeps, sparse inference, training logs) and writes
the results/<profile> tables, so that `make replot` draws every figure elsewhere, without a GPU.
Errors the user can fix print one paragraph and exit 2 (`verify` without the results tables it reads:
exit 1); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import stat
import sys
import warnings
from pathlib import Path


def whole(text: str) -> int:
    """argparse type of a count that must be at least 1 (steps, threads, tokens, sequences)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {n}")
    return n


def script_main(main) -> None:
    """Run a script's main (bench/): a SparsingLawError (a profile, run or file that is not there) is one
    line on stderr and exit 2, as in python -m sparsinglaw, not a traceback."""
    from .config import SparsingLawError

    try:
        main()
    except SparsingLawError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparsinglaw", description=__doc__.split("\n")[0], allow_abbrev=False,
                                epilog="Environment: SPARSINGLAW_RUNS, SPARSINGLAW_RESULTS and SPARSINGLAW_FIGURES "
                                "move the runs/, results/ and figures/ roots (default: in the repository); "
                                "SPARSINGLAW_DATA the corpus and tokenizer caches (default: <runs root>/_data); "
                                "SPARSINGLAW_ROOT the repository itself (configs/ and the default roots).")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p.commands = {}  # name -> its parser, whose usage line an error in its arguments shows

    def command(name, **kw):  # no abbreviated options: --run on compute was taken for --runs-dir
        p.commands[name] = sub.add_parser(name, allow_abbrev=False, **kw)
        return p.commands[name]

    def common(sp):
        sp.add_argument("--profile", required=True,
                        help="profile name in configs/ (smoke, cpu, cpu-long, gpu, paper) or a YAML path")
        sp.add_argument("--runs-dir", default=None,
                        help="root for checkpoints and logs (default: $SPARSINGLAW_RUNS where set, else runs/); "
                        "fit and verify read results/ only")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config field, e.g. train.lr=3e-3 or runs.relu-s1.train.tokens=1e6 "
                        "(repeatable)")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks on errors")

    t = command("train", help="train the runs of a profile (skips finished runs, resumes partial ones)")
    common(t)
    t.add_argument("--run", "--name", action="append", default=None, metavar="NAME", dest="run",
                   help="train only this run (repeatable); spell it --name under torchrun, whose own parser "
                   "claims --run")
    t.add_argument("-j", "--jobs", type=int, default=None,
                   help="parallel processes (default: compute.jobs; 0 = one per core)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    m = command("measure", help="PPL-p%% sparsity etc. on every checkpoint of trained runs (cached)")
    common(m)
    m.add_argument("--run", "--name", action="append", default=None, metavar="NAME", dest="run",
                   help="measure only this run (repeatable); writes no results table (a measure without --run "
                   "writes them)")
    m.add_argument("-j", "--jobs", type=int, default=None,
                   help="parallel processes (default: compute.jobs; 0 = one per core)")
    m.add_argument("--impl", choices=["fast", "reference"], default=None,
                   help="PPL-p%% implementation (default: sparsity.impl of the profile)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")

    c = command("compute", help="every stage that needs the models: train, measure, Pareto sweeps, sparse "
                       "inference and the training-log table -> results/<profile>/ (make replot draws the figures)")
    common(c)
    c.add_argument("-j", "--jobs", type=int, default=None,
                   help="parallel processes (default: compute.jobs; 0 = one per core)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.add_argument("--times", default=None, metavar="PATH",
                   help="also write the wall time of each stage as JSON to PATH (rewritten as each stage "
                        "starts; \"complete\": true once every stage has run)")

    r = command("runs", help="list the runs of a profile and their state")
    common(r)
    r.add_argument("--names", action="store_true",
                   help="print only the run names, one per line (e.g. to index a scheduler's job array)")

    f = command("fit", help="fit the paper's laws on results/<profile>/ (Eq. 4/5 per run, fit forms, "
                       "width-depth, scale, convergence, activation patterns; cached) and print them")
    common(f)
    f.add_argument("--refit", action="store_true",
                   help="recompute every derived table even when cached (after an edit of laws.py or analysis.py, "
                   "which the cache key does not include)")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")

    v = command("verify", help="check the paper's claims on results/<profile>/ (claims.csv, claims.md); "
                       "exits 0 whatever the verdicts, 1 when results tables are missing")
    common(v)
    v.add_argument("--readme", default=None, metavar="PATH",
                   help="also replace the block between <!-- claims:<profile>:start --> and "
                   "<!-- claims:<profile>:end --> in this Markdown file (e.g. README.md)")
    v.add_argument("--no-progress", action="store_true", help="no progress bars (while stale fits are recomputed)")
    k = command("compare", help="two results folders of one profile side by side (e.g. a rerun against "
                       "the committed results/cpu): claim verdicts, activation ratios, losses, law fits; exit 0 "
                       "whatever the differences, 2 when a folder or table cannot be read")
    k.add_argument("a", metavar="A", help="a results folder, e.g. results/cpu")
    k.add_argument("b", metavar="B", help="another results folder of the same profile")
    k.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    return p


def _once(show):
    """warnings.showwarning that shows each warning (class and text) once: a stale table is read by
    several fits and checks of one command, and Python's own once-per-line registry is reset whenever
    a fit silences a warning for a while."""
    shown = set()

    def once(message, category, *args, **kwargs):
        if (category, str(message)) not in shown:
            shown.add((category, str(message)))
            show(message, category, *args, **kwargs)
    return once


def _note_other_checkout(command: str) -> None:
    """Say so when the working directory is another checkout than the package's: its folders are not used
    (compare reads the folders it is given: no note)."""
    from .runs import other_checkout, repo_root

    there = other_checkout()
    if there is not None and command != "compare":
        print(f"note: this is the package of {repo_root()}, not of {there} (the checkout you are in): its configs/ "
              f"and the runs/, results/ and figures/ that SPARSINGLAW_* or --runs-dir do not move are "
              f"{repo_root()}'s; to use {there}'s, run with PYTHONPATH={there / 'lib'} (make sets it) or "
              f"SPARSINGLAW_ROOT={there}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # under the command's own usage line, not the top-level one
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    from .config import SparsingLawError
    from .runs import one_line_warnings

    formatwarning = warnings.formatwarning  # restored on return: main may run inside another program (tests)
    showwarning = warnings.showwarning
    if not args.debug:
        one_line_warnings()
    warnings.showwarning = _once(showwarning)
    _note_other_checkout(args.command)
    on_term = _terminate_as_interrupt()
    try:
        rc = _dispatch(args)
        if sys.stdout is not None:  # None when fd 1 was closed (prints then go nowhere)
            sys.stdout.flush()  # here, where a reader that has gone is handled (BrokenPipeError), not at exit
        return rc
    except SparsingLawError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except OSError as e:  # a file the user can fix (disk full, permissions), raised outside our own checks
        if isinstance(e, BrokenPipeError) and _stdout_closed():
            return 128 + signal.SIGPIPE  # the reader of our output left (`| head`): stop quietly, as Unix tools do
        if args.debug:
            raise
        from .runs import folder_setting

        where = folder_setting(e.filename, getattr(args, "runs_dir", None)) if e.filename else None
        hint = f" (in the folder of {where}: check that it is a writable folder with free space, or set {where} " \
            "to another)" if where else ""
        print(f"error: {e}{hint}; rerun with --debug for the traceback", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        resumes = {"train": "from the last checkpoint", "compute": "from the last checkpoint and the cached stages",
                   "measure": "from the cached measurements", "fit": "(finished tables are cached)",
                   "verify": "(finished tables are cached)"}.get(args.command)  # runs, compare: read only
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"{what}; rerun the same command to resume {resumes}" if resumes else what, file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    finally:
        warnings.formatwarning, warnings.showwarning = formatwarning, showwarning
        if (analysis := sys.modules.get(f"{__package__}.analysis")) is not None:
            analysis._NOTED.clear()  # notes given once a process are given once a command here
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a timeout, a batch system's cancel), raised where it lands so that it unwinds as Ctrl-C does:
    locks released, parallel workers stopped, half-written files left to the next run's cleanup."""


def _terminate_as_interrupt():
    """SIGTERM raises Terminated in this (main) thread; returns the handler it replaced (None when main
    runs in another thread, where no handler can be set)."""
    def handler(signum, frame):
        raise Terminated

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (then the BrokenPipeError is ours to end on quietly):
    poll reports POLLERR on a pipe's write end once its read end is closed."""
    import select

    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        if not any(ev & select.POLLERR for _, ev in poll.poll(0)):
            return False
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)  # Python's own flush at exit would fail again
        return True
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a descriptor
        return False


def _dispatch(args) -> int:
    import pandas as pd

    from .config import ConfigError, SparsingLawError, load_profile
    from .runs import ROOT_VARS, blocking_file, states_table, train_profile

    if args.command == "compare":  # tables only: no profile
        from . import compare

        print(compare.report(compare.compare(args.a, args.b)), end="")
        return 0
    profile = load_profile(args.profile, overrides=args.overrides)
    if args.runs_dir is not None and not args.runs_dir.strip():  # "" would be the working directory
        raise ConfigError("--runs-dir is empty; give a folder for checkpoints and logs, or leave it out for "
                          "the default (runs/, or SPARSINGLAW_RUNS)")
    # the folders are checked now: a file there would stop the command only where it first writes (after
    # the training, for results/), or pass unnoticed where it only reads (runs would list every run as new)
    if args.runs_dir is not None and (f := blocking_file(args.runs_dir)):
        raise ConfigError(f"--runs-dir {args.runs_dir}: not a folder" + (f" ({f} is a file)" if f != Path(
            args.runs_dir) else "") + "; expected a folder for checkpoints and logs")
    for var, holds in ROOT_VARS.items():
        if (value := os.environ.get(var)) and (f := blocking_file(value)):
            raise ConfigError(f"{var}={value}: not a folder" + (f" ({f} is a file)" if f != Path(value) else "")
                              + f"; point it at a folder for {holds}, or unset it for the default")
    if getattr(args, "jobs", None) is not None and args.jobs < 0:
        raise ConfigError(f"-j/--jobs: expected a number of processes >= 0, got {args.jobs}")
    # paths written at the end are checked now, not after the work
    if getattr(args, "times", None) and Path(args.times).is_dir():
        raise ConfigError(f"--times {args.times}: a folder; expected the path of a JSON file to write")
    if getattr(args, "times", None) and not Path(args.times).parent.is_dir():
        raise ConfigError(f"--times {args.times}: no folder {Path(args.times).parent} to write it in")
    if getattr(args, "readme", None) is not None and not Path(args.readme).is_file():
        raise ConfigError(f"--readme {args.readme}: no such file; expected a Markdown file with the claims markers")
    # the fit: section, checked with the rest of the profile (fit and verify read it); the commands that run
    # the models need no fitting package (statsmodels), so without one they go on and leave it unchecked
    try:
        from .analysis import activation_forms, fit_spec
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == __package__:  # a module of this package itself: a broken install
            raise
        if args.command in ("fit", "verify"):
            raise SparsingLawError(f"`{args.command}` needs the package {e.name!r}, which is not installed here; "
                                   "install the project's dependencies (make setup, or pip install -e .)") from None
        activation_forms = fit_spec = None
    try:
        if fit_spec is not None:
            fit_spec(profile)
            activation_forms(profile)
    except ValueError as e:  # led by the --set fit.X that wrote a value it names, as other sections' errors
        by = [o for o in profile.overrides if (m := re.fullmatch(r"fit\.(\w+)", o.split("=", 1)[0].strip()))
              and re.search(rf"\b{m[1]}\b", str(e))]
        raise ConfigError((f"--set {by[-1]!r} is refused: " if by else "") + f"{profile.path}: fit: {e}") from None
    rank = _rank()
    if rank > 0 and args.command not in ("train", "compute"):
        print(f"rank {rank}: `{args.command}` runs on rank 0 alone under torchrun", file=sys.stderr)
        return 0
    if args.command == "train":
        from .device import leave_distributed

        states = train_profile(profile, names=args.run, jobs=args.jobs, runs_dir=args.runs_dir,
                               progress=not args.no_progress)
        leave_distributed()  # under torchrun: every rank, together
        if rank == 0:
            print(f"{sum(s.status == 'done' for s in states)}/{len(states)} runs done")
        return 0
    if args.command == "measure":
        from .measure import measure_profile

        table = measure_profile(profile, names=args.run, jobs=args.jobs, runs_dir=args.runs_dir,
                                progress=not args.no_progress, impl=args.impl)
        cols = ["run", "tokens", "p", "cett", "ppl_ratio", "activation_ratio", "dead_ratio"]
        if len(table):
            last = table.sort_values("tokens").groupby(["run", "p"]).tail(1)[cols]
            with pd.option_context("display.width", 200):
                print(last.to_string(index=False))
        return 0
    if args.command == "compute":
        return _compute(profile, args)
    if args.command == "runs":
        if args.names:
            print("\n".join(r.name for r in profile.runs))
            return 0
        table = states_table(profile, args.runs_dir)
        with pd.option_context("display.width", 200, "display.max_columns", 20,
                               "display.float_format", "{:.3g}".format):
            print(table.drop(columns=["key"]).to_string(index=False))
        if "train_flops" in table:
            print(_compute_line(float(table["train_flops"].sum()), len(table)))
        from .runs import damaged_message, run_state

        names = table["run"][table["status"] == "damaged"] if len(table) else []
        if damaged := [run_state(profile, profile.run(n), args.runs_dir) for n in names]:
            print(f"warning: {damaged_message(profile, damaged, args.runs_dir)}", file=sys.stderr)
        return 0
    if args.command == "fit":
        return _fit(profile, refit=args.refit, progress=not args.no_progress)
    if args.command == "verify":
        from . import claims

        df = claims.evaluate(profile, progress=not args.no_progress)
        md = claims.write(profile, df)
        print(md, end="")
        if args.readme is not None:
            changed = claims.update_readme(md, args.readme, profile.name)
            print(f"{'updated' if changed else 'unchanged:'} the claims:{profile.name} block of {args.readme}")
        return 0
    raise AssertionError(args.command)


def _compute_line(flops: float, n_runs: int) -> str:
    """The training compute of a profile, and the time it would take at least on one H200 (its bf16 peak,
    device.PEAK_BF16; real runs reach a fraction of it): what a profile costs before it is started."""
    from .device import PEAK_BF16

    peak = dict(PEAK_BF16)["H200"]
    t = flops / peak
    took = next(f"{t / unit:.3g} {name}" for name, unit, upto in (("s", 1, 120), ("min", 60, 120 * 60),
                                                                 ("h", 3600, 48 * 3600), ("days", 86400, math.inf))
                if t < upto)
    return (f"training compute: {flops:.3g} FLOP for {n_runs} runs (6 N + head + attention FLOPs per token, times "
            f"tokens); at least {took} on one H200 at its bf16 peak of {peak / 1e12:.0f} TFLOP/s (measurement and "
            "the runs' utilization not counted)")


def _rank() -> int:
    """This process's rank under torchrun (0 without it): every rank trains together, and the stages
    after training, one process's work on one device, are left to rank 0 (the others would only wait
    for its locks and then find the same tables). Read leniently: training checks torchrun's variables,
    and a stray WORLD_SIZE without RANK (some schedulers export it) does not stop `fit` or `runs`."""
    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        return 0


def _fit(profile, refit: bool = False, progress: bool = True) -> int:
    """The law fits of notebooks 03-05, headless (`fit` command): Table 2 beside the paper's, then the claims
    that the fits decide."""
    import pandas as pd

    from . import analysis, claims
    from .config import profile_flags
    from .runs import results_dir

    t = analysis.fit_profile(profile, refit=refit, progress=progress)
    level = analysis.fit_spec(profile).level
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 120):
        print(f"Activation ratio at PPL-1% vs data: Eq. 4 (ReLU) / Eq. 5 (SiLU) per run, [{level:.0%} bootstrap "
              "interval] where the fit converged, beside the paper's Table 2")
        print(analysis.table2(t["fits"], group=None).to_string(index=False))
        rows = [claims.relu_falls(t["fits"]), claims.silu_rises(t["fits"]), claims.law_forms(t["form_comparison"]),
                claims.width_depth_linear(t["width_depth_fit"]), claims.width_depth_loss(t["width_depth"]),
                *claims.a0_scale_weak(t["scale_fit"]),
                *claims.small_converge_faster(t["convergence_summary"]),
                claims.patterns_agree(t["domain_agreement"], t["token_pairs"], t["seed_agreement"])]
        print("\nThe claims these fits decide (statistics and thresholds: verify, which checks every claim)")
        print(claims.summary(rows))
    print(f"\ntables in {results_dir(profile.name)}/: {', '.join(analysis.FIT_TABLES)} (.csv, each with a "
          f".meta.json); python -m sparsinglaw verify {profile_flags(profile)} checks every claim")
    return 0


def _draw_hint(profile) -> str:
    """What draws the figures from the tables `compute` wrote for `profile`."""
    from .config import in_repo

    if profile.overrides:  # neither make nor the notebooks take --set: they would load other settings
        return "the notebooks, with replot=True and a profile YAML that holds these --set overrides"
    if in_repo(profile):
        return f"make replot PROFILE={profile.name}"
    return f"the notebooks, parameters profile='{Path(profile.path).resolve()}' and replot=True"


def _compute(profile, args) -> int:
    """The model stages of `make figures`, headless, each timed (`compute` command)."""
    import json
    import time

    import torch

    from . import inference, measure, runs
    from .device import leave_distributed, resolve_device
    from .train import atomic_write_text, versions

    progress = not args.no_progress
    dev = resolve_device(profile.compute.device)
    where = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    print(f"profile {profile.name}: {len(profile.runs)} runs on {where} (torch {torch.__version__})", flush=True)
    stages = [  # the corpus first: what would stop the last stage (a validation split too small) stops it
        ("corpus", lambda: inference.preflight(profile, args.runs_dir, progress=progress)),
        ("train", lambda: runs.train_profile(profile, jobs=args.jobs, runs_dir=args.runs_dir, progress=progress)),
        ("training logs", lambda: runs.train_log_table(profile, compute=True, runs_dir=args.runs_dir)),
        ("measure", lambda: measure.measure_profile(profile, jobs=args.jobs, runs_dir=args.runs_dir,
                                                    progress=progress)),
        ("pareto", lambda: measure.pareto_profile(profile, runs_dir=args.runs_dir, progress=progress)),
        ("sparse inference", lambda: inference.sparse_inference_for(profile, compute=True, runs_dir=args.runs_dir,
                                                                    progress=progress, jobs=args.jobs)),
    ]
    if not profile.sparsity.pareto_runs:
        print("pareto: skipped (sparsity.pareto_runs is empty)")
        stages = [st for st in stages if st[0] != "pareto"]
    times, t0 = {}, time.perf_counter()

    def write_times(running: str | None) -> None:  # after every stage: a run cut off keeps what it timed
        if args.times and _rank() == 0:
            out = {"profile": profile.name, "device": where, "seconds": times, "complete": running is None,
                   "running": running, "elapsed": round(time.perf_counter() - t0, 1), "versions": versions()}
            atomic_write_text(Path(args.times), json.dumps(out, indent=1) + "\n")

    for name, fn in stages:
        write_times(name)
        t = time.perf_counter()
        fn()
        times[name] = round(time.perf_counter() - t, 1)
        print(f"{name}: {times[name]:.1f} s", flush=True)
        if name == "train":
            leave_distributed()  # under torchrun: every rank, together
            if (rank := _rank()) > 0:
                print(f"rank {rank}: the stages after training run on rank 0 alone under torchrun", file=sys.stderr)
                return 0
    times["total"] = round(time.perf_counter() - t0, 1)
    print(f"total: {times['total']:.1f} s; results in {runs.results_dir(profile.name)}/ (draw the figures with "
          f"{_draw_hint(profile)})")
    write_times(None)
    return 0
