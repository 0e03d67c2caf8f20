"""A catalog of bad inputs: configs, corpora, CLI arguments, notebook parameters and results
tables edited by hand. Each one must give a clear message naming the field or file and the expected
form, exit non-zero (or raise a SparsingLawError from the public API), show no traceback unless
--debug is given, and write no artifact (no run folder, no results table, no figure, no half-built
token cache).

CLI cases run `sparsinglaw.cli.main` in this process (what `python -m sparsinglaw` runs; two of them
also as real subprocesses below); "{tmp}" in arguments and messages is the case's tmp folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import MINI, REPO
from sparsinglaw import analysis, cli, measure, runs
from sparsinglaw.config import SparsingLawError, load_profile


@dataclass
class Case:
    id: str  # category-what
    argv: list[str]  # CLI arguments
    expect: list[str]  # substrings of the error message
    files: dict[str, bytes] = field(default_factory=dict)  # files created under {tmp} first
    env: dict[str, str] = field(default_factory=dict)  # environment variables set first


def _python_text() -> bytes:
    """30 kB of Python source and a last line of two bytes: with val_fraction=0.001 the validation
    split is that line, a few tokens, shorter than one window."""
    src = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text()[:30000]
    return (src[: src.rfind("\n") + 1] + "x\n").encode()


TRAIN = ["train", "--profile", "smoke", "--runs-dir", "{tmp}/runs", "--run", "relu-s1", "--no-progress"]
CORPUS = [*TRAIN, "--set", "data.corpus={tmp}/corpus"]

CLI_CASES = [
    # configs (profile files and --set overrides): the message names the file and the field
    Case("config-unknown-field", [*TRAIN, "--set", "model.d_modle=3"],
         ["configs/smoke.yaml", "model.d_modle: unknown field; expected one of: vocab_size, d_model"]),
    Case("config-wrong-type", [*TRAIN, "--set", "train.tokens=many"],
         ["smoke.yaml: train.tokens: expected an integer, got 'many'"]),
    Case("config-negative-lr", [*TRAIN, "--set", "train.lr=-1"], ["smoke.yaml: train.lr: must be > 0, got -1"]),
    Case("config-head-dim", [*TRAIN, "--set", "model.head_dim=6"],
         ["runs[0].model.head_dim: must divide d_model=16, got 6"]),
    Case("config-odd-head-dim", [*TRAIN, "--set", "model.head_dim=5"],
         ["smoke.yaml: model.head_dim: must be even for rotary embeddings, got 5"]),
    Case("config-vocab-too-small", [*TRAIN, "--set", "data.vocab_size=100"],
         ["data.vocab_size: must lie in (256, 2**32]: above the 256 byte tokens of byte-level BPE, token ids in "
          "uint32; got 100"]),
    Case("config-eval-shorter-than-a-window", [*TRAIN, "--set", "train.eval_tokens=10"],
         ["runs[0].train.eval_tokens: must be at least one window of model.seq_len=64 tokens, got 10"]),
    Case("config-sparsity-eval-shorter-than-a-window", [*TRAIN, "--set", "sparsity.eval_tokens=8"],
         ["sparsity.eval_tokens: must be at least one window of the longest model.seq_len=64 tokens, got 8"]),
    Case("config-p-without-1", [*TRAIN, "--set", "sparsity.p=[5]"],
         ["sparsity.p: must include 1 (PPL-1% is the paper's main setting), got [5]"]),
    Case("config-pareto-unknown-run", [*TRAIN, "--set", "sparsity.pareto_runs=[nope]"],
         ["sparsity.pareto_runs: no run named 'nope'; runs: relu-s1"]),
    Case("config-too-many-checkpoints", [*TRAIN, "--set", "train.checkpoints=400"],
         ["runs[0].train.checkpoints: 400 marks collapse to"]),
    Case("profile-not-yaml", ["runs", "--profile", "{tmp}/bad.yaml"],
         ["{tmp}/bad.yaml: not valid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>' "
          "(while parsing a flow sequence)"],
         {"bad.yaml": b"data: [1, 2\n"}),
    Case("profile-a-list", ["train", "--profile", "{tmp}/list.yaml", "--runs-dir", "{tmp}/runs"],
         ["{tmp}/list.yaml: expected a YAML mapping at the top level, got list"], {"list.yaml": b"- 1\n- 2\n"}),
    Case("profile-empty", ["train", "--profile", "{tmp}/empty.yaml", "--runs-dir", "{tmp}/runs"],
         ["{tmp}/empty.yaml: expected a YAML mapping at the top level, got NoneType"], {"empty.yaml": b""}),
    Case("profile-not-utf8", ["runs", "--profile", "{tmp}/latin.yaml"],
         ["{tmp}/latin.yaml: not UTF-8 text; save the profile as UTF-8 YAML"],
         {"latin.yaml": "description: caf\xe9\n".encode("latin-1")}),
    # corpora (data.corpus and data.packages)
    Case("corpus-missing", [*CORPUS], ["{tmp}/corpus: corpus not found; set data.corpus to an existing .txt file"]),
    Case("corpus-empty-file", [*TRAIN, "--set", "data.corpus={tmp}/empty.txt"],
         ["{tmp}/empty.txt: the file is empty (no text)"], {"empty.txt": b" \n"}),
    Case("corpus-not-utf8", [*TRAIN, "--set", "data.corpus={tmp}/latin.txt"],
         ["{tmp}/latin.txt: not UTF-8 text (invalid byte 0xe9 at byte offset 3); save it as UTF-8"],
         {"latin.txt": "caf\xe9\n".encode("latin-1") * 5}),
    Case("corpus-folder-without-text", [*CORPUS], ["{tmp}/corpus: the folder holds no text"],
         {"corpus/.hidden": b"text"}),
    Case("corpus-jsonl-bad-line", [*TRAIN, "--set", "data.corpus={tmp}/c.jsonl"],
         ["{tmp}/c.jsonl:2: invalid JSON"], {"c.jsonl": b'{"text": "a"}\n{"text": \n'}),
    Case("corpus-jsonl-missing-field", [*TRAIN, "--set", "data.corpus={tmp}/c.jsonl"],
         ["{tmp}/c.jsonl:1: no field 'text' (fields there: 'body'); set data.text_field"],
         {"c.jsonl": b'{"body": "a"}\n'}),
    Case("corpus-too-small-for-the-vocabulary", [*TRAIN, "--set", "data.corpus={tmp}/tiny.txt"],
         ["{tmp}/tiny.txt: the tokenizer text only supports", "not data.vocab_size=512; lower data.vocab_size"],
         {"tiny.txt": b"hello world\nbye\n"}),
    Case("corpus-too-short-for-a-window", [*TRAIN, "--set", "data.corpus={tmp}/short.txt",
                                           "--set", "data.val_fraction=0.001"],
         ["data.corpus={tmp}/short.txt: the validation split has", "too few for run relu-s1's windows of "
          "model.seq_len=64 (needs at least 65)"], {"short.txt": _python_text()}),
    Case("corpus-package-not-installed", [*TRAIN, "--set", "data.packages=[nosuchpkg]"],
         ["data.packages: package 'nosuchpkg' is not installed in this environment"]),
    # command-line arguments
    Case("cli-unknown-profile", ["train", "--profile", "nope"], ["profile 'nope': not found; known profiles in"]),
    Case("cli-unknown-run", ["train", "--profile", "smoke", "--run", "nope"],
         ["no run named 'nope'; this profile has: relu-s1, relu-s2"]),
    Case("cli-negative-jobs", ["measure", "--profile", "smoke", "-j", "-3"],
         ["-j/--jobs: expected a number of processes >= 0, got -3"]),
    Case("cli-set-without-equals", [*TRAIN, "--set", "lr"], ["--set 'lr': expected KEY=VALUE, e.g. train.lr=3e-3"]),
    Case("cli-set-bad-yaml", [*TRAIN, "--set", "train.lr=[1"],
         ["--set 'train.lr=[1': value is not valid YAML (line 1, column 3: expected ','"]),
    Case("cli-set-not-a-section", [*TRAIN, "--set", "model.d_model.x=1"],
         ["--set 'model.d_model.x=1': d_model is not a section"]),
    Case("cli-set-unknown-run", [*TRAIN, "--set", "runs.nope.train.lr=1"], ["no run named 'nope'"]),
    Case("cli-set-vocab-per-run", [*TRAIN, "--set", "runs.relu-s1.model.vocab_size=99"],
         ["runs[0].model.vocab_size: set it in data.vocab_size"]),
    Case("cli-bad-impl", ["measure", "--profile", "smoke", "--impl", "fastest"],
         ["argument --impl: invalid choice: 'fastest' (choose from"]),
    Case("cli-missing-profile", ["train"], ["the following arguments are required: --profile"]),
    Case("cli-runs-dir-is-a-file", ["train", "--profile", "smoke", "--runs-dir", "{tmp}/afile"],
         ["--runs-dir {tmp}/afile: not a folder; expected a folder"], {"afile": b"x"}),
    Case("cli-runs-dir-under-a-file", ["train", "--profile", "smoke", "--runs-dir", "{tmp}/afile/runs"],
         ["--runs-dir {tmp}/afile/runs: not a folder ({tmp}/afile is a file); expected a folder"], {"afile": b"x"}),
    Case("cli-results-env-under-a-file", ["compute", "--profile", "smoke", "--runs-dir", "{tmp}/runs"],
         ["SPARSINGLAW_RESULTS={tmp}/afile/results: not a folder ({tmp}/afile is a file); point it at a folder "
          "for results tables, or unset it for the default"], {"afile": b"x"},
         {"SPARSINGLAW_RESULTS": "{tmp}/afile/results"}),
    Case("cli-runs-env-is-a-file", ["runs", "--profile", "smoke"],
         ["SPARSINGLAW_RUNS={tmp}/afile: not a folder; point it at a folder for checkpoints and logs"],
         {"afile": b"x"}, {"SPARSINGLAW_RUNS": "{tmp}/afile"}),
    Case("cli-measure-untrained", ["measure", "--profile", "smoke", "--runs-dir", "{tmp}/runs", "--run", "relu-s1",
                                   "-j", "1"],
         ["run relu-s1 is not trained (new, 0 of", "train it first: python -m sparsinglaw train --profile smoke "
          "--run relu-s1 --runs-dir {tmp}/runs"]),
    Case("cli-measure-untrained-all", ["measure", "--profile", "smoke", "--runs-dir", "{tmp}/runs", "-j", "1"],
         ["runs are not trained (relu-s1, ", "train them first: python -m sparsinglaw train --profile smoke "
          "--runs-dir {tmp}/runs (finished runs are skipped)"]),
    Case("config-moe-experts", [*TRAIN, "--set", "runs.relu-s1.model.n_experts=3"],
         ["runs[0].model.n_experts: must divide d_ff=40 (experts of equal width), got 3"]),
    Case("config-fit-bad-value", ["fit", "--profile", "smoke", "--set", "fit.loss=bogus"],
         ["--set 'fit.loss=bogus' is refused: ",
          "configs/smoke.yaml: fit: FitSpec: invalid loss='bogus' (expected one of linear, soft_l1, huber, "
          "cauchy, arctan)"]),
    Case("config-fit-checked-by-every-command", ["runs", "--profile", "smoke", "--set", "fit.level=95"],
         ["--set 'fit.level=95' is refused: ",
          "configs/smoke.yaml: fit: FitSpec: invalid level=95 (expected strictly between 0 and 1, e.g. 0.95)"]),
    Case("config-fit-blames-the-override-it-names", ["runs", "--profile", "smoke", "--set", "fit.n_boot=20", "--set",
                                                     "fit.level=95", "--set", "fit.n_grid=3"],
         ["error: --set 'fit.level=95' is refused: ", "fit: FitSpec: invalid level=95"]),
    Case("config-fit-unknown-field", ["verify", "--profile", "smoke", "--set", "fit.n_bootz=3"],
         ["--set 'fit.n_bootz=3' is refused: ",
          "configs/smoke.yaml: fit: unknown FitSpec field(s) n_bootz; fields are ",
          "; and activation_forms (analysis.activation_forms)"]),
    Case("config-fit-paper-law-kept", ["verify", "--profile", "smoke", "--set", "fit.activation_forms={relu: power}"],
         ["--set 'fit.activation_forms={relu: power}' is refused: ",
          "configs/smoke.yaml: fit: activation_forms: relu keeps the paper's law (logspace_power); the setting "
          "chooses the law of other activations"]),
    Case("config-fit-forms-unknown-activation", ["verify", "--profile", "smoke", "--set",
                                                 "fit.activation_forms={gleu: logspace_power}"],
         ["configs/smoke.yaml: fit.activation_forms: unknown activation 'gleu' (did you mean 'gelu'?); expected "
          "one of: gelu, gelu_tanh, relu, relu2, silu"]),
    Case("config-fit-forms-not-a-mapping", ["verify", "--profile", "smoke", "--set", "fit.activation_forms=[]"],
         ["configs/smoke.yaml: fit.activation_forms: expected a mapping activation: form, got []"]),
    Case("cli-readme-missing", ["verify", "--profile", "smoke", "--readme", "{tmp}/README.md"],
         ["--readme {tmp}/README.md: no such file"]),
    Case("cli-times-folder-missing", ["compute", "--profile", "smoke", "--runs-dir", "{tmp}/runs",
                                      "--times", "{tmp}/no/times.json"],
         ["--times {tmp}/no/times.json: no folder {tmp}/no to write it in"]),
    Case("cli-times-is-a-folder", ["compute", "--profile", "smoke", "--runs-dir", "{tmp}/runs", "--times", "{tmp}"],
         ["--times {tmp}: a folder; expected the path of a JSON file to write"]),
]


def _tree(*folders: Path) -> dict[str, str]:
    """sha256 of every file and "folder" for every folder under `folders` (an empty run folder is an artifact),
    but the checkpoint digests a listing keeps in a run folder (train.DIGEST_MEMO: a cache, not an artifact)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for f in folders if f.exists() for p in sorted(f.rglob("*")) if p.name != ".sha256.json"}


