"""Killed + resumed == uninterrupted, bit for bit on CPU: a training subprocess is SIGKILLed
mid-run (several times), resumed, and its final weights compared with an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY
from sparsinglaw import runs
from sparsinglaw.config import load_profile

pytestmark = pytest.mark.slow

ARGS = TINY + ["train.tokens=40960", "train.resume_every=2"]


def _cmd(runs_dir: Path) -> list[str]:
    sets = sum((["--set", s] for s in ARGS), [])
    return [sys.executable, "-m", "sparsinglaw", "train", "--profile", "smoke", "--run", "relu-s2",
            "--runs-dir", str(runs_dir), "--no-progress", *sets]


def _env(session_roots):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"))
    env["SPARSINGLAW_DATA"] = str(session_roots["SPARSINGLAW_DATA"])  # shared token cache
    return env


def _final_state(runs_dir: Path):
    p = load_profile("smoke", overrides=ARGS)
    run = p.run("relu-s2")
    d = runs.run_dir(p, run, runs_dir)
    assert (d / "DONE").exists()
    last = sorted(d.glob("ckpt_0*.pt"))[-1]
    return torch.load(last, weights_only=True)


def test_kill_and_resume_equals_uninterrupted(tmp_path, session_roots, smoke_tokens):
    env = _env(session_roots)
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(ref_dir), env=env, check=True, capture_output=True, timeout=300)
    kills = 0
    for delay in (0.2, 0.5, 0.9):  # kill at three different points, resuming each time
        proc = subprocess.Popen(_cmd(kill_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        start = time.time()
        # wait until the process has written something in its run folder, then a little longer
        while proc.poll() is None and not list(kill_dir.glob("smoke/*/meta_*.json")) and time.time() - start < 60:
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "the run finished before it could be killed; make it longer"
    assert not list(kill_dir.glob("smoke/*/DONE"))
    done = subprocess.run(_cmd(kill_dir), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ref, got = _final_state(ref_dir), _final_state(kill_dir)
    assert ref["step"] == got["step"]
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], got["model"][k]), k
    for k, v in ref["optimizer"]["state"].items():
        for name, t in v.items():
            assert torch.equal(t, got["optimizer"]["state"][k][name]), (k, name)
