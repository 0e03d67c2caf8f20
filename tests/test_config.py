"""Every profile loads and validates; bad configs fail before any work, naming the field."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from sparsinglaw import config
from sparsinglaw.config import (
    STAGE_PARTS,
    ConfigError,
    checkpoint_steps,
    load_profile,
    parse_profile,
    stage_steps,
    tokens_per_step,
    total_steps,
)

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_loads(name):
    p = load_profile(name)
    assert p.runs, name
    for r in p.runs:
        assert r.model.vocab_size == p.data.vocab_size
        ck = checkpoint_steps(r.model, r.train)
        warmup, stable, _ = stage_steps(r.model, r.train)
        assert len(ck) == r.train.checkpoints or r.train.checkpoint_tokens
        assert all(warmup < s <= warmup + stable for s in ck), (r.name, ck[:3], warmup)


def test_every_key_is_commented():
    """litgpt style: every key line of every profile carries a comment (meaning and unit)."""
    for name in PROFILES:
        for i, line in enumerate((REPO / "configs" / f"{name}.yaml").read_text().splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#") or s.startswith("- {"):
                continue
            if ":" in s and not s.startswith("-"):
                assert "#" in s, f"configs/{name}.yaml:{i}: key without a comment: {s}"


def _smoke_raw():
    return yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())


BAD = [
    (lambda r: r["model"].update(d_modle=3), "model.d_modle"),
    (lambda r: r["model"].update(head_dim=5), "head_dim"),
    (lambda r: r["runs"][0]["model"].update(activation="tanhh"), "runs[0].model.activation"),
    (lambda r: r["train"].update(lr=-1), "train.lr"),
    (lambda r: r["train"].update(tokens="many"), "train.tokens"),
    (lambda r: r["train"].update(warmup_frac=0.6, decay_frac=0.5), "decay_frac"),
    (lambda r: r["train"].update(checkpoints=400), "checkpoints"),
    (lambda r: r["train"].update(first_checkpoint_frac=0.001), "first_checkpoint_frac"),
    (lambda r: r["data"].update(vocab_size=100), "data.vocab_size"),
    (lambda r: r["data"].update(val_fraction=0.9), "data.val_fraction"),
    (lambda r: r["compute"].update(device="tpu"), "compute.device"),
    (lambda r: r["compute"].update(device=True), "compute.device"),
    (lambda r: r["compute"].update(compile="sometimes"), "compute.compile"),
    (lambda r: r["compute"].update(compile=1), "compute.compile"),
    (lambda r: r["compute"].update(compile_mode="fastest"), "compute.compile_mode"),
    (lambda r: r["runs"].append(copy.deepcopy(r["runs"][0])), "duplicate run name"),
    (lambda r: r["runs"][0].update(name="a b"), "runs[0].name"),
    (lambda r: r["runs"][1]["model"].update(vocab_size=99), "vocab_size"),
    (lambda r: r.update(runs=[]), "runs"),
    (lambda r: r.update(extra=1), "extra"),
    (lambda r: r["runs"][0]["model"].update(n_experts=3), "runs[0].model.n_experts"),  # 3 does not divide 40
    (lambda r: r["runs"][0]["model"].update(n_experts=-2), "runs[0].model.n_experts"),
    (lambda r: r["runs"][0]["model"].update(n_experts=4, top_k=5), "runs[0].model.top_k"),
    (lambda r: r["runs"][0]["model"].update(n_experts=4, aux_loss_coef=-1), "runs[0].model.aux_loss_coef"),
]


@pytest.mark.parametrize("mutate,field", BAD, ids=[b[1] for b in BAD])
def test_bad_config_names_the_field(mutate, field):
    raw = _smoke_raw()
    mutate(raw)
    with pytest.raises(ConfigError) as e:
        parse_profile(raw, "configs/smoke.yaml", "smoke")
    assert field in str(e.value) and "configs/smoke.yaml" in str(e.value)


def test_a_misspelled_run_group_is_refused_an_inference_group_is_not():
    """A group outside the analyses' (config.GROUPS) would drop the run from them silently: refused with the
    closest name; a group of one's own is fine when inference.group names it (Table 1 of chosen runs)."""
    raw = _smoke_raw()
    raw["runs"][0]["groups"] = ["scale", "seedz"]
    with pytest.raises(ConfigError) as e:
        parse_profile(raw, "configs/smoke.yaml", "smoke")
    assert str(e.value) == ("configs/smoke.yaml: runs[0].groups: unknown group 'seedz' of run relu-s1 (did you "
                            "mean 'seeds'?); the analyses read scale, seeds, width_depth, moe")
    raw["runs"][0]["groups"] = ["scale", "table1"]
    with pytest.raises(ConfigError, match="unknown group 'table1' of run relu-s1; the analyses read scale, seeds"):
        parse_profile(raw, "configs/smoke.yaml", "smoke")
    raw["inference"] = {**raw.get("inference", {}), "group": "table1"}
    assert parse_profile(raw, "configs/smoke.yaml", "smoke").run("relu-s1").groups == ["scale", "table1"]
    raw["runs"][1]["groups"] = ["tabel1"]
    with pytest.raises(ConfigError, match=r"runs\[1\].groups: unknown group 'tabel1' of run relu-s2 \(did you mean "
                                          r"'table1'\?\); the analyses read scale, seeds, width_depth, moe, and "
                                          r"inference.group is 'table1'"):
        parse_profile(raw, "configs/smoke.yaml", "smoke")


