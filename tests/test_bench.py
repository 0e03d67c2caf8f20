"""The GPU benchmark scripts stay runnable without a GPU: the prepared device script's CPU dry run, the
parser of the probe's summary table, and the CPU-vs-CUDA agreement report."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import REPO


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_session_dry_run_trains_with_our_trainer(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PY=sys.executable, OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", "bench/gpu_session.sh", "dry"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "trainer_vs_probe.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| tiny"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "not run" and float(cells[4].replace(",", "")) > 0  # trainer tokens/s measured
    assert (tmp_path / "env_dry.txt").exists()
    prof = (tmp_path / "trainer_tiny.txt").read_text()
    assert "self_cpu_time_total" in prof and "aten::" in prof  # the profiler's kernel table of our trainer


def test_probe_summary_is_parsed(tmp_path):
    """A stand-in printing the probe's summary format: tokens/s, parameters, batch and MFU are read."""
    fake = tmp_path / "probe.py"
    fake.write_text(
        "import os\n"
        "n = os.environ['PROBE_SIZES']\n"
        "print('=== gpu_probe summary ===')\n"
        "print(f\"{'size':>5} {'d':>4} {'L':>3} {'N_nonemb':>10} {'B':>4} {'Mtok/s':>8} {'MFU%':>6}\")\n"
        "print(f\"{n:>5} {768:>4} {12:>3} {113.25:>9.2f}M {64:>4} {0.57:>8.2f} {49.0:>6.1f} {49.5:>6.1f} "
        "{114.9:>8.1f} {40.2:>7.1f} {60.1:>7.1f} {2.05:>10.2f}\")\n")
    tvp = _load("trainer_vs_probe")
    r = tvp.probe_run(fake, "108M", 1.0)
    assert r["tok_s"] == pytest.approx(0.57e6) and r["n_nonemb"] == pytest.approx(113.25e6)
    assert r["batch"] == 64 and r["mfu_nonemb"] == pytest.approx(0.49)
    bad = tmp_path / "broken.py"
    bad.write_text("print('CUDA not available; aborting')\n")
    assert "error" in tvp.probe_run(bad, "1M", 1.0)
    t = {"shape": "108M", "who": "trainer", "tok_s": 0.6e6, "n_nonemb": 113.2e6, "batch": 64, "seq": 1024,
         "mfu_nonemb": 0.41}
    line = tvp.table([r, t]).splitlines()[-1]
    assert "570,000" in line and "600,000" in line and "1.05x" in line and "41.0%" in line


def test_device_agreement_report(capsys):
    ppl = _load("ppl_p_speed")
    cpu = {"device": "cpu", "what": "m", "n_tokens": 100, "cett": 0.25, "ppl_ratio": 1.0101, "activation_ratio": 0.2,
           "dense_loss": 3.0, "wall_s": 10.0, "thresholds": [1.0, 2.0]}
    cuda = dict(cpu, device="cuda", cett=0.2505, thresholds=[1.0, 2.0002], wall_s=2.0)
    ppl.compare_answers(cpu, cuda)
    out = capsys.readouterr().out
    assert "|dc| 5.0e-04" in out and "max relative threshold difference 1.0e-04" in out and "speedup 5.0x" in out
