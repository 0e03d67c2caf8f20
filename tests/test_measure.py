"""The measurement stage: every stable checkpoint measured at the run's one CETT value, cached,
results tables with provenance, clear errors for untrained runs."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, nonzero_share
from sparsinglaw import measure, runs
from sparsinglaw.config import SparsingLawError, load_profile, stable_hash

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny():
    return load_profile("smoke", overrides=TINY + ["sparsity.eval_tokens=1024", "sparsity.n_grid=4096",
                                                   "sparsity.pareto_runs=[relu-s1]"])


def test_measure_run(tiny, smoke_tokens):
    runs.train_profile(tiny, names=["relu-s1", "silu-s1"], jobs=1, progress=False)
    run = tiny.run("relu-s1")
    rec = measure.measure_run(tiny, run, progress=False)
    rows = pd.DataFrame(rec["rows"])
    ck = measure.stable_checkpoints(tiny, run)
    assert list(rows["step"]) == list(ck["step"])  # every stable checkpoint, in order
    assert rows["cett"].nunique() == 1 and rows["cett"].iloc[0] == rec["search"]["1.0"]["cett"]
    searched = rows[rows["searched"]]
    assert len(searched) == min(5, len(rows)) and searched["step"].tolist() == ck["step"].tolist()[-5:]
    assert searched["ppl_ratio"].mean() < 1.01  # Algorithm 1's constraint at the reported c
    assert rows["reached"].all() and rec["search"]["1.0"]["reached"] is True  # a tested c crossed 1.01
    assert list(rows.columns) == measure.RESULT_COLUMNS["sparsity"][0][7:]  # all but the run columns
    assert rows[["activation_ratio", "dense_loss", "nonzero_ratio", "dead_ratio"]].notna().all().all()
    assert ((rows["activation_ratio"] > 0) & (rows["activation_ratio"] <= 1)).all()
    # per-layer ratios average to the overall ratio; exact zeros of ReLU keep more than PPL-1% here
    for _, r in rows.iterrows():
        layers = [float(v) for v in r["layer_ratios"].split(";")]
        assert len(layers) == run.model.n_layers and math.isclose(np.mean(layers), r["activation_ratio"], abs_tol=1e-5)
    arrays = measure.final_arrays(tiny, run)
    assert arrays["neuron_frequency"].shape == (run.model.n_layers, run.model.d_ff)
    # the values, not just their presence: exact zeros against a hook on the gate projection of every
    # checkpoint (share of valid (token, neuron) pairs with relu(W_gate x) != 0), dead neurons against the
    # final checkpoint's activation frequencies at PPL-1% (sparsity.p = [1] here)
    batches = measure.eval_set(tiny, smoke_tokens, run.model.seq_len)
    for path, r in zip(ck["path"], rows.itertuples(), strict=True):
        share = np.mean(nonzero_share(measure.load_model(run, path), batches))  # layers of equal width
        assert r.nonzero_ratio == pytest.approx(share, abs=1e-9)
        assert r.nonzero_ratio < 0.95 and r.dead_ratio < 1.0
    assert rows["dead_ratio"].iloc[-1] == (arrays["neuron_frequency"] < tiny.sparsity.dead_freq).mean()
    assert arrays["domain_frequency"].shape[0] == 2 and arrays["token_count"].sum() == rows["n_tokens"].iloc[-1]
    # cached: a second call reads the record instead of recomputing
    path = runs.run_dir(tiny, run) / f"sparsity-fast-{measure.measure_key(tiny, run)}.json"
    assert measure.record_path(tiny, run) == path
    mtime = path.stat().st_mtime_ns
    assert measure.measure_run(tiny, run, progress=False) == json.loads(path.read_text())
    assert path.stat().st_mtime_ns == mtime
    # so does a profile with other Pareto sweeps: they are not what this record measured
    swept = load_profile("smoke", overrides=tiny.overrides + ["sparsity.cett_sweep=[0.1]", "sparsity.pareto_runs=[]"])
    assert measure.measure_run(swept, swept.run("relu-s1"), progress=False) == json.loads(path.read_text())
    assert path.stat().st_mtime_ns == mtime and "cett_sweep" not in json.loads(path.read_text())["sparsity"]
    # a record written before the column was renamed (exact_zero_ratio) reads with the new name, same values
    rec = json.loads(path.read_text())
    old = [{("exact_zero_ratio" if k == "nonzero_ratio" else k): v for k, v in r.items()} for r in rec["rows"]]
    path.write_text(json.dumps(rec | {"rows": old}))
    again = measure.measure_run(tiny, run, progress=False)
    assert again["rows"] == rec["rows"] and all(list(a) == list(r) for a, r in zip(again["rows"], rec["rows"]))


def test_a_record_without_its_arrays_is_measured_again(tiny, smoke_tokens, capsys):
    """The .npz beside a record deleted: measure_run measured nothing (it returned the record) while
    final_arrays sent the user back to that same command; now it notes the loss and measures the run again,
    to the same rows and arrays."""
    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    run = tiny.run("relu-s1")
    rec = measure.measure_run(tiny, run, progress=False)
    arrays = measure.final_arrays(tiny, run)
    npz = measure.record_path(tiny, run).with_suffix(".npz")
    npz.unlink()
    capsys.readouterr()
    again = measure.measure_run(tiny, run, progress=False)
    assert f"note: run relu-s1: the arrays of its measurement ({npz.name}) are missing; measuring it again" \
        in capsys.readouterr().out
    assert npz.exists() and again["rows"] == rec["rows"]
    for k, v in measure.final_arrays(tiny, run).items():
        np.testing.assert_array_equal(v, arrays[k])


def test_a_run_named_twice_is_trained_and_measured_once(tiny, smoke_tokens, capsys):
    """`train --run relu-s1 --run relu-s1` said "2/2 runs done" and a -j 2 train would have given both
    workers the same run: the names are taken once each, in their order."""
    states = runs.train_profile(tiny, names=["relu-s1", "relu-s1"], jobs=2, progress=False)
    assert [s.name for s in states] == ["relu-s1"]
    table = measure.measure_profile(tiny, names=["relu-s1", "relu-s1"], jobs=2, progress=False)
    assert set(table["run"]) == {"relu-s1"} and not table.duplicated(["run", "step", "p"]).any()


def test_keys_read_only_the_settings_they_depend_on():
    """Every sparsity field but the Pareto sweeps' changes the measurement's key, so a cached measurement
    is never reused under other settings; the sweeps' values change only the sweep's key, and which runs
    are swept changes neither (another sweep measures no checkpoint again)."""
    base = load_profile("smoke")
    run = base.run("relu-s2")
    other = {"p": [1.0, 5.0], "eval_tokens": 4096, "batch_size": 4, "n_grid": 1024, "tol": 0.01,
             "search": "secant", "n_last": 2, "impl": "reference", "dead_freq": 0.01, "pareto_runs": ["relu-s2"],
             "cett_sweep": [0.1], "topk_fracs": [0.5], "fat_eps": [0.1]}
    assert set(other) == {f.name for f in dataclasses.fields(base.sparsity)}  # a new field must be added here
    for name, value in other.items():
        changed = dataclasses.replace(base, sparsity=dataclasses.replace(base.sparsity, **{name: value}))
        assert getattr(changed.sparsity, name) != getattr(base.sparsity, name), name
        measured = measure.measure_key(changed, run) != measure.measure_key(base, run)
        swept = measure.pareto_key(changed, run) != measure.pareto_key(base, run)
        assert measured == (name not in measure.SWEEP_FIELDS), name
        assert swept == (name != "pareto_runs"), name  # the sweep's table includes the PPL-p% points
        assert (measure.record_path(changed, run) == measure.record_path(base, run)) == (not measured), name
        moe = base.run("silu-moe4")  # sweeps its routed experts only: the dense sweeps' values are not its key
        moe_swept = measure.pareto_key(changed, moe) != measure.pareto_key(base, moe)
        assert moe_swept == (name not in measure.SWEEP_FIELDS), name


def test_results_tables_have_provenance(tiny, smoke_tokens, isolated_roots):
    runs.train_profile(tiny, names=["relu-s1", "silu-s1"], jobs=1, progress=False)
    sub = load_profile("smoke", overrides=tiny.overrides)
    sub.runs = [sub.run("relu-s1"), sub.run("silu-s1")]
    table = measure.write_results(sub)
    out = isolated_roots["SPARSINGLAW_RESULTS"] / "smoke"
    for name in ("sparsity", "neurons", "tokens"):
        meta = json.loads((out / f"{name}.meta.json").read_text())
        for key in ("git_sha", "git_dirty", "config_hash", "corpus", "versions", "device", "sha256"):
            assert key in meta, (name, key)
        assert meta["corpus"]["sha256"] == smoke_tokens.fingerprint["sha256"]
    assert set(table["run"]) == {"relu-s1", "silu-s1"}
    assert table.loc[table["activation"] == "silu", "nonzero_ratio"].isna().all()
    neurons = pd.read_csv(out / "neurons.csv")
    assert {"run", "layer", "neuron", "all", "code", "prose"} <= set(neurons.columns)
    assert neurons["all"].between(0, 1).all()


def test_impl_override_reaches_the_arrays_and_the_provenance(tiny, smoke_tokens, isolated_roots, monkeypatch):
    """measure --impl reference on a profile whose sparsity.impl is fast: final_arrays and write_results
    read that measurement's arrays (not the fast ones, which may not exist), and the tables' provenance
    names the impl actually used. The fast and reference arrays are equal (same thresholds), so the files
    opened are what tells them apart: after test_measure_run the fast ones do exist."""
    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    run = tiny.run("relu-s1")
    rec = measure.measure_run(tiny, run, progress=False, impl="reference")
    opened, load = [], np.load
    monkeypatch.setattr(np, "load", lambda f, *a, **k: opened.append(str(f)) or load(f, *a, **k))
    assert tiny.sparsity.impl == "fast" and rec["impl"] == rec["sparsity"]["impl"] == "reference"
    ref = dataclasses.replace(tiny, sparsity=dataclasses.replace(tiny.sparsity, impl="reference"))
    path = runs.run_dir(tiny, run) / f"sparsity-reference-{measure.measure_key(ref, run)}.npz"
    arrays = measure.final_arrays(tiny, run, impl="reference")
    with np.load(path) as z:
        assert set(arrays) == set(z.files) and all(np.array_equal(arrays[k], z[k]) for k in z.files)
    sub = load_profile("smoke", overrides=tiny.overrides)
    sub.runs = [sub.run("relu-s1")]
    table = measure.write_results(sub, impl="reference")
    assert table["cett"].iloc[0] == rec["rows"][0]["cett"]
    out = isolated_roots["SPARSINGLAW_RESULTS"] / "smoke"
    for name in ("sparsity", "neurons", "tokens"):
        assert json.loads((out / f"{name}.meta.json").read_text())["sparsity"]["impl"] == "reference", name
    neurons = pd.read_csv(out / "neurons.csv")
    np.testing.assert_allclose(neurons["all"], arrays["neuron_frequency"].ravel(), rtol=0, atol=1e-12)
    arrays_read = [f for f in opened if "sparsity-" in f]
    assert len(arrays_read) >= 3 and all("sparsity-reference-" in f for f in arrays_read), arrays_read
    assert measure.with_impl(tiny, "reference") == ref and measure.with_impl(tiny, None) is tiny


def test_pareto_points(tiny, smoke_tokens, capsys):
    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    measure.measure_run(tiny, tiny.run("relu-s1"), progress=False)
    capsys.readouterr()
    df = measure.pareto_run(tiny, tiny.run("relu-s1"), progress=True)
    assert {"cett", "topk", "topk_batch", "fat", "zeros", "ppl-1%"} <= set(df["method"])
    swept = (~df["method"].str.startswith("ppl-")).sum()  # the bar counts every swept point, to the end
    last = capsys.readouterr().err.splitlines()[-1]  # tqdm's last redraw (splitlines breaks at \r too)
    assert last.startswith("pareto relu-s1: 100%") and f" {swept}/{swept} " in last, last
    zeros = df[df["method"] == "zeros"].iloc[0]
    assert zeros["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)  # dropping exact zeros of ReLU changes nothing
    cett = df[df["method"] == "cett"].sort_values("param")
    assert cett["activation_ratio"].is_monotonic_decreasing
    d_ff = tiny.run("relu-s1").model.d_ff
    ks = measure.topk_ks(tiny.sparsity.topk_fracs, d_ff)
    top = df[df["method"] == "topk"]
    assert sorted(top["param"].astype(int)) == ks
    top = top.sort_values("param")  # at most k of d_ff: kept zeros do not count (test_sparsity has the oracle)
    assert (top["activation_ratio"] <= top["param"] / d_ff + 1e-9).all()
    assert top["activation_ratio"].is_monotonic_increasing


def test_a_damaged_pareto_cache_is_refused_naming_it(tiny, smoke_tokens, tmp_path, monkeypatch):
    """A cached sweep cut short, emptied or edited is refused with one message naming the file and the fix;
    it was returned as is, and the Pareto figures and claims went on with fewer or NaN points."""
    from sparsinglaw.config import SparsingLawError

    run = tiny.run("relu-s1")
    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    df = measure.pareto_run(tiny, run, progress=False)
    assert len(df) == measure.swept_points(tiny, run) + 1  # the swept points and the PPL-1% point
    d = tmp_path / "runs"
    shutil.copytree(runs.run_dir(tiny, run).parent, d / tiny.name)
    monkeypatch.setenv("SPARSINGLAW_RUNS", str(d))
    path = next(runs.run_dir(tiny, run).glob("pareto-*.csv"))
    good = path.read_bytes()
    pd.testing.assert_frame_equal(measure.pareto_run(tiny, run, progress=False), df)  # intact: cached
    lines = good.decode().splitlines(keepends=True)
    cut_row = "".join(lines[:5]) + lines[5][:25]  # a row cut in the middle of a number
    text = good.decode().replace(lines[3].split(",")[-1].strip(), "x", 1)
    for damaged, what in ((good[:0], "the file is empty"), (b'a,b\n"x\n', "unreadable as CSV"),
                          ("".join(lines[:-2]).encode(), f"{len(df) - 2} points"),
                          (cut_row.encode(), "cut short: its last line has no end"), (good[:-3], "cut short"),
                          (cut_row.encode() + b"\n", "5 points"), (text.encode(), "text in the numeric column"),
                          (good.replace(b"ppl_ratio", b"ratio"), "its columns are")):
        path.write_bytes(damaged)
        with pytest.raises(SparsingLawError) as e:
            measure.pareto_run(tiny, run, progress=False)
        msg = str(e.value)
        assert msg.startswith(f"{path}: the cached Pareto sweep of run relu-s1 is damaged (") and what in msg, msg
        assert "delete it to sweep again (python -m sparsinglaw compute" in msg and "\n" not in msg
    path.unlink()  # the fix it names
    pd.testing.assert_frame_equal(measure.pareto_run(tiny, run, progress=False), df)


def test_pareto_with_empty_sweeps_keeps_the_zeros_and_ppl_p_points(tiny, smoke_tokens):
    """No CETT, Top-k or FAT point asked for: the exact-zeros point takes its dense loss from its own pass
    (it read the first sweep point's, an IndexError), the same as the measurement's dense loss."""
    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    p = load_profile("smoke", overrides=tiny.overrides + ["sparsity.cett_sweep=[]", "sparsity.topk_fracs=[]",
                                                          "sparsity.fat_eps=[]"])
    df = measure.pareto_run(p, p.run("relu-s1"), progress=False)
    assert sorted(df["method"]) == ["ppl-1%", "zeros"]
    zeros, ppl = (df[df["method"] == m].iloc[0] for m in ("zeros", "ppl-1%"))
    assert zeros["dense_loss"] == pytest.approx(ppl["dense_loss"], rel=1e-6)
    assert zeros["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_relu_squared_gets_its_exact_zeros_measured(tiny, smoke_tokens):
    """ReLU^2 zeroes negative inputs as ReLU does: its non-zero ratio and the Pareto sweep's exact-zeros
    point are measured too (they were ReLU's only, by name, while sparse inference counted relu2's zeros)."""
    p = load_profile("smoke", overrides=tiny.overrides + ["runs.relu-s1.model.activation=relu2"])
    run = p.run("relu-s1")
    runs.train_profile(p, names=["relu-s1"], jobs=1, progress=False)
    rows = pd.DataFrame(measure.measure_run(p, run, progress=False)["rows"])
    batches = measure.eval_set(p, smoke_tokens, run.model.seq_len)
    ck = measure.stable_checkpoints(p, run)
    last = np.mean(nonzero_share(measure.load_model(run, ck["path"].iloc[-1]), batches))
    assert rows["nonzero_ratio"].notna().all() and rows["nonzero_ratio"].iloc[-1] == pytest.approx(last, abs=1e-9)
    zeros = measure.pareto_run(p, run, progress=False).query("method == 'zeros'")
    assert len(zeros) == 1 and zeros["activation_ratio"].iloc[0] == pytest.approx(last, abs=1e-9)

    def before(pr, r):  # the key a measurement had when only relu's exact zeros were measured
        return stable_hash({"v": measure.MEASURE_VERSION, "run": r.config_hash(pr.data),
                            "sparsity": measure.measured_settings(pr)})[:10]

    assert measure.measure_key(p, run) != before(p, run)  # a relu2 record without them is measured again
    for r in tiny.runs:  # relu's, silu's and the MoE runs' records stay valid
        assert measure.measure_key(tiny, r) == before(tiny, r), r.name


def test_topk_ks_round_to_the_nearest_k():
    """k = round(f * d_ff), at least 1, each once: at d_ff = 32, 0.05 -> 1.6 -> 2 (not 1), 0.3 -> 9.6 -> 10."""
    assert measure.topk_ks([0.05, 0.1, 0.2, 0.3, 0.5, 0.7], 32) == [2, 3, 6, 10, 16, 22]
    assert measure.topk_ks([0.001, 0.002], 100) == [1]


def test_pareto_without_its_checkpoints_is_one_error_line(tiny, smoke_tokens, tmp_path, monkeypatch, capsys):
    """Checkpoints deleted after measuring (to free disk): the cached measurement is still returned, and
    the Pareto sweep, which needs the final stable checkpoint, stops `compute` with one error line naming
    the missing checkpoints (it was an IndexError traceback)."""
    from sparsinglaw import cli

    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    run, rd = tiny.run("relu-s1"), tmp_path / "runs"
    rec = json.loads(json.dumps(measure.measure_run(tiny, run, progress=False)))  # as its cache reads back
    d = runs.run_dir(tiny, run, rd)
    shutil.copytree(runs.run_dir(tiny, run), d, ignore=shutil.ignore_patterns("pareto-*", "inference-*"))
    for pt in d.glob("ckpt_*.pt"):
        pt.unlink()
    assert measure.measure_run(tiny, run, rd, progress=False) == rec
    for stage in ("train_profile", "train_log_table"):  # compute's stages before the sweep: nothing to do
        monkeypatch.setattr(runs, stage, lambda *a, **k: None)
    monkeypatch.setattr(measure, "measure_profile", lambda *a, **k: None)
    sets = sum((["--set", s] for s in tiny.overrides), [])
    rc = cli.main(["compute", "--profile", "smoke", "--runs-dir", str(rd), "--no-progress", *sets])
    err = capsys.readouterr().err
    steps = ", ".join(map(str, measure.stable_marks(run)))
    assert rc == 2 and err.startswith(f"error: run relu-s1: stable-stage checkpoint(s) of step(s) {steps} "), err
    assert "ckpt_" in err and "missing although" in err and len(err.splitlines()) == 1, err
    assert not list(d.glob("pareto-*"))


def test_cached_runs_start_no_worker(measured_mini, session_roots, tmp_path, monkeypatch):
    """measure_profile sends only the runs without a cached measurement to worker processes (each would
    import torch only to read a JSON file), and writes the same results tables from the cache."""
    sent = []

    class Sent(Exception):
        pass

    def spy(fn, calls, jobs, what, **kwargs):
        sent.append(kwargs["names"])  # the run names
        if calls:
            raise Sent

    monkeypatch.setattr(measure, "run_parallel", spy)
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path / "results"))
    measure.measure_profile(measured_mini, jobs=2, progress=False)
    assert sent == [[]]
    first = session_roots["SPARSINGLAW_RESULTS"] / "mini"
    for name in ("sparsity", "neurons", "tokens"):
        assert (tmp_path / "results" / "mini" / f"{name}.csv").read_bytes() == (first / f"{name}.csv").read_bytes()
    rd = tmp_path / "runs"  # one run's measurement gone: that run alone goes to a worker
    for r in measured_mini.runs:
        shutil.copytree(runs.run_dir(measured_mini, r), runs.run_dir(measured_mini, r, rd))
    relu = measured_mini.run("relu-s1")
    for f in runs.run_dir(measured_mini, relu, rd).glob("sparsity-*"):
        f.unlink()
    with pytest.raises(Sent):
        measure.measure_profile(measured_mini, jobs=2, runs_dir=rd, progress=False)
    assert sent[-1] == ["relu-s1"]


def test_moe_comparison_records_the_corpus_of_pareto(tiny, tmp_path, monkeypatch):
    """moe_comparison.csv's sidecar names the corpus pareto.csv was made on (pareto.meta.json), not the
    one this machine's data.* gives (make replot on another machine)."""
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path))
    out = runs.results_dir(tiny.name)
    made_on = {"source": "python-env: stdlib", "files": 1, "bytes": 1, "sha256": "a" * 64}
    points = pd.DataFrame(columns=measure.RESULT_COLUMNS["pareto"][0])
    runs.write_table(points, out / "pareto.csv", runs.provenance(tiny, corpus=made_on))
    measure.moe_comparison_for(tiny, runs.read_table(out / "pareto.csv"))
    assert json.loads((out / "moe_comparison.meta.json").read_text())["corpus"] == made_on
    # tables made on two corpora, or one without a sidecar, name none: provenance falls back to this machine's
    other = runs.provenance(tiny, corpus=made_on | {"sha256": "b" * 64})
    runs.write_table(points, out / "other.csv", other)
    assert runs.recorded_corpus(out / "pareto.csv", out / "pareto.csv") == made_on
    assert runs.recorded_corpus(out / "pareto.csv", out / "other.csv") is None
    assert runs.recorded_corpus(out / "pareto.csv", out / "absent.csv") is None