def test_overrides_and_unknown_profile(tmp_path):
    p = load_profile("smoke", overrides=["train.lr=0.003", "runs.relu-s1.train.tokens=20480"])
    assert p.run("silu-s1").train.lr == 0.003 and p.run("relu-s1").train.tokens == 20480
    with pytest.raises(ConfigError, match="train.lr"):
        load_profile("smoke", overrides=["train.lr=oops"])
    with pytest.raises(ConfigError, match="known profiles"):
        load_profile("no-such-profile")
    with pytest.raises(ConfigError, match="no run named"):
        load_profile("smoke", overrides=["runs.nope.train.lr=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(str(bad))


def test_compile_is_auto_true_false_or_blocks():
    assert load_profile("smoke").compute.compile is False and load_profile("cpu").compute.compile == "auto"
    assert load_profile("smoke", overrides=["compute.compile=auto"]).compute.compile == "auto"
    assert load_profile("cpu", overrides=["compute.compile=true"]).compute.compile is True
    assert load_profile("cpu", overrides=["compute.compile=blocks"]).compute.compile == "blocks"
    with pytest.raises(ConfigError, match="expected true, false, auto .* or blocks"):
        load_profile("cpu", overrides=["compute.compile=layers"])


def test_run_identity():
    a, b = load_profile("smoke"), load_profile("smoke", overrides=["compute.threads=2", "compute.compile=true"])
    assert [r.key(a.data) for r in a.runs] == [r.key(b.data) for r in b.runs]  # compute is not identity
    c = load_profile("smoke", overrides=["train.lr=0.02"])
    assert all(r.key(a.data) != s.key(c.data) for r, s in zip(a.runs, c.runs))
    assert a.run("relu-s1").key(a.data).startswith("relu-s1-")


def test_checkpoint_marks_are_geometric():
    p = load_profile("smoke", overrides=["train.tokens=1048576", "train.checkpoints=20",
                                         "train.first_checkpoint_frac=0.02", "train.warmup_frac=0.01"])
    r = p.run("relu-s1")
    tps = tokens_per_step(r.model, r.train)
    ck = checkpoint_steps(r.model, r.train)
    assert len(ck) == 20
    ratios = [b / a for a, b in zip(ck[5:], ck[6:])]
    assert max(ratios) / min(ratios) < 1.1  # geometric spacing (up to rounding to whole steps)
    warmup, stable, _ = stage_steps(r.model, r.train)
    assert ck[-1] == warmup + stable and ck[-1] * tps <= r.train.tokens


def test_exponents_without_a_dot_are_numbers():
    """YAML 1.1 reads 3e-3 and 1e6 as strings; the CLI help's own examples must still work."""
    p = load_profile("smoke", overrides=["train.lr=3e-3", "runs.relu-s1.train.tokens=49152"])
    assert p.run("silu-s1").train.lr == 0.003
    assert load_profile("smoke", overrides=["train.tokens=3.2e4"]).run("relu-s1").train.tokens == 32000
    with pytest.raises(ConfigError, match="train.lr: expected a number, got 'nan'"):
        load_profile("smoke", overrides=["train.lr=nan"])


def test_last_mark_is_the_stable_end_despite_float_rounding():
    """lo * (hi / lo) ** 1.0 can land one ulp above hi; its ceil must not push the stable-end mark past the
    stable stage (it used to be dropped, and a valid profile was refused as 'marks collapse')."""
    over = ["model.seq_len=64", "train.batch_size=1", "train.grad_accum=1", "train.tokens=247570",
            "train.checkpoints=5", "train.first_checkpoint_frac=0.05", "train.eval_tokens=2048"]
    r = load_profile("smoke", overrides=over).run("relu-s1")
    warmup, stable, _ = stage_steps(r.model, r.train)
    ck = checkpoint_steps(r.model, r.train)
    assert len(ck) == 5 and ck[-1] == warmup + stable


@pytest.mark.parametrize("mutate,field", [
    (lambda r: r["runs"][0].update(model=[1]), "runs[0].model"),
    (lambda r: r["runs"][0].update(model="relu"), "runs[0].model"),
    (lambda r: r["runs"][0].update(train="fast"), "runs[0].train"),
    (lambda r: r["data"].update(max_mb=float("inf")), "data.max_mb"),
    (lambda r: r["data"].update(tokenizer_mb=float("inf")), "data.tokenizer_mb"),
    (lambda r: r["train"].update(lr=float("inf")), "train.lr"),
    (lambda r: r["data"].update(packages=["stdlib", 1]), "data.packages"),
    (lambda r: r["data"].update(packages=[None]), "data.packages"),
    (lambda r: r.setdefault("sparsity", {}).update(p=[True]), "sparsity.p"),
    (lambda r: r["train"].update(checkpoint_tokens=[True]), "train.checkpoint_tokens"),
    (lambda r: r["runs"][0].update(model=[]), "runs[0].model"),
    (lambda r: r["runs"][0].update(train=0), "runs[0].train"),
    (lambda r: r.setdefault("sparsity", {}).update(p=[1, float("inf")]), "sparsity.p[1]"),
    (lambda r: r.setdefault("inference", {}).update(p=[1, float("inf")]), "inference.p[1]"),
    (lambda r: r.setdefault("sparsity", {}).update(fat_eps=[float("inf")]), "sparsity.fat_eps[0]"),
    (lambda r: r.setdefault("sparsity", {}).update(cett_sweep=[True, 0.5]), "sparsity.cett_sweep[0]"),
], ids=["run-model-list", "run-model-str", "run-train-str", "max_mb-inf", "tokenizer_mb-inf", "lr-inf",
        "packages-int", "packages-null", "p-bool", "checkpoint_tokens-bool", "run-model-empty-list",
        "run-train-zero", "p-inf", "inference-p-inf", "fat_eps-inf", "cett_sweep-bool"])
def test_more_bad_configs_name_the_field(mutate, field):
    """Not mappings, infinities (YAML .inf), non-string package names and booleans: one ConfigError naming
    the field, never a TypeError/OverflowError traceback later on."""
    test_bad_config_names_the_field(mutate, field)


def test_numbers_with_exponents_in_lists():
    """fat_eps: [1e-3] is read by YAML 1.1 as the string '1e-3'; numeric lists take it as the number."""
    p = load_profile("smoke", overrides=["sparsity.fat_eps=[1e-3, 0.1]", "sparsity.cett_sweep=[5e-2]",
                                         "train.checkpoint_tokens=[4e3, 8192]"])
    assert p.sparsity.fat_eps == [0.001, 0.1] and p.sparsity.cett_sweep == [0.05]
    assert p.run("relu-s1").train.checkpoint_tokens == [4000, 8192]
    assert all(isinstance(m, int) for m in p.run("relu-s1").train.checkpoint_tokens)
    assert load_profile("smoke", overrides=["sparsity.pareto_runs=[relu-s1]"]).sparsity.pareto_runs == ["relu-s1"]


def test_profile_name_is_not_shadowed_by_a_folder_in_the_working_directory(tmp_path, monkeypatch):
    """`--profile smoke` run from runs/ (which holds runs/smoke/) still means configs/smoke.yaml."""
    (tmp_path / "smoke").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_profile("smoke").name == "smoke"
    with pytest.raises(ConfigError, match="no such file"):
        load_profile("nothing-here.yaml")


def test_run_overrides_find_run_names_with_dots():
    """--set runs.NAME.… with a name that holds dots (cpu's relu-wd3.6, paper's relu-0.1b): the longest run name
    that fits (it used to split at every dot: "no run named 'relu-wd3'")."""
    assert load_profile("cpu", overrides=["runs.relu-wd3.6.train.seed=3"]).run("relu-wd3.6").train.seed == 3
    assert load_profile("paper", overrides=["runs.relu-0.1b.train.seed=3"]).run("relu-0.1b").train.seed == 3
    with pytest.raises(ConfigError, match="no run named 'relu-wd3'; runs: "):
        load_profile("cpu", overrides=["runs.relu-wd3.7.train.seed=3"])
    with pytest.raises(ConfigError, match="expected runs.NAME.model"):
        load_profile("smoke", overrides=["runs=[]"])


def test_run_override_stays_in_its_run_when_runs_share_an_anchor(tmp_path):
    """train: &short {...} / train: *short is one mapping in the loaded YAML: an override of one run must not
    reach the others."""
    raw = _smoke_raw()
    raw["runs"][1]["train"] = raw["runs"][2]["train"] = {"tokens": 24576}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert "&id001" in path.read_text() and "*id001" in path.read_text()  # an anchor and its alias
    p = load_profile(path, overrides=["runs.relu-s2.train.tokens=12288"])
    assert p.run("relu-s2").train.tokens == 12288 and p.run("silu-s1").train.tokens == 24576


def test_overrides_into_sections_written_empty(tmp_path):
    """`sparsity:` or a run's `train:` with no body (null in YAML) is an empty section, not "not a section"."""
    raw = _smoke_raw()
    raw["runs"][3]["train"], raw["sparsity"] = None, None
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    p = load_profile(path, overrides=["runs.silu-s2.train.seed=4", "sparsity.n_last=3"])
    assert p.run("silu-s2").train.seed == 4 and p.sparsity.n_last == 3


@pytest.mark.parametrize("override,message,neighbour", [
    ("train.checkpoint_tokens=[5000, 5100]", "runs[0].train.checkpoint_tokens: marks 5000 and 5100 fall in the same "
     "optimizer step (10, of 512 tokens)", "train.checkpoint_tokens=[5000, 5121]"),
    ("train.checkpoint_tokens=[4096, 4096]", "marks 4096 and 4096 fall in the same optimizer step (8, of 512 tokens)",
     "train.checkpoint_tokens=[4096]"),
    ("train.checkpoint_tokens=[1000, 5000]", "runs[0].train.checkpoint_tokens: the first checkpoint (1000 tokens, "
     "step 2) must come after the warmup (2 steps, 1024 tokens)", "train.checkpoint_tokens=[1025, 5000]"),
    ("train.seed=18446744073709551616", "smoke.yaml: train.seed: must be an integer in [0, 2**64)",
     "train.seed=18446744073709551615"),
    ("train.seed=-1", "smoke.yaml: train.seed: must be an integer in [0, 2**64)", "train.seed=0"),
    ("data.corpus=''", "data.corpus: is empty; expected python-env or the path of", None),
    ("data.corpus='  '", "data.corpus: is empty; expected python-env or the path of", None),
    ("train.batch_size=8.5", "smoke.yaml: train.batch_size: expected an integer, got 8.5", "train.batch_size=8.0"),
    ("train.first_checkpoint_frac=0.04", "runs[0].train.first_checkpoint_frac: the first checkpoint (step 2) must "
     "come after the warmup (2 steps)", "train.first_checkpoint_frac=0.045"),
], ids=["marks-one-step", "marks-repeated", "mark-in-warmup", "seed-2**64", "seed-negative", "corpus-empty",
        "corpus-blank", "integer-with-a-fraction", "first-mark-at-warmup-end"])
def test_values_refused_at_load_time(override, message, neighbour):
    """Explicit checkpoint marks get the grid's checks (marks in one optimizer step merged silently, marks in the
    warmup were never measured); a seed torch.manual_seed refuses (a ValueError when training started); an empty
    corpus path (it read the working directory as a folder corpus); an integer field given a fraction (not cut
    to an integer); a first grid mark at the last warmup step (step 2 of warmup round(0.05 * 48) = 2). The value
    just inside still loads."""
    with pytest.raises(ConfigError) as e:
        load_profile("smoke", overrides=[override])
    assert message in str(e.value) and "configs/smoke.yaml" in str(e.value), str(e.value)
    if neighbour:
        load_profile("smoke", overrides=[neighbour])


def test_duplicate_keys_are_refused_merge_keys_still_work(tmp_path):
    """A key written twice in one mapping of a profile: the last one silently won. Anchors, aliases and merge
    keys (<<: *a, whose keys the mapping may override) still load."""
    text = (REPO / "configs" / "smoke.yaml").read_text()
    lr = next(line for line in text.splitlines() if line.startswith("  lr: "))
    n = text.splitlines().index(lr) + 1
    bad = tmp_path / "dup.yaml"
    bad.write_text(text.replace(lr, f"{lr}\n  lr: 0.5"))
    with pytest.raises(ConfigError, match=rf"dup.yaml: not valid YAML: line {n + 1}, column 3: duplicate key 'lr' "
                                          rf"\(first on line {n}\); keep one of them"):
        load_profile(bad)
    with pytest.raises(ConfigError, match="value is not valid YAML .*duplicate key 'lr'"):
        load_profile("smoke", overrides=["train={lr: 0.1, lr: 0.2}"])
    merged = tmp_path / "merged.yaml"
    merged.write_text(text.replace("  - {name: relu-s1,", "  - &r1 {name: relu-s1,")
                      + "  - {<<: *r1, name: relu-s1-copy, train: {<<: {seed: 1, lr: 0.02}, seed: 2}}\n")
    p = load_profile(merged)
    assert p.run("relu-s1-copy").model == p.run("relu-s1").model and p.run("relu-s1-copy").groups == ["scale", "seeds"]
    assert p.run("relu-s1-copy").train.seed == 2 and p.run("relu-s1-copy").train.lr == 0.02
    for doc in ("b: &b {a: 1, c: 2}\nt:\n  <<: &m {<<: *b, a: 3}\nu: *m\n",  # a merge inside a merge, then aliased
                "b: &b {a: 1}\nt: {<<: [*b, {c: 2}], a: 3, d: *b}\n"):
        assert yaml.load(doc, Loader=config.ProfileLoader) == yaml.safe_load(doc)  # as SafeLoader reads it


def test_profile_level_override_that_runs_set_themselves_gets_a_note(capsys, monkeypatch):
    """--set model.X / train.X changes the defaults; a run that sets X in its own section keeps its value. That
    did nothing, silently: now one line on stderr per such key names the runs whose own value differs and the
    per-run override."""
    monkeypatch.setattr(config, "_NOTED", set(), raising=False)
    over = ["model.d_model=24", "model.activation=silu", "train.seed=3", "runs.relu-s1-seed1.train.seed=3",
            "train.lr=0.02"]
    p = load_profile("smoke", overrides=over)
    assert p.run("relu-s1").model.activation == "relu" and p.run("relu-s1").train.lr == 0.02
    tail = f" in {p.path} and keep it; use --set runs.NAME."
    assert capsys.readouterr().err.splitlines() == [
        f"note: --set model.d_model: all 8 runs set their own model.d_model{tail}model.d_model=VALUE to change one",
        "note: --set model.activation: 4 of 8 runs (relu-s1, relu-s2, relu-wd1, relu-s1-seed1) set their own "
        f"model.activation{tail}model.activation=VALUE to change one",
        f"note: --set train.seed: 1 of 8 runs (silu-s1-seed1) set their own train.seed{tail}train.seed=VALUE to "
        "change one"]
    load_profile("smoke", overrides=over)  # a second load in this process (a run trained in-process): no repeat
    monkeypatch.setattr(config, "_NOTED", set(), raising=False)
    monkeypatch.setenv("RANK", "1")  # torchrun's other ranks leave it to rank 0
    load_profile("smoke", overrides=over)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("override,field", [
    ("model.activation=tanh", "model.activation: unknown activation 'tanh'"),  # every smoke run sets its own
    ("model.d_model=-8", "model.d_model"),  # every smoke run sets its own, too
    ("train.lr=-0.01", "train.lr"),
])
def test_a_bad_shared_value_is_refused_even_where_every_run_overrides_it(override, field):
    """The shared model and train sections are checked on their own: a bad value there was accepted (with the
    note above) as long as every run set its own, and would surface in the next run that does not."""
    want = f"--set '{re.escape(override)}' is refused: .*smoke.yaml: {re.escape(field)}"
    with pytest.raises(ConfigError, match=want):
        load_profile("smoke", overrides=[override])


def test_a_yaml_named_like_a_builtin_profile_is_refused(tmp_path, monkeypatch):
    """A user's cpu.yaml elsewhere would be profile "cpu": it would fit, verify and overwrite the committed
    results/cpu and figures/cpu (it did). The built-in file itself, by name or path, still loads."""
    copy = tmp_path / "cpu.yaml"
    copy.write_text((REPO / "configs" / "smoke.yaml").read_text())
    monkeypatch.delenv("SPARSINGLAW_RESULTS")
    monkeypatch.delenv("SPARSINGLAW_FIGURES")
    with pytest.raises(ConfigError, match=r"cpu.yaml: a profile is named by its file, and 'cpu' is the profile "
                                          r".*configs/cpu.yaml: results/cpu/ and figures/cpu/ hold .*rename it"):
        load_profile(copy)
    assert load_profile(REPO / "configs" / "cpu.yaml").name == load_profile("cpu").name == "cpu"
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "res"))  # the folders it would write are named
    res = re.escape(str(tmp_path / "res" / "cpu"))
    with pytest.raises(ConfigError, match=rf"is the profile .*: {res}/ and figures/cpu/"):
        load_profile(copy)
    shutil.copy(copy, tmp_path / "my-cpu.yaml")
    assert load_profile(tmp_path / "my-cpu.yaml").name == "my-cpu"


