"""DDP under torchrun on CPU (gloo): two processes give the same weights as one process with the same
global batch (float tolerance), and a killed DDP run resumes."""

from __future__ import annotations

import csv
import json
import os
import re
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

ARGS = TINY + ["train.grad_accum=2", "train.batch_size=4", "train.tokens=16384"]


def _cmd(runs_dir: Path, nproc: int, extra: tuple[str, ...] = ()) -> list[str]:
    sets = sum((["--set", s] for s in (*ARGS, *extra)), [])
    cli = ["-m", "sparsinglaw", "train", "--profile", "smoke", "--name", "relu-s2", "--runs-dir", str(runs_dir),
           "--no-progress", *sets]
    if nproc == 1:
        return [sys.executable, *cli]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cli]


def _env(session_roots):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"),
                SPARSINGLAW_DATA=str(session_roots["SPARSINGLAW_DATA"]))


def _stop(proc: subprocess.Popen) -> None:
    """End a torchrun that hangs: SIGTERM (torchrun then ends its workers, which it starts in sessions of
    their own, out of reach of a signal to its process group), SIGKILL if that is not enough."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers at once, as a crash of the node would. (A signal to torchrun's
    process group alone leaves the workers, in sessions of their own, training on to the end.)"""
    workers = [int(pid) for f in Path(f"/proc/{proc.pid}/task").glob("*/children") for pid in f.read_text().split()]
    assert len(workers) == 2, workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.time() < deadline:
        time.sleep(0.05)  # reaped by init, not by this process


def _final(runs_dir: Path, extra: tuple[str, ...] = ()) -> dict:
    p = load_profile("smoke", overrides=[*ARGS, *extra])
    d = runs.run_dir(p, p.run("relu-s2"), runs_dir)
    assert (d / "DONE").exists()
    return torch.load(sorted(d.glob("ckpt_0*.pt"))[-1], weights_only=True)["model"]


