"""Shared fixtures: every test writes into tmp folders (never runs/, results/ or figures/ of the
repo), torch uses one thread, and the smoke corpus is built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
torch.set_flush_denormal(True)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def session_roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("roots")
    roots = {"SPARSINGLAW_RUNS": base / "runs", "SPARSINGLAW_RESULTS": base / "results",
             "SPARSINGLAW_FIGURES": base / "figures", "SPARSINGLAW_DATA": base / "data"}
    for p in roots.values():
        p.mkdir()
    return roots


@pytest.fixture(autouse=True)
def isolated_roots(session_roots, monkeypatch):
    """Point runs/, results/ and figures/ at session tmp folders (shared corpus cache)."""
    for k, v in session_roots.items():
        monkeypatch.setenv(k, str(v))
    return session_roots


@pytest.fixture(scope="session")
def smoke_tokens(session_roots):
    """The smoke profile's corpus and tokenizer, built once into the session's runs root."""
    from sparsinglaw.config import load_profile
    from sparsinglaw.data import prepare

    profile = load_profile("smoke")
    return prepare(profile.data, session_roots["SPARSINGLAW_DATA"], progress=False)


# A tiny variant of the smoke profile used by the training tests (CLI --set syntax). The model sizes are the
# runs' own (each smoke run sets d_model, n_layers and d_ff: a model.* override would not reach them).
TINY = ["train.tokens=12288", "train.checkpoints=4", "train.first_checkpoint_frac=0.3", "train.resume_every=3",
        "train.log_every=2", "train.eval_tokens=1024"]


@pytest.fixture
def tiny_profile():
    from sparsinglaw.config import load_profile

    return load_profile("smoke", overrides=list(TINY))


# The smoke profile cut to two runs (one ReLU, one SiLU) and small measurement settings: the cheapest
# profile that goes through training, measurement and the results tables (fault and bad-input tests).
MINI = TINY + ["sparsity.eval_tokens=1024", "sparsity.n_grid=4096"]


@pytest.fixture(scope="session")
def mini_path(tmp_path_factory) -> Path:
    """configs/smoke.yaml with runs relu-s1 and silu-s1 only, written as <tmp>/mini.yaml."""
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    raw["runs"] = [r for r in raw["runs"] if r["name"] in ("relu-s1", "silu-s1")]
    raw["sparsity"]["pareto_runs"] = []
    path = tmp_path_factory.mktemp("profiles") / "mini.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def measured_mini(session_roots, mini_path, smoke_tokens):
    """The mini profile trained and measured into the session roots (results/mini/*.csv written)."""
    from sparsinglaw import measure, runs
    from sparsinglaw.config import load_profile

    with pytest.MonkeyPatch.context() as mp:
        for k, v in session_roots.items():
            mp.setenv(k, str(v))
        profile = load_profile(mini_path, overrides=MINI)
        runs.train_profile(profile, jobs=1, progress=False)
        measure.measure_profile(profile, jobs=1, progress=False)
    return profile


def nonzero_share(model, batches, topk: int | None = None, per_batch: bool = False) -> list[float]:
    """Per layer, the share of valid (token, neuron) pairs (target != -1) with s = relu(W_gate x) != 0, read
    straight from the gate projection by forward hooks: the exact-zero oracle of the ReLU models.
    `topk`: in the Top-k pass instead (sparsity.topk_rule, per token or `per_batch`), the share Top-k keeps
    with s != 0: a token with m positive s_i keeps min(k, m) of them (per batch: min(k * n_valid, the m
    summed over the batch's valid tokens))."""
    from sparsinglaw import sparsity

    counts, n, valid = [0] * model.cfg.n_layers, 0, None

    def count(layer, out):
        m = (torch.relu(out)[valid] != 0).sum(-1)
        if topk is not None:
            m = m.sum().clamp(max=topk * m.numel()) if per_batch else m.clamp(max=topk)
        counts[layer] += int(m.sum())

    hooks = [f.w_gate.register_forward_hook(lambda m, i, o, l=l: count(l, o)) for l, f in enumerate(model.ffns())]
    try:
        with torch.no_grad():
            for x, y, *_ in batches:
                valid = y != -1
                if topk is None:
                    model(x)
                else:  # the Top-k pass: later layers see masked inputs
                    sparsity.activation_stats(model, [(x, y)], rule=sparsity.topk_rule(topk, per_batch))
                n += int(valid.sum())
    finally:
        for h in hooks:
            h.remove()
    return [c / (n * model.cfg.d_ff) for c in counts]


def committed(pattern: str) -> list[Path]:
    """The files git tracks in the repository that match `pattern` (not a local profile's, such as the
    ignored figures/smoke); none outside a git checkout."""
    import subprocess

    r = subprocess.run(["git", "ls-files", "--", pattern], cwd=REPO, capture_output=True, text=True, timeout=60)
    return [REPO / p for p in r.stdout.split()] if r.returncode == 0 else []


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie left to a PID 1 that does not reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
