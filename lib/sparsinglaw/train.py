"""Training loop: AdamW + WSD schedule, checkpoints at token marks, exact resume.

`train(run, data_cfg, run_dir, tokens)` trains one run of a profile into `run_dir`:

    run_dir/config.yaml          resolved config (written once)
    run_dir/log.csv              step, tokens, split, loss, lr, tok_s, mfu; appended before each
                                 checkpoint, cut back to the checkpoint a resumed run starts from.
                                 loss is the cross-entropy in train and val rows alike (an MoE's
                                 load-balancing term is trained on, not logged); mfu is the global tok_s
                                 over the peak FLOP/s of all torchrun GPUs together
    run_dir/ckpt_0000123.pt      checkpoint after optimizer step 123 (model, RNG)
    run_dir/opt_0000123.pt       its optimizer state (AdamW's moments: twice the weights), kept for the
                                 KEEP_OPTIMIZER newest checkpoints only, none once the run is done
    run_dir/meta_0000123.json    its sidecar: config, step, tokens, data cursor, RNG, losses,
                                 versions, sha256 of both .pt (written last: the commit marker)
    run_dir/ckpt_last.pt (+ opt_last.pt, meta_last.json)   resume snapshot every `resume_every` steps
    run_dir/DONE                 written when the run finished (summary JSON)

Exact resume: batches are a pure function of (seed, step, micro-batch), the schedule a pure function
of the step, and model, optimizer and RNG states are restored, so a killed and resumed run ends with
the same weights as an uninterrupted one on CPU (tests/test_resume.py checks this bit for bit).
Every file but log.csv is written atomically (temp file + rename, `atomic_write_files`); a checkpoint
without a valid sidecar is never loaded; temp files of killed writes are removed by the next run.
log.csv is appended in place, not atomically: an append that fails is cut back to the file's previous
end (`append_log`); one killed midway can leave a partial last line, which the resumed run drops with
the rows past its checkpoint (`trim_log`).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import errno
import hashlib
import inspect
import json
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from . import __version__
from .config import (
    DataConfig,
    RunConfig,
    SparsingLawError,
    TrainConfig,
    checkpoint_steps,
    stage_steps,
    tokens_per_step,
    total_steps,
)
from .data import CorpusError, TokenData, eval_batches, fsync_path, get_batch, window_coverage
from .device import Prefetcher, init_distributed, peak_flops, pinned_memory_works, setup_torch
from .model import Transformer

LOG_FIELDS = ["step", "tokens", "split", "loss", "lr", "tok_s", "mfu"]


class TrainingDiverged(SparsingLawError):
    """The loss or the gradient norm became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(SparsingLawError):
    """A checkpoint that cannot be used (truncated, corrupted, or from another config)."""


# -----------------------------------------------------------------------------------------------
# schedule and batches (pure functions of the step: the basis of exact resume)


def lr_factor(step: int, warmup: int, stable: int, decay: int, min_frac: float) -> float:
    """WSD schedule factor for optimizer step `step` (0-based): linear warmup, constant, then
    exponential decay to `min_frac` of the peak over the last `decay` steps (MiniCPM's WSD)."""
    if step < warmup:
        return (step + 1) / warmup
    if step < warmup + stable or decay == 0:
        return 1.0
    return min_frac ** ((step - warmup - stable + 1) / decay)


def batch_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the generator that draws micro-batch `micro` of optimizer step `step`. Micro-batch indices
    are global (under torchrun rank r draws the micro-batches m with m % world == r), so the data order
    does not depend on the world size. (The trailing ":0" keeps the seeds of runs already trained.)"""
    h = hashlib.blake2b(f"{seed}:{step}:{micro}:0".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


def versions() -> dict:
    """Versions of Python, the platform and the packages results depend on, and the CPU instruction set
    torch's kernels use (cpu_capability: AVX2, AVX512, ...; float rounding, hence trained weights, can
    differ between them)."""
    import importlib.metadata

    out = {"sparsinglaw": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "platform": platform.platform(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for pkg in ("pandas", "scipy", "tokenizers", "matplotlib"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


# -----------------------------------------------------------------------------------------------
# atomic files and checkpoints


class WriteError(SparsingLawError):
    """A file could not be written (disk full, permissions); the previous version is kept."""


def _test_fault(kind: str, path: Path) -> bool:
    """Tests only: SPARSINGLAW_TEST_FAULT=<kind>:<file name> makes the atomic write of that file fail
    ("enospc": half the temp file, then a full-disk OSError) or stop just before its rename ("stall":
    the temp files are complete and the process sleeps, so a test can SIGKILL it mid-write)."""
    spec = os.environ.get("SPARSINGLAW_TEST_FAULT", "")
    return spec.partition(":")[::2] == (kind, path.name)


def _host() -> str:
    """This machine's name as it goes into a temp file's name (no dots or dashes)."""
    return "".join(ch if ch.isalnum() else "_" for ch in platform.node()) or "host"


def temp_path(path: Path) -> Path:
    """The temp file of an atomic write of `path` (hidden, so no glob of final names matches it), named
    by the writing process and its machine: on a folder shared by several machines, a process id says
    whether the writer is gone only on its own machine (remove_stale_temps)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{_host()}.tmp")


