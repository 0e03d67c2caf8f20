"""Bad arguments exit non-zero with one clear paragraph and no traceback; `runs` lists a profile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO


def _cli(*args, debug=False):
    env = dict(os.environ, PYTHONPATH=str(REPO / "lib"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "sparsinglaw", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("args,expect", [
    (["train", "--profile", "nope"], "known profiles"),
    (["train", "--profile", "smoke", "--set", "train.lr=-1"], "train.lr"),
    (["train", "--profile", "smoke", "--set", "runs.relu-s1.model.activation=tanhh"], "runs[0].model.activation"),
    (["train", "--profile", "smoke", "--run", "nope"], "no run named"),
    (["train", "--profile", "smoke", "-j", "-3"], "--jobs"),
    (["train", "--profile", "smoke", "--set", "lr"], "KEY=VALUE"),
    (["runs", "--profile", "/no/such/file.yaml"], "no such file"),
    (["train"], "--profile"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments(args, expect):
    r = _cli(*args)
    assert r.returncode != 0
    assert expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback():
    r = _cli("--debug", "train", "--profile", "nope")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_runs_lists_profile():
    r = _cli("runs", "--profile", "smoke")
    assert r.returncode == 0, r.stderr
    for name in ("relu-s1", "silu-s2", "relu-wd1"):
        assert name in r.stdout
    assert "status" in r.stdout


def test_runs_names_for_job_arrays():
    from sparsinglaw.config import load_profile

    r = _cli("runs", "--profile", "smoke", "--names")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == [run.name for run in load_profile("smoke").runs]


def test_measure_skips_an_moe_run_with_a_note(tmp_path):
    """A job array sends every run to `measure`: an MoE run is skipped (exit 0), not refused."""
    r = _cli("measure", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs"), "--run", "silu-moe4")
    assert r.returncode == 0, r.stderr
    assert "silu-moe4: an MoE run, not measured checkpoint by checkpoint" in r.stdout
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


def test_compute_writes_every_results_table_replot_needs(tmp_path, monkeypatch, mini_path, smoke_tokens, capsys):
    """`compute` runs every model stage headless (fresh runs and results roots) and leaves the tables the
    replot notebooks read, each with a valid sidecar; a second call finds everything cached."""
    import json

    from conftest import MINI
    from sparsinglaw import cli, inference, measure, runs
    from sparsinglaw.config import load_profile

    for k in ("SPARSINGLAW_RUNS", "SPARSINGLAW_RESULTS"):
        monkeypatch.setenv(k, str(tmp_path / k))
    args = ["compute", "--profile", str(mini_path), "--no-progress", "-j", "1"]
    for kv in MINI:
        args += ["--set", kv]
    assert cli.main([*args, "--times", str(tmp_path / "times.json")]) == 0
    out = capsys.readouterr().out
    assert "pareto: skipped" in out and "total:" in out
    assert "draw the figures with the notebooks, with replot=True and a profile YAML that holds these --set" in out
    times = json.loads((tmp_path / "times.json").read_text())
    assert list(times["seconds"]) == ["train", "training logs", "measure", "sparse inference", "total"]
    profile = load_profile(mini_path, overrides=MINI)
    table = measure.read_results(profile, strict=True)
    assert set(table["run"]) == {"relu-s1", "silu-s1"}
    for name in ("neurons", "tokens"):
        assert len(measure.read_results(profile, name, strict=True))
    log = runs.train_log_table(profile, compute=False)
    assert set(log["run"]) == {"relu-s1", "silu-s1"} and set(log["split"]) == {"train", "val"}
    inf = inference.sparse_inference_for(profile, compute=False)
    assert set(inf["run"]) == {r.name for r in profile.runs if profile.inference.group in r.groups}
    def stamps():  # every file of the runs and results roots but the lock files (opened "w" by each call)
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for k in ("SPARSINGLAW_RUNS", "SPARSINGLAW_RESULTS")
                for p in sorted((tmp_path / k).rglob("*")) if p.is_file() and p.name != ".lock"}

    before = stamps()
    assert any(p.name.startswith("sparsity-") for p in before) and any(p.suffix == ".pt" for p in before)
    assert cli.main([*args, "--times", str(tmp_path / "again.json")]) == 0  # cached: nothing trained again
    again = json.loads((tmp_path / "again.json").read_text())["seconds"]
    assert again["train"] < times["seconds"]["train"]
    assert stamps() == before  # nothing trained, measured or evaluated again: no file rewritten


def test_compute_names_what_draws_the_figures_of_its_profile(mini_path):
    """make replot PROFILE=NAME loads configs/NAME.yaml only, and neither make nor the notebooks take --set."""
    from sparsinglaw import cli
    from sparsinglaw.config import load_profile

    assert cli._draw_hint(load_profile("smoke")) == "make replot PROFILE=smoke"
    assert cli._draw_hint(load_profile(mini_path)) == (f"the notebooks, parameters profile='{mini_path.resolve()}' "
                                                       "and replot=True")
    assert "--set overrides" in cli._draw_hint(load_profile("smoke", overrides=["train.seed=3"]))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["figures", "nb-01", "replot", "verify"])
def test_make_with_an_unknown_profile_names_the_profiles(target):
    """A PROFILE typo stops `make figures` (and nb-NN, replot, verify, ...) with the profiles there, before
    any setup or command runs, not with make's "No rule to make target 'runs/.../00_overview.ipynb'", a
    notebook's traceback, or (replot) advice to make the missing profile."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # no -k of a caller
    r = subprocess.run(["make", "--no-print-directory", target, "PROFILE=cpu_long"], cwd=REPO, capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode != 0
    profiles = " ".join(sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
    assert "cpu cpu-long" in profiles
    want = f"configs/cpu_long.yaml not found: PROFILE=cpu_long is not a profile; profiles: {profiles}"
    assert want in r.stderr and r.stdout == "", (r.stdout, r.stderr)  # nothing ran, not even a setup step
    assert "Traceback" not in r.stderr and not (REPO / "runs" / "cpu_long").exists()


def test_under_torchrun_the_stages_after_training_run_on_rank_0_alone(tmp_path, monkeypatch, capsys):
    """Ranks > 0 train with rank 0 and then stop: measuring, fitting and verifying are one process's
    work (the others only waited for rank 0's locks and found the same tables)."""
    from sparsinglaw import cli, measure, runs

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    trained = []
    monkeypatch.setattr(runs, "train_profile", lambda *a, **k: trained.append(k["runs_dir"]) or [])
    monkeypatch.setattr(measure, "measure_profile", lambda *a, **k: pytest.fail("rank 1 measured"))
    base = ["--profile", "smoke", "--runs-dir", str(tmp_path), "--no-progress"]
    assert cli.main(["compute", *base]) == 0
    assert trained == [str(tmp_path)]
    assert "rank 1: the stages after training run on rank 0 alone" in capsys.readouterr().err
    for cmd in (["measure", *base], ["fit", "--profile", "smoke"], ["verify", "--profile", "smoke"]):
        assert cli.main(cmd) == 0
        assert f"rank 1: `{cmd[0]}` runs on rank 0 alone under torchrun" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")  # rank 0 goes on to measure
    monkeypatch.setattr(measure, "measure_profile", lambda *a, **k: trained.append("measured") or pd.DataFrame())
    assert cli.main(["measure", *base]) == 0 and trained[-1] == "measured"


@pytest.mark.parametrize("command,says", [("fit", "resume (finished tables are cached)"),
                                          ("train", "resume from the last checkpoint")])
def test_ctrl_c_says_what_a_rerun_resumes(command, says, monkeypatch, capsys):
    """Ctrl-C exits 130 with one line; only the stages that keep checkpoints speak of them (fit has none)."""
    from sparsinglaw import analysis, cli, runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis, "fit_profile", interrupted)
    monkeypatch.setattr(runs, "train_profile", interrupted)  # cli imports it from runs when it trains
    assert cli.main([command, "--profile", "smoke"]) == 130
    assert capsys.readouterr().err.strip() == f"interrupted; rerun the same command to {says}"


@pytest.mark.skipif(not (REPO / "results" / "cpu" / "claims.csv").exists(), reason="needs the committed cpu results")
def test_warnings_take_one_line(tmp_path):
    """A warning on the command line is one line, its class and message, without the file and the line of
    library source Python's default format prints under it (verify on the committed tables with another
    measurement setting: pareto.csv and sparse_inference.csv were made from other settings)."""
    shutil.copytree(REPO / "results" / "cpu", tmp_path / "cpu")
    r = subprocess.run([sys.executable, "-m", "sparsinglaw", "verify", "--profile", "cpu", "--set",
                        "sparsity.dead_freq=0.01"], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "SPARSINGLAW_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "Warning" in line]
    assert len(warned) == 2 and all(w.startswith("StaleTableWarning: ") for w in warned), r.stderr
    assert not any(line.startswith(" ") or ".py:" in line for line in r.stderr.splitlines()), r.stderr
