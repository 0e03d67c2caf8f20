"""Profile configuration: dataclasses, YAML loading and validation.

A profile (configs/<name>.yaml) is the only source of numbers: the corpus, the model grid, the token
budgets, the checkpoint marks and the measurement settings. It is loaded into the dataclasses below
and validated *before any work*; every error names the file and the field (``runs[3].model.d_model``)
and says what was expected. Code never branches on a profile's name.

Run identity: a run is keyed by a hash of its resolved config (data + model + train) plus
``SCHEMA_VERSION``, which is bumped whenever code changes what a config means; the compute settings
(threads, device, compile) are not part of the identity.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import multiprocessing as mp
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .model import ACTIVATIONS, ModelConfig

SCHEMA_VERSION = 1  # bump when code changes the meaning of a config (invalidates cached runs)


class SparsingLawError(Exception):
    """An error the user can fix; the CLI prints its message (no traceback unless --debug)."""


class ConfigError(SparsingLawError, ValueError):
    """A profile, run or override that cannot be used; the message names the field and the fix."""


# -----------------------------------------------------------------------------------------------
# dataclasses


@dataclass
class DataConfig:
    corpus: str = "python-env"  # "python-env" (offline default) or a path: .txt, folder, .jsonl, .parquet
    packages: list[str] = field(default_factory=lambda: ["stdlib", "torch", "numpy", "scipy"])  # python-env only
    max_mb: float = 30.0  # cap on corpus text used (MB of UTF-8); files are taken in a fixed hashed order
    val_fraction: float = 0.02  # share of documents held out for validation (split by document)
    vocab_size: int = 4096  # byte-level BPE vocabulary size (tokens)
    tokenizer_mb: float = 10.0  # MB of training text used to learn the BPE merges
    text_field: str = "text"  # .jsonl field / .parquet column holding the text (user corpora)
    seed: int = 0  # seed of the file order and train/validation split


@dataclass
class TrainConfig:
    tokens: int = 2_000_000  # total training tokens (warmup + stable + decay)
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 0.01  # peak learning rate (hidden matrices get lr / width_mult, muP)
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not on norm weights)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # global gradient-norm clip
    warmup_frac: float = 0.01  # share of steps with linear warmup
    decay_frac: float = 0.0  # share of steps in the final exponential decay (0: no decay stage)
    decay_min_lr_frac: float = 0.1  # lr at the very end of the decay, as a fraction of the peak
    checkpoints: int = 24  # number of checkpoint marks, geometric between first_checkpoint and stable end
    first_checkpoint_frac: float = 0.05  # first mark as a share of the tokens at the stable stage's end
    checkpoint_tokens: list[int] = field(default_factory=list)  # explicit marks (tokens); overrides the grid
    eval_tokens: int = 32_768  # validation tokens scored at every checkpoint
    log_every: int = 20  # optimizer steps between train-loss rows in log.csv
    resume_every: int = 200  # optimizer steps between resume snapshots (ckpt_last.pt)
    seed: int = 0  # seed of the initial weights and of the batch order


@dataclass
class ComputeConfig:
    """How to run, not what to run: not part of any run's identity."""

    device: str = "auto"  # "auto" (cuda if available), "cpu" or "cuda"
    threads: int = 1  # torch threads per process on CPU (1 avoids OpenMP spin-wait stalls)
    compile: bool | str = "auto"  # torch.compile the model: true, false, "auto" (on CUDA only), or "blocks" (each
    # block and the head apart: compiling takes about as long at any depth, steps may run slower)
    compile_mode: str = "default"  # default, reduce-overhead (CUDA graphs: see train.check_parallel), or
    # max-autotune-no-cudagraphs
    jobs: int = 0  # parallel processes (train, measure, sparse inference); 0 = one per usable CPU core


@dataclass
class SparsityConfig:
    """How activation sparsity is measured on every checkpoint (paper Section 3, Algorithm 1)."""

    p: list[float] = field(default_factory=lambda: [1.0])  # PPL-p% levels in percent; must include 1
    eval_tokens: int = 32_768  # validation tokens for thresholds and PPL (the authors: first 10 batches)
    batch_size: int = 16  # sequences per evaluation batch
    n_grid: int = 65_536  # candidate thresholds per layer (authors' code)
    tol: float = 1e-3  # Algorithm 1: stop when the bracket on c is this narrow
    search: str = "bisect"  # fast search on c: "bisect" (the reference's probes) or "secant" (fewer passes)
    n_last: int = 5  # last stable-stage checkpoints searched jointly for the run's one c
    impl: str = "fast"  # "fast" or "reference" (same answer, far slower)
    dead_freq: float = 0.001  # a neuron active on fewer than this share of tokens is dead
    pareto_runs: list[str] = field(default_factory=list)  # runs whose final checkpoint gets Pareto sweeps
    cett_sweep: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5])  # c values
    topk_fracs: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.5, 0.7])  # k / d_ff
    fat_eps: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])  # eps on |act(W_gate x)|