def test_untrained_run_is_refused(tiny, mini_path):
    """The refusal names the command that trains the run, with the arguments that load this profile
    again: its name for configs/NAME.yaml, else its YAML path, and its --set overrides."""
    fresh = load_profile("smoke", overrides=TINY + ["train.seed=12345"])
    sets = " ".join(f"--set {o}" for o in fresh.overrides)
    with pytest.raises(SparsingLawError, match="not trained") as e:
        measure.measure_run(fresh, fresh.run("relu-wd1"), progress=False)
    assert f"python -m sparsinglaw train --profile smoke {sets} --run relu-wd1" in str(e.value)
    elsewhere = load_profile(mini_path, overrides=["train.seed=12345"])
    with pytest.raises(SparsingLawError, match="not trained") as e:
        measure.measure_run(elsewhere, elsewhere.run("relu-s1"), progress=False)
    assert f"train --profile {mini_path} --set train.seed=12345 --run relu-s1" in str(e.value)


def test_progress_bars_end_full(tiny, smoke_tokens, monkeypatch, tmp_path):
    """The measurement's bar (one tick per tested c, per checkpoint) and sparse inference's end at their
    totals, whether the search tests fewer c than its budget (secant, or a bisection's memo) or not."""
    import tqdm

    from sparsinglaw import inference

    bars = []

    class Recorder(tqdm.tqdm):
        def close(self):
            if not self.disable:
                bars.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", Recorder)
    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    for search in ("bisect", "secant"):  # dead_freq: a measurement key of its own, not another test's cache
        p = load_profile("smoke", overrides=TINY + ["sparsity.eval_tokens=1024", "sparsity.n_grid=4096",
                                                    f"sparsity.search={search}", "sparsity.dead_freq=0.0015"])
        measure.measure_run(p, p.run("relu-s1"), progress=True)
        inference.inference_run(p, p.run("relu-s1"), progress=True)
    done = [b for b in bars if b[0].startswith(("measure relu-s1", "sparse inference relu-s1"))]
    assert len(done) == 4 and all(n == total for _, n, total in done), done


