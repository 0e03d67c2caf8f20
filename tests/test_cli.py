"""Bad arguments exit non-zero with one clear paragraph and no traceback; `runs` lists a profile."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from sparsinglaw import cli


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
    (["compute", "--profile", "smoke", "--runs-dir", ""], "--runs-dir is empty"),
    (["runs", "--profile", "/no/such/file.yaml"], "no such file"),
    (["train"], "--profile"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments(args, expect):
    r = _cli(*args)
    assert r.returncode != 0
    assert expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [["compute", "--profile", "smoke", "--run", "relu-s1"],
                                  ["fit", "--profile", "smoke", "--run", "relu-s1"],
                                  ["verify", "--profile", "smoke", "--run", "relu-s1"],
                                  ["runs", "--profile", "smoke", "--run", "relu-s1"],
                                  ["train", "--profile", "smoke", "--runs", "relu-s1"],
                                  ["--deb", "runs", "--profile", "smoke"]])
def test_abbreviated_options_are_refused(args, capsys):
    """argparse took --run on compute for --runs-dir (the prefix of its only match): compute trained every run
    into a folder named relu-s1 and rewrote the results. No option is abbreviated now."""
    with pytest.raises(SystemExit) as e:
        cli._parser().parse_args(args)
    assert e.value.code == 2 and f"unrecognized arguments: {args[-2] if args[0] != '--deb' else '--deb'}" in \
        capsys.readouterr().err


def test_an_unknown_option_is_named_under_its_commands_usage(capsys):
    """An option the command does not take (runs has no -j) is refused under that command's usage line,
    which lists what it takes, not under the top-level one."""
    with pytest.raises(SystemExit) as e:
        cli.main(["runs", "--profile", "smoke", "-j", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: python -m sparsinglaw runs [-h] --profile PROFILE")
    assert err.strip().splitlines()[-1] == "python -m sparsinglaw runs: error: unrecognized arguments: -j 3"


def test_debug_shows_traceback():
    r = _cli("--debug", "train", "--profile", "nope")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_runs_lists_profile():
    r = _cli("runs", "--profile", "smoke")
    assert r.returncode == 0, r.stderr
    for name in ("relu-s1", "silu-s2", "relu-wd1"):
        assert name in r.stdout
    assert "status" in r.stdout


def test_runs_prints_each_runs_training_flops_and_the_profiles_total():
    """train_flops = (6 N_matmul + 6 d V + 12 L d T) x tokens (hand formula for relu-s1 of smoke), and the
    last line sums it over the runs and divides by one H200's bf16 peak."""
    from sparsinglaw import cli, runs
    from sparsinglaw.config import load_profile

    p = load_profile("smoke")
    t = runs.states_table(p)
    m = p.run("relu-s1").model
    d, L, f, V, T = m.d_model, m.n_layers, m.d_ff, m.vocab_size, m.seq_len
    by_hand = (6 * L * (4 * d * d + 3 * d * f) + 6 * d * V + 12 * L * d * T) * p.run("relu-s1").train.tokens
    assert t.set_index("run").at["relu-s1", "train_flops"] == by_hand
    r = _cli("runs", "--profile", "smoke")
    total = t["train_flops"].sum()
    assert r.stdout.splitlines()[-1] == cli._compute_line(total, len(t))
    assert cli._compute_line(total, 8).startswith(f"training compute: {total:.3g} FLOP for 8 runs")
    for flops, took in ((989e12 * 30, "at least 30 s"), (989e12 * 600, "at least 10 min"),
                        (989e12 * 7200, "at least 2 h"), (989e12 * 86400 * 3, "at least 3 days")):
        assert f"{took} on one H200 at its bf16 peak of 989 TFLOP/s" in cli._compute_line(flops, 1)


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
    assert list(times["seconds"]) == ["corpus", "train", "training logs", "measure", "sparse inference", "total"]
    assert times["complete"] is True and times["running"] is None
    profile = load_profile(mini_path, overrides=MINI)
    table = measure.read_results(profile, strict=True)
    assert set(table["run"]) == {"relu-s1", "silu-s1"}
    for name in ("neurons", "tokens"):
        assert len(measure.read_results(profile, name, strict=True))
    log = runs.train_log_table(profile, compute=False)
    assert set(log["run"]) == {"relu-s1", "silu-s1"} and set(log["split"]) == {"train", "val"}
    inf = inference.sparse_inference_for(profile, compute=False)
    assert set(inf["run"]) == {r.name for r in profile.runs if profile.inference.group in r.groups}
    def stamps():  # every file of the runs and results roots but the lock files (opened "w" by each call) and the
        # checkpoint digests a listing keeps (train.DIGEST_MEMO, written once a checkpoint is 2 s old: a cache)
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for k in ("SPARSINGLAW_RUNS", "SPARSINGLAW_RESULTS")
                for p in sorted((tmp_path / k).rglob("*")) if p.is_file() and p.name not in (".lock", ".sha256.json")}

    before = stamps()
    assert any(p.name.startswith("sparsity-") for p in before) and any(p.suffix == ".pt" for p in before)
    assert cli.main([*args, "--times", str(tmp_path / "again.json")]) == 0  # cached: nothing trained again
    again = json.loads((tmp_path / "again.json").read_text())["seconds"]
    assert again["train"] < times["seconds"]["train"]
    assert stamps() == before  # nothing trained, measured or evaluated again: no file rewritten


