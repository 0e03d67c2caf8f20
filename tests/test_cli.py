"""Bad arguments exit non-zero with one clear paragraph and no traceback; `runs` lists a profile."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO


def _cli(*args, debug=False):
    env = dict(os.environ, PYTHONPATH=str(REPO / "lib"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "sparsinglaw", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("args,expect", [
    (["train", "--profile", "nope"], "known profiles"),
    (["train", "--profile", "smoke", "--set", "train.lr=-1"], "train.lr"),
    (["train", "--profile", "smoke", "--set", "runs.relu-s1.model.activation=tanhh"], "runs[0].model.activation"),
    (["train", "--profile", "smoke", "--run", "nope"], "no run named"),
    (["train", "--profile", "smoke", "-j", "-3"], "--jobs"),
    (["train", "--profile", "smoke", "--set", "lr"], "KEY=VALUE"),
    (["runs", "--profile", "/no/such/file.yaml"], "no such file"),
    (["train"], "--profile"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments(args, expect):
    r = _cli(*args)
    assert r.returncode != 0
    assert expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback():
    r = _cli("--debug", "train", "--profile", "nope")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_runs_lists_profile():
    r = _cli("runs", "--profile", "smoke")
    assert r.returncode == 0, r.stderr
    for name in ("relu-s1", "silu-s2", "relu-wd1"):
        assert name in r.stdout
    assert "status" in r.stdout


def test_runs_names_for_job_arrays():
    from sparsinglaw.config import load_profile

    r = _cli("runs", "--profile", "smoke", "--names")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == [run.name for run in load_profile("smoke").runs]