def test_profile_flags_load_the_same_profile_again(tmp_path):
    """The --profile argument that error messages suggest: the name for this repository's configs/NAME.yaml,
    else the YAML's absolute path (a copy in another folder named configs, too), then the overrides."""
    from sparsinglaw.config import profile_flags

    assert profile_flags(load_profile("smoke")) == "--profile smoke"
    copy = tmp_path / "configs" / "copied.yaml"
    copy.parent.mkdir()
    copy.write_text((REPO / "configs" / "smoke.yaml").read_text())
    p = load_profile(copy, overrides=["train.seed=3", "train.lr=1e-3"])
    assert profile_flags(p) == f"--profile {copy.resolve()} --set train.seed=3 --set train.lr=1e-3"
    assert profile_flags(load_profile(p.path, overrides=p.overrides)) == profile_flags(p)


def test_schedule_lengths_and_marks_by_hand_with_accumulation_and_decay():
    """Two micro-batches of 4 windows of 64 tokens: 512 tokens a step, ceil(12000 / 512) = 24 steps (the last
    one partly past the budget), warmup round(0.11 * 24) = 3, decay round(0.23 * 24) = 6, stable 15; marks
    geometric from 0.3 of the stable end (18 steps, 9216 tokens): 2764.8 * (9216 / 2764.8) ** (i / 3) tokens
    = 5.4, 8.07, 12.05 and 18 steps, each taken at the first step that reaches it (all hand computed)."""
    over = ["train.tokens=12000", "train.batch_size=4", "train.grad_accum=2", "train.warmup_frac=0.11",
            "train.decay_frac=0.23", "train.checkpoints=4", "train.first_checkpoint_frac=0.3", "train.eval_tokens=1024"]
    r = load_profile("smoke", overrides=over).run("relu-s1")
    assert tokens_per_step(r.model, r.train) == 512 and total_steps(r.model, r.train) == 24
    assert stage_steps(r.model, r.train) == (3, 15, 6)
    assert checkpoint_steps(r.model, r.train) == [6, 9, 13, 18]


