"""Fault injection (issue 6): kills during measurement, checkpoints from another config, NaN/inf loss,
failing writes (full disk) of every kind of artifact, concurrent invocations on one runs folder, and
determinism and provenance of the results tables. Kills during training: tests/test_resume.py.

Faults are injected with monkeypatch (os.replace, os.fsync) or, in subprocesses, with
SPARSINGLAW_TEST_FAULT=<enospc|stall>:<file name> (train.atomic_write_files).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import MINI, REPO
from sparsinglaw import analysis, cli, measure, plots, runs
from sparsinglaw.config import SparsingLawError, checkpoint_steps, load_profile, profile_flags
from sparsinglaw.train import (
    TrainingDiverged,
    WriteError,
    append_log,
    checkpoint_problem,
    checkpoint_tags,
    latest_valid_checkpoint,
    train,
    trim_log,
)

TABLES = ("sparsity", "neurons", "tokens")


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"), PYTHONUNBUFFERED="1", **extra)
    if "SPARSINGLAW_TEST_FAULT" not in extra:
        env.pop("SPARSINGLAW_TEST_FAULT", None)
    return env


def _sets(overrides: list[str]) -> list[str]:
    return sum((["--set", s] for s in overrides), [])


def _files(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _temps(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob("*.tmp")]


class Sampler(threading.Thread):
    """Parses every file with a final name under `roots` (JSON, CSV, NPZ, YAML) every few ms while
    other processes write them; `bad` collects any that does not parse (a half-written file)."""

    def __init__(self, *roots: Path, skip: tuple[str, ...] = ()):
        super().__init__(daemon=True)
        self.roots, self.skip = roots, skip
        self.bad: list[tuple[str, str]] = []
        self.sweeps, self.files_read, self.temp_names = 0, 0, set()
        self.halt = threading.Event()

    def check(self, p: Path) -> None:
        if p.suffix == ".json":
            json.loads(p.read_bytes())
        elif p.suffix == ".csv":
            pd.read_csv(p)
        elif p.suffix == ".npz":
            with np.load(p) as z:
                [z[k] for k in z.files]
        elif p.suffix == ".yaml":
            yaml.safe_load(p.read_text())
        else:
            return
        self.files_read += 1

    def run(self) -> None:
        while not self.halt.is_set():
            for root in self.roots:
                for p in list(root.rglob("*")) if root.exists() else []:
                    if p.name.endswith(".tmp"):
                        self.temp_names.add(p.name)
                        continue
                    if p.name in self.skip or not p.is_file():
                        continue
                    try:
                        self.check(p)
                    except FileNotFoundError:
                        pass  # removed on purpose (ckpt_last after the run, a stale temp)
                    except Exception as e:  # noqa: BLE001 - any parse error is a finding
                        self.bad.append((str(p), repr(e)[:200]))
            self.sweeps += 1
            time.sleep(0.01)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


def _tiny_run(tiny_profile, name: str, runs_dir: Path, smoke_tokens, **kw):
    run = tiny_profile.run(name)
    d = runs.run_dir(tiny_profile, run, runs_dir)
    return run, d, train(run, tiny_profile.data, d, smoke_tokens, progress=False, **kw)


# -----------------------------------------------------------------------------------------------
# kills during measurement


@pytest.mark.slow
def test_kill_during_measurement_then_rerun(tmp_path, monkeypatch, mini_path, measured_mini, session_roots):
    """SIGKILL once while runs are measured and once while a results table is being written; the rerun
    completes, every file parses at every sampled moment, and the tables equal an uninterrupted run's."""
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "results"))
    rd = tmp_path / "runs"
    profile = load_profile(mini_path, overrides=MINI)
    runs.train_profile(profile, jobs=1, runs_dir=rd, progress=False)
    out = tmp_path / "results" / "mini"
    cmd = [sys.executable, "-m", "sparsinglaw", "measure", "--profile", str(mini_path), "--runs-dir", str(rd),
           "-j", "1", "--no-progress", *_sets(MINI)]
    sampler = Sampler(rd, out.parent, skip=("log.csv",))
    sampler.start()
    rng = random.Random(6)
    try:
        for fault in (None, "stall:sparsity.csv"):
            log = tmp_path / f"measure-{fault is None}.txt"
            if fault is None:  # a random moment once a first run is measured
                stop_when = lambda: list(rd.glob("mini/*/sparsity-*.json"))
            else:  # while sparsity.csv is written (temp file complete, not yet renamed)
                stop_when = lambda log=log: "test fault: stalled" in log.read_text()
            with open(log, "w") as f:
                env = _env(SPARSINGLAW_TEST_FAULT=fault) if fault else _env()
                proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
                deadline = time.time() + 180
                while proc.poll() is None and not stop_when() and time.time() < deadline:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0, 0.2) if fault is None else 0)
                assert proc.poll() is None, f"measurement ended before the kill:\n{log.read_text()}"
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            if fault:  # killed while writing sparsity.csv: the temp file exists, the final name does not
                assert not (out / "sparsity.csv").exists() and list(out.glob(".sparsity.csv.*.tmp"))
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    finally:
        sampler.stop()
    assert done.returncode == 0, done.stderr
    assert not sampler.bad, sampler.bad
    assert sampler.sweeps > 10 and sampler.files_read > 0
    assert all(n.startswith(".") for n in sampler.temp_names)  # temp files never carry a final name
    assert not _temps(rd, out), "temp files of the killed writes remain"
    first = session_roots["SPARSINGLAW_RESULTS"] / "mini"  # measured_mini: measured without a kill
    for name in TABLES:  # complete tables that pass their checks and equal the uninterrupted ones
        measure.read_results(profile, name)
        assert (out / f"{name}.csv").read_bytes() == (first / f"{name}.csv").read_bytes(), name


# -----------------------------------------------------------------------------------------------
# corrupted checkpoints and diverging losses