@dataclass
class InferenceConfig:
    """Sparse inference on held-out text (paper Table 1): fixed thresholds from PPL-p% applied to new text.

    Not part of any run's identity, nor of the measurement's (measure.measure_key hashes only `sparsity`
    settings).
    """

    p: list[float] = field(default_factory=lambda: [1.0, 5.0, 10.0])  # PPL-p% levels in percent (Table 1)
    heldout_tokens: int = 16_384  # held-out tokens, windows from the end of the validation split
    group: str = "scale"  # the runs evaluated: those with this group


@dataclass
class RunConfig:
    name: str  # unique within the profile; used in file names
    groups: list[str]  # analyses the run feeds: "scale", "width_depth", ...
    model: ModelConfig
    train: TrainConfig

    def identity(self, data: DataConfig) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "data": dataclasses.asdict(data),
            "model": dataclasses.asdict(self.model),
            "train": dataclasses.asdict(self.train),
        }

    def config_hash(self, data: DataConfig) -> str:
        return stable_hash(self.identity(data))

    def key(self, data: DataConfig) -> str:
        return f"{self.name}-{self.config_hash(data)[:10]}"


@dataclass
class ProfileConfig:
    name: str  # profile name (file stem); used only in output paths
    description: str
    data: DataConfig
    compute: ComputeConfig
    runs: list[RunConfig]
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)  # measurement settings
    inference: InferenceConfig = field(default_factory=InferenceConfig)  # sparse-inference settings (Table 1)
    fit: dict = field(default_factory=dict)  # law-fit settings (validated by laws.py)
    path: str = ""  # the YAML file it was loaded from
    overrides: list[str] = field(default_factory=list)  # --set overrides applied on top of the file

    def run(self, name: str) -> RunConfig:
        for r in self.runs:
            if r.name == name:
                return r
        known = ", ".join(r.name for r in self.runs)
        raise ConfigError(f"{self.path}: no run named {name!r}; this profile has: {known}")

    def part_hash(self, *parts: str) -> str:
        """sha256 of the named parts of the profile ("data", "runs", "sparsity", "inference", "fit"): what a
        table made from those parts alone records (STAGE_PARTS), so a change elsewhere (a fit setting,
        say) leaves it current."""
        whole = {"data": dataclasses.asdict(self.data), "runs": [r.identity(self.data) for r in self.runs],
                 "sparsity": dataclasses.asdict(self.sparsity), "inference": dataclasses.asdict(self.inference),
                 "fit": self.fit}
        unknown = [p for p in parts if p not in whole]
        if unknown:
            raise ValueError(f"unknown profile part(s) {unknown}; known: {list(whole)}")
        return stable_hash({p: whole[p] for p in parts})

    def config_hash(self) -> str:
        """The profile's hash recorded in every sidecar: data, runs, sparsity and fit settings (the
        sparse-inference table records its inference settings itself)."""
        return self.part_hash("data", "runs", "sparsity", "fit")


# the parts of a profile a results table of each stage is made from (ProfileConfig.part_hash): its
# sidecar records their hash as stage_hash, and its reader checks that alone (runs.current)
STAGE_PARTS = {"train": ("data", "runs"), "measure": ("data", "runs", "sparsity"),
               "inference": ("data", "runs", "sparsity", "inference")}


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# -----------------------------------------------------------------------------------------------
# checkpoint marks and schedule lengths (pure functions of TrainConfig + ModelConfig)


def tokens_per_step(model: ModelConfig, train: TrainConfig) -> int:
    return train.batch_size * train.grad_accum * model.seq_len


def total_steps(model: ModelConfig, train: TrainConfig) -> int:
    return max(1, math.ceil(train.tokens / tokens_per_step(model, train)))


def stage_steps(model: ModelConfig, train: TrainConfig) -> tuple[int, int, int]:
    """(warmup, stable, decay) optimizer steps of the WSD schedule."""
    n = total_steps(model, train)
    warmup = int(round(train.warmup_frac * n))
    decay = int(round(train.decay_frac * n))
    return warmup, n - warmup - decay, decay