def test_profile_hash_covers_the_measurement_settings():
    """Results tables record the profile's config_hash to be found stale: a change of the measurement settings
    alone changes it (though no run's key), as a change of the data settings changes both."""
    base = load_profile("smoke")
    sparsity = load_profile("smoke", overrides=["sparsity.n_grid=4096"])
    data = load_profile("smoke", overrides=["data.max_mb=0.5"])
    assert sparsity.config_hash() != base.config_hash() != data.config_hash()
    assert [r.key(sparsity.data) for r in sparsity.runs] == [r.key(base.data) for r in base.runs]
    assert all(r.key(base.data) != s.key(data.data) for r, s in zip(base.runs, data.runs, strict=True))


def test_run_override_takes_the_longest_run_name_that_fits(tmp_path):
    """Runs named s and s.2: runs.s.2.train.seed=3 is run s.2's seed (the longest name that fits), not a field
    "2" of run s."""
    raw = _smoke_raw()
    raw["runs"][0]["name"], raw["runs"][1]["name"] = "s", "s.2"
    raw["sparsity"]["pareto_runs"] = []
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    p = load_profile(path, overrides=["runs.s.2.train.seed=3"])
    assert p.run("s.2").train.seed == 3 and p.run("s").train.seed == 0


def test_a_bad_override_is_named_before_the_file(tmp_path):
    """An error in a field a --set wrote leads with that --set (the message named only the YAML file and
    runs[0], where a profile-level train.X is checked first); an error of the file itself does not."""
    for ov, head in (("train.checkpoint_tokens=[5000, 5100]", "--set 'train.checkpoint_tokens=[5000, 5100]' (a "
                      "profile-level override, checked in every run) is refused: "),  # a check of the run's shape
                     ("train.lrr=3e-3", "--set 'train.lrr=3e-3' is refused: "),  # the shared section's own check
                     ("trian.lr=3e-3", "--set 'trian.lr=3e-3' is refused: "),
                     ("runs.relu-s1.train.lr=abc", "--set 'runs.relu-s1.train.lr=abc' is refused: ")):
        with pytest.raises(ConfigError) as e:
            load_profile("smoke", overrides=[ov])
        assert str(e.value).startswith(head) and "configs/smoke.yaml: " in str(e.value), str(e.value)
    with pytest.raises(ConfigError) as e:  # a key set twice: the last value is the one checked
        load_profile("smoke", overrides=["sparsity.n_grid=4096", "sparsity.n_grid=100.5"])
    assert str(e.value).startswith("--set 'sparsity.n_grid=100.5' is refused: "), str(e.value)
    bad = tmp_path / "bad-lr.yaml"
    bad.write_text((REPO / "configs" / "smoke.yaml").read_text().replace("train:", "train:\n  lrr: 1\n", 1))
    with pytest.raises(ConfigError) as e:
        load_profile(bad, overrides=["train.lr=3e-3"])
    assert str(e.value).startswith(f"{bad}: ") and "lrr: unknown field" in str(e.value)