def atomic_write_files(files: dict[Path, bytes]) -> None:
    """Write several files as one: every temp file is written and synced first, then each is renamed
    over its target in order, so the last one (a sidecar) commits the set. A failing write (a full disk
    fails while the temp files are written) raises WriteError naming the file, leaves the previous files
    in place and removes the temp files. A rename failing after an earlier one leaves a new file beside
    an old sidecar, which the sidecar's sha256 check then refuses. The folders are synced after the
    renames, so that the new set survives a power cut."""
    tmps = {path: temp_path(path) for path in files}
    current = next(iter(files))
    try:
        for current, data in files.items():
            with open(tmps[current], "wb") as f:
                if _test_fault("enospc", current):
                    f.write(data[: len(data) // 2])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmps[current]))
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for current in files:
            if _test_fault("stall", current):
                print(f"test fault: stalled before renaming {current}", file=sys.stderr, flush=True)
                time.sleep(3600)
            os.replace(tmps[current], current)
    except OSError as e:
        raise WriteError(f"{current}: could not write it ({e.strerror or e}); the previous version, if any, "
                         "is kept. Free disk space or fix the folder's permissions, then rerun.") from e
    finally:
        for tmp in tmps.values():
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    for folder in dict.fromkeys(path.parent for path in files):
        fsync_path(folder)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_files({path: data})


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(folder: Path, name: str = "*") -> list[Path]:
    """Delete the temp files of atomic writes (of files called `name`: a glob) whose process is gone (killed
    between write and rename). Only this machine's: another machine's writer cannot be looked up here (a
    temp file named without a machine, as before the machine was added, counts as this machine's)."""
    removed = []
    for p in folder.glob(f".{name}.*.tmp"):
        pid, _, host = p.name.rsplit(".", 2)[-2].partition("-")
        if not pid.isdigit() or int(pid) == os.getpid() or host not in ("", _host()):
            continue
        try:
            os.kill(int(pid), 0)
            continue  # the writer still runs
        except ProcessLookupError:
            p.unlink(missing_ok=True)
            removed.append(p)
        except PermissionError:
            continue
    return removed


HASH_MEMO_AGE_S = 2.0  # a file's digest is remembered only if it was last written this long before hashing
_hashed: dict[str, tuple[tuple, str]] = {}  # absolute path -> (stat key, sha256) in this process
DIGEST_MEMO = ".sha256.json"  # in a run folder: file name -> [inode, size, mtime_ns, ctime_ns, sha256]


def sha256_file(path: Path, keep: bool = False) -> str:
    """Hex sha256 of a file's bytes, remembered in this process while the file keeps its device, inode,
    size, mtime and ctime. With `keep` also kept in its folder's DIGEST_MEMO for later processes, and
    taken from there, so that listing a run's checkpoints again (every stage and every command checks
    them: hundreds of GB at the paper profile's scale) does not read them again. Without `keep` (a load)
    only a digest this process read from the bytes counts, so that a file changed without its timestamps,
    as by bit rot, is never loaded. Only a file last written HASH_MEMO_AGE_S before it was hashed is
    remembered (as git's "racily clean" rule: a rewrite within the file system's timestamp granularity
    could keep its mtime)."""
    st = os.stat(path)
    key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    name = os.path.abspath(path)
    memo = Path(name).parent / DIGEST_MEMO
    hit = _hashed.get(name)
    if hit is not None and hit[0] == (st.st_dev, *key):
        return hit[1]
    kept = _read_digest_memo(memo).get(Path(name).name) if keep else None
    if isinstance(kept, list) and len(kept) == 5 and tuple(kept[:4]) == key and isinstance(kept[4], str):
        return kept[4]  # not into _hashed: that holds what this process read
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > HASH_MEMO_AGE_S * 1e9:
        _hashed[name] = ((st.st_dev, *key), digest)
        if keep:
            _remember_digest(memo, Path(name).name, [*key, digest])
    return digest


def _read_digest_memo(memo: Path) -> dict:
    """A folder's DIGEST_MEMO, or {} where it is missing or unreadable (it only saves reading files)."""
    try:
        got = json.loads(memo.read_text())
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def _remember_digest(memo: Path, name: str, entry: list) -> None:
    """Add `name`'s entry to the folder's DIGEST_MEMO and drop those of files no longer there. Best
    effort: a lost or stale entry (two processes writing at once keep one's) only means a file is read
    again; a folder that cannot be written keeps no memo."""
    kept = {k: v for k, v in _read_digest_memo(memo).items() if (memo.parent / k).exists()}
    kept[name] = entry
    with contextlib.suppress(OSError):  # a writer killed mid-write (its entry is missing: a later miss comes here)
        remove_stale_temps(memo.parent, memo.name)
    with contextlib.suppress(WriteError):
        atomic_write_bytes(memo, json.dumps(kept, sort_keys=True).encode())


def _rng_b64() -> str:
    return base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()


KEEP_OPTIMIZER = 2  # checkpoints (the newest) whose optimizer state is kept for a resume; older ones keep weights


def save_checkpoint(run_dir: Path, tag: str, model: Transformer, opt: torch.optim.Optimizer, meta: dict) -> Path:
    """Write ckpt_<tag>.pt (weights, RNG state), opt_<tag>.pt (AdamW's state, twice the weights) and then
    meta_<tag>.json carrying both sha256 (the sidecar commits the three); then drop the optimizer state
    of all but the KEEP_OPTIMIZER newest checkpoints (`drop_optimizer_states`)."""
    import io

    def saved(obj) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    data = saved({"model": model.state_dict(), "rng": torch.get_rng_state(), "step": meta["step"],
                  "tokens": meta["tokens"]})
    opt_data = saved(opt.state_dict())
    pt, opt_pt = run_dir / f"ckpt_{tag}.pt", run_dir / f"opt_{tag}.pt"
    meta = dict(meta, file=pt.name, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                optimizer={"file": opt_pt.name, "sha256": hashlib.sha256(opt_data).hexdigest(),
                           "bytes": len(opt_data)})
    sidecar = json.dumps(meta, indent=1, sort_keys=True).encode()
    atomic_write_files({pt: data, opt_pt: opt_data, run_dir / f"meta_{tag}.json": sidecar})
    drop_optimizer_states(run_dir, KEEP_OPTIMIZER)
    return pt


def drop_optimizer_states(run_dir: Path, keep: int) -> None:
    """Delete opt_<tag>.pt of every committed checkpoint but the `keep` with the most steps: a resume
    loads the newest valid checkpoint (the next newest if it is damaged), and the marks that the
    measurement reads need weights only. A deletion cut short leaves a file that the next one removes."""
    steps = {}
    for f in run_dir.glob("opt_*.pt"):
        tag = f.name[len("opt_"):-len(".pt")]
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # uncommitted: not ours to judge
            steps[tag] = int(read_meta(run_dir, tag)["step"])
    for tag in sorted(steps, key=steps.get, reverse=True)[keep:]:
        (run_dir / f"opt_{tag}.pt").unlink(missing_ok=True)


def checkpoint_problem(run_dir: Path, tag: str, config_hash: str, kept: bool = True) -> str | None:
    """Why checkpoint `tag` cannot be used, or None when it is valid. Its sha256 may come from the run
    folder's DIGEST_MEMO when `kept` (a listing), else from this process's reading of the bytes (a load:
    sha256_file)."""
    meta_path, pt = run_dir / f"meta_{tag}.json", run_dir / f"ckpt_{tag}.pt"
    if not meta_path.exists():
        return f"{pt.name}: no sidecar {meta_path.name} (an interrupted write)"
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{meta_path}: unreadable sidecar ({e})"
    if not isinstance(meta, dict):
        return f"{meta_path}: unreadable sidecar (expected a JSON object, got {type(meta).__name__})"
    if meta.get("config_hash") != config_hash:
        got = str(meta.get("config_hash"))[:10]
        return f"{pt}: written by another config (hash {got}, expected {config_hash[:10]})"
    if not pt.exists():
        return f"{pt}: missing although {meta_path.name} names it"
    if pt.stat().st_size != meta.get("bytes"):
        return f"{pt}: truncated ({pt.stat().st_size} bytes, sidecar says {meta.get('bytes')})"
    if sha256_file(pt, keep=kept) != meta.get("sha256"):
        return f"{pt}: checksum mismatch (a corrupted file, or a write interrupted between it and its sidecar)"
    return None


def checkpoint_tags(run_dir: Path) -> list[str]:
    """Tags of checkpoint files present (mark checkpoints and the resume snapshot)."""
    return sorted(p.name[len("ckpt_"):-len(".pt")] for p in run_dir.glob("ckpt_*.pt"))


def read_meta(run_dir: Path, tag: str) -> dict:
    return json.loads((run_dir / f"meta_{tag}.json").read_text())


def optimizer_problem(run_dir: Path, tag: str, kept: bool = True) -> str | None:
    """Why valid checkpoint `tag` cannot be resumed from (its optimizer state is gone or damaged), or None.
    Checkpoints written before opt_<tag>.pt existed hold the state in ckpt_<tag>.pt itself."""
    saved = read_meta(run_dir, tag).get("optimizer")
    if saved is None:
        return None
    opt_pt = run_dir / saved["file"]
    if not opt_pt.exists():
        return f"{opt_pt.name}: dropped (older checkpoints keep weights only)"
    if (opt_pt.stat().st_size != saved.get("bytes")
            or sha256_file(opt_pt, keep=kept) != saved.get("sha256")):
        return f"{opt_pt}: truncated or corrupted (size or sha256 differs from meta_{tag}.json)"
    return None


def load_checkpoint(run_dir: Path, tag: str, config_hash: str, map_location="cpu", optimizer: bool = True) -> dict:
    """A valid checkpoint's state, with its optimizer state when `optimizer` (refused without one: see
    optimizer_problem)."""
    problem = (checkpoint_problem(run_dir, tag, config_hash, kept=False)
               or (optimizer and optimizer_problem(run_dir, tag, kept=False)))
    if problem:
        raise CheckpointError(f"refusing checkpoint {problem}")
    state = torch.load(run_dir / f"ckpt_{tag}.pt", map_location=map_location, weights_only=True)
    if optimizer and "optimizer" not in state:
        state["optimizer"] = torch.load(run_dir / f"opt_{tag}.pt", map_location=map_location, weights_only=True)
    return state


def latest_valid_checkpoint(run_dir: Path, config_hash: str, warn=print, last_step: int | None = None
                            ) -> tuple[str, dict] | None:
    """(tag, meta) of the valid checkpoint with the most steps that a resume can load: one with its
    optimizer state, or the one at `last_step` (the run's end: no step follows, say after a lost DONE).
    Invalid ones are reported and skipped, as are damaged optimizer states (dropped ones silently:
    older checkpoints keep weights only)."""
    best = None
    for tag in checkpoint_tags(run_dir):
        problem = checkpoint_problem(run_dir, tag, config_hash)
        if problem:
            warn(f"warning: skipping checkpoint {problem}")
            continue
        meta = read_meta(run_dir, tag)
        if meta["step"] != last_step and (problem := optimizer_problem(run_dir, tag)):
            if "dropped" not in problem:
                warn(f"warning: not resuming from ckpt_{tag}.pt: {problem}")
            continue
        if best is None or meta["step"] > best[1]["step"]:
            best = (tag, meta)
    return best


# -----------------------------------------------------------------------------------------------
# the log


def append_log(path: Path, rows: list[dict]) -> None:
    """Append rows to log.csv; a failing write (disk full) cuts the file back to its previous end."""
    size = path.stat().st_size if path.exists() else 0
    new = size == 0
    try:
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if new:
                w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in LOG_FIELDS})
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        raise WriteError(f"{path}: could not append to the training log ({e.strerror or e}); it is kept as it "
                         "was. Free disk space, then rerun to resume from the last checkpoint.") from e


