"""Trainer: WSD schedule, checkpoints with sidecars, logs, skip finished runs, NaN stop, corrupted
checkpoints refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY
from sparsinglaw import runs
from sparsinglaw.config import SparsingLawError, checkpoint_steps, load_profile, total_steps
from sparsinglaw.data import CorpusError, eval_batches
from sparsinglaw.device import Prefetcher, peak_flops
from sparsinglaw.train import (
    KEEP_OPTIMIZER,
    TrainingDiverged,
    batch_seed,
    check_tokens,
    checkpoint_problem,
    evaluate,
    latest_valid_checkpoint,
    lr_factor,
    mfu,
    session_summary,
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
    seeds = {batch_seed(0, s, m) for s in range(50) for m in range(6)}
    assert len(seeds) == 300 and batch_seed(1, 0, 0) != batch_seed(0, 0, 0)
    # the seeds of runs already trained (and of the committed results) are kept
    assert batch_seed(0, 3, 1) == int.from_bytes(hashlib.blake2b(b"0:3:1:0", digest_size=8).digest(),
                                                 "little") & (2**63 - 1)


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
    def stamps():  # but the checkpoint digests a listing keeps (train.DIGEST_MEMO: a cache)
        return {p.name: p.stat().st_mtime_ns for p in d.iterdir() if p.name != ".sha256.json"}

    before = stamps()
    _, _, again = _train(tiny_profile, "relu-s1")
    assert again == done and stamps() == before


def test_train_profile_skips_finished(tiny_profile, smoke_tokens, monkeypatch):
    states = runs.train_profile(tiny_profile, names=["relu-s1", "silu-s1"], jobs=1, progress=False)
    assert [s.status for s in states] == ["done", "done"]
    logs = {s.name: (s.path / "log.csv").read_bytes() for s in states}
    # skipped by train_profile itself (no worker started), not only by train() finding DONE in each worker
    monkeypatch.setattr(runs, "run_parallel", lambda *a, **k: pytest.fail(f"finished runs sent to workers: {a[1]}"))
    states = runs.train_profile(tiny_profile, names=["relu-s1", "silu-s1"], jobs=2, progress=False)
    assert {s.name: (s.path / "log.csv").read_bytes() for s in states} == logs
    table = runs.states_table(tiny_profile)
    assert set(table.loc[table["run"].isin(["relu-s1", "silu-s1"]), "status"]) == {"done"}


def test_nan_loss_stops_and_keeps_last_good(tiny_profile, smoke_tokens, capsys):
    p = tiny_profile
    run = p.run("silu-s2")
    marks = checkpoint_steps(run.model, run.train)
    with pytest.raises(TrainingDiverged, match=rf"training loss is nan at step {marks[1] + 1};"):
        _train(p, "silu-s2", fault={"nan_at_step": marks[1] + 1})
    d = runs.run_dir(p, run)
    ck = runs.checkpoints(p, run)
    assert ck["step"].max() == marks[1] and not (d / "DONE").exists()
    # a rerun without the fault resumes from there and finishes
    capsys.readouterr()
    _, _, done = _train(p, "silu-s2")
    assert done["steps"] == total_steps(run.model, run.train)
    assert f"run silu-s2: resuming from step {marks[1]} of " in capsys.readouterr().out


def test_sha256_file_remembers_only_unchanged_files(tmp_path, monkeypatch):
    """sha256_file reads an unchanged file once, and reads it again after any rewrite: in place with the
    same size and its mtime put back, or replaced by another file; a file hashed right after it was
    written is never remembered (its timestamp could survive a rewrite). Oracle: hashlib on the bytes.
    The clock is the file's newest timestamp plus `age` seconds, so that no sleep decides the outcome."""
    import hashlib
    import os
    import types

    from sparsinglaw import train as tr

    hashed, age = [], [0.0]

    def counting_sha256():
        hashed.append(1)
        return hashlib.sha256()

    def time_ns():
        st = os.stat(f)
        return max(st.st_mtime_ns, st.st_ctime_ns) + int(age[0] * 1e9)

    monkeypatch.setattr(tr, "hashlib", types.SimpleNamespace(sha256=counting_sha256))
    monkeypatch.setattr(tr, "time", types.SimpleNamespace(time_ns=time_ns))
    monkeypatch.setattr(tr, "_hashed", {})
    a = torch.randint(0, 256, (1 << 21,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a = a.numpy().tobytes()
    f = tmp_path / "ckpt.pt"
    f.write_bytes(a)
    oracle = hashlib.sha256(a).hexdigest()
    age[0] = tr.HASH_MEMO_AGE_S / 2
    assert tr.sha256_file(f) == oracle and tr.sha256_file(f) == oracle and len(hashed) == 2  # fresh: read twice
    age[0] = tr.HASH_MEMO_AGE_S * 1.5
    assert tr.sha256_file(f) == oracle and len(hashed) == 3
    assert tr.sha256_file(f) == oracle and tr.sha256_file(str(f)) == oracle and len(hashed) == 3  # remembered
    st = os.stat(f)
    b = bytearray(a)
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only ctime tells
    assert tr.sha256_file(f) == hashlib.sha256(bytes(b)).hexdigest() and len(hashed) == 4
    g = tmp_path / "new.pt"
    g.write_bytes(a)
    os.replace(g, f)  # another inode
    assert tr.sha256_file(f) == oracle and len(hashed) == 5


def test_checkpoint_digests_are_kept_for_later_processes_and_a_load_reads_the_bytes(tiny_profile, smoke_tokens,
                                                                                  tmp_path, monkeypatch):
    """A listing hashes each checkpoint once for every later process (the digest is kept in the run folder's
    DIGEST_MEMO under the file's inode, size, mtime and ctime), and hashes it again once the file changes; a
    load counts only what its own process read from the bytes (once), so a file whose bytes changed behind an
    unchanged stat (bit rot, stood in for by a forged memo entry) is refused there. Oracle: hashlib on the
    bytes; a new process is stood in for by an empty in-process memo."""
    import hashlib
    import os
    import subprocess
    import sys
    import types

    from sparsinglaw import measure
    from sparsinglaw import train as tr

    run = tiny_profile.run("relu-s1")
    d = tmp_path / "run"
    train(run, tiny_profile.data, d, smoke_tokens, progress=False)
    h = run.config_hash(tiny_profile.data)
    hashed = []
    monkeypatch.setattr(tr, "hashlib", types.SimpleNamespace(sha256=lambda: hashed.append(1) or hashlib.sha256()))
    monkeypatch.setattr(tr, "HASH_MEMO_AGE_S", -1.0)  # the files were just written (the age rule: test above)

    def new_process():
        monkeypatch.setattr(tr, "_hashed", {})
        return len(hashed)

    tags = tr.checkpoint_tags(d)
    new_process()
    assert len(tags) >= 3 and all(tr.checkpoint_problem(d, t, h) is None for t in tags) and len(hashed) == len(tags)
    memo = json.loads((d / tr.DIGEST_MEMO).read_text())
    assert {k: v[-1] for k, v in memo.items()} == {f"ckpt_{t}.pt": hashlib.sha256((d / f"ckpt_{t}.pt").read_bytes())
                                                   .hexdigest() for t in tags}
    before = new_process()
    assert all(tr.checkpoint_problem(d, t, h) is None for t in tags) and len(hashed) == before  # read nothing

    # a rewrite in place, same size, mtime put back: ctime changed, so it is read again and refused
    pt = d / f"ckpt_{tags[0]}.pt"
    st, data = os.stat(pt), bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    os.utime(pt, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = new_process()
    assert "checksum" in tr.checkpoint_problem(d, tags[0], h) and len(hashed) == before + 1

    # bit rot: new bytes behind a stat the memo knows. The listing trusts it, a load does not
    pt = d / f"ckpt_{tags[1]}.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    st = os.stat(pt)
    memo = json.loads((d / tr.DIGEST_MEMO).read_text())
    memo[pt.name] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, tr.read_meta(d, tags[1])["sha256"]]
    (d / tr.DIGEST_MEMO).write_text(json.dumps(memo))
    new_process()
    assert tr.checkpoint_problem(d, tags[1], h) is None
    assert "checksum" in tr.checkpoint_problem(d, tags[1], h, kept=False)
    with pytest.raises(tr.CheckpointError, match="checksum"):
        tr.load_checkpoint(d, tags[1], h, optimizer=False)
    with pytest.raises(tr.CheckpointError, match=f"refusing checkpoint {pt}: checksum mismatch"):
        measure.load_model(run, pt)
    before = len(hashed)
    measure.load_model(run, d / f"ckpt_{tags[2]}.pt")  # an intact one loads, its bytes read once in a process
    measure.load_model(run, d / f"ckpt_{tags[2]}.pt")  # (a search loads its checkpoints again at every probe)
    assert len(hashed) == before + 1

    # an unreadable memo only costs a read; a deleted file's entry goes at the next write, and so does the temp
    # file of a writer killed mid-write (another file's, in this folder, is left to the run's own writers)
    (d / tr.DIGEST_MEMO).write_text("{not json")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = tr.temp_path(d / tr.DIGEST_MEMO).with_name(f".{tr.DIGEST_MEMO}.{dead.pid}-{tr._host()}.tmp")
    other = killed.with_name(f".log.csv.{dead.pid}-{tr._host()}.tmp")
    killed.write_text("{")
    other.write_text("x")
    before = new_process()
    assert tr.checkpoint_problem(d, tags[2], h) is None and len(hashed) == before + 1
    assert not killed.exists() and other.exists()
    (d / f"ckpt_{tags[2]}.pt").unlink()
    tr.checkpoint_problem(d, tags[-1], h)
    assert set(json.loads((d / tr.DIGEST_MEMO).read_text())) == {f"ckpt_{tags[-1]}.pt"}


def test_corrupted_checkpoint_is_refused(tiny_profile, smoke_tokens, capsys):
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
    state = runs.run_state(p, run)  # the progress `runs` shows counts the valid checkpoints only
    assert (state.status, state.tokens_seen) == ("partial", meta["tokens"])
    assert meta["tokens"] < json.loads((d / f"meta_{newest}.json").read_text())["tokens"]
    pt.write_bytes(bytes(data[: len(data) // 3]))  # truncated
    assert "truncated" in checkpoint_problem(d, newest, h)
    assert "another config" in checkpoint_problem(d, newest, "0" * 64)
    capsys.readouterr()
    _, _, done = _train(p, "relu-wd1")  # resumes from the last valid one and finishes
    assert done["steps"] == total_steps(run.model, run.train)
    out = capsys.readouterr().out
    assert f"skipping checkpoint {pt}: truncated" in out
    assert f"run relu-wd1: resuming from step {meta['step']} of {done['steps']} (ckpt_{tag}.pt)" in out


def test_log_dedup_after_resume(tiny_profile, tmp_path):
    """A resumed (unfinished) run's log repeats the rows after its checkpoint: the last of each step wins."""
    run = tiny_profile.run("relu-s1")
    d = runs.run_dir(tiny_profile, run, tmp_path)
    d.mkdir(parents=True)
    pd.DataFrame({"step": [2, 4, 4], "tokens": [1, 2, 2], "split": ["train"] * 3, "loss": [3.0, 2.0, 1.5],
                  "lr": [0.1] * 3, "tok_s": [1] * 3, "mfu": [""] * 3}).to_csv(d / "log.csv", index=False)
    got = runs.load_log(tiny_profile, run, tmp_path)
    assert list(got["step"]) == [2, 4] and got["loss"].iloc[-1] == 1.5


def test_state_dict_has_no_wrapper_prefixes(tiny_profile, smoke_tokens, tmp_path, monkeypatch):
    """Trained compiled (the eager backend stands in for inductor), the model runs wrapped, whose state_dict
    names every weight "_orig_mod.<name>"; the checkpoints hold the bare model's names."""
    from sparsinglaw.model import Transformer

    real_compile, wrapped = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda m, mode=None, **k: wrapped.append(real_compile(m, backend="eager"))
                        or wrapped[-1])
    run = tiny_profile.run("relu-s1")
    train(run, tiny_profile.data, tmp_path / "run", smoke_tokens, compile=True, progress=False, stop_after_step=9)
    assert len(wrapped) == 1 and all(k.startswith("_orig_mod.") for k in wrapped[0].state_dict())
    sd = torch.load(sorted((tmp_path / "run").glob("ckpt_0*.pt"))[-1], weights_only=True)["model"]
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in sd)
    Transformer(run.model).load_state_dict(sd)  # strict: every name matches


def test_prefetcher_keeps_order_and_raises_the_workers_error():
    def draw(step, micro):
        if step == 7:
            raise ValueError("bad batch at step 7")
        g = torch.Generator().manual_seed(batch_seed(0, step, micro))
        return torch.randint(0, 100, (2, 3), generator=g), torch.full((1,), step * 10 + micro)

    pf = Prefetcher(draw, 5, [0, 2], depth=2, pin=False)
    try:
        for step in (5, 6):
            for micro in (0, 2):
                x, y = pf.get(step, micro)
                want = draw(step, micro)
                assert torch.equal(x, want[0]) and torch.equal(y, want[1])
        with pytest.raises(ValueError, match="bad batch at step 7"):
            pf.get(7, 0)
    finally:
        pf.close()
    assert not pf.thread.is_alive()
    pf = Prefetcher(draw, 0, [0], pin=False)
    try:
        with pytest.raises(RuntimeError, match="out of order"):
            pf.get(1, 0)
    finally:
        pf.close()
    assert not pf.thread.is_alive()


def test_prefetcher_draws_at_most_depth_batches_ahead():
    """The background thread stops drawing once `depth` batches wait (it holds one more, drawn, for the
    next free place): it never runs away from the trainer, and goes on as batches are taken."""
    import time

    drawn = []

    def draw(step, micro):
        drawn.append((step, micro))
        return torch.zeros(1), torch.zeros(1)

    def settled(n):  # wait until the thread has drawn n batches, then give it time to draw more
        deadline = time.monotonic() + 10
        while len(drawn) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        return len(drawn)

    pf = Prefetcher(draw, 0, [0, 1], depth=2, pin=False)
    try:
        assert settled(3) == 3  # two queued, the third waiting for room
        pf.get(0, 0)
        assert settled(4) == 4
    finally:
        pf.close()
    assert drawn == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_prefetched_training_is_identical_and_logs_mfu_with_a_known_peak(tiny_profile, smoke_tokens, tmp_path,
                                                                        monkeypatch, capsys):
    """The CUDA path's background batches give bit-identical weights on CPU, also across a resume (the
    prefetcher starts at the checkpoint's step); MFU is logged once the peak FLOP/s is known (here from
    SPARSINGLAW_PEAK_FLOPS) and left empty otherwise."""
    from sparsinglaw import train as tr
    from sparsinglaw.data import prepare

    run = tiny_profile.run("relu-s1")
    tokens = prepare(tiny_profile.data, runs.data_cache_dir(), progress=False)
    served = []  # (step, micro) of every batch the Prefetcher handed out: the batches did come from it

    class Spy(Prefetcher):
        def get(self, step, micro):
            served.append((step, micro))
            return super().get(step, micro)

    monkeypatch.setattr(tr, "Prefetcher", Spy)
    train(run, tiny_profile.data, tmp_path / "inline", tokens, progress=False, prefetch=False)
    assert not served
    monkeypatch.setenv("SPARSINGLAW_PEAK_FLOPS", "1e12")
    n, marks = total_steps(run.model, run.train), checkpoint_steps(run.model, run.train)
    stop = marks[1] + 2  # stopped past a checkpoint: the resume redoes the steps after the latest one
    every = run.train.resume_every
    back = max([m for m in marks if m <= stop] + [stop // every * every])  # a mark or a resume snapshot
    assert 0 < back < stop < marks[2]
    capsys.readouterr()
    train(run, tiny_profile.data, tmp_path / "ahead", tokens, progress=False, prefetch=True, stop_after_step=stop)
    train(run, tiny_profile.data, tmp_path / "ahead", tokens, progress=False, prefetch=True)
    assert f"run relu-s1: resuming from step {back} of {n}" in capsys.readouterr().out
    # every batch of the first call (the prefetcher runs ahead: one draw past the stop is not served),
    # then from the checkpoint on
    grid = [(s, m) for s in range(n) for m in range(run.train.grad_accum)]
    assert served == grid[:stop * run.train.grad_accum] + grid[back * run.train.grad_accum:]
    a, b = ({k: v for k, v in torch.load(sorted((tmp_path / d).glob("ckpt_0*.pt"))[-1],
                                         weights_only=True)["model"].items()} for d in ("inline", "ahead"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = {d: pd.read_csv(tmp_path / d / "log.csv") for d in ("inline", "ahead")}
    assert logs["inline"]["loss"].tolist() == logs["ahead"]["loss"].tolist()
    tr = logs["ahead"][logs["ahead"]["split"] == "train"]
    assert logs["inline"]["mfu"].isna().all() and tr["mfu"].notna().all()
    fpt = json.loads((tmp_path / "ahead" / "DONE").read_text())["flops_per_token"]
    assert tr["mfu"].to_numpy() == pytest.approx(tr["tok_s"].to_numpy() * fpt / 1e12, rel=1e-3, abs=1e-4)


def test_the_prefetcher_pins_only_where_pinned_memory_works(tiny_profile, smoke_tokens, tmp_path, monkeypatch):
    """train() asks device.pinned_memory_works before its prefetcher pins anything (a sandbox can refuse
    page-locked memory, and pinning would then fail every run at its first batch); the prefetcher is built
    with its answer (here a CPU run with the prefetcher on, as on CUDA)."""
    from sparsinglaw import train as tr

    asked, pins = [], []

    class Spy(Prefetcher):
        def __init__(self, *a, pin=True, **k):
            pins.append(pin)
            super().__init__(*a, pin=pin, **k)

    monkeypatch.setattr(tr, "pinned_memory_works", lambda dev: asked.append(dev.type) or False)
    monkeypatch.setattr(tr, "Prefetcher", Spy)
    run = tiny_profile.run("relu-s1")
    assert train(run, tiny_profile.data, tmp_path / "r", smoke_tokens, progress=False, prefetch=True,
                 stop_after_step=2) == {"stopped_at": 2}
    assert asked == ["cpu"] and pins == [False]


def test_peak_flops(monkeypatch):
    monkeypatch.delenv("SPARSINGLAW_PEAK_FLOPS", raising=False)
    assert peak_flops(torch.device("cpu")) is None  # no MFU on CPUs: tokens/s only
    for name, want in [("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA H100 80GB HBM3", 989e12),
                       ("NVIDIA H100 NVL", 835e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                       ("Tesla T4", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda _d=None, n=name: n)
        assert peak_flops(torch.device("cuda")) == want, name
    monkeypatch.setenv("SPARSINGLAW_PEAK_FLOPS", "7.5e14")
    assert peak_flops(torch.device("cpu")) == 7.5e14
    for bad in ("fast", "nan", "inf", "0", "-1e12"):  # each would log an MFU of nan, 0 or below 0
        monkeypatch.setenv("SPARSINGLAW_PEAK_FLOPS", bad)
        with pytest.raises(SparsingLawError, match="SPARSINGLAW_PEAK_FLOPS.*positive, finite"):
            peak_flops(torch.device("cpu"))


def test_every_run_of_a_process_is_compiled(tmp_path, monkeypatch):
    """One process trains many runs (torchrun, a reused worker): each is compiled afresh. torch keeps one
    compile cache for Transformer.forward and, past recompile_limit (8) versions, ran the 9th shape and
    later ones eagerly with only a warning. (The eager backend stands in for inductor: same cache.)"""
    from torch._dynamo.utils import counters

    from sparsinglaw.config import DataConfig, RunConfig, TrainConfig
    from sparsinglaw.data import TokenData
    from sparsinglaw.model import ModelConfig

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, mode=None, **k: real_compile(m, backend="eager"))
    ids = np.random.default_rng(0).integers(0, 256, 1 << 14, dtype=np.uint16)
    tokens = TokenData(root=tmp_path, train=ids, val=ids[:520], train_domain=np.zeros(ids.size, np.uint8),
                       val_domain=np.zeros(520, np.uint8), domains=["code"], vocab_size=256, eot=0,
                       fingerprint={"source": "random", "files": 0, "bytes": 2 * ids.size, "sha256": ""},
                       tokenizer_path=tmp_path / "none")
    compiled = []
    for i in range(10):  # ten shapes: more than recompile_limit
        d, n_layers = 16 * (i % 5 + 1), 1 + i // 5
        run = RunConfig(name=f"r{i}", groups=[], model=ModelConfig(vocab_size=256, d_model=d, n_layers=n_layers,
                        head_dim=16, d_ff=2 * d, seq_len=16),
                        train=TrainConfig(tokens=10**6, batch_size=2, log_every=1, eval_tokens=16, checkpoints=2))
        before = counters["stats"]["unique_graphs"]
        train(run, DataConfig(), tmp_path / run.name, tokens, device="cpu", compile=True, progress=False,
              stop_after_step=2)
        compiled.append(counters["stats"]["unique_graphs"] - before)
    assert all(n >= 1 for n in compiled), compiled


def test_compiled_training_follows_eager(tiny_profile, smoke_tokens, tmp_path, monkeypatch):
    """The CUDA path's torch.compile (here on CPU, ~15 s of compilation): the same losses as eager up to
    float rounding, and checkpoints without the compile wrapper's prefixes."""
    from sparsinglaw.data import prepare

    real_compile, compiled_modes, calls = torch.compile, [], []

    def spy(model, *a, **k):  # the compiled runs do go through torch.compile, and its module is what runs
        compiled_modes.append(k.get("mode"))
        out = real_compile(model, *a, **k)
        real_forward = out.forward

        def forward(*fa, **fk):
            calls.append(1)
            return real_forward(*fa, **fk)

        out.forward = forward
        return out

    monkeypatch.setattr(torch, "compile", spy)
    run = tiny_profile.run("relu-s1")
    tokens = prepare(tiny_profile.data, runs.data_cache_dir(), progress=False)
    marks = checkpoint_steps(run.model, run.train)
    for name, compiled, mode in (("eager", False, "default"), ("compiled", True, "default"),
                                 ("graphs", True, "reduce-overhead")):  # CUDA graphs: skipped on CPU, runs
        train(run, tiny_profile.data, tmp_path / name, tokens, progress=False, compile=compiled, compile_mode=mode,
              stop_after_step=marks[0] + 2)
    assert compiled_modes == [None, "reduce-overhead"]
    assert len(calls) == 2 * (marks[0] + 2) * run.train.grad_accum  # every training forward of both compiled runs
    eager, comp, graphs = (pd.read_csv(tmp_path / n / "log.csv") for n in ("eager", "compiled", "graphs"))
    assert list(eager["step"]) == list(comp["step"]) == list(graphs["step"]) and len(eager) >= 3
    assert comp["loss"].to_numpy() == pytest.approx(eager["loss"].to_numpy(), rel=1e-4)
    assert graphs["loss"].to_numpy() == pytest.approx(eager["loss"].to_numpy(), rel=1e-4)
    sd = torch.load(tmp_path / "compiled" / f"ckpt_{marks[0]:07d}.pt", weights_only=True)["model"]
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in sd)


def test_blocks_compile_follows_eager_with_one_graph_for_every_block(tiny_profile, smoke_tokens, tmp_path):
    """compute.compile: blocks compiles each block and the head in place (inductor, here on CPU): one graph
    serves all three blocks and one the head, so compiling hardly grows with depth; evaluation runs
    eager (no graph of its own); the losses are eager's up to float rounding; DONE says how it was
    compiled, and the checkpoints hold the bare model's names."""
    from torch._dynamo.utils import counters

    from sparsinglaw.model import Transformer

    base = tiny_profile.run("relu-s1")
    run = dataclasses.replace(base, model=dataclasses.replace(base.model, n_layers=3))
    done, before = {}, counters["stats"]["unique_graphs"]
    for name, compile in (("eager", False), ("blocks", "blocks")):
        done[name] = train(run, tiny_profile.data, tmp_path / name, smoke_tokens, compile=compile, progress=False)
    assert counters["stats"]["unique_graphs"] - before == 2  # a block's and the head's
    eager, blocks = (pd.read_csv(tmp_path / n / "log.csv") for n in ("eager", "blocks"))
    assert list(eager["split"]) == list(blocks["split"]) and (eager["split"] == "val").sum() >= 2
    assert blocks["loss"].to_numpy() == pytest.approx(eager["loss"].to_numpy(), rel=1e-4)
    assert done["blocks"]["session"]["compiled"] is True and done["blocks"]["session"]["compile_scope"] == "blocks"
    assert done["eager"]["session"]["compiled"] is False and done["eager"]["session"]["compile_scope"] is None
    sd = torch.load(tmp_path / "blocks" / f"ckpt_{done['blocks']['steps']:07d}.pt", weights_only=True)["model"]
    Transformer(run.model).load_state_dict(sd)  # strict: every name matches


def test_blocks_compile_keeps_the_moe_balancing_loss(tiny_profile, smoke_tokens, tmp_path, monkeypatch):
    """An MoE block compiled on its own appends its load-balancing loss to a list it is handed (a side
    effect the compiled graph must replay): the training losses equal eager's, and at 9 layers one graph
    still serves every block (a list shared by the blocks, one entry longer at each, made each depth a
    graph of its own, and past recompile_limit (8) the deeper blocks ran eager). The eager backend
    stands in for inductor: the same graphs and side effects, without the compile time."""
    from torch._dynamo.utils import counters

    real_compile, compiled = torch.compile, []
    monkeypatch.setattr(torch, "compile",
                        lambda f, mode=None, **k: compiled.append(f) or real_compile(f, backend="eager"))
    base = tiny_profile.run("silu-moe4")
    run = dataclasses.replace(base, model=dataclasses.replace(base.model, n_layers=9))
    assert run.model.n_experts > 0 and run.model.aux_loss_coef > 0
    for name, compile in (("eager", False), ("blocks", "blocks")):
        before = counters["stats"]["unique_graphs"]
        train(run, tiny_profile.data, tmp_path / name, smoke_tokens, compile=compile, progress=False,
              stop_after_step=6)
    assert counters["stats"]["unique_graphs"] - before == 2  # a block's and the head's
    assert len(compiled) == run.model.n_layers + 1  # every block and the head, in place
    eager, blocks = (pd.read_csv(tmp_path / n / "log.csv") for n in ("eager", "blocks"))
    assert len(eager) >= 3 and list(eager["step"]) == list(blocks["step"])
    assert blocks["loss"].to_numpy() == pytest.approx(eager["loss"].to_numpy(), rel=1e-6)


def test_rerun_without_done_keeps_the_final_loss(tiny_profile, smoke_tokens, tmp_path, capsys):
    """A finished run whose DONE was lost (a failed write, a kill just before it) is rerun: its newest
    checkpoint is the last step, so no step is trained; DONE is written again as strict JSON with the
    first run's final loss (from the sidecar), and the closing line claims no throughput."""
    run = tiny_profile.run("relu-s1")
    d = tmp_path / "run"
    capsys.readouterr()
    first = train(run, tiny_profile.data, d, smoke_tokens, progress=False)
    log = pd.read_csv(d / "log.csv")
    val = log[log["split"] == "val"]["loss"].iloc[-1]  # the closing line's loss: the last checkpoint's validation
    said = f"validation loss {val:.4f} (last step's training loss {first['final_loss']:.4f})"
    said_first = capsys.readouterr().out
    assert said in said_first
    (d / "DONE").unlink()
    again = train(run, tiny_profile.data, d, smoke_tokens, progress=False)
    out = capsys.readouterr().out
    assert said in out  # from the checkpoint's sidecar

    def no_constants(c):
        raise AssertionError(f"DONE holds {c}, not JSON")

    done = json.loads((d / "DONE").read_text(), parse_constant=no_constants)
    assert math.isfinite(first["final_loss"])
    # the session that trained: its steps, time and first step (compilation's share); the rerun trained none
    n = first["steps"]
    assert first["session"]["steps"] == n and first["session"]["compiled"] is False
    assert 0 < first["session"]["first_step_s"] < first["session"]["wall_s"]
    assert f"(first step {first['session']['first_step_s']:.1f} s; after it " in said_first
    assert done["session"]["steps"] == 0 and done["session"]["first_step_s"] is None
    assert done["final_loss"] == again["final_loss"] == first["final_loss"]
    assert "no step trained in this session" in out and "tokens/s" not in out


def test_mfu_is_over_every_gpu():
    """tok_s is the global throughput of all torchrun ranks, so MFU divides by the peak of all GPUs."""
    assert mfu(2000.0, 6e6, 1e12, 1) == pytest.approx(0.012)
    assert mfu(2000.0, 6e6, 1e12, 4) == pytest.approx(0.003)
    assert mfu(2000.0, 6e6, None, 4) is None
    line = session_summary(10, 200, 1.0, 6e6, 1e12, 4)  # 2000 tokens/s over 4 GPUs of 1 TFLOP/s
    assert "2,000 tokens/s" in line and "MFU 0.3%" in line
    assert "MFU" not in session_summary(10, 200, 1.0, 6e6, None, 4)
    # the first step (compilation) apart: 9 steps of 200 tokens in the 0.5 s after it
    line = session_summary(10, 200, 1.5, 6e6, 1e12, 1, first=1.0)
    assert "this session 1.5 s, 1,333 tokens/s, MFU 0.8%" in line
    assert "(first step 1.0 s; after it 3,600 tokens/s, MFU 2.2%)" in line
    assert "first step" not in session_summary(1, 200, 1.5, 6e6, None, 1, first=1.5)  # nothing after it


def test_moe_logs_the_cross_entropy_alone(smoke_tokens, tmp_path):
    """An MoE run trains on cross-entropy + aux_loss_coef * balance loss but logs the cross-entropy alone
    in its train rows and sidecars, as in its val rows. Oracle: step 1 starts from the same weights and
    batch with aux_loss_coef 0.01 and 0, so its cross-entropy, and hence the logged loss, is the same;
    the weights after it differ (the aux loss is still trained on)."""
    from conftest import TINY
    from sparsinglaw.config import load_profile

    got, weights = {}, {}
    for coef in (0.01, 0.0):
        p = load_profile("smoke", overrides=TINY + ["runs.relu-s1.model.n_experts=4",
                                                    f"runs.relu-s1.model.aux_loss_coef={coef}",
                                                    "train.log_every=1", "train.resume_every=1"])
        d = tmp_path / str(coef)
        train(p.run("relu-s1"), p.data, d, smoke_tokens, progress=False, stop_after_step=1)
        log = pd.read_csv(d / "log.csv")
        got[coef] = (log.loc[log["split"] == "train", "loss"].tolist(),
                     json.loads((d / "meta_last.json").read_text())["loss"])
        weights[coef] = torch.load(d / "ckpt_last.pt", weights_only=True)["model"]
    assert len(got[0.0][0]) == 1 and got[0.01][0] == got[0.0][0]
    assert got[0.01][1] == got[0.0][1] and f"{got[0.0][1]:.6f}" == f"{got[0.0][0][0]:.6f}"
    routers = [k for k in weights[0.0] if "router" in k]
    assert routers and any(not torch.equal(weights[0.01][k], weights[0.0][k]) for k in routers)


def test_a_run_is_not_resumed_or_measured_on_another_corpus(tmp_path, monkeypatch):
    """The run key hashes data.* but not the text it selects: a checkpoint trained on one corpus is
    refused, naming both fingerprints, when the corpus under the same settings has changed (a package
    upgrade changes the default corpus), by the trainer on resume and by the measurement. With the
    original text back the run resumes and is measured."""
    import shutil
    import sysconfig
    from pathlib import Path

    from conftest import MINI
    from sparsinglaw import measure
    from sparsinglaw.config import load_profile
    from sparsinglaw.data import CorpusError, prepare

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-t]*.py"), key=lambda f: f.name)
    for f in [f for f in stdlib if 4_000 < f.stat().st_size < 60_000][:40]:
        shutil.copy(f, corpus / f.name)
    added = corpus / "zz_added.py"
    monkeypatch.setenv("SPARSINGLAW_DATA", str(tmp_path / "data"))
    p = load_profile("smoke", overrides=MINI + [f"data.corpus={corpus}"])
    run = p.run("relu-s1")
    d = runs.run_dir(p, run)
    before = prepare(p.data, runs.data_cache_dir(), progress=False)
    train(run, p.data, d, before, progress=False, stop_after_step=checkpoint_steps(run.model, run.train)[1])

    added.write_text("# one more file changes the corpus and its tokenizer\n" * 200)
    after = prepare(p.data, runs.data_cache_dir(), progress=False)
    assert after.fingerprint["sha256"] != before.fingerprint["sha256"]
    with pytest.raises(CorpusError, match="was trained on another corpus") as e:
        train(run, p.data, d, after, progress=False)
    assert before.fingerprint["sha256"][:12] in str(e.value) and after.fingerprint["sha256"][:12] in str(e.value)
    assert not (d / "DONE").exists()

    added.unlink()  # the text it was trained on: resumes and finishes
    done = train(run, p.data, d, prepare(p.data, runs.data_cache_dir(), progress=False), progress=False)
    assert done["steps"] == total_steps(run.model, run.train)
    added.write_text("# one more file changes the corpus and its tokenizer\n" * 200)
    with pytest.raises(CorpusError, match="was trained on another corpus"):
        measure.measure_run(p, run, progress=False)
    assert not list(d.glob("sparsity-*.json"))
    # nor is the finished run reported done by the trainer, which would otherwise skip it
    with pytest.raises(CorpusError, match=f"run relu-s1: .*was trained on another corpus.*delete {d}"):
        runs.train_profile(p, names=["relu-s1"], progress=False)
    assert (d / "DONE").exists()
    added.unlink()
    assert [s.status for s in runs.train_profile(p, names=["relu-s1"], progress=False)] == ["done"]
    rec = measure.measure_run(p, run, progress=False)
    assert rec["corpus"] == before.fingerprint and rec["rows"]
    # a results table never mixes corpora: the cached record is refused against another fingerprint
    assert len(measure.sparsity_table(p, [run], corpus=before.fingerprint)) == len(rec["rows"])
    with pytest.raises(CorpusError, match=r"cached measurement was made on another corpus .*restore the corpus files"):
        measure.sparsity_table(p, [run], corpus=after.fingerprint)
    sweep = measure.pareto_run(p, run, progress=False)  # a cached Pareto sweep, likewise
    assert measure.pareto_run(p, run, progress=False, corpus=before.fingerprint).equals(sweep)
    with pytest.raises(CorpusError, match="restore the corpus files it was trained on"):
        measure.pareto_run(p, run, progress=False, corpus=after.fingerprint)


def test_corpus_mismatch_advice_names_what_to_restore(tiny_profile, tmp_path):
    """The default corpus changes with the environment (restore package versions); a user corpus with
    its files (restore them). A sidecar without a fingerprint, or the same text, passes."""
    from sparsinglaw.data import CorpusError
    from sparsinglaw.train import check_corpus

    run, meta_path = tiny_profile.run("relu-s1"), tmp_path / "meta_0000004.json"
    was = {"source": "python-env: stdlib 3.11.7", "files": 10, "bytes": 100, "sha256": "a" * 64}
    now = dict(was, sha256="b" * 64)
    with pytest.raises(CorpusError, match="package versions under 'versions' in meta_0000004.json"):
        check_corpus(run, {"corpus": was}, meta_path, now)
    with pytest.raises(CorpusError, match=r"restore the corpus files it was trained on \(/data/c.jsonl\)"):
        check_corpus(run, {"corpus": dict(was, source="/data/c.jsonl")}, meta_path, dict(now, source="/data/c.jsonl"))
    check_corpus(run, {}, meta_path, now)
    check_corpus(run, {"corpus": was}, meta_path, dict(now, sha256=was["sha256"], source="elsewhere"))


def test_check_parallel_refuses_what_torchrun_processes_cannot_train():
    """Every process needs a micro-batch each step; CUDA graphs cannot accumulate over several micro-batches
    of a step. Uneven shares are allowed (the paper's grad_accum 10-48 on 8 GPUs) and named."""
    from sparsinglaw.config import load_profile
    from sparsinglaw.train import check_parallel, rank_shares

    paper = load_profile("paper")
    for run in paper.runs:  # the README's command: 8 processes, compiled (auto) on CUDA
        check_parallel(run, 8, "cuda", "auto", "default")
    run = paper.run("relu-0.1b")  # grad_accum 10
    with pytest.raises(SparsingLawError, match=r"train.grad_accum=10 is below the 16 torchrun processes"):
        check_parallel(run, 16, "cuda", "auto", "default")
    with pytest.raises(SparsingLawError, match="compute.compile_mode=reduce-overhead"):
        check_parallel(run, 8, "cuda", "auto", "reduce-overhead")
    # CUDA graphs under DDP: refused even with one micro-batch per process (known PyTorch failures)
    with pytest.raises(SparsingLawError, match=r"reduce-overhead \(CUDA graphs\) with 10 torchrun processes: CUDA "
                                               r"graphs under DDP are known to fail"):
        check_parallel(run, 10, "cuda", "auto", "reduce-overhead")
    one = dataclasses.replace(run, train=dataclasses.replace(run.train, grad_accum=1))
    check_parallel(one, 1, "cuda", "auto", "reduce-overhead")  # one process, one micro-batch a step
    check_parallel(run, 2, "cpu", True, "reduce-overhead")  # no CUDA graphs on a CPU
    check_parallel(run, 2, "cuda", False, "reduce-overhead")  # not compiled
    check_parallel(run, 10, "cuda", "auto", "max-autotune-no-cudagraphs")
    assert rank_shares(10, 2) == ""
    assert rank_shares(10, 8) == ("10 micro-batches a step over 8 processes: 2 take 2, the other 6 take 1 and "
                                  "wait for them (62% of the devices' time is used)")


def test_train_profile_checks_every_run_for_the_processes_before_training(tiny_profile, tmp_path, monkeypatch):
    """Under torchrun a run the processes cannot train stops the sweep before any run is trained (the
    largest runs go first, so a late refusal came after hours of work)."""
    from sparsinglaw import device
    from sparsinglaw.device import Dist

    monkeypatch.setattr(device, "dist_env", lambda _d: Dist(rank=0, world=4))
    monkeypatch.setattr(device, "init_distributed", lambda _d: Dist(rank=0, world=4))
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", lambda objs, src=0: None)  # rank 0's own list
    monkeypatch.setattr(runs, "run_parallel", lambda *a, **k: pytest.fail("trained before checking"))
    from conftest import TINY
    from sparsinglaw.config import load_profile

    # only a run in the middle of the profile cannot be trained by 4 processes: every run is checked
    profile = load_profile("smoke", overrides=TINY + ["train.grad_accum=4", "runs.relu-wd1.train.grad_accum=1"])
    assert [r.name for r in profile.runs if r.train.grad_accum < 4] == ["relu-wd1"] != [profile.runs[0].name]
    with pytest.raises(SparsingLawError, match=r"run relu-wd1: train.grad_accum=1 is below the 4 torchrun processes"):
        runs.train_profile(profile, runs_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob(f"{profile.name}/*"))


def test_read_csv_gives_back_every_float_bit_for_bit(tmp_path):
    """Tables are computed from tables read back from CSV; with pandas < 3's default parser a last digit
    could move (0.30305786132812496 came back as 0.3030578613281249), so the same sweep gave other numbers
    fresh and cached, and on the oldest supported pandas than on the pinned one."""
    rng = np.random.default_rng(0)
    x = np.concatenate([[0.30305786132812496, 127.67171856523589, 1e-300, 5e-324], rng.random(5000),
                        rng.lognormal(0, 20, 5000)])
    pd.DataFrame({"x": x}).to_csv(tmp_path / "t.csv", index=False)
    back = runs.read_csv(tmp_path / "t.csv")["x"].to_numpy()
    assert np.array_equal(back, x)


@pytest.mark.parametrize("clip", [1e3, 1e-3], ids=["unclipped", "clipped"])
def test_first_step_applies_the_clipped_mean_gradient_of_every_micro_batch(clip, smoke_tokens, tmp_path, monkeypatch):
    """The first optimizer step of a run of two micro-batches a step: AdamW gets the gradient of the mean
    cross-entropy over both micro-batches (oracle: one forward and backward of all 8 sequences of step 0, drawn
    as the sidecar's data_cursor rule says, through a fresh model of the same seed), clipped to train.grad_clip
    by its global norm; each muP group gets the first warmup step's lr (by hand: lr / 3 warmup steps, the hidden
    matrices / width_mult 2 more) with weight decay on all but the norms; the logged loss is that mean."""
    from sparsinglaw.config import load_profile
    from sparsinglaw.data import get_batch
    from sparsinglaw.model import Transformer

    over = TINY + ["train.grad_accum=2", "train.batch_size=4", "train.warmup_frac=0.125", "train.log_every=1",
                   f"train.grad_clip={clip}"]
    profile = load_profile("smoke", overrides=over)
    run = profile.run("relu-s2")  # d_model 32 over dim_model_base 16: width_mult 2
    seen = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(([(g["name"], g["lr"], g["weight_decay"], g["betas"]) for g in self.param_groups],
                     [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    out = train(run, profile.data, tmp_path / "run", smoke_tokens, progress=False, stop_after_step=1)
    assert out == {"stopped_at": 1} and len(seen) == 1
    groups, grads = seen[0]
    lr, wd = run.train.lr, run.train.weight_decay
    assert [g[0] for g in groups] == ["matrix", "embedding", "norm"]
    assert [g[1] for g in groups] == pytest.approx([lr / 2 / 3, lr / 3, lr / 3], rel=1e-12)
    assert [g[2] for g in groups] == [wd, wd, 0.0] and all(g[3] == (0.9, 0.95) for g in groups)

    torch.manual_seed(run.train.seed)
    ref = Transformer(run.model)
    gen, xs, ys = torch.Generator(), [], []
    for micro in range(2):
        gen.manual_seed(batch_seed(run.train.seed, 0, micro))
        x, y = get_batch(smoke_tokens.train, 4, run.model.seq_len, gen)
        xs.append(x)
        ys.append(y)
    _, loss = ref(torch.cat(xs), torch.cat(ys))
    loss.backward()
    want = [p.grad for g in ref.param_groups(lr, wd) for p in g["params"]]
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in want)))
    scale = min(1.0, clip / (norm + 1e-6))
    assert (scale == 1.0) == (clip > 1) and norm > 10 * 1e-3  # the clipped case does clip
    assert len(grads) == len(want)
    for got, w in zip(grads, want, strict=True):
        torch.testing.assert_close(got, w * scale, rtol=1e-4, atol=1e-5 * float(w.abs().max()) * scale)
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert log["step"].tolist() == [1] and log["loss"].iloc[0] == pytest.approx(loss.detach().item(), abs=2e-6)


def spy_cross_entropy(monkeypatch) -> list[float]:
    """The cross-entropy of every training forward, in order, recorded by a spy on the model."""
    from sparsinglaw.model import Transformer

    ces, real = [], Transformer.forward

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        if k.get("return_ce"):
            ces.append(out[2].detach().item())
        return out

    monkeypatch.setattr(Transformer, "forward", spy)
    return ces


def test_logged_train_loss_is_the_mean_of_the_steps_since_the_last_row(tiny_profile, smoke_tokens, tmp_path,
                                                                      monkeypatch):
    """Each train row of log.csv holds the mean cross-entropy of the log_every steps up to it (oracle: the
    cross-entropy of every training forward, recorded by a spy on the model), not the last step's alone."""
    ces = spy_cross_entropy(monkeypatch)
    run = tiny_profile.run("relu-s1")
    done = train(run, tiny_profile.data, tmp_path / "run", smoke_tokens, progress=False)
    every, n = run.train.log_every, done["steps"]
    assert len(ces) == n and every > 1 and n % every == 0  # grad_accum 1: one forward a step
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    rows = log[log["split"] == "train"]
    assert rows["step"].tolist() == list(range(every, n + 1, every))
    want = [sum(ces[s - every:s]) / every for s in rows["step"]]
    assert rows["loss"].tolist() == pytest.approx(want, abs=2e-6)


def test_checkpoint_val_loss_is_the_loss_on_the_first_validation_tokens(tiny_profile, smoke_tokens):
    """A checkpoint's val_loss (sidecar and log) is the mean next-token cross-entropy of its weights over the
    first train.eval_tokens tokens of the validation split in windows of seq_len: recomputed here window by
    window with F.cross_entropy on the loaded weights (the oracle), not on training text."""
    import torch.nn.functional as F

    from sparsinglaw.model import Transformer

    run, d, _ = _train(tiny_profile, "relu-s1")
    mark = checkpoint_steps(run.model, run.train)[0]
    meta = json.loads((d / f"meta_{mark:07d}.json").read_text())
    model = Transformer(run.model)
    model.load_state_dict(torch.load(d / f"ckpt_{mark:07d}.pt", weights_only=True)["model"])
    model.eval()
    T, n = run.model.seq_len, run.train.eval_tokens // run.model.seq_len
    val = torch.from_numpy(np.asarray(smoke_tokens.val[: n * T + 1]).astype(np.int64))
    assert len(smoke_tokens.val) > n * T
    total = 0.0
    with torch.no_grad():
        for i in range(n):
            logits, _ = model(val[i * T:(i + 1) * T][None])
            total += F.cross_entropy(logits[0].double(), val[i * T + 1:(i + 1) * T + 1], reduction="sum").item()
    assert meta["val_loss"] == pytest.approx(total / (n * T), rel=1e-5)
    log = runs.load_log(tiny_profile, run)
    row = log[(log["split"] == "val") & (log["step"] == mark)]
    assert row["loss"].tolist() == pytest.approx([total / (n * T)], abs=2e-6)


def test_wsd_run_applies_the_schedule_and_keeps_a_final_decay_checkpoint(smoke_tokens, tmp_path, monkeypatch):
    """24 steps of warmup 3, stable 15, decay 6 (by hand: round(0.125 * 24), round(0.25 * 24)): the lr AdamW
    uses at step k is lr * (k + 1) / 3 in the warmup, lr in the stable stage and lr * 0.1 ** ((k - 17) / 6) in
    the decay; the marks (steps 6, 9, 13, 18: 0.3 of the stable end, geometric) are stable-stage
    checkpoints, and the last step, past the stable end, gets its own checkpoint labelled decay."""
    from sparsinglaw.config import load_profile

    profile = load_profile("smoke", overrides=TINY + ["train.warmup_frac=0.125", "train.decay_frac=0.25"])
    run = profile.run("relu-s1")
    lrs, real_step = [], torch.optim.AdamW.step

    def spy(self, *a, **k):
        lrs.append({g["name"]: g["lr"] for g in self.param_groups})
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    d = tmp_path / "run"
    done = train(run, profile.data, d, smoke_tokens, progress=False)
    lr = run.train.lr
    want = [lr * (k + 1) / 3 for k in range(3)] + [lr] * 15 + [lr * 0.1 ** ((k - 17) / 6) for k in range(18, 24)]
    assert done["steps"] == len(lrs) == 24
    for name in ("matrix", "embedding", "norm"):  # width_mult 1: every group at the peak lr
        assert [s[name] for s in lrs] == pytest.approx(want, rel=1e-12), name
    assert done["checkpoints"] == [6, 9, 13, 18, 24]
    metas = [json.loads((d / f"meta_{s:07d}.json").read_text()) for s in done["checkpoints"]]
    assert [m["stage"] for m in metas] == ["stable"] * 4 + ["decay"]
    assert [m["tokens"] for m in metas] == [s * 512 for s in done["checkpoints"]]


def test_check_tokens_refuses_a_train_split_without_two_window_starts(tiny_profile, smoke_tokens):
    """get_batch draws a start in [0, len - seq_len - 1): a train split needs seq_len + 2 tokens, so check_tokens
    (run before any file is written) refuses seq_len + 1 of them and takes seq_len + 2."""
    import dataclasses

    from sparsinglaw.data import CorpusError, get_batch
    from sparsinglaw.train import check_tokens

    run = tiny_profile.run("relu-s1")
    T = run.model.seq_len
    short = dataclasses.replace(smoke_tokens, train=smoke_tokens.train[:T + 1])
    with pytest.raises(CorpusError, match=f"needs at least {T + 2}"):
        check_tokens(run, short)
    with pytest.raises(CorpusError):
        get_batch(short.train, 1, T, torch.Generator().manual_seed(0))
    ok = dataclasses.replace(smoke_tokens, train=smoke_tokens.train[:T + 2])
    check_tokens(run, ok)
    get_batch(ok.train, 1, T, torch.Generator().manual_seed(0))


def test_a_run_longer_than_its_corpus_says_how_many_passes_it_makes(tmp_path, monkeypatch, capsys):
    """A run whose random windows repeat much of its data says so (two small files: 12,288 tokens over a
    few thousand), with the passes, the share of the split seen and the share of drawn tokens repeated
    (data.window_coverage); the paper's runs see theirs about once. A run that repeats no more than
    REPEAT_NOTE of its tokens gets no note: at most ~0.46 passes."""
    import shutil
    import sysconfig
    from pathlib import Path
    from types import SimpleNamespace

    from conftest import TINY
    from sparsinglaw.config import load_profile
    from sparsinglaw.data import prepare
    from sparsinglaw.train import passes_note

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-t]*.py"), key=lambda f: f.name)
    for f in [f for f in stdlib if 6_000 < f.stat().st_size < 12_000][:2]:
        shutil.copy(f, corpus / f.name)
    monkeypatch.setenv("SPARSINGLAW_DATA", str(tmp_path / "data"))
    p = load_profile("smoke", overrides=TINY + [f"data.corpus={corpus}"])
    run = p.run("relu-s1")
    tokens = prepare(p.data, runs.data_cache_dir(), progress=False)
    n = len(tokens.train)
    assert 0 < n < run.train.tokens
    train(run, p.data, runs.run_dir(p, run), tokens, progress=False, stop_after_step=1)
    seen = 1 - math.exp(-12288 / n)
    want = (f"note: run relu-s1 trains 12,288 tokens, {12288 / n:.2f} passes over the {n:,} training tokens of "
            f"data.corpus={corpus}: its random windows (drawn with replacement) see about {seen:.0%} of them, "
            f"and about {1 - seen * n / 12288:.0%} of the tokens it draws repeat text it has seen (the paper's "
            "runs see their data about once); add text or raise data.max_mb for fewer repeats")
    assert want in capsys.readouterr().out.splitlines()
    assert passes_note(run, SimpleNamespace(train=range(12_288 * 3), meta=dict)) is None  # 1/3 pass: 15%
    assert "0.50 passes" in passes_note(run, SimpleNamespace(train=range(12_288 * 2), meta=dict))  # 21%


# ----------------------------------------------------------------------------- schedule, log and snapshots


def test_logged_lr_is_the_schedule_lr_of_the_last_step_trained(smoke_tokens, tmp_path):
    """24 steps, warmup 3, stable 15, decay 6 (as test_wsd_run): the lr column of the row logged after
    step s (1-based) is lr times the factor of step s - 1 (0-based): s / 3 in the warmup, 1 in the stable stage,
    0.1 ** ((s - 18) / 6) in the decay; train and val rows alike."""
    profile = load_profile("smoke", overrides=TINY + ["train.warmup_frac=0.125", "train.decay_frac=0.25"])
    run = profile.run("relu-s1")
    train(run, profile.data, tmp_path / "run", smoke_tokens, progress=False)
    lr = run.train.lr

    def want(s: int) -> float:
        return lr * (s / 3 if s <= 3 else 1.0 if s <= 18 else 0.1 ** ((s - 18) / 6))

    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert log["step"].max() == 24 and (log["step"] > 18).any() and (log["step"] <= 3).any()
    assert log["lr"].tolist() == pytest.approx([want(s) for s in log["step"]], rel=1e-5)


def test_a_resume_snapshot_is_written_every_resume_every_steps(tiny_profile, smoke_tokens, tmp_path, capsys):
    """TINY: resume_every 3, log_every 2, marks 8, 11, 17, 24. Step 9 is neither a log step nor a mark, so
    only the resume rule saves it: a run stopped after step 9 holds ckpt_last of step 9 and resumes from 9."""
    run = tiny_profile.run("relu-s1")
    d = tmp_path / "run"
    assert train(run, tiny_profile.data, d, smoke_tokens, progress=False, stop_after_step=9) == {"stopped_at": 9}
    assert json.loads((d / "meta_last.json").read_text())["step"] == 9
    capsys.readouterr()
    train(run, tiny_profile.data, d, smoke_tokens, progress=False, stop_after_step=10)
    assert "run relu-s1: resuming from step 9 of 24 (ckpt_last.pt)" in capsys.readouterr().out


def test_the_last_step_is_logged_when_log_every_does_not_divide_the_steps(tiny_profile, smoke_tokens, tmp_path,
                                                                         monkeypatch):
    """24 steps logged every 5: train rows after steps 5, 10, 15, 20 and 24, the last one the mean
    cross-entropy of steps 21-24 (oracle: spy_cross_entropy)."""
    ces = spy_cross_entropy(monkeypatch)
    profile = load_profile("smoke", overrides=TINY + ["train.log_every=5"])
    train(profile.run("relu-s1"), profile.data, tmp_path / "run", smoke_tokens, progress=False)
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    rows = log[log["split"] == "train"]
    assert rows["step"].tolist() == [5, 10, 15, 20, 24] and len(ces) == 24
    assert rows["loss"].iloc[-1] == pytest.approx(sum(ces[20:24]) / 4, abs=2e-6)


def test_a_snapshot_at_the_last_warmup_step_is_labelled_warmup(smoke_tokens, tmp_path):
    """warmup 3 steps (round(0.125 * 24)); a resume snapshot after step 3 (resume_every 3) closes the warmup:
    its stage is "warmup" (measure.stable_steps: stable means warmup < step <= warmup + stable)."""
    profile = load_profile("smoke", overrides=TINY + ["train.warmup_frac=0.125"])
    d = tmp_path / "run"
    train(profile.run("relu-s1"), profile.data, d, smoke_tokens, progress=False, stop_after_step=3)
    meta = json.loads((d / "meta_last.json").read_text())
    assert (meta["step"], meta["stage"]) == (3, "warmup")


def test_check_tokens_refuses_a_validation_split_without_one_window(tiny_profile, smoke_tokens):
    """eval_batches needs seq_len + 1 validation tokens (targets are shifted by one): check_tokens refuses
    seq_len of them before any file is written, and takes seq_len + 1."""
    run = tiny_profile.run("relu-s1")
    T = run.model.seq_len
    short = dataclasses.replace(smoke_tokens, val=smoke_tokens.val[:T])
    with pytest.raises(CorpusError, match=f"validation split has {T} tokens.*needs at least {T + 1}"):
        check_tokens(run, short)
    with pytest.raises(CorpusError):
        list(eval_batches(short.val, T, 1, T))
    ok = dataclasses.replace(smoke_tokens, val=smoke_tokens.val[:T + 1])
    check_tokens(run, ok)
    assert len(list(eval_batches(ok.val, T, 1, T))) == 1


def test_evaluate_gives_the_model_back_in_the_mode_it_had(tiny_profile, smoke_tokens):
    """evaluate switches to eval mode and back: an MoE model left in eval mode after a checkpoint's
    validation would stop training its load-balancing loss (model.forward adds it only while training)."""
    from sparsinglaw.model import Transformer

    model = Transformer(tiny_profile.run("relu-s1").model)
    T = model.cfg.seq_len
    for mode in (True, False):
        model.train(mode)
        evaluate(model, smoke_tokens.val, T, 2, 2 * T, torch.device("cpu"))
        assert model.training is mode


def _opt_tags(d):
    return sorted(p.name[len("opt_"):-len(".pt")] for p in d.glob("opt_*.pt"))


def test_only_the_newest_checkpoints_keep_optimizer_state(tiny_profile, smoke_tokens, tmp_path):
    """AdamW's state (twice the weights) is kept for the KEEP_OPTIMIZER newest checkpoints, which a resume
    loads; older marks keep the weights that the measurement reads, and a finished run keeps none: a
    third of the disk of checkpoints that each held it (the paper profile's 1.2B runs: ~15 GB each)."""
    run = tiny_profile.run("relu-s1")
    marks = checkpoint_steps(run.model, run.train)  # resume_every 3 puts ckpt_last between them
    d = tmp_path / "run"
    train(run, tiny_profile.data, d, smoke_tokens, progress=False, stop_after_step=marks[2] + 2)
    steps = {t: json.loads((d / f"meta_{t}.json").read_text())["step"] for t in _opt_tags(d)}
    newest = sorted((json.loads(p.read_text())["step"] for p in d.glob("meta_*.json")), reverse=True)[:2]
    assert sorted(steps.values(), reverse=True) == newest and len(steps) == KEEP_OPTIMIZER
    for p in d.glob("ckpt_*.pt"):
        assert "optimizer" not in torch.load(p, weights_only=True), p.name
    tag = next(t for t in _opt_tags(d) if t != "last")
    opt_bytes, ckpt_bytes = (d / f"opt_{tag}.pt").stat().st_size, (d / f"ckpt_{tag}.pt").stat().st_size
    assert 1.8 < opt_bytes / ckpt_bytes < 2.2, (opt_bytes, ckpt_bytes)  # two moments per weight
    found = latest_valid_checkpoint(d, run.config_hash(tiny_profile.data), warn=pytest.fail)
    assert found[1]["step"] == newest[0]
    train(run, tiny_profile.data, d, smoke_tokens, progress=False)  # resumes, finishes
    assert _opt_tags(d) == [] and not (d / "ckpt_last.pt").exists() and (d / "DONE").exists()


def test_a_damaged_optimizer_state_resumes_from_the_next_checkpoint(tiny_profile, smoke_tokens, tmp_path):
    """A resume needs the optimizer state: when the newest checkpoint's is corrupted it is named and the
    next newest checkpoint is loaded; a checkpoint of the older layout (optimizer state inside
    ckpt_<tag>.pt, no opt_<tag>.pt) still resumes. Both end with the weights of an uninterrupted run."""
    run = tiny_profile.run("silu-s1")
    h = run.config_hash(tiny_profile.data)
    ref = tmp_path / "ref"
    train(run, tiny_profile.data, ref, smoke_tokens, progress=False)
    want = torch.load(sorted(ref.glob("ckpt_0*.pt"))[-1], weights_only=True)["model"]
    marks = checkpoint_steps(run.model, run.train)
    for layout in ("corrupted", "older"):
        d = tmp_path / layout
        train(run, tiny_profile.data, d, smoke_tokens, progress=False, stop_after_step=marks[1] + 1)
        tags = sorted(_opt_tags(d), key=lambda t: json.loads((d / f"meta_{t}.json").read_text())["step"])
        if layout == "corrupted":
            opt = d / f"opt_{tags[-1]}.pt"
            data = bytearray(opt.read_bytes())
            data[len(data) // 2] ^= 0xFF
            opt.write_bytes(bytes(data))
            warnings = []
            tag, _ = latest_valid_checkpoint(d, h, warn=warnings.append)
            assert tag == tags[-2] and len(warnings) == 1 and opt.name in warnings[0], warnings
        else:  # rewrite the newest as the older layout: one file, its sidecar without "optimizer"
            t = tags[-1]
            state = torch.load(d / f"ckpt_{t}.pt", weights_only=True)
            state["optimizer"] = torch.load(d / f"opt_{t}.pt", weights_only=True)
            torch.save(state, d / f"ckpt_{t}.pt")
            (d / f"opt_{t}.pt").unlink()
            meta = json.loads((d / f"meta_{t}.json").read_text())
            meta.pop("optimizer")
            data = (d / f"ckpt_{t}.pt").read_bytes()
            meta.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
            (d / f"meta_{t}.json").write_text(json.dumps(meta))
            assert latest_valid_checkpoint(d, h, warn=pytest.fail)[0] == t
        train(run, tiny_profile.data, d, smoke_tokens, progress=False)
        got = torch.load(sorted(d.glob("ckpt_0*.pt"))[-1], weights_only=True)["model"]
        assert all(torch.equal(want[k], got[k]) for k in want), layout


def test_a_run_killed_before_its_done_keeps_no_optimizer_state(tiny_profile, smoke_tokens, tmp_path, monkeypatch,
                                                               capsys):
    """The optimizer states go before DONE is written (after it, a kill would leave them for good: a
    finished run is never trained again): a run stopped just before its DONE has none left and still
    finishes without training a step, from its final checkpoint. When no checkpoint can be resumed (that
    one damaged too), a note says so and the run trains again from step 0, to the same weights."""
    from sparsinglaw import train as tr

    run = tiny_profile.run("relu-s1")
    d = tmp_path / "run"
    write = tr.atomic_write_text

    def killed_at_done(path, text):
        if path.name == "DONE":
            raise KeyboardInterrupt  # as a kill: nothing after this point runs
        write(path, text)

    monkeypatch.setattr(tr, "atomic_write_text", killed_at_done)
    with pytest.raises(KeyboardInterrupt):
        train(run, tiny_profile.data, d, smoke_tokens, progress=False)
    monkeypatch.setattr(tr, "atomic_write_text", write)
    assert _opt_tags(d) == [] and not (d / "DONE").exists()
    final = sorted(d.glob("ckpt_0*.pt"))[-1]
    want = torch.load(final, weights_only=True)["model"]
    capsys.readouterr()
    train(run, tiny_profile.data, d, smoke_tokens, progress=False)
    assert "no step trained in this session" in capsys.readouterr().out
    (d / "DONE").unlink()
    final.write_bytes(final.read_bytes()[:-1])  # truncated: the older marks keep weights only
    train(run, tiny_profile.data, d, smoke_tokens, progress=False)
    out = capsys.readouterr().out
    assert "no checkpoint can be resumed" in out and "training again from step 0" in out, out
    got = torch.load(final, weights_only=True)["model"]
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_short_split_note():
    """The validation split shorter than an eval_tokens setting: a note with the tokens scored (whole windows
    of the split), none when the split holds what the setting asks (rounded down to whole windows)."""
    from sparsinglaw.train import short_split_note

    note = short_split_note("run r", "train.eval_tokens", 2048, 674, 64)
    assert note == ("note: run r: the validation split's 674 tokens hold 673 next-token targets, fewer than "
                    "train.eval_tokens=2,048: scored on 640 (whole windows of model.seq_len=64); raise "
                    "data.val_fraction or data.max_mb, or lower train.eval_tokens")
    assert "2,048 tokens hold 2,047 next-token targets" in short_split_note("r", "f", 2048, 2048, 64)
    assert short_split_note("run r", "train.eval_tokens", 2000, 1793, 256) is None  # 1,792 asked, 1,792 held
    assert "scored on 1,536" in short_split_note("run r", "train.eval_tokens", 2000, 1792, 256)
    assert short_split_note("run r", "sparsity.eval_tokens", 4096, 10**6, 256) is None


def test_training_notes_a_validation_split_shorter_than_eval_tokens(tmp_path, smoke_tokens, capsys):
    """train names the shortfall once per run (it scores every checkpoint on what the split holds)."""
    from sparsinglaw import runs
    from sparsinglaw.config import load_profile

    profile = load_profile("smoke", overrides=TINY + [f"train.eval_tokens={10 * len(smoke_tokens.val)}"])
    runs.train_profile(profile, names=["relu-s1"], jobs=1, runs_dir=tmp_path, progress=False)
    out = capsys.readouterr().out
    assert out.count(f"note: run relu-s1: the validation split's {len(smoke_tokens.val):,} tokens hold "
                     f"{len(smoke_tokens.val) - 1:,} next-token targets, fewer than "
                     f"train.eval_tokens={10 * len(smoke_tokens.val):,}") == 1