def test_checkpoint_from_another_config_is_refused(tmp_path, tiny_profile, smoke_tokens, capsys):
    """A checkpoint of another config copied into a run folder is skipped with a message naming it and
    the reason; training falls back to the last valid checkpoint and finishes (through the CLI)."""
    from conftest import TINY

    rd = tmp_path / "runs"
    run = tiny_profile.run("relu-s1")
    marks = checkpoint_steps(run.model, run.train)
    _, d, _ = _tiny_run(tiny_profile, "relu-s1", rd, smoke_tokens, stop_after_step=marks[1])
    other = load_profile("smoke", overrides=TINY + ["train.lr=0.02"])
    _, od, _ = _tiny_run(other, "relu-s1", tmp_path / "other", smoke_tokens, stop_after_step=marks[2])
    tag = f"{marks[2]:07d}"  # the newest checkpoint in the folder, of another config
    for name in (f"ckpt_{tag}.pt", f"meta_{tag}.json"):
        (d / name).write_bytes((od / name).read_bytes())
    h = run.config_hash(tiny_profile.data)
    assert "another config" in checkpoint_problem(d, tag, h)
    rc = cli.main(["train", "--profile", "smoke", "--run", "relu-s1", "--runs-dir", str(rd), "--no-progress",
                   *_sets(TINY)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"skipping checkpoint {d / f'ckpt_{tag}.pt'}: written by another config" in out.out
    assert f"run relu-s1: resuming from step {marks[1]} of " in out.out  # the last valid one, not step 0
    assert (d / "DONE").exists()
    assert checkpoint_problem(d, tag, h) is None  # trained again from the last valid one: now our own


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["corrupted", "missing"])
def test_bad_stable_checkpoint_is_refused_not_skipped(tmp_path, measured_mini, session_roots, fault):
    """A corrupted (one byte flipped) or missing stable-stage checkpoint stops measurement, sparse inference
    and the Pareto sweep with one line naming its step and problem; they used to leave it out (c searched on
    the other checkpoints, an earlier checkpoint evaluated as the final one). Nothing is cached, and a
    measurement cached before is still returned without reading any checkpoint."""
    from sparsinglaw import inference

    p = measured_mini
    run, rd = p.run("relu-s1"), tmp_path / "runs"
    d = runs.run_dir(p, run, rd)
    shutil.copytree(runs.run_dir(p, run, session_roots["SPARSINGLAW_RUNS"]), d,
                    ignore=shutil.ignore_patterns("inference-*", "pareto-*"))  # whatever other tests cached
    rec = json.loads(measure.record_path(p, run, rd).read_text())
    marks = measure.stable_marks(run)
    assert marks == sorted({row["step"] for row in rec["rows"]})  # every stable mark was measured
    step = marks[-1] if fault == "missing" else marks[-2]  # the final checkpoint, or one the search uses
    pt = d / f"ckpt_{step:07d}.pt"
    if fault == "missing":
        pt.unlink()
        (d / f"meta_{step:07d}.json").unlink()
    else:
        data = bytearray(pt.read_bytes())
        data[len(data) // 2] ^= 0xFF
        pt.write_bytes(bytes(data))
    assert measure.measure_run(p, run, rd, progress=False) == rec  # cached: no checkpoint is read
    for f in d.glob("sparsity-*"):
        f.unlink()
    want = f"{pt}: missing" if fault == "missing" else f"{pt}: checksum mismatch"
    for stage in (measure.measure_run, inference.inference_run, measure.pareto_run):
        with pytest.raises(SparsingLawError) as e:
            stage(p, run, rd, progress=False)
        msg = str(e.value)
        assert f"run relu-s1: stable-stage checkpoint(s) of step(s) {step} missing or invalid ({want}" in msg, msg
        assert f"delete the run folder {d} to train the run again" in msg and "\n" not in msg
    assert not [f.name for f in d.iterdir() if f.name.startswith(("sparsity-", "inference-", "pareto-"))]
    # the finished run is "damaged", not "done": training refuses it (it would skip it as finished) and
    # names the file, `runs` warns; the other runs are as they were
    st = runs.run_state(p, run, rd)
    assert (st.status, st.trained, st.problems) == ("damaged", True, (want if fault == "missing" else
                                                                      f"{want} (a corrupted file, or a write "
                                                                      "interrupted between it and its sidecar)",))
    assert st.checkpoints == len(json.loads((d / "DONE").read_text())["checkpoints"]) - 1
    with pytest.raises(SparsingLawError) as e:
        runs.train_profile(p, names=["relu-s1"], runs_dir=rd, progress=False)
    assert str(e.value) == (f"run relu-s1 finished training, but 1 of its checkpoints cannot be used "
                            f"({st.problems[0]}); restore the file(s), or delete the run folder {d} and train the "
                            f"run again (python -m sparsinglaw train {profile_flags(p)} --run relu-s1 --runs-dir {rd})")
    table = runs.states_table(p, rd).set_index("run")["status"]
    assert table["relu-s1"] == "damaged" and (table.drop("relu-s1") != "damaged").all()


@pytest.mark.parametrize("kind", ["inf_at_step", "nan_at_step"])
def test_injected_inf_or_nan_stops_and_keeps_last_good(tmp_path, tiny_profile, smoke_tokens, kind):
    run = tiny_profile.run("silu-s1")
    marks = checkpoint_steps(run.model, run.train)
    with pytest.raises(TrainingDiverged) as e:
        _tiny_run(tiny_profile, "silu-s1", tmp_path, smoke_tokens, fault={kind: marks[1] + 1})
    d = runs.run_dir(tiny_profile, run, tmp_path)
    msg = str(e.value)
    # the whole phrase: the message names the tmp folder, whose test name holds both "inf" and "nan"
    assert f"training loss is {'inf' if kind == 'inf_at_step' else 'nan'} at step {marks[1] + 1};" in msg
    assert f"{d / f'ckpt_{marks[1]:07d}.pt'} (step {marks[1]}) is kept" in msg
    tag, meta = latest_valid_checkpoint(d, run.config_hash(tiny_profile.data))
    assert meta["step"] == marks[1] and not (d / "DONE").exists()
    assert pd.read_csv(d / "log.csv")["step"].max() == marks[1]  # nothing logged past the last good step


def test_infinite_gradient_with_finite_loss_stops_before_saving(tmp_path, tiny_profile, smoke_tokens, monkeypatch):
    """An inf gradient at a checkpoint step: that step's loss is still finite, but clipping and AdamW
    write NaN weights. The run stops there with the divergence error, and no checkpoint it left holds a
    non-finite weight (the one of that step is not written)."""
    import torch

    run = tiny_profile.run("silu-s1")
    marks = checkpoint_steps(run.model, run.train)
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def poisoned(params, *a, **k):  # called once per optimizer step, before opt.step()
        params = list(params)
        calls.append(1)
        if len(calls) == marks[1]:
            params[0].grad.view(-1)[0] = float("inf")
        return real(params, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)
    with pytest.raises(TrainingDiverged, match=rf"gradient norm is inf \(loss \d.*\) at step {marks[1]}; stopped"):
        _tiny_run(tiny_profile, "silu-s1", tmp_path, smoke_tokens)
    d = runs.run_dir(tiny_profile, run, tmp_path)
    _, meta = latest_valid_checkpoint(d, run.config_hash(tiny_profile.data))
    assert marks[0] <= meta["step"] < marks[1] and not (d / f"ckpt_{marks[1]:07d}.pt").exists()
    for pt in d.glob("ckpt_*.pt"):
        model = torch.load(pt, weights_only=True)["model"]
        assert all(bool(v.isfinite().all()) for v in model.values()), pt.name
    assert pd.read_csv(d / "log.csv")["step"].max() < marks[1]


def test_real_divergence_through_the_cli(tmp_path, capsys):
    """lr=1e30 (YAML 1.1 reads it as a string: accepted as the number) diverges: one clear line, exit 2.
    (Here the gradient norm of step 2 is NaN while its loss is still finite: it stops there.)"""
    from conftest import TINY

    rc = cli.main(["train", "--profile", "smoke", "--run", "relu-s1", "--runs-dir", str(tmp_path), "--no-progress",
                   *_sets(TINY + ["train.lr=1e30"])])
    err = capsys.readouterr().err
    assert rc == 2 and "Lower train.lr" in err and len(err.splitlines()) == 1
    assert any(f"error: run relu-s1: {what} is" in err for what in ("training loss", "gradient norm"))
    assert "Traceback" not in err


# -----------------------------------------------------------------------------------------------
# failing writes (a full disk)


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fault", ["fsync", "replace", "partial_temp", "sidecar_rename"])
def test_failing_checkpoint_or_log_write_keeps_previous_files(tmp_path, tiny_profile, smoke_tokens, monkeypatch,
                                                              fault):
    run = tiny_profile.run("relu-s1")
    marks = checkpoint_steps(run.model, run.train)
    h = run.config_hash(tiny_profile.data)
    _, d, _ = _tiny_run(tiny_profile, "relu-s1", tmp_path, smoke_tokens, stop_after_step=marks[1])
    before = _files(d)
    real_replace = os.replace
    if fault == "fsync":  # the first write after the resume, the log append, fails
        monkeypatch.setattr(os, "fsync", _enospc)
        expect = d / "log.csv"
    elif fault == "replace":  # the next resume snapshot cannot be renamed into place
        monkeypatch.setattr(os, "replace", _enospc)
        expect = d / "ckpt_last.pt"
    elif fault == "partial_temp":  # half the temp file is written, then the disk is full
        monkeypatch.setenv("SPARSINGLAW_TEST_FAULT", "enospc:ckpt_last.pt")
        expect = d / "ckpt_last.pt"
    else:  # the checkpoint is renamed, its sidecar is not
        monkeypatch.setattr(os, "replace", lambda a, b: _enospc() if Path(b).name.startswith("meta_")
                            else real_replace(a, b))
        expect = d / "meta_last.json"
    with pytest.raises(WriteError) as e:
        _tiny_run(tiny_profile, "relu-s1", tmp_path, smoke_tokens)
    assert str(expect) in str(e.value) and "No space left on device" in str(e.value)
    if fault == "fsync":  # the append itself failed (not, say, an atomic rewrite of log.csv) and was cut back
        assert "could not append to the training log" in str(e.value) and "kept as it was" in str(e.value)
    else:
        assert "could not write it" in str(e.value) and "previous version, if any, is kept" in str(e.value)
    monkeypatch.undo()
    assert not _temps(d), "temp files left behind"
    after = _files(d)
    # every earlier file is intact (the log may have gained whole rows); a failed sidecar rename leaves
    # the new ckpt_last.pt and opt_last.pt beside the old sidecar: refused below, like any checkpoint that
    # fails its check
    for name, sha in before.items():
        if name != "log.csv" and not (fault == "sidecar_rename" and name in ("ckpt_last.pt", "opt_last.pt")):
            assert after[name] == sha, name
    log = (d / "log.csv").read_bytes()
    assert log.startswith(b"step,") and log.endswith(b"\r\n")  # whole rows only
    if fault == "fsync":
        assert after["log.csv"] == before["log.csv"]
    found = latest_valid_checkpoint(d, h, warn=lambda _m: None)
    assert found[1]["step"] == marks[1]
    if fault == "sidecar_rename":
        assert "interrupted between it and its sidecar" in checkpoint_problem(d, "last", h)
    _, _, done = _tiny_run(tiny_profile, "relu-s1", tmp_path, smoke_tokens)  # without the fault: finishes
    log = pd.read_csv(d / "log.csv")
    assert done["steps"] == log["step"].max() and not log.duplicated(["step", "split"]).any()


def test_log_is_trimmed_to_the_resumed_checkpoint(tmp_path):
    """Rows past the checkpoint a run resumes from, and a partial last line, are dropped; a log left
    empty by a failed first write gets its header back."""
    log = tmp_path / "log.csv"
    append_log(log, [{"step": s, "tokens": s * 8, "split": "train", "loss": 1.0} for s in (2, 4, 6)])
    with open(log, "a") as f:
        f.write("8,64,tra")  # a write cut short
    trim_log(log, 4)
    assert pd.read_csv(log)["step"].tolist() == [2, 4]
    data = log.read_bytes()
    assert data.count(b"\r\n") == 3 and b"\n" not in data.replace(b"\r\n", b"")  # the csv module's line ends
    st = log.stat()
    trim_log(log, 99)
    assert log.read_bytes() == data  # nothing to trim: the file is left alone (not rewritten)
    assert (log.stat().st_ino, log.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    log.write_bytes(b"")
    append_log(log, [{"step": 2, "tokens": 16, "split": "train", "loss": 1.0}])
    assert pd.read_csv(log)["step"].tolist() == [2]


def _logs_of(profile, session_roots, rd: Path) -> dict[str, Path]:
    """Copies of the log.csv and DONE of each run of `profile` in runs folder `rd` (all that reading the
    training logs needs); run name -> its copied log.csv."""
    out = {}
    for r in profile.runs:
        d = runs.run_dir(profile, r, rd)
        d.mkdir(parents=True)
        for name in ("log.csv", "DONE"):
            shutil.copy(runs.run_dir(profile, r, session_roots["SPARSINGLAW_RUNS"]) / name, d / name)
        out[r.name] = d / "log.csv"
    return out


@pytest.mark.parametrize("damage,what", [
    ("cut", "its last line '{last}' is cut off"),  # a row cut mid-write: it was read, with its cut loss
    ("empty", "the file is empty"),  # it was a bare pandas EmptyDataError
    ("garbage", "missing column(s) step, tokens, split, loss, lr, tok_s, mfu; its header line reads 'garbage'"),
    ("last-rows-lost", "its train rows end at step {before}, not at the run's final step {steps}"),
    ("not-a-loss", "line 3, column loss: 'x' is not a number"),
], ids=["cut", "empty", "garbage", "last-rows-lost", "not-a-loss"])
def test_a_damaged_log_of_a_finished_run_is_refused(tmp_path, monkeypatch, measured_mini, session_roots, damage,
                                                    what):
    """A finished run's log.csv that is cut off, empty, not the trainer's CSV, short of the final step or
    holding a loss that is not a number is refused, naming the file, what is wrong and the fix: training it
    again would skip it (a log cut mid-row was read as it was, so compute wrote a train_log.csv that lost the
    rows after the cut and kept a cut loss; an empty one or a stray word raised pandas' EmptyDataError or
    KeyError 'split'). Nothing is written."""
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "results"))
    rd = tmp_path / "runs"
    run = measured_mini.run("relu-s1")
    log = _logs_of(measured_mini, session_roots, rd)["relu-s1"]
    good = log.read_bytes()
    lines = good.decode().splitlines(keepends=True)
    steps = json.loads((log.parent / "DONE").read_text())["steps"]
    assert lines[-1].startswith(f"{steps},") and lines[-1].endswith("\r\n")
    fields = lines[-1].split(",")
    cut = ",".join(fields[:3] + [fields[3][:4]])  # step, tokens, split and a cut loss
    bad = {"cut": "".join(lines[:-1]) + cut, "empty": "", "garbage": "garbage\n",
           "last-rows-lost": "".join(l for l in lines if not l.startswith(f"{steps},")),
           "not-a-loss": "".join(lines[:2]) + lines[2].replace(lines[2].split(",")[3], "x", 1) + "".join(lines[3:])}
    log.write_text(bad[damage], newline="")
    before = max(int(l.split(",")[0]) for l in lines[1:] if not l.startswith(f"{steps},"))
    want = (f"{log}: the training log of the finished run relu-s1 is damaged "
            f"({what.format(last=cut, before=before, steps=steps)}); restore it, or delete the run folder "
            f"{log.parent} and train the run again ({runs.train_command(measured_mini, rd, 'relu-s1')})")
    with pytest.raises(SparsingLawError) as e:
        runs.load_log(measured_mini, run, rd)
    assert str(e.value) == want
    with pytest.raises(SparsingLawError) as e:  # compute's "training logs" stage
        runs.train_log_table(measured_mini, runs_dir=rd)
    assert str(e.value) == want
    assert not (tmp_path / "results").exists()
    log.write_bytes(good)  # the log as the trainer left it is read as it was
    pd.testing.assert_frame_equal(runs.load_log(measured_mini, run, rd),
                                  runs.read_csv(log).sort_values(["split", "step"]).reset_index(drop=True))


def test_the_training_logs_record_the_corpus_the_runs_were_trained_on(tmp_path, monkeypatch, measured_mini,
                                                                         session_roots):
    """train_log.csv's sidecar records the corpus the runs' newest checkpoints record, not the one data.*
    selects now: a finished run is not trained again after its corpus changed, and the table used to be
    written with this machine's corpus. Runs trained on different corpora are refused, naming the run that
    is not on today's corpus; nothing is written."""
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "results"))
    rd = tmp_path / "runs"
    newest = {}
    for r in measured_mini.runs:
        d = runs.run_dir(measured_mini, r, rd)
        shutil.copytree(runs.run_dir(measured_mini, r, session_roots["SPARSINGLAW_RUNS"]), d)
        newest[r.name] = Path(runs.checkpoints(measured_mini, r, rd)["path"].iloc[-1]).with_suffix(".json")
        newest[r.name] = newest[r.name].with_name(newest[r.name].name.replace("ckpt_", "meta_"))
    today = runs.corpus_fingerprint(measured_mini.data)
    sidecar = tmp_path / "results" / measured_mini.name / "train_log.meta.json"
    runs.train_log_table(measured_mini, runs_dir=rd)
    assert json.loads(sidecar.read_text())["corpus"] == today
    old = dict(today, sha256="ab" * 32, bytes=today["bytes"] - 1)

    def record(name, corpus):
        meta = json.loads(newest[name].read_text())
        newest[name].write_text(json.dumps(dict(meta, corpus=corpus)))

    record("relu-s1", old)
    sidecar.unlink()
    with pytest.raises(SparsingLawError) as e:
        runs.train_log_table(measured_mini, runs_dir=rd)
    assert str(e.value).startswith(f"{measured_mini.path}: the runs were trained on different corpora (sha256 "
                                   f"{'ab' * 6}, {today['sha256'][:12]})"), e.value
    assert "run(s) relu-s1 on another corpus than data.* gives now" in str(e.value)
    assert not sidecar.exists()
    record("silu-s1", old)  # every run on the old corpus: the table says so
    runs.train_log_table(measured_mini, runs_dir=rd)
    assert json.loads(sidecar.read_text())["corpus"] == old