def test_search_with_bar_tops_up_and_caps():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    def search(k):
        def run(tick):
            for _ in range(k):
                tick({"stage": "search"})
            tick({"stage": "curves"})  # not a tested c
            return "result"
        return run

    for k in (3, 11, 14):
        bar = Bar()
        assert measure.search_with_bar(bar, 11, search(k)) == "result" and bar.n == 11, k


@torch.no_grad()
def _masked_by_hand(model, batches, taus):
    """h zeroed by hooks where |h_i| * ||W_down[:, i]|| < tau_l (taus None: dense, nothing zeroed), over the
    valid targets of every batch: cross-entropies (float64 log-softmax), kept masks (L, n, d_ff), input ids
    and domains."""
    nlls, kept, ids, doms = [], [[] for _ in model.ffns()], [], []
    valid = None

    def hook(h, l, ffn):
        keep = torch.ones_like(h, dtype=torch.bool) if taus is None else \
            h.abs() * ffn.w_down.weight.norm(dim=0) >= torch.tensor(taus[l], dtype=torch.float32)
        kept[l].append(keep[valid])
        return h * keep

    handles = [f.h.register_forward_hook(lambda m, i, h, l=l, f=f: hook(h, l, f)) for l, f in enumerate(model.ffns())]
    try:
        for x, y, dom in batches:
            valid = y != -1
            logits = model(x)[0].double()
            nll = torch.logsumexp(logits, -1) - logits.gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)
            nlls.append(nll[valid])
            ids.append(x[valid])
            doms.append(dom[valid])
    finally:
        for hd in handles:
            hd.remove()
    return torch.cat(nlls), torch.stack([torch.cat(k) for k in kept]), torch.cat(ids), torch.cat(doms)