def checkpoint_steps(model: ModelConfig, train: TrainConfig) -> list[int]:
    """Optimizer steps after which a checkpoint is kept: the first step whose tokens reach each mark.

    Marks are geometric between first_checkpoint_frac of the stable-stage end and the stable-stage
    end itself (so every mark is a pre-decay checkpoint, as the laws require), unless explicit
    checkpoint_tokens are given.
    """
    tps = tokens_per_step(model, train)
    warmup, stable, _ = stage_steps(model, train)
    stable_end = warmup + stable
    if train.checkpoint_tokens:
        marks = sorted(train.checkpoint_tokens)
    else:
        hi = stable_end * tps
        lo = train.first_checkpoint_frac * hi
        n = train.checkpoints
        # the last mark is hi itself: lo * (hi / lo) ** 1.0 may round one ulp above it, and its ceil
        # would then fall one step past the stable stage
        marks = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n - 1)] + [hi]
    steps = sorted({max(1, math.ceil(m / tps)) for m in marks})
    return [s for s in steps if s <= stable_end]


# -----------------------------------------------------------------------------------------------
# loading and validation


def _build(cls, raw: Any, where: str):
    """Dataclass from a mapping, rejecting unknown fields and wrong types with the field's path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(raw).__name__} {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field; expected one of: {', '.join(fields)}")
    kwargs = {}
    defaults = cls()
    for name, value in raw.items():
        kwargs[name] = _coerce(value, getattr(defaults, name), f"{where}.{name}", str(fields[name].type))
    return cls(**kwargs)


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads 3e-3 and 1e6 (no dot) as strings: take them as the numbers they spell."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if math.isfinite(number):
            return number
    return value


def _coerce(value: Any, default: Any, where: str, typ: str = "") -> Any:
    if default == "auto" and isinstance(value, bool):  # fields defaulting to "auto" also take true/false
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int | float):
        value = _yaml_number(value)
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .inf / .nan
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if typ in ("list[int]", "list[float]"):  # [1e-3] reads as ['1e-3'] in YAML 1.1
            value = [_yaml_number(v) for v in value]
            if typ == "list[int]":
                value = [int(v) if isinstance(v, float) and v.is_integer() else v for v in value]
            for i, v in enumerate(value):  # true/yes and .inf/.nan are no numbers here either
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ConfigError(f"{where}[{i}]: expected a finite number, got {v!r}")
        return list(value)
    return value


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


def validate_model_fields(m: ModelConfig, where: str) -> None:
    """The checks of one field at a time (those of a shared model section, whose fields runs may override)."""
    for f in ("vocab_size", "d_model", "n_layers", "head_dim", "d_ff", "seq_len", "dim_model_base"):
        _check(getattr(m, f) > 0, f"{where}.{f}", f"must be a positive integer, got {getattr(m, f)}")
    _check(m.head_dim % 2 == 0, f"{where}.head_dim", f"must be even for rotary embeddings, got {m.head_dim}")
    _check(m.activation in ACTIVATIONS, f"{where}.activation",
           f"unknown activation {m.activation!r}; expected one of: {', '.join(sorted(ACTIVATIONS))}")
    for f in ("rope_theta", "norm_eps", "scale_emb", "scale_depth", "init_std"):
        _check(getattr(m, f) > 0, f"{where}.{f}", f"must be > 0, got {getattr(m, f)}")
    _check(isinstance(m.n_experts, int) and m.n_experts >= 0, f"{where}.n_experts",
           f"must be an integer >= 0 (0 = dense FFN), got {m.n_experts!r}")
    _check(m.aux_loss_coef >= 0, f"{where}.aux_loss_coef", f"must be >= 0, got {m.aux_loss_coef}")


def validate_model(m: ModelConfig, where: str) -> None:
    validate_model_fields(m, where)
    _check(m.d_model % m.head_dim == 0, f"{where}.head_dim",
           f"must divide d_model={m.d_model}, got {m.head_dim}")
    if m.n_experts:
        _check(m.d_ff % m.n_experts == 0, f"{where}.n_experts",
               f"must divide d_ff={m.d_ff} (experts of equal width), got {m.n_experts}")
        _check(isinstance(m.top_k, int) and 1 <= m.top_k <= m.n_experts, f"{where}.top_k",
               f"must be an integer in [1, n_experts={m.n_experts}], got {m.top_k!r}")


def validate_train_fields(t: TrainConfig, where: str) -> None:
    """The checks of one field at a time (those of a shared train section, whose fields runs may override)."""
    for f in ("tokens", "batch_size", "grad_accum", "checkpoints", "eval_tokens", "log_every", "resume_every"):
        _check(getattr(t, f) > 0, f"{where}.{f}", f"must be a positive integer, got {getattr(t, f)}")
    _check(0 <= t.seed < 2**64, f"{where}.seed", f"must be an integer in [0, 2**64) (torch.manual_seed), got {t.seed}")
    _check(t.lr > 0, f"{where}.lr", f"must be > 0, got {t.lr}")
    _check(t.weight_decay >= 0, f"{where}.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _check(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, f"{where}.beta1/beta2", "must lie in [0, 1)")
    _check(t.grad_clip > 0, f"{where}.grad_clip", f"must be > 0, got {t.grad_clip}")
    _check(0 <= t.warmup_frac < 1, f"{where}.warmup_frac", f"must lie in [0, 1), got {t.warmup_frac}")
    _check(0 <= t.decay_frac < 1, f"{where}.decay_frac", f"must lie in [0, 1), got {t.decay_frac}")
    _check(t.warmup_frac + t.decay_frac < 1, f"{where}.decay_frac",
           "warmup_frac + decay_frac must leave a stable stage (< 1)")
    _check(0 < t.decay_min_lr_frac <= 1, f"{where}.decay_min_lr_frac", "must lie in (0, 1]")
    _check(0 < t.first_checkpoint_frac <= 1, f"{where}.first_checkpoint_frac", "must lie in (0, 1]")


def validate_train(t: TrainConfig, m: ModelConfig, where: str) -> None:
    validate_train_fields(t, where)
    _check(t.eval_tokens >= m.seq_len, f"{where}.eval_tokens",
           f"must be at least one window of model.seq_len={m.seq_len} tokens, got {t.eval_tokens}")
    n = total_steps(m, t)
    _check(n >= 2, f"{where}.tokens", f"{t.tokens} tokens is under two optimizer steps of "
           f"{tokens_per_step(m, t)} tokens; raise tokens or lower batch_size/seq_len")
    warmup, stable, _ = stage_steps(m, t)
    stable_end_tokens = (warmup + stable) * tokens_per_step(m, t)
    for mark in t.checkpoint_tokens:
        _check(isinstance(mark, int) and not isinstance(mark, bool) and 0 < mark <= stable_end_tokens,
               f"{where}.checkpoint_tokens",
               f"each mark must be an integer in (0, {stable_end_tokens}] (the stable-stage end), got {mark!r}")
    if t.checkpoint_tokens:
        _check_explicit_marks(t, warmup, tokens_per_step(m, t), f"{where}.checkpoint_tokens")
    else:
        first_step = max(1, math.ceil(t.first_checkpoint_frac * stable_end_tokens / tokens_per_step(m, t)))
        _check(first_step > warmup, f"{where}.first_checkpoint_frac",
               f"the first checkpoint (step {first_step}) must come after the warmup ({warmup} steps) so "
               "that every checkpoint is in the stable stage; raise first_checkpoint_frac")
        got = len(checkpoint_steps(m, t))
        _check(got == t.checkpoints, f"{where}.checkpoints",
               f"{t.checkpoints} marks collapse to {got} distinct optimizer steps; lower checkpoints, "
               "raise first_checkpoint_frac or train more tokens")


def _check_explicit_marks(t: TrainConfig, warmup: int, tps: int, where: str) -> None:
    """Explicit marks get the grid's checks: one optimizer step each, and none in the warmup."""
    step_of: dict[int, int] = {}
    for mark in sorted(t.checkpoint_tokens):
        step = math.ceil(mark / tps)
        _check(step not in step_of, where, f"marks {step_of.get(step)} and {mark} fall in the same optimizer step "
               f"({step}, of {tps} tokens); keep one or space them at least {tps} tokens apart")
        step_of[step] = mark
    first = min(step_of)
    _check(first > warmup, where, f"the first checkpoint ({step_of[first]} tokens, step {first}) must come after "
           f"the warmup ({warmup} steps, {warmup * tps} tokens) so that every checkpoint is in the stable stage; "
           f"raise the first mark above {warmup * tps} tokens")