# Every process started with this folder first on PYTHONPATH (spawned workers too) cannot import the packages
# named in BLOCK_PKGS: a machine without them, e.g. a GPU image with only the model stages' packages.
BLOCKER = """import importlib.abc, os, sys
BLOCK = set(filter(None, os.environ.get("BLOCK_PKGS", "").split(",")))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Blocker())
"""
NOT_FOR_MODELS = ("statsmodels", "matplotlib", "seaborn", "papermill", "nbformat", "nbclient", "ipykernel",
                  "IPython", "jupyter_client")


def test_compute_needs_no_fitting_plotting_or_notebook_package(tmp_path, mini_path, smoke_tokens):
    """`compute` (every stage that runs the models) goes through without statsmodels, matplotlib or the
    notebook packages, as on a GPU machine with only the model stages' packages; fit and verify, which need
    statsmodels, say so in one line."""
    from conftest import MINI

    (tmp_path / "blk").mkdir()
    (tmp_path / "blk" / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'blk'}:{REPO / 'lib'}", OMP_NUM_THREADS="1",
               BLOCK_PKGS=",".join(NOT_FOR_MODELS), SPARSINGLAW_RUNS=str(tmp_path / "runs"),
               SPARSINGLAW_RESULTS=str(tmp_path / "results"))

    def run(*args, timeout=600):
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)

    for pkg in NOT_FOR_MODELS[:2]:  # the blocker works (installed here, refused there)
        assert "(blocked)" in run("-c", f"import {pkg}").stderr
    sets = [a for kv in MINI for a in ("--set", kv)]
    r = run("-m", "sparsinglaw", "compute", "--profile", str(mini_path), "--no-progress", "-j", "1", *sets)
    assert r.returncode == 0, r.stderr
    assert "total:" in r.stdout and "Traceback" not in r.stderr
    for table in ("sparsity", "neurons", "tokens"):
        assert (tmp_path / "results" / "mini" / f"{table}.csv").is_file()
    for command in ("fit", "verify"):
        r = run("-m", "sparsinglaw", command, "--profile", str(mini_path), *sets, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert f"`{command}` needs the package 'statsmodels', which is not installed here" in r.stderr, r.stderr


def test_compute_names_what_draws_the_figures_of_its_profile(mini_path):
    """make replot PROFILE=NAME loads configs/NAME.yaml only, and neither make nor the notebooks take --set."""
    from sparsinglaw import cli
    from sparsinglaw.config import load_profile

    assert cli._draw_hint(load_profile("smoke")) == "make replot PROFILE=smoke"
    assert cli._draw_hint(load_profile(mini_path)) == (f"the notebooks, parameters profile='{mini_path.resolve()}' "
                                                       "and replot=True")
    assert "--set overrides" in cli._draw_hint(load_profile("smoke", overrides=["train.seed=3"]))


ROOT_VARS = ("SPARSINGLAW_RUNS", "SPARSINGLAW_RESULTS", "SPARSINGLAW_FIGURES")


def _make(*args, **env) -> subprocess.CompletedProcess:
    """`make ARGS` in the repository, under extra env vars: no -k or -n of a calling make, and no folder
    variable of the caller's environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", *ROOT_VARS)}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**base, **env})


def _make_n(*args, **env) -> str:
    """The commands `make -n ARGS` would run (the venv stamp taken as up to date), under extra env vars."""
    r = _make("-n", "-o", ".venv/.installed", *args, **env)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_figures_is_out_of_date_when_the_results_or_figures_folder_changes(tmp_path):
    """make figures executes the notebooks again when SPARSINGLAW_RESULTS or SPARSINGLAW_FIGURES names another
    folder, and only then (a stand-in python records each notebook it is asked to run and writes its output)."""
    fake, calls = tmp_path / "python", tmp_path / "calls"
    fake.write_text(f'#!/bin/sh\necho "$4" >> {calls}\ntouch "$5"\n')  # -m sparsinglaw.notebooks run NB OUT
    fake.chmod(0o755)
    n_notebooks = len(list((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")))

    def figures(**env) -> int:
        calls.write_text("")
        r = _make("-o", ".venv/.installed", "figures", "PROFILE=smoke", f"PY={fake}",
                  **{"SPARSINGLAW_RUNS": str(tmp_path / "runs"), **env})
        assert r.returncode == 0, r.stderr
        return len(calls.read_text().splitlines())

    assert figures() == n_notebooks and figures() == 0
    assert figures(SPARSINGLAW_RESULTS=str(tmp_path / "res")) == n_notebooks
    assert figures(SPARSINGLAW_RESULTS=str(tmp_path / "res")) == 0
    assert figures(SPARSINGLAW_RESULTS=str(tmp_path / "res"), SPARSINGLAW_FIGURES=str(tmp_path / "figs")) == n_notebooks
    assert figures(SPARSINGLAW_RESULTS=str(tmp_path / "res"), SPARSINGLAW_FIGURES=str(tmp_path / "figs")) == 0
    assert figures() == n_notebooks  # back to the default folders


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_venv_is_installed_again_only_when_its_requirements_change(tmp_path):
    """The venv's stamp holds a checksum of requirements.txt and pyproject.toml: a fresh clone's newer files
    (same content) leave a shared venv as it is (its editable install went to the clone), and a change of
    content, or an old stamp without the checksum, installs again."""
    venv = tmp_path / "venv"
    venv.mkdir()
    stamp = venv / ".installed"
    stamp.write_text("")  # an older make's stamp (touched), or one of other requirements
    assert "pip install" in _make("-n", "setup", f"VENV={venv}").stdout
    deps = subprocess.run("cat requirements.txt pyproject.toml | cksum", shell=True, cwd=REPO, text=True,
                          capture_output=True, check=True).stdout.strip()
    stamp.write_text(deps + "\n")
    os.utime(stamp, (0, 0))  # older than both files: their time alone no longer installs again
    r = _make("-n", "setup", f"VENV={venv}")
    assert r.returncode == 0 and "pip install" not in r.stdout, r.stdout
    stamp.write_text(deps.replace(deps.split()[0], str(int(deps.split()[0]) ^ 1)) + "\n")  # other content
    assert "pip install" in _make("-n", "setup", f"VENV={venv}").stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_follows_the_folder_variables():
    """The Makefile's executed notebooks, report and clean-runs live under SPARSINGLAW_RUNS where it is set,
    and `make verify` rewrites the README's claims block only from the committed results folder."""
    assert "--readme README.md" in _make_n("verify", "PROFILE=cpu")
    private = _make_n("verify", "PROFILE=cpu", SPARSINGLAW_RESULTS="/tmp/elsewhere")
    assert "--readme" not in private and "README.md left as it is" in private
    assert "--readme" not in _make_n("verify", "PROFILE=smoke")
    for same in ("results", str(REPO / "results")):  # the committed folder, named explicitly
        assert "--readme README.md" in _make_n("verify", "PROFILE=cpu", SPARSINGLAW_RESULTS=same)
    elsewhere = _make_n("clean-runs", "PROFILE=smoke", SPARSINGLAW_RUNS="/tmp/elsewhere")
    assert elsewhere == "rm -rf -- '/tmp/elsewhere/smoke'\n"
    assert _make_n("clean-runs", "PROFILE=smoke") == "rm -rf -- 'runs/smoke'\n"
    figures = _make_n("figures", "PROFILE=smoke", SPARSINGLAW_RUNS="/tmp/elsewhere")
    assert "notebooks run notebooks/00_overview.ipynb /tmp/elsewhere/smoke/notebooks/00_overview.ipynb" in figures
    replotted = _make_n("report", "PROFILE=smoke", "FROM=replot")
    assert "notebooks run" not in replotted
    assert "runs/smoke/replot/07_claims.ipynb -o runs/smoke/report.html" in replotted
    env = _make_n("figures", "PROFILE=smoke", "VENV=/tmp/conda-env", SPARSINGLAW_RUNS="/tmp/elsewhere")  # README
    assert "> /tmp/conda-env/.installed" in env and ".venv/" not in env
    assert "/tmp/conda-env/bin/python -m sparsinglaw.notebooks run notebooks/00_overview.ipynb" in env
    for var in ("SPARSINGLAW_RUNS", "SPARSINGLAW_RESULTS", "SPARSINGLAW_FIGURES"):  # `rm -rf /tmp/my runs/smoke`
        # would remove ./runs/smoke
        r = _make("-n", "clean-runs", "PROFILE=smoke", **{var: "/tmp/my runs"})
        assert r.returncode != 0 and r.stdout == "" and "holds a space" in r.stderr, (r.stdout, r.stderr)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["figures", "nb-01", "replot", "verify"])
