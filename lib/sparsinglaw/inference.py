"""Sparse inference on held-out text: what PPL-p% sparsity costs in quality (the paper's Table 1, our analog).

The paper's Table 1 runs each model densely and with the fixed thresholds of PPL-1%, 5% and 10% on
downstream benchmarks (commonsense reasoning, reading comprehension). We have no benchmarks at this
scale, so the quality is measured on held-out text of our own corpus instead: mean loss, perplexity and
next-token accuracy, per data domain (the validation split's domain ids, e.g. code and prose) and overall.

For each run of the group ``inference.group`` (cached per run, locked like training and measuring):
  1. on the run's final stable checkpoint, the CETT value c of PPL-p% is searched for every p of
     ``inference.p`` on the *calibration* set -- the first ``sparsity.eval_tokens`` tokens of the
     validation split, the set every measurement uses -- with ``sparsity.ppl_p_sparsity`` (fast, with the
     measurement's tol, n_grid and search);
  2. fixed per-layer thresholds tau_l(c) are derived on each calibration batch alone and averaged over
     the batches, weighted by their valid tokens (``averaged_thresholds``); these applied thresholds are
     evaluated once on the calibration set too (``calib_applied_ppl_ratio``, next to ``calib_ppl_ratio``,
     the search's ratio at its whole-set thresholds); ``reached`` is False where no tested c reached
     the target ratio (the c is then a lower bound, not PPL-p%; a warning names the run);
  3. those thresholds are applied to *held-out* windows taken from the end of the validation split,
     disjoint from the calibration windows (``heldout_set``): per domain and for "all", the loss, the
     perplexity, the accuracy (argmax == target) and the activation ratio (share of (token, neuron) pairs
     with n_i = |h_i| ||W_down[:, i]|| >= tau_l and h_i != 0, over all layers); p = 0 rows are the dense model, whose
     activation ratio is the share of neurons with h_i != 0.

Results of one run: runs/<profile>/<run key>/inference-<key>.json (written atomically);
``sparse_inference_for`` then writes results/<profile>/sparse_inference.csv with a provenance sidecar.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import sparsity as sp
from .config import (
    ProfileConfig,
    RunConfig,
    SparsingLawError,
    command_for,
    stable_hash,
    validate_inference,
)
from .device import usable_cores
from .measure import (
    eval_set,
    load_model,
    measure_device,
    read_cached,
    require_corpus,
    require_record_corpus,
    require_trained,
    run_worker,
    search_steps,
    search_with_bar,
    stable_checkpoints,
)
from .model import Transformer, sparse
from .runs import (
    current,
    data_cache_dir,
    group_runs,
    provenance,
    read_table,
    results_dir,
    run_dir,
    run_lock,
    run_parallel,
    write_table,
)
from .train import atomic_write_files, remove_stale_temps, versions

INFERENCE_VERSION = 3  # bump when the evaluation changes meaning (invalidates cached records)
# 2: grid sample over every neuron (sparsity._grid_stride), token-weighted averaged thresholds, new columns
# 3: a kept neuron with h_i = 0 is not counted active (sparsity.activation_stats, as measure's version 3)
TABLE = "sparse_inference"  # results/<profile>/sparse_inference.csv
COLUMNS = ["run", "activation", "non_embedding_params", "p", "cett", "domain", "n_tokens", "loss", "ppl",
           "accuracy", "activation_ratio", "dense_loss", "dense_accuracy", "ppl_ratio", "calib_ppl_ratio",
           "calib_applied_ppl_ratio", "reached"]
NUMERIC = [c for c in COLUMNS if c not in ("run", "activation", "domain", "reached")]
CALIBRATION = ("eval_tokens", "batch_size", "n_grid", "tol", "search")  # the sparsity fields used here


# -----------------------------------------------------------------------------------------------
# calibration and held-out windows


def heldout_start(n_val: int, seq_len: int, heldout_tokens: int) -> int:
    """Index in the validation split of the first input token of the held-out windows: as many whole
    windows of seq_len as heldout_tokens holds, the last target being the split's last token."""
    return n_val - 1 - heldout_tokens // seq_len * seq_len