def validate_data(d: DataConfig, where: str) -> None:
    _check(bool(d.corpus.strip()), f"{where}.corpus", "is empty; expected python-env or the path of a .txt file, "
           "folder, .jsonl or .parquet file")
    _check(d.max_mb > 0, f"{where}.max_mb", f"must be > 0, got {d.max_mb}")
    _check(0 < d.val_fraction < 0.5, f"{where}.val_fraction", f"must lie in (0, 0.5), got {d.val_fraction}")
    _check(256 < d.vocab_size <= 2**32, f"{where}.vocab_size",
           f"must lie in (256, 2**32]: above the 256 byte tokens of byte-level BPE, token ids in uint32; "
           f"got {d.vocab_size}")
    _check(d.tokenizer_mb > 0, f"{where}.tokenizer_mb", f"must be > 0, got {d.tokenizer_mb}")
    _check(all(isinstance(p, str) and p for p in d.packages), f"{where}.packages",
           f"expected a list of package names (e.g. [stdlib, torch]), got {d.packages!r}")
    _check(bool(d.packages) or d.corpus != "python-env", f"{where}.packages",
           "the python-env corpus needs at least one package (e.g. stdlib)")


def validate_sparsity(s: SparsityConfig, run_names: list[str], where: str) -> None:
    _check(bool(s.p) and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in s.p),
           f"{where}.p",
           f"expected a list of positive percentages, got {s.p!r}")
    _check(1 in s.p or 1.0 in s.p, f"{where}.p", f"must include 1 (PPL-1% is the paper's main setting), got {s.p}")
    for f in ("eval_tokens", "batch_size", "n_grid", "n_last"):
        _check(getattr(s, f) > 0, f"{where}.{f}", f"must be a positive integer, got {getattr(s, f)}")
    _check(s.n_grid >= 2, f"{where}.n_grid",
           f"must be at least 2 (candidate thresholds from min n_i to the 0.99 quantile), got {s.n_grid}")
    _check(0 < s.tol < 0.5, f"{where}.tol", f"must lie in (0, 0.5), got {s.tol}")
    _check(s.search in ("bisect", "secant"), f"{where}.search", f"expected bisect or secant, got {s.search!r}")
    _check(s.impl in ("fast", "reference"), f"{where}.impl", f"expected fast or reference, got {s.impl!r}")
    _check(0 < s.dead_freq < 1, f"{where}.dead_freq", f"must lie in (0, 1), got {s.dead_freq}")
    for name in s.pareto_runs:
        _check(name in run_names, f"{where}.pareto_runs", f"no run named {name!r}; runs: {', '.join(run_names)}")
    _check(all(isinstance(c, int | float) and 0 <= c <= 1 for c in s.cett_sweep), f"{where}.cett_sweep",
           "expected CETT values in [0, 1]")
    _check(all(isinstance(k, int | float) and 0 < k <= 1 for k in s.topk_fracs), f"{where}.topk_fracs",
           "expected fractions of d_ff in (0, 1]")
    _check(all(isinstance(e, int | float) and e > 0 for e in s.fat_eps), f"{where}.fat_eps", "expected eps > 0")