def trim_log(path: Path, step: int) -> None:
    """Keep the rows of log.csv up to optimizer step `step` (the checkpoint a run resumes from): rows
    written after it, and a partial last line, are dropped and logged again by the resumed run."""
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        text = f.read()  # newline="": the csv module's \r\n line ends are kept as they are
    keep = [line for _, s, line in log_rows(text) if s <= step]
    trimmed = ",".join(LOG_FIELDS) + "\r\n" + "".join(keep)
    if trimmed != text:
        atomic_write_text(path, trimmed)


def log_rows(text: str) -> list[tuple[int, int, str]]:
    """(line number, step, line) of each line of log.csv's `text` that is a whole row the trainer writes
    (its fields, a whole step, a line end), after the header: what a resume keeps (trim_log)."""
    out = []
    for k, line in enumerate(text.splitlines(keepends=True)[1:], 2):
        fields = next(csv.reader([line]), [])
        if line.endswith("\n") and len(fields) == len(LOG_FIELDS) and fields[0].isdigit():
            out.append((k, int(fields[0]), line))
    return out


def read_done(path: Path) -> dict | None:
    """The DONE summary of a run, or None when it is missing or unreadable (then the run is resumed)."""
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None


@torch.no_grad()
def evaluate(model: Transformer, tokens: np.ndarray, seq_len: int, batch_size: int, max_tokens: int,
             device: torch.device) -> float:
    """Mean next-token loss over the first `max_tokens` validation tokens (fixed windows)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.compiler.set_stance("force_eager"):  # parts compiled in place (compute.compile: blocks) run
        for x, y in eval_batches(tokens, seq_len, batch_size, max_tokens):  # eager: no inference graphs
            _, loss = model(x.to(device), y.to(device), reduction="none")
            total += loss.double().sum().item()
            count += y.numel()
    model.train(was_training)
    return total / max(count, 1)


# -----------------------------------------------------------------------------------------------
# training


def mfu(tok_s: float, flops_per_token: float, peak: float | None, world: int) -> float | None:
    """Model FLOPs utilisation of a global throughput `tok_s` over `world` devices of `peak` FLOP/s
    each (None when the peak is unknown)."""
    return tok_s * flops_per_token / (peak * world) if peak else None


def make_optimizer(model: Transformer, tcfg: TrainConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW over the model's muP parameter groups (`fused` kernels on CUDA)."""
    return torch.optim.AdamW(model.param_groups(tcfg.lr, tcfg.weight_decay), lr=tcfg.lr,
                             betas=(tcfg.beta1, tcfg.beta2), weight_decay=tcfg.weight_decay, fused=fused)