def test_an_unfinished_runs_log_is_read_as_its_resume_keeps_it(tmp_path, measured_mini, session_roots):
    """The log of a run killed mid-write (not finished: no DONE) may end in a cut row, which its resume drops
    (train.trim_log): it is read without it, as are lines that are not rows, instead of being refused or read
    with a cut loss. A row of the trainer's shape with a loss that is not a number is still refused."""
    rd = tmp_path / "runs"
    run = measured_mini.run("relu-s1")
    log = _logs_of(measured_mini, session_roots, rd)["relu-s1"]
    (log.parent / "DONE").unlink()
    lines = log.read_bytes().decode().splitlines(keepends=True)
    whole = runs.read_csv(io.StringIO("".join(lines[:-1]))).sort_values(["split", "step"]).reset_index(drop=True)
    for text in ("".join(lines[:-1]) + lines[-1][:12],  # a kill mid-write
                 lines[0] + "garbage\r\n" + "".join(lines[1:-1]) + "1,2,val,3.0"):  # and a stray line
        log.write_text(text, newline="")
        got = runs.load_log(measured_mini, run, rd)
        pd.testing.assert_frame_equal(got, whole, check_dtype=False)
        trim_log(log, 10**9)  # what the resume keeps: the same rows
        pd.testing.assert_frame_equal(runs.load_log(measured_mini, run, rd), whole, check_dtype=False)
    log.write_text("".join(lines[:2]) + lines[2].replace(lines[2].split(",")[3], "x", 1), newline="")
    with pytest.raises(SparsingLawError, match=r"the training log of run relu-s1 is damaged \(line 3, column loss: "
                                               r"'x' is not a number\); restore it, or delete the run folder"):
        runs.load_log(measured_mini, run, rd)


