"""Progress across worker processes (progress.py): a worker's bar and output lines go to the parent, which
draws one bar for the stage and prints the lines above it."""
from __future__ import annotations

import io
import os
import queue
import re
import subprocess
import sys
import threading
import time

from conftest import REPO
from sparsinglaw import progress


def _drain(q):
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def test_a_relay_sends_the_work_of_its_call_at_most_every_interval_and_when_it_closes():
    q = queue.Queue()
    bar = progress.Relay(q, 2, total=100, desc="relu-s1", disable=False, initial=40)  # a resumed run: 40 done
    bar.update(10)  # the first update goes out at once
    bar.update(10)  # within RELAY_EVERY: held back
    bar.set_postfix(loss="3.1")
    assert _drain(q) == [("bar", 2, "relu-s1", 10, 60)]
    bar.close()
    bar.update(5)  # after close: nothing more
    assert _drain(q) == [("bar", 2, "relu-s1", 20, 60)]
    quiet = progress.Relay(q, 0, total=10, desc="x", disable=True)  # progress off
    quiet.update(10)
    quiet.close()
    assert _drain(q) == []


def test_worker_output_goes_out_line_by_line():
    q = queue.Queue()
    out = progress._Lines(q, "stdout", 1)
    print("relu-s1: done", file=out)
    out.write("two\nlines\nand a ")
    out.write("half")
    assert _drain(q) == [("line", "stdout", "relu-s1: done"), ("line", "stdout", "two"), ("line", "stdout", "lines")]
    out.flush()
    assert _drain(q) == [("line", "stdout", "and a half")]
    assert out.fileno() == 1  # for code that writes to the descriptor itself


def test_the_stage_bar_counts_each_call_by_its_weight(capsys):
    q = queue.Queue()
    stage = progress.StageBar(q, "training", [3.0, 1.0, 4.0])
    try:
        stage._handle(("bar", 0, "relu-s4", 50, 100))  # half of call 0: 1.5 of 8
        stage._handle(("bar", 1, "relu-s1", 1, 4))  # a quarter of call 1: 0.25
        stage.drawn = 0.0
        stage._draw()
        assert abs(stage.tqdm.n - 100 * 1.75 / 8) < 1e-9
        assert "0/3 done; relu-s4 50%, relu-s1 25%" in stage.tqdm.postfix
        stage.finished(1)  # returned: counts in full, and a late message of it changes nothing
        stage._handle(("bar", 1, "relu-s1", 3, 4))
        stage.drawn = 0.0
        stage._draw()
        assert abs(stage.tqdm.n - 100 * 2.5 / 8) < 1e-9
        assert "1/3 done; relu-s4 50%" in stage.tqdm.postfix and "relu-s1" not in stage.tqdm.postfix
        stage._handle(("line", "stdout", "relu-s1: done"))
    finally:
        stage.close()
    assert capsys.readouterr().out == "relu-s1: done\n"


PARALLEL = '''
import sys, time

from sparsinglaw.progress import progress_bar
from sparsinglaw.runs import run_parallel  # imports torch: a spawned worker starts for seconds


def task(i):
    bar = progress_bar(total=3, desc=f"task{i}")
    for k in range(3):
        time.sleep(0.3)
        bar.update(1)
        print(f"task {i}: step {k + 1} of 3", flush=True)
    bar.close()


if __name__ == "__main__":
    run_parallel(task, [(i,) for i in range(3)], 2, "stage", progress=True)
'''


def test_parallel_workers_print_whole_lines_under_one_stage_bar(tmp_path):
    """Two workers with a bar each, printing as they go, their stdout and stderr on one stream (a terminal):
    every line comes out whole on a line of its own (a worker's line printed after its own bar, drawn
    without a newline, used to continue the bar's line), and the only bar drawn is the stage's."""
    (tmp_path / "par.py").write_text(PARALLEL)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"))
    r = subprocess.run([sys.executable, str(tmp_path / "par.py")], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=180)
    assert r.returncode == 0, r.stdout
    pieces = [p.strip() for p in re.split(r"[\r\n]", r.stdout)]
    for i in range(3):
        for k in range(3):
            assert f"task {i}: step {k + 1} of 3" in pieces, r.stdout
    bars = [p for p in pieces if "|" in p]
    assert bars and all(p.startswith("stage: ") for p in bars), bars
    assert not any(re.match(r"task\d: ", p) for p in pieces), r.stdout  # no worker drew a bar of its own


def test_the_stage_bar_reads_on_when_a_line_cannot_be_written(monkeypatch, capsys):
    """A closed pipe (`train -j 4 | head`) or a terminal that cannot show a character must not stop the
    parent's reading: workers whose queue is not read block at their exit, and the stage would hang."""
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    q = queue.Queue()
    stage = progress.StageBar(q, "training", [1.0])
    try:
        monkeypatch.setattr(sys, "stdout", Closed())
        q.put(("line", "stdout", "lost"))
        q.put(("bar", 0, "relu-s1", 1, 2))
        deadline = time.time() + 10
        while 0 not in stage.active and time.time() < deadline:
            time.sleep(0.01)
        assert stage.reader.is_alive() and stage.active[0] == ("relu-s1", 0.5)
        monkeypatch.setattr(sys, "stdout", ascii_out)
        stage._handle(("line", "stdout", "café"))
    finally:
        stage.close()
    ascii_out.flush()
    assert ascii_out.buffer.getvalue().decode() == "caf?\n"


def test_a_call_ends_with_its_output_flushed_and_threads_keep_lines_whole(monkeypatch):
    q = queue.Queue()
    out = progress._Lines(q, "stdout", 1)
    monkeypatch.setattr(sys, "stdout", out)
    progress.call(0, lambda: sys.stdout.write("no newline"))  # the worker outlives the call
    assert _drain(q) == [("line", "stdout", "no newline")]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: unlocked, lines came out twice in some runs

    def lines(k):
        for j in range(20000):
            out.write(f"thread {k} line {j}\n")

    try:
        threads = [threading.Thread(target=lines, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    got = [m[2] for m in _drain(q)]
    assert sorted(got) == sorted(f"thread {k} line {j}" for k in range(2) for j in range(20000))
