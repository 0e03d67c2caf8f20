"""The GPU benchmark scripts stay runnable without a GPU: the prepared device script's CPU dry run, the
parser of the probe's summary table, and the CPU-vs-CUDA agreement report."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import REPO


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _packed(tgz) -> dict[str, str]:
    """The files of a logs archive that bench/gpu_session.sh brings back: name -> text."""
    with tarfile.open(tgz) as tar:
        return {os.path.basename(m.name): tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}


def _rows(table: str) -> list[list[str]]:
    """The cells of each row of a benchmark table (below its header)."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|---")) + 1
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:] if line.startswith("| ")]


def test_gpu_session_dry_run_trains_with_our_trainer(tmp_path):
    """The bench part's calls on the CPU at a toy size, every option on: our trainer compiled per block and
    whole, and eager, with a kernel table; two files come back (the device tool brings back 8 at most)."""
    env = dict(os.environ, OUT=str(tmp_path), PY=sys.executable, OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", "bench/gpu_session.sh", "dry"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["logs_dry.tgz", "trainer_vs_probe.md"]
    assert "2 files under" in r.stdout
    table = (tmp_path / "trainer_vs_probe.md").read_text()
    assert "different peaks, so compare tokens/s" in table.splitlines()[0]
    rows = _rows(table)
    assert [(row[0], row[8]) for row in rows] == [("tiny", "blocks"), ("tiny", "whole model"),
                                                  ("tiny (trainer eager)", "none (eager)")]
    for cells in rows:
        assert cells[3] == "not run" and float(cells[4].replace(",", "")) > 0  # trainer tokens/s measured
        assert float(cells[7]) >= 0  # warm-up seconds
    logs = _packed(tmp_path / "logs_dry.tgz")
    assert "torch" in logs["env_dry.txt"] and "trainer tiny" in logs["bench.log"]
    prof = logs["trainer_tiny.txt"]
    assert "self_cpu_time_total" in prof and "aten::" in prof  # the profiler's kernel table of our trainer


def test_gpu_session_profile_packs_what_it_has_when_cut_off(tmp_path):
    """`profile` with a short LIMIT: compute is stopped at LIMIT - 90 s (15 s: enough to start and print its
    plan, not to build the corpus: its first stage); compute_times.json says which stage was cut off, and the results
    archive holds what earlier calls finished: the tables and each run's logs and records (a later call
    resumes from them on the machine), not the checkpoints."""
    out = tmp_path / "out"
    kept = [tmp_path / "results" / "gpu" / "earlier.csv"]  # what an earlier call finished: packed
    run = tmp_path / "runs" / "gpu" / "earlier-run"
    kept += [run / f for f in ("log.csv", "DONE", "config.yaml", "meta_0000100.json", "sparsity-fast-abc.json",
                               "sparsity-fast-abc.npz", "pareto-abc.csv", "inference-abc.json")]
    left_out = [run / "ckpt_0000100.pt", run / "ckpt_last.pt"]  # checkpoints stay on the machine
    for f in kept + left_out:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x\n")
    env = dict(os.environ, OUT=str(out), PY=sys.executable, OMP_NUM_THREADS="1", LIMIT="105",
               COMPUTE_ARGS="--set compute.device=cpu --set compute.compile=false", TORCHINDUCTOR_COMPILE_THREADS="7",
               SPARSINGLAW_RUNS=str(tmp_path / "runs"), SPARSINGLAW_RESULTS=str(tmp_path / "results"),
               SPARSINGLAW_DATA=str(tmp_path / "data"))
    r = subprocess.run(["bash", "bench/gpu_session.sh", "profile"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from sparsinglaw.config import load_profile

    n = len(load_profile("gpu").runs)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["compute_times.json", "logs_profile.tgz",
                                                                     "results_gpu.tgz"]
    logs = _packed(out / "logs_profile.tgz")
    assert f"profile gpu: {n} runs on cpu" in logs["compute.log"]
    assert "torch.compile workers per run: 7 (TORCHINDUCTOR_COMPILE_THREADS as set)" in logs["preflight.log"]
    import json

    times = json.loads((out / "compute_times.json").read_text())
    assert times["complete"] is False and times["running"] == "corpus" and times["seconds"] == {}
    assert (out / "results_gpu.tgz").exists()
    with tarfile.open(out / "results_gpu.tgz") as tar:  # (tar writes the file even when it packs nothing)
        packed = {"/" + n for n in tar.getnames()}
    assert {str(f) for f in kept} <= packed, packed
    assert not {str(f) for f in left_out} & packed, packed


def test_gpu_session_profile_trains_eager_where_torch_compile_fails(tmp_path):
    """Before the profile, `profile` tries torch.compile on the GPU; where that fails (a stand-in python fails
    it, on any machine), it says so and trains eager (--set compute.compile=false), rather than letting every
    run fail at its first step. The three runs that share the GPU (compute.jobs in configs/gpu.yaml) compile
    with a third of the cores' workers each."""
    py = tmp_path / "py"
    py.write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$*\" >> {tmp_path / 'calls.txt'}\n"
                  "case \"$*\" in *torch.compile*) echo 'RuntimeError: no working Triton here' >&2; exit 1;; esac\n"
                  f"exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    env = dict(os.environ, OUT=str(tmp_path / "out"), PY=str(py), OMP_NUM_THREADS="1", LIMIT="95",
               COMPUTE_ARGS="--set compute.device=cpu", SPARSINGLAW_RUNS=str(tmp_path / "runs"),
               SPARSINGLAW_RESULTS=str(tmp_path / "results"), SPARSINGLAW_DATA=str(tmp_path / "data"))
    env.pop("TORCHINDUCTOR_COMPILE_THREADS", None)
    r = subprocess.run(["bash", "bench/gpu_session.sh", "profile"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    check = _packed(tmp_path / "out" / "logs_profile.tgz")["preflight.log"]
    assert "torch.compile failed here (the lines above): training eager" in check and "Error" in check, check
    cores = len(os.sched_getaffinity(0))
    assert f"torch.compile workers per run: {max(1, cores // 3)} ({cores} cores / compute.jobs 3)" in check, check
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    compute = [c for c in calls if c.startswith("-m sparsinglaw compute")]
    assert len(compute) == 1 and compute[0].endswith("--set compute.device=cpu --set compute.compile=false")


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


def test_benchmark_table_is_written_after_every_measurement(tmp_path, monkeypatch):
    """A run cut off at its time limit keeps the rows it finished: the table is rewritten each time, and
    at each shape our trainer runs before the probe (whose numbers are known), so a call cut off during
    the 108M probe keeps our 108M row."""
    tvp = _load("trainer_vs_probe")
    fake = tmp_path / "probe.py"
    fake.write_text(
        "import os\n"
        "n = os.environ['PROBE_SIZES']\n"
        "print(f\"{n:>5} {128:>4} {4:>3} {1.05:>9.2f}M {256:>4} {10.63:>8.2f} {1.4:>6.1f} {2.0:>6.1f}\")\n")
    calls = []

    def trainer(a, shape, compiled, scope=None, kernels=True):
        calls.append(("trainer", shape))
        assert compiled and scope == "blocks" and kernels  # the default scope: the gpu profile's
        return {"shape": shape, "who": "trainer", "tok_s": 1.2e7 if shape == "1M" else 6e5, "warm_s": 30.0,
                "n_nonemb": 1.05e6 if shape == "1M" else 113.2e6, "batch": 256, "seq": 1024, "mfu_nonemb": 0.1,
                "compile_scope": scope}

    real_probe = tvp.probe_run

    def probe(path, shape, seconds):
        calls.append(("probe", shape))
        if shape == "108M":
            raise TimeoutError("cut off")
        return real_probe(path, shape, seconds)

    monkeypatch.setattr(tvp, "trainer_subprocess", trainer)
    monkeypatch.setattr(tvp, "probe_run", probe)
    out = tmp_path / "t.md"
    monkeypatch.setattr(sys, "argv", ["tvp", "--probe", str(fake), "--shapes", "1M,108M", "--out", str(out)])
    with pytest.raises(TimeoutError):
        tvp.main()
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 1")]
    assert calls == [("trainer", "1M"), ("probe", "1M"), ("trainer", "108M"), ("probe", "108M")]
    assert len(rows) == 2 and "10,630,000" in rows[0] and "12,000,000" in rows[0] and "1.13x" in rows[0]
    cells = [c.strip() for c in rows[1].strip("|").split("|")]
    assert cells[0] == "108M" and cells[3] == "not run" and cells[4] == "600,000"  # ours kept, the probe's cut


def test_other_compile_scopes_follow_once_every_shape_has_its_rows(tmp_path, monkeypatch):
    """--scopes blocks,model: our trainer per block at every shape (beside the probe, with its kernel
    table), then compiled whole at every shape, then eager; one row each, the scope in the last column."""
    tvp = _load("trainer_vs_probe")
    calls = []

    def trainer(a, shape, compiled, scope=None, kernels=True):
        calls.append((shape, scope if compiled else "eager", kernels))
        return {"shape": shape, "who": "trainer" if compiled else "trainer-eager", "tok_s": 1e6, "warm_s": 1.0,
                "n_nonemb": 1e6, "batch": 256, "seq": 1024, "compile_scope": scope if compiled else None}

    monkeypatch.setattr(tvp, "trainer_subprocess", trainer)
    out = tmp_path / "t.md"
    monkeypatch.setattr(sys, "argv", ["tvp", "--shapes", "1M,108M", "--scopes", "blocks,model", "--eager", "1M",
                                      "--out", str(out)])
    tvp.main()
    assert calls == [("1M", "blocks", True), ("108M", "blocks", True), ("1M", "model", False),
                     ("108M", "model", False), ("1M", "eager", False)]
    assert [(r[0], r[8]) for r in _rows(out.read_text())] == [
        ("1M", "blocks"), ("1M", "whole model"), ("1M (trainer eager)", "none (eager)"), ("108M", "blocks"),
        ("108M", "whole model")]
    monkeypatch.setattr(sys, "argv", ["tvp", "--scopes", "blocks,layers"])
    with pytest.raises(SystemExit):
        tvp.main()


def test_device_agreement_report(capsys):
    ppl = _load("ppl_p_speed")
    cpu = {"device": "cpu", "what": "m", "n_tokens": 100, "cett": 0.25, "ppl_ratio": 1.0101, "activation_ratio": 0.2,
           "dense_loss": 3.0, "wall_s": 10.0, "thresholds": [1.0, 2.0]}
    cuda = dict(cpu, device="cuda", cett=0.2505, thresholds=[1.0, 2.0002], wall_s=2.0)
    ppl.compare_answers(cpu, cuda)
    out = capsys.readouterr().out
    assert "|dc| 5.0e-04" in out and "max relative threshold difference 1.0e-04" in out and "speedup 5.0x" in out


def _fake_py(tmp_path, body):
    """A PY for bench/gpu_session.sh that logs each call's arguments and runs `body` (bash) for
    bench/trainer_vs_probe.py; anything else (env_info, the gpu profile's tokens) goes to this python."""
    py = tmp_path / "py"
    py.write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$*\" >> {tmp_path / 'calls.txt'}\n"
                  f"if [ \"$1\" = bench/trainer_vs_probe.py ]; then\n{body}\nfi\nexec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    return py


def _session(tmp_path, part, *args, timeout=60, **env_extra):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), OMP_NUM_THREADS="1", **env_extra)
    for k in ("SHAPES", "EAGER", "KERNELS", "GRAPHS", "SCOPES", "TRAINER_SCOPES", "LIMIT"):
        if k not in env_extra:
            env.pop(k, None)
    r = subprocess.run(["bash", "bench/gpu_session.sh", part, *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
    calls = [c for c in (tmp_path / "calls.txt").read_text().splitlines() if c.startswith("bench/")]
    return r, out, calls


def test_gpu_session_bench_passes_shapes_and_eager(tmp_path):
    """The bench part's arguments (no GPU: the trainer_vs_probe call is a stand-in): by default 1M,108M,
    compiled per block and whole, and no eager run; EAGER, KERNELS, GRAPHS and SCOPES add theirs, whose
    files go into the logs archive."""
    py = _fake_py(tmp_path, "exit 0")
    r, out, calls = _session(tmp_path, "bench", ".device/gpu_probe.py", PY=str(py))
    assert r.returncode == 0, r.stderr
    assert calls == [f"bench/trainer_vs_probe.py --probe .device/gpu_probe.py --probe-seconds 10 --shapes 1M,108M "
                     f"--scopes blocks,model --out {out}/trainer_vs_probe.md"]
    assert {"bench.log", "env_bench.txt"} <= set(_packed(out / "logs_bench.tgz"))
    (tmp_path / "calls.txt").unlink()
    r, out, calls = _session(tmp_path, "bench", "p.py", PY=str(py), SHAPES="1M", EAGER="1M", KERNELS="1", GRAPHS="1",
                             SCOPES="1", TRAINER_SCOPES="model")
    assert r.returncode == 0, r.stderr
    first = re.fullmatch(r"bench/trainer_vs_probe.py --probe p.py --probe-seconds 10 --shapes 1M --scopes model "
                         rf"--eager 1M --profile-dir (\S+)/logs --out {out}/trainer_vs_probe.md", calls[0])
    assert first, calls[0]
    work = first.group(1)  # the logs' folder, outside $OUT
    assert calls[1] == (f"bench/trainer_vs_probe.py --shapes 1M --scopes model --compile-mode reduce-overhead "
                        f"--out {work}/logs/trainer_1M_cuda_graphs.md")
    assert calls[2] == ("bench/compile_time.py --profile gpu --runs relu-s1 --scopes model,blocks --seq 1024 "
                        "--batch 128 --steps 30 --device cuda")
    assert len(calls) == 3 and "compile_time.txt" in _packed(out / "logs_bench.tgz")
    assert not os.path.exists(work)  # removed once packed


def test_gpu_session_bench_brings_back_two_files_whatever_it_writes(tmp_path):
    """The device tool brings back at most 8 files: every option on at all five shapes (a kernel table
    each, the CUDA-graphs table, the compile-scope timings) still leaves two files in $OUT, the table and
    the logs archive holding the rest."""
    body = ('a=("$@"); for ((i = 0; i < $#; i++)); do case "${a[i]}" in\n'
            '  --out) echo "| table |" > "${a[i+1]}" ;;\n'
            '  --profile-dir) for s in 1M 4M 16M 64M 108M; do echo kernels > "${a[i+1]}/trainer_$s.txt"; done ;;\n'
            'esac; done; exit 0')
    py = _fake_py(tmp_path, body)
    r, out, calls = _session(tmp_path, "bench", "p.py", PY=str(py), SHAPES="1M,4M,16M,64M,108M", EAGER="1M,108M",
                             KERNELS="1", GRAPHS="1", SCOPES="1", LIMIT="400")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["logs_bench.tgz", "trainer_vs_probe.md"]
    assert "2 files under" in r.stdout
    logs = _packed(out / "logs_bench.tgz")
    assert {f"trainer_{s}.txt" for s in ("1M", "4M", "16M", "64M", "108M")} <= set(logs)
    assert {"trainer_1M_cuda_graphs.md", "compile_time.txt", "bench.log", "env_bench.txt"} <= set(logs)


def test_gpu_session_bench_stops_a_hung_step_within_its_limit(tmp_path):
    """A trainer_vs_probe that hangs (even ignoring SIGTERM) is stopped LIMIT - 15 s into the call (killed
    5 s later), and the script still packs its logs and ends with the listing of what it has."""
    py = _fake_py(tmp_path, "trap '' TERM; echo started; sleep 100 & wait; sleep 100")
    t0 = time.perf_counter()
    r, out, calls = _session(tmp_path, "bench", "p.py", PY=str(py), LIMIT="20", timeout=60)
    took = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert took < 20, took
    assert "started" in _packed(out / "logs_bench.tgz")["bench.log"] and "logs_bench.tgz" in r.stdout  # ls -la


def test_gpu_session_refuses_a_bench_without_the_probe_at_once(tmp_path):
    """A missing argument stops the script before anything starts (no packer left behind)."""
    for args in (["bench"], ["nonsense"]):
        r = subprocess.run(["bash", "bench/gpu_session.sh", *args], cwd=REPO, capture_output=True, text=True,
                           env=dict(os.environ, OUT=str(tmp_path / "out")), timeout=30)
        assert r.returncode != 0 and ("PATH/gpu_probe.py" in r.stderr or "unknown part" in r.stderr), r.stderr
    assert not (tmp_path / "out").exists()


def test_table_without_probe_keeps_a_failed_trainer_row():
    """No probe (the CUDA-graphs call, `make bench` without PROBE) and a trainer run that failed: an
    'error' row, not an AttributeError that loses the table."""
    tvp = _load("trainer_vs_probe")
    res = [{"shape": "1M", "who": "trainer", "error": "CUDA graphs: boom", "compile_scope": "model",
            "compile_mode": "reduce-overhead"}]
    rows = _rows(tvp.table(res))
    assert len(rows) == 1 and rows[0][0] == "1M"
    cells = rows[0]
    assert cells[2] == "? x 1024" and cells[3] == "not run" and cells[4] == "error" and cells[5] == "-"
    assert cells[8] == "whole model, reduce-overhead"
    eager = _rows(tvp.table([{"shape": "1M", "who": "trainer-eager", "error": "x"}]))
    assert len(eager) == 1 and eager[0][0] == "1M (trainer eager)" and eager[0][4] == "error"


def test_table_notes_the_probes_smaller_batch_and_ratio_direction():
    """The probe halves its batch on OOM: the row says so; the ratio is trainer / probe."""
    tvp = _load("trainer_vs_probe")
    p = {"shape": "108M", "who": "probe", "tok_s": 4e5, "n_nonemb": 113.2e6, "batch": 32}
    t = {"shape": "108M", "who": "trainer", "tok_s": 5e5, "n_nonemb": 113.2e6, "batch": 64, "seq": 1024,
         "mfu_nonemb": 0.3, "warm_s": 61.26, "compile_scope": "blocks", "compile_mode": "default"}
    cells = [c.strip() for c in tvp.table([p, t]).splitlines()[-1].strip("|").split("|")]
    assert cells == ["108M", "113.20M", "64 x 1024 (probe: 32)", "400,000", "500,000", "1.25x", "30.0%", "61.3",
                     "blocks"]


def test_probe_output_last_summary_line_and_environment(tmp_path):
    """The probe gets PROBE_SIZES / PROBE_MEASURE_S; of several lines of the shape (progress, then the
    summary at the end) the last is read."""
    fake = tmp_path / "probe.py"
    fake.write_text(
        "import os, sys\n"
        "assert os.environ['PROBE_MEASURE_S'] == '2.5', os.environ['PROBE_MEASURE_S']\n"
        "n = os.environ['PROBE_SIZES']\n"
        "print(f\"{n:>5} {128:>4} {4:>3} {1.05:>9.2f}M {256:>4} {3.10:>8.2f} {0.4:>6.1f}\")  # warming up\n"
        "print('=== gpu_probe summary ===')\n"
        "print(f\"{n:>5} {128:>4} {4:>3} {1.05:>9.2f}M {128:>4} {10.63:>8.2f} {1.4:>6.1f} {2.0:>6.1f}\")\n")
    tvp = _load("trainer_vs_probe")
    r = tvp.probe_run(fake, "1M", 2.5)
    assert r["tok_s"] == pytest.approx(10.63e6) and r["batch"] == 128
    assert r["mfu_nonemb_at_probe_peak"] == pytest.approx(0.014)
    assert "error" in tvp.probe_run(fake, "1M", 1.0)  # the stand-in refuses another PROBE_MEASURE_S


def test_trainer_run_units(monkeypatch, tmp_path):
    """tokens/s: the median of the log windows after the first two; warm-up: wall seconds less what the
    steps explain at that rate; MFU: 6 * non-embedding params * tokens/s over the device's peak."""
    import types

    tvp = _load("trainer_vs_probe")
    seen = {}

    def rates(run, tokens, steps, **kw):
        seen.update(kw, steps=steps, log_every=run.train.log_every, batch=run.train.batch_size,
                    seq=run.model.seq_len)
        return [1.0, 2.0, 300.0, 100.0, 200.0], 50.0

    fake = types.ModuleType("trainer_cpu_speed")
    fake.trainer_rates = rates
    fake.random_tokens = lambda vocab, seq, n: None
    monkeypatch.setitem(sys.modules, "trainer_cpu_speed", fake)
    monkeypatch.setenv("SPARSINGLAW_PEAK_FLOPS", "1e9")
    r = tvp.trainer_run("tiny", "cpu", True, 8, 2, compile_mode="default")
    assert seen == {"device": "cpu", "compile": True, "compile_mode": "default", "steps": 8, "log_every": 2,
                    "batch": 2, "seq": 128}
    assert r["tok_s"] == 200.0 and r["who"] == "trainer" and r["windows"] == [1.0, 2.0, 300.0, 100.0, 200.0]
    assert r["warm_s"] == pytest.approx(50.0 - 8 * 2 * 128 / 200.0)
    from sparsinglaw.model import ModelConfig, num_params_from_config

    n = num_params_from_config(ModelConfig(vocab_size=8192, d_model=32, n_layers=2, head_dim=16, d_ff=64,
                                           seq_len=128), non_embedding=True)
    assert r["n_nonemb"] == n and r["mfu_nonemb"] == pytest.approx(6 * n * 200.0 / 1e9) and r["peak"] == 1e9
    assert r["compile_scope"] == "model"
    eager = tvp.trainer_run("tiny", "cpu", False, 8, 2)
    assert eager["who"] == "trainer-eager" and eager["compile_scope"] is None
    blocks = tvp.trainer_run("tiny", "cpu", "blocks", 8, 2)
    assert seen["compile"] == "blocks" and blocks["who"] == "trainer" and blocks["compile_scope"] == "blocks"


def test_kernel_table_of_fewer_steps_than_a_log_window(tmp_path, monkeypatch):
    """KERNELS=1: the profiled run (12 steps on the GPU) kept the shape's log_every (20 at 1M), wrote no log
    row, and trainer_rates' read of log.csv raised: the 1M trainer row was lost. Here 3 profiled steps
    against windows of 4, with the real trainer on the CPU: the row and the kernel table both come back."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # as when the script runs: trainer_cpu_speed beside it
    tvp = _load("trainer_vs_probe")
    table = tmp_path / "kernels.txt"
    r = tvp.trainer_run("tiny", "cpu", False, 8, 4, profile_out=table, profile_steps=3)
    assert r["tok_s"] > 0 and len(r["windows"]) == 2
    text = table.read_text()
    assert text.startswith("tiny: 3 steps of sparsinglaw.train.train") and "Self CPU" in text, text[:300]


def test_trainer_subprocess_flags(monkeypatch, tmp_path):
    """Each trainer measurement runs in its own process with its shape, device, compile scope (or none) and
    mode; only the compiled run of the first scope writes the kernel table; a run that prints no RESULT line
    is an error row."""
    tvp = _load("trainer_vs_probe")
    cmds = []

    def run(cmd, **kw):
        cmds.append(cmd[2:])
        return subprocess.CompletedProcess(cmd, 0, stdout='x\nRESULT {"shape": "1M", "tok_s": 5.0}\n', stderr="")

    monkeypatch.setattr(tvp.subprocess, "run", run)
    a = types_ns(device="cuda", compile_mode="reduce-overhead", steps=None, log_every=None, profile_dir=tmp_path,
                 no_compile=False)
    assert tvp.trainer_subprocess(a, "1M", compiled=True, scope="blocks") == {"shape": "1M", "tok_s": 5.0}
    tvp.trainer_subprocess(a, "1M", compiled=True, scope="model", kernels=False)
    tvp.trainer_subprocess(a, "1M", compiled=False)
    a.steps, a.log_every, a.profile_dir = 30, 5, None
    tvp.trainer_subprocess(a, "108M", compiled=True, scope="model")
    assert cmds == [["--one", "1M", "--shapes", "1M", "--device", "cuda", "--scopes", "blocks", "--compile-mode",
                     "reduce-overhead", "--profile-dir", str(tmp_path)],
                    ["--one", "1M", "--shapes", "1M", "--device", "cuda", "--scopes", "model", "--compile-mode",
                     "reduce-overhead"],
                    ["--one", "1M", "--shapes", "1M", "--device", "cuda", "--no-compile", "--compile-mode",
                     "reduce-overhead"],
                    ["--one", "108M", "--shapes", "108M", "--device", "cuda", "--scopes", "model", "--compile-mode",
                     "reduce-overhead", "--steps", "30", "--log-every", "5"]]
    monkeypatch.setattr(tvp.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "OOM"))
    assert tvp.trainer_subprocess(a, "1M", compiled=False) == {"shape": "1M", "who": "trainer-eager", "error": "OOM",
                                                               "compile_scope": None,
                                                               "compile_mode": "reduce-overhead"}
    assert tvp.trainer_subprocess(a, "1M", compiled=True, scope="blocks")["compile_scope"] == "blocks"


def types_ns(**kw):
    import argparse

    return argparse.Namespace(**kw)


def test_compile_time_bench_compares_scopes_in_fresh_processes(tmp_path):
    """bench/compile_time.py on the smoke profile: eager and blocks side by side, each in a process of its
    own with a cold compile cache; the same loss (blocks compiles the same model), one row each."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "bench/compile_time.py", "--profile", "smoke", "--runs", "relu-s1", "--scopes",
           "eager,blocks", "--seq", "32", "--steps", "4", "--device", "cpu"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("relu-s1")]
    assert [row[3] for row in rows] == ["eager", "blocks"]
    first = [float(row[6]) for row in rows]
    loss = [float(row[row.index("loss") + 1]) for row in rows]
    assert first[1] > first[0] >= 0 and loss[1] == pytest.approx(loss[0], rel=1e-3)
    assert "(cpu, torch " in r.stdout
    bad = subprocess.run([*cmd[:2], "--scopes", "layers"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--scopes: unknown layers" in bad.stderr


@pytest.mark.parametrize("script, args, said", [
    ("train_speed", ["--steps", "0"], "argument --steps: expected a whole number >= 1, got 0"),
    ("train_speed", ["--threads", "two"], "argument --threads: expected a whole number >= 1, got 'two'"),
    ("train_speed", ["--profile", "nosuch"], "error: profile 'nosuch': not found"),
    ("ppl_p_speed", ["--checkpoint", "/nonexistent.pt"], "--checkpoint /nonexistent.pt: no such file"),
    ("trainer_cpu_speed", ["--run", "nosuch"], "configs/cpu.yaml: no run named 'nosuch'"),
])
def test_bench_scripts_refuse_bad_arguments_in_one_line(script, args, said):
    """A bad count, profile, run or file: one line (after argparse's usage), exit 2, no traceback (a
    ZeroDivisionError, a torch RuntimeError, a ConfigError traceback, a FileNotFoundError naming
    /config.yaml)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"))
    r = subprocess.run([sys.executable, str(REPO / "bench" / f"{script}.py"), *args], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len([line for line in r.stderr.splitlines() if not line.startswith(("usage:", " "))]) == 1, r.stderr

