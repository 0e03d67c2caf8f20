"""Where things live and the "get or compute" cache: run folders, per-run locks, logs, checkpoints,
results tables with provenance.

Roots (each overridable by an environment variable, which tests use to write into tmp folders):
    repo root      SPARSINGLAW_ROOT      (found by walking up to this project's pyproject.toml)
    runs/          SPARSINGLAW_RUNS      checkpoints and logs (git-ignored)
    runs/_data/    SPARSINGLAW_DATA      corpus, tokenizer and token caches (git-ignored)
    results/       SPARSINGLAW_RESULTS   small committed tables
    figures/       SPARSINGLAW_FIGURES   committed figures
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import (
    STAGE_PARTS,
    DataConfig,
    ProfileConfig,
    RunConfig,
    SparsingLawError,
    command_for,
    command_line,
    stable_hash,
)
from .train import LOG_FIELDS, atomic_write_files, checkpoint_problem, log_rows, read_done, read_meta

# -----------------------------------------------------------------------------------------------
# roots


def _checkout_of(path: Path) -> Path | None:
    """The checkout of this project that `path` lies in (the nearest folder up holding its pyproject.toml),
    or None."""
    for p in (path, *path.parents):
        pp = p / "pyproject.toml"
        if pp.is_file() and 'name = "sparsinglaw"' in pp.read_text(errors="replace"):
            return p
    return None


def repo_root() -> Path:
    env = os.environ.get("SPARSINGLAW_ROOT")
    if env:
        return Path(env).resolve()
    return _checkout_of(Path(__file__).resolve()) or Path.cwd()


def other_checkout(cwd: Path | None = None) -> Path | None:
    """The checkout of this package that `cwd` (default: the working directory) lies in, when it is not the
    one the package was imported from (a venv shared by two checkouts, whose editable install points at the
    other): runs, results and figures would go to repo_root(), not there. None when they agree, when cwd is
    in no checkout, or when SPARSINGLAW_ROOT decides."""
    if os.environ.get("SPARSINGLAW_ROOT"):
        return None
    here = _checkout_of((cwd or Path.cwd()).resolve())
    return None if here is None or here == repo_root() else here


def _root(env: str, default: str, override: str | Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    return Path(os.environ.get(env) or repo_root() / default)


def runs_root(runs_dir: str | Path | None = None) -> Path:
    return _root("SPARSINGLAW_RUNS", "runs", runs_dir)


def results_dir(profile: str) -> Path:
    return _root("SPARSINGLAW_RESULTS", "results") / profile


def figures_dir(profile: str) -> Path:
    return _root("SPARSINGLAW_FIGURES", "figures") / profile


def data_cache_dir(runs_dir: str | Path | None = None) -> Path:
    """Corpus and tokenizer caches: SPARSINGLAW_DATA, else <runs root>/_data."""
    env = os.environ.get("SPARSINGLAW_DATA")
    return Path(env) if env else runs_root(runs_dir) / "_data"


# the folder settings and what each holds (the CLI checks them before any work: see blocking_file)
ROOT_VARS = {"SPARSINGLAW_RUNS": "checkpoints and logs", "SPARSINGLAW_RESULTS": "results tables",
             "SPARSINGLAW_FIGURES": "figures", "SPARSINGLAW_DATA": "the corpus and tokenizer caches"}


def blocking_file(path: str | Path) -> Path | None:
    """The file that keeps `path` from being a folder (itself, or the nearest existing of its parents
    when that is a file, as /etc/passwd in /etc/passwd/cpu), or None when it is or can be made one."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            return None if q.is_dir() else q
    return None


def folder_setting(path: str | Path, runs_dir: str | Path | None = None) -> str | None:
    """The setting that chose the folder `path` lies in (the file of an OSError: a read-only or full disk,
    a file where a folder should be), for the message that tells the user what to change; None elsewhere."""
    try:
        where = Path(path).resolve()
        roots = [("SPARSINGLAW_DATA", Path(os.environ["SPARSINGLAW_DATA"]))] if os.environ.get("SPARSINGLAW_DATA") \
            else []  # unset: the caches lie in the runs folder
        roots += [("SPARSINGLAW_RESULTS", _root("SPARSINGLAW_RESULTS", "results")),
                  ("SPARSINGLAW_FIGURES", _root("SPARSINGLAW_FIGURES", "figures")),
                  ("--runs-dir or SPARSINGLAW_RUNS", runs_root(runs_dir))]
        inside = [(len(root.resolve().parts), name) for name, root in roots if where.is_relative_to(root.resolve())]
        return max(inside)[1] if inside else None  # the deepest: roots may nest (results inside the runs folder)
    except (OSError, RuntimeError, ValueError):  # an unresolvable path: no hint
        return None


def run_dir(profile: ProfileConfig, run: RunConfig, runs_dir: str | Path | None = None) -> Path:
    return runs_root(runs_dir) / profile.name / run.key(profile.data)


# -----------------------------------------------------------------------------------------------
# provenance


# what the pipeline itself writes into tracked files: a change there is an output, not changed code
OUTPUT_PATHS = (":(exclude)results", ":(exclude)figures", ":(exclude)*.md")


def git_state() -> dict:
    """HEAD's sha and whether tracked files other than outputs (results/, figures/, Markdown such as the
    README's claims block) differ from it: `make figures` rewriting committed tables does not make the
    code that produced them dirty."""
    root = repo_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *OUTPUT_PATHS],
                                cwd=root, capture_output=True, text=True, timeout=10)
        sha = head.stdout.strip() if head.returncode == 0 else ""
        dirty = status.stdout.strip() != "" if status.returncode == 0 else None  # None: not known
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", None
    if not sha and os.environ.get("SPARSINGLAW_GIT_SHA"):
        # a copy of the checkout without its .git (e.g. on a lent GPU machine): the commit it was copied from
        return {"git_sha": os.environ["SPARSINGLAW_GIT_SHA"].strip(), "git_dirty": None}
    return {"git_sha": sha or "unknown", "git_dirty": dirty}


