"""Killed + resumed == uninterrupted, bit for bit on CPU: a training subprocess is SIGKILLed at five
seeded points (three at random steps, one while a checkpoint's temp files are written but not yet
renamed, one between a checkpoint and its sidecar), resumed each time, and its final weights, optimizer
state and log compared with an uninterrupted run's. Partial checkpoints are never loaded and the temp
files of killed writes are cleaned by the next run."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO, TINY, alive
from sparsinglaw import runs
from sparsinglaw.config import checkpoint_steps, load_profile
from sparsinglaw.model import Transformer
from sparsinglaw.train import checkpoint_problem, latest_valid_checkpoint, load_optimizer, make_optimizer, train

pytestmark = pytest.mark.slow

# log_every 5 against checkpoints every 2 steps and marks at 24, 36, 54: most resumes start inside a
# logging window, whose row must still average every step of it
ARGS = TINY + ["train.tokens=40960", "train.resume_every=2", "train.log_every=5"]
RUN = "relu-s2"


def _cmd(runs_dir: Path) -> list[str]:
    sets = sum((["--set", s] for s in ARGS), [])
    return [sys.executable, "-m", "sparsinglaw", "train", "--profile", "smoke", "--run", RUN,
            "--runs-dir", str(runs_dir), "--no-progress", *sets]


def _env(session_roots, fault: str | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"), PYTHONUNBUFFERED="1")
    env["SPARSINGLAW_DATA"] = str(session_roots["SPARSINGLAW_DATA"])  # shared token cache
    env.pop("SPARSINGLAW_TEST_FAULT", None)
    if fault:
        env["SPARSINGLAW_TEST_FAULT"] = fault
    return env


def _logged_step(log: Path) -> int:
    """The last optimizer step in log.csv (0 when there is none yet)."""
    if not log.exists():
        return 0
    steps = [int(h) for h in (line.split(",", 1)[0] for line in log.read_text().splitlines()[1:]) if h.isdigit()]
    return max(steps, default=0)


def _run_until(cmd: list[str], env: dict, out: Path, stop, delay: float = 0.0) -> bool:
    """Run `cmd` (output to `out`) and SIGKILL it `delay` s after stop() holds; True if it was killed."""
    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 180
            while proc.poll() is None and not stop() and time.time() < deadline:
                time.sleep(0.005)
            time.sleep(delay)
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return killed


def test_five_kills_then_resume_equals_uninterrupted(tmp_path, session_roots, smoke_tokens):
    profile = load_profile("smoke", overrides=ARGS)
    run = profile.run(RUN)
    h = run.config_hash(profile.data)
    ref = runs.run_dir(profile, run, tmp_path / "ref")
    train(run, profile.data, ref, smoke_tokens, progress=False)  # uninterrupted, in this process
    d = runs.run_dir(profile, run, tmp_path / "killed")
    marks = checkpoint_steps(run.model, run.train)  # [24, 36, 54, 80]
    rng = random.Random(6)
    plan = [("step", rng.randint(4, marks[0] - 4)),
            ("stall", f"ckpt_{marks[1]:07d}.pt"),  # both temp files written, nothing renamed yet
            ("step", rng.randint(marks[1] + 2, marks[2] - 4)),
            ("stall", f"meta_{marks[2]:07d}.json"),  # the checkpoint renamed, its sidecar not
            ("step", rng.randint(marks[2] + 2, marks[3] - 4))]
    outputs = []
    for i, (kind, arg) in enumerate(plan):
        out = tmp_path / f"run{i}.txt"
        if kind == "step":
            killed = _run_until(_cmd(d.parents[1]), _env(session_roots), out,
                                lambda t=arg: _logged_step(d / "log.csv") >= t, delay=rng.uniform(0, 0.05))
        else:
            killed = _run_until(_cmd(d.parents[1]), _env(session_roots, f"stall:{arg}"), out,
                                lambda out=out: "test fault: stalled" in out.read_text())
        outputs.append(out.read_text())
        assert killed, f"kill {i} ({kind} {arg}) came too late: the run finished\n{outputs[-1]}"
        assert not (d / "DONE").exists()
        found = latest_valid_checkpoint(d, h, warn=lambda _m: None)
        if found:  # what a resume would load is a complete checkpoint
            torch.load(d / f"ckpt_{found[0]}.pt", weights_only=True)
        if kind == "stall" and arg.startswith("ckpt_"):  # a partial checkpoint: temp files only
            assert not (d / arg).exists() and list(d.glob(f".{arg}.*.tmp"))
            assert found[1]["step"] < marks[1]
        if kind == "stall" and arg.startswith("meta_"):  # a checkpoint without its sidecar
            pt = f"ckpt_{marks[2]:07d}.pt"
            assert (d / pt).exists() and "no sidecar" in checkpoint_problem(d, f"{marks[2]:07d}", h)
            assert found[1]["step"] < marks[2]
    # the run after the sidecar-less checkpoint skipped it, naming it
    assert f"skipping checkpoint ckpt_{marks[2]:07d}.pt: no sidecar" in outputs[4]
    done = subprocess.run(_cmd(d.parents[1]), env=_env(session_roots), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{RUN}: resuming from step" in done.stdout, done.stdout
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*.tmp")), "temp files of killed writes remain"
    a, b = (torch.load(sorted(x.glob("ckpt_0*.pt"))[-1], weights_only=True) for x in (ref, d))
    assert a["step"] == b["step"] == marks[-1]
    for k in a["model"]:  # (a finished run keeps no optimizer state: the weights are the check)
        assert torch.equal(a["model"][k], b["model"][k]), k
    # the log too: every row once, the same numbers (only the timing column differs)
    la, lb = (pd.read_csv(x / "log.csv").drop(columns=["tok_s"]) for x in (ref, d))
    pd.testing.assert_frame_equal(la, lb)


@pytest.mark.parametrize("saved_fused", [False, True], ids=["cpu-then-cuda", "cuda-then-cpu"])
def test_resumed_optimizer_keeps_this_process_fused_flag(saved_fused):
    """A run started on CPU (unfused AdamW) and resumed on CUDA trains fused, and the other way round:
    the trainer's optimizer keeps the flag it was built with after loading a checkpoint's state (torch's
    load_state_dict alone takes the saved flag), with the step counters where fused AdamW wants them.
    Fused AdamW runs on CPU too, so both directions run here: the resumed step equals an uninterrupted
    one up to float rounding."""
    run = load_profile("smoke", overrides=ARGS).run(RUN)
    x = torch.randint(0, run.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))

    def step(model, opt):
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.manual_seed(0)
    model = Transformer(run.model)
    opt = make_optimizer(model, run.train, fused=saved_fused)
    step(model, opt)
    resumed = Transformer(run.model)
    resumed.load_state_dict(model.state_dict())
    opt2 = make_optimizer(resumed, run.train, fused=not saved_fused)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)  # through a file, as the trainer's checkpoint: no shared tensors
    buf.seek(0)
    load_optimizer(opt2, torch.load(buf, weights_only=True))
    assert [g["fused"] for g in opt2.param_groups] == [not saved_fused] * len(opt2.param_groups)
    assert all(g["foreach"] is None for g in opt2.param_groups)
    for p, st in opt2.state.items():
        assert st["step"].dtype == torch.float32 and st["step"].device == p.device and st["step"].item() == 1
    step(model, opt)
    step(resumed, opt2)
    want = model.state_dict()
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=1e-5, atol=1e-6, msg=k)


# -----------------------------------------------------------------------------------------------
# Ctrl-C on parallel runs (-j N)

PARALLEL = '''
import signal, sys, time
from pathlib import Path

from sparsinglaw.runs import run_parallel  # imports torch: a spawned worker starts for seconds


def task(folder, i, seconds, crash):
    from tqdm import tqdm

    tqdm(total=1, disable=True)  # as train and measure do: tqdm's lock
    Path(folder, f"started{i}").write_text("")
    if crash and i == 0:
        time.sleep(1)
        raise RuntimeError("task 0 crashed")
    time.sleep(seconds)
    Path(folder, f"done{i}").write_text("")


if __name__ == "__main__":
    folder, seconds, crash = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "crash"
    Path(folder, "spawning").write_text("")
    try:
        run_parallel(task, [(folder, i, seconds, crash) for i in range(4)], 2, "test")
    except KeyboardInterrupt:  # as python -m sparsinglaw does (__main__.py)
        print("interrupted", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(130)
'''


@pytest.mark.parametrize("when,target", [("startup", "group"), ("running", "group"), ("running", "parent"),
                                         ("crash", "group"), ("running", "twice")])
def test_ctrl_c_stops_parallel_runs(tmp_path, when, target):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it; or to the parent alone, as a notebook
    kernel's interrupt does) while `-j 2` workers start up or run: the command stops within seconds with
    no worker traceback nor warning, starts none of the queued calls and leaves no worker behind (the
    pool used to run every queued call to its end first, and each worker interrupted while importing
    printed a traceback; after one call had crashed, Ctrl-C was not handled at all). "twice": more Ctrl-Cs
    to the parent while it stops the workers (a terminal's Ctrl-C relayed by `timeout`, an impatient user)
    must not cut that short (it said "interrupted", then waited for the workers to finish their runs)."""
    (tmp_path / "par.py").write_text(PARALLEL)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"))
    # as a terminal's foreground command: Ctrl-C not ignored, even when the tests run in the background
    # (a shell starts background commands with SIGINT ignored, and a child keeps that)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "par.py"), str(tmp_path), "60", when], env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        ready = {"startup": ["spawning"], "running": ["started0", "started1"],
                 "crash": ["started2"]}[when]  # crash: task 0 has failed, its worker took task 2
        deadline = time.time() + 120
        while not all((tmp_path / m).exists() for m in ready) and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)  # startup: the workers are importing torch
        t0 = time.time()
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)
        elif target == "twice":
            os.killpg(proc.pid, signal.SIGINT)
            for pause in (0.0, 0.001, 0.003, 0.01, 0.03, 0.1):
                time.sleep(pause)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=40)
        took = time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130 and err.strip() == "interrupted", err  # no worker traceback, no warning
    assert took < 20, f"took {took:.0f} s to stop"
    assert not list(tmp_path.glob("done*")) and len(list(tmp_path.glob("started*"))) <= (3 if when == "crash" else 2)
    deadline = time.time() + 10  # no worker left in the process group
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a worker outlived the interrupted command")


