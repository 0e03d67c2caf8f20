"""Sparse inference on held-out text (notebook 06, the paper's Table 1 analog): the table's numbers against
a naive loop that masks h by hand, the averaged thresholds against the reference implementation, the
held-out windows, bad inputs, the per-run cache and the CSV round trip."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import MINI
from sparsinglaw import inference, measure, runs
from sparsinglaw import sparsity as sp
from sparsinglaw.config import ConfigError, SparsingLawError, load_profile

pytestmark = pytest.mark.slow

HELDOUT = ["inference.heldout_tokens=1024"]  # 16 windows of 64 tokens; the smoke split has ~14-16k tokens
UNREACHED: list[str] = []  # the TargetNotReachedWarning messages of the evaluation in ``inferred``


@pytest.fixture(scope="module")
def inferred(session_roots, mini_path, smoke_tokens):
    """The mini profile (relu-s1, silu-s1) trained, then evaluated: (profile, table)."""
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", sp.TargetNotReachedWarning)
        for k, v in session_roots.items():
            mp.setenv(k, str(v))
        profile = load_profile(mini_path, overrides=MINI + HELDOUT)
        runs.train_profile(profile, jobs=1, progress=False)
        df = inference.sparse_inference_for(profile, jobs=1, progress=False)
    UNREACHED[:] = [str(w.message) for w in caught if issubclass(w.category, sp.TargetNotReachedWarning)]
    return profile, df


def _record_path(profile, name):
    run = profile.run(name)
    return inference.record_path(profile, run)


def _record(profile, name):
    return json.loads(_record_path(profile, name).read_text())


def _final_model(profile, name):
    run = profile.run(name)
    return measure.load_model(run, measure.stable_checkpoints(profile, run).iloc[-1]["path"])


# -----------------------------------------------------------------------------------------------
# the slow oracle: held-out windows cut by hand, h masked by hand, loss and argmax by hand


def _heldout_by_hand(tokens, n_tokens: int, seq_len: int):
    """The last n_tokens targets of the validation split as (x, y, domain), one row per window."""
    val, dom = np.asarray(tokens.val).astype(np.int64), np.asarray(tokens.val_domain).astype(np.int64)
    s0 = len(val) - 1 - n_tokens
    x = torch.from_numpy(val[s0:s0 + n_tokens]).view(-1, seq_len)
    y = torch.from_numpy(val[s0 + 1:s0 + n_tokens + 1]).view(-1, seq_len)
    return x, y, torch.from_numpy(dom[s0 + 1:s0 + n_tokens + 1]).view(-1, seq_len), s0


@torch.no_grad()
def naive_scores(model, x, y, dom, taus, n_domains: int) -> dict:
    """Per domain id (and "all"): (loss, accuracy, activation ratio, n) with neuron i of layer l zeroed by a
    hook when |h_i| * ||W_down[:, i]|| < tau_l (taus None: dense, active = h_i != 0)."""
    L, d_ff = model.cfg.n_layers, model.cfg.d_ff
    active = np.zeros((L, n_domains))
    handles = []
    for l, ffn in enumerate(model.ffns()):
        def hook(module, inputs, h, l=l, ffn=ffn):
            if taus is None:
                keep = h != 0
            else:
                keep = h.abs() * ffn.w_down.weight.norm(dim=0) >= torch.tensor(taus[l], dtype=torch.float32)
            for k in range(n_domains):
                active[l, k] += float(keep[dom == k].sum())
            return h * keep
        handles.append(ffn.h.register_forward_hook(hook))
    try:
        logits, _ = model(x)
    finally:
        for hd in handles:
            hd.remove()
    logits = logits.double()
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, y[..., None]).squeeze(-1)
    hit = (logits.argmax(-1) == y).double()
    out = {}
    for k in [*range(n_domains), "all"]:
        sel = torch.ones_like(dom, dtype=torch.bool) if k == "all" else dom == k
        n = int(sel.sum())
        if n:
            act = active.sum() if k == "all" else active[:, k].sum()
            out[k] = (float(nll[sel].mean()), float(hit[sel].mean()), act / (n * L * d_ff), n)
    return out


@pytest.mark.parametrize("name", ["relu-s1", "silu-s1"])
def test_table_matches_naive_loop(inferred, smoke_tokens, name):
    profile, df = inferred
    rec = _record(profile, name)
    model = _final_model(profile, name)
    x, y, dom, _ = _heldout_by_hand(smoke_tokens, 1024, model.cfg.seq_len)
    domains = smoke_tokens.domains
    rows = df[df["run"] == name]
    dense = naive_scores(model, x, y, dom, None, len(domains))
    for p in [0.0, 1.0, 5.0, 10.0]:
        want = dense if p == 0 else naive_scores(model, x, y, dom, rec["taus"][str(p)], len(domains))
        for k, (loss, acc, ratio, n) in want.items():
            d = "all" if k == "all" else domains[k]
            r = rows[(rows["p"] == p) & (rows["domain"] == d)].iloc[0]
            assert r["n_tokens"] == n
            assert r["loss"] == pytest.approx(loss, rel=1e-5), (p, d)
            assert r["accuracy"] == pytest.approx(acc, abs=1e-12), (p, d)
            assert r["activation_ratio"] == pytest.approx(ratio, abs=1e-12), (p, d)
            assert r["dense_loss"] == pytest.approx(dense[k][0], rel=1e-5)
            assert r["dense_accuracy"] == pytest.approx(dense[k][1], abs=1e-12)
            assert r["ppl_ratio"] == pytest.approx(math.exp(loss - dense[k][0]), rel=1e-5)
            assert r["ppl"] == pytest.approx(math.exp(r["loss"]), rel=1e-12)


def test_table1_orders_runs_by_size_not_by_name():
    rows = [(run, n, p, d) for run, n in (("relu-s10", 1e6), ("relu-s2", 1e5)) for p in (0.0, 1.0)
            for d in ("all", "code")]
    df = pd.DataFrame(rows, columns=["run", "non_embedding_params", "p", "domain"]).assign(
        activation="relu", cett=0.1, ppl_ratio=1.0, loss=3.0, ppl=20.0, accuracy=0.4, activation_ratio=0.3)
    t = inference.table1(df.iloc[::-1])
    assert list(t.index) == [("relu", "relu-s2", 0.0), ("relu", "relu-s2", 1.0), ("relu", "relu-s10", 0.0),
                             ("relu", "relu-s10", 1.0)]


def test_table_rows(inferred):
    profile, df = inferred
    assert list(df.columns) == inference.COLUMNS
    assert set(df["run"]) == {"relu-s1", "silu-s1"}
    assert set(df["p"]) == {0.0, 1.0, 5.0, 10.0} and set(df["domain"]) == {"all", "code", "prose"}
    dense = df[df["p"] == 0]
    assert dense["cett"].isna().all() and (dense["ppl_ratio"] == 1).all() and (dense["calib_ppl_ratio"] == 1).all()
    assert (dense["calib_applied_ppl_ratio"] == 1).all() and dense["reached"].all()
    # reached: a tested c crossed the target (hi < 1). The mini profile's barely trained models lose under 2%
    # of PPL even at c = 0.999, so PPL-5% and PPL-10% are out of reach there: flagged, each with a warning
    assert df.loc[df["p"] == 1, "reached"].all()
    for (run, p), g in df[df["p"] > 0].groupby(["run", "p"]):
        hi = _record(profile, run)["search"][str(p)]["bracket"][1]
        assert (g["reached"] == (hi < 1)).all() and _record(profile, run)["search"][str(p)]["reached"] == (hi < 1)
        assert any(m.startswith(f"run {run}: PPL-{p:g}% not reached") for m in UNREACHED) == (hi == 1)
    assert (dense["loss"] == dense["dense_loss"]).all() and (dense["accuracy"] == dense["dense_accuracy"]).all()
    assert (dense.loc[dense["activation"] == "relu", "activation_ratio"] < 0.9).all()  # ReLU: exact zeros
    assert (dense.loc[dense["activation"] == "silu", "activation_ratio"] > 0.99).all()
    for (_run, p), g in df.groupby(["run", "p"]):
        by = g.set_index("domain")
        assert by.loc["all", "n_tokens"] == by.loc[["code", "prose"], "n_tokens"].sum() == 1024
        assert g["cett"].nunique(dropna=False) == 1 and g["calib_ppl_ratio"].nunique() == 1
        assert g["calib_applied_ppl_ratio"].nunique() == 1
        if p > 0:  # Algorithm 1 reports a c whose calibration ratio stays under the target (it may be
            # below 1: zeroing weak neurons can lower the loss a little; 0.9997 on Python 3.13's corpus)
            assert 0.9 < g["calib_ppl_ratio"].iloc[0] < 1 + p / 100
            # the averaged thresholds are other thresholds: near the target, not bound by it
            assert 0.9 < g["calib_applied_ppl_ratio"].iloc[0] < 1 + 3 * p / 100
    for run, g in df[df["domain"] == "all"].groupby("run"):
        ratios = g.sort_values("p")["activation_ratio"].tolist()
        assert ratios == sorted(ratios, reverse=True) and ratios[-1] < ratios[0], run  # sparser with p
        assert g.sort_values("p")["cett"].dropna().is_monotonic_increasing
    t1 = inference.table1(df)
    assert len(t1) == 8 and t1.loc[("relu", "relu-s1", 1.0), ("code", "loss")] == pytest.approx(
        df.query("run == 'relu-s1' and p == 1 and domain == 'code'")["loss"].iloc[0])
    avg = inference.averages(df)
    assert set(avg["runs"]) == {1} and len(avg) == 8


def reference_average(model, batches, c: float, n_grid: int) -> list[float]:
    """The reference's tau_l(c) on each batch alone, averaged with the batches' valid tokens as weights."""
    per_batch = [sp.reference_thresholds(model, sp.dense_rows(model, [b])[0], c, n_grid) for b in batches]
    return np.average(per_batch, axis=0, weights=[sp.count_tokens([b]) for b in batches]).tolist()


def test_thresholds_are_mean_of_reference_per_batch(inferred, smoke_tokens):
    profile, df = inferred
    rec = _record(profile, "relu-s1")
    model = _final_model(profile, "relu-s1")
    calib = measure.eval_set(profile, smoke_tokens, model.cfg.seq_len)
    assert len(calib) >= 2 and rec["calibration"]["tokens"] == sp.count_tokens(calib)
    n_grid = profile.sparsity.n_grid
    x, y, dom = (torch.cat([b[k] for b in calib]) for k in range(3))
    dense = naive_scores(model, x, y, dom, None, len(smoke_tokens.domains))["all"][0]
    for p in ("1.0", "10.0"):
        c = rec["search"][p]["cett"]
        assert rec["taus"][p] == pytest.approx(reference_average(model, calib, c, n_grid), rel=1e-12, abs=0)
        assert inference.averaged_thresholds(model, calib, [c], n_grid)[0] == rec["taus"][p]
        # the applied thresholds on the calibration set, h masked by hand
        applied = math.exp(naive_scores(model, x, y, dom, rec["taus"][p], len(smoke_tokens.domains))["all"][0] - dense)
        assert rec["search"][p]["calib_applied_ppl_ratio"] == pytest.approx(applied, rel=1e-5)
        row = df[(df["run"] == "relu-s1") & (df["p"] == float(p))]
        assert (row["calib_applied_ppl_ratio"] == rec["search"][p]["calib_applied_ppl_ratio"]).all()
    # the c itself: the reference implementation of Algorithm 1 on the calibration set finds the same value
    ref = sp.ppl_p_sparsity(model, calib, 1.0, impl="reference", tol=profile.sparsity.tol, n_grid=n_grid)
    assert ref.cett == rec["search"]["1.0"]["cett"]
    assert ref.mean_ratio == pytest.approx(rec["search"]["1.0"]["calib_ppl_ratio"], rel=1e-6)


def test_a_short_batch_counts_by_its_tokens(inferred, smoke_tokens):
    """Averaged thresholds weight each calibration batch by its valid tokens: a short last batch (2 of 8
    windows here) counts a quarter as much as a full one, not as much (reference oracle)."""
    profile, _ = inferred
    model = _final_model(profile, "silu-s1")
    full = measure.eval_set(profile, smoke_tokens, model.cfg.seq_len)[0]
    batches = [full, tuple(t[:2] for t in full[:2])]  # a full batch and a short one
    n_grid = profile.sparsity.n_grid
    for c in (0.05, 0.2):
        got = inference.averaged_thresholds(model, batches, [c], n_grid)[0]
        want = reference_average(model, batches, c, n_grid)
        assert got == pytest.approx(want, rel=1e-12, abs=0)
        plain = np.mean([sp.reference_thresholds(model, sp.dense_rows(model, [b])[0], c, n_grid) for b in batches], 0)
        assert np.abs(np.asarray(got) / plain - 1).max() > 1e-4  # the weighting matters here


def test_padding_does_not_count_toward_a_batchs_weight(inferred, smoke_tokens):
    """A batch's weight in the averaged thresholds is its number of valid targets (y != -1), not of positions:
    here the second calibration batch has 56 of every 64 targets padded, so it weighs an eighth of the
    full first one. Oracle: the reference's per-batch thresholds averaged with count_tokens as weights."""
    profile, _ = inferred
    model = _final_model(profile, "silu-s1")
    calib = measure.eval_set(profile, smoke_tokens, model.cfg.seq_len)
    x, y, dom = calib[1]
    padded = (x, y.masked_fill(torch.arange(y.size(1)) < y.size(1) - 8, -1), dom)
    batches = [calib[0], padded]
    assert [sp.count_tokens([b]) for b in batches] == [calib[0][1].numel(), y.numel() // 8]
    n_grid = profile.sparsity.n_grid
    for c in (0.05, 0.2):
        got = inference.averaged_thresholds(model, batches, [c], n_grid)[0]
        assert got == pytest.approx(reference_average(model, batches, c, n_grid), rel=1e-12, abs=0)
        per_batch = [sp.reference_thresholds(model, sp.dense_rows(model, [b])[0], c, n_grid) for b in batches]
        by_positions = np.average(per_batch, axis=0, weights=[b[1].numel() for b in batches])
        assert np.abs(np.asarray(got) / by_positions - 1).max() > 1e-3  # the weighting matters here


def test_the_record_keeps_the_searchs_whole_set_thresholds_and_activation(inferred, smoke_tokens):
    """The record's search entries: whole_set_taus are tau_l(c) of the curves of the whole calibration set at
    the searched c, and calib_activation_ratio is the activation ratio over all layers (their mean, not one
    layer's) of a pass over the calibration set with those thresholds; calib_ppl_ratio is that pass's ratio."""
    profile, _ = inferred
    for name in ("relu-s1", "silu-s1"):
        rec, model = _record(profile, name), _final_model(profile, name)
        calib = measure.eval_set(profile, smoke_tokens, model.cfg.seq_len)
        curves = sp.cett_curves(model, calib, profile.sparsity.n_grid)
        for p, srch in rec["search"].items():
            taus = sp.thresholds_from_cett(curves, srch["cett"])
            assert srch["whole_set_taus"] == taus, (name, p)
            res = sp.evaluate(model, calib, taus=taus)
            assert max(res.active_per_layer) - min(res.active_per_layer) > 1e-3  # one layer's ratio would not do
            assert srch["calib_activation_ratio"] == pytest.approx(res.activation_ratio, abs=1e-12), (name, p)
            assert srch["calib_ppl_ratio"] == pytest.approx(sp.ppl_ratio(res.loss, curves.dense_loss), rel=1e-12)


def test_a_domain_without_heldout_tokens_gets_no_row(inferred, smoke_tokens):
    """A held-out tail with no token of one domain (every token relabelled prose here) gives rows for "all" and
    prose only -- no row (and no division by its zero count) for code -- and "all" equals prose. Oracle:
    naive_scores, h masked by hand, dense and with the PPL-1% thresholds."""
    profile, _ = inferred
    rec, model = _record(profile, "relu-s1"), _final_model(profile, "relu-s1")
    domains = smoke_tokens.domains
    x, y, _, _ = _heldout_by_hand(smoke_tokens, 1024, model.cfg.seq_len)
    dom = torch.full_like(y, domains.index("prose"))
    held = [(x[i:i + 8], y[i:i + 8], dom[i:i + 8]) for i in range(0, len(x), 8)]
    for taus in (None, rec["taus"]["1.0"]):
        rows = inference.heldout_scores(model, held, taus, domains)
        want = naive_scores(model, x, y, dom, taus, len(domains))
        assert [r["domain"] for r in rows] == ["all", "prose"] and set(want) == {"all", domains.index("prose")}
        for r in rows:
            loss, acc, ratio, n = want["all" if r["domain"] == "all" else domains.index(r["domain"])]
            assert r["n_tokens"] == n == 1024
            assert r["loss"] == pytest.approx(loss, rel=1e-5) and r["ppl"] == pytest.approx(math.exp(loss), rel=1e-5)
            assert r["accuracy"] == pytest.approx(acc, abs=1e-12)
            assert r["activation_ratio"] == pytest.approx(ratio, abs=1e-12)


def test_heldout_windows_are_disjoint_from_calibration(smoke_tokens):
    profile = load_profile("smoke", overrides=MINI + HELDOUT)
    T = 64
    held = inference.heldout_set(profile, smoke_tokens, T)
    calib = measure.eval_set(profile, smoke_tokens, T)
    x, y, dom, s0 = _heldout_by_hand(smoke_tokens, 1024, T)
    assert torch.equal(torch.cat([b[0] for b in held]), x) and torch.equal(torch.cat([b[1] for b in held]), y)
    assert torch.equal(torch.cat([b[2] for b in held]), dom)
    assert int(y[-1, -1]) == int(smoke_tokens.val[-1])  # the held-out windows end the split
    n_cal = sp.count_tokens(calib)  # calibration targets are tokens 1..n_cal of the split
    assert torch.equal(calib[-1][1][-1], torch.from_numpy(np.asarray(smoke_tokens.val[n_cal - T + 1:n_cal + 1]
                                                                     ).astype(np.int64)))
    assert s0 > n_cal and s0 == inference.heldout_start(len(smoke_tokens.val), T, 1024)
    assert inference.heldout_start(1000, 64, 200) == 1000 - 1 - 192  # whole windows only


# -----------------------------------------------------------------------------------------------
# bad inputs: one line, naming the field


@pytest.mark.parametrize("override,field", [
    ("inference.group=nope", "inference.group: no run has group 'nope'; groups of this profile: "),
    ("inference.p=[1, 0]", "inference.p: expected a non-empty list of positive percentages, got [1, 0]"),
    ("inference.p=[-5]", "inference.p"),
    ("inference.p=[]", "inference.p"),
    ("inference.heldout_tokens=8", "inference.heldout_tokens: must be at least one window of the longest"),
    ("inference.top=1", "inference.top: unknown field"),
])
def test_bad_config(override, field):
    with pytest.raises(ConfigError) as e:
        load_profile("smoke", overrides=[override])
    assert field in str(e.value) and "\n" not in str(e.value)


def test_validation_split_too_small(smoke_tokens, isolated_roots):
    n_val = len(smoke_tokens.val)  # depends on the interpreter's standard library (15,744 on Python 3.11.7)
    profile = load_profile("smoke", overrides=MINI + [f"inference.heldout_tokens={n_val}"])
    with pytest.raises(SparsingLawError) as e:
        inference.sparse_inference_for(profile, jobs=1, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and f"validation split has {n_val:,} tokens" in msg
    fields = ("sparsity.eval_tokens=1024", f"inference.heldout_tokens={n_val}", "data.val_fraction")
    assert all(f in msg for f in fields)
    assert not (isolated_roots["SPARSINGLAW_RESULTS"] / "smoke" / "sparse_inference.csv").exists()


def test_missing_table_and_untrained_run(tmp_path, monkeypatch, smoke_tokens):
    monkeypatch.setenv("SPARSINGLAW_RESULTS", str(tmp_path))
    profile = load_profile("smoke")
    with pytest.raises(SparsingLawError) as e:
        inference.sparse_inference_for(profile, compute=False)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "smoke" / "sparse_inference.csv") in msg
    assert "python -m sparsinglaw compute --profile smoke (or notebook 06_sparse_inference)" in msg
    fresh = load_profile("smoke", overrides=MINI + ["train.seed=4321"])
    with pytest.raises(SparsingLawError, match="run relu-s1 is not trained .* python -m sparsinglaw train"):
        inference.inference_run(fresh, fresh.run("relu-s1"), progress=False)


def test_keys_are_separate():
    """The inference settings change the inference record's key, never the measurement's."""
    a = load_profile("smoke")
    b = load_profile("smoke", overrides=["inference.p=[1, 2]", "inference.heldout_tokens=2048"])
    c = load_profile("smoke", overrides=["sparsity.pareto_runs=[]", "sparsity.cett_sweep=[0.1]"])
    for r in a.runs:
        assert measure.measure_key(a, r) == measure.measure_key(b, b.run(r.name))
        assert inference.inference_key(a, r) != inference.inference_key(b, r)
        assert inference.inference_key(a, r) == inference.inference_key(c, r)  # fields the search does not use
    assert a.config_hash() == b.config_hash()


# -----------------------------------------------------------------------------------------------
# cache and table


def test_the_search_settings_reach_the_calibration_search(inferred, monkeypatch):
    """sparsity.tol and sparsity.search are the calibration search's (its key records them): dropped from
    the call, a profile asking for secant at tol 0.01 got bisection at 1e-3 with nothing to show it."""
    profile, _ = inferred
    other = load_profile(profile.path, overrides=profile.overrides + ["sparsity.tol=0.01", "sparsity.search=secant"])
    seen = []

    class Seen(Exception):
        pass

    def spy(*args, **kwargs):
        seen.append(kwargs)
        raise Seen

    monkeypatch.setattr(sp, "ppl_p_sparsity", spy)
    with pytest.raises(Seen):
        inference.sparse_inference_for(other, jobs=1, progress=False)
    assert (seen[0]["tol"], seen[0]["search"], seen[0]["n_grid"]) == (0.01, "secant", other.sparsity.n_grid)


def test_cache_is_reused_and_table_round_trips(inferred, monkeypatch, session_roots):
    profile, df = inferred
    paths = [_record_path(profile, n) for n in ("relu-s1", "silu-s1")]
    mtimes = [p.stat().st_mtime_ns for p in paths]

    def no_work(*args, **kwargs):
        raise AssertionError("recomputed a cached record")

    monkeypatch.setattr(sp, "ppl_p_sparsity", no_work)
    monkeypatch.setattr(inference, "heldout_scores", no_work)
    again = inference.sparse_inference_for(profile, jobs=1, progress=False)
    pd.testing.assert_frame_equal(again, df)
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    back = inference.sparse_inference_for(profile, compute=False)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    meta = back.attrs["meta"]
    assert meta["inference"]["heldout_tokens"] == 1024 and meta["config_hash"] == profile.config_hash()
    assert meta["corpus"]["sha256"] and meta["rows"] == len(df)
    assert meta["stage"] == "inference"
    assert meta["stage_hash"] == profile.part_hash("data", "runs", "sparsity", "inference")
    with pytest.warns(runs.StaleTableWarning, match="its data, runs, sparsity or inference settings"):
        inference.sparse_inference_for(load_profile(profile.path, overrides=profile.overrides
                                                    + ["inference.heldout_tokens=2048"]), compute=False)


def test_calibration_and_heldout_windows_share_no_token():
    """check_split refuses a split whose first held-out input would be the calibration's last target: with
    16 calibration windows of 64 tokens (targets 1..1024) and 1024 held-out tokens, 2,050 tokens are needed
    (held-out inputs from index 1025), and 2,049 are refused."""
    profile = load_profile("smoke", overrides=MINI + HELDOUT)
    assert (profile.sparsity.eval_tokens, profile.inference.heldout_tokens) == (1024, 1024)
    assert inference.heldout_start(2050, 64, 1024) == 1025
    inference.check_split(profile, 2050, 64)
    with pytest.raises(SparsingLawError, match="has 2,049 tokens, too few .*: 2,050 tokens"):
        inference.check_split(profile, 2049, 64)


def test_key_changes_with_every_setting_the_record_depends_on():
    """Every calibration setting of the search (sparsity.eval_tokens, batch_size, n_grid, tol, search), the
    held-out tokens, the p levels and the run itself change the inference record's key, so a cached record is
    never reused under other settings."""
    base = load_profile("smoke")
    run = base.run("relu-s1")
    key = inference.inference_key(base, run)
    sparsity = {"eval_tokens": 4096, "batch_size": 4, "n_grid": 1024, "tol": 0.01, "search": "secant"}
    assert set(sparsity) == set(inference.CALIBRATION)
    for name, value in sparsity.items():
        assert getattr(base.sparsity, name) != value, name
        changed = dataclasses.replace(base, sparsity=dataclasses.replace(base.sparsity, **{name: value}))
        assert inference.inference_key(changed, run) != key, name
    for name, value in {"heldout_tokens": 2048, "p": [1.0, 5.0]}.items():
        assert getattr(base.inference, name) != value, name
        changed = dataclasses.replace(base, inference=dataclasses.replace(base.inference, **{name: value}))
        assert inference.inference_key(changed, run) != key, name
    assert inference.inference_key(base, base.run("relu-s1-seed1")) != key


def test_records_and_checkpoints_of_another_corpus_are_refused(inferred, smoke_tokens, tmp_path, monkeypatch):
    """A cached record made on another corpus than the one given is refused by inference_table (one results
    table never mixes corpora); without a record, a checkpoint trained on another corpus than data.* gives
    now is refused by inference_run before any work, and nothing is written."""
    from sparsinglaw import data
    from sparsinglaw.data import CorpusError

    profile, df = inferred
    run = profile.run("relu-s1")
    other = dict(smoke_tokens.fingerprint, sha256="b" * 64)
    same = inference.inference_table(profile, [run], corpus=smoke_tokens.fingerprint)
    assert len(same) == int((df["run"] == "relu-s1").sum())
    with pytest.raises(CorpusError, match="its cached sparse-inference record was made on another corpus"):
        inference.inference_table(profile, [run], corpus=other)
    rd = tmp_path / "runs"
    d = runs.run_dir(profile, run, rd)
    shutil.copytree(runs.run_dir(profile, run), d, ignore=shutil.ignore_patterns("inference-*"))
    real = data.prepare
    monkeypatch.setattr(data, "prepare", lambda *a, **k: dataclasses.replace(real(*a, **k), fingerprint=other))
    with pytest.raises(CorpusError, match="was trained on another corpus"):
        inference.inference_run(profile, run, rd, progress=False)
    assert not list(d.glob("inference-*"))


def test_averages_by_hand():
    """averages: per activation and p, the mean over runs of the held-out PPL increase (%), the accuracy change
    (points, sparse minus dense) and the activation ratio, from the "all" rows only (hand numbers)."""
    rows = [("r1", "relu", 1.0, "all", 1.02, 1.5, 0.30, 0.31, 0.20),
            ("r2", "relu", 1.0, "all", 1.04, 1.5, 0.28, 0.30, 0.30),
            ("r1", "relu", 1.0, "code", 9.0, 9.0, 0.0, 0.9, 0.9),  # a domain row: not in the averages
            ("s1", "silu", 1.0, "all", 1.01, 0.5, 0.41, 0.40, 0.5),
            ("r1", "relu", 0.0, "all", 1.0, 1.0, 0.31, 0.31, 0.6)]
    df = pd.DataFrame(rows, columns=["run", "activation", "p", "domain", "ppl_ratio", "calib_ppl_ratio", "accuracy",
                                     "dense_accuracy", "activation_ratio"])
    got = inference.averages(df).set_index(["activation", "p"])
    assert list(got.index) == [("relu", 0.0), ("relu", 1.0), ("silu", 1.0)]
    assert got.loc[("relu", 1.0), "ppl_increase_pct"] == pytest.approx(3.0)
    assert got.loc[("relu", 1.0), "accuracy_change_points"] == pytest.approx(-1.5)
    assert got.loc[("relu", 1.0), "activation_ratio"] == pytest.approx(0.25) and got.loc[("relu", 1.0), "runs"] == 2
    assert got.loc[("silu", 1.0), "ppl_increase_pct"] == pytest.approx(1.0)
    assert got.loc[("silu", 1.0), "accuracy_change_points"] == pytest.approx(1.0)
    assert got.loc[("relu", 0.0), ["ppl_increase_pct", "accuracy_change_points"]].tolist() == [0.0, 0.0]


def test_cached_records_are_read_without_the_run_lock(inferred, measured_mini, monkeypatch):
    """A finished measurement and sparse inference are read back without taking the run's lock (their
    records are written whole), so a read-only archive of runs serves them; only computing takes it."""
    import errno

    profile, _ = inferred
    run = profile.run("relu-s1")
    measured = measure.measure_run(measured_mini, measured_mini.run("relu-s1"), progress=False)
    evaluated = inference.inference_run(profile, run, progress=False)

    def read_only(path, what, ddp=None):
        raise OSError(errno.EROFS, "Read-only file system", str(path / ".lock"))

    monkeypatch.setattr(measure, "run_lock", read_only)
    monkeypatch.setattr(inference, "run_lock", read_only)
    assert measure.measure_run(measured_mini, measured_mini.run("relu-s1"), progress=False) == measured
    assert inference.inference_run(profile, run, progress=False) == evaluated
    fresh = load_profile(profile.path, overrides=profile.overrides + ["inference.p=[3]"])  # not cached: computed
    with pytest.raises(OSError, match="Read-only"):
        inference.inference_run(fresh, fresh.run("relu-s1"), progress=False)