@pytest.fixture
def roots(tmp_path, monkeypatch) -> dict[str, Path]:
    """Fresh results/, figures/ and token-cache roots, so that anything written would show."""
    out = {k: tmp_path / k for k in ("results", "figures", "data")}
    for k, v in out.items():
        monkeypatch.setenv(f"SPARSINGLAW_{k.upper()}", str(v))
    return out


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_bad_cli_input(case, tmp_path, roots, capsys, monkeypatch):
    sub = lambda s: s.replace("{tmp}", str(tmp_path))
    for var, value in case.env.items():
        monkeypatch.setenv(var, sub(value))
    for name, data in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    before = _tree(tmp_path)
    try:
        rc = cli.main([sub(a) for a in case.argv])
    except SystemExit as e:  # argparse: usage and the error, exit 2
        rc = e.code
    err = capsys.readouterr().err
    assert rc not in (0, None), err
    for want in case.expect:
        assert sub(want) in err, err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(message) == 1, err  # one line (after argparse's usage, for argparse errors)
    # no artifact: nothing new in the runs folder, results/ or figures/; no half-built token cache
    after = _tree(tmp_path)
    data = str(roots["data"])
    written = {p for p in set(after) - set(before) if p != data and not p.startswith(data + "/")}
    assert not written and all(after[p] == before[p] for p in before), written
    for cache in (roots["data"].iterdir() if roots["data"].exists() else []):
        assert cache.suffix == ".lock" or (cache / "meta.json").exists(), f"half-built token cache {cache}"