OPT_FLAGS = ("fused", "foreach")  # how AdamW runs, not what it learned: this process's choice wins


def load_optimizer(opt: torch.optim.Optimizer, saved: dict) -> None:
    """Load a saved optimizer state but keep `opt`'s fused/foreach flags (torch's load_state_dict takes
    the saved groups' flags: a run started on CPU and resumed on CUDA would train unfused). The flags are
    put into the saved groups before loading, so torch also places the step counters as fused AdamW needs
    them (float32 on the parameters' device)."""
    groups = [sg | {k: g[k] for k in OPT_FLAGS if k in g} for sg, g in zip(saved["param_groups"], opt.param_groups)]
    opt.load_state_dict(dict(saved, param_groups=groups))


def _corpus(tokens: TokenData) -> str:
    """The data.corpus setting the tokens were built from, for messages."""
    return tokens.meta().get("data", {}).get("corpus", "?")


def check_tokens(run: RunConfig, tokens: TokenData) -> None:
    """Refuse a corpus the run cannot train on (before any file of the run is written)."""
    mcfg = run.model
    if tokens.vocab_size != mcfg.vocab_size:
        raise SparsingLawError(f"run {run.name}: model vocab {mcfg.vocab_size} != tokenizer vocab {tokens.vocab_size}")
    for split, arr, need in (("train", tokens.train, mcfg.seq_len + 2), ("validation", tokens.val, mcfg.seq_len + 1)):
        if len(arr) < need:
            raise CorpusError(f"data.corpus={_corpus(tokens)}: the {split} split has "
                              f"{len(arr)} tokens, too few for run {run.name}'s windows of model.seq_len="
                              f"{mcfg.seq_len} (needs at least {need}); add text, raise data.max_mb, or lower "
                              "model.seq_len")


REPEAT_NOTE = 0.2  # passes_note: a run whose random windows repeat more than this share of their tokens