def test_failing_write_through_the_cli(tmp_path, monkeypatch, capsys):
    """Through the CLI: one line naming the file and the cause, exit 2, no traceback, nothing partial."""
    from conftest import TINY

    p = load_profile("smoke", overrides=TINY)
    run = p.run("relu-s1")
    mark = checkpoint_steps(run.model, run.train)[1]
    monkeypatch.setenv("SPARSINGLAW_TEST_FAULT", f"enospc:ckpt_{mark:07d}.pt")
    rc = cli.main(["train", "--profile", "smoke", "--run", "relu-s1", "--runs-dir", str(tmp_path), "--no-progress",
                   *_sets(TINY)])
    err = capsys.readouterr().err
    d = runs.run_dir(p, run, tmp_path)
    assert rc == 2, err
    assert f"error: {d / f'ckpt_{mark:07d}.pt'}: could not write it (No space left on device)" in err
    assert "Traceback" not in err
    assert not (d / f"ckpt_{mark:07d}.pt").exists() and not _temps(d)
    assert latest_valid_checkpoint(d, run.config_hash(p.data))[1]["step"] < mark


@pytest.mark.parametrize("fault", ["fsync", "replace"])
def test_failing_results_table_write_keeps_previous(tmp_path, measured_mini, monkeypatch, fault):
    p = measured_mini
    out = tmp_path / "results"
    df = pd.DataFrame({"run": ["a", "b"], "x": [1.0, 2.0]})
    runs.write_table(df, out / "t.csv", {"config_hash": p.config_hash()})
    before = _files(out)
    monkeypatch.setattr(os, fault, _enospc)
    with pytest.raises(WriteError, match=f"{out / 't.csv'}: could not write it .No space left on device"):
        runs.write_table(df.assign(x=[3.0, 4.0]), out / "t.csv", {"config_hash": p.config_hash()})
    monkeypatch.undo()
    assert _files(out) == before and not _temps(out)
    assert runs.read_table(out / "t.csv", ["run", "x"], ["x"])["x"].tolist() == [1.0, 2.0]