MASK = '''
import sys
from pathlib import Path

if __name__ == "__mp_main__":  # a worker, importing this file before the pool's initializer runs
    blocked = int(next(l for l in open("/proc/self/status") if l.startswith("SigBlk")).split()[1], 16)
    Path(sys.argv[1], f"mask{__import__('os').getpid()}").write_text(str(blocked))


def task(i):
    return i


if __name__ == "__main__":
    from sparsinglaw.runs import run_parallel

    run_parallel(task, [(i,) for i in range(2)], 2, "test")
'''


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_workers_start_with_ctrl_c_blocked(tmp_path):
    """The workers of a process's first pool start with SIGINT blocked, so a Ctrl-C while they import
    torch cannot print their tracebacks: multiprocessing's resource tracker, started by the first spawn,
    unblocked SIGINT in the calling thread, so the first pool's workers started with it unblocked."""
    (tmp_path / "mask.py").write_text(MASK)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"))
    r = subprocess.run([sys.executable, str(tmp_path / "mask.py"), str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    masks = [int(f.read_text()) for f in tmp_path.glob("mask[0-9]*")]
    assert len(masks) == 2 and all(m & (1 << (signal.SIGINT - 1)) for m in masks), masks


ORPHANS = '''
import os, sys, threading, time
from pathlib import Path

from sparsinglaw import runs

if __name__ == "__mp_main__":  # a worker, importing this file before the pool's initializer runs
    Path(sys.argv[1], f"importing.{os.getpid()}").touch()
    if sys.argv[2] in ("startup", "lagging"):  # it goes on only once its parent is gone (handed to another)
        parent, deadline = os.getppid(), time.time() + 60
        while os.getppid() == parent and time.time() < deadline:
            time.sleep(0.05)


def task(folder, i):
    Path(folder, f"task{i}").touch()
    time.sleep(3 if sys.argv[2] == "between" else 60)


def hold_the_sentinels(folder, pattern):
    """Once two files match `pattern` (the workers import, or run their first calls), a bare fork() makes a
    child that holds this process's end of each worker's sentinel pipe for 60 s: the workers see their
    parent pid change long before the sentinel."""
    while len(list(Path(folder).glob(pattern))) < 2:
        time.sleep(0.01)
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    Path(folder, "forked").write_text(str(child))


if __name__ == "__main__":
    if sys.argv[2] in ("lagging", "between"):
        pattern = "importing.*" if sys.argv[2] == "lagging" else "task*"
        threading.Thread(target=hold_the_sentinels, args=(sys.argv[1], pattern), daemon=True).start()
    runs.run_parallel(task, [(sys.argv[1], i) for i in range(4)], 2, "test")
'''


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("when", ["running", "startup", "lagging", "between"])
def test_workers_end_when_their_parent_is_killed(tmp_path, when):
    """A parallel command killed outright (SIGKILL, the OOM killer) takes its workers with it, within
    seconds, and none starts a queued call: they went on with the queue as children of PID 1, then
    waited forever. `running`: killed while two calls run. `startup`: killed while the workers still
    import, before they could watch it; they find it gone and end before taking a call. `lagging`: as
    `startup`, with the parent's sentinel pipes held open (Linux hands on a dying process's children before
    its last thread closes its files, so the sentinel can lag the parent pid; `startup` failed one run in
    five of the whole suite when the workers had the sentinel alone). `between`: as `running` with the
    sentinels held and calls of 3 s: a worker that ends its call after its parent died takes no queued one
    (and once the sentinels are let go, both end)."""
    (tmp_path / "orphans.py").write_text(ORPHANS)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"))
    proc = subprocess.Popen([sys.executable, "-W", "ignore::DeprecationWarning", str(tmp_path / "orphans.py"),
                             str(tmp_path), when], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        ready = {"running": "task*", "startup": "importing.*", "lagging": "forked", "between": "forked"}[when]
        deadline = time.time() + 120
        while len(list(tmp_path.glob(ready))) < (1 if ready == "forked" else 2) and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        pids = {int(p.suffix[1:]) for p in tmp_path.glob("importing.*")}
        assert len(pids) == 2, pids
        proc.kill()
        proc.wait()
        if when == "between":  # both calls end (3 s) with the parent gone; then the held sentinels are let go
            time.sleep(6)
            assert sorted(p.name for p in tmp_path.glob("task*")) == ["task0", "task1"]  # no queued call
            os.kill(int((tmp_path / "forked").read_text()), signal.SIGKILL)
        deadline = time.time() + 10
        while any(alive(pid) for pid in pids) and time.time() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in pids), "a worker outlived its killed parent"
        started = sorted(p.name for p in tmp_path.glob("task*"))
        assert started == (["task0", "task1"] if when in ("running", "between") else []), started  # none queued
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the workers, if they outlived it, and the bare fork's child
        proc.communicate()


def test_sequential_calls_all_run_then_their_errors_are_reported_together():
    """jobs == 1 (torchrun, the paper profile, -j 1, one run left) keeps the pool's rule: a run that
    fails does not stop the others (it used to end the sweep at the first error)."""
    from sparsinglaw.config import SparsingLawError

    ran = []

    def fn(i):
        ran.append(i)
        if i in (0, 2):
            raise SparsingLawError(f"run {i} diverged")

    with pytest.raises(SparsingLawError) as e:
        runs.run_parallel(fn, [(0,), (1,), (2,), (3,)], 1, "training")
    assert ran == [0, 1, 2, 3]
    assert str(e.value) == "training failed for 2 run(s):\nrun 0 diverged\nrun 2 diverged"

    def crash(i):
        ran.append(i)
        if i == 0:
            raise RuntimeError("a bug")
        raise SparsingLawError(f"run {i} diverged")

    ran.clear()
    with pytest.raises(RuntimeError, match="a bug"):
        runs.run_parallel(crash, [(0,), (1,)], 1, "training")
    assert ran == [0, 1]


def test_a_crashed_parallel_call_lets_the_others_finish_then_is_raised(tmp_path):
    """A call that fails with an error that is not a user error (a bug, a full disk) does not stop the
    other calls; it is raised once they are done, with its worker's traceback."""
    (tmp_path / "par.py").write_text(PARALLEL)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"))
    done = subprocess.run([sys.executable, str(tmp_path / "par.py"), str(tmp_path), "2", "crash"], env=env,
                          text=True, capture_output=True, timeout=120)
    assert done.returncode == 1 and "RuntimeError: task 0 crashed" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.glob("done*")) == ["done1", "done2", "done3"]


def test_runs_train_longest_first(tmp_path, monkeypatch, smoke_tokens):
    """train_profile hands the runs to the workers by their work left (tokens x width x depth), largest first,
    so that the longest run does not start last and leave the other cores idle at the end."""
    calls = {}
    monkeypatch.setattr(runs, "run_parallel", lambda fn, c, jobs, what, **kw: calls.update(c=c, **kw))
    profile = load_profile("smoke", overrides=["runs.relu-s1.train.tokens=98304", "runs.silu-s1.train.tokens=12288"])
    runs.train_profile(profile, jobs=2, runs_dir=tmp_path, progress=False)
    cost = {r.name: r.train.tokens * r.model.d_model * r.model.n_layers for r in profile.runs}
    names = [c[1] for c in calls["c"]]
    assert sorted(names) == sorted(cost) and len(set(cost.values())) > 2
    assert [cost[n] for n in names] == sorted(cost.values(), reverse=True)
    assert calls["weights"] == [cost[n] for n in names] and calls["names"] == names


def test_a_profile_file_edited_meanwhile_does_not_change_what_is_trained(tmp_path, mini_path, smoke_tokens):
    """train_profile trains the profile it is given: its file edited after loading (a sweep's config
    tuned while the runs train) used to be reloaded for each run, which then trained another config, in
    another folder, while the caller reported its own run untrained."""
    from conftest import MINI

    path = tmp_path / "edited.yaml"
    path.write_text(mini_path.read_text())
    profile = load_profile(path, overrides=MINI)
    text = path.read_text()
    assert "lr: 0.01\n" in text
    path.write_text(text.replace("lr: 0.01\n", "lr: 0.02\n"))
    rd = tmp_path / "runs"
    (state,) = runs.train_profile(profile, names=["relu-s1"], jobs=1, runs_dir=rd, progress=False)
    assert state.status == "done" and state.key == profile.run("relu-s1").key(profile.data)
    assert [p.name for p in rd.glob("*/relu-s1-*")] == [state.key]
    assert load_profile(path, overrides=MINI).run("relu-s1").key(profile.data) != state.key  # the edit counts


def _ends_abruptly(folder, i, how):
    """Call 0 ends; call 1 ends its worker once call 0 is done (`how`: SIGKILL, as the OOM killer does, or
    os._exit(3)); calls 2 and 3 wait for a file that never comes (the broken pool stops them)."""
    Path(folder, f"started{i}").write_text("")
    deadline = time.time() + 120
    if i == 1:
        while not Path(folder, "done0").exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # call 0's result on its way to the parent
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    while i > 1 and not Path(folder, "never").exists() and time.time() < deadline:
        time.sleep(0.05)
    Path(folder, f"done{i}").write_text("")


@pytest.mark.parametrize("how,progress", [("kill", False), ("kill", True), ("exit", False)])
def test_a_worker_ended_abruptly_is_a_clear_error(tmp_path, how, progress):
    """A worker killed outright (SIGKILL, the OOM killer) or ending without a word (os._exit, a crash in
    native code) breaks the pool, which stops the other calls: one SparsingLawError names the calls that did
    not finish, the cause (SIGKILL: fewer jobs; otherwise the exit code or signal) and that a rerun resumes,
    instead of concurrent.futures' BrokenProcessPool traceback. The call that had finished is kept."""
    from sparsinglaw.config import SparsingLawError

    with pytest.raises(SparsingLawError) as e:
        runs.run_parallel(_ends_abruptly, [(str(tmp_path), i, how) for i in range(4)], 2, "training",
                          progress=progress, names=["r0", "r1", "r2", "r3"])
    cause = ("was killed (SIGKILL; most often the kernel's OOM killer, when 2 parallel jobs need more memory than "
             "the machine has)" if how == "kill" else "ended abruptly (exit code 3)")
    fix = "run the command again with fewer jobs" if how == "kill" else "see the messages above, then run the command"
    assert str(e.value).startswith(f"training: a worker process {cause}, which stopped every unfinished call: r1, "
                                   f"r2, r3; {fix}"), e.value
    assert (tmp_path / "done0").exists() and not list(tmp_path.glob("done[123]"))


def _fails(msg):
    from sparsinglaw.config import SparsingLawError

    raise SparsingLawError(msg)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_single_failing_call_raises_its_own_error(jobs):
    """One call: its error as it is, not wrapped in 'failed for 1 run(s)' (the message names its fix)."""
    from sparsinglaw.config import SparsingLawError

    with pytest.raises(SparsingLawError) as e:
        runs.run_parallel(_fails, [("run x: refused; do this",)], jobs, "training")
    assert str(e.value) == "run x: refused; do this"


def test_temp_files_of_live_writers_are_kept(tmp_path):
    """remove_stale_temps deletes the temp files of writers that are gone, and keeps those of a writer that
    still runs (another process writing the same folder), this process's own, and another machine's (whose
    process ids mean nothing here: a folder shared by the nodes of a cluster)."""
    from sparsinglaw.train import remove_stale_temps, temp_path

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = temp_path(tmp_path / "t.csv").name.rsplit(".", 2)[-2].partition("-")[2]
    assert host and temp_path(tmp_path / "t.csv").name == f".t.csv.{os.getpid()}-{host}.tmp"
    try:
        files = {k: tmp_path / f".t.csv.{pid}-{host}.tmp" for k, pid in (("live", live.pid), ("dead", dead.pid),
                                                                            ("own", os.getpid()))}
        files["unnamed"] = tmp_path / f".u.csv.{dead.pid}.tmp"  # named without its machine: this one's
        files["other"] = tmp_path / f".o.csv.{dead.pid}-{host}x.tmp"  # another machine's
        for f in files.values():
            f.write_text("x")
        assert sorted(remove_stale_temps(tmp_path)) == sorted([files["dead"], files["unnamed"]])
        assert files["live"].exists() and files["own"].exists() and files["other"].exists()
        assert not files["dead"].exists() and not files["unnamed"].exists()
    finally:
        live.kill()
        live.wait()
