"""Trainer: WSD schedule, checkpoints with sidecars, logs, skip finished runs, NaN stop, corrupted
checkpoints refused."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from sparsinglaw import runs
from sparsinglaw.config import checkpoint_steps, total_steps
from sparsinglaw.train import (
    TrainingDiverged,
    batch_seed,
    checkpoint_problem,
    latest_valid_checkpoint,
    lr_factor,
    train,
)


def test_wsd_schedule():
    w, s, d = 10, 80, 10
    f = [lr_factor(i, w, s, d, 0.1) for i in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in f[10:90])
    assert f[99] == pytest.approx(0.1) and all(a > b for a, b in zip(f[90:], f[91:]))
    assert f[90] == pytest.approx(0.1 ** 0.1)  # exponential: factor 0.1**(k/decay)
    assert lr_factor(50, 0, 100, 0, 0.1) == 1.0


def test_batch_seed_distinct():
    seeds = {batch_seed(0, s, m, r) for s in range(50) for m in range(3) for r in range(2)}
    assert len(seeds) == 300 and batch_seed(1, 0, 0) != batch_seed(0, 0, 0)


def _train(profile, name, **kw):
    from sparsinglaw.data import prepare

    run = profile.run(name)
    d = runs.run_dir(profile, run)
    tokens = prepare(profile.data, runs.data_cache_dir(), progress=False)
    return run, d, train(run, profile.data, d, tokens, progress=False, **kw)


def test_train_writes_checkpoints_log_and_done(tiny_profile, smoke_tokens):
    run, d, done = _train(tiny_profile, "relu-s1")
    marks = checkpoint_steps(run.model, run.train)
    n = total_steps(run.model, run.train)
    assert done["steps"] == n and sorted(done["checkpoints"]) == sorted(set(marks) | {n})
    ck = runs.checkpoints(tiny_profile, run)
    assert list(ck["step"]) == sorted(set(marks) | {n})
    meta = json.loads((d / f"meta_{marks[0]:07d}.json").read_text())
    for key in ("config", "step", "tokens", "data_cursor", "rng", "loss", "val_loss", "versions", "sha256", "corpus"):
        assert key in meta, key
    assert meta["stage"] == "stable" and meta["tokens"] == marks[0] * 512
    log = runs.load_log(tiny_profile, run)
    val = log[log["split"] == "val"]
    assert len(val) == len(ck) and val["loss"].iloc[-1] < val["loss"].iloc[0]  # it learns
    assert math.log(512) > log[log["split"] == "train"]["loss"].iloc[-1]  # better than uniform
    assert not (d / "ckpt_last.pt").exists()
    # a finished run is skipped: nothing is rewritten
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    _, _, again = _train(tiny_profile, "relu-s1")
    assert again == done and {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == before


def test_train_profile_skips_finished(tiny_profile, smoke_tokens):
    states = runs.train_profile(tiny_profile, names=["relu-s1", "silu-s1"], jobs=1, progress=False)
    assert [s.status for s in states] == ["done", "done"]
    logs = {s.name: (s.path / "log.csv").read_bytes() for s in states}
    states = runs.train_profile(tiny_profile, names=["relu-s1", "silu-s1"], jobs=2, progress=False)
    assert {s.name: (s.path / "log.csv").read_bytes() for s in states} == logs
    table = runs.states_table(tiny_profile)
    assert set(table.loc[table["run"].isin(["relu-s1", "silu-s1"]), "status"]) == {"done"}


def test_nan_loss_stops_and_keeps_last_good(tiny_profile, smoke_tokens):
    p = tiny_profile
    run = p.run("silu-s2")
    marks = checkpoint_steps(run.model, run.train)
    with pytest.raises(TrainingDiverged, match="NaN|nan"):
        _train(p, "silu-s2", fault={"nan_at_step": marks[1] + 1})
    d = runs.run_dir(p, run)
    ck = runs.checkpoints(p, run)
    assert ck["step"].max() == marks[1] and not (d / "DONE").exists()
    # a rerun without the fault resumes from there and finishes
    _, _, done = _train(p, "silu-s2")
    assert done["steps"] == total_steps(run.model, run.train)


def test_corrupted_checkpoint_is_refused(tiny_profile, smoke_tokens):
    p = tiny_profile
    run = p.run("relu-wd1")
    _, d, _ = _train(p, "relu-wd1", stop_after_step=checkpoint_steps(run.model, run.train)[2])
    h = run.config_hash(p.data)
    tags = [t for t in (x.name[5:-3] for x in sorted(d.glob("ckpt_*.pt")))]
    newest = max(tags, key=lambda t: json.loads((d / f"meta_{t}.json").read_text())["step"])
    pt = d / f"ckpt_{newest}.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    pt.write_bytes(bytes(data))
    assert "checksum" in checkpoint_problem(d, newest, h)
    warnings = []
    tag, meta = latest_valid_checkpoint(d, h, warn=warnings.append)
    assert tag != newest and warnings and pt.name in warnings[0]
    pt.write_bytes(bytes(data[: len(data) // 3]))  # truncated
    assert "truncated" in checkpoint_problem(d, newest, h)
    assert "another config" in checkpoint_problem(d, newest, "0" * 64)
    _, _, done = _train(p, "relu-wd1")  # resumes from the last valid one and finishes
    assert done["steps"] == total_steps(run.model, run.train)


def test_log_dedup_after_resume(tiny_profile, tmp_path):
    run = tiny_profile.run("relu-s1")
    d = runs.run_dir(tiny_profile, run)
    d.mkdir(parents=True, exist_ok=True)
    log = d / "log.csv"
    saved = log.read_bytes() if log.exists() else None
    try:
        pd.DataFrame({"step": [2, 4, 4], "tokens": [1, 2, 2], "split": ["train"] * 3, "loss": [3.0, 2.0, 1.5],
                      "lr": [0.1] * 3, "tok_s": [1] * 3, "mfu": [""] * 3}).to_csv(log, index=False)
        got = runs.load_log(tiny_profile, run)
        assert list(got["step"]) == [2, 4] and got["loss"].iloc[-1] == 1.5
    finally:
        if saved is not None:
            log.write_bytes(saved)


def test_state_dict_has_no_wrapper_prefixes(tiny_profile, smoke_tokens):
    run, d, _ = _train(tiny_profile, "relu-s1")
    sd = torch.load(sorted(d.glob("ckpt_0*.pt"))[-1], weights_only=True)["model"]
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in sd)