def test_an_atomic_write_syncs_its_folders_after_the_renames(tmp_path, monkeypatch):
    """A rename is durable only once its folder is synced: each folder of the set is synced once, after
    every file is in place; a file system that refuses to sync a folder leaves the write done."""
    import stat

    from sparsinglaw.train import atomic_write_files

    synced, real_fsync = [], os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            placed = {p.name: p.exists() for p in files}
            synced.append((st.st_ino, placed))
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_fsync(fd)

    (tmp_path / "sub").mkdir()
    files = {tmp_path / "a.csv": b"a", tmp_path / "sub" / "b.csv": b"b", tmp_path / "c.json": b"c"}
    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_files(files)
    monkeypatch.undo()
    assert [ino for ino, _ in synced] == [tmp_path.stat().st_ino, (tmp_path / "sub").stat().st_ino]
    assert all(all(placed.values()) for _, placed in synced)
    assert {p.read_bytes() for p in files} == {b"a", b"b", b"c"} and not _temps(tmp_path)


def test_unchanged_results_table_is_left_as_it_is(tmp_path):
    """Writing the same table again with only time, git state or the kernel build changed keeps both files
    byte for byte (and untouched); new values or other provenance (package versions) rewrite them."""
    out = tmp_path / "results"
    df = pd.DataFrame({"run": ["a", "b"], "x": [1.0, 2.0]})
    meta = {"config_hash": "h", "versions": {"torch": "1"}, "time": "t0", "git_sha": "s0", "git_dirty": False}
    runs.write_table(df, out / "t.csv", meta)
    side = out / "t.meta.json"
    first, stamp = side.read_bytes(), side.stat().st_mtime_ns
    runs.write_table(df, out / "t.csv", dict(meta, time="t1", git_sha="s1", git_dirty=True))
    assert side.read_bytes() == first and side.stat().st_mtime_ns == stamp
    assert json.loads(first)["git_sha"] == "s0"  # the code that first wrote these bytes
    # another kernel build or instruction set (a replot on another machine) is no other provenance either
    other = {"torch": "1", "platform": "Linux-6.2", "cpu_capability": "AVX2"}
    runs.write_table(df, out / "t.csv", dict(meta, versions=other, time="t1b"))
    assert side.read_bytes() == first and side.stat().st_mtime_ns == stamp
    runs.write_table(df, out / "t.csv", dict(meta, versions={"torch": "2"}, time="t2"))
    assert json.loads(side.read_text())["versions"] == {"torch": "2"} and json.loads(side.read_text())["time"] == "t2"
    runs.write_table(df.assign(x=[3.0, 4.0]), out / "t.csv", dict(meta, versions={"torch": "2"}, time="t3"))
    assert json.loads(side.read_text())["time"] == "t3"
    assert runs.read_table(out / "t.csv", ["run", "x"], ["x"])["x"].tolist() == [3.0, 4.0]
    dirty = dict(meta, versions={"torch": "2"}, time="t4", git_sha="s4", git_dirty=True)
    runs.write_table(df.assign(x=[5.0, 6.0]), out / "t.csv", dirty)
    runs.write_table(df.assign(x=[5.0, 6.0]), out / "t.csv", dict(dirty, time="t5", git_sha="s5", git_dirty=False))
    assert json.loads(side.read_text())["git_sha"] == "s5"  # clean provenance replaces dirty provenance


def test_dirty_flag_ignores_the_pipelines_own_outputs(tmp_path, monkeypatch):
    """git_dirty: changed code or configs make a tree dirty; rewritten results, figures or README do not."""
    import subprocess

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    for rel in ("lib/m.py", "configs/c.yaml", "results/cpu/t.csv", "figures/cpu/f.png", "README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("0\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    monkeypatch.setattr(runs, "repo_root", lambda: tmp_path)
    assert runs.git_state()["git_dirty"] is False
    for rel in ("results/cpu/t.csv", "figures/cpu/f.png", "README.md"):
        (tmp_path / rel).write_text("1\n")
    assert runs.git_state()["git_dirty"] is False
    for rel in ("lib/m.py", "configs/c.yaml"):
        (tmp_path / rel).write_text("1\n")
        assert runs.git_state()["git_dirty"] is True
        git("checkout", "--", rel)


def test_git_state_of_a_copy_without_git(tmp_path, monkeypatch):
    """A copy of the checkout without .git (a lent GPU machine gets one): the commit is unknown and so is
    whether the tree is dirty (not "clean"), unless SPARSINGLAW_GIT_SHA names the commit it was copied from;
    in a real checkout git's own answer wins over the variable."""
    import subprocess

    (tmp_path / "copy" / "lib").mkdir(parents=True)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above the copy either
    monkeypatch.setattr(runs, "repo_root", lambda: tmp_path / "copy")
    monkeypatch.delenv("SPARSINGLAW_GIT_SHA", raising=False)
    assert runs.git_state() == {"git_sha": "unknown", "git_dirty": None}
    monkeypatch.setenv("SPARSINGLAW_GIT_SHA", "4ab49fb0\n")
    assert runs.git_state() == {"git_sha": "4ab49fb0", "git_dirty": None}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path / "copy", check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=tmp_path / "copy", check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path / "copy", capture_output=True, text=True,
                          check=True).stdout.strip()
    assert runs.git_state() == {"git_sha": head, "git_dirty": False}


