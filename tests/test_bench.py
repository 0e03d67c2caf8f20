"""The GPU benchmark scripts stay runnable without a GPU: the prepared device script's CPU dry run, the
parser of the probe's summary table, and the CPU-vs-CUDA agreement report."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import REPO


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_session_dry_run_trains_with_our_trainer(tmp_path):
    state = tmp_path / "state" / "compute_args"
    state.parent.mkdir()
    env = dict(os.environ, OUT=str(tmp_path), PY=sys.executable, OMP_NUM_THREADS="1", STATE=str(state))
    r = subprocess.run(["bash", "bench/gpu_session.sh", "dry"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "trainer_vs_probe.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| tiny"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "not run" and float(cells[4].replace(",", "")) > 0  # trainer tokens/s measured
    eager = next(line for line in table.splitlines() if line.startswith("| tiny (trainer eager)"))
    cells = [c.strip() for c in eager.strip("|").split("|")]
    assert float(cells[4].replace(",", "")) > 0 and float(cells[7]) >= 0  # eager tokens/s and warm-up seconds
    log = (tmp_path / "bench.log").read_text()
    assert "compile decision: 100,000,000 tokens at tiny" in log
    choice = next(line for line in log.splitlines() if line.startswith("COMPUTE_ARGS="))[len("COMPUTE_ARGS="):]
    assert choice in ("--set compute.compile=true", "--set compute.compile=false")
    assert state.read_text().strip() == choice  # kept for a later `profile` call on the same machine
    assert (tmp_path / "env_dry.txt").exists()
    prof = (tmp_path / "trainer_tiny.txt").read_text()
    assert "self_cpu_time_total" in prof and "aten::" in prof  # the profiler's kernel table of our trainer


def test_gpu_session_profile_packs_what_it_has_when_cut_off(tmp_path):
    """`profile` with a short LIMIT: compute is stopped at LIMIT - 75 s (15 s: enough to start and print its
    plan, not to build the corpus), the compute arguments come from an earlier bench call's choice, and
    the results archive is still written."""
    state = tmp_path / "compute_args"
    state.write_text("--set compute.device=cpu --set compute.compile=false\n")
    out = tmp_path / "out"
    kept = [tmp_path / "results" / "gpu" / "earlier.csv"]  # what an earlier call finished: packed
    kept += [tmp_path / "runs" / "gpu" / "earlier-run" / f for f in ("log.csv", "DONE", "config.yaml")]
    for f in kept:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x\n")
    env = dict(os.environ, OUT=str(out), PY=sys.executable, OMP_NUM_THREADS="1", STATE=str(state), LIMIT="90",
               SPARSINGLAW_RUNS=str(tmp_path / "runs"), SPARSINGLAW_RESULTS=str(tmp_path / "results"),
               SPARSINGLAW_DATA=str(tmp_path / "data"))
    r = subprocess.run(["bash", "bench/gpu_session.sh", "profile"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "compute arguments from the bench part" in r.stdout and "compute.compile=false" in r.stdout
    from sparsinglaw.config import load_profile

    n = len(load_profile("gpu").runs)
    assert f"profile gpu: {n} runs on cpu" in (out / "compute.log").read_text()
    assert (out / "results_gpu.tgz").exists() and not (out / "compute_times.json").exists()  # cut off
    with tarfile.open(out / "results_gpu.tgz") as tar:  # (tar writes the file even when it packs nothing)
        packed = {"/" + n for n in tar.getnames()}
    assert {str(f) for f in kept} <= packed, packed


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
    # the probe's MFU is over its own peak (790e12 unless PEAK_FLOPS), not ours: kept under another name
    assert r["batch"] == 64 and r["mfu_nonemb_at_probe_peak"] == pytest.approx(0.49) and "mfu_nonemb" not in r
    assert r["probe_peak"] == float(os.environ.get("PEAK_FLOPS", 790e12))
    bad = tmp_path / "broken.py"
    bad.write_text("print('CUDA not available; aborting')\n")
    assert "error" in tvp.probe_run(bad, "1M", 1.0)
    t = {"shape": "108M", "who": "trainer", "tok_s": 0.6e6, "n_nonemb": 113.2e6, "batch": 64, "seq": 1024,
         "mfu_nonemb": 0.41}
    line = tvp.table([r, t]).splitlines()[-1]
    assert "570,000" in line and "600,000" in line and "1.05x" in line and "41.0%" in line


def test_compile_decision_weighs_warm_up_against_speed():
    """Compiled: 40 s warm-up at 10M tokens/s; eager: 2 s at 5M tokens/s. Equal at 380M tokens
    (40 + T/1e7 = 2 + T/5e6), so 100M tokens go eager and 1B compiled."""
    tvp = _load("trainer_vs_probe")
    res = [{"shape": "1M", "who": "probe", "tok_s": 1.1e7},
           {"shape": "1M", "who": "trainer", "tok_s": 1e7, "warm_s": 40.0},
           {"shape": "1M", "who": "trainer-eager", "tok_s": 5e6, "warm_s": 2.0}]
    use, why = tvp.decide_compile(res, "1M", 1e8)
    assert use is False and "compiled 40.0 s warm-up + 10.0 s = 50.0 s" in why
    assert "eager 2.0 s + 20.0 s = 22.0 s" in why
    assert tvp.decide_compile(res, "1M", 1e9)[0] is True
    assert tvp.decide_compile(res[:2], "1M", 1e8)[0] is None  # no eager measurement: no decision
    assert tvp.decide_compile(res[:2] + [{"shape": "1M", "who": "trainer-eager", "error": "x"}], "1M", 1e8)[0] is None


def test_benchmark_table_is_written_after_every_measurement(tmp_path, monkeypatch):
    """A run cut off at its time limit keeps the rows it finished: the table is rewritten each time."""
    tvp = _load("trainer_vs_probe")
    fake = tmp_path / "probe.py"
    fake.write_text(
        "import os\n"
        "n = os.environ['PROBE_SIZES']\n"
        "print(f\"{n:>5} {128:>4} {4:>3} {1.05:>9.2f}M {256:>4} {10.63:>8.2f} {1.4:>6.1f} {2.0:>6.1f}\")\n")
    calls = []

    def trainer(a, shape, compiled):
        calls.append((shape, compiled))
        if len(calls) == 2:
            raise TimeoutError("cut off")
        return {"shape": shape, "who": "trainer", "tok_s": 1.2e7, "warm_s": 30.0, "n_nonemb": 1.05e6,
                "batch": 256, "seq": 1024, "mfu_nonemb": 0.1}

    monkeypatch.setattr(tvp, "trainer_subprocess", trainer)
    out = tmp_path / "t.md"
    monkeypatch.setattr(sys, "argv", ["tvp", "--probe", str(fake), "--shapes", "1M,108M", "--out", str(out)])
    with pytest.raises(TimeoutError):
        tvp.main()
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 1")]
    assert calls == [("1M", True), ("108M", True)]
    assert len(rows) == 2 and "10,630,000" in rows[0] and "12,000,000" in rows[0] and "1.13x" in rows[0]
    assert rows[1].startswith("| 108M") and "not run" in rows[1]  # the 108M probe finished, its trainer did not


def test_device_agreement_report(capsys):
    ppl = _load("ppl_p_speed")
    cpu = {"device": "cpu", "what": "m", "n_tokens": 100, "cett": 0.25, "ppl_ratio": 1.0101, "activation_ratio": 0.2,
           "dense_loss": 3.0, "wall_s": 10.0, "thresholds": [1.0, 2.0]}
    cuda = dict(cpu, device="cuda", cett=0.2505, thresholds=[1.0, 2.0002], wall_s=2.0)
    ppl.compare_answers(cpu, cuda)
    out = capsys.readouterr().out
    assert "|dc| 5.0e-04" in out and "max relative threshold difference 1.0e-04" in out and "speedup 5.0x" in out