GROUPS = ("scale", "seeds", "width_depth", "moe")  # the analyses' run groups (moe: the MoE baselines' label)


def validate_inference(inf: InferenceConfig, runs: list[RunConfig], where: str) -> None:
    _check(bool(inf.p) and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in inf.p),
           f"{where}.p", f"expected a non-empty list of positive percentages, got {inf.p!r}")
    groups = sorted({g for r in runs for g in r.groups})
    _check(inf.group in groups, f"{where}.group",
           f"no run has group {inf.group!r}; groups of this profile: {', '.join(groups) or '(none)'}")
    longest = max(r.model.seq_len for r in runs)
    _check(inf.heldout_tokens >= longest, f"{where}.heldout_tokens",
           f"must be at least one window of the longest model.seq_len={longest} tokens, got {inf.heldout_tokens}")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def validate_compute(c: ComputeConfig, where: str) -> None:
    _check(c.device in ("auto", "cpu", "cuda"), f"{where}.device", f"expected auto, cpu or cuda, got {c.device!r}")
    _check(c.threads >= 1, f"{where}.threads", f"must be >= 1, got {c.threads}")
    _check(c.compile in (True, False, "auto", "blocks"), f"{where}.compile",
           f"expected true, false, auto (on CUDA only) or blocks (each block apart), got {c.compile!r}")
    _check(c.compile_mode in COMPILE_MODES, f"{where}.compile_mode",
           f"expected one of {', '.join(COMPILE_MODES)}, got {c.compile_mode!r}")
    _check(c.jobs >= 0, f"{where}.jobs", f"must be >= 0 (0 = one per core), got {c.jobs}")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    out.update(over or {})
    return out