def test_failing_figure_write_keeps_previous(tmp_path, tiny_profile, monkeypatch):
    monkeypatch.setenv("SPARSINGLAW_FIGURES", str(tmp_path / "figures"))
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    plots.save(fig, "99_test", tiny_profile, paper="none", notebook="test")
    out = tmp_path / "figures" / "smoke"
    before = _files(out)
    ax.plot([1, 2], [4, 3])
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(WriteError, match="No space left on device"):
        plots.save(fig, "99_test", tiny_profile, paper="none", notebook="test")
    monkeypatch.undo()
    plt.close(fig)
    assert _files(out) == before and not _temps(out)


# -----------------------------------------------------------------------------------------------
# concurrency


@pytest.mark.slow
def test_concurrent_train_and_measure_never_train_twice(tmp_path, monkeypatch, mini_path, smoke_tokens):
    """Two `train -j 2 && measure` pipelines at once on one runs folder (what two `make figures -j 2`
    do): per-run locks make each run train once, and no file is ever half-written or corrupted."""
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "results"))
    rd = tmp_path / "runs"
    common = ["--profile", str(mini_path), "--runs-dir", str(rd), "--no-progress", *_sets(MINI)]
    py = [sys.executable, "-m", "sparsinglaw"]
    line = f"{shlex.join([*py, 'train', '-j', '2', *common])} && {shlex.join([*py, 'measure', '-j', '1', *common])}"
    sampler = Sampler(rd, tmp_path / "results", skip=("log.csv",))
    sampler.start()
    try:
        procs = [subprocess.Popen(["bash", "-c", line], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outs = [p.communicate(timeout=400) for p in procs]
    finally:
        sampler.stop()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert sampler.sweeps > 10 and sampler.files_read > 0
    assert not sampler.bad, sampler.bad
    assert not _temps(rd, tmp_path / "results")
    profile = load_profile(mini_path, overrides=MINI)
    for run in profile.runs:
        d = runs.run_dir(profile, run, rd)
        log = pd.read_csv(d / "log.csv")
        assert not log.duplicated(["step", "split"]).any(), f"{run.name} was trained twice"
        assert set(log["split"]) == {"train", "val"}
        h = run.config_hash(profile.data)
        assert [checkpoint_problem(d, t, h) for t in checkpoint_tags(d)] == [None] * len(checkpoint_tags(d))
        assert json.loads((d / "DONE").read_text())["config_hash"] == h
        measure.measure_run(profile, run, rd, progress=False)  # the cached record passes its checks
    for name in TABLES:
        measure.read_results(profile, name)


# -----------------------------------------------------------------------------------------------
# determinism and provenance


@pytest.mark.slow
def test_same_seed_same_results_tables(tmp_path, monkeypatch, mini_path, measured_mini, isolated_roots):
    """Train + measure the mini profile again into another runs folder: identical tables, byte for byte."""
    first = isolated_roots["SPARSINGLAW_RESULTS"] / "mini"
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "results"))
    profile = load_profile(mini_path, overrides=MINI)
    runs.train_profile(profile, jobs=1, runs_dir=tmp_path / "runs", progress=False)
    measure.measure_profile(profile, jobs=1, runs_dir=tmp_path / "runs", progress=False)
    for name in TABLES:
        assert (tmp_path / "results" / "mini" / f"{name}.csv").read_bytes() == (first / f"{name}.csv").read_bytes()


def test_results_tables_record_provenance(measured_mini, smoke_tokens, isolated_roots):
    out = isolated_roots["SPARSINGLAW_RESULTS"] / "mini"
    for name in TABLES:
        meta = measure.read_results(measured_mini, name).attrs["meta"]
        assert meta["config_hash"] == measured_mini.config_hash()
        assert meta["git_sha"] and "git_dirty" in meta
        assert meta["corpus"]["sha256"] == smoke_tokens.fingerprint["sha256"]
        assert {"torch", "numpy", "pandas", "python", "sparsinglaw"} <= set(meta["versions"])
        assert meta["device"] and meta["sha256"] == hashlib.sha256((out / f"{name}.csv").read_bytes()).hexdigest()


def test_figure_manifest_records_provenance(tmp_path, tiny_profile, smoke_tokens, monkeypatch):
    monkeypatch.setenv("SPARSINGLAW_FIGURES", str(tmp_path))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    plots.save(fig, "99_manifest", tiny_profile, paper="Fig. 0", notebook="test")
    plt.close(fig)
    rows = pd.read_csv(tmp_path / "smoke" / "MANIFEST.csv", dtype=str).set_index("file")
    for ext in ("png", "pdf"):
        r = rows.loc[f"99_manifest.{ext}"]
        assert r["config_hash"] == tiny_profile.config_hash()[:12]
        assert r["git_sha"] and r["git_dirty"] in ("True", "False")
        assert r["corpus"] == smoke_tokens.fingerprint["sha256"][:12] and r["device"]
        assert {"torch", "numpy", "matplotlib"} <= set(json.loads(r["versions"]))


def test_table_of_another_config_warns_or_refuses(measured_mini, mini_path):
    """A table made from other measurement settings than the current profile's: a warning that says so
    by default, an error with strict=True."""
    changed = load_profile(mini_path, overrides=MINI + ["sparsity.dead_freq=0.01"])
    with pytest.warns(runs.StaleTableWarning, match=r"sparsity.csv: recorded stage_hash .* differs .* \(the profile "
                                                    r"changed since it was written: its data, runs or sparsity "
                                                    r"settings\); using it anyway \(a warning, not an error\)"):
        df = measure.read_results(changed)
    assert len(df)
    with pytest.raises(runs.TableError, match=r"sparsity.csv: recorded stage_hash .* differs .*; refusing it"):
        measure.read_results(changed, strict=True)