def _close(a: dict, b: dict) -> None:
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("extra", [(), ("train.grad_accum=3",)], ids=["even", "uneven"])
def test_two_gloo_processes_equal_one(tmp_path, session_roots, smoke_tokens, extra):
    """Also with 3 micro-batches a step over 2 processes (rank 0 takes two, rank 1 one)."""
    env = _env(session_roots)
    for n in (1, 2):
        r = subprocess.run(_cmd(tmp_path / f"n{n}", n, extra), env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "deprecated" not in r.stderr, r.stderr[-3000:]
        if n == 2:
            assert ("3 micro-batches a step over 2 processes: 1 take 2" in r.stdout) == bool(extra), r.stdout
        metas = sorted((tmp_path / f"n{n}").glob("smoke/*/meta_0*.json"))
        assert metas and all(json.loads(m.read_text())["world_size"] == n for m in metas), metas  # torchrun's 2
    one, two = _final(tmp_path / "n1", extra), _final(tmp_path / "n2", extra)
    _close(one, two)
    assert any(not torch.equal(one[k], torch.zeros_like(one[k])) for k in one)
    log = (next((tmp_path / "n2").glob("smoke/*/log.csv"))).read_text().splitlines()
    steps = [line.split(",")[0] for line in log[1:]]
    assert len(steps) == len(set((s, line.split(",")[2]) for s, line in zip(steps, log[1:]))), "rank 0 logs once"
    # the logged losses too: the step loss is summed over the ranks' micro-batches (all_reduce), not rank 0's share
    logs = [_losses(tmp_path / f"n{n}") for n in (1, 2)]
    assert logs[0].keys() == logs[1].keys() and any(split == "train" for _, split in logs[0]), logs
    for key, loss in logs[0].items():
        assert logs[1][key] == pytest.approx(loss, rel=1e-4), key
    done = [json.loads(next((tmp_path / f"n{n}").glob("smoke/*/DONE")).read_text()) for n in (1, 2)]
    assert done[1]["final_loss"] == pytest.approx(done[0]["final_loss"], rel=1e-4)


def _losses(runs_dir: Path) -> dict:
    """(step, split) -> loss of the run's log.csv."""
    rows = csv.DictReader(next(runs_dir.glob("smoke/*/log.csv")).read_text().splitlines())
    return {(int(r["step"]), r["split"]): float(r["loss"]) for r in rows}


def test_killed_ddp_run_resumes(tmp_path, session_roots, smoke_tokens):
    env = _env(session_roots)
    ref = subprocess.run(_cmd(tmp_path / "ref", 2), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = subprocess.Popen(_cmd(tmp_path / "kill", 2), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    start = time.time()
    kill_dir = tmp_path / "kill"
    while proc.poll() is None and not list(kill_dir.glob("smoke/*/meta_0*.json")) and time.time() - start < 120:
        time.sleep(0.01)
    killed = proc.poll() is None
    _kill_all(proc)
    assert killed, "the DDP run finished before it could be killed"
    time.sleep(1)
    assert not list((tmp_path / "kill").glob("smoke/*/DONE")), "a worker lived on and finished the run"
    saved = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kill_dir.glob("smoke/*/ckpt_0*.pt")}
    again = subprocess.run(_cmd(tmp_path / "kill", 2), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    m = re.search(r"relu-s2: resuming from step (\d+) ", again.stdout)
    assert m and int(m.group(1)) > 0, again.stdout
    # resumed, not trained again from the start: the checkpoints up to the resumed step are not written again
    kept = [p for p in saved if int(p.stem[5:]) <= int(m.group(1))]
    assert kept and all((p.stat().st_ino, p.stat().st_mtime_ns) == saved[p] for p in kept), (kept, again.stdout)
    _close(_final(tmp_path / "ref"), _final(tmp_path / "kill"))


def test_ranks_agree_when_another_process_finishes_the_run(tmp_path, session_roots, smoke_tokens):
    """Another process holds the run's lock and then finishes the run: rank 0 waited for the lock while
    rank 1 went on into the process group, so rank 0 found DONE and returned while rank 1 waited for it
    for good. Every rank now waits for rank 0's lock, then all find DONE. The lock is held for longer
    than the process group's timeout (15 s here): rank 1 waited for it in one barrier, which that
    timeout ended; now rank 0 tries the lock every few seconds and tells the others each time."""
    import threading

    p = load_profile("smoke", overrides=ARGS)
    run = p.run("relu-s2")
    d = runs.run_dir(p, run, tmp_path)
    release = threading.Event()

    def holder():
        with runs.run_lock(d, "test"):
            release.wait(120)
            (d / "log.csv").write_text("step,tokens,split,loss,lr,tok_s,mfu\n1,512,train,4.5,0.01,1000,\n")
            (d / "DONE").write_text(json.dumps({"run": run.name, "config_hash": run.config_hash(p.data)}))

    t = threading.Thread(target=holder)
    t.start()
    err_path = tmp_path / "stderr.txt"
    try:
        with open(err_path, "w") as err_file, open(tmp_path / "stdout.txt", "w") as out_file:
            proc = subprocess.Popen(_cmd(tmp_path, 2), env=dict(_env(session_roots), SPARSINGLAW_DIST_TIMEOUT="15"),
                                    text=True, stdout=out_file, stderr=err_file, start_new_session=True)
        deadline = time.time() + 120  # until rank 0 waits for the lock (rank 1 is in the process group)
        while "another process holds" not in err_path.read_text() and time.time() < deadline:
            assert proc.poll() is None, err_path.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(20)
        assert proc.poll() is None, err_path.read_text()[-3000:]
    finally:
        release.set()
        t.join()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"a rank hung after the other process finished the run\n{err_path.read_text()[-2000:]}")
    err, out = err_path.read_text(), (tmp_path / "stdout.txt").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "another process holds" in err and "1/1 runs done" in out
    assert not list(d.glob("ckpt_*.pt"))  # nothing trained


PATCHED = """
import dataclasses, os, sys
from sparsinglaw import cli, runs
if os.environ["RANK"] == "1":  # rank 1 looks after another process finished the run
    real = runs.run_state
    runs.run_state = lambda *a, **k: dataclasses.replace(real(*a, **k), status="done")
sys.exit(cli.main(sys.argv[1:]))
"""


def _run_ok(cmd: list[str], env: dict, err_path: Path) -> None:
    """Run a torchrun command (a 60 s process-group timeout) that must succeed; a hang fails after 180 s."""
    with open(err_path, "w") as err_file:  # a file: a hung worker cannot hold a pipe open
        proc = subprocess.Popen(cmd, env=dict(env, SPARSINGLAW_DIST_TIMEOUT="60"), text=True,
                                stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True)
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"the ranks hung\n{err_path.read_text()[-2000:]}")
    assert proc.returncode == 0, err_path.read_text()[-3000:]


def test_ranks_take_rank_0s_list_of_runs(tmp_path, session_roots, smoke_tokens):
    """Each rank made its own list of unfinished runs: had another process finished a run between rank 0's
    look and rank 1's, rank 1 skipped it while rank 0 trained it (a hang). Rank 0's list is now sent to
    every rank; here rank 1 is made to see the run finished, and both train it."""
    script = tmp_path / "patched.py"
    script.write_text(PATCHED)
    cmd = _cmd(tmp_path, 2)
    cmd[cmd.index("-m", 3):cmd.index("sparsinglaw", 3) + 1] = [str(script)]
    _run_ok(cmd, _env(session_roots), tmp_path / "stderr.txt")
    _final(tmp_path)  # trained to the end


OWN_FOLDER = """
import os, sys
from sparsinglaw import cli
if os.environ["RANK"] == "1":  # rank 1 on a node of its own, without the shared runs folder
    sys.argv[sys.argv.index("--runs-dir") + 1] = os.environ["OTHER_RUNS"]
sys.exit(cli.main(sys.argv[1:]))
"""


def test_ranks_that_see_different_run_folders_stop_with_a_message(tmp_path, session_roots, smoke_tokens):
    """Nodes without one shared runs folder: rank 0 would resume a partial run while rank 1 started it from
    step 0 (and trained on alone when rank 0 was done: a hang). Every rank stops at once, naming what each
    sees and that the folder must be shared; nothing is trained."""
    from sparsinglaw.config import checkpoint_steps
    from sparsinglaw.data import prepare
    from sparsinglaw.train import train

    p = load_profile("smoke", overrides=ARGS)
    run = p.run("relu-s2")
    d = runs.run_dir(p, run, tmp_path / "shared")
    tokens = prepare(p.data, session_roots["SPARSINGLAW_DATA"], progress=False)
    train(run, p.data, d, tokens, progress=False, stop_after_step=checkpoint_steps(run.model, run.train)[0])
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    script = tmp_path / "own_folder.py"
    script.write_text(OWN_FOLDER)
    cmd = _cmd(tmp_path / "shared", 2)
    cmd[cmd.index("-m", 3):cmd.index("sparsinglaw", 3) + 1] = [str(script)]
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen(cmd, env=dict(_env(session_roots), OTHER_RUNS=str(tmp_path / "own"),
                                              SPARSINGLAW_DIST_TIMEOUT="60"),
                                text=True, stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"the ranks hung\n{err_path.read_text()[-2000:]}")
    err = err_path.read_text()
    assert proc.returncode != 0, err[-3000:]
    assert re.search(r"run relu-s2: the ranks see different run folders \(rank 0: not done, checkpoint "
                     r"sidecars meta_\d{7}\.json meta_last\.json; rank 1: not done, no checkpoint\).*must be shared",
                     err), err[-3000:]
    # rank 0 took the run's lock, and may have kept its checkpoints' digests (train.DIGEST_MEMO: a listing's cache)
    after = {f.name: f.read_bytes() for f in d.iterdir() if f.name not in (".lock", ".sha256.json")}
    assert after == before  # and trained nothing more
    assert not list((tmp_path / "own").glob("smoke/*/meta_*.json"))


TWICE = """
import json, sys
from sparsinglaw import runs
from sparsinglaw.config import load_profile
from sparsinglaw.device import leave_distributed
profile = load_profile("smoke", overrides=json.loads(sys.argv[2]))
for name in ("relu-s2", "relu-s1"):  # one process group for both calls
    runs.train_profile(profile, names=[name], runs_dir=sys.argv[1], progress=False)
leave_distributed()
"""


def test_train_profile_twice_in_one_torchrun_process(tmp_path, session_roots, smoke_tokens):
    """A library caller may train twice under torchrun (notebooks, results_for): the process group stays
    open between the calls. (Ending it inside train_profile and starting another read the first group's
    stale addresses from torchrun's store: connection refused, or a hang.)"""
    import json

    script = tmp_path / "twice.py"
    script.write_text(TWICE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path), json.dumps(ARGS)]
    _run_ok(cmd, _env(session_roots), tmp_path / "stderr.txt")
    assert len(list(tmp_path.glob("smoke/relu-s*/DONE"))) == 2