def test_results_tables_match_h_masked_by_hand(measured_mini, smoke_tokens, tmp_path, monkeypatch):
    """sparsity.csv, neurons.csv and tokens.csv of the mini profile against each checkpoint evaluated by hand:
    dense and sparse loss (mean cross-entropy of the valid targets), PPL ratio and activation ratio with h
    zeroed by hooks at the row's thresholds; at the final checkpoint the activation frequency of every
    (layer, neuron), overall and per domain, and the activation ratio per input token id; the size columns
    from the run's shape by hand (d_model 16, 2 layers, d_ff 40)."""
    from sparsinglaw import sparsity as sp

    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path))
    table = measure.write_results(measured_mini)
    out = tmp_path / "mini"
    neurons, tokens = pd.read_csv(out / "neurons.csv"), pd.read_csv(out / "tokens.csv")
    for name in ("relu-s1", "silu-s1"):
        run = measured_mini.run(name)
        rows = table[table["run"] == name].sort_values("step")
        assert (rows["width_depth"] == 8.0).all() and (rows["d_model"] == 16).all() and (rows["n_layers"] == 2).all()
        assert (rows["non_embedding_params"] == 2 * (4 * 16 * 16 + 3 * 16 * 40 + 2 * 16) + 16).all()  # 5968
        batches = measure.eval_set(measured_mini, smoke_tokens, run.model.seq_len)
        ck = measure.stable_checkpoints(measured_mini, run)
        assert list(rows["step"]) == list(ck["step"])
        for path, r in zip(ck["path"], rows.itertuples(), strict=True):
            model = measure.load_model(run, path)
            taus = sp.thresholds_from_cett(sp.cett_curves(model, batches, measured_mini.sparsity.n_grid), r.cett)
            assert [float(v) for v in r.taus.split(";")] == pytest.approx(taus, rel=1e-5)
            dense = float(_masked_by_hand(model, batches, None)[0].mean())
            nll, kept, ids, dom = _masked_by_hand(model, batches, taus)
            assert r.dense_loss == pytest.approx(dense, rel=1e-5)
            assert r.sparse_loss == pytest.approx(float(nll.mean()), rel=1e-5)
            assert r.ppl_ratio == pytest.approx(math.exp(float(nll.mean()) - dense), rel=1e-5)
            assert r.activation_ratio == pytest.approx(float(kept.double().mean()), abs=1e-9)
            assert 0.05 < r.activation_ratio < 0.95  # the thresholds really cut
        freq = kept.double().mean(1)  # (L, d_ff): share of valid tokens on which each neuron is kept
        nr = neurons[neurons["run"] == name]
        assert (nr["step"] == ck["step"].iloc[-1]).all() and len(nr) == freq.numel()
        at = (nr["layer"].to_numpy(), nr["neuron"].to_numpy())
        np.testing.assert_allclose(nr["all"], freq.numpy()[at], rtol=0, atol=1e-12)
        for k, dname in enumerate(smoke_tokens.domains):
            sel = dom == k
            assert int(sel.sum()) > 0
            per = kept[:, sel].double().mean(1)
            np.testing.assert_allclose(nr[dname], per.numpy()[at], rtol=0, atol=1e-12)
        share = kept.double().mean((0, 2))  # per valid position, the share of its (layer, neuron) pairs kept
        tr = tokens[tokens["run"] == name].set_index("token_id")
        assert set(tr.index) == set(ids.tolist())
        for v in tr.index[:: max(1, len(tr) // 40)]:
            sel = ids == v
            assert tr.at[v, "count"] == int(sel.sum())
            assert tr.at[v, "activation_ratio"] == pytest.approx(float(share[sel].mean()), abs=1e-12)


def test_summary_takes_each_runs_final_checkpoint():
    """measure.summary: one row per run and p, from the checkpoint with the most tokens, whatever the row order."""
    rows = [(run, tokens, p, 0.1 * p + tokens / 1000 + (run == "b")) for run in ("a", "b") for tokens in (300, 100, 200)
            for p in (1.0, 5.0)]
    t = pd.DataFrame(rows, columns=["run", "tokens", "p", "activation_ratio"]).sample(frac=1.0, random_state=0)
    t = t.assign(activation="relu", non_embedding_params=1, width_depth=8.0, cett=0.1, ppl_ratio=1.01,
                 nonzero_ratio=0.5, dead_ratio=0.0)
    s = measure.summary(t).set_index(["run", "p"]).sort_index()
    assert list(s.index) == [("a", 1.0), ("a", 5.0), ("b", 1.0), ("b", 5.0)] and (s["tokens"] == 300).all()
    assert s["activation_ratio"].tolist() == pytest.approx([0.4, 0.8, 1.4, 1.8])


def test_moe_comparison_reads_only_the_ppl_p_curve():
    """The dense curve MoE runs are read against holds the run's CETT sweep and PPL-p% points, closed by the
    unsparsified PPL exp(dense_loss) at ratio 1; its Top-k, FAT-eps and exact-zero points are other methods and
    must not move it (hand interpolation; an exact-zero point denser than the sweep would close it there too,
    test_a_relu_ppl_p_curve_is_flat_from_its_exact_zero_point, but this one, at 0.4, is not)."""
    profile = load_profile("smoke")  # silu-moe4: E = 4, trained top_k = 2
    rows = [("silu-s2", "cett", c, ppl, a) for c, ppl, a in ((0.05, 56.0, 0.6), (0.2, 60.0, 0.3), (0.4, 70.0, 0.2))]
    rows += [("silu-s2", "ppl-1%", 0.1, 55.55, 0.45)]
    rows += [("silu-s2", m, 1, 500.0, a) for m, a in (("topk", 0.25), ("topk_batch", 0.35), ("fat", 0.5),
                                                    ("zeros", 0.4))]
    rows += [("silu-moe4", "moe", k, ppl, k / 4) for k, ppl in ((1, 80.0), (2, 62.0))]
    points = pd.DataFrame(rows, columns=["run", "method", "param", "ppl", "activation_ratio"]).assign(
        activation="silu", dense_loss=4.0)
    curves = measure.ppl_p_curves(points)
    assert list(curves) == ["silu-s2"]
    _, xs, ys = curves["silu-s2"]
    assert xs.tolist() == [0.2, 0.3, 0.45, 0.6, 1.0] and ys.tolist() == pytest.approx([70, 60, 55.55, 56, math.exp(4)])
    df = measure.moe_comparison(points, profile)
    assert df["ppl_dense_at_ratio"].tolist() == pytest.approx([65.0, 55.55 + 0.45 / 3])
    assert df["gap_pct"].tolist() == pytest.approx([100 * (80 / 65 - 1), 100 * (62 / (55.55 + 0.45 / 3) - 1)])


def test_a_relu_ppl_p_curve_is_flat_from_its_exact_zero_point():
    """c = 0 keeps every non-zero neuron and counts only those active, so a ReLU run's curve reaches the
    unsparsified PPL at its exact-zero ratio and stays there to 1 (it was a line from the densest swept
    point straight to ratio 1, too high in between)."""
    profile = load_profile("smoke")  # silu-moe4: E = 4, trained top_k = 2
    rows = [("relu-s2", "cett", c, ppl, a) for c, ppl, a in ((0.05, 56.0, 0.3), (0.2, 60.0, 0.2))]
    rows += [("relu-s2", "zeros", 0, math.exp(4), 0.4), ("silu-moe4", "moe", 2, 62.0, 0.5)]
    points = pd.DataFrame(rows, columns=["run", "method", "param", "ppl", "activation_ratio"]).assign(
        activation="relu", dense_loss=4.0)
    _, xs, ys = measure.ppl_p_curves(points)["relu-s2"]
    assert xs.tolist() == [0.2, 0.3, 0.4, 1.0] and ys.tolist() == pytest.approx([60, 56, math.exp(4), math.exp(4)])
    df = measure.moe_comparison(points, profile)
    assert df["ppl_dense_at_ratio"].tolist() == pytest.approx([math.exp(4)])  # k = 2 of 4: ratio 0.5


def test_each_p_gets_its_own_c_searched_on_the_last_n_last_checkpoints(tiny, smoke_tokens):
    """With sparsity.n_last = 2 and p = [1, 1.5] (both reached by the tiny model): the rows of each p carry
    that p's c, which equals Algorithm 1 run by hand on the last two stable checkpoints (loaded here)
    jointly, and only those two are marked searched. The search runs with the profile's tol and search
    (0.01 and secant here, not the defaults: the record's bracket is that wide)."""
    from sparsinglaw import sparsity as sp

    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    p = load_profile("smoke", overrides=tiny.overrides + ["sparsity.n_last=2", "sparsity.p=[1, 1.5]",
                                                          "sparsity.tol=0.01", "sparsity.search=secant"])
    run = p.run("relu-s1")
    rec = measure.measure_run(p, run, progress=False)
    rows = pd.DataFrame(rec["rows"])
    lo, hi = rec["search"]["1.0"]["bracket"]
    assert 1e-3 < hi - lo <= 0.01
    ck = measure.stable_checkpoints(p, run)
    assert len(ck) > 2 and rows[rows["searched"]]["step"].unique().tolist() == ck["step"].tolist()[-2:]
    batches = measure.eval_set(p, smoke_tokens, run.model.seq_len)
    last_two = [lambda path=path: measure.load_model(run, path) for path in ck["path"].iloc[-2:]]
    s = p.sparsity
    for level in (1.0, 1.5):
        want = sp.ppl_p_sparsity(last_two, batches, level, impl="fast", tol=s.tol, n_grid=s.n_grid, search=s.search)
        got = rows[rows["p"] == level]
        assert want.reached and got["reached"].all(), level
        assert len(got) == len(ck) and (got["cett"] == want.cett).all(), level
        # the same probes of c, hence the same search (secant and bisection may end in the same cell)
        assert [tuple(t) for t in rec["search"][str(level)]["trace"]] == [tuple(t) for t in want.trace], level
    assert rows.loc[rows["p"] == 1.5, "cett"].iloc[0] > rows.loc[rows["p"] == 1.0, "cett"].iloc[0]


def test_more_n_last_than_stable_checkpoints_searches_them_all_with_a_note(tiny, capsys):
    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    p = load_profile("smoke", overrides=tiny.overrides + ["sparsity.n_last=50"])
    n = len(measure.stable_checkpoints(p, p.run("relu-s1")))
    capsys.readouterr()
    rows = pd.DataFrame(measure.measure_run(p, p.run("relu-s1"), progress=False)["rows"])
    assert 1 < n < 50 and rows["searched"].all() and len(rows) == n
    assert capsys.readouterr().out.splitlines()[0] == (f"note: run relu-s1: sparsity.n_last=50, but the run has {n} "
                                                       f"stable-stage checkpoints; c is searched on all {n}")


def test_only_stable_stage_marks_are_measured(tiny, smoke_tokens):
    """With a decay stage the final checkpoint is a decay-stage one: it is kept by the trainer but not
    measured; stable_checkpoints lists the marks after the last warmup step up to the stable stage's end, and
    a mark on the last warmup step itself is not one of them."""
    from sparsinglaw.config import checkpoint_steps, stage_steps, tokens_per_step, total_steps

    p = load_profile("smoke", overrides=tiny.overrides + ["train.decay_frac=0.25"])
    run = p.run("relu-s1")
    warmup, stable, decay = stage_steps(run.model, run.train)
    assert warmup >= 1 and decay >= 1
    on_warmup = dataclasses.replace(run, train=dataclasses.replace(
        run.train, checkpoint_tokens=[warmup * tokens_per_step(run.model, run.train), (warmup + 2) * 512]))
    assert tokens_per_step(run.model, run.train) == 512
    assert measure.stable_marks(on_warmup) == [warmup + 2]  # the final step is in the decay stage
    runs.train_profile(p, names=["relu-s1"], jobs=1, progress=False)
    want = [s for s in checkpoint_steps(run.model, run.train) if warmup < s <= warmup + stable]
    kept = runs.checkpoints(p, run)
    assert total_steps(run.model, run.train) in set(kept["step"])  # the decay-stage checkpoint exists
    assert measure.stable_checkpoints(p, run)["step"].tolist() == want == measure.stable_marks(run)


@pytest.mark.parametrize("a,r,expect", [
    ([0.1, 0.2, 0.4], [1.30, 1.05, 1.00], (0.2 + 0.04 / 0.05 * 0.2, "=")),  # crosses 1.01 between 0.2 and 0.4
    ([0.4, 0.1, 0.2], [1.00, 1.30, 1.05], (0.2 + 0.04 / 0.05 * 0.2, "=")),  # the same points, unsorted
    ([0.1, 0.2, 0.4], [1.30, 1.01, 1.00], (0.2, "=")),  # a point exactly at the target
    ([0.1, 0.2, 0.4], [1.30, 1.005, 1.02], (0.1 + 0.29 / 0.295 * 0.1, "=")),  # the first crossing from sparse
    ([0.1, 0.2], [1.005, 1.00], (0.1, "<=")),  # the sparsest point already meets the target
    ([0.1, 0.2], [1.01, 1.00], (0.1, "<=")),  # ... exactly at the target
    ([0.1, 0.2], [1.30, 1.01], (0.2, "=")),  # the densest point exactly at the target: reached there
    ([0.1, 0.2], [1.30, 1.02], (0.2, ">")),  # no point meets it
    ([0.38], [1.0], (0.38, "<=")),  # exact zeros: one point
    ([0.1, 0.2, 0.3], [math.nan, 1.005, 1.0], (0.2, "<=")),  # a point without a PPL ratio is left out
    ([0.1, 0.2, math.nan], [1.3, 1.2, 1.0], (0.2, ">")),  # ... and one without an activation ratio
])
def test_ratio_at_ppl_reads_the_first_crossing_from_the_sparse_end(a, r, expect):
    got = measure.ratio_at_ppl(a, r, 1.01)
    assert got[1] == expect[1] and got[0] == pytest.approx(expect[0])


def test_ratio_at_ppl_without_a_finite_point_says_so():
    a, bound = measure.ratio_at_ppl([0.1, math.nan], [math.nan, 1.0], 1.01)
    assert math.isnan(a) and bound == "none"


def test_tradeoff_puts_ppl_p_points_on_the_cett_curve_and_leaves_moe_runs_out():
    """One dense run: its CETT sweep and PPL-1% point are one curve ("cett"); Top-k, FAT-eps and exact zeros
    are read on their own; the MoE run (its own curve, Fig. 2) gets no row. Hand interpolation at 1.01 and,
    for p = 5, at 1.05."""
    rows = [("relu-s4", "cett", 0.05, 1.002, 0.30), ("relu-s4", "cett", 0.2, 1.05, 0.12),
            ("relu-s4", "ppl-1%", 0.1, 1.012, 0.18), ("relu-s4", "topk", 32, 1.04, 0.2),
            ("relu-s4", "topk", 48, 1.006, 0.3), ("relu-s4", "fat", 0.3, 1.03, 0.3),
            ("relu-s4", "zeros", None, 1.0, 0.4),
            ("silu-moe8", "moe", 2, 1.0, 0.25), ("silu-moe8", "moe", 1, 1.2, 0.125)]
    points = pd.DataFrame(rows, columns=["run", "method", "param", "ppl_ratio", "activation_ratio"]).assign(
        activation=lambda d: d["run"].str[:4])
    t = measure.tradeoff(points)
    assert t["run"].unique().tolist() == ["relu-s4"]
    got = t.set_index("method")
    assert got.index.tolist() == ["cett", "topk", "fat", "zeros"] and got["activation"].eq("relu").all()
    assert got["bound"].tolist() == ["=", "=", ">", "<="] and got["n_points"].tolist() == [3, 2, 1, 1]
    assert got["activation_ratio"].tolist() == pytest.approx([0.18 + 0.002 / 0.010 * 0.12, 0.2 + 0.03 / 0.034 * 0.1,
                                                              0.3, 0.4])
    five = measure.tradeoff(points, p=5).set_index("method")["activation_ratio"]
    assert five["cett"] == pytest.approx(0.12) and five["topk"] == pytest.approx(0.2)
    assert measure.tradeoff(points[points["method"] == "moe"]).empty


# ----------------------------------------------------------------------------- stages, final arrays, Pareto points


def test_stable_checkpoints_leave_out_warmup_and_decay_checkpoints(tiny, monkeypatch):
    """A warmup checkpoint (the trainer places no mark there, so only a listing can show one) and a decay one
    beside the stable marks: only the stable marks are measured (oracle: the stage column itself)."""
    run = tiny.run("relu-s1")
    marks = measure.stable_marks(run)
    rows = [{"step": 1, "tokens": 512, "stage": "warmup"}]
    rows += [{"step": s, "tokens": 512 * s, "stage": "stable"} for s in marks]
    rows += [{"step": marks[-1] + 1, "tokens": 512 * (marks[-1] + 1), "stage": "decay"}]
    fake = pd.DataFrame(rows).assign(loss=1.0, val_loss=1.0,
                                     path=lambda d: [f"ckpt_{s:07d}.pt" for s in d["step"]])
    monkeypatch.setattr(measure, "checkpoints", lambda *a, **k: fake.copy())
    ck = measure.stable_checkpoints(tiny, run)
    assert ck["step"].tolist() == marks and (ck["stage"] == "stable").all()


def test_final_arrays_are_those_of_ppl_1_percent_whatever_the_other_levels(tiny, smoke_tokens):
    """With p = [1, 1.5] the neuron and token arrays are the final checkpoint's at PPL-1% (Fig. 9-10 are
    PPL-1%): the mean neuron frequency is that row's activation ratio (layers of equal width), and so is
    the token-weighted mean of the per-token ratios; PPL-1.5% keeps fewer neurons, so its row would not
    match."""
    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    p = load_profile("smoke", overrides=tiny.overrides + ["sparsity.p=[1, 1.5]", "sparsity.dead_freq=0.05"])
    run = p.run("relu-s1")
    rows = pd.DataFrame(measure.measure_run(p, run, progress=False)["rows"])
    final = rows[rows["step"] == rows["step"].max()].set_index("p")
    assert final.loc[1.5, "activation_ratio"] < final.loc[1.0, "activation_ratio"] - 1e-3
    a = measure.final_arrays(p, run)
    assert float(a["neuron_frequency"].mean()) == pytest.approx(final.loc[1.0, "activation_ratio"], abs=1e-9)
    per_token = a["token_sum"].mean(0).sum() / a["token_count"].sum()
    assert float(per_token) == pytest.approx(final.loc[1.0, "activation_ratio"], abs=1e-9)
    assert final.loc[1.0, "dead_ratio"] == (a["neuron_frequency"] < p.sparsity.dead_freq).mean()
    assert final.loc[1.0, "dead_ratio"] != (a["neuron_frequency"] < 0.001).mean()  # the setting counts here


def test_pareto_ppl_p_points_are_the_final_checkpoints_measurement(tiny, smoke_tokens):
    """The Pareto points come from the run's last stable checkpoint (runs.checkpoints): the PPL-1% point is
    the measurement record's row there, its perplexity exp(sparse loss) = exp(dense loss) x PPL ratio, and
    the exact-zeros point is that checkpoint's share of nonzero activations read by hooks
    (conftest.nonzero_share)."""
    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    run = tiny.run("relu-s1")
    df = measure.pareto_run(tiny, run, progress=False)
    last = runs.checkpoints(tiny, run).query("stage == 'stable'").iloc[-1]
    assert (df["step"] == int(last["step"])).all()
    rec = pd.DataFrame(measure.measure_run(tiny, run, progress=False)["rows"])
    want = rec[(rec["step"] == int(last["step"])) & (rec["p"] == 1.0)].iloc[0]
    got = df[df["method"] == "ppl-1%"]
    assert len(got) == 1
    got = got.iloc[0]
    assert got["param"] == want["cett"]
    assert got["activation_ratio"] == pytest.approx(want["activation_ratio"], abs=1e-12)
    assert got["sparse_loss"] == pytest.approx(want["sparse_loss"], rel=1e-12)
    assert got["ppl"] == pytest.approx(math.exp(want["sparse_loss"]), rel=1e-9)
    assert got["ppl"] == pytest.approx(math.exp(want["dense_loss"]) * want["ppl_ratio"], rel=1e-9)
    assert got["ppl"] > math.exp(want["dense_loss"])  # sparsified: above the dense perplexity
    batches = measure.eval_set(tiny, smoke_tokens, run.model.seq_len)
    share = np.mean(nonzero_share(measure.load_model(run, last["path"]), batches))
    zeros = df[df["method"] == "zeros"].iloc[0]
    assert zeros["activation_ratio"] == pytest.approx(share, abs=1e-9)


def test_an_unreached_target_is_recorded_as_such(tiny, monkeypatch):
    """A search that reports its target unreached (no tested c crossed it; here p = 1.5's, by a wrapper)
    gives rows and a search record with reached = False; p = 1's stay True."""
    from sparsinglaw import sparsity as sp

    runs.train_profile(tiny, names=["relu-s1"], jobs=1, progress=False)
    real = sp.ppl_p_sparsity

    def search(models, batches, p=1.0, **kw):
        r = real(models, batches, p, **kw)
        return dataclasses.replace(r, reached=False) if p == 1.5 else r

    monkeypatch.setattr(sp, "ppl_p_sparsity", search)
    p = load_profile("smoke", overrides=tiny.overrides + ["sparsity.p=[1, 1.5]", "sparsity.dead_freq=0.0011"])
    rec = measure.measure_run(p, p.run("relu-s1"), progress=False)
    rows = pd.DataFrame(rec["rows"])
    assert not rows.loc[rows["p"] == 1.5, "reached"].any() and rows.loc[rows["p"] == 1.0, "reached"].all()
    assert rec["search"]["1.5"]["reached"] is False and rec["search"]["1.0"]["reached"] is True


def test_a_whole_profile_measure_names_the_moe_runs_it_leaves_out(capsys):
    """Measuring a whole profile says which runs it leaves out (MoE runs get their curve from the Pareto
    sweeps), as it does for a run named on the command line; a profile of MoE runs alone measures nothing."""
    smoke = load_profile("smoke")
    moe = [r for r in smoke.runs if r.model.n_experts]
    assert moe
    out = measure.measure_profile(dataclasses.replace(smoke, runs=moe), progress=False)
    assert out.empty and list(out.columns) == measure.RESULT_COLUMNS["sparsity"][0]
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines()] == [r.name for r in moe]
    assert all("an MoE run, not measured checkpoint by checkpoint" in line for line in printed.splitlines())


def test_a_domain_without_measured_tokens_keeps_its_column_and_is_named(measured_mini, smoke_tokens, tmp_path,
                                                                         monkeypatch, capsys):
    """A domain with no token in the measured validation windows (the split is made by file): neurons.csv
    keeps its column, empty (nan), whatever the domain's id, and a note names it. The domain array only has
    rows up to the largest id seen, so the last domain used to lose its column while the first kept an
    empty one."""
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path))
    assert len(smoke_tokens.domains) == 2
    final_arrays = measure.final_arrays

    def without_last_domain(*args, **kwargs):
        a = dict(final_arrays(*args, **kwargs))
        a["domain_frequency"] = a["domain_frequency"][:1]  # as measured on windows without the last domain
        return a

    monkeypatch.setattr(measure, "final_arrays", without_last_domain)
    measure.write_results(measured_mini)
    neurons = pd.read_csv(tmp_path / "mini" / "neurons.csv")
    first, last = smoke_tokens.domains
    assert list(neurons.columns[-2:]) == [first, last]
    assert neurons[last].isna().all() and neurons[first].notna().all()
    out = capsys.readouterr().out
    assert out.count(f"note: domain '{last}' has no token in the validation windows measured (the first "
                     "sparsity.eval_tokens of the validation split): raise sparsity.eval_tokens; its per-domain "
                     "columns in neurons.csv are empty for 2 of 2 runs") == 1
    assert f"domain '{first}'" not in out
    # absent from the whole validation split: no eval_tokens can help, and the note says what can
    from sparsinglaw import data

    real = data.prepare
    monkeypatch.setattr(data, "prepare", lambda *a, **k: dataclasses.replace(
        real(*a, **k), val_domain=np.zeros_like(np.asarray(smoke_tokens.val_domain))))
    measure.write_results(measured_mini)
    assert f"note: domain '{last}' has no token in the validation split (which holds out whole documents or " \
           "records, data.val_fraction): raise data.val_fraction or give the domain more documents" in \
           capsys.readouterr().out
