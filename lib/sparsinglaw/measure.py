"""The measurement stage: PPL-p% sparsity and its companions on every checkpoint of every run.

For each run of a profile (cached per run, resumable, locked like training):
  1. the run's one CETT value c per p is searched on its last `n_last` stable-stage checkpoints jointly
     (Algorithm 1; v4 App. E), then applied to every checkpoint, each with its own thresholds tau_l(c);
     a p whose target ratio no tested c reaches is kept with reached = False (and a warning);
  2. per checkpoint: dense loss, activation ratio overall and per layer at PPL-p%, the activation ratio
     of exact zeros (``nonzero_ratio``: the share of non-zero outputs; ReLU-like activations only,
     model.zeroes_negatives), dead-neuron ratio
     (neurons active on < dead_freq of the tokens at PPL-p%);
  3. on the final stable checkpoint: activation frequency of every neuron per data domain and the
     per-token activation ratio per vocabulary id (at PPL-1%), for Fig. 9 and 10.

Results of one run: runs/<profile>/<run key>/sparsity-<impl>-<measure key>.json (+ .npz of the neuron and
token arrays) and, for a run in sparsity.pareto_runs, pareto-<pareto key>.csv, written atomically;
`measure_profile` then writes results/<profile>/sparsity.csv, neurons.csv and tokens.csv, each with a
provenance sidecar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import (
    ProfileConfig,
    RunConfig,
    SparsingLawError,
    checkpoint_steps,
    command_for,
    command_line,
    stable_hash,
    stage_steps,
    total_steps,
)
from .data import CorpusError
from .device import usable_cores
from .model import zeroes_negatives
from .runs import (
    REQUIRED,
    RESULT_COLUMNS,
    checkpoints,
    current,
    data_cache_dir,
    mark_problem,
    provenance,
    read_csv,
    read_table,
    results_dir,
    run_dir,
    run_lock,
    run_parallel,
    run_state,
    train_command,
    write_table,
)
from .train import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_files,
    check_corpus,
    corpus_differs,
    read_meta,
    remove_stale_temps,
    restore_advice,
    sha256_file,
    short_split_note,
    versions,
)

MEASURE_VERSION = 3  # bump when the measurement changes meaning (invalidates cached measurements)
# 2: the grid's quantile sample walks over every neuron (sparsity._grid_stride); rows carry `reached`
# 3: a neuron kept with h_i = 0 is not counted active (sparsity.activation_stats)


# -----------------------------------------------------------------------------------------------
# inputs


def measure_device(profile: ProfileConfig) -> torch.device:
    """The device measurements run on (compute.device). Always float32; on CUDA with TF32 switched off,
    so thresholds and losses are the float32 numbers the CPU computes, up to summation order."""
    from .device import resolve_device

    dev = resolve_device(profile.compute.device)
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch.device(dev)


def load_model(run: RunConfig, path: str | Path, device: torch.device | str = "cpu"):
    """A float32 Transformer on `device` with the weights of checkpoint `path` (listed by
    runs.checkpoints; its bytes are checked here against its sidecar's sha256, once in a process, since
    a listing trusts the digest its run folder keeps for an unchanged file)."""
    from .model import Transformer

    path = Path(path)
    tag = path.stem.removeprefix("ckpt_")
    if sha256_file(path) != read_meta(path.parent, tag).get("sha256"):
        raise CheckpointError(f"refusing checkpoint {path}: checksum mismatch (its bytes changed after it was "
                              f"written); restore it, or delete the run folder {path.parent} and train the run "
                              "again")
    model = Transformer(run.model)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    return model.to(device).eval()


def require_corpus(run: RunConfig, ckpt_path: str | Path, corpus: dict) -> None:
    """Refuse a checkpoint trained on another corpus than the fingerprint `corpus` (train.check_corpus)."""
    ckpt_path = Path(ckpt_path)
    tag = ckpt_path.stem.removeprefix("ckpt_")
    check_corpus(run, read_meta(ckpt_path.parent, tag), ckpt_path.parent / f"meta_{tag}.json", corpus)


def search_steps(tol: float) -> int:
    """Progress-bar budget of one PPL-p% search: the tested c of a bisection to `tol` and one more."""
    return math.ceil(math.log2(1 / tol)) + 1


def search_with_bar(bar, steps: int, search):
    """search(progress) with `bar` advanced once per tested c, up to `steps`, then topped up to `steps`
    (a search that stops early, a secant one, leaves no gap in the bar)."""
    seen = [0]

    def tick(event: dict) -> None:
        if event.get("stage") == "search" and seen[0] < steps:
            seen[0] += 1
            bar.update(1)

    result = search(tick)
    bar.update(steps - seen[0])
    return result


def require_record_corpus(record: dict, corpus: dict | None, run: RunConfig, what: str) -> None:
    """Refuse a cached `what` record of `run` made on another corpus than `corpus` (None: not checked),
    so that one results table never mixes corpora."""
    was = record.get("corpus")
    if corpus is None or not corpus_differs(was, corpus):
        return
    fix = restore_advice(was, corpus, "made", "the record's 'versions'")
    old, now = str(was.get("sha256"))[:12], str(corpus.get("sha256"))[:12]
    raise CorpusError(f"run {run.name}: its cached {what} was made on another corpus (sha256 {old}) than "
                      f"data.* gives now (sha256 {now}); {fix}, or delete the run's folder to train and measure "
                      "it again")


def eval_set(profile: ProfileConfig, tokens, seq_len: int, device: torch.device | str = "cpu"
             ) -> list[tuple[torch.Tensor, ...]]:
    """The fixed validation batches (x, y, domain) every measurement of the profile uses, on `device`."""
    from .data import eval_batches

    s = profile.sparsity
    return [tuple(t.to(device) for t in b)
            for b in eval_batches(tokens.val, seq_len, s.batch_size, s.eval_tokens, domain=tokens.val_domain)]


# the Pareto sweeps' own settings: the PPL-p% measurement does not read them, so they are not in its key
# (another sweep, or another run swept, measures nothing again)
SWEEP_FIELDS = ("pareto_runs", "cett_sweep", "topk_fracs", "fat_eps")


def measured_settings(profile: ProfileConfig) -> dict:
    """The sparsity settings the PPL-p% measurement depends on: all but SWEEP_FIELDS."""
    return {k: v for k, v in dataclasses.asdict(profile.sparsity).items() if k not in SWEEP_FIELDS}


def measure_key(profile: ProfileConfig, run: RunConfig) -> str:
    """Hash of everything the PPL-p% measurement of `run` depends on: the run and `measured_settings`; for
    a ReLU-like activation other than relu (model.zeroes_negatives), that its exact zeros are measured too
    (a relu2 measurement from before they were kept none: measured again, not reused)."""
    key = {"v": MEASURE_VERSION, "run": run.config_hash(profile.data), "sparsity": measured_settings(profile)}
    if run.model.activation != "relu" and zeroes_negatives(run.model.activation):
        key["exact_zeros"] = True
    return stable_hash(key)[:10]


def pareto_key(profile: ProfileConfig, run: RunConfig) -> str:
    """Hash of everything the Pareto sweep of `run` depends on: its measurement (whose PPL-p% points the
    sweep's table includes) and the values swept (an MoE run sweeps its routed experts only); not which
    other runs are swept."""
    s = profile.sparsity
    swept = {} if run.model.n_experts > 0 else {"cett_sweep": s.cett_sweep, "topk_fracs": s.topk_fracs,
                                                 "fat_eps": s.fat_eps}
    return stable_hash({"measure": measure_key(profile, run), **swept})[:10]


def with_impl(profile: ProfileConfig, impl: str | None) -> ProfileConfig:
    """The profile with sparsity.impl overridden (None: as configured); measure_key and the file names
    of a measurement follow it."""
    if impl is None or impl == profile.sparsity.impl:
        return profile
    return dataclasses.replace(profile, sparsity=dataclasses.replace(profile.sparsity, impl=impl))


def record_path(profile: ProfileConfig, run: RunConfig, runs_dir=None, impl: str | None = None) -> Path:
    """runs/<profile>/<run key>/sparsity-<impl>-<measure key>.json: the cached measurement of `run` with
    `impl` (None: the profile's sparsity.impl); its arrays are the .npz beside it."""
    profile = with_impl(profile, impl)
    return run_dir(profile, run, runs_dir) / f"sparsity-{profile.sparsity.impl}-{measure_key(profile, run)}.json"


def stable_marks(run: RunConfig) -> list[int]:
    """The stable-stage steps the trainer keeps a checkpoint of: its marks and its final step, within
    warmup < step <= warmup + stable (the stage rule of the checkpoints' sidecars, train.train)."""
    warmup, stable, _ = stage_steps(run.model, run.train)
    kept = set(checkpoint_steps(run.model, run.train)) | {total_steps(run.model, run.train)}
    return sorted(s for s in kept if warmup < s <= warmup + stable)


def stable_checkpoints(profile: ProfileConfig, run: RunConfig, runs_dir=None) -> pd.DataFrame:
    """Every stable-stage mark checkpoint of a trained run (runs.checkpoints' columns, sorted by step);
    refused, naming the steps and the first problem, when one is missing or invalid (runs.checkpoints
    skips those)."""
    ck = checkpoints(profile, run, runs_dir)
    ck = ck[ck["stage"] == "stable"].reset_index(drop=True)
    d = run_dir(profile, run, runs_dir)
    have = set(ck["step"])
    bad = [s for s in stable_marks(run) if s not in have]
    if bad:
        first = mark_problem(d, bad[0], run.config_hash(profile.data))
        raise SparsingLawError(
            f"run {run.name}: stable-stage checkpoint(s) of step(s) {', '.join(map(str, bad))} missing or invalid "
            f"({first}); restore the file(s), or delete the run folder {d} to train the run again "
            f"({train_command(profile, runs_dir, run.name)})")
    if len(ck) == 0:
        raise SparsingLawError(f"run {run.name}: no stable-stage checkpoint in {d} (the schedule has no stable "
                               "stage); lower train.warmup_frac or train.decay_frac")
    return ck


# -----------------------------------------------------------------------------------------------
# one run


def require_trained(profile: ProfileConfig, run: RunConfig, runs_dir=None) -> None:
    """Raise, naming the command to run, unless `run` has finished training."""
    st = run_state(profile, run, runs_dir)
    if not st.trained:  # a damaged run: stable_checkpoints names a lost checkpoint the measurement needs
        raise SparsingLawError(f"run {run.name} is not trained ({st.status}, {st.tokens_seen:,} of "
                               f"{st.tokens_total:,} tokens); train it first: "
                               f"{train_command(profile, runs_dir, run.name)}")


def measure_run(profile: ProfileConfig, run: RunConfig, runs_dir=None, progress: bool = True,
                impl: str | None = None) -> dict:
    """Measure every stable checkpoint of a finished run (cached); returns the cached record."""
    from . import sparsity as sp
    from .data import prepare
    from .progress import progress_bar  # tqdm on stderr, or the parent's stage bar

    require_trained(profile, run, runs_dir)
    profile = with_impl(profile, impl)
    scfg = profile.sparsity
    out = record_path(profile, run, runs_dir)
    d = out.parent
    if out.exists() and out.with_suffix(".npz").exists():  # cached (written whole, so read without the
        return read_record(out, profile, run)  # lock: a read-only archive of runs serves too)
    with run_lock(d, f"measure {run.name}"):
        if out.exists():
            rec = read_record(out, profile, run)
            if out.with_suffix(".npz").exists():
                return rec
            print(f"note: run {run.name}: the arrays of its measurement ({out.with_suffix('.npz').name}) are "
                  "missing; measuring it again", flush=True)
            out.unlink()  # a reader without the lock must not pair this record with the new arrays
        remove_stale_temps(d)
        t0 = time.perf_counter()
        dev = measure_device(profile)
        tokens = prepare(profile.data, data_cache_dir(runs_dir), progress=False)
        ck = stable_checkpoints(profile, run, runs_dir)
        for path in ck["path"]:
            require_corpus(run, path, tokens.fingerprint)
        batches = eval_set(profile, tokens, run.model.seq_len, dev)
        if note := short_split_note(f"run {run.name}", "sparsity.eval_tokens", scfg.eval_tokens, len(tokens.val),
                                    run.model.seq_len):
            print(note, flush=True)
        loaders = [lambda path=p: load_model(run, path, dev) for p in ck["path"]]
        search_idx = list(range(len(ck)))[-scfg.n_last:]
        if scfg.n_last > len(ck):
            print(f"note: run {run.name}: sparsity.n_last={scfg.n_last}, but the run has {len(ck)} stable-stage "
                  f"checkpoints; c is searched on all {len(ck)}", flush=True)
        ps = sorted({float(v) for v in scfg.p})
        steps = search_steps(scfg.tol)
        bar = progress_bar(total=len(ps) * steps + len(ck), desc=f"measure {run.name}", disable=not progress,
                           name=run.name, mininterval=2.0, dynamic_ncols=True)
        searches = {}
        for p in ps:  # Algorithm 1 on the last stable checkpoints jointly: one c per run and p
            searches[p] = search_with_bar(bar, steps, lambda tick, p=p: sp.ppl_p_sparsity(
                [loaders[i] for i in search_idx], batches, p, impl=scfg.impl, tol=scfg.tol, n_grid=scfg.n_grid,
                search=scfg.search, name=f"run {run.name}", progress=tick))
        rows, final_arrays = [], None
        zeroing = zeroes_negatives(run.model.activation)  # ReLU-like: its exact zeros are measured too
        for i, row in ck.iterrows():
            model = loaders[i]()
            curves = sp.cett_curves(model, batches, scfg.n_grid) if scfg.impl == "fast" else None
            zeros = sp.activation_stats(model, batches, rule=sp.zeros_rule()) if zeroing else None
            last = i == len(ck) - 1
            for p in ps:
                c = searches[p].cett
                if curves is not None:
                    taus, dense = sp.thresholds_from_cett(curves, c), curves.dense_loss
                else:
                    ref = sp.apply_cett([model], batches, c, impl="reference", n_grid=scfg.n_grid)[0]
                    taus, dense = ref.taus, ref.dense_loss
                stats = sp.activation_stats(model, batches, taus=taus, per_neuron=True,
                                            per_token=last and p == 1.0)
                rows.append({
                    "step": int(row["step"]), "tokens": int(row["tokens"]), "p": p, "cett": c,
                    "dense_loss": dense, "sparse_loss": stats.loss, "ppl_ratio": math.exp(stats.loss - dense),
                    "activation_ratio": stats.activation_ratio,
                    "layer_ratios": ";".join(f"{v:.6f}" for v in stats.active_per_layer),
                    "taus": ";".join(f"{v:.6g}" for v in taus),
                    "nonzero_ratio": zeros.activation_ratio if zeros is not None else float("nan"),
                    "dead_ratio": stats.dead_ratio(scfg.dead_freq), "searched": i in search_idx,
                    "n_tokens": stats.n_tokens, "reached": searches[p].reached,  # False: c is no PPL-p%
                })
                if last and p == 1.0:
                    final_arrays = {"domain_frequency": stats.domain_frequency().cpu().numpy(),
                                    "neuron_frequency": stats.neuron_frequency().cpu().numpy(),
                                    "token_sum": stats.token_sum.cpu().numpy(),
                                    "token_count": stats.token_count.cpu().numpy(),
                                    "step": np.array(int(row["step"]))}
            bar.update(1)
        bar.close()
        buf = io.BytesIO()
        np.savez_compressed(buf, **final_arrays)
        arrays = buf.getvalue()
        record = {"run": run.name, "key": measure_key(profile, run), "impl": scfg.impl,
                  "arrays_sha256": hashlib.sha256(arrays).hexdigest(),
                  "config_hash": run.config_hash(profile.data), "corpus": tokens.fingerprint,
                  "versions": versions(), "sparsity": measured_settings(profile), "rows": rows,
                  "search": {str(p): {"cett": r.cett, "bracket": list(r.bracket), "reached": r.reached,
                                      "trace": r.trace,
                                      "n_dense_passes": r.n_dense_passes, "n_sparse_passes": r.n_sparse_passes,
                                      "wall_time": r.wall_time, "checkpoints": [int(ck["step"][i]) for i in search_idx]}
                             for p, r in searches.items()}}
        # the record is renamed last: it commits the pair and carries the arrays' sha256
        atomic_write_files({out.with_suffix(".npz"): arrays, out: json.dumps(record, indent=1).encode()})
        cs = ", ".join(f"PPL-{p:g}% c = {r.cett:.4f}" for p, r in searches.items())
        print(f"{run.name}: measured {len(ck)} checkpoints ({cs}) in {time.perf_counter() - t0:.1f} s on {dev}",
              flush=True)
        return record


def read_cached(path: Path, run: RunConfig, key: str, config_hash: str, what: str, fix: str) -> dict:
    """A cached per-run record (JSON with "key", "config_hash" and a list of "rows"), refused naming the
    file when unreadable or not the `what` of `run` under the current config and settings."""
    fix = f"delete it to {fix} run {run.name} again"
    try:
        rec = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise SparsingLawError(f"{path}: unreadable {what} record ({e}); {fix}") from None
    want = {"key": key, "config_hash": config_hash}
    got = {k: rec.get(k) for k in want} if isinstance(rec, dict) else {}
    if got != want or not isinstance(rec.get("rows"), list):
        raise SparsingLawError(f"{path}: not the {what} of run {run.name} under this config (key "
                               f"{str(got.get('key'))[:10]}, config hash {str(got.get('config_hash'))[:10]}; expected "
                               f"{want['key']}, {want['config_hash'][:10]}, and a list of rows); {fix}")
    return rec


def read_record(path: Path, profile: ProfileConfig, run: RunConfig) -> dict:
    """A cached measurement record of `run` under the current config and sparsity settings (the rows of
    a record written before the rename hold ``exact_zero_ratio``: read as ``nonzero_ratio``)."""
    rec = read_cached(path, run, measure_key(profile, run), run.config_hash(profile.data), "measurement",
                      "measure")
    rec["rows"] = [{("nonzero_ratio" if k == "exact_zero_ratio" else k): v for k, v in row.items()}
                   if isinstance(row, dict) else row for row in rec["rows"]]  # the key keeps its place: column order
    return rec


def final_arrays(profile: ProfileConfig, run: RunConfig, runs_dir=None, impl: str | None = None
                 ) -> dict[str, np.ndarray]:
    """The neuron and token arrays of a measured run's final stable checkpoint (measured with `impl`,
    as measure_run: None is the profile's sparsity.impl)."""
    profile = with_impl(profile, impl)
    path = record_path(profile, run, runs_dir).with_suffix(".npz")
    if not path.exists():
        how = command_line(profile, "measure", "--run", run.name, "--impl", profile.sparsity.impl, runs_dir=runs_dir)
        raise SparsingLawError(f"{path}: run {run.name} is not measured; run {how}")
    rec = path.with_suffix(".json")
    want = json.loads(rec.read_text()).get("arrays_sha256") if rec.exists() else None
    if want and sha256_file(path) != want:
        raise SparsingLawError(f"{path}: checksum differs from the one in {rec.name} (corrupted or replaced); "
                               f"delete both to measure run {run.name} again")
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise SparsingLawError(f"{path}: unreadable arrays ({e}); delete it and {rec.name} to measure run "
                               f"{run.name} again") from None


# -----------------------------------------------------------------------------------------------
# a whole profile


def run_worker(fn, profile: ProfileConfig, name: str, runs_dir, progress: bool, *args) -> None:
    """fn(profile, run, runs_dir, progress, *args) in a worker process of runs.run_parallel (the caller's
    profile itself, not its file reloaded; torch with compute.threads threads on CPU; models on
    compute.device)."""
    from .device import setup_torch

    setup_torch("cpu", profile.compute.threads)  # CPU threads (the CPU share of the work on CUDA, too)
    fn(profile, profile.run(name), runs_dir, progress, *args)


def topk_ks(fracs, d_ff: int) -> list[int]:
    """The Top-k baseline's k for fractions `fracs` of d_ff: each rounded to the nearest integer, at least
    1, once each, in increasing order."""
    return sorted({max(1, round(f * d_ff)) for f in fracs})


def measured_runs(profile: ProfileConfig) -> list[RunConfig]:
    """The runs measured checkpoint by checkpoint: every dense run. An MoE run (model.n_experts > 0) is
    a baseline of paper Fig. 2 only: it gets its own Pareto curve (pareto_run), not the laws' tables."""
    return [r for r in profile.runs if not r.model.n_experts]


def measure_profile(profile: ProfileConfig, names: list[str] | None = None, jobs: int | None = None,
                    runs_dir=None, progress: bool = True, impl: str | None = None) -> pd.DataFrame:
    """Measure every dense run (parallel processes, like training; cached runs start none; a line on stdout
    names each MoE run left out), then write the profile's results tables; with `names`, return those runs'
    rows without writing any table."""
    runs = [profile.run(n) for n in dict.fromkeys(names)] if names else list(profile.runs)  # a name given twice: once
    for r in runs:
        if r.model.n_experts:  # skipped, not refused: a job array may send every run of a profile here
            print(f"{r.name}: an MoE run, not measured checkpoint by checkpoint; its curve comes with the "
                  f"Pareto sweeps (sparsity.pareto_runs)", flush=True)
    runs = [r for r in runs if not r.model.n_experts]
    if not runs:
        return pd.DataFrame(columns=RESULT_COLUMNS["sparsity"][0])
    todo = [r for r in runs if not record_path(profile, r, runs_dir, impl).exists()]  # cached runs spawn nothing
    untrained = [r.name for r in todo if not run_state(profile, r, runs_dir).trained]
    if len(untrained) > 1:  # one message and one command, not one per run
        raise SparsingLawError(f"{len(untrained)} runs are not trained ({', '.join(untrained)}); train them "
                               f"first: {train_command(profile, runs_dir)} (finished runs are skipped)")
    todo.sort(key=lambda r: -r.model.d_model * r.model.n_layers)  # longest first
    jobs = jobs or profile.compute.jobs or usable_cores()
    jobs = max(1, min(jobs, len(todo) or 1))
    calls = [(measure_run, profile, r.name, runs_dir, progress, impl) for r in todo]
    run_parallel(run_worker, calls, jobs, "measurement", progress=progress,
                 weights=[r.model.d_model * r.model.n_layers for r in todo], names=[r.name for r in todo])
    return write_results(profile, runs_dir, impl) if not names else sparsity_table(profile, runs, runs_dir, impl)


def sparsity_table(profile: ProfileConfig, runs: list[RunConfig], runs_dir=None, impl=None,
                   corpus: dict | None = None) -> pd.DataFrame:
    """The cached measurements of `runs` as one table (refused when one was made on another corpus than
    the fingerprint `corpus`; None: not checked)."""
    from .model import num_params_from_config

    frames = []
    for r in runs:
        rec = measure_run(profile, r, runs_dir, progress=False, impl=impl)
        require_record_corpus(rec, corpus, r, "measurement")
        df = pd.DataFrame(rec["rows"])
        m = r.model
        df.insert(0, "run", r.name)
        df.insert(1, "activation", m.activation)
        df.insert(2, "groups", ",".join(r.groups))
        df.insert(3, "d_model", m.d_model)
        df.insert(4, "n_layers", m.n_layers)
        df.insert(5, "width_depth", m.width_depth_ratio)
        df.insert(6, "non_embedding_params", num_params_from_config(m, non_embedding=True))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def write_results(profile: ProfileConfig, runs_dir=None, impl=None) -> pd.DataFrame:
    """results/<profile>/{sparsity,neurons,tokens}.csv with provenance sidecars (whose sparsity settings
    name the impl actually used)."""
    from .data import prepare

    runs = measured_runs(profile)
    tokens = prepare(profile.data, data_cache_dir(runs_dir), progress=False)
    table = sparsity_table(profile, runs, runs_dir, impl, corpus=tokens.fingerprint)
    used = with_impl(profile, impl).sparsity
    meta = provenance(profile, stage="measure", corpus=tokens.fingerprint, sparsity=dataclasses.asdict(used))
    out = results_dir(profile.name)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    write_table(table, out / "sparsity.csv", meta)
    neurons, toks, empty = [], [], {}
    for r in runs:
        a = final_arrays(profile, r, runs_dir, impl)
        dom = a["domain_frequency"]  # (n_domains, L, d_ff): as many rows as the largest domain id seen + 1
        freq = a["neuron_frequency"]  # (L, d_ff)
        L, F = freq.shape
        layer, neuron = np.divmod(np.arange(L * F), F)
        cols = {"run": r.name, "step": int(a["step"]), "layer": layer, "neuron": neuron, "all": freq.ravel()}
        for k, name in enumerate(tokens.domains):  # every domain a column; nan where no token of it was measured
            cols[name] = dom[k].ravel() if k < dom.shape[0] else np.full(L * F, np.nan)
            if np.isnan(cols[name]).all():
                empty.setdefault(name, []).append(r.name)
        neurons.append(pd.DataFrame(cols))
        count = a["token_count"]
        seen = np.nonzero(count)[0]
        ratio = a["token_sum"].mean(0)[seen] / count[seen]
        toks.append(pd.DataFrame({"run": r.name, "token_id": seen, "count": count[seen], "activation_ratio": ratio}))
    for name, where in empty.items():
        if not np.isin(tokens.domains.index(name), tokens.val_domain).any():
            why = ("no token in the validation split (which holds out whole documents or records, "
                   "data.val_fraction): raise data.val_fraction or give the domain more documents")
        else:
            why = ("no token in the validation windows measured (the first sparsity.eval_tokens of the validation "
                   "split): raise sparsity.eval_tokens")
        print(f"note: domain '{name}' has {why}; its per-domain columns in neurons.csv are empty for {len(where)} "
              f"of {len(runs)} runs", flush=True)
    write_table(pd.concat(neurons, ignore_index=True), out / "neurons.csv", meta)
    write_table(pd.concat(toks, ignore_index=True), out / "tokens.csv", meta)
    return table


def read_results(profile: ProfileConfig, name: str = "sparsity", strict: bool = False) -> pd.DataFrame:
    """results/<profile>/<name>.csv read back with runs.read_table's checks: sidecar sha256, columns,
    numbers, and the recorded hash of the profile parts measurements are made from (runs.current)
    against the current profile's: a warning, or an error when `strict`."""
    columns, numeric = RESULT_COLUMNS.get(name, ([], []))
    return read_table(results_dir(profile.name) / f"{name}.csv", columns, numeric, required=REQUIRED.get(name, ()),
                      expect=current(profile, "measure"), strict=strict,
                      fix=f"rerun {command_for(profile, 'compute' if name == 'pareto' else 'measure', '02')}")


def results_for(profile: ProfileConfig, compute: bool = True, runs_dir=None) -> pd.DataFrame:
    """results/<profile>/sparsity.csv: measured (and the runs trained) when `compute`, else only read
    back from the committed table (make replot)."""
    if compute:
        from .runs import train_profile

        train_profile(profile, runs_dir=runs_dir)
        return measure_profile(profile, runs_dir=runs_dir)
    return read_results(profile)


# -----------------------------------------------------------------------------------------------
# Pareto curves on a final checkpoint (notebook 02: paper Fig. 3 / v4 Fig. 2 and v4 Fig. 15)


def swept_points(profile: ProfileConfig, run: RunConfig) -> int:
    """The points pareto_run sweeps on `run`, one pass each (an MoE run: one per number of routed experts)."""
    if run.model.n_experts > 0:
        return run.model.n_experts
    scfg = profile.sparsity
    return (len(scfg.cett_sweep) + 2 * len(topk_ks(scfg.topk_fracs, run.model.d_ff)) + len(scfg.fat_eps)
            + int(zeroes_negatives(run.model.activation)))


def read_sweep(path: Path, rows: int) -> tuple[pd.DataFrame | None, str | None]:
    """A sweep's CSV (pareto_run's) that should hold `rows` points, and what is wrong with it (None: nothing);
    a file cut short or edited would otherwise give the Pareto figures and claims fewer or broken points."""
    columns, numeric = RESULT_COLUMNS["pareto"]
    data = path.read_bytes()
    if not data.strip():
        return None, "the file is empty"
    if not data.endswith(b"\n"):  # to_csv ends every row with one: a file cut in its last number
        return None, "cut short: its last line has no end"
    try:
        df = read_csv(io.BytesIO(data))
    except ValueError as e:  # pandas' ParserError, a UnicodeDecodeError
        return None, f"unreadable as CSV ({' '.join(str(e).split()) or type(e).__name__})"
    if list(df.columns) != columns:
        return df, f"its columns are {list(df.columns)}, not {columns}"
    if len(df) != rows:
        return df, f"{len(df)} points, where the sweep makes {rows}"
    text = [c for c in numeric if not pd.api.types.is_numeric_dtype(df[c])]
    if text:
        return df, f"text in the numeric column(s) {', '.join(text)}"
    empty = [c for c in numeric if c != "param" and df[c].isna().any()]  # param: NaN for the exact-zeros point
    return df, (f"empty or NaN values in {', '.join(empty)}" if empty else None)


def pareto_run(profile: ProfileConfig, run: RunConfig, runs_dir=None, progress: bool = True,
               corpus: dict | None = None) -> pd.DataFrame:
    """(activation ratio, PPL) points of PPL-p% (CETT swept), Top-k (per token and the authors' per-batch
    variant), FAT-eps and exact zeros (ReLU-like) on the run's final stable checkpoint (cached). For an MoE run
    only its PPL at every number of routed experts k = 1..E (activation ratio k / E). With `corpus` (a
    fingerprint) a cached sweep is refused when its checkpoint was trained on another corpus."""
    from . import sparsity as sp
    from .data import prepare
    from .progress import progress_bar

    scfg = profile.sparsity
    d = run_dir(profile, run, runs_dir)
    out = d / f"pareto-{pareto_key(profile, run)}.csv"
    moe = run.model.n_experts > 0
    want = swept_points(profile, run) + (0 if moe else len({float(v) for v in scfg.p}))  # + the PPL-p% points
    if out.exists():
        metas = sorted(d.glob("meta_[0-9]*.json")) if corpus is not None else []
        if metas:  # the sweep ran on its run's corpus (checked when it was made): the newest sidecar's
            check_corpus(run, json.loads(metas[-1].read_text()), metas[-1], corpus)
        cached, damage = read_sweep(out, want)
        if damage is not None:
            raise SparsingLawError(f"{out}: the cached Pareto sweep of run {run.name} is damaged ({damage}); "
                                   f"delete it to sweep again ({command_for(profile, 'compute', '02', runs_dir)})")
        return cached
    if moe:
        require_trained(profile, run, runs_dir)
    record = {"rows": []} if moe else measure_run(profile, run, runs_dir, progress=progress)
    with run_lock(d, f"pareto {run.name}"):
        dev = measure_device(profile)
        tokens = prepare(profile.data, data_cache_dir(runs_dir), progress=False)
        batches = eval_set(profile, tokens, run.model.seq_len, dev)
        ck = stable_checkpoints(profile, run, runs_dir).iloc[-1]  # refused when one is missing or invalid
        require_corpus(run, ck["path"], tokens.fingerprint)
        model = load_model(run, ck["path"], dev)
        ks = topk_ks(scfg.topk_fracs, run.model.d_ff)
        zeros = zeroes_negatives(run.model.activation) and not moe
        bar = progress_bar(total=swept_points(profile, run), desc=f"pareto {run.name}",
                           disable=not progress, mininterval=2.0, dynamic_ncols=True)

        def tick(event) -> None:  # one point swept
            bar.update(1)

        try:
            if moe:  # its own curve, every number of routed experts (paper Fig. 2)
                points = sp.sweep_experts(model, batches, range(1, run.model.n_experts + 1), tick)
            else:
                points = sp.sweep_cett(model, batches, scfg.cett_sweep, scfg.n_grid, tick)
                points += sp.sweep_topk(model, batches, ks, progress=tick)
                points += sp.sweep_topk(model, batches, ks, per_batch=True, progress=tick)
                points += sp.sweep_fat(model, batches, scfg.fat_eps, tick)
            if zeros:
                points.append(sp.zeros_point(model, batches, points[0].dense_loss if points else None))
                tick(None)
        finally:
            bar.close()
        rows = [{"method": pt.method, "param": pt.param, "dense_loss": pt.dense_loss, "sparse_loss": pt.sparse_loss,
                 "ppl": pt.ppl, "ppl_ratio": pt.ppl_ratio, "activation_ratio": pt.activation_ratio} for pt in points]
        final = [r for r in record["rows"] if r["step"] == int(ck["step"])]
        for r in final:  # the PPL-p% points themselves
            rows.append({"method": f"ppl-{r['p']:g}%", "param": r["cett"], "dense_loss": r["dense_loss"],
                         "sparse_loss": r["sparse_loss"], "ppl": math.exp(r["sparse_loss"]),
                         "ppl_ratio": r["ppl_ratio"], "activation_ratio": r["activation_ratio"]})
        df = pd.DataFrame(rows)
        df.insert(0, "run", run.name)
        df.insert(1, "activation", run.model.activation)
        df.insert(2, "step", int(ck["step"]))
        atomic_write_bytes(out, df.to_csv(index=False).encode())
    written, damage = read_sweep(out, want)  # as a cached sweep returns it, checked as the next call will
    if damage is not None:
        raise RuntimeError(f"pareto_run wrote {out} with {damage}: swept_points no longer counts what it sweeps")
    return written


def pareto_profile(profile: ProfileConfig, runs_dir=None, progress: bool = True) -> pd.DataFrame:
    """Pareto points of every run in sparsity.pareto_runs -> results/<profile>/pareto.csv."""
    from .data import prepare

    names = profile.sparsity.pareto_runs
    if not names:
        raise SparsingLawError(f"{profile.path}: sparsity.pareto_runs is empty; name the runs to sweep")
    tokens = prepare(profile.data, data_cache_dir(runs_dir), progress=False)
    df = pd.concat([pareto_run(profile, profile.run(n), runs_dir, progress, corpus=tokens.fingerprint)
                    for n in names], ignore_index=True)
    meta = provenance(profile, stage="measure", corpus=tokens.fingerprint,
                      sparsity=dataclasses.asdict(profile.sparsity))
    write_table(df, results_dir(profile.name) / "pareto.csv", meta)
    return df


def pareto_for(profile: ProfileConfig, compute: bool = True, runs_dir=None) -> pd.DataFrame:
    """results/<profile>/pareto.csv: pareto_profile when `compute`, else the committed table read back;
    an empty table when the profile sweeps no run (sparsity.pareto_runs: [])."""
    if not profile.sparsity.pareto_runs:
        return pd.DataFrame(columns=RESULT_COLUMNS["pareto"][0])
    return pareto_profile(profile, runs_dir) if compute else read_results(profile, "pareto")


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """The final stable checkpoint of each run and p: CETT, PPL ratio, activation ratio, share of non-zero
    ReLU outputs, dead-neuron ratio."""
    cols = ["run", "activation", "non_embedding_params", "width_depth", "tokens", "p", "cett", "ppl_ratio",
            "activation_ratio", "nonzero_ratio", "dead_ratio"]
    return table.sort_values("tokens").groupby(["run", "p"], sort=False).tail(1)[cols].reset_index(drop=True)


def dense_curves(points: pd.DataFrame) -> pd.DataFrame:
    """The Pareto points of the dense runs (an MoE run's own curve left out), each with its `curve`: its
    method, except that a PPL-p% point lies on the CETT sweep's curve ("cett")."""
    moe = points.loc[points["method"] == "moe", "run"]
    dense = points[~points["run"].isin(moe)]
    return dense.assign(curve=dense["method"].where(~dense["method"].str.startswith("ppl-"), "cett"))


def ppl_p_curves(points: pd.DataFrame) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """Each dense run's PPL-p% curve among the Pareto points: run -> (activation, activation ratios
    ascending, perplexities), from its CETT sweep and PPL-p% points, closed by c = 0 (every neuron kept:
    the unsparsified perplexity) at ratio 1 and, where the run has an exact-zero point denser than its
    sweep, there too: c = 0 keeps every neuron with h_i != 0, and those are the ones counted active (a ReLU
    model's non-zero share), so the curve is flat from there to 1."""
    dense = dense_curves(points)
    curves = {}
    for run, sub in dense[dense["curve"] == "cett"].groupby("run", sort=False):
        unsparsified = math.exp(float(sub["dense_loss"].iloc[0]))
        sub = sub.sort_values("activation_ratio")
        xs, ys = sub["activation_ratio"].to_numpy(float), sub["ppl"].to_numpy(float)
        zeros = dense.loc[(dense["run"] == run) & (dense["method"] == "zeros"), "activation_ratio"].to_numpy(float)
        close = [float(zeros[0])] if len(zeros) and xs[-1] < zeros[0] < 1.0 else []
        curves[run] = (sub["activation"].iloc[0], np.append(xs, [*close, 1.0]),
                       np.append(ys, [unsparsified] * (len(close) + 1)))
    return curves


TRADEOFF_METHODS = ("cett", "topk", "topk_batch", "fat", "zeros")  # "cett": the CETT sweep and PPL-p% points


def ratio_at_ppl(activation_ratio, ppl_ratio, target: float) -> tuple[float, str]:
    """The activation ratio at which one method's points (activation ratios, PPL ratios) first reach a PPL
    ratio at or below `target`, read from the sparsest point along straight lines between neighbours:
    (a, "=") where the line between two points crosses the target, (a_min, "<=") when the sparsest point is
    already at or below it (the crossing lies at a_min or sparser, unmeasured), (a_max, ">") when no point
    is (it lies denser than every point); (nan, "none") when no point has both numbers finite. Points
    with a NaN are left out."""
    a, r = np.asarray(activation_ratio, float), np.asarray(ppl_ratio, float)
    ok = np.isfinite(a) & np.isfinite(r)
    a, r = a[ok], r[ok]
    if not len(a):
        return math.nan, "none"
    o = np.argsort(a, kind="stable")
    a, r = a[o], r[o]
    if r[0] <= target:
        return float(a[0]), "<="
    for i in range(1, len(a)):
        if r[i] <= target:  # r[i-1] > target >= r[i]
            return float(a[i - 1] + (r[i - 1] - target) * (a[i] - a[i - 1]) / (r[i - 1] - r[i])), "="
    return float(a[-1]), ">"


def tradeoff(points: pd.DataFrame, p: float = 1.0) -> pd.DataFrame:
    """Paper Fig. 3 in one number per method: for each dense run of the Pareto points and each method of
    TRADEOFF_METHODS, the activation ratio at which its PPL ratio reaches 1 + p/100 (ratio_at_ppl; `bound`
    "=", "<=" or ">"). The lower it is, the fewer neurons the method keeps for the same perplexity; the
    paper's finding is that PPL-p% (CETT) needs the fewest."""
    cols = ["run", "activation", "method", "activation_ratio", "bound", "n_points"]
    rows = []
    for run, sub in dense_curves(points).groupby("run", sort=False):
        for m in TRADEOFF_METHODS:
            pts = sub[sub["curve"] == m]
            if len(pts):
                a, bound = ratio_at_ppl(pts["activation_ratio"], pts["ppl_ratio"], 1 + p / 100)
                rows.append({"run": run, "activation": sub["activation"].iloc[0], "method": m,
                             "activation_ratio": a, "bound": bound, "n_points": len(pts)})
    return pd.DataFrame(rows, columns=cols)


def moe_comparison(points: pd.DataFrame, profile: ProfileConfig) -> pd.DataFrame:
    """Paper Fig. 2 as a table: each MoE run of the Pareto points (results/<profile>/pareto.csv) at every
    number of routed experts k, against each dense run's PPL-p% curve (ppl_p_curves) read at the same
    activation ratio, by linear interpolation in the activation ratio (NaN below the curve's sparsest
    point). gap_pct = 100 (ppl_moe / ppl_dense_at_ratio - 1): above 0, the dense model with PPL-p% sparsity
    reaches a lower perplexity than the MoE at the same activation ratio."""
    curves = ppl_p_curves(points)
    rows = []
    for name, pts in points[points["method"] == "moe"].groupby("run", sort=False):
        m = profile.run(name).model
        for _, pt in pts.sort_values("param").iterrows():
            a, ppl, k = float(pt["activation_ratio"]), float(pt["ppl"]), int(pt["param"])
            for dn, (act, xs, ys) in curves.items():
                at = float(np.interp(a, xs, ys)) if xs[0] <= a <= xs[-1] else math.nan
                rows.append({"moe_run": name, "activation": m.activation, "n_experts": m.n_experts, "k": k,
                             "trained_k": k == m.top_k, "activation_ratio": a, "ppl_moe": ppl, "dense_run": dn,
                             "dense_activation": act, "ppl_dense_at_ratio": at, "ppl_dense_unsparsified": ys[-1],
                             "gap_pct": 100 * (ppl / at - 1) if at == at else math.nan})
    cols = ["moe_run", "activation", "n_experts", "k", "trained_k", "activation_ratio", "ppl_moe", "dense_run",
            "dense_activation", "ppl_dense_at_ratio", "ppl_dense_unsparsified", "gap_pct"]
    return pd.DataFrame(rows, columns=cols)


def moe_comparison_for(profile: ProfileConfig, points: pd.DataFrame) -> pd.DataFrame:
    """moe_comparison of the profile's Pareto points, written to results/<profile>/moe_comparison.csv with
    the provenance of pareto.csv, its corpus included (left untouched when unchanged)."""
    df = moe_comparison(points, profile)
    out = results_dir(profile.name)
    src = out / "pareto.csv"
    meta = provenance(profile, tables=(src,), stage="measure", sparsity=dataclasses.asdict(profile.sparsity),
                      inputs={"pareto.csv": sha256_file(src) if src.exists() else None})
    write_table(df, out / "moe_comparison.csv", meta)
    return df