def test_an_error_on_one_rank_stops_every_rank(tmp_path, session_roots, smoke_tokens):
    """A full disk when rank 0 alone writes a checkpoint: the sweep stops there. (Letting the other runs
    finish, as one process does, sent rank 0 on to the next run while rank 1 waited in the first: a hang.)"""
    from sparsinglaw.config import checkpoint_steps

    p = load_profile("smoke", overrides=ARGS)
    run = p.run("relu-s1")
    first = checkpoint_steps(run.model, run.train)[0]
    cmd = _cmd(tmp_path, 2) + ["--name", "silu-s1"]
    cmd[cmd.index("relu-s2")] = "relu-s1"
    env = dict(_env(session_roots), SPARSINGLAW_TEST_FAULT=f"enospc:ckpt_{first:07d}.pt")
    with open(tmp_path / "stderr.txt", "w") as err_file:  # a file: a hung worker cannot hold a pipe open
        proc = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.DEVNULL, stderr=err_file,
                                start_new_session=True)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"the ranks hung after an error on rank 0\n{(tmp_path / 'stderr.txt').read_text()[-2000:]}")
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode != 0 and "No space left on device" in err, err[-3000:]
    assert list(tmp_path.glob("smoke/relu-s1-*")) and not list(tmp_path.glob("smoke/silu-s1-*"))