def test_make_with_an_unknown_profile_names_the_profiles(target):
    """A PROFILE typo stops `make figures` (and nb-NN, replot, verify, ...) with the profiles there, before
    any setup or command runs, not with make's "No rule to make target 'runs/.../00_overview.ipynb'", a
    notebook's traceback, or (replot) advice to make the missing profile."""
    r = _make(target, "PROFILE=cpu_long")
    assert r.returncode != 0
    profiles = " ".join(sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
    assert "cpu cpu-long" in profiles
    want = f"configs/cpu_long.yaml not found: PROFILE=cpu_long is not a profile; profiles: {profiles}"
    assert want in r.stderr and r.stdout == "", (r.stdout, r.stderr)  # nothing ran, not even a setup step
    assert "Traceback" not in r.stderr and not (REPO / "runs" / "cpu_long").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("goal, switch", [("fit", "REFIT=false"), ("fit", "REFIT=yes"), ("report", "FROM=replott")])
def test_make_refuses_a_switch_value_it_does_not_know(goal, switch):
    """REFIT=false read as "not 0" would refit (minutes on cpu) and FROM=replott as "not replot" would run
    every notebook (an hour of training): an unknown value stops before anything runs."""
    r = _make("-n", "-o", ".venv/.installed", goal, "PROFILE=smoke", switch)
    name, value = switch.split("=")
    assert r.returncode != 0 and r.stdout == "" and f"{name}='{value}': " in r.stderr, (r.stdout, r.stderr)
    assert "--refit" in _make_n("fit", "PROFILE=smoke", "REFIT=1")
    assert "--refit" not in _make_n("fit", "PROFILE=smoke", "REFIT=0") + _make_n("fit", "PROFILE=smoke")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_nb_with_no_such_notebook_names_the_numbers():
    r = _make("nb-9", "PROFILE=smoke")
    numbers = " ".join(sorted(p.name[:2] for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    assert r.returncode != 0 and r.stdout == ""
    assert f"no notebook for nb-9: make nb-NN takes NN from {numbers}" in r.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("profile", ["", "../results", "../configs/smoke", "cpu_long", "*", "cpu*", "cp?", "[c]pu",
                                     "smoke.yaml lib"])
def test_make_clean_runs_refuses_what_is_not_a_profile(tmp_path, profile):
    """`make clean-runs PROFILE=` would be `rm -rf <runs root>/` (every profile, the corpus cache),
    PROFILE=../results the committed tables, PROFILE='*' every profile's runs (configs/*.yaml exists),
    PROFILE='cpu*' cpu-long's too and 'smoke.yaml lib' the package: only a profile of configs/ is cleaned,
    and nothing is removed."""
    for name in ("smoke", "cpu", "cpu-long", "_data"):
        (tmp_path / name).mkdir()
    r = _make("clean-runs", f"PROFILE={profile}", SPARSINGLAW_RUNS=str(tmp_path))
    not_a_name = set(profile) & set(" /*?[") or not profile
    said = (f"PROFILE='{profile}' is not a profile: a profile is one name" if not_a_name
            else f"PROFILE={profile} is not a profile; profiles: cpu cpu-long")
    assert r.returncode != 0 and r.stdout == "" and said in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_data", "cpu", "cpu-long", "smoke"]
    r = _make("clean-runs", "PROFILE=cpu", SPARSINGLAW_RUNS=str(tmp_path))
    assert r.returncode == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["_data", "cpu-long", "smoke"]


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


RERUN = "; rerun the same command to resume"


@pytest.mark.parametrize("command,says", [("fit", f"{RERUN} (finished tables are cached)"),
                                          ("train", f"{RERUN} from the last checkpoint"),
                                          ("measure", f"{RERUN} from the cached measurements"),
                                          ("compute", f"{RERUN} from the last checkpoint and the cached stages"),
                                          ("verify", f"{RERUN} (finished tables are cached)"),
                                          ("runs", ""), ("compare", "")])
def test_ctrl_c_says_what_a_rerun_resumes(command, says, monkeypatch, capsys, tmp_path):
    """Ctrl-C exits 130 with one line; only the stages that keep checkpoints speak of them (fit has none),
    and the commands that only read (runs, compare) speak of no resuming."""
    from sparsinglaw import analysis, claims, cli, compare, measure, runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis, "fit_profile", interrupted)
    monkeypatch.setattr(claims, "evaluate", interrupted)
    monkeypatch.setattr(measure, "measure_profile", interrupted)
    monkeypatch.setattr(runs, "train_profile", interrupted)  # imported from runs by train and compute (first stage)
    monkeypatch.setattr(runs, "states_table", interrupted)
    monkeypatch.setattr(compare, "compare", interrupted)
    args = {"compare": [str(tmp_path), str(tmp_path)], "runs": ["--profile", "smoke"]}.get(
        command, ["--profile", "smoke", "--no-progress"])
    assert cli.main([command, *args]) == 130
    assert capsys.readouterr().err == f"interrupted{says}\n"


def test_notes_given_once_a_process_are_given_once_a_command(monkeypatch):
    """analysis notes a reused old-code fit once a process; a second command in the same process (tests,
    a notebook calling cli.main) would reuse those fits without a word: the set is emptied per command."""
    from sparsinglaw import analysis, cli

    monkeypatch.setattr(analysis, "_NOTED", {("results/x", "fits.csv")})
    assert cli.main(["runs", "--profile", "smoke", "--names"]) == 0
    assert analysis._NOTED == set()


@pytest.mark.skipif(not (REPO / "results" / "cpu" / "claims.csv").exists(), reason="needs the committed cpu results")
def test_warnings_take_one_line(tmp_path):
    """A warning on the command line is one line, its class and message, without the file and the line of
    library source Python's default format prints under it (verify on the committed tables with another
    measurement setting: every measurement table, pareto.csv and sparse_inference.csv were made from other
    settings, and each is named once)."""
    shutil.copytree(REPO / "results" / "cpu", tmp_path / "cpu")
    r = subprocess.run([sys.executable, "-m", "sparsinglaw", "verify", "--profile", "cpu", "--set",
                        "sparsity.dead_freq=0.01"], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "SPARSINGLAW_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "Warning" in line]
    assert all(w.startswith("StaleTableWarning: ") for w in warned), r.stderr
    named = sorted(Path(w.split(": ")[1]).name for w in warned)
    assert named == ["neurons.csv", "pareto.csv", "sparse_inference.csv", "sparsity.csv", "tokens.csv"], r.stderr
    assert not any(line.startswith(" ") or ".py:" in line for line in r.stderr.splitlines()), r.stderr
    # the verdicts drawn from them say so where they are kept: claims.md (and the README block) and its sidecar
    md = (tmp_path / "cpu" / "claims.md").read_text()
    assert md.split("\n")[2] == ("**Stale inputs**: " + ", ".join(named) + " were made under other settings than the "
                                 "profile's now (other data, runs or stage settings): the verdicts that read them "
                                 "describe those settings; rerun the stages that write them (the warnings of `verify` "
                                 "name each) and verify again.")
    assert md in r.stdout
    assert json.loads((tmp_path / "cpu" / "claims.meta.json").read_text())["stale_inputs"] == named
    assert "Stale inputs" not in (REPO / "results" / "cpu" / "claims.md").read_text()


@pytest.mark.skipif(not (REPO / "results" / "cpu" / "claims.csv").exists(), reason="needs the committed cpu results")
def test_fit_warns_of_measurements_made_under_other_settings(tmp_path):
    """`fit` reuses its cached tables only by their inputs' bytes: it now warns, as verify does, when the
    measurement tables were made under other settings than the profile's now (it printed their fits and
    verdicts as current); a fit setting, which the measurements are not made from, leaves them current."""
    shutil.copytree(REPO / "results" / "cpu", tmp_path / "cpu")
    env = {**os.environ, "SPARSINGLAW_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    for extra, stale in ((["sparsity.dead_freq=0.01"], ["neurons.csv", "sparsity.csv", "tokens.csv"]), ([], [])):
        r = subprocess.run([sys.executable, "-m", "sparsinglaw", "fit", "--profile", "cpu", "--no-progress",
                            *[a for x in extra for a in ("--set", x)]], capture_output=True, text=True,
                           timeout=300, cwd=REPO, env=env)
        assert r.returncode == 0, r.stderr
        warned = [line for line in r.stderr.splitlines() if line.startswith("StaleTableWarning: ")]
        assert sorted(Path(w.split(": ")[1]).name for w in warned) == stale, r.stderr


# -----------------------------------------------------------------------------------------------
# what each command hands to the library (library functions replaced by recorders: no model runs)


def _recorder(calls, name, result=None):
    def record(*args, **kwargs):
        calls.append((name, kwargs))
        return result
    return record


def test_train_forwards_runs_jobs_runs_dir_and_progress(tmp_path, monkeypatch, capsys):
    """`train` passes --run (repeatable), -j (0 is accepted: one per core), --runs-dir and --no-progress on to
    train_profile, and counts the runs whose status is done."""
    from types import SimpleNamespace

    from sparsinglaw import cli, runs

    calls = []
    states = [SimpleNamespace(status="done"), SimpleNamespace(status="partial"), SimpleNamespace(status="done")]
    monkeypatch.setattr(runs, "train_profile", _recorder(calls, "train", states))
    assert cli.main(["train", "--profile", "smoke", "--run", "relu-s1", "--name", "silu-s1", "-j", "0",
                     "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    assert calls == [("train", {"names": ["relu-s1", "silu-s1"], "jobs": 0, "runs_dir": str(tmp_path),
                                "progress": False})]
    out = capsys.readouterr()
    assert out.out == "2/3 runs done\n" and out.err == ""
    calls.clear()
    assert cli.main(["train", "--profile", "smoke", "--jobs", "3"]) == 0
    assert calls == [("train", {"names": None, "jobs": 3, "runs_dir": None, "progress": True})]


def test_measure_forwards_its_flags_and_prints_the_last_checkpoint_of_each_run(tmp_path, monkeypatch, capsys):
    from sparsinglaw import cli, measure

    table = pd.DataFrame({"run": ["relu-s1"] * 4, "tokens": [200, 100, 100, 200], "p": [1.0, 1.0, 5.0, 5.0],
                          "cett": [0.2, 0.1, 0.3, 0.4], "ppl_ratio": [1.01] * 4,
                          "activation_ratio": [0.52, 0.61, 0.47, 0.43], "dead_ratio": [0.0] * 4})
    calls = []
    monkeypatch.setattr(measure, "measure_profile", _recorder(calls, "measure", table))
    assert cli.main(["measure", "--profile", "smoke", "--run", "relu-s1", "-j", "2", "--runs-dir", str(tmp_path),
                     "--impl", "reference", "--no-progress"]) == 0
    assert calls == [("measure", {"names": ["relu-s1"], "jobs": 2, "runs_dir": str(tmp_path), "progress": False,
                                  "impl": "reference"})]
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["run", "tokens", "p", "cett", "ppl_ratio", "activation_ratio", "dead_ratio"]
    last = [["relu-s1", "200", "0.52"], ["relu-s1", "200", "0.43"]]  # run, tokens, activation_ratio
    assert [r.split()[:2] + r.split()[5:6] for r in rows[1:]] == last
    calls.clear()
    assert cli.main(["measure", "--profile", "smoke"]) == 0
    assert calls == [("measure", {"names": None, "jobs": None, "runs_dir": None, "progress": True, "impl": None})]


def test_fit_forwards_refit_and_progress(monkeypatch):
    from sparsinglaw import cli

    calls = []
    monkeypatch.setattr(cli, "_fit", _recorder(calls, "fit", 0))
    assert cli.main(["fit", "--profile", "smoke", "--refit", "--no-progress"]) == 0
    assert cli.main(["fit", "--profile", "smoke"]) == 0
    assert calls == [("fit", {"refit": True, "progress": False}), ("fit", {"refit": False, "progress": True})]


def test_runs_reads_the_states_of_its_runs_dir(tmp_path, monkeypatch, capsys):
    from sparsinglaw import cli, runs

    seen = []
    monkeypatch.setattr(runs, "states_table", lambda profile, runs_dir=None: seen.append(runs_dir) or pd.DataFrame(
        {"run": ["relu-s1"], "status": ["new"], "key": ["k"]}))
    assert cli.main(["runs", "--profile", "smoke", "--runs-dir", str(tmp_path)]) == 0
    assert seen == [str(tmp_path)]
    assert capsys.readouterr().out.split() == ["run", "status", "relu-s1", "new"]  # the key column dropped


def test_compute_forwards_jobs_runs_dir_and_progress_to_every_stage(tmp_path, monkeypatch, capsys):
    from sparsinglaw import cli, inference, measure, runs

    calls = []
    for mod, name in ((runs, "train_profile"), (runs, "train_log_table"), (measure, "measure_profile"),
                      (measure, "pareto_profile"), (inference, "sparse_inference_for")):
        monkeypatch.setattr(mod, name, _recorder(calls, name))
    assert cli.main(["compute", "--profile", "smoke", "--runs-dir", str(tmp_path), "-j", "2", "--no-progress"]) == 0
    rd = str(tmp_path)
    assert calls == [("train_profile", {"jobs": 2, "runs_dir": rd, "progress": False}),
                     ("train_log_table", {"compute": True, "runs_dir": rd}),
                     ("measure_profile", {"jobs": 2, "runs_dir": rd, "progress": False}),
                     ("pareto_profile", {"runs_dir": rd, "progress": False}),
                     ("sparse_inference_for", {"compute": True, "runs_dir": rd, "progress": False, "jobs": 2})]
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()[1:]] == ["corpus", "train", "training logs", "measure",
                                                                   "pareto", "sparse inference", "total"]
    calls.clear()
    assert cli.main(["compute", "--profile", "smoke"]) == 0
    assert all(k.get("progress", True) is True and k.get("jobs") is None and k["runs_dir"] is None
               for _, k in calls) and len(calls) == 5


def test_verify_prints_the_claims_and_says_whether_the_readme_changed(tmp_path, monkeypatch, capsys):
    from sparsinglaw import claims, cli

    readme = tmp_path / "README.md"
    readme.write_text("x\n")
    changed, progress_seen = [], []
    monkeypatch.setattr(claims, "evaluate", lambda profile, progress=True: progress_seen.append(progress)
                        or pd.DataFrame())
    monkeypatch.setattr(claims, "write", lambda profile, df: "| claim |\n")
    monkeypatch.setattr(claims, "update_readme", lambda md, path, name: changed.append((md, path, name)) or
                        len(changed) == 1)
    assert cli.main(["verify", "--profile", "smoke", "--readme", str(readme)]) == 0
    assert capsys.readouterr().out == f"| claim |\nupdated the claims:smoke block of {readme}\n"
    assert cli.main(["verify", "--profile", "smoke", "--readme", str(readme)]) == 0
    assert capsys.readouterr().out == f"| claim |\nunchanged: the claims:smoke block of {readme}\n"
    assert changed == [("| claim |\n", str(readme), "smoke")] * 2
    assert cli.main(["verify", "--profile", "smoke"]) == 0 and len(changed) == 2  # no --readme: no update
    assert capsys.readouterr().out == "| claim |\n"
    assert cli.main(["verify", "--profile", "smoke", "--no-progress"]) == 0
    assert progress_seen == [True, True, True, False]


def test_compare_reports_a_against_b(monkeypatch, capsys):
    from sparsinglaw import cli, compare

    monkeypatch.setattr(compare, "compare", lambda a, b: (a, b))
    monkeypatch.setattr(compare, "report", lambda t: f"{t[0]} | {t[1]}\n")
    assert cli.main(["compare", "results/x", "results/y"]) == 0
    assert capsys.readouterr().out == "results/x | results/y\n"


# -----------------------------------------------------------------------------------------------
# errors, --debug, Ctrl-C and warnings


def test_os_error_is_one_line_with_exit_2_and_a_traceback_under_debug(monkeypatch, capsys):
    """An OSError from outside the package's own checks (disk full, permissions): one line on stderr that
    points to --debug, exit 2; with --debug (before or after the command) it propagates."""
    from sparsinglaw import cli, runs

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", "/runs/x.pt")

    monkeypatch.setattr(runs, "train_profile", full)
    assert cli.main(["train", "--profile", "smoke"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == ("error: [Errno 28] No space left on device: '/runs/x.pt'; rerun with --debug for the "
                       "traceback\n")
    for argv in (["--debug", "train", "--profile", "smoke"], ["train", "--profile", "smoke", "--debug"]):
        with pytest.raises(OSError, match="No space left"):
            cli.main(argv)


def test_debug_after_the_command_raises_the_error(tmp_path, monkeypatch):
    """--debug is accepted after the command too (train, ..., compare): the error propagates with its traceback."""
    from sparsinglaw import cli
    from sparsinglaw.config import SparsingLawError

    with pytest.raises(SparsingLawError, match="profile 'nope': not found"):
        cli.main(["train", "--profile", "nope", "--debug"])
    with pytest.raises(SparsingLawError, match="no such folder"):
        cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--debug"])
    with pytest.raises(SparsingLawError, match="no such folder"):
        cli.main(["--debug", "compare", str(tmp_path / "a"), str(tmp_path / "b")])


def test_warnings_take_one_line_during_the_command_and_the_format_is_restored(monkeypatch):
    """During a command a warning is formatted as one line (class: message); with --debug Python's own format
    (file and line) stays; either way main restores the caller's warnings.formatwarning when it returns."""
    import warnings

    from sparsinglaw import cli, runs

    seen = []
    monkeypatch.setattr(runs, "train_profile", lambda *a, **k: seen.append(
        warnings.formatwarning(UserWarning("stale table"), UserWarning, "/lib/x.py", 7)) or [])
    before = warnings.formatwarning
    assert cli.main(["train", "--profile", "smoke"]) == 0
    assert seen[-1] == "UserWarning: stale table\n"
    assert warnings.formatwarning is before
    assert cli.main(["--debug", "train", "--profile", "smoke"]) == 0
    assert seen[-1].startswith("/lib/x.py:7: UserWarning: stale table")
    assert warnings.formatwarning is before
    monkeypatch.setattr(runs, "train_profile", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(["train", "--profile", "smoke"]) == 130
    assert warnings.formatwarning is before  # restored after an interrupted command too


def test_states_table_by_hand_from_done_files(tmp_path, monkeypatch, capsys):
    """R9/R10/R11. relu-s1 of smoke with tokens=12500 and n_layers=3: 512 tokens/step -> ceil(12500/512)=25
    steps = 12800 tokens trained; width_depth 16/3 = 5.33 (two decimals). A DONE of this config is done at
    100% (12800/12800, not 12800/12500 = 102%); a DONE written by another config is no finished run."""
    import json

    from sparsinglaw import cli, config, runs
    from sparsinglaw.config import load_profile

    monkeypatch.setenv("SPARSINGLAW_RUNS", str(tmp_path))
    p = load_profile("smoke", overrides=["runs.relu-s1.train.tokens=12500", "runs.relu-s1.model.n_layers=3",
                                         "runs.relu-s1.train.checkpoints=4"])
    r = p.run("relu-s1")
    d = runs.run_dir(p, r)
    d.mkdir(parents=True)
    (d / "DONE").write_text(json.dumps({"config_hash": r.config_hash(p.data)}))
    (d / "log.csv").write_text("step,tokens,split,loss,lr,tok_s,mfu\n25,12800,train,4.5,0.01,1000,\n")
    row = runs.states_table(p).set_index("run").loc["relu-s1"]
    assert row["status"] == "done" and row["progress"] == "100%"
    assert row["width_depth"] == 5.33
    (d / "DONE").write_text(json.dumps({"config_hash": "another config"}))
    s = runs.run_state(p, r)
    assert s.status == "new" and s.tokens_seen == 0 and s.tokens_total == 12800
    # a DONE naming a checkpoint that is not there: finished, but damaged; `runs` says which file and what to do
    (d / "DONE").write_text(json.dumps({"config_hash": r.config_hash(p.data), "checkpoints": [5]}))
    s = runs.run_state(p, r)
    assert (s.status, s.trained, s.problems, s.checkpoints) == ("damaged", True, (f"{d}/ckpt_0000005.pt: missing",), 0)
    args = ["runs", "--profile", "smoke", *[x for o in p.overrides for x in ("--set", o)]]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert "damaged" in out and err == (f"warning: run relu-s1 finished training, but 1 of its checkpoints cannot be "
                                        f"used ({d}/ckpt_0000005.pt: missing); restore the file(s), or delete the run "
                                        f"folder {d} and train the run again (python -m sparsinglaw train "
                                        f"{config.profile_flags(p)} --run relu-s1)\n")
    # its training log cut off: damaged as well (compute would refuse it later, `runs` listed the run as done)
    (d / "DONE").write_text(json.dumps({"config_hash": r.config_hash(p.data)}))
    (d / "log.csv").write_text("step,tokens,split,loss,lr,tok_s,mfu\n25,12800,train,4.")
    s = runs.run_state(p, r)
    assert (s.status, s.problems) == ("damaged", ()) and s.log_problem.endswith("its last line '25,12800,train,4.' "
                                                                                  "is cut off")
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert "damaged" in out and err == (f"warning: run relu-s1 finished training, but its training log cannot be used "
                                        f"({d}/log.csv: its last line '25,12800,train,4.' is cut off); restore the "
                                        f"file(s), or delete the run folder {d} and train the run again (python -m "
                                        f"sparsinglaw train {config.profile_flags(p)} --run relu-s1)\n")
    (d / "log.csv").unlink()
    assert runs.run_state(p, r).log_problem == f"{d}/log.csv: missing"


@pytest.mark.parametrize("seconds, shown", [(90, "at least 90 s "), (119, "at least 119 s "), (120, "at least 2 min "),
                                            (7200, "at least 2 h "), (48 * 3600, "at least 2 days ")])
def test_compute_line_units_by_hand(seconds, shown):
    """The H200's bf16 peak is 989 TFLOP/s (datasheet): a profile
    of seconds x 989e12 FLOP takes `seconds` at least; under 120 s it is said in seconds, then minutes to
    120 min, hours to 48 h, then days."""
    from sparsinglaw import cli

    line = cli._compute_line(seconds * 989e12, 3)
    assert shown in line and "for 3 runs" in line and "989 TFLOP/s" in line, line


def test_a_reader_that_leaves_ends_the_command_quietly(tmp_path):
    """stdout a pipe whose reader has gone (`runs | head -1`): exit 141 (as a Unix tool killed by SIGPIPE)
    and nothing on stderr; it used to print 'error: [Errno 32] Broken pipe' and exit 2."""
    r, w = os.pipe()
    os.close(r)  # the reader leaves before anything is written
    proc = subprocess.Popen([sys.executable, "-m", "sparsinglaw", "runs", "--profile", "smoke"], stdout=w,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO / "lib"), OMP_NUM_THREADS="1"))
    os.close(w)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == "", err


def test_sigterm_unwinds_as_ctrl_c_and_the_run_resumes(tmp_path, session_roots):
    """SIGTERM (a timeout, a batch system's cancel) during training: the message and exit code of a
    terminated command (143), and the rerun resumes from the checkpoint it left; it used to die silently."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "lib"), OMP_NUM_THREADS="1",
               SPARSINGLAW_DATA=str(session_roots["SPARSINGLAW_DATA"]))
    cmd = [sys.executable, "-m", "sparsinglaw", "train", "--profile", "smoke", "--run", "relu-s1", "--runs-dir",
           str(tmp_path), "--no-progress", "--set", "train.tokens=2000000", "--set", "train.resume_every=5"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob("smoke/*/ckpt_last.pt")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert err.splitlines()[-1] == "terminated (SIGTERM); rerun the same command to resume from the last checkpoint"
    again = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [again.stdout.readline() for _ in range(2)]  # the passes note, then the resume line
        again.send_signal(signal.SIGTERM)  # stopped the same way
        rest = again.communicate(timeout=60)[0]
    finally:
        if again.poll() is None:
            again.kill()
            again.communicate()
    assert lines[0].startswith("note: run relu-s1 trains 2,000,000 tokens") and \
        lines[1].startswith("run relu-s1: resuming from step "), "".join(lines) + rest
    assert again.returncode == 143, rest


def test_a_file_error_names_the_setting_of_its_folder(tmp_path, monkeypatch, capsys):
    """An OSError on a file in the runs, results, figures or data folder (read-only, full, a file where a
    folder should be) names the option or variable that chose that folder; elsewhere, the error alone."""
    from sparsinglaw import runs

    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "res"))
    monkeypatch.setenv("SPARSINGLAW_FIGURES", str(tmp_path / "fig"))
    monkeypatch.delenv("SPARSINGLAW_DATA")
    assert runs.folder_setting(tmp_path / "res" / "cpu" / "x.csv") == "SPARSINGLAW_RESULTS"
    assert runs.folder_setting(tmp_path / "fig" / "cpu") == "SPARSINGLAW_FIGURES"
    assert runs.folder_setting(tmp_path / "mine" / "_data" / "x", runs_dir=tmp_path / "mine") == \
        "--runs-dir or SPARSINGLAW_RUNS"  # the caches lie in the runs folder
    assert runs.folder_setting(tmp_path / "elsewhere" / "x", runs_dir=tmp_path / "mine") is None
    monkeypatch.setenv("SPARSINGLAW_DATA", str(tmp_path / "data"))
    assert runs.folder_setting(tmp_path / "data" / "x") == "SPARSINGLAW_DATA"

    def read_only(args):
        raise OSError(30, "Read-only file system", str(tmp_path / "mine" / "_data"))

    monkeypatch.setattr(cli, "_dispatch", read_only)
    assert cli.main(["train", "--profile", "smoke", "--runs-dir", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: [Errno 30] Read-only file system: '{tmp_path / 'mine' / '_data'}' (in the folder of "
                   "--runs-dir or SPARSINGLAW_RUNS: check that it is a writable folder with free space, or set "
                   "--runs-dir or SPARSINGLAW_RUNS to another); rerun with --debug for the traceback\n")
    assert cli.main(["train", "--profile", "smoke", "--runs-dir", str(tmp_path / "other")]) == 2
    assert "(in the folder of" not in capsys.readouterr().err
    # nested roots: the deepest one that holds the path names it (results above the runs folder here)
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path))
    assert runs.folder_setting(tmp_path / "mine" / "smoke" / "x", runs_dir=tmp_path / "mine") == \
        "--runs-dir or SPARSINGLAW_RUNS"
    assert runs.folder_setting(tmp_path / "smoke" / "x.csv", runs_dir=tmp_path / "mine") == "SPARSINGLAW_RESULTS"


def test_main_restores_the_sigterm_handler_and_runs_off_the_main_thread(monkeypatch):
    """cli.main installs its SIGTERM handler for the call only (a program that calls it keeps its own), and
    from another thread, where no handler can be set, it runs without one."""
    import threading

    def mine(*args):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        seen = []
        monkeypatch.setattr(cli, "_dispatch", lambda args: seen.append(signal.getsignal(signal.SIGTERM)) or 0)
        assert cli.main(["runs", "--profile", "smoke"]) == 0
        assert seen[0] is not mine and signal.getsignal(signal.SIGTERM) is mine
        out = []
        th = threading.Thread(target=lambda: out.append(cli.main(["runs", "--profile", "smoke"])))
        th.start()
        th.join(60)
        assert out == [0] and seen[1] is mine  # off the main thread: the handler left as it was
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("stdout", ["socket", "closed"])
def test_stdout_other_than_a_closed_pipe(stdout):
    """A broken socket as stdout is an error of one line (exit 2), as before, not a traceback; stdout closed
    altogether (`>&-`) is no error: the command did its work."""
    import socket

    env = dict(os.environ, PYTHONPATH=str(REPO / "lib"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "sparsinglaw", "runs", "--profile", "smoke"]
    if stdout == "socket":
        a, b = socket.socketpair()
        b.close()
        proc = subprocess.run(cmd, stdout=a.fileno(), stderr=subprocess.PIPE, text=True, env=env, timeout=120)
        a.close()
        assert proc.returncode == 2 and proc.stderr.startswith("error: [Errno 32] Broken pipe"), proc.stderr
    else:
        proc = subprocess.run(["bash", "-c", 'exec "$@" >&-', "_", *cmd], stderr=subprocess.PIPE, text=True, env=env,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_compute_checks_the_validation_split_before_training(tmp_path, capsys):
    """A validation split too small for the sparse-inference stage stops `compute` before it trains (it
    used to stop there, after every run had trained and been measured)."""
    assert cli.main(["compute", "--profile", "smoke", "--runs-dir", str(tmp_path), "--no-progress", "--set",
                     "inference.heldout_tokens=100000000"]) == 2
    err = capsys.readouterr().err
    assert "too few for sparsity.eval_tokens=" in err and "inference.heldout_tokens=100000000" in err
    assert not (tmp_path / "smoke").exists()  # no run folder made