def check_split(profile: ProfileConfig, n_val: int, seq_len: int) -> None:
    """Refuse (one line, naming the fields) a validation split too small for both the calibration windows
    (its first sparsity.eval_tokens tokens) and the held-out windows (its last inference.heldout_tokens),
    disjoint. Calibration targets end at index n_cal (data.eval_batches), held-out inputs start after it."""
    s, h = profile.sparsity.eval_tokens, profile.inference.heldout_tokens
    n_cal = min(s, n_val - 1) // seq_len * seq_len
    if heldout_start(n_val, seq_len, h) <= n_cal:
        need = (s // seq_len + h // seq_len) * seq_len + 2
        raise SparsingLawError(
            f"{profile.path}: the validation split has {n_val:,} tokens, too few for sparsity.eval_tokens={s} "
            f"calibration tokens plus inference.heldout_tokens={h} held-out tokens (disjoint whole windows of "
            f"model.seq_len={seq_len}: {need:,} tokens); lower inference.heldout_tokens or sparsity.eval_tokens, "
            "or raise data.val_fraction or data.max_mb")


def heldout_set(profile: ProfileConfig, tokens, seq_len: int) -> list[tuple[torch.Tensor, ...]]:
    """The held-out batches (x, y, domain): windows from the end of the validation split, disjoint from
    the calibration windows of ``measure.eval_set``."""
    from .data import eval_batches

    check_split(profile, len(tokens.val), seq_len)
    n = profile.inference.heldout_tokens // seq_len * seq_len
    s0 = heldout_start(len(tokens.val), seq_len, n)
    return list(eval_batches(tokens.val[s0:], seq_len, profile.sparsity.batch_size, n, domain=tokens.val_domain[s0:]))


# -----------------------------------------------------------------------------------------------
# thresholds and the held-out evaluation


def averaged_thresholds(model: Transformer, batches: list, cs: list[float], n_grid: int = sp.N_GRID,
                        on_batch=None) -> list[list[float]]:
    """Fixed thresholds for sparse inference: for each CETT value c, tau_l(c) per layer computed on each
    calibration batch alone (its own grid and CETT curve, Eq. 3) and averaged over the batches, each
    weighted by its valid tokens.

    Sparse inference needs thresholds fixed in advance, not re-derived on the text being generated: the
    paper (Section 3; the thresholds behind Table 1) determines tau_l on calibration batches and the
    authors' code averages the per-batch values. Their batches are all full, so their plain mean is the
    token-weighted one; ours may end with a short batch (data.eval_batches), whose thresholds come from
    fewer tokens and must not count as much as a full batch's.
    """
    sums, total = np.zeros((len(cs), model.cfg.n_layers)), 0
    for b in batches:
        curves = sp.cett_curves(model, [b], n_grid)
        for i, c in enumerate(cs):
            sums[i] += curves.n_tokens * np.asarray(sp.thresholds_from_cett(curves, c))
        total += curves.n_tokens
        if on_batch:
            on_batch()
    return (sums / total).tolist()


@torch.no_grad()
def heldout_scores(model: Transformer, batches: list, taus: list[float] | None, domains: list[str]) -> list[dict]:
    """Quality of the model on held-out batches (x, y, domain) with thresholds ``taus`` (None: dense).

    One row for "all" and one per domain with tokens: n_tokens (valid targets), loss (mean cross-entropy,
    nats/token), ppl = exp(loss), accuracy (share of targets equal to the argmax of the logits), and
    activation_ratio (``sparsity.activation_stats``: share of (token, neuron) pairs kept with h_i != 0, over
    all layers; dense: h_i != 0). The thresholds are set with ``model.sparse``, the model's own masking.
    """
    n_dom = len(domains)
    dev = next(model.parameters()).device
    loss_sum, hits, count = (np.zeros(n_dom) for _ in range(3))
    with sparse(model, taus=taus):
        for x, y, dom in batches:
            x, y, dom = x.to(dev), y.to(dev), dom.to(dev)
            logits, loss = model(x, y, reduction="none")
            valid = y != -1
            d = dom[valid]
            loss_sum += torch.bincount(d, weights=loss[valid].double(), minlength=n_dom).cpu().numpy()
            hits += torch.bincount(d, weights=(logits.argmax(-1) == y)[valid].double(), minlength=n_dom).cpu().numpy()
            count += torch.bincount(d, minlength=n_dom).cpu().numpy()
    st = sp.activation_stats(model, batches, taus=taus, per_neuron=True)
    per_token = model.cfg.n_layers * model.cfg.d_ff
    rows = [{"domain": "all", "n_tokens": int(count.sum()), "loss": loss_sum.sum() / count.sum(),
             "accuracy": hits.sum() / count.sum(), "activation_ratio": st.activation_ratio}]
    for k, name in enumerate(domains):
        if count[k]:
            ratio = float(st.domain_neuron_active[k].sum()) / (int(st.domain_tokens[k]) * per_token)
            rows.append({"domain": name, "n_tokens": int(count[k]), "loss": loss_sum[k] / count[k],
                         "accuracy": hits[k] / count[k], "activation_ratio": ratio})
    for r in rows:
        r["loss"], r["accuracy"] = float(r["loss"]), float(r["accuracy"])
        r["ppl"] = math.exp(r["loss"])
    return rows


# -----------------------------------------------------------------------------------------------
# one run


def inference_key(profile: ProfileConfig, run: RunConfig) -> str:
    """Hash of everything the sparse-inference record of `run` depends on."""
    inf = profile.inference
    return stable_hash({"v": INFERENCE_VERSION, "run": run.config_hash(profile.data),
                        "calibration": {k: getattr(profile.sparsity, k) for k in CALIBRATION},
                        "p": sorted(float(v) for v in inf.p), "heldout_tokens": inf.heldout_tokens})[:10]


def record_path(profile: ProfileConfig, run: RunConfig, runs_dir=None) -> Path:
    """runs/<profile>/<run key>/inference-<inference key>.json"""
    return run_dir(profile, run, runs_dir) / f"inference-{inference_key(profile, run)}.json"


def inference_run(profile: ProfileConfig, run: RunConfig, runs_dir=None, progress: bool = True) -> dict:
    """Dense and PPL-p% sparse inference of the run's final stable checkpoint on held-out text (cached);
    returns the record (rows as in the results table, without the run columns)."""
    from .data import prepare
    from .progress import progress_bar  # tqdm on stderr, or the parent's stage bar

    require_trained(profile, run, runs_dir)
    out = record_path(profile, run, runs_dir)
    d = out.parent
    if out.exists():  # cached (written whole, so read without the lock: a read-only archive of runs serves too)
        return read_record(out, profile, run)
    with run_lock(d, f"sparse inference {run.name}"):
        if out.exists():
            return read_record(out, profile, run)
        remove_stale_temps(d)
        t0 = time.perf_counter()
        s = profile.sparsity
        dev = measure_device(profile)
        tokens = prepare(profile.data, data_cache_dir(runs_dir), progress=False)
        held = heldout_set(profile, tokens, run.model.seq_len)  # on the CPU: moved batch by batch
        calib = eval_set(profile, tokens, run.model.seq_len, dev)
        ck = stable_checkpoints(profile, run, runs_dir).iloc[-1]  # refused when one is missing or invalid
        require_corpus(run, ck["path"], tokens.fingerprint)
        model = load_model(run, ck["path"], dev)
        ps = sorted({float(v) for v in profile.inference.p})
        steps = search_steps(s.tol)
        bar = progress_bar(total=len(ps) * (steps + 2) + len(calib) + 1, desc=f"sparse inference {run.name}",
                           disable=not progress, name=run.name, mininterval=2.0, dynamic_ncols=True)
        searches = {}
        curves = [sp.cett_curves(model, calib, s.n_grid)]  # once for every p
        for p in ps:  # Algorithm 1 on the calibration set: the c of PPL-p%
            searches[p] = search_with_bar(bar, steps, lambda tick, p=p: sp.ppl_p_sparsity(
                model, calib, p, impl="fast", tol=s.tol, n_grid=s.n_grid, search=s.search, curves=curves,
                name=f"run {run.name}", progress=tick))
        taus = dict(zip(ps, averaged_thresholds(model, calib, [searches[p].cett for p in ps], s.n_grid,
                                                on_batch=lambda: bar.update(1)), strict=True))
        applied = {}  # the PPL ratio of the applied (averaged) thresholds on the calibration set itself
        for p in ps:
            applied[p] = sp.ppl_ratio(sp.evaluate(model, calib, taus=taus[p]).loss, curves[0].dense_loss)
            bar.update(1)
        dense = heldout_scores(model, held, None, tokens.domains)
        bar.update(1)
        base = {r["domain"]: r for r in dense}
        rows = [dict(r, p=0.0, cett=math.nan, dense_loss=r["loss"], dense_accuracy=r["accuracy"], ppl_ratio=1.0,
                     calib_ppl_ratio=1.0, calib_applied_ppl_ratio=1.0, reached=True) for r in dense]
        for p in ps:
            for r in heldout_scores(model, held, taus[p], tokens.domains):
                b = base[r["domain"]]
                rows.append(dict(r, p=p, cett=searches[p].cett, dense_loss=b["loss"], dense_accuracy=b["accuracy"],
                                 ppl_ratio=math.exp(r["loss"] - b["loss"]), calib_ppl_ratio=searches[p].mean_ratio,
                                 calib_applied_ppl_ratio=applied[p], reached=searches[p].reached))
            bar.update(1)
        bar.close()
        record = {"run": run.name, "key": inference_key(profile, run), "config_hash": run.config_hash(profile.data),
                  "corpus": tokens.fingerprint, "versions": versions(), "step": int(ck["step"]),
                  "tokens": int(ck["tokens"]), "inference": dataclasses.asdict(profile.inference),
                  "calibration": {"tokens": sp.count_tokens(calib), "batches": len(calib),
                                  **{k: getattr(s, k) for k in CALIBRATION}},
                  "heldout": {"start": heldout_start(len(tokens.val), run.model.seq_len,
                                                     profile.inference.heldout_tokens),
                              "tokens": sp.count_tokens(held), "val_tokens": len(tokens.val)},
                  "taus": {str(p): t for p, t in taus.items()},
                  "search": {str(p): {"cett": r.cett, "bracket": list(r.bracket), "reached": r.reached,
                                      "trace": r.trace, "calib_ppl_ratio": r.mean_ratio,
                                      "calib_applied_ppl_ratio": applied[p],
                                      "calib_activation_ratio": r.activation_ratio[0],
                                      "whole_set_taus": r.thresholds[0]} for p, r in searches.items()},
                  "rows": [{k: r[k] for k in COLUMNS if k in r} for r in rows]}
        atomic_write_files({out: json.dumps(record, indent=1).encode()})
        held_ratio = next((r["ppl_ratio"] for r in rows if r["p"] == min(ps) and r["domain"] == "all"), math.nan)
        print(f"{run.name}: sparse inference at PPL-{'/'.join(f'{p:g}' for p in ps)}% on {sp.count_tokens(held):,} "
              f"held-out tokens (PPL-{min(ps):g}%: held-out PPL ratio {held_ratio:.4f}) in "
              f"{time.perf_counter() - t0:.1f} s on {dev}", flush=True)
        return record


def read_record(path: Path, profile: ProfileConfig, run: RunConfig) -> dict:
    """A cached sparse-inference record of `run` under the current config and settings."""
    return read_cached(path, run, inference_key(profile, run), run.config_hash(profile.data), "sparse-inference",
                       "evaluate")


# -----------------------------------------------------------------------------------------------
# a whole profile


def inference_table(profile: ProfileConfig, runs: list[RunConfig], runs_dir=None,
                    corpus: dict | None = None) -> pd.DataFrame:
    """The cached records of `runs` as one table with the columns COLUMNS (refused when one was made on
    another corpus than the fingerprint `corpus`; None: not checked)."""
    from .model import num_params_from_config

    frames = []
    for r in runs:
        rec = inference_run(profile, r, runs_dir, progress=False)
        require_record_corpus(rec, corpus, r, "sparse-inference record")
        df = pd.DataFrame(rec["rows"])
        df["run"], df["activation"] = r.name, r.model.activation
        df["non_embedding_params"] = num_params_from_config(r.model, non_embedding=True)
        frames.append(df[COLUMNS])
    return pd.concat(frames, ignore_index=True)


def preflight(profile: ProfileConfig, runs_dir=None, progress: bool = False):
    """The checks of sparse_inference_for that need no model (the inference settings, a validation split
    large enough for every run's calibration and held-out windows), also made by `compute` before it
    trains: a split too small stops it at once, not after the training. Returns the corpus's TokenData."""
    from .data import prepare

    validate_inference(profile.inference, profile.runs, f"{profile.path}: inference")
    tokens = prepare(profile.data, data_cache_dir(runs_dir), progress=progress)
    for r in group_runs(profile, profile.inference.group):
        check_split(profile, len(tokens.val), r.model.seq_len)
    return tokens


def sparse_inference_for(profile: ProfileConfig, compute: bool = True, runs_dir=None, progress: bool = True,
                         jobs: int | None = None) -> pd.DataFrame:
    """Dense vs PPL-p% sparse inference of every run of ``inference.group`` on held-out text (one row per
    run x p x domain, p = 0 dense), computed (cached per run; runs in parallel processes like the
    measurement) and written to results/<profile>/sparse_inference.csv. With ``compute=False`` the
    table is only read back (``read_inference``)."""
    if not compute:
        return read_inference(profile)
    runs = group_runs(profile, profile.inference.group)
    tokens = preflight(profile, runs_dir)
    todo = [r for r in runs if not record_path(profile, r, runs_dir).exists()]  # cached runs spawn nothing
    todo.sort(key=lambda r: -r.model.d_model * r.model.n_layers)  # longest first
    jobs = max(1, min(jobs or profile.compute.jobs or usable_cores(), len(todo) or 1))
    calls = [(inference_run, profile, r.name, runs_dir, progress) for r in todo]
    run_parallel(run_worker, calls, jobs, "sparse inference", progress=progress,
                 weights=[r.model.d_model * r.model.n_layers for r in todo], names=[r.name for r in todo])
    df = inference_table(profile, runs, runs_dir, corpus=tokens.fingerprint)
    meta = provenance(profile, stage="inference", corpus=tokens.fingerprint,
                      sparsity=dataclasses.asdict(profile.sparsity),
                      inference=dataclasses.asdict(profile.inference))
    write_table(df, results_dir(profile.name) / f"{TABLE}.csv", meta)
    return df


def read_inference(profile: ProfileConfig, strict: bool = False, columns: list[str] = COLUMNS) -> pd.DataFrame:
    """results/<profile>/sparse_inference.csv read back with runs.read_table's checks (sidecar sha256,
    `columns` present, numbers; the recorded hash of the profile parts it is made from (runs.current),
    inference settings included, against the current profile's: a warning, or an error when `strict`)."""
    return read_table(results_dir(profile.name) / f"{TABLE}.csv", columns, [c for c in NUMERIC if c in columns],
                      expect=current(profile, "inference", {"inference": dataclasses.asdict(profile.inference)}),
                      strict=strict,
                      fix=f"make it with {command_for(profile, 'compute', '06_sparse_inference')}")


# -----------------------------------------------------------------------------------------------
# Table 1 layout


def table1(df: pd.DataFrame) -> pd.DataFrame:
    """The table in the paper's Table 1 layout: one row per (activation, run, p) -- p = 0 is dense --
    ordered by activation, size and p; columns (domain, metric) with "all" first, the metrics loss
    (nats/token), ppl, accuracy and activation_ratio; plus the CETT value c and the held-out PPL ratio."""
    df = df.sort_values(["activation", "non_embedding_params", "run", "p"], kind="stable")
    keys = ["activation", "run", "p"]
    domains = ["all", *[d for d in dict.fromkeys(df["domain"]) if d != "all"]]
    metrics = ["loss", "ppl", "accuracy", "activation_ratio"]
    wide = df.pivot(index=keys, columns="domain", values=metrics).swaplevel(axis=1)
    wide = wide.reindex(columns=pd.MultiIndex.from_product([domains, metrics]))
    overall = df[df["domain"] == "all"].set_index(keys)[["cett", "ppl_ratio"]]
    overall.columns = pd.MultiIndex.from_product([["all"], overall.columns])
    out = pd.concat([overall, wide], axis=1)
    order = pd.MultiIndex.from_frame(df[keys].drop_duplicates())
    return out.reindex(order)


def averages(df: pd.DataFrame) -> pd.DataFrame:
    """Per activation and p, the mean over runs on all held-out tokens: PPL increase over dense (%),
    accuracy change vs dense (percentage points) and activation ratio -- the form of the paper's
    one-line summary of Table 1 (its averages over the ten models)."""
    a = df[df["domain"] == "all"]
    a = a.assign(ppl_increase_pct=100 * (a["ppl_ratio"] - 1),
                 accuracy_change_points=100 * (a["accuracy"] - a["dense_accuracy"]))
    g = a.groupby(["activation", "p"])
    out = g[["ppl_increase_pct", "accuracy_change_points", "activation_ratio"]].mean()
    out["runs"] = g.size()
    return out.reset_index()