def _ddp_2_13(module, device_ids=None, forward_sync_buffers=None):  # torch >= 2.13's keyword
    raise _Built({"forward_sync_buffers": forward_sync_buffers})


def _ddp_2_11(module, device_ids=None, broadcast_buffers=True):  # older torch (the lent GPU image: 2.11)
    raise _Built({"broadcast_buffers": broadcast_buffers})


class _Built(Exception):
    pass


@pytest.mark.parametrize("fake_ddp", [_ddp_2_13, _ddp_2_11], ids=["forward_sync_buffers", "broadcast_buffers"])
def test_ddp_does_not_broadcast_buffers(tmp_path, smoke_tokens, monkeypatch, fake_ddp):
    """The model's only buffers are the rotary tables, constants equal on every rank: DDP is built without
    a buffer sync before every forward, by the keyword the installed torch has (forward_sync_buffers from
    2.13 on, where broadcast_buffers warns as deprecated; broadcast_buffers before). Checked in this
    process, with the process group and DDP replaced by stand-ins that record how DDP is built."""
    from sparsinglaw import train as tr
    from sparsinglaw.device import Dist
    from sparsinglaw.model import Transformer

    monkeypatch.setattr(tr, "init_distributed", lambda _device: Dist(rank=0, world=2))
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", fake_ddp)
    p = load_profile("smoke", overrides=ARGS)
    run = p.run("relu-s2")
    with pytest.raises(_Built) as built:
        tr.train(run, p.data, tmp_path / "run", smoke_tokens, progress=False)
    assert list(built.value.args[0].values()) == [False]
    assert {n.rsplit(".", 1)[-1] for n, _ in Transformer(run.model).named_buffers()} == {"cos", "sin"}