def passes_note(run: RunConfig, tokens: TokenData) -> str | None:
    """A note when more than REPEAT_NOTE of the tokens a run draws repeat text it has already seen
    (data.window_coverage: from ~0.46 passes over the train split on, as its windows are drawn with
    replacement), while the paper's runs see their data about once (so the laws' D is new text)."""
    n = len(tokens.train)
    passes = run.train.tokens / n
    seen, repeated = window_coverage(passes)
    if repeated <= REPEAT_NOTE:
        return None
    return (f"note: run {run.name} trains {run.train.tokens:,} tokens, {passes:.2f} passes over the {n:,} "
            f"training tokens of data.corpus={_corpus(tokens)}: its random windows (drawn with replacement) see "
            f"about {seen:.0%} of them, and about {repeated:.0%} of the tokens it draws repeat text it has seen "
            "(the paper's runs see their data about once); add text or raise data.max_mb for fewer repeats")


def short_split_note(what: str, field: str, want: int, n_val: int, seq_len: int) -> str | None:
    """A note when the validation split holds fewer tokens than `field` asks for: the scores are made on
    the whole windows it holds (data.eval_batches), fewer than asked."""
    got = min(want, n_val - 1) // seq_len * seq_len
    if got >= want // seq_len * seq_len:
        return None
    return (f"note: {what}: the validation split's {n_val:,} tokens hold {n_val - 1:,} next-token targets, fewer "
            f"than {field}={want:,}: scored on {got:,} (whole windows of model.seq_len={seq_len}); raise "
            f"data.val_fraction or data.max_mb, or lower {field}")


def resolved_compile(compile: bool | str, device_type: str) -> bool | str:
    """compute.compile as it applies on `device_type`: "auto" is True on CUDA and False elsewhere."""
    return device_type == "cuda" if compile == "auto" else compile


def compiled_forward(model: Transformer, wrapped: nn.Module, compile: bool | str, mode: str = "default") -> nn.Module:
    """What a training step calls: `wrapped` (the model, or its DDP wrapper) eager (compile False), compiled
    whole (True), or with each block and the head compiled in place ("blocks": one graph serves every block,
    so compiling hardly grows with depth; evaluate() runs them eager). `mode`: torch.compile's mode."""
    if not compile:
        return wrapped
    torch.compiler.reset()  # a fresh compile cache: one process trains many runs (torchrun, a reused worker),
    # and past recompile_limit (8) versions torch falls back to eager, with a warning only
    mode_ = None if mode == "default" else mode
    if compile == "blocks":
        for part in (*model.blocks, model.head):
            part.compile(mode=mode_)
        return wrapped
    return torch.compile(wrapped, mode=mode_)


def check_parallel(run: RunConfig, world: int, device_type: str, compile: bool | str, compile_mode: str) -> None:
    """Refuse a run that `world` torchrun processes cannot train (before any file of the run is written):
    every process needs a micro-batch each step; CUDA graphs cannot accumulate gradients over several
    micro-batches of a step (their output buffers are reused by the next forward; pytorch/pytorch#169545),
    nor be trusted under DDP (several processes: crashes and broken training with compiled DDP and CUDA
    graphs, pytorch/pytorch#128218, #140395)."""
    ga = run.train.grad_accum
    if ga < world:
        raise SparsingLawError(f"run {run.name}: train.grad_accum={ga} is below the {world} torchrun processes; each "
                               f"process takes whole micro-batches, so raise train.grad_accum to at least {world} "
                               "(a smaller train.batch_size keeps the batch) or start fewer processes")
    compiled = bool(resolved_compile(compile, device_type))
    if compiled and device_type == "cuda" and compile_mode == "reduce-overhead" and world > 1:
        raise SparsingLawError(f"run {run.name}: compute.compile_mode=reduce-overhead (CUDA graphs) with {world} "
                               "torchrun processes: CUDA graphs under DDP are known to fail in PyTorch (crashes, "
                               "pytorch/pytorch#128218, #140395); set compute.compile_mode: default (or "
                               "max-autotune-no-cudagraphs) for several processes")
    if compiled and device_type == "cuda" and compile_mode == "reduce-overhead" and ga > world:
        raise SparsingLawError(f"run {run.name}: compute.compile_mode=reduce-overhead (CUDA graphs) with "
                               f"train.grad_accum={ga} over {world} process(es): CUDA graphs overwrite the gradients "
                               "between the micro-batches of a step; set compute.compile_mode: default, or "
                               f"train.grad_accum to {world} (one micro-batch per process)")