def test_catalog_size():
    """The catalog keeps at least 20 distinct bad inputs across the five categories."""
    n = len(CLI_CASES) + len(TABLE_CASES) + 1  # + the notebook parameter below
    assert n >= 20 and len({c.id for c in CLI_CASES}) == len(CLI_CASES)
    assert {c.id.split("-")[0] for c in CLI_CASES} == {"config", "profile", "corpus", "cli"}


@pytest.mark.slow
@pytest.mark.parametrize("debug", [False])  # True: see test_cli.test_debug_shows_traceback (same mechanism)
def test_bad_input_in_a_real_process(tmp_path, debug):
    """The same through `python -m sparsinglaw`: exit 2, one line; the traceback only with --debug."""
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1") * 5)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"), SPARSINGLAW_DATA=str(tmp_path / "d"))
    args = ["--debug"] * debug + ["train", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs"),
                                  "--set", f"data.corpus={tmp_path / 'latin.txt'}"]
    r = subprocess.run([sys.executable, "-m", "sparsinglaw", *args], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode != 0
    assert f"{tmp_path / 'latin.txt'}: not UTF-8 text" in r.stderr
    assert ("Traceback" in r.stderr) == debug
    assert not (tmp_path / "runs").exists()


# -----------------------------------------------------------------------------------------------
# torchrun's environment (monkeypatched: no real torchrun, no GPU needed)

TORCHRUN_CASES = [  # id, env, compute.device, GPUs torch sees, message
    ("rank-missing", {"WORLD_SIZE": "2"}, "cpu", 0,
     "WORLD_SIZE=2 but RANK is not set; start the processes with torchrun"),
    ("rank-not-a-number", {"WORLD_SIZE": "2", "RANK": "one"}, "cpu", 0, "RANK='one' is not an integer"),
    ("rank-beyond-world", {"WORLD_SIZE": "2", "RANK": "2"}, "cpu", 0, "RANK=2: expected 0 <= RANK < WORLD_SIZE=2"),
    ("world-not-a-number", {"WORLD_SIZE": "two", "RANK": "0"}, "cpu", 0, "WORLD_SIZE='two' is not an integer"),
    ("cuda-without-gpu", {"WORLD_SIZE": "2", "RANK": "0"}, "cuda", 0,
     "compute.device is 'cuda' but torch sees no CUDA device; set it to auto or cpu (--set compute.device=cpu)"),
    ("local-rank-beyond-gpus", {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, "cuda", 1,
     "LOCAL_RANK=1 but torch sees 1 CUDA device(s); start at most one process per GPU"),
    ("local-rank-beyond-gpus-auto", {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3"}, "auto", 2,
     "LOCAL_RANK=3 but torch sees 2 CUDA device(s)"),
    ("timeout-not-a-number", {"WORLD_SIZE": "2", "RANK": "0", "SPARSINGLAW_DIST_TIMEOUT": "soon"}, "cpu", 0,
     "SPARSINGLAW_DIST_TIMEOUT='soon': expected a number of seconds in [1, 1e9]"),
    ("timeout-zero", {"WORLD_SIZE": "2", "RANK": "0", "SPARSINGLAW_DIST_TIMEOUT": "0"}, "cpu", 0,
     "SPARSINGLAW_DIST_TIMEOUT='0': expected a number of seconds in [1, 1e9]"),
    ("timeout-infinite", {"WORLD_SIZE": "2", "RANK": "0", "SPARSINGLAW_DIST_TIMEOUT": "inf"}, "cpu", 0,
     "SPARSINGLAW_DIST_TIMEOUT='inf': expected a number of seconds in [1, 1e9]"),  # not an OverflowError
    ("timeout-beyond-1e9", {"WORLD_SIZE": "2", "RANK": "0", "SPARSINGLAW_DIST_TIMEOUT": "1e10"}, "cpu", 0,
     "SPARSINGLAW_DIST_TIMEOUT='1e10': expected a number of seconds in [1, 1e9]"),  # a valid timedelta
    ("world-zero", {"WORLD_SIZE": "0", "RANK": "0"}, "cpu", 0, "WORLD_SIZE=0: expected a number of processes >= 1"),
    ("rank-negative", {"WORLD_SIZE": "2", "RANK": "-1"}, "cpu", 0, "RANK=-1: expected 0 <= RANK < WORLD_SIZE=2"),
    ("local-rank-negative", {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1"}, "cpu", 0,
     "LOCAL_RANK=-1: expected >= 0"),
]


@pytest.fixture
def fake_torchrun(monkeypatch):
    """Set torchrun's variables and the GPUs torch sees; any CUDA device or process-group call fails."""
    import torch
    import torch.distributed as dist

    def forbidden(*_a, **_k):
        raise AssertionError("a CUDA or process-group call before the inputs were checked")

    def setup(env: dict, gpus: int) -> None:
        for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SPARSINGLAW_DIST_TIMEOUT"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "set_device", forbidden)
        monkeypatch.setattr(dist, "init_process_group", forbidden)

    return setup


@pytest.mark.parametrize("cid, env, device, gpus, expect", TORCHRUN_CASES, ids=[c[0] for c in TORCHRUN_CASES])
def test_bad_torchrun_environment(cid, env, device, gpus, expect, fake_torchrun):
    """init_distributed checks the device and torchrun's variables before any CUDA or process-group call:
    a SparsingLawError naming the variable, not a KeyError or a raw CUDA error."""
    from sparsinglaw.device import init_distributed

    fake_torchrun(env, gpus)
    with pytest.raises(SparsingLawError) as e:
        init_distributed(device)
    assert expect in str(e.value)


def test_init_distributed_joins_on_the_local_gpu_with_the_devices_backend(fake_torchrun, monkeypatch):
    """Valid torchrun variables: CUDA takes the GPU of LOCAL_RANK (not RANK: rank 3 of 4 on a second node
    of two GPUs is GPU 1) and nccl, CPU gloo; SPARSINGLAW_DIST_TIMEOUT is in seconds; a group already
    joined is not started again; one process ignores a stray LOCAL_RANK."""
    import datetime

    import torch
    import torch.distributed as dist

    from sparsinglaw.device import Dist, dist_env, init_distributed

    calls = []
    for device, gpus in (("cuda", 2), ("cpu", 0)):
        calls.clear()
        fake_torchrun({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "SPARSINGLAW_DIST_TIMEOUT": "90"}, gpus)
        monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
        monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
        monkeypatch.setattr(dist, "is_initialized", lambda: False)
        assert init_distributed(device) == Dist(rank=3, world=4, local_rank=1)
        bound = {"device_id": torch.device("cuda", 1)} if device == "cuda" else {}  # nccl bound to LOCAL_RANK's GPU
        want = [("nccl" if device == "cuda" else "gloo", {"timeout": datetime.timedelta(seconds=90), **bound})]
        assert calls == ([("set_device", 1)] if device == "cuda" else []) + want, device
    calls.clear()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # the caller's group: joined already
    assert init_distributed("cpu") == Dist(rank=3, world=4, local_rank=1) and calls == []
    fake_torchrun({"LOCAL_RANK": "1"}, 2)  # no WORLD_SIZE: one process, whatever else is set
    assert dist_env("cuda") == Dist(rank=0, world=1, local_rank=0)


def test_bad_torchrun_environment_writes_nothing(tmp_path, fake_torchrun, smoke_tokens, capsys):
    """Under torchrun with compute.device=cuda and no GPU: one error line, no traceback, and train()
    writes no file of the run (the checks come before its folder is made)."""
    from conftest import TINY
    from sparsinglaw.train import train

    fake_torchrun({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, 0)
    profile = load_profile("smoke", overrides=TINY)
    run = profile.run("relu-s1")
    with pytest.raises(SparsingLawError, match="compute.device is 'cuda' but torch sees no CUDA device"):
        train(run, profile.data, tmp_path / "run", smoke_tokens, device="cuda", progress=False)
    assert not (tmp_path / "run").exists()
    sets = sum((["--set", s] for s in [*TINY, "compute.device=cuda"]), [])
    rc = cli.main(["train", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs"), "--run", "relu-s1",
                   "--no-progress", *sets])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: compute.device is 'cuda' but torch sees no CUDA device")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no corpus cache, no run folder


def test_the_gpu_profile_on_a_machine_without_one_stops_before_building_its_corpus(tmp_path, monkeypatch, capsys):
    """`train --profile gpu` (compute.device: cuda) without a GPU: one line saying how to run it on CPU, before
    the profile's corpus and tokenizer are built (minutes of work for nothing)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SPARSINGLAW_DATA", str(tmp_path / "data"))
    rc = cli.main(["train", "--profile", "gpu", "--runs-dir", str(tmp_path / "runs"), "--run", "relu-s1",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err == ("error: compute.device is 'cuda' but torch sees no CUDA device; set it to auto or cpu "
                               "(--set compute.device=cpu), or run on a machine with a GPU\n")
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_bad_torchrun_rank_through_the_cli_is_one_line(tmp_path, fake_torchrun, capsys):
    """The CLI reads torchrun's variables before train() does (run lock, jobs): a RANK that is not an
    integer is one error line there too, not a ValueError traceback."""
    from conftest import TINY

    fake_torchrun({"WORLD_SIZE": "2", "RANK": "zero", "LOCAL_RANK": "0"}, 0)
    sets = sum((["--set", s] for s in TINY), [])
    rc = cli.main(["train", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs"), "--run", "relu-s1",
                   "--no-progress", *sets])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: RANK='zero' is not an integer"), err
    assert len(err.splitlines()) == 1


# -----------------------------------------------------------------------------------------------
# notebook parameters


@pytest.mark.slow
def test_notebook_with_unknown_profile(tmp_path, roots):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(REPO / "notebooks" / "01_train.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"profile": "nope"}, kernel_name="python3", cwd=str(REPO),
                            progress_bar=False)
    msg = str(e.value)
    assert "ConfigError" in msg and "profile 'nope': not found; known profiles in" in msg
    assert not _tree(roots["results"], roots["figures"])


# -----------------------------------------------------------------------------------------------
# results tables and per-run records edited by hand (public entry points: measure.read_results,
# measure.measure_run, measure.final_arrays)


def _reseal(csv: Path) -> None:
    """Update the sidecar's sha256 after an edit (a careful hand edit, or a foreign table)."""
    side = csv.with_suffix(".meta.json")
    meta = json.loads(side.read_text())
    meta["sha256"] = hashlib.sha256(csv.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))


def _edit_csv(path: Path, fn) -> None:
    df = fn(pd.read_csv(path))
    path.write_text(df.to_csv(index=False))
    _reseal(path)


def _cut_row(path: Path, line: int) -> None:
    """Line `line` (0 = the header) of a CSV cut to its first 15 fields, the sha256 resealed."""
    import csv as csv_

    rows = list(csv_.reader(io.StringIO(path.read_text(), newline="")))
    rows[line] = rows[line][:15]
    out = io.StringIO()
    csv_.writer(out, lineterminator="\n").writerows(rows)
    path.write_text(out.getvalue())
    _reseal(path)


def _record(d: Path) -> Path:
    return next(d.glob("sparsity-fast-*.json"))


def _edit_record(d: Path, fn) -> None:
    p = _record(d)
    rec = json.loads(p.read_text())
    fn(rec)
    p.write_text(json.dumps(rec))


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


TABLE = lambda res: res / "sparsity.csv"  # noqa: E731
TABLE_CASES = [
    # (id, edit(results folder, run folder), load(profile, run, runs dir), expected message parts)
    ("table-value-edited", lambda res, d: TABLE(res).write_text(TABLE(res).read_text().replace("0.", "0.9", 1)),
     "table", ["sparsity.csv: its sha256 does not match the one in sparsity.meta.json (edited by hand"]),
    ("table-half-written", lambda res, d: TABLE(res).write_bytes(TABLE(res).read_bytes()[:200]),
     "table", ["sparsity.csv: its sha256 does not match", "an interrupted write"]),
    ("table-missing-column", lambda res, d: _edit_csv(TABLE(res), lambda df: df.drop(columns=["activation_ratio"])),
     "table", ["sparsity.csv: missing column(s) activation_ratio; expected at least the columns run, activation"]),
    ("table-not-a-number", lambda res, d: _edit_csv(TABLE(res), lambda df: df.assign(
        ppl_ratio=df["ppl_ratio"].astype(object).where(df.index != 2, "abc"))),
     "table", ["sparsity.csv: line 4, column ppl_ratio: 'abc' is not a number"]),
    # hand edits that keep the sha256 in step (a table made elsewhere): pandas fills a row cut short with NaN,
    # and a point without a value dropped a point or a run from the fits without a word
    ("table-row-cut-short", lambda res, d: _cut_row(TABLE(res), 3),
     "table", ["sparsity.csv: line 4 has 15 of the header's 22 fields (a row cut short); rerun"]),
    ("table-value-missing", lambda res, d: _edit_csv(TABLE(res), lambda df: df.assign(
        activation_ratio=df["activation_ratio"].where(df.index != 2))),
     "table", ["sparsity.csv: line 4, column activation_ratio: empty, where every row needs a value; rerun"]),
    ("table-header-only", lambda res, d: _edit_csv(TABLE(res), lambda df: df.iloc[:0]),
     "table", ["sparsity.csv: no rows, only its header; rerun"]),
    ("fit-table-header-only", lambda res, d: _edit_csv(TABLE(res), lambda df: df.iloc[:0]),
     "fit", ["sparsity.csv: no rows, only its header; rerun"]),  # was an IndexError traceback
    ("fit-table-row-cut-short", lambda res, d: _cut_row(TABLE(res), 3),
     "fit", ["sparsity.csv: line 4 has 15 of the header's 22 fields (a row cut short)"]),
    ("table-no-sidecar", lambda res, d: (res / "sparsity.meta.json").unlink(),
     "table", ["sparsity.csv: no provenance sidecar sparsity.meta.json next to it"]),
    ("table-sidecar-not-json", lambda res, d: (res / "sparsity.meta.json").write_text("{"),
     "table", ["sparsity.meta.json: unreadable sidecar"]),
    ("table-missing", lambda res, d: TABLE(res).unlink(),
     "table", ["sparsity.csv: missing; rerun python -m sparsinglaw measure --profile /",  # the YAML's path
               "/mini.yaml --set train.tokens=12288 "]),
    # what makes a missing table: compute (measure never writes pareto.csv, train never train_log.csv)
    ("pareto-missing", lambda res, d: (res / "pareto.csv").unlink(missing_ok=True),
     "pareto", ["pareto.csv: missing; rerun python -m sparsinglaw compute --profile /"]),
    ("train-log-missing", lambda res, d: (res / "train_log.csv").unlink(missing_ok=True),
     "train_log", ["train_log.csv: missing; make it with python -m sparsinglaw compute --profile /",
                   " --runs-dir "]),
    # a finished run's lost log: training it again would skip it; the advice names its runs folder
    ("log-of-a-finished-run-missing", lambda res, d: (d / "log.csv").unlink(),
     "log", ["log.csv: the training log of the finished run relu-s1 is missing; restore it, or delete the run "
             "folder", " --run relu-s1 --runs-dir "]),
    ("table-of-another-config", lambda res, d: None,
     "strict", ["sparsity.csv: recorded stage_hash", "differs from the current", "refusing it"]),
    # the fits read the measurement tables with the same checks (they fitted an edited table before)
    ("fit-table-value-edited", lambda res, d: TABLE(res).write_text(TABLE(res).read_text().replace("0.", "0.9", 1)),
     "fit", ["sparsity.csv: its sha256 does not match the one in sparsity.meta.json (edited by hand"]),
    ("fit-table-empty", lambda res, d: TABLE(res).write_bytes(b""), "fit", ["sparsity.csv: its sha256 does not match"]),
    ("fit-sidecar-not-json", lambda res, d: (res / "sparsity.meta.json").write_text("{"),
     "fit", ["sparsity.meta.json: unreadable sidecar"]),
    ("record-wrong-key", lambda res, d: _edit_record(d, lambda r: r.update(key="0123456789")),
     "record", ["sparsity-fast-", ".json: not the measurement of run relu-s1 under this config (key 0123456789"]),
    ("record-other-config", lambda res, d: _edit_record(d, lambda r: r.update(config_hash="f" * 64)),
     "record", ["not the measurement of run relu-s1 under this config", "config hash ffffffffff"]),
    ("record-truncated", lambda res, d: _record(d).write_text(_record(d).read_text()[:100]),
     "record", [".json: unreadable measurement record", "delete it to measure run relu-s1 again"]),
    ("record-no-rows", lambda res, d: _edit_record(d, lambda r: r.pop("rows")),
     "record", ["and a list of rows"]),
    ("arrays-corrupted", lambda res, d: _flip(_record(d).with_suffix(".npz")),
     "arrays", [".npz: checksum differs from the one in sparsity-fast-", "delete both to measure run relu-s1"]),
]


@pytest.mark.parametrize("cid,edit,load,expect", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_edited_results_are_refused(cid, edit, load, expect, tmp_path, monkeypatch, measured_mini, session_roots,
                                    mini_path, capsys):
    run = measured_mini.run("relu-s1")
    res, rd = tmp_path / "results" / "mini", tmp_path / "runs"
    shutil.copytree(session_roots["SPARSINGLAW_RESULTS"] / "mini", res)
    d = runs.run_dir(measured_mini, run, rd)
    shutil.copytree(runs.run_dir(measured_mini, run, session_roots["SPARSINGLAW_RUNS"]), d)
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "results"))
    edit(res, d)
    before = _tree(tmp_path)
    with pytest.raises(SparsingLawError) as e:
        if load == "table":
            measure.read_results(measured_mini, "sparsity")
        elif load == "strict":
            measure.read_results(load_profile(mini_path, overrides=MINI + ["sparsity.dead_freq=0.01"]), strict=True)
        elif load == "fit":
            analysis.activation_laws_for(measured_mini, progress=False)
        elif load == "record":
            measure.measure_run(measured_mini, run, rd, progress=False)
        elif load == "pareto":
            measure.read_results(measured_mini, "pareto")
        elif load == "train_log":
            runs.train_log_table(measured_mini, compute=False, runs_dir=rd)
        elif load == "log":
            runs.load_log(measured_mini, run, rd)
        else:
            measure.final_arrays(measured_mini, run, rd)
    for want in expect:
        assert want in str(e.value), str(e.value)
    assert _tree(tmp_path) == before  # refusing writes nothing
    assert "computing" not in capsys.readouterr().err  # refused before a fit is announced


def test_a_training_log_table_with_a_loss_missing_is_refused(tmp_path, monkeypatch, measured_mini, session_roots):
    """train_log.csv with a row without its loss (its sha256 resealed) is refused naming the line: the loss
    figures and the limit-loss fits dropped the point without a word."""
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "results"))
    runs.train_log_table(measured_mini, runs_dir=session_roots["SPARSINGLAW_RUNS"])
    path = tmp_path / "results" / measured_mini.name / "train_log.csv"
    assert len(runs.train_log_table(measured_mini, compute=False))
    _edit_csv(path, lambda df: df.assign(loss=df["loss"].where(df.index != 4)))
    with pytest.raises(SparsingLawError, match=r"train_log.csv: line 6, column loss: empty, where every row needs "
                                               r"a value; make it with python -m sparsinglaw compute"):
        runs.train_log_table(measured_mini, compute=False)


def test_an_unreadable_fit_sidecar_is_computed_again(tmp_path, monkeypatch, measured_mini, session_roots):
    """A derived table's sidecar that is not JSON (a crash, a hand edit) makes its table missing, so fit
    computes it again (it was a JSONDecodeError traceback)."""
    res = tmp_path / "results" / "mini"
    shutil.copytree(session_roots["SPARSINGLAW_RESULTS"] / "mini", res)
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "results"))
    fits, _ = analysis.activation_laws_for(measured_mini, progress=False)
    (res / "fits.meta.json").write_text("x")
    again, _ = analysis.activation_laws_for(measured_mini, progress=False)
    pd.testing.assert_frame_equal(again, fits)
    assert json.loads((res / "fits.meta.json").read_text())["sha256"] == hashlib.sha256(
        (res / "fits.csv").read_bytes()).hexdigest()