def test_fits_warn_on_measurements_of_another_profile(measured_mini, mini_path):
    """analysis.load_results, which every fit and claim check reads the measurements through, warns for each
    measurement table made under other runs or sparsity settings (the fit would fit runs the profile no
    longer has) and stays silent for a fit setting, which the measurements are not made from."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analysis.load_results(load_profile(mini_path, overrides=MINI + ["train.lr=0.02"]))
    stale = sorted(Path(str(w.message).split(":")[0]).name for w in caught
                   if issubclass(w.category, runs.StaleTableWarning))
    assert stale == ["neurons.csv", "sparsity.csv", "tokens.csv"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", runs.StaleTableWarning)
        for same in (measured_mini, load_profile(mini_path, overrides=MINI + ["fit.n_boot=7"])):
            assert len(analysis.load_results(same)["sparsity"]) == len(measure.read_results(measured_mini))


def test_a_cached_fit_warns_on_measurements_of_another_profile(measured_mini, mini_path, session_roots, tmp_path,
                                                               monkeypatch, capsys):
    """A derived table is reused by its inputs' bytes: reused for a profile whose measurement settings
    changed since, it warns as load_results does when it computes one (it printed the fit as current),
    and notes the table for a claims summary; reused for the profile it was made under, it is silent."""
    res = tmp_path / "results"
    shutil.copytree(session_roots["SPARSINGLAW_RESULTS"] / measured_mini.name, res / measured_mini.name)
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(res))
    with warnings.catch_warnings():
        warnings.simplefilter("error", runs.StaleTableWarning)
        first = analysis.limit_loss_for(measured_mini)
        assert "computing limit_loss.csv" in capsys.readouterr().err
        pd.testing.assert_frame_equal(analysis.limit_loss_for(measured_mini), first)  # reused: silent
    changed = load_profile(mini_path, overrides=MINI + ["train.lr=0.02"])
    with warnings.catch_warnings(record=True) as caught, runs.noting_stale_tables() as stale:
        warnings.simplefilter("always")
        pd.testing.assert_frame_equal(analysis.limit_loss_for(changed), first)
    assert "computing" not in capsys.readouterr().err  # reused, not recomputed
    said = [str(w.message) for w in caught if issubclass(w.category, runs.StaleTableWarning)]
    assert len(said) == 1 and said[0].startswith(f"{res / measured_mini.name / 'sparsity.csv'}: recorded stage_hash")
    assert "using it anyway (a warning, not an error): rerun python -m sparsinglaw measure" in said[0]
    assert stale == [res / measured_mini.name / "sparsity.csv"]
    (res / measured_mini.name / "sparsity.meta.json").unlink()  # reused or not, a table without its sidecar is refused
    with pytest.raises(runs.TableError, match=r"sparsity.csv: no provenance sidecar sparsity.meta.json next to it"):
        analysis.limit_loss_for(measured_mini)


def test_a_change_a_table_is_not_made_from_leaves_it_current(measured_mini, mini_path, session_roots, tmp_path,
                                                              monkeypatch):
    """Fit and inference settings are not inputs of the measurement tables, nor sparsity settings of the
    training log: changing them marks neither stale. A sidecar written before stage hashes is checked by
    the whole profile's config hash, as then."""
    res = tmp_path / "results"
    shutil.copytree(session_roots["SPARSINGLAW_RESULTS"] / measured_mini.name, res / measured_mini.name)
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(res))
    runs.train_log_table(measured_mini, runs_dir=session_roots["SPARSINGLAW_RUNS"])
    sidecar = res / measured_mini.name / "sparsity.meta.json"
    meta = json.loads(sidecar.read_text())
    data = dataclasses.asdict(measured_mini.data)
    identities = [r.identity(measured_mini.data) for r in measured_mini.runs]
    assert meta["stage"] == "measure" and meta["config_hash"] == measured_mini.config_hash()
    assert meta["stage_hash"] == hashlib.sha256(json.dumps(  # the data, runs and sparsity settings alone
        {"data": data, "runs": identities, "sparsity": dataclasses.asdict(measured_mini.sparsity)},
        sort_keys=True, default=str).encode()).hexdigest()

    def profile(*extra):
        return load_profile(mini_path, overrides=MINI + list(extra))

    assert profile("fit.n_boot=7").config_hash() != measured_mini.config_hash()  # what the tables were checked by
    with warnings.catch_warnings():
        warnings.simplefilter("error", runs.StaleTableWarning)
        for other in (profile("fit.n_boot=7"), profile("inference.heldout_tokens=512")):
            assert len(measure.read_results(other, strict=True)) == len(measure.read_results(measured_mini))
        assert len(runs.train_log_table(profile("sparsity.dead_freq=0.01"), compute=False))
    with pytest.raises(runs.TableError, match=r"train_log.csv: recorded stage_hash .*: its data or runs settings\)"):
        runs.read_table(res / measured_mini.name / "train_log.csv", strict=True,
                        expect=runs.current(profile("train.lr=0.1"), "train"))

    legacy = {k: v for k, v in meta.items() if k not in ("stage", "stage_hash")}
    sidecar.write_text(json.dumps(legacy))
    assert len(measure.read_results(measured_mini, strict=True))
    with pytest.raises(runs.TableError, match=r"sparsity.csv: recorded config_hash .* written\); refusing"):
        measure.read_results(profile("fit.n_boot=7"), strict=True)


def test_corpus_fingerprint_is_remembered_per_data_config(tmp_path):
    """runs.corpus_fingerprint (the corpus in every provenance sidecar) is computed once per process and data
    config: two configs of one corpus path with other caps each get their own fingerprint (oracle:
    data.corpus_documents called directly), not the first one asked for."""
    from sparsinglaw.config import DataConfig
    from sparsinglaw.data import corpus_documents

    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(8):
        (root / f"doc{i}.txt").write_text(f"document {i}\n" + "some words of text\n" * 40)
    big = DataConfig(corpus=str(root), vocab_size=300, max_mb=1.0, val_fraction=0.2)
    small = dataclasses.replace(big, max_mb=0.002)
    want = {cfg.max_mb: corpus_documents(cfg)[1] for cfg in (big, small)}
    assert want[1.0]["files"] > want[0.002]["files"]
    for cfg in (big, small, big):
        assert runs.corpus_fingerprint(cfg) == want[cfg.max_mb]


