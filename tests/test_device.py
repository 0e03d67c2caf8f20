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
