"""Progress bars on stderr: one per stage, also when its runs go to parallel worker processes.

In the main process `progress_bar` is a tqdm bar. In a worker of `runs.run_parallel` (with progress on) it is a
relay that sends its counts to the parent, and the worker's output lines go there too: the parent draws
one bar for the stage (its share of the work done, runs finished, and the runs in progress with their
percentages) and prints the workers' lines above it. Bars of several processes on one terminal would
overwrite each other's line, and a worker's line printed over a bar would leave the bar's tail behind.
"""
from __future__ import annotations

import contextlib
import io
import queue
import sys
import threading
import time

RELAY_EVERY = 0.5  # seconds between a relay's messages (and the last one when it closes)

_QUEUE = None  # in a worker with progress relayed: the queue to the parent (set by `relay_to`)
_CALL = 0  # in such a worker: the index of the call it runs (set by `call`)


def progress_bar(total: float, desc: str, disable: bool = False, initial: float = 0, name: str | None = None,
                 **tqdm_args):
    """A progress bar of `total` units starting at `initial`: tqdm on stderr, or in a relaying worker a
    `Relay` (update, set_postfix, close, as tqdm's) that the stage bar shows as `name` (default: desc)."""
    if _QUEUE is not None:
        return Relay(_QUEUE, _CALL, total, name or desc, disable, initial)
    from tqdm import tqdm  # plain text on stderr, in a notebook too (no widget library needed)

    return tqdm(total=total, initial=initial, desc=desc, disable=disable, **tqdm_args)


class Relay:
    """A worker's progress bar, sent to the parent: ("bar", call, desc, done, todo), done counting from the
    bar's initial value (the work of this call, a resumed run's earlier tokens left out), at most every
    RELAY_EVERY seconds and when it closes."""

    def __init__(self, q, call: int, total: float, desc: str, disable: bool, initial: float = 0):
        self.q, self.call, self.desc, self.disable = q, call, desc, disable
        self.n, self.initial, self.total, self.sent = initial, initial, total, -RELAY_EVERY

    def update(self, n: float = 1) -> None:
        self.n += n
        if time.monotonic() - self.sent >= RELAY_EVERY:
            self._send()

    def set_postfix(self, *args, **kwargs) -> None:  # the parent's bar shows the run's share only
        pass

    def close(self) -> None:
        self._send()
        self.disable = True

    def _send(self) -> None:
        if not self.disable:
            self.q.put(("bar", self.call, self.desc, self.n - self.initial, self.total - self.initial))
            self.sent = time.monotonic()


class _Lines(io.TextIOBase):
    """A worker's stdout or stderr: each whole line goes to the parent, which prints it above its bar.
    `fileno` is the stream's own descriptor, for code that writes there directly (unrelayed). A lock keeps
    the lines of threads writing at once (a prefetcher's warning beside the loop's print) whole."""

    def __init__(self, q, name: str, fd: int):
        self.q, self.name, self.fd, self.buf, self.lock = q, name, fd, "", threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, s: str) -> int:
        with self.lock:
            self.buf += s
            *lines, self.buf = self.buf.split("\n")
            for line in lines:
                self.q.put(("line", self.name, line))
        return len(s)

    def flush(self) -> None:  # a line without its newline goes out on a flush (`call` flushes at its end)
        with self.lock:
            if self.buf:
                self.q.put(("line", self.name, self.buf))
                self.buf = ""


def relay_to(q) -> None:
    """In a worker process: its bars and output lines go to the parent through `q`."""
    global _QUEUE
    _QUEUE = q
    sys.stdout, sys.stderr = _Lines(q, "stdout", sys.stdout.fileno()), _Lines(q, "stderr", sys.stderr.fileno())


def call(i: int, fn, *args):
    """fn(*args) as call i of a stage (what a worker's bars report); its output ends flushed (the worker
    outlives the call, and the flush of a worker's exit comes after its queue is closed). A spawned worker
    whose parent is gone ends instead (device.end_if_orphaned)."""
    global _CALL
    from .device import end_if_orphaned

    end_if_orphaned()  # a worker whose parent died while it ran the previous call takes no queued one
    _CALL = i
    try:
        return fn(*args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


class StageBar:
    """The parent's bar of a stage run in worker processes; a thread reads the workers' messages from `q`
    until `close`. `weights`: each call's share of the work (a call counts its weight times the fraction
    its bar has done; 0 before its first message). `finished(i)`: call i has returned (counts in full)."""

    def __init__(self, q, what: str, weights: list[float]):
        from tqdm import tqdm

        self.q, self.w, self.done = q, [float(w) for w in weights], set()
        if not sum(self.w) > 0:
            self.w = [1.0] * len(self.w)
        self.active: dict[int, tuple[str, float]] = {}  # call -> (desc, fraction done) of bars in progress
        self.tqdm = tqdm(total=100.0, desc=what, leave=False, smoothing=0, mininterval=1.0, dynamic_ncols=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        self.stop, self.drawn = threading.Event(), 0.0
        self.reader = threading.Thread(target=self._read, daemon=True)  # daemon: a killed worker may leave
        self.reader.start()  # a message half written, on which a read would block

    def finished(self, i: int) -> None:
        self.done.add(i)
        self.active.pop(i, None)

    def _handle(self, msg) -> None:
        if msg[0] == "line":
            out = sys.stdout if msg[1] == "stdout" else sys.stderr
            try:
                self.tqdm.write(msg[2], file=out)
            except UnicodeEncodeError:  # a terminal or pipe that cannot show a character: shown as "?"
                enc = getattr(out, "encoding", None) or "ascii"
                self.tqdm.write(msg[2].encode(enc, "replace").decode(enc), file=out)
        elif msg[1] not in self.done:
            _, i, desc, n, todo = msg
            self.active[i] = (desc, min(n / todo, 1.0) if todo > 0 else 1.0)

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                msg = self.q.get(timeout=0.2)
            except queue.Empty:
                msg = None
            try:
                if msg is not None:
                    self._handle(msg)
                self._draw()
            except Exception:  # a closed pipe (`| head`) loses the lines, but the reading goes on: workers
                pass  # whose queue is not read block on their exit, and the stage would hang

    def _draw(self) -> None:
        if time.monotonic() - self.drawn < 1.0:
            return
        done = set(self.done)  # a copy: `finished` may change it meanwhile
        active = {i: v for i, v in dict(self.active).items() if i not in done}
        share = (sum(self.w[i] for i in done) + sum(self.w[i] * f for i, (_, f) in active.items())) / sum(self.w)
        runs = ", ".join(f"{d} {f:.0%}" for d, f in list(active.values())[:4])
        more = f" +{len(active) - 4}" if len(active) > 4 else ""
        self.tqdm.set_postfix_str(f"{len(done)}/{len(self.w)} done" + (f"; {runs}{more}" if runs else ""),
                                  refresh=False)
        self.tqdm.n = min(100.0 * share, 100.0)
        self.tqdm.refresh()
        self.drawn = time.monotonic()

    def close(self, drain: bool = True) -> None:
        """Stop reading, print the lines sent and not yet read (`drain`: only once every worker has exited,
        so that no message is half written), and clear the bar."""
        self.stop.set()
        self.reader.join(timeout=5)
        while drain:
            try:
                msg = self.q.get_nowait()
            except queue.Empty:
                break
            if msg[0] == "line":
                with contextlib.suppress(Exception):  # as in _read
                    self._handle(msg)
        with contextlib.suppress(Exception):
            self.tqdm.close()