def parse_profile(raw: Any, path: str, name: str) -> ProfileConfig:
    """Validate a loaded YAML mapping into a ProfileConfig (errors name `path` and the field)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    top = {"description", "data", "compute", "model", "train", "runs", "sparsity", "inference", "fit"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown top-level field; expected one of: {', '.join(sorted(top))}")
    data = _build(DataConfig, raw.get("data"), f"{path}: data")
    validate_data(data, f"{path}: data")
    compute = _build(ComputeConfig, raw.get("compute"), f"{path}: compute")
    validate_compute(compute, f"{path}: compute")
    model_defaults = raw.get("model") or {}
    train_defaults = raw.get("train") or {}
    for sect, val in (("model", model_defaults), ("train", train_defaults)):
        if not isinstance(val, dict):
            raise ConfigError(f"{path}: {sect}: expected a mapping of fields, got {val!r}")
    if "vocab_size" in model_defaults:
        raise ConfigError(f"{path}: model.vocab_size: set it in data.vocab_size (the tokenizer decides it)")
    # the shared sections field by field: a bad value there is refused even where every run sets its own
    validate_model_fields(_build(ModelConfig, {**model_defaults, "vocab_size": data.vocab_size}, f"{path}: model"),
                          f"{path}: model")
    validate_train_fields(_build(TrainConfig, train_defaults, f"{path}: train"), f"{path}: train")
    runs_raw = raw.get("runs")
    if not isinstance(runs_raw, list) or not runs_raw:
        raise ConfigError(f"{path}: runs: expected a non-empty list of runs (name, groups, model, train)")
    runs, seen = [], set()
    for i, r in enumerate(runs_raw):
        where = f"{path}: runs[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(f"{where}: expected a mapping with name, groups, model, train; got {r!r}")
        unknown = sorted(set(r) - {"name", "groups", "model", "train"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown field; expected name, groups, model, train")
        rname = r.get("name")
        if not isinstance(rname, str) or not rname or not all(ch.isalnum() or ch in "-_." for ch in rname):
            raise ConfigError(f"{where}.name: expected a non-empty name of letters, digits, '-', '_', '.'; "
                              f"got {rname!r}")
        if rname in seen:
            raise ConfigError(f"{where}.name: duplicate run name {rname!r}")
        seen.add(rname)
        groups = r.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ConfigError(f"{where}.groups: expected a list of names, got {groups!r}")
        for sect in ("model", "train"):
            if r.get(sect) is not None and not isinstance(r[sect], dict):  # `model:` alone is {}
                raise ConfigError(f"{where}.{sect}: expected a mapping of fields, got {r.get(sect)!r}")
        mraw = _merge(model_defaults, r.get("model") or {})
        if "vocab_size" in mraw:
            raise ConfigError(f"{where}.model.vocab_size: set it in data.vocab_size (the tokenizer decides it)")
        mraw["vocab_size"] = data.vocab_size
        model = _build(ModelConfig, mraw, f"{where}.model")
        validate_model(model, f"{where}.model")
        train = _build(TrainConfig, _merge(train_defaults, r.get("train") or {}), f"{where}.train")
        validate_train(train, model, f"{where}.train")
        runs.append(RunConfig(name=rname, groups=list(groups), model=model, train=train))
    desc = raw.get("description", "")
    if not isinstance(desc, str):
        raise ConfigError(f"{path}: description: expected a string, got {desc!r}")
    if raw.get("fit") is not None and not isinstance(raw.get("fit"), dict):
        raise ConfigError(f"{path}: fit: expected a mapping of fields, got {raw.get('fit')!r}")
    forms = (raw.get("fit") or {}).get("activation_forms")  # its values: analysis.activation_forms
    if forms is not None and not isinstance(forms, dict):
        raise ConfigError(f"{path}: fit.activation_forms: expected a mapping activation: form, got {forms!r}")
    for act in forms or {}:  # a misspelled activation would leave the one meant with its default law
        if act not in ACTIVATIONS:
            close = difflib.get_close_matches(str(act), list(ACTIVATIONS), n=1)
            raise ConfigError(f"{path}: fit.activation_forms: unknown activation {act!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; expected one of: {', '.join(sorted(ACTIVATIONS))}")
    sparsity = _build(SparsityConfig, raw.get("sparsity"), f"{path}: sparsity")
    validate_sparsity(sparsity, [r.name for r in runs], f"{path}: sparsity")
    longest = max(r.model.seq_len for r in runs)
    _check(sparsity.eval_tokens >= longest, f"{path}: sparsity.eval_tokens",
           f"must be at least one window of the longest model.seq_len={longest} tokens, got {sparsity.eval_tokens}")
    inference = _build(InferenceConfig, raw.get("inference"), f"{path}: inference")
    known = list(dict.fromkeys((*GROUPS, inference.group)))
    for i, r in enumerate(runs):  # a misspelled group would drop the run from its analyses without a word
        if odd := [g for g in r.groups if g not in known]:
            close = difflib.get_close_matches(odd[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            own = f", and inference.group is {inference.group!r}" if inference.group not in GROUPS else ""
            raise ConfigError(f"{path}: runs[{i}].groups: unknown group {odd[0]!r} of run {r.name}{hint}; "
                              f"the analyses read {', '.join(GROUPS)}{own}")
    validate_inference(inference, runs, f"{path}: inference")
    return ProfileConfig(name=name, description=desc, data=data, compute=compute, runs=runs, sparsity=sparsity,
                         inference=inference, fit={k: _fit_number(v) for k, v in (raw.get("fit") or {}).items()},
                         path=path)


def _fit_number(value: Any) -> Any:
    """A `fit:` value (checked by laws.FitSpec) as the number YAML 1.1 left as a string: 1e-8 is a float, an
    integral one such as 1e3 an int (FitSpec's float fields take ints too)."""
    number = _yaml_number(value)
    if isinstance(value, str) and isinstance(number, float) and number.is_integer():
        return int(number)
    return number


def resolve_profile_path(profile: str, configs_dir: Path) -> Path:
    """A profile is a name in configs/ (``cpu``) or a path to a YAML file."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.is_file():  # a folder named like a profile (runs/cpu) is no profile
        if not p.is_file():
            raise ConfigError(f"profile {profile!r}: no such file; give a name in {configs_dir} or a YAML path")
        builtin = configs_dir / f"{p.stem}.yaml"
        if builtin.is_file() and builtin.resolve() != p.resolve():
            results, figures = (Path(os.environ.get(f"SPARSINGLAW_{root.upper()}") or root) / p.stem
                                for root in ("results", "figures"))
            raise ConfigError(f"{p}: a profile is named by its file, and {p.stem!r} is the profile {builtin}: "
                              f"{results}/ and {figures}/ hold that profile's tables and figures, "
                              f"which this file's runs would overwrite; rename it (e.g. my-{p.stem}.yaml)")
        return p
    cand = configs_dir / f"{profile}.yaml"
    if not cand.is_file():
        known = ", ".join(sorted(q.stem for q in configs_dir.glob("*.yaml"))) or "(none)"
        raise ConfigError(f"profile {profile!r}: not found; known profiles in {configs_dir}: {known}, "
                          "or give a path to a YAML file")
    return cand


def yaml_error(e: yaml.YAMLError) -> str:
    """A YAML parse error on one line: where, what, and in what construct."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return f"{where}{what}" + (f" ({context})" if context else "")


class ProfileLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping (the last one silently won).

    Keys are checked as written, before merge keys (``<<: *defaults``) add theirs, which may be overridden.
    """

    def flatten_mapping(self, node: yaml.MappingNode) -> None:  # SafeLoader calls it for every mapping
        checked = self.__dict__.setdefault("_checked", set())
        if id(node) not in checked:  # flattening rewrites node.value: check each mapping once, first
            checked.add(id(node))
            _unique_keys(self, node)
        super().flatten_mapping(node)


def _unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> None:
    first: dict = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        if key in first:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first[key].line + 1}); keep one of them",
                key_node.start_mark)
        first[key] = key_node.start_mark


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Dotted overrides ``section.field=value`` (value parsed as YAML), e.g. ``train.lr=3e-3``.

    ``model.*`` and ``train.*`` change the defaults of every run; ``runs.NAME.train.tokens=...``
    changes one run. Sections are copied on the way down: runs that share one YAML anchor
    (``train: *short``) still change one at a time.
    """
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"--set {ov!r}: expected KEY=VALUE, e.g. train.lr=3e-3")
        key, val = ov.split("=", 1)
        try:
            value = yaml.load(val, Loader=ProfileLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {ov!r}: value is not valid YAML ({yaml_error(e)})") from None
        node, parts = _override_target(raw, key.strip(), ov)
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:  # a section written empty (`sparsity:`) is an empty section
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {ov!r}: {p} is not a section")
            node[p] = dict(child)  # a copy: a YAML alias (*short) shares one dict among runs
            node = node[p]
        node[parts[-1]] = value
    return raw


def _override_target(raw: dict, key: str, ov: str) -> tuple[dict, list[str]]:
    """The mapping an override key starts in (the profile, or one run) and the key's parts below it."""
    if key.split(".")[0] != "runs":
        return raw, key.split(".")
    runs = [r for r in raw.get("runs") or [] if isinstance(r, dict) and isinstance(r.get("name"), str)]
    fits = [r for r in runs if key.startswith(f"runs.{r['name']}.")]
    if not fits and key.count(".") >= 3:
        known = ", ".join(r["name"] for r in runs) or "(none)"
        raise ConfigError(f"--set {ov!r}: no run named {key.split('.')[1]!r}; runs: {known}")
    run = max(fits, key=lambda r: len(r["name"]), default=None)  # names may hold dots: relu-wd3.6
    parts = key[len(f"runs.{run['name']}."):].split(".") if run else []
    if len(parts) < 2:
        raise ConfigError(f"--set {ov!r}: expected runs.NAME.model|train.FIELD=VALUE")
    return run, parts


def blame_override(error: ConfigError, overrides: list[str], path: str) -> ConfigError:
    """A validation error of a field that a --set override wrote, led by that override (the message
    named only the YAML file, and runs[0] where a profile-level model.X/train.X override is first
    checked); any other error as it was."""
    msg = str(error)
    if not msg.startswith(f"{path}: "):
        return error
    field = msg[len(path) + 2:].split(":", 1)[0]
    bare = re.sub(r"^runs\[\d+\]\.", "", field)
    for ov in reversed(overrides):  # of one key set twice, the last is the value checked
        key = ov.split("=", 1)[0].strip()
        if key in (field, bare) or ("." not in field and key.split(".")[0] == field) or \
                (key.startswith("runs.") and field.startswith("runs[") and key.endswith(f".{bare}")):
            where = " (a profile-level override, checked in every run)" if field != bare and key == bare else ""
            return ConfigError(f"--set {ov!r}{where} is refused: {msg}")
    return error


def shadowed_overrides(raw: dict, overrides: list[str], path: str) -> list[str]:
    """One note per profile-level ``model.X``/``train.X`` override that some runs set to another value in their
    own section: those runs keep theirs (unless a ``runs.NAME...`` override of the same key changes it too)."""
    runs = [r for r in raw.get("runs") or [] if isinstance(r, dict) and isinstance(r.get("name"), str)]
    values = dict(ov.split("=", 1) for ov in overrides if "=" in ov)  # the last one of a key wins
    values = {k.strip(): v for k, v in values.items()}
    notes = []
    for key, val in values.items():
        sect, _, fld = key.partition(".")
        if sect not in ("model", "train") or not fld or "." in fld:
            continue
        try:
            value = _yaml_number(yaml.safe_load(val))
        except yaml.YAMLError:
            continue  # apply_overrides reports it
        own = [r["name"] for r in runs if isinstance(r.get(sect), dict) and fld in r[sect]
               and _yaml_number(r[sect][fld]) != value and f"runs.{r['name']}.{key}" not in values]
        if not own:
            continue
        shown = ", ".join(own[:4]) + (", ..." if len(own) > 4 else "")
        which = f"all {len(runs)} runs" if len(own) == len(runs) else f"{len(own)} of {len(runs)} runs ({shown})"
        notes.append(f"note: --set {key}: {which} set their own {key} in {path} and keep it; "
                     f"use --set runs.NAME.{key}=VALUE to change one")
    return notes


_NOTED: set[str] = set()


def note_once(msg: str) -> None:
    """A note on stderr, once per process, from the main process alone (not from a pool worker, which
    reloads the profile, nor from torchrun's ranks above 0)."""
    if msg in _NOTED or mp.parent_process() is not None or os.environ.get("RANK", "0") not in ("", "0"):
        return
    _NOTED.add(msg)
    print(msg, file=sys.stderr, flush=True)


def profile_flags(profile: ProfileConfig) -> str:
    """The command-line arguments that load `profile` again: ``--profile NAME`` when it is this
    repository's configs/NAME.yaml, else ``--profile PATH`` (absolute) of its YAML file, then its ``--set``
    overrides (for the commands that error messages suggest)."""
    import shlex

    where = profile.name if in_repo(profile) else str(Path(profile.path).resolve())
    return f"--profile {shlex.quote(where)}" + "".join(f" --set {shlex.quote(o)}" for o in profile.overrides)


def command_line(profile: ProfileConfig | str, command: str, *args: str, runs_dir=None) -> str:
    """'python -m sparsinglaw COMMAND <the flags that load `profile` again> ARGS [--runs-dir DIR]', for the
    advice of messages (a profile given by name: ``--profile NAME``)."""
    flags = profile_flags(profile) if isinstance(profile, ProfileConfig) else f"--profile {profile}"
    rd = ("--runs-dir", str(runs_dir)) if runs_dir is not None else ()
    return " ".join(["python -m sparsinglaw", command, flags, *args, *rd])


def command_for(profile: ProfileConfig | str, command: str, notebook: str, runs_dir=None) -> str:
    """command_line + ' (or notebook NOTEBOOK)': what makes a missing results table."""
    return f"{command_line(profile, command, runs_dir=runs_dir)} (or notebook {notebook})"


def in_repo(profile: ProfileConfig) -> bool:
    """Whether `profile` was loaded from this repository's configs/NAME.yaml: what ``--profile NAME``
    and ``make ... PROFILE=NAME`` load."""
    from .runs import repo_root

    return Path(profile.path).resolve() == (repo_root() / "configs" / f"{profile.name}.yaml").resolve()


def load_profile(profile: str | Path, overrides: list[str] | None = None) -> ProfileConfig:
    """Load and validate a profile by name (configs/<name>.yaml) or path.

    A ``model.X``/``train.X`` override that runs set in their own sections gets a note on stderr.
    """
    from .runs import repo_root

    path = resolve_profile_path(str(profile), repo_root() / "configs")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=ProfileLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error(e)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the profile as UTF-8 YAML") from None
    notes = []
    if isinstance(raw, dict):
        notes = shadowed_overrides(raw, overrides or [], str(path))
        raw = apply_overrides(raw, overrides or [])
    try:
        profile = parse_profile(raw, str(path), path.stem)
    except ConfigError as e:
        raise blame_override(e, overrides or [], str(path)) from None
    profile.overrides = list(overrides or [])
    for note in notes:
        note_once(note)
    return profile