def test_a_change_of_one_runs_settings_changes_the_train_and_measure_stage_hashes():
    """One run's lr is part of its identity, so every table made from
    the runs (train, measure stages) must be found stale; the data part alone stays the same."""
    base = load_profile("smoke")
    other = load_profile("smoke", overrides=["runs.relu-s1.train.lr=0.02"])
    assert other.part_hash("data") == base.part_hash("data")
    for stage in ("train", "measure", "inference"):
        assert other.part_hash(*STAGE_PARTS[stage]) != base.part_hash(*STAGE_PARTS[stage]), stage
    assert other.config_hash() != base.config_hash()


def test_fit_numbers_in_scientific_notation_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-8 as a string: --set fit.tol=1e-8 (or tol: 1e-10 in a file) was refused as "wrong type
    for tol='1e-8'" while every other section took it; an integral one is an int (fit.n_boot=1e2)."""
    from sparsinglaw.analysis import fit_spec

    spec = fit_spec(load_profile("smoke", overrides=["fit.tol=1e-8", "fit.n_boot=1e2", "fit.min_D=1e-3"]))
    assert (spec.tol, spec.n_boot, spec.min_D) == (1e-8, 100, 1e-3) and isinstance(spec.n_boot, int)
    path = tmp_path / "p.yaml"
    path.write_text((REPO / "configs" / "smoke.yaml").read_text().replace("tol: 1.0e-10", "tol: 1e-9", 1))
    assert fit_spec(load_profile(path)).tol == 1e-9
    assert fit_spec(load_profile("smoke", overrides=["fit.loss=soft_l1"])).loss == "soft_l1"  # words stay words