def test_final_losses_are_each_runs_last_validation_loss(measured_mini, session_roots, tmp_path, monkeypatch):
    """runs.final_losses (notebook 01's table): per run, the validation loss at its most tokens, read here
    straight from the run's log.csv."""
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path))
    rd = session_roots["SPARSINGLAW_RUNS"]
    got = runs.final_losses(measured_mini, runs_dir=rd).set_index("run")
    assert list(got.index) == [r.name for r in measured_mini.runs]
    for r in measured_mini.runs:
        log = pd.read_csv(runs.run_dir(measured_mini, r, rd) / "log.csv")
        val = log[log["split"] == "val"]
        assert val["loss"].nunique() > 1  # the first and the last validation loss differ
        last = val[val["tokens"] == val["tokens"].max()]
        assert got.at[r.name, "tokens"] == val["tokens"].max() == r.train.tokens
        assert got.at[r.name, "final_val_loss"] == pytest.approx(float(last["loss"].iloc[-1]), abs=1e-6)


def test_recorded_corpus_needs_every_sidecar_to_agree(tmp_path):
    """R12. Two input tables made from two corpora: a table derived from both records no one corpus."""
    import json

    from sparsinglaw import runs

    for name, corpus in (("a", {"sha256": "1"}), ("b", {"sha256": "1"}), ("c", {"sha256": "2"})):
        (tmp_path / f"{name}.meta.json").write_text(json.dumps({"corpus": corpus}))
    assert runs.recorded_corpus(tmp_path / "a.csv", tmp_path / "b.csv") == {"sha256": "1"}
    assert runs.recorded_corpus(tmp_path / "a.csv", tmp_path / "c.csv") is None
    assert runs.recorded_corpus(tmp_path / "c.csv", tmp_path / "a.csv") is None


def test_same_bytes_under_another_stage_hash_rewrite_the_sidecar(tmp_path):
    """A table recomputed after a change of the parts it is made
    from may come out byte for byte the same; its sidecar must then record the new stage_hash, else the table
    stays stale for good (the warning would never go away)."""
    import json
    import warnings

    import pandas as pd

    from sparsinglaw import runs

    df = pd.DataFrame({"run": ["a"], "x": [1.0]})
    meta = {"stage": "measure", "stage_hash": "h1", "time": "t0", "git_sha": "s", "git_dirty": False}
    runs.write_table(df, tmp_path / "t.csv", meta)
    runs.write_table(df, tmp_path / "t.csv", dict(meta, stage_hash="h2", time="t1"))
    assert json.loads((tmp_path / "t.meta.json").read_text())["stage_hash"] == "h2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runs.read_table(tmp_path / "t.csv", ["run", "x"], expect={"stage": "measure", "stage_hash": "h2"})


def test_a_dirty_table_recomputed_dirty_with_the_same_bytes_is_left_as_it_is(tmp_path):
    """Only clean provenance replaces a dirty sidecar of the same bytes: another dirty write (other sha and
    time) leaves both files as they were, naming the code that first wrote those bytes."""
    df = pd.DataFrame({"run": ["a"], "x": [1.0]})
    meta = {"config_hash": "h", "versions": {"torch": "1"}, "time": "T1", "git_sha": "abc", "git_dirty": True}
    runs.write_table(df, tmp_path / "t.csv", meta)
    side = tmp_path / "t.meta.json"
    first, stamp = side.read_bytes(), (side.stat().st_ino, side.stat().st_mtime_ns)
    runs.write_table(df, tmp_path / "t.csv", dict(meta, time="T2", git_sha="def"))
    assert side.read_bytes() == first and (side.stat().st_ino, side.stat().st_mtime_ns) == stamp
    assert json.loads(first)["git_sha"] == "abc"


def test_the_resume_snapshot_is_not_a_mark_checkpoint(tmp_path, tiny_profile, smoke_tokens):
    """A run stopped after its first resume snapshot, before its first checkpoint mark: ckpt_last.pt is
    there, but the run has no checkpoint to measure or count."""
    run = tiny_profile.run("relu-s1")
    marks = checkpoint_steps(run.model, run.train)
    assert run.train.resume_every < marks[0]  # the snapshot comes first
    _, d, _ = _tiny_run(tiny_profile, "relu-s1", tmp_path, smoke_tokens, stop_after_step=run.train.resume_every)
    assert (d / "ckpt_last.pt").exists()
    assert len(runs.checkpoints(tiny_profile, run, tmp_path)) == 0
    assert runs.run_state(tiny_profile, run, tmp_path).checkpoints == 0


def test_times_of_a_compute_that_stops_are_marked_incomplete(tmp_path, monkeypatch):
    """compute --times after a stage fails: complete false, the stage it stopped in, the stages it finished."""
    monkeypatch.setattr(runs, "train_profile", lambda *a, **k: [])

    def fails(*a, **k):
        raise SparsingLawError("stop here")

    monkeypatch.setattr(runs, "train_log_table", fails)
    times = tmp_path / "times.json"
    assert cli.main(["compute", "--profile", "smoke", "--runs-dir", str(tmp_path), "--no-progress",
                     "--times", str(times)]) == 2
    out = json.loads(times.read_text())
    assert out["complete"] is False and out["running"] == "training logs"
    assert list(out["seconds"]) == ["corpus", "train"]


def test_another_checkout_is_named_and_make_imports_its_own_package(tmp_path, monkeypatch, capsys):
    """A venv shared by two checkouts imports the package of the one its editable install points at, which
    finds its folders from its own location: run in the other checkout, results and figures went to the
    first. The CLI says so (and stays quiet in the package's own checkout, outside any, or under
    SPARSINGLAW_ROOT), and make puts its own checkout's lib first on PYTHONPATH (notebook kernels too)."""
    other = tmp_path / "other"
    (other / "notebooks").mkdir(parents=True)
    (other / "pyproject.toml").write_text('[project]\nname = "sparsinglaw"\n')
    monkeypatch.delenv("SPARSINGLAW_ROOT", raising=False)
    assert runs.other_checkout(other / "notebooks") == other
    assert runs.other_checkout(runs.repo_root() / "lib") is None and runs.other_checkout(tmp_path) is None
    monkeypatch.chdir(other)
    assert cli.main(["runs", "--profile", "smoke", "--runs-dir", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert f"this is the package of {runs.repo_root()}, not of {other}" in err and f"PYTHONPATH={other}/lib" in err
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2  # no such folders: an error,
    assert "this is the package" not in capsys.readouterr().err  # and no note (compare reads what it is given)
    monkeypatch.setenv("SPARSINGLAW_ROOT", str(runs.repo_root()))
    assert runs.other_checkout() is None
    if shutil.which("make"):
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHONPATH")}
        r = subprocess.run(["make", "-s", "--no-print-directory", "--eval", 'pp: ; @echo "$$PYTHONPATH"', "pp"],
                           cwd=runs.repo_root(), capture_output=True, text=True, timeout=60, env=env)
        assert r.stdout.strip() == f"{runs.repo_root()}/lib", (r.stdout, r.stderr)
