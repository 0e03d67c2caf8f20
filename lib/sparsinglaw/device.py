"""Where training and measuring run: the device, CPU threads, worker processes that end with their
parent, the torchrun process group, the device's peak FLOP/s (for MFU) and the background batch
prefetcher of the CUDA path."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from dataclasses import dataclass

import torch

from .config import SparsingLawError


def resolve_device(device: str = "auto") -> str:
    """compute.device as "cpu" or "cuda" ("auto": cuda when torch sees a GPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SparsingLawError("compute.device is 'cuda' but torch sees no CUDA device; set it to auto or cpu "
                               "(--set compute.device=cpu), or run on a machine with a GPU")
    return device


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a scheduler's allocation or taskset), not every
    core of the machine; os.cpu_count() where affinity is not available."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_STARTER: int | None = None  # in a spawned pool worker: the pid of the process that started it (exit_with_parent)


def exit_with_parent(method: str) -> None:
    """Pool initializer: end this worker as soon as the process that started it ends, however it ends (a
    process killed outright, by SIGKILL or the OOM killer, left its workers to go on with the queued calls,
    then wait for work forever). segment_documents' workers and run_parallel's call it; `method` is the
    pool's start method.

    The worker's parent sentinel (``multiprocessing.parent_process()``; on POSIX a pipe whose write end
    only that process holds, on Windows its process handle) becomes ready once that process is gone, at
    once if it already is. Unlike prctl(PR_SET_PDEATHSIG) or a watch on os.getppid(), it works for a
    forkserver's children too, whose parent is the forkserver. A daemon thread waits on it, without
    polling. (A child that process made by a bare fork() would hold the write end too, and keep the
    workers until it ends; the package makes none.) Outside a multiprocessing worker it does nothing.

    A spawned (or forked) worker also ends if its parent pid is no longer its starter's, at start-up and
    before each call (``end_if_orphaned``): Linux hands a dying process's children on to a reaper before
    the last of its threads has closed its files (freeing a large address space can take milliseconds), so
    the sentinel can lag the new parent pid, long enough for the worker to take a queued call. A
    forkserver's workers (whose parent is the forkserver) have the sentinel alone."""
    global _STARTER
    import threading
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:  # not started by multiprocessing: no parent to watch
        return
    sentinel = parent.sentinel
    _STARTER = None if method == "forkserver" else parent.pid
    end_if_orphaned()
    if wait([sentinel], 0):  # gone while this worker started up: end before it takes a queued call
        os._exit(1)
    threading.Thread(target=lambda: (wait([sentinel]), os._exit(1)), name="exit-with-parent", daemon=True).start()


def end_if_orphaned() -> None:
    """In a spawned pool worker (after exit_with_parent): end now if the process that started it is gone,
    as its changed parent pid tells at once (its sentinel may lag; exit_with_parent). Elsewhere nothing."""
    if _STARTER is not None and os.getppid() != _STARTER:
        os._exit(1)


def setup_torch(device: str = "auto", threads: int = 1) -> torch.device:
    """Pick the device; on CPU use `threads` threads (1 by default: with 2 threads and any other busy
    process OpenMP spin-waits and training slows several-fold) and flush denormals (a 4x fp32 cost
    was measured without it)."""
    device = resolve_device(device)
    if device == "cpu":
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
    return torch.device(device)


@dataclass
class Dist:
    """Process-group facts under torchrun (rank 0 of 1 otherwise)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: str | None = None) -> int:
    raw = os.environ.get(name, default)
    if raw is None:
        raise SparsingLawError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {name} is not set; start the processes "
                               "with torchrun, which sets WORLD_SIZE, RANK and LOCAL_RANK")
    try:
        return int(raw)
    except ValueError:
        raise SparsingLawError(f"{name}={raw!r} is not an integer (torchrun sets it)") from None


def dist_env(device: str) -> Dist:
    """Rank, world size and local rank from torchrun's variables (rank 0 of 1 without them), checked:
    RANK in [0, WORLD_SIZE) and, on CUDA, LOCAL_RANK below the number of GPUs. `device` is resolved."""
    world = _env_int("WORLD_SIZE", "1")
    if world < 1:
        raise SparsingLawError(f"WORLD_SIZE={world}: expected a number of processes >= 1")
    if world == 1:
        return Dist()
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK", "0")
    if not 0 <= rank < world:
        raise SparsingLawError(f"RANK={rank}: expected 0 <= RANK < WORLD_SIZE={world}")
    if local < 0:
        raise SparsingLawError(f"LOCAL_RANK={local}: expected >= 0")
    if device == "cuda" and local >= torch.cuda.device_count():
        raise SparsingLawError(f"LOCAL_RANK={local} but torch sees {torch.cuda.device_count()} CUDA device(s); "
                               "start at most one process per GPU (torchrun --nproc_per_node)")
    return Dist(rank=rank, world=world, local_rank=local)


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU). The device and
    torchrun's variables are checked first (SparsingLawError), before any CUDA or process-group call."""
    device = resolve_device(device)
    ddp = dist_env(device)
    if ddp.world == 1:
        return ddp
    import torch.distributed as dist

    timeout = _timeout()
    if device == "cuda":
        torch.cuda.set_device(ddp.local_rank)  # also for a group the caller started: collectives use it
    if not dist.is_initialized():
        # nccl bound to this rank's GPU (device_id, torch >= 2.3): barriers then need not guess the device
        # from the rank, and the communicator is set up at once, where a wrong device fails first
        bound = {"device_id": torch.device("cuda", ddp.local_rank)} if device == "cuda" else {}
        dist.init_process_group("nccl" if device == "cuda" else "gloo", **timeout, **bound)
    return ddp


def leave_distributed() -> None:
    """End the process group, every rank together (a barrier first). A group left open to the
    interpreter's exit can abort it ("terminate called without an active exception"). Call it once, when
    no more collectives follow: starting a group again in the same torchrun process reads the first one's
    stale addresses from torchrun's store."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def env_number(name: str, ok, expected: str) -> float | None:
    """The number in environment variable `name` (None when unset or empty), refused with one message
    unless ok(value) (NaN and text fail every range)."""
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not ok(value):
        raise SparsingLawError(f"{name}={raw!r}: expected {expected}")
    return value


def _timeout() -> dict:
    """SPARSINGLAW_DIST_TIMEOUT (seconds), how long a collective may wait for the other ranks before the
    process group gives up; unset: torch's default (10 minutes on nccl, 30 on gloo). Ranks also wait at a
    barrier while rank 0 alone evaluates and writes a checkpoint, so keep it well above that time."""
    import datetime

    seconds = env_number("SPARSINGLAW_DIST_TIMEOUT", lambda v: 1 <= v <= 1e9, "a number of seconds in [1, 1e9]")
    return {} if seconds is None else {"timeout": datetime.timedelta(seconds=seconds)}


# Datasheet dense bf16 tensor-core peaks (FLOP/s) by device name; MFU is reported only for these (or
# with SPARSINGLAW_PEAK_FLOPS set). The first matching substring wins, so the longer names come first.
PEAK_BF16 = [("H200 NVL", 835e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12),
             ("H100", 989e12), ("A100", 312e12)]


def peak_flops(device: torch.device) -> float | None:
    """The device's peak FLOP/s for MFU: SPARSINGLAW_PEAK_FLOPS if set, else the datasheet bf16 peak of a
    known CUDA device, else None (CPUs and unknown GPUs: tokens/s only)."""
    peak = env_number("SPARSINGLAW_PEAK_FLOPS", lambda v: 0 < v < math.inf,  # an MFU of nan, 0 or < 0 means nothing
                      "a positive, finite number of FLOP/s (e.g. 989e12)")
    if peak is not None:
        return peak
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


_PINNED: dict[str, bool] = {}  # device -> whether pinned_memory_works there (checked once per process)


def pinned_memory_works(device: torch.device) -> bool:
    """Whether batches can go to `device` from pinned (page-locked) host memory: a small tensor is pinned
    and copied non_blocking, once per process and device. Pinning can fail where the host memory cannot
    be locked (cudaHostAlloc refused, e.g. under a sandbox's memory limits); the Prefetcher's thread would
    then fail every run at its first batch. On failure a one-line note, and False: unpinned batches (a
    synchronous copy, slower, not wrong). False on CPU, where nothing is copied."""
    if device.type != "cuda":
        return False
    key = str(device)
    if key not in _PINNED:
        try:
            host = torch.arange(1024, dtype=torch.int64).pin_memory()
            back = host.to(device, non_blocking=True).cpu()  # .cpu() waits for the copy
            _PINNED[key] = bool(torch.equal(back, torch.arange(1024)))
            why = "" if _PINNED[key] else "the copy came back wrong"
        except RuntimeError as e:  # torch's CUDA errors are RuntimeErrors
            _PINNED[key], why = False, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        if not _PINNED[key]:
            print(f"note: pinned host memory fails on {device} ({why}): training batches are copied unpinned",
                  flush=True)
    return _PINNED[key]


class Prefetcher:
    """Draws the micro-batches of this rank, step by step from `step`, in a background thread into pinned
    memory (`pin`; see pinned_memory_works), `depth` batches ahead, so the GPU never waits for the CPU's
    gather (CUDA only: on CPU the batches are drawn inline, where a second thread would only compete for
    the cores)."""

    def __init__(self, draw, step: int, micros: list[int], depth: int = 4, pin: bool = True):
        import queue
        import threading

        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()

        def put(item) -> None:  # waits for room, but gives up once close() was called
            while not self.stop.is_set():
                try:
                    return self.q.put(item, timeout=0.1)
                except queue.Full:
                    continue

        def work() -> None:
            s = step
            try:
                while not self.stop.is_set():
                    for m in micros:
                        x, y = draw(s, m)
                        put((s, m, x.pin_memory(), y.pin_memory()) if pin else (s, m, x, y))
                    s += 1
            except BaseException as e:  # handed to the consumer, raised there
                put((None, None, e, None))

        self.thread = threading.Thread(target=work, daemon=True, name="sparsinglaw-prefetch")
        self.thread.start()

    def get(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, m, x, y = self.q.get()
        if s is None:
            raise x
        if (s, m) != (step, micro):  # the trainer asks in the order the thread draws: a bug otherwise
            raise RuntimeError(f"prefetch out of order: got step {s} micro-batch {m}, want {step}, {micro}")
        return x, y

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