def test_the_profile_hash_covers_the_fit_settings_but_no_stage_hash_does():
    """config_hash is documented as data + runs + sparsity + fit; a fit setting
    moves it and moves none of the stage hashes (tables of the model stages stay current)."""
    base = load_profile("smoke")
    fit = load_profile("smoke", overrides=["fit.n_boot=7"])
    assert fit.config_hash() != base.config_hash()
    for stage, parts in STAGE_PARTS.items():
        assert fit.part_hash(*parts) == base.part_hash(*parts), stage


@pytest.mark.parametrize("override, field, ok", [
    ("train.decay_min_lr_frac=0", "train.decay_min_lr_frac", "train.decay_min_lr_frac=1"),  # C8: (0, 1]
    ("data.vocab_size=256", "data.vocab_size", "data.vocab_size=257"),  # C9: > 256 byte tokens
    ("data.vocab_size=4294967297", "data.vocab_size", "data.vocab_size=4294967296"),  # token ids in uint32
    ("sparsity.eval_tokens=63", "sparsity.eval_tokens", "sparsity.eval_tokens=64"),  # C16: >= one window of 64
    ("sparsity.n_grid=1", "sparsity.n_grid", "sparsity.n_grid=2"),  # a grid from min n_i to the 0.99 quantile
])
def test_bounds_refuse_just_outside_and_accept_the_edge(override, field, ok):
    """Each bound at its edge: the value just outside is refused naming the field, the edge itself loads."""
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_profile("smoke", overrides=[override])
    load_profile("smoke", overrides=[ok])