def rank_shares(grad_accum: int, world: int) -> str:
    """'' when every rank takes as many micro-batches a step, else a note on the idle share."""
    if grad_accum % world == 0:
        return ""
    most, busy = -(-grad_accum // world), grad_accum % world
    return (f"{grad_accum} micro-batches a step over {world} processes: {busy} take {most}, the other {world - busy} "
            f"take {most - 1} and wait for them ({grad_accum / (world * most):.0%} of the devices' time is used)")


def corpus_differs(was, now: dict) -> bool:
    """A recorded corpus fingerprint `was` (a sidecar's or a cached record's) of another text than the
    fingerprint `now`; False when none was recorded (written before fingerprints were)."""
    return isinstance(was, dict) and "sha256" in was and was["sha256"] != now.get("sha256")


def restore_advice(was: dict, now: dict, verb: str, versions: str) -> str:
    """What to restore for a corpus mismatch: the environment for the default corpus (its text is the
    installed packages' source), else the corpus files."""
    if str(now.get("source", "")).startswith("python-env"):
        return f"restore the environment it was {verb} in ({versions})"
    return f"restore the corpus files it was {verb} on ({was.get('source', '?')})"


def check_corpus(run: RunConfig, meta: dict, meta_path: Path, corpus: dict) -> None:
    """Refuse to resume, measure or evaluate a checkpoint on another corpus than it was trained on
    (`corpus`: the fingerprint data.* gives now). The run key hashes the data.* settings, not the text
    they select: the default corpus is this Python environment's own source, so upgrading a package
    changes the text and its tokenizer under the same key, and token ids would no longer mean what the
    weights learned."""
    was = meta.get("corpus")
    if not corpus_differs(was, corpus):
        return

    def shown(f: dict) -> str:
        return f"{f.get('files', '?')} files, {f.get('bytes', '?')} bytes, sha256 {str(f.get('sha256'))[:12]}"

    fix = restore_advice(was, corpus, "trained", f"package versions under 'versions' in {meta_path.name}")
    raise CorpusError(f"run {run.name}: {meta_path} was trained on another corpus ({shown(was)}) than data.* "
                      f"gives now ({shown(corpus)}), with another tokenizer; {fix}, or delete {meta_path.parent} "
                      "to train the run again")


def session_summary(steps: int, tps: int, wall: float, fpt: float, peak: float | None, world: int,
                    first: float | None = None) -> str:
    """This session's time and throughput (evaluation and saving included) for the closing line; with
    `first`, the seconds its first step took (torch.compile's compilation happens there), also the
    throughput after that step."""
    if steps == 0:
        return "no step trained in this session (the newest checkpoint was the last step)"

    def rate(n: int, s: float) -> str:
        r = n * tps / max(s, 1e-9)
        util = mfu(r, fpt, peak, world)
        return f"{r:,.0f} tokens/s" + (f", MFU {util:.1%}" if util is not None else "")

    line = f"this session {wall:.1f} s, {rate(steps, wall)}"
    if first is not None and steps > 1:
        line += f" (first step {first:.1f} s; after it {rate(steps - 1, wall - first)})"
    return line


def train(run: RunConfig, data_cfg: DataConfig, run_dir: Path, tokens: TokenData, *, device: str = "auto",
          threads: int = 1, compile: bool | str = False, progress: bool = True, stop_after_step: int | None = None,
          fault: dict | None = None, prefetch: bool | None = None, compile_mode: str = "default") -> dict:
    """Train `run` into `run_dir`, resuming from its latest valid checkpoint; returns the DONE summary.

    `compile`: torch.compile the model (True, False, "auto": on CUDA only, or "blocks": each block and the
    head apart, which compiles faster on deep models and may run slower), in `compile_mode`
    ("reduce-overhead" adds CUDA graphs).
    `prefetch` draws batches in a background thread (default: on CUDA only; see Prefetcher).
    `stop_after_step` ends the loop early (for tests); `fault` injects failures (tests only):
    {"nan_at_step": s} or {"inf_at_step": s} makes the loss at step s NaN or infinite.
    """
    from .progress import progress_bar  # tqdm on stderr, or the parent's stage bar

    mcfg, tcfg = run.model, run.train
    config_hash = run.config_hash(data_cfg)
    done_path = run_dir / "DONE"
    done = read_done(done_path)
    if done is not None and done.get("config_hash") == config_hash:
        return done
    check_tokens(run, tokens)  # before anything is written
    ddp = init_distributed(device)  # checks the device and torchrun's variables first
    dev = setup_torch(device, threads)
    check_parallel(run, ddp.world, dev.type, compile, compile_mode)
    shares = rank_shares(tcfg.grad_accum, ddp.world)
    if ddp.main and shares:
        print(f"run {run.name}: {shares}", flush=True)
    if ddp.main and (note := passes_note(run, tokens)):
        print(note, flush=True)
    if ddp.main and (note := short_split_note(f"run {run.name}", "train.eval_tokens", tcfg.eval_tokens, len(tokens.val),
                                              run.model.seq_len)):
        print(note, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_yaml = yaml.safe_dump(run.identity(data_cfg) | {"name": run.name, "groups": run.groups}, sort_keys=False)
    if not (run_dir / "config.yaml").exists() and ddp.main:
        atomic_write_text(run_dir / "config.yaml", cfg_yaml)

    if dev.type == "cuda":
        dev = torch.device("cuda", ddp.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(tcfg.seed)  # the same initial weights on every rank
    model = Transformer(mcfg).to(dev)
    opt = make_optimizer(model, tcfg, fused=dev.type == "cuda")
    n_steps = total_steps(mcfg, tcfg)
    warmup, stable, decay = stage_steps(mcfg, tcfg)
    marks = set(checkpoint_steps(mcfg, tcfg))
    tps = tokens_per_step(mcfg, tcfg)  # global tokens per optimizer step

    step, kept = 0, "no checkpoint was saved yet"  # kept: what a divergence leaves to resume from
    last_loss = float("nan")  # the loss of the last step trained (from the sidecar after a resume)
    last_val = float("nan")  # the validation loss of the newest checkpoint (its sidecar's after a resume)
    window = (0.0, 0)  # (sum, count) of the step losses since the last logged row (from the sidecar too)
    found = latest_valid_checkpoint(run_dir, config_hash, warn=print if ddp.main else (lambda _m: None),
                                    last_step=n_steps)
    if found is not None:
        tag, meta = found
        check_corpus(run, meta, run_dir / f"meta_{tag}.json", tokens.fingerprint)
        state = load_checkpoint(run_dir, tag, config_hash, map_location=dev, optimizer=meta["step"] < n_steps)
        model.load_state_dict(state["model"])
        if meta["step"] < n_steps:
            load_optimizer(opt, state["optimizer"])
        torch.set_rng_state(state["rng"].cpu())
        step, last_loss = int(state["step"]), float(meta["loss"])
        last_val = float(meta["val_loss"]) if meta.get("val_loss") is not None else last_val
        saved = meta.get("log_window", {})  # absent in checkpoints written before it was kept
        window = (float(saved.get("loss_sum", 0.0)), int(saved.get("n", 0)))
        kept = f"the last good checkpoint {run_dir / f'ckpt_{tag}.pt'} (step {step}) is kept"
        if ddp.main:
            print(f"run {run.name}: resuming from step {step} of {n_steps} (ckpt_{tag}.pt)", flush=True)
    elif ddp.main and any(checkpoint_problem(run_dir, t, config_hash) is None for t in checkpoint_tags(run_dir)):
        print(f"note: run {run.name}: no checkpoint can be resumed (only the {KEEP_OPTIMIZER} newest keep their "
              "optimizer state, and theirs are missing or damaged); training again from step 0", flush=True)
    log_path = run_dir / "log.csv"
    if ddp.main:
        remove_stale_temps(run_dir)
        trim_log(log_path, step)  # rows after the checkpoint are logged again

    wrapped = model
    if ddp.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # no buffer sync at each forward: the only buffers are the rotary tables, constants equal on every
        # rank (torch >= 2.13 names it forward_sync_buffers; its broadcast_buffers warns as deprecated)
        ddp_args = inspect.signature(DistributedDataParallel).parameters
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in ddp_args else "broadcast_buffers"
        wrapped = DistributedDataParallel(model, device_ids=[ddp.local_rank] if dev.type == "cuda" else None,
                                          **{no_sync: False})
    compile = resolved_compile(compile, dev.type)
    fwd = compiled_forward(model, wrapped, compile, compile_mode)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext())
    base_meta = {"run": run.name, "config_hash": config_hash, "config": run.identity(data_cfg),
                 "corpus": tokens.fingerprint, "versions": versions(), "device": str(dev), "world_size": ddp.world}

    def meta_for(step_: int, loss: float, val_loss: float | None) -> dict:
        return base_meta | {
            "step": step_, "tokens": step_ * tps, "loss": loss, "val_loss": val_loss,
            "stage": "warmup" if step_ <= warmup else ("stable" if step_ <= warmup + stable else "decay"),
            "data_cursor": {"next_step": step_, "rule": "micro-batch m of step s is drawn by "
                            "data.get_batch with a generator seeded by train.batch_seed(seed, s, m); "
                            "under torchrun rank r takes the micro-batches m with m % world == r"},
            "rng": {"torch_cpu": _rng_b64()}, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # the losses of the steps since the last logged row: a resume logs that row as if never stopped
            "log_window": {"loss_sum": acc_loss, "n": acc_n},
        }

    def barrier() -> None:
        if ddp.world > 1:
            import torch.distributed as dist

            dist.barrier()

    bar = progress_bar(total=n_steps * tps, initial=step * tps, unit="tok", unit_scale=True, desc=run.name,
                       disable=not (progress and ddp.main), mininterval=2.0, dynamic_ncols=True)
    mine = list(range(ddp.rank, tcfg.grad_accum, ddp.world))  # this rank's micro-batches
    gen = torch.Generator()

    def draw(s: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen.manual_seed(batch_seed(tcfg.seed, s, micro))
        return get_batch(tokens.train, tcfg.batch_size, mcfg.seq_len, gen)

    peak = peak_flops(dev)
    fpt = model.flops_per_token()
    if prefetch is None:
        prefetch = dev.type == "cuda"
    pin = prefetch and pinned_memory_works(dev)  # unpinned, with a note, where pinning fails
    ahead = Prefetcher(draw, step, mine, pin=pin) if prefetch else None  # closed in finally
    next_batch = ahead.get if ahead is not None else draw
    # Step losses and gradient norms stay on the device and are read back (one sync) only at log,
    # checkpoint and resume steps; a non-finite one raises there, before anything of that step is logged
    # or saved (a non-finite gradient norm with a finite loss has already written NaN weights).
    pending: list[torch.Tensor] = []  # (loss, grad norm) of each step since the last read-back
    (acc_loss, acc_n), t_last, tok_last = window, time.perf_counter(), step * tps
    t_start, step_start, first_s = t_last, step, None

    def read_back() -> None:
        nonlocal last_loss, acc_loss, acc_n
        vals = torch.stack(pending).tolist() if pending else []
        first = step - len(vals) + 1
        pending.clear()
        for k, (v, norm) in enumerate(vals):
            what = (f"training loss is {v}" if not math.isfinite(v) else
                    f"gradient norm is {norm} (loss {v:.4f})" if not math.isfinite(norm) else None)
            if what:
                raise TrainingDiverged(f"run {run.name}: {what} at step {first + k}; stopped without saving: "
                                       f"{kept}. Lower train.lr or check the data.")
        if vals:
            last_loss = vals[-1][0]
            acc_loss += sum(v for v, _ in vals)
            acc_n += len(vals)

    model.train()
    try:
        while step < n_steps:
            if stop_after_step is not None and step >= stop_after_step:
                read_back()
                return {"stopped_at": step}
            f = lr_factor(step, warmup, stable, decay, tcfg.decay_min_lr_frac)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
            step_loss = torch.zeros((), device=dev, dtype=torch.float64)
            for i, micro in enumerate(mine):
                x, y = next_batch(step, micro)
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                # all-reduce gradients only after the last micro-batch of the step
                sync = nullcontext() if (ddp.world == 1 or i == len(mine) - 1) else wrapped.no_sync()
                with sync:
                    with autocast:  # the forward alone: backward ops run in the dtypes their forward chose
                        _, loss, ce = fwd(x, y, return_logits=False, return_ce=True)
                    # DDP averages over ranks, so each rank scales by world / grad_accum: the sum over all
                    # micro-batches / grad_accum, exactly as in one process
                    (loss * (ddp.world / tcfg.grad_accum)).backward()
                step_loss += ce.detach().double() / tcfg.grad_accum  # logged: an MoE's aux term left out
            if ddp.world > 1:
                import torch.distributed as dist

                dist.all_reduce(step_loss)
            for key, bad in (("nan_at_step", float("nan")), ("inf_at_step", float("inf"))):
                if fault and fault.get(key) == step + 1:
                    step_loss = step_loss + bad
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            pending.append(torch.stack((step_loss, norm.double())))
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(tps)
            if first_s is None:  # the first step's time, compilation in it: one more sync a session
                if dev.type == "cuda":  # (the losses are read back at their usual steps: sums in the same order)
                    torch.cuda.synchronize(dev)
                first_s = time.perf_counter() - t_start
            mark = step in marks or step == n_steps
            logged = step % tcfg.log_every == 0 or step == n_steps
            if not (mark or logged or step % tcfg.resume_every == 0):
                continue
            read_back()  # the one device sync of these steps
            rows = []
            if logged:
                now = time.perf_counter()
                tok_s = (step * tps - tok_last) / max(now - t_last, 1e-9)
                util = f"{mfu(tok_s, fpt, peak, ddp.world):.4f}" if peak else ""
                rows.append({"step": step, "tokens": step * tps, "split": "train",
                             "loss": f"{acc_loss / acc_n:.6f}", "lr": f"{tcfg.lr * f:.6g}", "tok_s": f"{tok_s:.1f}",
                             "mfu": util})
                bar.set_postfix(loss=f"{acc_loss / acc_n:.3f}", **({"mfu": util} if peak else {}))
                acc_loss, acc_n, t_last, tok_last = 0.0, 0, now, step * tps
            # the log is written before the checkpoint: a resume trims rows past its checkpoint (trim_log)
            if mark:
                if ddp.main:
                    val = last_val = evaluate(model, tokens.val, mcfg.seq_len, tcfg.batch_size, tcfg.eval_tokens,
                                              dev)
                    rows.append({"step": step, "tokens": step * tps, "split": "val", "loss": f"{val:.6f}",
                                 "lr": f"{tcfg.lr * f:.6g}", "tok_s": "", "mfu": ""})
                    append_log(log_path, rows)
                    pt = save_checkpoint(run_dir, f"{step:07d}", model, opt, meta_for(step, last_loss, val))
                    kept = f"the last good checkpoint {pt} (step {step}) is kept"
                barrier()
                t_last, tok_last = time.perf_counter(), step * tps  # evaluation and saving are not training
            else:
                if rows and ddp.main:
                    append_log(log_path, rows)
                if step % tcfg.resume_every == 0:
                    if ddp.main:
                        pt = save_checkpoint(run_dir, "last", model, opt, meta_for(step, last_loss, None))
                        kept = f"the last good checkpoint {pt} (step {step}) is kept"
                    barrier()
                    t_last, tok_last = time.perf_counter(), step * tps
    finally:
        bar.close()
        if ahead is not None:
            ahead.close()
    if not ddp.main:
        barrier()  # rank 0 writes DONE
        return json.loads(done_path.read_text())
    wall = time.perf_counter() - t_start
    for stale in ("ckpt_last.pt", "opt_last.pt", "meta_last.json"):
        (run_dir / stale).unlink(missing_ok=True)
    drop_optimizer_states(run_dir, 0)  # before DONE: a run killed now resumes from its final checkpoint,
    # which needs no optimizer state (no step follows); after it, a kill would leave them for good
    done = {"run": run.name, "config_hash": config_hash, "steps": n_steps, "tokens": n_steps * tps,
            "final_loss": last_loss, "checkpoints": sorted(marks | {n_steps}),
            "non_embedding_params": model.num_params(non_embedding=True),
            "flops_per_token": fpt, "versions": versions(),
            # the session that finished the run (a resumed run's last): what its time went to, on which device
            "session": {"steps": n_steps - step_start, "wall_s": round(wall, 3), "device": str(dev),
                        "world_size": ddp.world, "compiled": bool(compile), "compile_mode": compile_mode,
                        "compile_scope": ("blocks" if compile == "blocks" else "model") if compile else None,
                        "first_step_s": None if first_s is None else round(first_s, 3)}}
    atomic_write_text(done_path, json.dumps(done, indent=1))
    print(f"{run.name}: done, {n_steps * tps:,} tokens, validation loss {last_val:.4f} (last step's training "
          f"loss {last_loss:.4f}); "
          + session_summary(n_steps - step_start, tps, wall, fpt, peak, ddp.world, first_s)
          + f" on {dev}", flush=True)
    barrier()
    return done
