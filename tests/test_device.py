"""device.py on the CPU: the cores a process may use, the CPU settings of setup_torch and which rank is
the main one (the torchrun checks are in test_bad_inputs.py, the peak FLOP/s and the prefetcher in
test_train.py)."""

from __future__ import annotations

import os

import pytest
import torch

from sparsinglaw import device, measure
from sparsinglaw.config import load_profile


def test_usable_cores_are_the_affinity_not_the_machine(monkeypatch):
    """A scheduler's allocation (the affinity mask) bounds the jobs, not os.cpu_count(); without an
    affinity call the machine's count, and 1 when even that is unknown."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {3, 5}, raising=False)
    assert device.usable_cores() == 2
    monkeypatch.delattr(os, "sched_getaffinity")  # e.g. macOS
    assert device.usable_cores() == 64
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert device.usable_cores() == 1


def test_setup_torch_on_cpu_sets_the_threads_and_flushes_denormals():
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a float32 denormal
    assert (tiny * 2).item() != 0  # kept while flushing is off
    try:
        assert device.setup_torch("cpu", threads=3) == torch.device("cpu")
        assert torch.get_num_threads() == 3
        assert (tiny * 2).item() == 0  # flushed to zero
    finally:  # conftest's settings for the tests that follow
        torch.set_num_threads(1)
        torch.set_flush_denormal(True)


def test_the_main_process_is_global_rank_0_not_each_nodes_first():
    """Rank 0 alone writes checkpoints and logs: on a second node, local rank 0 is not the main process."""
    assert device.Dist().main
    assert device.Dist(rank=0, world=4, local_rank=0).main
    assert not device.Dist(rank=2, world=4, local_rank=0).main
    assert not device.Dist(rank=1, world=4, local_rank=1).main


# ----------------------------------------------------------------------------- the device measurements run on


def test_measure_device_switches_tf32_off_on_cuda(monkeypatch):
    """Measurements run in float32 on CUDA too: with resolve_device answering "cuda" (torch.device("cuda") is
    only a name, nothing is allocated), both TF32 switches end off even when they were on."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    monkeypatch.setattr(device, "resolve_device", lambda d="auto": "cuda")
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        assert measure.measure_device(load_profile("smoke")) == torch.device("cuda")
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_resolve_device_auto_follows_cuda_availability(monkeypatch):
    """"auto" is "cuda" when torch sees a GPU and "cpu" when it does not; an explicit "cuda" without one is
    refused."""
    from sparsinglaw.config import SparsingLawError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.resolve_device("auto") == "cuda" and device.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve_device("auto") == "cpu"
    with pytest.raises(SparsingLawError, match="torch sees no CUDA device"):
        device.resolve_device("cuda")


def test_empty_environment_numbers_mean_unset(monkeypatch):
    """SPARSINGLAW_PEAK_FLOPS= and SPARSINGLAW_DIST_TIMEOUT= (set but empty, as a job script's template
    leaves them) are unset, not refused."""
    import torch

    from sparsinglaw import device

    monkeypatch.setenv("SPARSINGLAW_PEAK_FLOPS", "")
    monkeypatch.setenv("SPARSINGLAW_DIST_TIMEOUT", "")
    assert device.peak_flops(torch.device("cpu")) is None
    assert device._timeout() == {}


def test_exit_with_parent_outside_a_worker_does_nothing():
    """Called where multiprocessing started nothing (this test process), it neither fails nor starts a
    watcher that would end the process."""
    import threading

    from sparsinglaw.device import exit_with_parent

    assert exit_with_parent("spawn") is None
    assert not [t for t in threading.enumerate() if t.name == "exit-with-parent"]


# ----------------------------------------------------------------------------- the CUDA path, checked on the CPU


def test_pinned_memory_that_fails_means_unpinned_batches(monkeypatch, capsys):
    """Where host memory cannot be pinned (cudaHostAlloc refused, say under a sandbox), the check says so
    in one line, once per process and device, and answers False: the trainer then copies its batches
    unpinned instead of failing every run at its first batch. Where pinning and the non_blocking copy
    work, True; on a CPU nothing is pinned."""
    tried = []

    def refuse(self):
        tried.append(1)
        raise RuntimeError("CUDA error: operation not permitted\nCUDA kernel errors might be reported later")

    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(device, "_PINNED", {})
    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    assert device.pinned_memory_works(gpu) is False and device.pinned_memory_works(gpu) is False
    out = capsys.readouterr().out
    assert tried == [1] and out == ("note: pinned host memory fails on cuda:0 (RuntimeError: CUDA error: operation "
                                    "not permitted): training batches are copied unpinned\n")
    assert device.pinned_memory_works(torch.device("cpu")) is False and tried == [1]
    monkeypatch.setattr(device, "_PINNED", {})
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self.clone())  # the "device" copy, here on the CPU
    assert device.pinned_memory_works(gpu) is True and capsys.readouterr().out == ""
    monkeypatch.setattr(device, "_PINNED", {})
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self.flip(0))  # a copy that came back wrong
    assert device.pinned_memory_works(gpu) is False and "the copy came back wrong" in capsys.readouterr().out



def test_an_nccl_group_is_bound_to_the_ranks_gpu(monkeypatch):
    """Under torchrun on CUDA the process group is told its GPU (device_id: barriers need not guess it
    from the rank); gloo on the CPU is started as before. The CUDA calls are stand-ins here."""
    import torch.distributed as dist

    started, chosen = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("SPARSINGLAW_DIST_TIMEOUT", raising=False)
    monkeypatch.setattr(device, "resolve_device", lambda d="auto": d)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: started.append((backend, kw)))
    assert device.init_distributed("cuda") == device.Dist(rank=1, world=2, local_rank=1)
    assert chosen == [1] and started == [("nccl", {"device_id": torch.device("cuda", 1)})]
    started.clear()
    device.init_distributed("cpu")
    assert started == [("gloo", {})] and chosen == [1]