def test_one_optimizer_step_of_tokens_is_refused_two_are_not():
    """512 tokens per step: tokens=512 is one step -> refused on train.tokens; 1024 is two steps
    (warmup round(0.05*2)=0, stable 2, one mark at step 2) and loads."""
    common = ["train.checkpoints=1", "train.eval_tokens=64"]
    with pytest.raises(ConfigError, match=r"train\.tokens"):
        load_profile("smoke", overrides=common + ["train.tokens=512"])
    load_profile("smoke", overrides=common + ["train.tokens=1024"])


def test_an_explicit_mark_at_the_stable_end_itself_is_accepted():
    """tokens=12000, batch 4 x accum 2 x 64 = 512 tokens/step -> 24 steps; warmup
    round(0.11*24)=3, decay round(0.23*24)=6, stable 15: the stable stage ends at step 18 = 9216 tokens."""
    common = ["train.tokens=12000", "train.batch_size=4", "train.grad_accum=2", "train.warmup_frac=0.11",
              "train.decay_frac=0.23", "train.eval_tokens=1024"]
    load_profile("smoke", overrides=common + ["train.checkpoint_tokens=[4096, 9216]"])
    with pytest.raises(ConfigError, match=r"checkpoint_tokens.*\(0, 9216\]"):
        load_profile("smoke", overrides=common + ["train.checkpoint_tokens=[4096, 9217]"])