def provenance(profile: ProfileConfig, tables: tuple = (), stage: str | None = None, **extra) -> dict:
    """What a results table or figure was made from: profile, config hash, git sha and dirty flag,
    package versions, device and corpus fingerprint; for a table of a `stage` (config.STAGE_PARTS), the
    stage and the hash of the profile parts it is made from, which its reader checks (current). The
    corpus, when not given, is the one the sidecars of the results `tables` it is derived from record
    (recorded_corpus: the same on any machine that derives it), else this machine's data.* fingerprint."""
    import torch

    from .train import versions

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    if "corpus" not in extra:
        extra["corpus"] = (tables and recorded_corpus(*tables)) or corpus_fingerprint(profile.data)
    if stage is not None:
        extra |= made_from(profile, stage)
    return {"profile": profile.name, "config_hash": profile.config_hash(), **git_state(),
            "versions": versions(), "device": device, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


def made_from(profile: ProfileConfig, stage: str) -> dict:
    """The sidecar fields of a table of `stage`: the stage, and the hash of the profile parts that
    stage reads (config.STAGE_PARTS)."""
    return {"stage": stage, "stage_hash": profile.part_hash(*STAGE_PARTS[stage])}


def current(profile: ProfileConfig, stage: str, before: dict | None = None):
    """read_table's `expect` for a table of `stage`: its recorded stage and stage_hash against the
    profile's, so a change to parts it is not made from (a fit setting, say) does not mark it stale. A
    sidecar written before stage hashes is checked as then: by the whole profile's config_hash, and the
    fields in `before`."""
    def expect(meta: dict) -> dict:
        if "stage_hash" in meta:
            return made_from(profile, stage)
        return {"config_hash": profile.config_hash(), **(before or {})}
    return expect


def sidecar(table: str | Path) -> dict:
    """The provenance sidecar of results `table` (<name>.meta.json) as a dict, read leniently: {} when it
    is missing or unreadable (read_table is the strict reader)."""
    try:
        meta = json.loads(Path(table).with_suffix(".meta.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def recorded_corpus(*tables: Path) -> dict | None:
    """The corpus fingerprint the sidecars of results `tables` record, when every one records the same
    (None otherwise): what a table derived from them was made from, whichever machine derives it."""
    found = [sidecar(table).get("corpus") for table in tables]
    ok = found and isinstance(found[0], dict) and all(c == found[0] for c in found)
    return found[0] if ok else None


_FINGERPRINTS: dict[str, dict] = {}  # data config hash -> corpus fingerprint, computed once per process


def corpus_fingerprint(data: DataConfig) -> dict:
    """The corpus fingerprint of data.* (once per process); {"error": ...} when the corpus is unreadable."""
    import dataclasses

    from .data import corpus_documents

    key = stable_hash(dataclasses.asdict(data))
    if key not in _FINGERPRINTS:
        try:
            _FINGERPRINTS[key] = corpus_documents(data)[1]
        except SparsingLawError as e:
            return {"error": str(e)}
    return dict(_FINGERPRINTS[key])


# -----------------------------------------------------------------------------------------------
# per-run lock and state


LOCK_POLL_S = 2.0  # under torchrun, how often rank 0 tries a run's lock while another process holds it


@contextlib.contextmanager
def run_lock(path: Path, what: str, ddp=None):
    """Exclusive lock on `path`/.lock so two processes never train (or measure) one run twice; the
    second waits and then finds the work done.

    Under torchrun (`ddp`, a device.Dist of world > 1) rank 0 alone takes it and every rank waits until it
    holds it: rank 0 tries every LOCK_POLL_S seconds and tells the others each time, so no rank waits in
    one collective for as long as another process trains the run (the process group's timeout would end
    it); the ranks then find the run in the same state."""
    shared = ddp is not None and ddp.world > 1
    f = None
    if not shared or ddp.main:
        path.mkdir(parents=True, exist_ok=True)
        f = open(path / ".lock", "w")
    try:
        said = False
        while True:
            held = [False]
            if f is not None:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held[0] = True
                except BlockingIOError:
                    if not said:
                        print(f"{what}: another process holds {path / '.lock'}; waiting for it", file=sys.stderr,
                              flush=True)
                        said = True
            if not shared:
                if not held[0]:
                    fcntl.flock(f, fcntl.LOCK_EX)
                break
            import torch.distributed as dist

            dist.broadcast_object_list(held, src=0)
            if held[0]:
                break
            time.sleep(LOCK_POLL_S)
        yield
    finally:
        if f is not None:
            f.close()  # closing the file releases the lock


@dataclass
class RunState:
    name: str
    key: str
    status: str  # "done", "damaged" (done, but a checkpoint it wrote or its log is missing or invalid), "partial"
    # or "new"
    tokens_seen: int
    tokens_total: int
    checkpoints: int  # valid mark checkpoints on disk
    path: Path
    problems: tuple[str, ...] = ()  # "damaged": why each lost checkpoint cannot be used
    log_problem: str = ""  # "damaged": why its training log cannot be used (finished_log_problem)

    @property
    def trained(self) -> bool:
        return self.status in ("done", "damaged")


def mark_problem(d: Path, step: int, config_hash: str) -> str:
    """Why the mark checkpoint of `step` in run folder `d` is not among the valid ones (runs.checkpoints)."""
    tag = f"{step:07d}"
    pt = d / f"ckpt_{tag}.pt"
    if not pt.exists() and not (d / f"meta_{tag}.json").exists():
        return f"{pt}: missing"
    return checkpoint_problem(d, tag, config_hash) or f"{pt}: its sidecar records another step or stage"


def train_command(profile: ProfileConfig, runs_dir=None, run: str | None = None) -> str:
    """The `train` command line that trains `run` (None: every unfinished run) of `profile` where it is
    read from (its --runs-dir)."""
    return command_line(profile, "train", *(("--run", run) if run else ()), runs_dir=runs_dir)


def damaged_message(profile: ProfileConfig, states: list[RunState], runs_dir=None) -> str:
    """What to do about finished runs whose checkpoints or training log were lost or damaged after training."""
    return "; ".join(
        f"run {s.name} finished training, but "
        + (f"{len(s.problems)} of its checkpoints cannot be used ({s.problems[0]})" if s.problems
           else f"its training log cannot be used ({s.log_problem})")
        + f"; restore the file(s), or delete the run folder {s.path} and train the run again "
        f"({train_command(profile, runs_dir, s.name)})" for s in states)


def finished_log_problem(d: Path, done: dict) -> str:
    """Why the log.csv of the finished run in folder `d` (its DONE record `done`) cannot be used, as load_log
    would refuse it, or ""."""
    path = d / "log.csv"
    if not path.exists():
        return f"{path}: missing"
    steps = done.get("steps")
    df, lines, problem = _read_log(path, True)
    problem = problem or _log_problem(df, lines, steps if isinstance(steps, int) else None)
    return f"{path}: {problem}" if problem else ""


def checkpoints(profile: ProfileConfig, run: RunConfig, runs_dir=None) -> pd.DataFrame:
    """Valid mark checkpoints of a run: step, tokens, stage, loss, val_loss, path (sorted by step)."""
    d = run_dir(profile, run, runs_dir)
    h = run.config_hash(profile.data)
    rows = []
    for p in sorted(d.glob("ckpt_[0-9]*.pt")):
        tag = p.name[5:-3]
        if checkpoint_problem(d, tag, h) is None:
            m = read_meta(d, tag)
            rows.append({"step": m["step"], "tokens": m["tokens"], "stage": m["stage"], "loss": m["loss"],
                         "val_loss": m["val_loss"], "path": str(p)})
    return pd.DataFrame(rows, columns=["step", "tokens", "stage", "loss", "val_loss", "path"])


def run_state(profile: ProfileConfig, run: RunConfig, runs_dir=None) -> RunState:
    from .config import tokens_per_step, total_steps

    d = run_dir(profile, run, runs_dir)
    total = total_steps(run.model, run.train) * tokens_per_step(run.model, run.train)
    done = read_done(d / "DONE")
    ck = checkpoints(profile, run, runs_dir) if d.exists() else pd.DataFrame(columns=["tokens"])
    h = run.config_hash(profile.data)
    if done is not None and done.get("config_hash") == h:
        kept = set(ck["step"])
        lost = [s for s in done.get("checkpoints", []) if s not in kept]
        problems = tuple(mark_problem(d, s, h) for s in lost)
        log = "" if lost else finished_log_problem(d, done)
        return RunState(run.name, d.name, "damaged" if lost or log else "done", total, total, len(ck), d, problems,
                        log)
    seen = 0
    if d.exists():
        for p in d.glob("meta_*.json"):
            tag = p.name[5:-5]
            if checkpoint_problem(d, tag, h) is None:
                seen = max(seen, read_meta(d, tag)["tokens"])
    return RunState(run.name, d.name, "partial" if seen else "new", seen, total, len(ck), d)


def read_csv(source) -> pd.DataFrame:
    """pd.read_csv with an exact float round trip: what to_csv wrote comes back bit for bit (pandas < 3
    parses with 'high' precision by default, which can move the last digit: tables computed from read-back
    numbers then differ between pandas versions and between a fresh and a cached call; pandas 3 is exact
    by default and deprecates the argument)."""
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}  # 3: the default
    return pd.read_csv(source, **exact)


def load_log(profile: ProfileConfig, run: RunConfig, runs_dir=None) -> pd.DataFrame:
    """The run's log.csv; rows repeated after a resume are dropped (the last one of each step wins). A
    finished run's log is read as it is and must be whole (the trainer's columns, numbers, no line cut
    off, train and val rows up to the final step), else SparsingLawError: training it again would skip
    it. An unfinished run's is read as its resume keeps it (train.trim_log): a last line cut by a kill,
    and any other line that is not a row, left out."""
    path = run_dir(profile, run, runs_dir) / "log.csv"
    finished = (path.parent / "DONE").exists()  # training it again would skip it
    again = (f"delete the run folder {path.parent} and train the run again "
             f"({train_command(profile, runs_dir, run.name)})")
    if not path.exists():
        if finished:
            raise SparsingLawError(f"{path}: the training log of the finished run {run.name} is missing; restore "
                                   f"it, or {again}")
        raise SparsingLawError(f"{path}: no training log; train the run first "
                               f"({train_command(profile, runs_dir, run.name)})")
    steps = (read_done(path.parent / "DONE") or {}).get("steps") if finished else None
    df, lines, problem = _read_log(path, finished)
    problem = problem or _log_problem(df, lines, steps if isinstance(steps, int) else None)
    if problem:
        whose = f"the finished run {run.name}" if finished else f"run {run.name}"
        raise SparsingLawError(f"{path}: the training log of {whose} is damaged ({problem}); restore it, or {again}")
    df = df.drop_duplicates(subset=["step", "split"], keep="last")
    return df.sort_values(["split", "step"]).reset_index(drop=True)


def _read_log(path: Path, whole: bool) -> tuple[pd.DataFrame | None, list[int], str | None]:
    """log.csv as a table, the file's line number of each of its rows, and why it cannot be read (None if
    it can). `whole` (a finished run): as it is, with its last line complete. Otherwise as a resume keeps it
    (train.log_rows): the rows the trainer writes, each ending in a line end, under its header."""
    data = path.read_bytes()
    if whole:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, [], f"not UTF-8 text: {e}"
        if not text.strip():
            return None, [], "the file is empty"
        if not text.endswith("\n"):
            return None, [], f"its last line {text.splitlines()[-1][:60]!r} is cut off"
    else:  # as trim_log reads it
        rows = log_rows(data.decode("utf-8", errors="replace"))
        text = ",".join(LOG_FIELDS) + "\n" + "".join(line for _, _, line in rows)
        numbers = [k for k, _, _ in rows]
    try:
        df = read_csv(io.StringIO(text))
    except ValueError as e:  # pandas' ParserError and EmptyDataError
        return None, [], f"not a readable CSV table: {str(e).strip()}"
    return df, (numbers if not whole else list(range(2, len(df) + 2))), None


def _log_problem(df: pd.DataFrame, lines: list[int], steps: int | None) -> str | None:
    """What is wrong with a training log read by _read_log, or None: a column the trainer writes missing, a
    step or token count that is not a whole number, a loss that is not a number, a split neither train nor
    val; with the run's final `steps` (a finished run), train or val rows that do not reach it."""
    missing = [c for c in LOG_FIELDS if c not in df.columns]
    if missing:
        return f"missing column(s) {', '.join(missing)}; its header line reads {','.join(map(str, df.columns))!r}"
    for c in ("step", "tokens", "loss", "split"):
        if c == "split":
            bad = ~df[c].isin(["train", "val"])
        else:
            v = pd.to_numeric(df[c], errors="coerce")
            bad = v.isna() | v.isin([float("inf"), float("-inf")]) | ((v != v.round()) if c != "loss" else False)
        if bad.any():
            i = int(bad.to_numpy().argmax())
            val = df[c].iloc[i]
            shown = "empty or NaN" if pd.isna(val) else repr(val) if isinstance(val, str) else str(val)
            what = "train or val" if c == "split" else "a whole number" if c != "loss" else "a number"
            return f"line {lines[i]}, column {c}: {shown} is not {what}"
    if steps is None:
        return None
    for split in ("train", "val"):
        last = df.loc[df["split"] == split, "step"].max()
        if last != steps:
            ends = f"no {split} rows" if pd.isna(last) else f"its {split} rows end at step {int(last)}"
            return f"{ends}, not at the run's final step {steps}"
    return None


# -----------------------------------------------------------------------------------------------
# training a profile (the "get or compute" entry point of notebook 01 and the CLI)


def _train_one(profile: ProfileConfig, name: str, runs_dir: str | None, progress: bool) -> dict:
    """Train one run in this process (used directly and as a worker of the process pool). The worker gets
    the caller's profile itself, not its file to reload: an edit of the file meanwhile, or a profile
    changed in memory (a notebook's), would train another config than the caller waits for."""
    from .data import prepare
    from .device import init_distributed
    from .train import train

    run = profile.run(name)
    d = run_dir(profile, run, runs_dir)
    tokens = prepare(profile.data, data_cache_dir(runs_dir), progress=False)
    c = profile.compute
    # Under torchrun only rank 0 takes the run's lock and every rank waits until it holds it, so that all
    # of them then find the run in the same state (another process may finish it meanwhile: then none
    # trains, instead of rank 0 alone returning).
    ddp = init_distributed(c.device)
    with run_lock(d, f"run {name}", ddp):
        same_folder_on_every_rank(d, name, ddp)
        return train(run, profile.data, d, tokens, device=c.device, threads=c.threads, compile=c.compile,
                     compile_mode=c.compile_mode, progress=progress)


def same_folder_on_every_rank(d: Path, name: str, ddp) -> None:
    """Under torchrun (`ddp`, a device.Dist), with rank 0 holding the run's lock: refuse to train unless
    every rank sees the run folder alike (its DONE and checkpoint sidecars, by name). Ranks on nodes
    without one shared runs folder would each resume from their own checkpoint, or one would find the run
    done alone: wrong training, or a hang until the process group's timeout."""
    if ddp.world == 1:
        return
    import torch.distributed as dist

    seen = ((d / "DONE").exists(), sorted(p.name for p in d.glob("meta_*.json")))
    every: list = [None] * ddp.world
    dist.all_gather_object(every, seen)
    if all(v == every[0] for v in every):
        return

    def shown(v) -> str:
        done, metas = v
        more = f" and {len(metas) - 4} more" if len(metas) > 4 else ""
        return ("DONE" if done else "not done") + (f", checkpoint sidecars {' '.join(metas[:4])}{more}"
                                                   if metas else ", no checkpoint")
    ranks = "; ".join(f"rank {r}: {shown(v)}" for r, v in enumerate(every))
    raise SparsingLawError(f"run {name}: the ranks see different run folders ({ranks}): under torchrun every "
                           "rank reads and writes one runs folder (this rank's: "
                           f"{d.parent.parent}), which must be shared by every node (--runs-dir or "
                           "SPARSINGLAW_RUNS on a shared file system)")


def train_profile(profile: ProfileConfig, names: list[str] | None = None, jobs: int | None = None,
                  runs_dir: str | Path | None = None, progress: bool = True) -> list[RunState]:
    """Train every run of `profile` (or those named) that is not finished; finished runs are skipped.

    Independent runs go to `jobs` parallel processes (default compute.jobs, 0 = one per usable core), each
    with compute.threads torch threads, longest runs first. Under torchrun the ranks train the runs one
    after another together, and the first error stops them all (a rank that went on alone to the next
    run would pair its collectives with another rank's old run and hang). The process group stays open
    for later calls; `device.leave_distributed` ends it (the CLI does, after training).
    """
    from .data import prepare
    from .device import dist_env, init_distributed, resolve_device, usable_cores
    from .train import check_parallel, check_tokens

    runs = [profile.run(n) for n in dict.fromkeys(names)] if names else list(profile.runs)  # a name given twice: once
    states = [run_state(profile, r, runs_dir) for r in runs]
    if damaged := [s for s in states if s.status == "damaged"]:  # training would skip them: they are finished
        raise SparsingLawError(damaged_message(profile, damaged, runs_dir))
    check_finished_corpus(profile, [r for r, s in zip(runs, states, strict=True) if s.status == "done"], runs_dir)
    todo = [r for r, s in zip(runs, states, strict=True) if not s.trained]
    c = profile.compute
    world = dist_env("cpu").world  # torchrun's variables; the device is checked below, if there is work
    if todo:  # before any run folder is made or any process-group call
        device = resolve_device(c.device)  # before the corpus: a GPU profile on a CPU machine stops at once
        tokens = prepare(profile.data, data_cache_dir(runs_dir), progress=progress)  # once, before the workers
        for r in todo:
            check_tokens(r, tokens)
            check_parallel(r, world, device, c.compile, c.compile_mode)
    if world > 1:  # every rank takes rank 0's list: another process finishing a run between two ranks'
        import torch.distributed as dist  # looks would send them to different runs (the checks above
        # depend on the config alone, so rank 0 has checked every run of its list)
        init_distributed(c.device)
        names_ = [[r.name for r in todo]]
        dist.broadcast_object_list(names_, src=0)
        todo = [profile.run(n) for n in names_[0]]
    if todo:
        left = {s.name: s.tokens_total - s.tokens_seen for s in states}
        cost = {r.name: left[r.name] * r.model.d_model * r.model.n_layers for r in todo}  # ~ its FLOPs to go
        todo.sort(key=lambda r: -cost[r.name])
        jobs = jobs or c.jobs or usable_cores()
        jobs = max(1, min(jobs, len(todo)))
        if world > 1:
            jobs = 1  # under torchrun all ranks train one run after another together
        rd = str(runs_dir) if runs_dir is not None else None
        run_parallel(_train_one, [(profile, r.name, rd, progress) for r in todo], jobs, "training",
                     keep_going=world == 1, progress=progress, weights=[cost[r.name] for r in todo],
                     names=[r.name for r in todo])
    return [run_state(profile, r, runs_dir) for r in runs]


def check_finished_corpus(profile: ProfileConfig, finished: list[RunConfig], runs_dir=None) -> None:
    """Refuse finished runs whose newest checkpoint was trained on another corpus than data.* selects now
    (measure.require_corpus, as every later stage checks it; the default corpus changes with the installed
    packages): training would skip them as done, and every later stage would refuse them one by one.
    Reads the corpus's fingerprint alone (data.corpus_documents: no token cache is built)."""
    from .data import CorpusError, corpus_documents
    from .measure import require_corpus

    if not finished:
        return
    corpus = corpus_documents(profile.data)[1]
    errors = []
    for r in finished:
        ck = checkpoints(profile, r, runs_dir)
        if ck.empty:
            continue
        try:
            require_corpus(r, ck["path"].iloc[-1], corpus)
        except CorpusError as e:
            errors.append(str(e))
    if errors:
        raise CorpusError("; ".join(errors))


def one_line_warnings() -> None:
    """Warnings printed as one line, "TargetNotReachedWarning: run relu-s1: ...", without the file name
    and the line of library source that Python's default format adds (the CLI and run_parallel's workers;
    what is warned and when is unchanged)."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}\n"


def _worker_init(relay=None, activations: bytes | None = None) -> None:
    """In each worker of run_parallel: it ends when the process that started it does (device.exit_with_parent;
    first, so that a parent gone during the start-up leaves no queued call to run). SIGINT ignored, then
    unblocked (it was blocked when the worker started, so a Ctrl-C during its start-up stayed pending and
    is now dropped): Ctrl-C reaches the parent alone, which terminates the workers.
    Progress bars take a thread lock instead of tqdm's default multiprocessing lock, a named semaphore
    of this process alone that a terminated worker would leave to the resource tracker (which then
    warns of leaked semaphores). Warnings take one line.
    `relay`: the queue to the parent's stage bar, which then takes the worker's bars and output lines.
    `activations`: the parent's registered activations, pickled (model.register_activation).
    """
    import threading

    from tqdm import tqdm

    from . import progress
    from .device import exit_with_parent

    exit_with_parent("spawn")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    tqdm.set_lock(threading.RLock())
    one_line_warnings()
    if relay is not None:
        progress.relay_to(relay)
    if activations is not None:
        from .model import register_activation

        for name, fn in pickle.loads(activations).items():
            register_activation(name, fn, overwrite=True)


def _sendable_activations() -> tuple[bytes | None, list[str]]:
    """The registered activations pickled for spawned workers, and the names of those that cannot reach
    them: a lambda, a function of ``__main__`` (a script run directly, a notebook) or anything else a
    worker cannot import by name."""
    from .model import registered_activations

    extra, stuck = registered_activations(), []
    for name, fn in extra.items():
        try:
            if b"__main__" in pickle.dumps(fn) or not all(_importable(getattr(f, "__module__", None))
                                                          for f in (fn, getattr(fn, "func", fn))):
                stuck.append(name)
        except Exception:  # pickle raises PicklingError, AttributeError or TypeError
            stuck.append(name)
    return (pickle.dumps(extra) if extra and not stuck else None), stuck


def _importable(module: str | None) -> bool:
    """Whether a spawned worker (this process's sys.path) can import `module` by name: a built-in module, or
    one whose top-level package lies on sys.path (a module loaded from a file path by hand pickles here, by
    reference, but is not there)."""
    import importlib.machinery

    if not module or module in ("__main__", "__mp_main__"):
        return False
    top = module.partition(".")[0]
    return top in sys.builtin_module_names or importlib.machinery.PathFinder.find_spec(top, sys.path) is not None


def run_parallel(fn, calls: list[tuple], jobs: int, what: str, keep_going: bool = True, progress: bool = False,
                 weights: list[float] | None = None, names: list[str] | None = None) -> None:
    """fn(*args) for each args in `calls`: in this process when jobs == 1, else in `jobs` spawned
    processes; every call runs even when another fails, then the user errors are reported together
    (and any other error raised, the first one); a single call raises its own error. `keep_going`
    False (jobs == 1 only): the first error is raised at once. `progress` with workers: one bar for all
    of them, `what`, each call counting its `weights` share of the work (default: alike; see
    progress.StageBar), the workers' own bars and output lines sent to it.

    Ctrl-C stops the workers at once and drops the queued calls (killed runs resume from their last
    checkpoint); more Ctrl-Cs while they stop are let go, so that they all end before this returns. While
    the workers are started SIGINT is blocked in this thread, so the workers start with it blocked (a
    spawned process keeps the mask) and ignore it once set up (_worker_init); a Ctrl-C meanwhile stays
    pending here and is raised after the start. This process killed outright
    (SIGKILL, the OOM killer), its workers end with it (device.exit_with_parent). A worker that ends
    abruptly (killed outright, a crash in native code) breaks the pool, which stops the others:
    SparsingLawError naming the cause and the calls (`names`, e.g. the runs) that did not finish, after
    the errors of those that did (_broken_message)."""
    import multiprocessing as mp
    import threading
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from .progress import StageBar, call

    errors, crash, pool, stage, broken = [], None, None, None, []
    activations, stuck = _sendable_activations() if jobs > 1 and len(calls) > 1 else (None, [])
    if stuck:
        print(f"note: {what}: the registered activation(s) {', '.join(stuck)} cannot reach worker processes (a "
              "lambda, or a function of __main__ or a notebook; one in an importable module can): the "
              f"{len(calls)} runs go one by one in this process", file=sys.stderr, flush=True)
    if jobs == 1 or len(calls) == 1 or stuck:
        for args in calls:
            try:
                fn(*args)
            except Exception as e:  # as in the pool: the other calls still run, then it is raised
                if len(calls) == 1 or not keep_going:  # each error as it is, at once
                    raise
                if isinstance(e, SparsingLawError):
                    errors.append(str(e))
                else:
                    crash = crash or e
        _raise_collected(errors, crash, what)
        return
    from multiprocessing import resource_tracker

    before = set(mp.active_children())
    block = threading.current_thread() is threading.main_thread()
    resource_tracker.ensure_running()  # now: its first start unblocks SIGINT in this thread (undoing the block)
    stopping = []
    held = signal.getsignal(signal.SIGINT) if block else None
    guard = block and held is not signal.SIG_IGN  # a run started with Ctrl-C ignored (nohup, &) keeps it so

    def first_ctrl_c(signum, frame):  # more Ctrl-Cs while the workers are stopped would cut that short and
        if not stopping:  # leave them to run on (the exit then waits for them): only the first one counts
            stopping.append(signum)
            if callable(held):
                held(signum, frame)
            raise KeyboardInterrupt

    if guard:
        signal.signal(signal.SIGINT, first_ctrl_c)
    try:
        try:
            if block:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                ctx = mp.get_context("spawn")
                relay = ctx.Queue() if progress else None
                if relay is not None:
                    stage = StageBar(relay, what, weights or [1.0] * len(calls))
                pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                                           initargs=(relay, activations))
                futures = {pool.submit(call, i, fn, *args): i for i, args in enumerate(calls)}  # starts the workers
                procs = list(getattr(pool, "_processes", {}).values())  # exit codes: why a broken pool broke
            finally:
                if block:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending Ctrl-C is raised now
            for fut in as_completed(futures):
                if stage is not None:
                    stage.finished(futures[fut])
                try:
                    fut.result()
                except SparsingLawError as e:
                    errors.append(str(e))
                except BrokenProcessPool as e:  # a worker ended abruptly: every unfinished call fails
                    broken.append((futures[fut], e))
                except Exception as e:  # a bug or a system error: the other calls still run, then it is raised
                    crash = crash or e
            pool.shutdown(wait=True)
            if stage is not None:
                stage.close()
                relay.close()
        except BaseException:  # Ctrl-C (or SIGTERM, SystemExit): stop every worker now, and wait for them
            stopping.append(None)
            workers = set(mp.active_children()) - before
            for p in workers:
                p.terminate()
            for p in workers:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # its workers gone: at once
            if stage is not None:
                stage.close(drain=False)
            raise
    finally:
        if guard:
            signal.signal(signal.SIGINT, signal.default_int_handler if held is None else held)
    if broken:
        killed = _broken_message(what, jobs, [p.exitcode for p in procs], broken,
                                 names or [f"call {i + 1}" for i in range(len(calls))])
        if errors:
            print(f"error: {what} failed for {len(errors)} run(s):\n" + "\n".join(errors), file=sys.stderr)
        if crash is not None:
            print(f"error: {killed}", file=sys.stderr)
            raise crash
        raise SparsingLawError(killed)
    _raise_collected(errors, crash, what)


def _broken_message(what: str, jobs: int, codes: list[int | None], broken: list, names: list[str]) -> str:
    """run_parallel's message for a pool that broke: a worker ended abruptly, which stopped the unfinished
    calls (`broken`: their index and BrokenProcessPool). `codes`: the workers' exit codes, -N for signal N
    (the pool itself ends the others with SIGTERM): SIGKILL is most often the OOM killer."""
    left = ", ".join(names[i] for i, _ in sorted(broken, key=lambda b: b[0]))
    if -signal.SIGKILL in codes:
        why = (f"was killed (SIGKILL; most often the kernel's OOM killer, when {jobs} parallel jobs need more "
               "memory than the machine has)")
        fix = "run the command again with fewer jobs (-j, compute.jobs)"
    else:
        ends = [c for c in codes if c not in (None, 0, -signal.SIGTERM)] or [c for c in codes if c not in (None, 0)]
        shown = ", ".join(map(_exit_status, dict.fromkeys(ends)))
        cause = next((e.__cause__ for _, e in broken if e.__cause__ is not None), None)
        why = (f"ended abruptly ({shown or 'no exit code'}"
               + (f"; {type(cause).__name__}: {' '.join(str(cause).split())}" if cause is not None else "") + ")")
        fix = "see the messages above, then run the command again"
    return (f"{what}: a worker process {why}, which stopped every unfinished call: {left}; {fix}: what finished "
            "is kept, and a stopped run's training resumes from its last checkpoint")


def _exit_status(code: int) -> str:
    """A process's exit code as words: "exit code 3", "SIGABRT" (code -6)."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _raise_collected(errors: list[str], crash: Exception | None, what: str) -> None:
    """After every call of run_parallel: the user errors as one SparsingLawError, or printed before the
    first other error (a bug's traceback) is raised."""
    if errors:
        msg = f"{what} failed for {len(errors)} run(s):\n" + "\n".join(errors)
        if crash is None:
            raise SparsingLawError(msg)
        print(f"error: {msg}", file=sys.stderr)
    if crash is not None:
        raise crash


def states_table(profile: ProfileConfig, runs_dir=None) -> pd.DataFrame:
    """One row per run: name, groups, activation, width, depth, FFN width, MoE experts (0: dense),
    width-depth ratio, non-embedding parameters, training tokens, training FLOPs (model.flops_per_token x
    tokens), status, progress (share of the tokens trained), checkpoints kept and the run's key (its
    folder name)."""
    from .model import flops_per_token, num_params_from_config

    rows = []
    for r in profile.runs:
        s = run_state(profile, r, runs_dir)
        m = r.model
        rows.append({"run": r.name, "groups": ",".join(r.groups), "activation": m.activation,
                     "d_model": m.d_model, "n_layers": m.n_layers, "d_ff": m.d_ff, "n_experts": m.n_experts,
                     "width_depth": round(m.width_depth_ratio, 2),
                     "non_embedding_params": num_params_from_config(m, non_embedding=True),
                     "tokens": r.train.tokens, "train_flops": flops_per_token(m) * r.train.tokens,
                     "status": s.status,
                     "progress": f"{s.tokens_seen / max(s.tokens_total, 1):.0%}",
                     "checkpoints": s.checkpoints, "key": s.key})
    return pd.DataFrame(rows)


# -----------------------------------------------------------------------------------------------
# results tables with provenance


class TableError(SparsingLawError):
    """A results table that cannot be used: missing, edited by hand, half-written or malformed."""


class StaleTableWarning(UserWarning):
    """A results table written under another config than the current one."""


_STALE: list[list[Path]] = []  # the lists of noting_stale_tables blocks in progress


@contextlib.contextmanager
def noting_stale_tables():
    """Within the block, the path of every table read_table finds stale (and uses, with its warning) is
    appended to the list this yields: what a summary made from those tables must say it rests on."""
    found: list[Path] = []
    _STALE.append(found)
    try:
        yield found
    finally:
        _STALE.remove(found)


@contextlib.contextmanager
def folder_lock(folder: Path, shared: bool = False):
    """flock on a folder itself (no lock file): exclusive while a table and its sidecar in
    results/<profile>/ are replaced together, `shared` while a reader reads the pair (else it could read
    a new table beside the old sidecar and refuse it as edited by hand). Not reentrant: a process holding
    it must not take it again."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


VOLATILE_META = ("time", "git_sha", "git_dirty")  # provenance that changes without the table changing


def write_table(df: pd.DataFrame, path: Path, meta: dict) -> Path:
    """Write `df` as CSV and `meta` (plus the CSV's sha256) as <name>.meta.json, atomically as a pair
    (the sidecar is renamed last) and under a lock on the folder. A table already there with the same
    bytes and the same provenance but for VOLATILE_META is left as it is (its sidecar still names the
    code that first wrote those bytes), so recomputing unchanged results leaves the tree clean; only a
    sidecar written from a dirty tree is replaced by a clean one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = df.to_csv(index=False).encode()
    meta = dict(meta, file=path.name, sha256=hashlib.sha256(data).hexdigest(), rows=len(df))
    sidecar = json.dumps(meta, indent=1, sort_keys=True, default=str).encode()
    side = path.with_suffix(".meta.json")
    with folder_lock(path.parent):
        if not _same_table(path, side, data, json.loads(sidecar)):
            atomic_write_files({path: data, side: sidecar})
    return path


def _same_table(path: Path, side: Path, data: bytes, meta: dict) -> bool:
    try:
        if path.read_bytes() != data:
            return False
        old = json.loads(side.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(old, dict) or (old.get("git_dirty") is True and meta.get("git_dirty") is False):
        return False  # clean provenance replaces dirty provenance of the same bytes
    return _provenance_of(old) == _provenance_of(meta)


def _provenance_of(meta: dict) -> dict:
    """A sidecar less VOLATILE_META and the machine's facts (runs.MACHINE): what makes the same bytes
    another result (a replot on another machine leaves the tree clean)."""
    out = {k: v for k, v in meta.items() if k not in VOLATILE_META}
    if isinstance(out.get("versions"), dict):
        out["versions"] = same_build(out["versions"])
    return out


MACHINE = ("platform", "cpu_capability")  # facts of the machine, not of the software, in train.versions()


def same_build(versions: dict) -> dict:
    """Package versions less the machine's facts (MACHINE: kernel build, CPU instruction set): what a
    result's provenance compares."""
    return {k: v for k, v in versions.items() if k not in MACHINE}


def read_table(path: str | Path, columns: list[str] = (), numeric: list[str] = (), expect=None,
               strict: bool = False, fix: str = "rerun the stage that writes it", required: list[str] = ()
               ) -> pd.DataFrame:
    """A results table written by write_table, checked: its sidecar exists and carries the CSV's sha256
    (else it was edited by hand or half-written), every row has the header's fields, the `columns` exist,
    the `numeric` columns hold numbers; with `required` (REQUIRED), the table has rows and those columns
    a value in each.
    Recorded provenance that differs from `expect` (a dict such as {"config_hash": profile.config_hash()},
    or a function of the sidecar returning one, such as current(profile, stage)) gives a
    StaleTableWarning, or a TableError when `strict`. The sidecar is returned in df.attrs["meta"]."""
    path = Path(path)
    side = path.with_suffix(".meta.json")
    if not path.is_file():
        raise TableError(f"{path}: missing; {fix}")
    if not side.is_file():
        raise TableError(f"{path}: no provenance sidecar {side.name} next to it, so it cannot be checked; {fix}")
    with folder_lock(path.parent, shared=True):  # the pair as one write_table left it
        text, data = side.read_bytes(), path.read_bytes()
    meta = _checked_sidecar(path, text, hashlib.sha256(data).hexdigest(), fix)
    try:
        df = read_csv(io.BytesIO(data))
        short = _short_row(data)
    except (ValueError, UnicodeDecodeError) as e:  # pandas' ParserError: its message spans lines
        raise TableError(f"{path}: not a readable CSV table ({' '.join(str(e).split())}); {fix}") from None
    if short:  # pandas fills the missing fields with NaN
        raise TableError(f"{path}: line {short[0]} has {short[1]} of the header's {short[2]} fields (a row cut "
                         f"short); {fix}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TableError(f"{path}: missing column(s) {', '.join(missing)}; expected at least the columns "
                         f"{', '.join(columns)}; {fix}")
    for c in numeric:
        bad = pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise TableError(f"{path}: line {i + 2}, column {c}: {df[c].iloc[i]!r} is not a number; {fix}")
    if required and df.empty:
        raise TableError(f"{path}: no rows, only its header; {fix}")
    for c in (c for c in required if c in df.columns):
        if (empty := df[c].isna()).any():
            raise TableError(f"{path}: line {int(empty.to_numpy().argmax()) + 2}, column {c}: empty, where every "
                             f"row needs a value; {fix}")
    _check_current(path, meta, expect, strict, fix)
    df.attrs["meta"] = meta
    return df


def _short_row(data: bytes) -> tuple[int, int, int] | None:
    """(line, fields, header's fields) of the first row of CSV `data` with fewer fields than its header,
    or None."""
    import csv

    rows = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    width = len(next(rows, []))
    for r in rows:
        if len(r) < width and (r or width > 1):  # a blank line is a one-column table's empty value
            return rows.line_num, len(r), width
    return None


def _checked_sidecar(path: Path, text: bytes, sha: str, fix: str) -> dict:
    """read_table's sidecar checks: a JSON object that records `sha`, the table's own sha256."""
    side = path.with_suffix(".meta.json")
    try:
        meta = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise TableError(f"{side}: unreadable sidecar ({e}); {fix}") from None
    if not isinstance(meta, dict):
        raise TableError(f"{side}: unreadable sidecar (expected a JSON object); {fix}")
    if sha != meta.get("sha256"):
        raise TableError(f"{path}: its sha256 does not match the one in {side.name} (edited by hand, or an "
                         f"interrupted write); refusing it: {fix}")
    return meta


def _check_current(path: Path, meta: dict, expect, strict: bool, fix: str) -> None:
    """read_table's check of a sidecar `meta` against `expect`: a StaleTableWarning (noted for
    noting_stale_tables) or, when `strict`, a TableError for each recorded field that differs."""
    for key, want in (expect(meta) if callable(expect) else expect or {}).items():
        got = meta.get(key)
        if got != want:
            parts = STAGE_PARTS.get(str(meta.get("stage"))) if key == "stage_hash" else None
            what = f": its {', '.join(parts[:-1])} or {parts[-1]} settings" if parts else ""
            msg = (f"{path}: recorded {key} {str(got)[:12]} differs from the current {str(want)[:12]} (the "
                   f"profile changed since it was written{what})")
            if strict:
                raise TableError(f"{msg}; refusing it: {fix}")
            warnings.warn(f"{msg}; using it anyway (a warning, not an error): {fix} to refresh it",
                          StaleTableWarning, stacklevel=3)
            for found in _STALE:
                found.append(path)


def warn_if_stale(path: str | Path, sha: str, expect, fix: str = "rerun the stage that writes it") -> None:
    """read_table's checks of a table that is not read again (a cached fit reuses its inputs by their
    sha256 `sha`, not by the settings they were made under): its sidecar must exist, be readable and
    record `sha` (else TableError), and differ from `expect` only with a StaleTableWarning."""
    path = Path(path)
    side = path.with_suffix(".meta.json")
    if not side.is_file():
        raise TableError(f"{path}: no provenance sidecar {side.name} next to it, so it cannot be checked; {fix}")
    meta = _checked_sidecar(path, side.read_bytes(), sha, fix)
    _check_current(path, meta, expect, False, fix)


def as_bool(v) -> pd.Series | bool:
    """A boolean column (or value) as it comes back from a CSV or a DataFrame: True or the text "True"
    (any case) is True; anything else, NaN included, is False."""
    if isinstance(v, pd.Series):
        return v.astype(str).str.strip().str.lower().eq("true")
    return str(v).strip().lower() == "true"


def as_text(df: pd.DataFrame, column: str) -> pd.Series:
    """A text column as it comes back from a CSV: strings, "" where a cell is empty or the column missing (a
    column with no text at all reads back as NaN floats)."""
    if column not in df:
        return pd.Series("", index=df.index, dtype=object)
    return df[column].astype(object).where(df[column].notna(), "").astype(str)


def group_runs(profile: ProfileConfig, group: str | None = None) -> list[RunConfig]:
    """Runs of `profile` that feed analysis `group` ("scale", "width_depth"; None = all)."""
    return [r for r in profile.runs if group is None or group in r.groups]


# the columns every results table must have (measure.read_results and analysis.load_results check
# them), and which hold numbers
RESULT_COLUMNS = {
    "sparsity": (["run", "activation", "groups", "d_model", "n_layers", "width_depth", "non_embedding_params",
                  "step", "tokens", "p", "cett", "dense_loss", "sparse_loss", "ppl_ratio", "activation_ratio",
                  "layer_ratios", "taus", "nonzero_ratio", "dead_ratio", "searched", "n_tokens", "reached"],
                 ["d_model", "n_layers", "width_depth", "non_embedding_params", "step", "tokens", "p", "cett",
                  "dense_loss", "sparse_loss", "ppl_ratio", "activation_ratio", "nonzero_ratio", "dead_ratio",
                  "n_tokens"]),
    "neurons": (["run", "step", "layer", "neuron", "all"], ["step", "layer", "neuron", "all"]),
    "tokens": (["run", "token_id", "count", "activation_ratio"], ["token_id", "count", "activation_ratio"]),
    "pareto": (["run", "activation", "step", "method", "param", "dense_loss", "sparse_loss", "ppl", "ppl_ratio",
                "activation_ratio"], ["step", "param", "dense_loss", "sparse_loss", "ppl", "ppl_ratio",
                                      "activation_ratio"]),
}

TRAIN_LOG_COLUMNS = ["run", "groups", "activation", "d_model", "n_layers", "width_depth", "non_embedding_params",
                     "step", "tokens", "split", "loss"]
# the columns of a measured table that every row fills (read_table's `required`): what the fits and the
# loss figures read (a value missing there would drop a point, or a run, without a word)
REQUIRED = {"sparsity": ["run", "activation", "d_model", "n_layers", "width_depth", "non_embedding_params", "step",
                         "tokens", "p", "dense_loss", "activation_ratio"],
            "train_log": [c for c in TRAIN_LOG_COLUMNS if c != "groups"]}


def train_log_table(profile: ProfileConfig, compute: bool = True, runs_dir=None) -> pd.DataFrame:
    """results/<profile>/train_log.csv: every run's training log (train and validation rows) with its
    shape, so that the loss figures are redrawn from results alone (make replot). compute=True reads
    the finished runs' log.csv files and writes the table; compute=False only reads it back."""
    from .model import num_params_from_config

    path = results_dir(profile.name) / "train_log.csv"
    if not compute:
        return read_table(path, TRAIN_LOG_COLUMNS, ["step", "tokens", "loss", "non_embedding_params"],
                          required=REQUIRED["train_log"],
                          expect=current(profile, "train"),
                          fix=f"make it with {command_for(profile, 'compute', '01_train', runs_dir)}")
    frames = []
    for r in profile.runs:
        log = load_log(profile, r, runs_dir)
        m = r.model
        info = {"run": r.name, "groups": ",".join(r.groups), "activation": m.activation, "d_model": m.d_model,
                "n_layers": m.n_layers, "width_depth": m.width_depth_ratio,
                "non_embedding_params": num_params_from_config(m, non_embedding=True)}
        frames.append(log[["step", "tokens", "split", "loss"]].assign(**info))
    df = pd.concat(frames, ignore_index=True)[TRAIN_LOG_COLUMNS]
    corpus = trained_corpus(profile, runs_dir)
    write_table(df, path, provenance(profile, stage="train", **({"corpus": corpus} if corpus else {})))
    return df


def trained_corpus(profile: ProfileConfig, runs_dir=None) -> dict | None:
    """The corpus fingerprint the runs' newest checkpoint sidecars record (what train_log.csv is made from,
    not what data.* selects on this machine now: a finished run is not trained again after the corpus
    changed); None when none records one. SparsingLawError when two runs record different corpora. Only
    the sidecars are read: what a session recorded, not whether its weights are whole (no checksums)."""
    from .train import corpus_differs

    found: dict[str, dict] = {}
    for r in profile.runs:
        h, metas = r.config_hash(profile.data), []
        for p in run_dir(profile, r, runs_dir).glob("meta_[0-9]*.json"):
            with contextlib.suppress(OSError, ValueError):
                metas.append(json.loads(p.read_text()))
        metas = [m for m in metas if isinstance(m, dict) and m.get("config_hash") == h and "step" in m]
        c = max(metas, key=lambda m: m["step"]).get("corpus") if metas else None
        if isinstance(c, dict) and "sha256" in c:
            found[r.name] = c
    if not found:
        return None
    corpus = next(iter(found.values()))
    if any(corpus_differs(c, corpus) for c in found.values()):
        now = corpus_fingerprint(profile.data)
        old = [n for n, c in found.items() if corpus_differs(c, now)] or list(found)
        raise SparsingLawError(f"{profile.path}: the runs were trained on different corpora (sha256 "
                               f"{', '.join(sorted({c['sha256'][:12] for c in found.values()}))}), whose logs "
                               f"cannot be compared; run(s) {', '.join(old)} on another corpus than data.* gives "
                               "now: restore the corpus they were trained on, or delete their run folders and "
                               f"train them again ({train_command(profile, runs_dir)})")
    return corpus


def in_group(df: pd.DataFrame, group: str | None) -> pd.DataFrame:
    """Rows of a table with a comma-separated `groups` column that feed analysis `group` (None = all)."""
    if group is None:
        return df
    return df[df["groups"].fillna("").str.split(",").map(lambda g: group in g)]


def final_losses(profile: ProfileConfig, group: str | None = None, compute: bool = True,
                 runs_dir=None) -> pd.DataFrame:
    """Per run: non-embedding parameters, width-depth ratio, tokens and last validation loss (from
    train_log_table, so it works on committed results too)."""
    log = in_group(train_log_table(profile, compute, runs_dir), group)
    val = log[log["split"] == "val"].sort_values("tokens")
    last = val.groupby("run", sort=False).tail(1).rename(columns={"loss": "final_val_loss"})
    order = {r.name: i for i, r in enumerate(profile.runs)}
    return last.sort_values("run", key=lambda s: s.map(order))[
        ["run", "activation", "d_model", "n_layers", "width_depth", "non_embedding_params", "tokens",
         "final_val_loss"]].reset_index(drop=True)
