"""One figure style, the figures themselves, and `save`, which writes PNG+PDF atomically and records
each file in figures/<profile>/MANIFEST.csv (paper figure, notebook, config hash, git sha)."""

from __future__ import annotations

import csv
import io
import os
import re
import sys

import matplotlib

if "MPLBACKEND" not in os.environ and "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # non-interactive backend outside notebooks: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402

from .config import ProfileConfig  # noqa: E402
from .laws import FORMS, UNPLACED  # noqa: E402
from .runs import as_bool, as_text, figures_dir, in_group, train_log_table  # noqa: E402

# one palette for activation functions, used in every figure (colour-blind safe, Okabe-Ito)
ACTIVATION_COLORS = {"relu": "#0072B2", "silu": "#D55E00", "gelu": "#009E73", "gelu_tanh": "#56B4E9",
                     "relu2": "#CC79A7"}
SINGLE = (3.5, 2.6)  # single-column figure size (inches)
DOUBLE = (7.2, 2.8)  # double-column figure size (inches)
MANIFEST_FIELDS = ["file", "paper", "notebook", "profile", "config_hash", "git_sha", "git_dirty"]


def style() -> None:
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 150, "savefig.dpi": 200, "savefig.bbox": "tight",
                         "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 6.5,
                         "xtick.labelsize": 7, "ytick.labelsize": 7, "pdf.fonttype": 42})


def log_x(ax) -> None:
    """Log-scaled x axis with plain tick labels (1, 2, 5, ...; matplotlib's linear ticks on an axis
    spanning too little for those, e.g. width-depth ratios 12-16), never 1.2x10^1. Data at one x get a
    factor of 2 either side (matplotlib warned of a singular axis and picked its own)."""
    lo, hi = ax.dataLim.intervalx
    if lo > 0 and np.isclose(lo, hi, rtol=1e-9, atol=0):  # one x, up to the rounding of a transform
        ax.set_xlim(lo / 2, hi * 2)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def color(activation: str) -> str:
    return ACTIVATION_COLORS.get(activation, "#444444")


def _unreached(df: pd.DataFrame) -> pd.Series:
    """Rows whose PPL-p% target no tested CETT value reached (`reached` False, as bool or CSV text): their c
    is only a lower bound, so they are marked, never drawn as PPL-p% points. All False without the column."""
    if "reached" not in df:
        return pd.Series(False, index=df.index)
    return ~as_bool(df["reached"])


def save(fig, name: str, profile: ProfileConfig, paper: str, notebook: str) -> list[str]:
    """Write figures/<profile>/<name>.png and .pdf (no timestamps in their metadata, so committed
    figures change only when data change) and upsert their MANIFEST rows (paper figure, notebook,
    provenance: config hash, git sha and dirty flag, corpus fingerprint, package versions, device).
    A figure drawn again with the same bytes and provenance but for the git state and the machine keeps
    its row (it names the commit that first drew it), so `make replot` on unchanged results leaves the tree
    clean; only a row drawn from a dirty tree is replaced by a clean one. The corpus is the one the
    profile's results tables record (sparsity.csv, else train_log.csv), not this machine's.
    The three files are replaced together, MANIFEST.csv last; a failing write keeps the old ones."""
    import json

    from .runs import provenance, results_dir
    from .train import atomic_write_files

    fields = [*MANIFEST_FIELDS, *(f for f in ("corpus", "versions", "device") if f not in MANIFEST_FIELDS)]
    if fig.axes and not any(ax.has_data() or ax.texts for ax in fig.axes):  # bare axes: say so
        fig.text(0.5, 0.5, f"nothing to draw for profile {profile.name}", ha="center", va="center", fontsize=7,
                 color="0.35")
    out = figures_dir(profile.name)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "ModDate": None, "Producer": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, metadata=meta)
        files[out / f"{name}.{ext}"] = buf.getvalue()
    written = [p.name for p in files]
    tables = results_dir(profile.name)  # the corpus the figure's results were made on, not this machine's
    source = next((t for t in (tables / "sparsity.csv", tables / "train_log.csv") if t.exists()), None)
    g = provenance(profile, tables=(source,) if source else ())
    rows = {}
    manifest = out / "MANIFEST.csv"
    if manifest.exists():
        with open(manifest, newline="") as f:
            rows = {r["file"]: r for r in csv.DictReader(f)}
    for w in written:
        row = {"file": w, "paper": paper, "notebook": notebook, "profile": profile.name,
               "config_hash": g["config_hash"][:12], "git_sha": g["git_sha"][:12], "git_dirty": str(g["git_dirty"]),
               "corpus": g["corpus"].get("sha256", g["corpus"].get("error", ""))[:12],
               "versions": json.dumps(g["versions"], sort_keys=True), "device": g["device"]}
        old = rows.get(w)
        same = (old is not None and (out / w).is_file() and (out / w).read_bytes() == files[out / w]
                and all(_row_value(f, old.get(f, "")) == _row_value(f, row[f]) for f in row
                        if f not in ("git_sha", "git_dirty"))
                and not (old.get("git_dirty") == "True" and row["git_dirty"] == "False"))  # clean replaces dirty
        if not same:  # an unchanged figure keeps the row naming the commit that first drew it
            rows[w] = row
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=fields)
    wr.writeheader()
    for k in sorted(rows):
        wr.writerow({f: rows[k].get(f, "") for f in fields})
    files[manifest] = buf.getvalue().encode()
    atomic_write_files(files)
    return written


def _row_value(field: str, value: str):
    """A MANIFEST value as compared for "the same figure": package versions without the machine's facts
    (runs.MACHINE), as for results tables (runs._provenance_of)."""
    import json

    from .runs import same_build

    if field != "versions":
        return value
    try:
        v = json.loads(value)
    except ValueError:
        return value
    return same_build(v) if isinstance(v, dict) else v


# -----------------------------------------------------------------------------------------------
# figure of notebook 00


def run_grid(states: pd.DataFrame):
    """The profile's runs: non-embedding parameters vs width-depth ratio (our Table 3 analog), one
    marker per activation (MoE runs hollow diamonds); runs at one shape share a label (activation prefix
    dropped, seed replicas counted per activation). `states` is runs.states_table."""
    style()
    fig, ax = plt.subplots(figsize=SINGLE)
    kind = states["activation"].where(states["n_experts"] == 0, states["activation"] + " MoE")
    for (k, g), marker in zip(states.groupby(kind, sort=False), "oxs^v+", strict=False):
        c = color(k.split()[0])
        kw = {"marker": "D", "facecolors": "none", "edgecolors": c} if k.endswith(" MoE") else {"marker": marker,
                                                                                                   "color": c}
        ax.scatter(g["width_depth"], g["non_embedding_params"], label=k, s=16, zorder=3, **kw)
    # one label per shape: runs at one width-depth ratio within 3% in parameters (an MoE and its dense shape)
    labels = []
    for _, at in states.groupby("width_depth"):
        at = at.sort_values("non_embedding_params")
        for _, g in at.groupby((at["non_embedding_params"].pct_change() > 0.03).cumsum()):
            names = sorted({r.split("-", 1)[-1].split("-seed")[0] for r in g["run"]},
                           key=lambda v: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", v)])
            seeds = g[g["run"].str.contains("-seed")]["activation"].value_counts(sort=False)  # per activation
            extra = ", ".join(f"+{k} {a}" for a, k in seeds.items())
            labels.append((g["width_depth"].iloc[0], g["non_embedding_params"].min(), "/".join(names) + (
                f" ({extra} seed run{'s' if seeds.sum() > 1 else ''})" if len(seeds) else "")))
    # labels centred on their points; shapes at about one size (a width-depth grid) take turns above and
    # below, left to right, so that neighbours never share a side
    labels.sort(key=lambda r: r[1])
    band = np.cumsum(np.diff(np.log10([n for _, n, _ in labels]), prepend=np.inf) > 0.05)
    for b in np.unique(band):
        row = sorted((r for r, k in zip(labels, band, strict=True) if k == b), key=lambda r: r[0])
        for i, (wd, n, label) in enumerate(row):
            above = i % 2 == 0
            ax.annotate(label, (wd, n), fontsize=5, xytext=(0, 4 if above else -4), textcoords="offset points",
                        ha="center", va="bottom" if above else "top")
    log_x(ax)
    ax.set_yscale("log")
    ax.margins(0.2)  # room for the labels
    ax.set_xlabel("width-depth ratio d_h / L")
    ax.set_ylabel("non-embedding parameters")
    ax.legend(frameon=False, title=f"{len(states)} runs", title_fontsize=7, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


# -----------------------------------------------------------------------------------------------
# figures of notebook 01


def _steps_per_row(logs: dict[str, pd.DataFrame]) -> int | None:
    """Optimizer steps between a run's train-loss rows (train.log_every, read from the logs' `step`
    column): the most common gap over all runs, None without two train rows."""
    gaps = [d for log in logs.values() for d in np.diff(log.loc[log["split"] == "train", "step"].to_numpy())]
    return int(pd.Series(gaps).mode().iloc[0]) if gaps else None


def loss_curves(logs: dict[str, pd.DataFrame], info: pd.DataFrame, title: str = "", empty: str = "no runs to draw",
                by: str = "non_embedding_params"):
    """Training loss vs tokens for each run (paper Fig. 11 analog): one panel per activation, runs
    coloured by non-embedding parameters (`by="width_depth"`: by width-depth ratio d_h / L, named in the
    legend); validation losses at the checkpoints as dots. Each train point is a logged row as it is (the
    mean loss over the log_every optimizer steps before it): no further smoothing.

    `logs` maps run name -> its rows of train_log.csv (runs.train_log_table) or its log.csv (runs.load_log);
    `info` has run, activation and non_embedding_params (and width_depth for `by="width_depth"`), one row a run.
    """
    style()
    acts = list(dict.fromkeys(info["activation"]))
    fig, axes = plt.subplots(1, max(len(acts), 1), figsize=(DOUBLE[0], DOUBLE[1]), squeeze=False, sharey=True)
    if not acts:
        _nothing(axes[0][0], empty)
    for ax, act in zip(axes[0], acts):
        sub = info[info["activation"] == act].sort_values(by, kind="stable")
        cmap = plt.get_cmap("viridis", max(len(sub), 2) + 1)
        for i, (_, r) in enumerate(sub.iterrows()):
            log = logs[r["run"]]
            tr, va = log[log["split"] == "train"], log[log["split"] == "val"]
            label = (f"{r['run']} (d/L {r['width_depth']:.3g}, {r['non_embedding_params'] / 1e3:.0f}k)"
                     if by == "width_depth" else f"{r['run']} ({_count(r['non_embedding_params'])})")
            ax.plot(tr["tokens"] / 1e6, tr["loss"], color=cmap(i), lw=1, label=label)
            ax.plot(va["tokens"] / 1e6, va["loss"], "o", color=cmap(i), ms=2)
        log_x(ax)
        ax.set_xlabel("training tokens (millions)")
        ax.set_title(f"{act}")
        ax.legend(frameon=False)
    k = _steps_per_row(logs)
    axes[0][0].set_ylabel("loss (nats/token)")
    if acts:
        how = f"lines: train loss, mean over each {k} steps" if k else "lines: train loss as logged"
        title = f"{title}\n{how}; dots: validation loss" if title else f"{how}; dots: validation loss"
    if title:
        fig.suptitle(title, fontsize=9 if "\n" not in title else 8)
    fig.tight_layout()
    return fig


def loss_curves_for(profile: ProfileConfig, group: str | None = None, compute: bool = True, runs_dir=None):
    """loss_curves for the runs of one analysis group, from results/<profile>/train_log.csv (written
    from the runs' logs when `compute`, else read back: make replot); the width-depth group ordered and
    coloured by width-depth ratio."""
    table = in_group(train_log_table(profile, compute, runs_dir), group)
    info = table.drop_duplicates("run")[["run", "activation", "non_embedding_params", "width_depth"]]
    logs = {name: g for name, g in table.groupby("run", sort=False)}
    what = f"{group.replace('_', '-')} grid" if group else "all runs"
    return loss_curves(logs, info, title=f"Training loss, {what} (profile {profile.name})",
                       empty=f"this profile has no run in group '{group}'",
                       by="width_depth" if group == "width_depth" else "non_embedding_params")


# -----------------------------------------------------------------------------------------------
# figures of notebook 02

METHOD_STYLE = {"cett": ("PPL-p% (CETT swept)", "-", "o"), "topk": ("Top-k per token", "--", "s"),
                "topk_batch": ("Top-k per batch (authors)", ":", "s"), "fat": ("FAT-eps", "-.", "^")}


def pareto_curves(df: pd.DataFrame):
    """PPL vs activation ratio for each method on each run's final checkpoint (paper Fig. 3, v4 Fig. 2)."""
    style()
    df = df[~df["run"].isin(df.loc[df["method"] == "moe", "run"])]  # MoE runs: moe_vs_dense
    runs_ = list(dict.fromkeys(df["run"]))
    fig, axes = plt.subplots(1, max(len(runs_), 1), figsize=DOUBLE, squeeze=False)
    if not runs_:
        _nothing(axes[0][0], "no dense run among sparsity.pareto_runs")
        return fig
    for ax, run in zip(axes[0], runs_):
        sub = df[df["run"] == run]
        for method, (label, ls, mk) in METHOD_STYLE.items():
            m = sub[sub["method"] == method].sort_values("activation_ratio")
            if len(m):
                ax.plot(m["activation_ratio"], m["ppl"], ls=ls, marker=mk, ms=3, lw=1, label=label)
        z = sub[sub["method"] == "zeros"]
        if len(z):
            ax.plot(z["activation_ratio"], z["ppl"], "kx", ms=6, label="exact zeros (ReLU-like)")
        for _, r in sub[sub["method"].str.startswith("ppl-")].iterrows():
            ax.plot(r["activation_ratio"], r["ppl"], "*", color="crimson", ms=9, label=r["method"].upper())
        ax.axhline(sub["dense_loss"].map(np.exp).iloc[0], color="grey", lw=0.8, ls=":", label="dense")
        ax.set_xlabel("activation ratio")
        top = sub["dense_loss"].map(np.exp).iloc[0] * 1.3
        ax.set_ylim(top=min(ax.get_ylim()[1], top))
        ax.set_title(f"{run} ({sub['activation'].iloc[0]})" + _off_top(sub["ppl"], ax.get_ylim()[1]))
    axes[0][0].set_ylabel("validation perplexity")
    axes[0][0].legend(frameon=False, fontsize=6)
    fig.tight_layout()
    return fig


def _off_top(ppl, top: float) -> str:
    """'; N point(s) above PPL X, off the axis' for a panel whose y axis is cut at `top` (the sparsest
    points' perplexities would flatten the rest), else ''."""
    n = int(np.sum(np.asarray(ppl, float) > top))
    return f"; {n} point{'s' if n > 1 else ''} above PPL {top:.0f}, off the axis" if n else ""


def moe_vs_dense(df: pd.DataFrame, comparison: pd.DataFrame):
    """PPL vs activation ratio: each MoE routing k of its E experts (k = 1..E; the trained k ringed)
    against the dense runs' PPL-p% curves (paper Fig. 2); ``comparison`` is measure.moe_comparison."""
    style()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if comparison.empty:
        _nothing(ax, "no MoE run among sparsity.pareto_runs")
        return fig
    from .measure import ppl_p_curves

    curves = ppl_p_curves(df)
    for run, (act, xs, ys) in curves.items():
        ax.plot(xs, ys, "-o", color=color(act), ms=3, lw=1.2,
                label=f"{run}: dense, PPL-p% (c swept; c = 0 unsparsified)")
    moe = comparison.drop_duplicates(["moe_run", "k"])
    names = list(dict.fromkeys(moe.sort_values("n_experts")["moe_run"]))
    for i, run in enumerate(names):
        sub = moe[moe["moe_run"] == run].sort_values("k")
        c = plt.cm.Greens(0.45 + 0.5 * i / max(len(names) - 1, 1))
        E, k = int(sub["n_experts"].iloc[0]), int(sub.loc[sub["trained_k"], "k"].iloc[0])
        ax.plot(sub["activation_ratio"], sub["ppl_moe"], "--s", color=c, ms=3, lw=1,
                label=f"{run}: MoE, k of {E} experts routed (trained k={k})")
        t = sub[sub["trained_k"]]
        ax.plot(t["activation_ratio"], t["ppl_moe"], "o", mfc="none", mec=c, ms=9, mew=1.5)
    if names:  # what the rings are
        ax.plot([], [], "o", mfc="none", mec="0.4", ms=9, mew=1.5, label="ringed: the MoE as trained (its k)")
    log_x(ax)
    if curves:
        ax.set_ylim(top=min(ax.get_ylim()[1], 1.25 * max(ys[-1] for _, _, ys in curves.values())))
        shown = np.concatenate([np.asarray(ys, float) for _, _, ys in curves.values()]
                               + [moe["ppl_moe"].to_numpy(float)])
        ax.set_title(_off_top(shown, ax.get_ylim()[1]).lstrip("; "), fontsize=6.5, color="0.35", loc="left")
    ax.set(xlabel="activation ratio (MoE: k / E)", ylabel="validation perplexity")
    ax.legend(frameon=False, fontsize=6)
    fig.tight_layout()
    return fig


def cett_sweep(df: pd.DataFrame):
    """PPL ratio and activation ratio vs the CETT value c (v4 Fig. 15: as c grows, the PPL ratio rises and
    the activation ratio falls, both monotonically)."""
    style()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=DOUBLE)
    if not (df["method"] == "cett").any():
        for ax in (a1, a2):
            _nothing(ax, "no CETT sweep: no dense run\namong sparsity.pareto_runs")  # one line is wider than a panel
        return fig
    for run, sub in df[df["method"] == "cett"].groupby("run", sort=False):
        sub = sub.sort_values("param")
        kw = {"color": color(sub["activation"].iloc[0]), "marker": "o", "ms": 3, "lw": 1, "label": run}
        a1.plot(sub["param"], sub["ppl_ratio"], **kw)
        a2.plot(sub["param"], sub["activation_ratio"], **kw)
    a1.axhline(1.01, color="grey", ls=":", lw=0.8, label="dotted: PPL-1% (ratio 1.01)")
    a1.set(xlabel="CETT value c", ylabel="PPL ratio (sparse / dense), log scale", yscale="log")
    lo, hi = a1.get_ylim()
    if hi < 10 * lo:  # within a decade: 1.1, not 1.1 x 10^0 (over decades matplotlib's own labels read well)
        for axis in (a1.yaxis.set_major_formatter, a1.yaxis.set_minor_formatter):
            axis(ticker.FormatStrFormatter("%.2g"))
    a2.set(xlabel="CETT value c", ylabel="activation ratio")
    a1.legend(frameon=False, loc="upper left")
    a2.legend(frameon=False)
    fig.tight_layout()
    return fig


# line style and marker of a run's analysis group in figures that draw runs of several groups together
GROUP_STYLE = {"scale": ("-", "o"), "seeds": (":", "^"), "width_depth": ("--", "s")}
LINE_NAMES = {"-": "solid", ":": "dotted", "--": "dashed", "-.": "dash-dot"}
MARKER_NAMES = {"o": "circles", "^": "triangles", "s": "squares", "D": "diamonds"}


def _group_of(groups) -> str:
    """The group a run is drawn as: width_depth, else scale, else seeds (a scale run that also seeds the
    replicas is a scale run), else its first group."""
    gs = [g for g in str(groups if isinstance(groups, str) else "").split(",") if g]
    return next((g for g in ("width_depth", "scale", "seeds") if g in gs), gs[0] if gs else "")


def layer_thresholds(table: pd.DataFrame, p: float = 1.0):
    """Per-layer thresholds tau_l and activation ratios at PPL-p% on each run's final checkpoint (a run whose
    PPL-p% target was not reached says so in the legend: its thresholds come from a lower bound on c).
    Line style and marker by analysis group (GROUP_STYLE); within a group and activation, lighter = smaller
    (the width-depth group: lighter = smaller width-depth ratio d_h / L). The legend, by group, sits below
    the panels."""
    style()
    fin = table[(table["p"] == p)].sort_values("tokens").groupby("run", sort=False).tail(1).copy()
    fin["_group"] = fin["groups"].map(_group_of) if "groups" in fin else ""
    order = {g: i for i, g in enumerate(GROUP_STYLE)}
    fin["_key"] = np.where(fin["_group"] == "width_depth", fin.get("width_depth", fin["non_embedding_params"]),
                           fin["non_embedding_params"])
    fin = fin.sort_values(["_group", "activation", "_key", "run"], key=lambda c: c.map(order).fillna(len(order))
                          if c.name == "_group" else c, kind="stable")
    miss = _unreached(fin)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=DOUBLE)
    for (grp, act), g in fin.groupby(["_group", "activation"], sort=False):
        ls, mk = GROUP_STYLE.get(grp, ("-.", "D"))
        for i, (k, r) in enumerate(g.iterrows()):
            taus = [float(v) for v in r["taus"].split(";")]
            ratios = [float(v) for v in r["layer_ratios"].split(";")]
            wd = f"d/L {r['width_depth']:.3g}, " if grp == "width_depth" and "width_depth" in r else ""
            kw = {"color": _shade(act, i, len(g)), "marker": mk, "ms": 3, "lw": 1, "ls": ls,
                  "label": f"{r['run']} ({wd}L={r['n_layers']})" + (", not reached" if miss[k] else "")}
            x = np.arange(1, len(taus) + 1)
            a1.plot(x, taus, **kw)
            a2.plot(x, ratios, **kw)
    a1.set(xlabel="layer", ylabel=r"threshold $\tau_l$", yscale="log")
    for ax in (a1, a2):
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # layers are whole numbers
    a2.set(xlabel="layer", ylabel=f"activation ratio at PPL-{p:g}%")
    fig.tight_layout()
    handles, labels = a2.get_legend_handles_labels()
    if handles:  # below both panels, one column per group under its name, clear of the lines
        from matplotlib.lines import Line2D

        blank = Line2D([], [], ls="", marker="")
        cols = []
        for grp in dict.fromkeys(fin["_group"]):
            ls, mk = GROUP_STYLE.get(grp, ("-.", "D"))
            mine = [(h, lb) for h, lb, gr in zip(handles, labels, fin["_group"], strict=True) if gr == grp]
            cols.append([(blank, f"{grp or 'other'} ({LINE_NAMES.get(ls, ls)}, {MARKER_NAMES.get(mk, mk)})"), *mine])
        n = max(len(c) for c in cols)
        cells = [cell for c in cols for cell in c + [(blank, "")] * (n - len(c))]
        fig.legend([h for h, _ in cells], [lb for _, lb in cells], loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=len(cols), frameon=False, fontsize=5.5, handlelength=3)
    return fig


# -----------------------------------------------------------------------------------------------
# figures of notebooks 03-05 (drawn from the tables of analysis.py, so `results/` alone redraws them)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")  # one a run where a panel's runs share one colour


def _shade(activation: str, i: int, n: int):
    """The activation's colour, lighter for smaller models: i-th of n (0 = smallest, mixed 60% towards white;
    the largest is the colour itself), evenly spaced (the runs of a panel also differ by marker, MARKERS)."""
    from matplotlib.colors import to_rgb

    rgb = np.array(to_rgb(color(activation)))
    mix = 0.6 * (1 - i / (n - 1)) if n > 1 else 0.0
    return tuple(rgb + (1 - rgb) * mix)


def _runs_by_size(df: pd.DataFrame, activation: str, key: str = "non_embedding_params") -> list[str]:
    sub = df[df["activation"] == activation].drop_duplicates("run")
    return list(sub.sort_values(key)["run"])


def _note(ax, text: str, loc: str = "upper right") -> None:
    """A grey annotation in an axes corner (paper values quoted, never drawn as data)."""
    x, ha = (0.98, "right") if "right" in loc else (0.02, "left")
    y, va = (0.97, "top") if "upper" in loc else (0.03, "bottom")
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=6, color="0.35")


def _nothing(ax, why: str) -> None:
    """An empty panel says why it is empty instead of showing bare axes."""
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=7, color="0.35")
    ax.set(xticks=[], yticks=[])


def _count(n: float) -> str:
    """A parameter count as in the legends and README: 24k, 0.11M, 1.23M."""
    return f"{n / 1e3:.0f}k" if n < 1e5 else f"{n / 1e6:.2f}M"


def _ticks_at(ax, values) -> None:
    """Log x axis with one plain tick label at each model size."""
    ax.set_xscale("log")
    v = sorted(set(np.asarray(values, dtype=float)))
    ax.set_xticks(v, [f"{x:.0f}" for x in v])  # rounded once: 55.48 is "55" (55.5 was "56")
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


# the hollow points of the limit-loss figures: analysis.limit_loss's final_loss, the loss the E fits use,
# on the sparsity.eval_tokens set (the loss curves' validation points score train.eval_tokens)
LAST_LOSS = "last checkpoint (dense loss on sparsity.eval_tokens)"
AT_BOUND = 1e-4  # an interval end this close to a bound of A0 (0 or 1) runs to the bound


def _interval_bars(ax, x, y, lo, hi, bounds: tuple[float, float] | None, **kw) -> None:
    """Point estimates y with their intervals [lo, hi], drawn after the axes' other lines. With `bounds` (those
    of the fitted quantity), an end within AT_BOUND of a bound does not set the y range: the axis keeps to
    the estimates, the other ends and the data-coordinate lines drawn before (not axvline/axhline's), the bar
    runs off its edge, and a triangle at the edge marks it (once in the legend: "interval runs to the
    bound")."""
    x, y, lo, hi = (np.asarray(v, dtype=float) for v in (x, y, lo, hi))
    before = [np.asarray(ln.get_ydata(), dtype=float) for ln in ax.get_lines()
              if ln.get_transform() is ax.transData]  # not axvline's/axhline's (blended transforms)
    ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="o", ms=3, lw=0.8, capsize=2, **kw)
    if bounds is None or not len(y):
        return
    low, high = lo <= bounds[0] + AT_BOUND, hi >= bounds[1] - AT_BOUND
    if not (low.any() or high.any()):
        return
    shown = np.concatenate([y, lo[~low], hi[~high], *before])
    shown = shown[np.isfinite(shown)]
    if not shown.size:  # nothing finite to keep to: matplotlib's own range
        return
    pad = 0.08 * max(np.ptp(shown), 0.02 * np.abs(shown).max(), 1e-12)
    ymin, ymax = shown.min() - pad, shown.max() + pad
    ax.set_ylim(ymin, ymax)
    c = kw.get("color")
    for sel, edge, mk in ((low, ymin, "v"), (high, ymax, "^")):
        if sel.any():
            ax.plot(x[sel], np.full(sel.sum(), edge), mk, ms=4, color=c, clip_on=False)
    ends = " and ".join(f"{b:g}" for b, hit in zip(bounds, (low.any(), high.any()), strict=True) if hit)
    ax.plot([], [], "v" if low.any() else "^", ms=4, color=c, label=f"interval runs to the bound {ends}")


def _paper_note(ax, text: str) -> None:
    """The paper's value for this panel, quoted above it (an annotation, not data)."""
    ax.set_title(text, fontsize=6.5, color="0.35", loc="left")


def _from(curve: pd.DataFrame, D0: float) -> pd.DataFrame:
    """The rows of one run's curve (D, A_fit, A_lo, A_hi; analysis' grid from the first checkpoint) at
    D >= D0, the first fitted point: a row at D0 itself, interpolated in log D between the grid points
    around it, starts the curve there rather than at the next grid point."""
    curve = curve.sort_values("D")
    at = curve[curve["D"] >= D0 * (1 - 1e-9)]
    below = curve[curve["D"] < D0 * (1 - 1e-9)]
    if not len(at) or not len(below) or np.isclose(at["D"].iloc[0], D0, rtol=1e-9):
        return at
    a, b = below.iloc[-1], at.iloc[0]
    w = (np.log(D0) - np.log(a["D"])) / (np.log(b["D"]) - np.log(a["D"]))
    first = {k: a[k] + w * (b[k] - a[k]) for k in ("A_fit", "A_lo", "A_hi")} | {"D": D0}
    return pd.concat([pd.DataFrame([first]), at[["D", "A_fit", "A_lo", "A_hi"]]], ignore_index=True)


def activation_laws(table: pd.DataFrame, fits: pd.DataFrame, curves: pd.DataFrame, p: float = 1.0,
                    group: str | None = "scale"):
    """Activation ratio at PPL-p% vs training tokens per run, with the fitted law (Eq. 4 ReLU, Eq. 5
    SiLU) and its bootstrap band over the fitted range (paper Fig. 4). Points dropped by the drop rule
    are hollow; points whose PPL-p% target was not reached (`reached` False) are crossed; dotted lines
    mark the fitted limits A0. One panel per activation; runs shaded by size (the width-depth group: by
    width-depth ratio d_h / L, named in the legend)."""
    style()
    t = in_group(table[np.isclose(table["p"], p)], group)
    acts = list(dict.fromkeys(t["activation"]))
    by_wd = group == "width_depth" and "width_depth" in t.columns
    # the legends go below the panels, clear of the points (inside, they covered up to 10 markers)
    fig, axes = plt.subplots(1, max(len(acts), 1), figsize=(DOUBLE[0], DOUBLE[1] + 0.9), squeeze=False,
                             layout="constrained")
    if not acts:
        _nothing(axes[0][0], f"this profile has no run in group '{group}'")
    for ax, act in zip(axes[0], acts):
        names = _runs_by_size(t, act, "width_depth" if by_wd else "non_embedding_params")
        any_miss = any_dropped = any_limit = False
        for i, run in enumerate(names):
            g, c = t[t["run"] == run].sort_values("tokens"), _shade(act, i, len(names))
            mk = MARKERS[i % len(MARKERS)]  # shades of one colour alone are hard to tell apart
            f = fits[fits["run"] == run].iloc[0]
            dropped = {int(v) for v in str(f.get("dropped_tokens", "") or "").split(";") if v not in ("", "nan")}
            used = ~g["tokens"].isin(dropped)
            ok = str(f["converged"]) == "True"  # bool, numpy bool or text, as read back from CSV
            size = f"{g['non_embedding_params'].iloc[0] / 1e3:.0f}k"
            label = (f"{run} (d/L {g['width_depth'].iloc[0]:.3g}, {size})" if by_wd else f"{run} ({size})") + (
                "" if ok else ", no fit")
            ax.plot(g["tokens"][used] / 1e6, g["activation_ratio"][used], mk, ms=3.5, mew=0.6, color=c, label=label)
            ax.plot(g["tokens"][~used] / 1e6, g["activation_ratio"][~used], mk, ms=3.5, mew=0.6, mfc="none", color=c)
            any_dropped |= bool((~used).any())
            miss = _unreached(g)
            if miss.any():  # c only a lower bound there: not a PPL-p% activation ratio
                ax.plot(g["tokens"][miss] / 1e6, g["activation_ratio"][miss], "x", ms=5, color="k", mew=0.8,
                        label=None if any_miss else f"PPL-{p:g}% not reached (c a lower bound)")
                any_miss = True
            cv = _from(curves[curves["run"] == run], f["D_min_used"])  # the fitted range
            if ok and len(cv):
                ax.plot(cv["D"] * 1e3, cv["A_fit"], color=c, lw=1)
                ax.fill_between(cv["D"] * 1e3, cv["A_lo"], cv["A_hi"], color=c, alpha=0.2, lw=0)
                ax.axhline(f["A0"], color=c, lw=0.6, ls=":")
                any_limit = True
        if any_dropped:  # what the marks mean, once a panel
            ax.plot([], [], "o", ms=3.5, mew=0.6, mfc="none", color="0.4",
                    label="hollow: dropped before fitting (fit.drop_*)")
        if any_limit:
            ax.plot([], [], ls=":", lw=0.6, color="0.4", label="dotted: the fitted limit $A_0$")
        log_x(ax)
        form = fits.loc[fits["activation"] == act, "form"].iloc[0]
        ax.set(xlabel="training tokens (millions)", title=f"{act} ({form})")
        ax.legend(frameon=False, fontsize=5.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    axes[0][0].set_ylabel(f"activation ratio at PPL-{p:g}%")
    return fig


def form_comparison(comparison: pd.DataFrame):
    """MSE of each law form on each run (the rebuttal's comparison), each form named in the legend with
    its source (laws.Form.equation); hatched bars: the paper's form for the run's activation; an x above a
    bar: that fit did not converge; a form with no fit at all (no MSE) gets a "no fit" mark at the bottom
    of its slot instead of a bar."""
    from matplotlib.patches import Patch

    style()
    runs_ = list(dict.fromkeys(comparison["run"]))
    forms = list(dict.fromkeys(comparison["form"]))
    fig, ax = plt.subplots(figsize=(DOUBLE[0], DOUBLE[1]))
    w = 0.8 / max(len(forms), 1)
    for j, form in enumerate(forms):
        sub = comparison[comparison["form"] == form].set_index("run").reindex(runs_)
        x = np.arange(len(runs_)) + (j - (len(forms) - 1) / 2) * w
        mse = sub["mse"].to_numpy(float)
        bars = ax.bar(x, np.where(np.isfinite(mse), mse, np.nan), w, color=f"C{j}")
        for b, paper_form, conv, m in zip(bars, sub["paper_form"], sub["converged"], mse):
            if str(paper_form) == "True":
                b.set_hatch("////")
            if str(conv) != "True" and np.isfinite(m):
                ax.plot(b.get_x() + w / 2, m * 1.3, "x", color="k", ms=3)
            elif not np.isfinite(m):  # no fit at all: say so where its bar would be
                ax.plot(b.get_x() + w / 2, 0.02, "v", color=f"C{j}", mec="k", mew=0.4, ms=4,
                        transform=ax.get_xaxis_transform(), clip_on=False)
    # legend handles drawn here: a bar's own handle would carry the hatch of the first run's paper form
    handles = [Patch(color=f"C{j}", label=f"{form}: {FORMS[form].equation}" if form in FORMS else form)
               for j, form in enumerate(forms)]
    handles += [Patch(facecolor="white", edgecolor="0.3", hatch="////", label="paper's form"),
                plt.Line2D([], [], ls="", marker="x", color="k", ms=3, label="not converged"),
                plt.Line2D([], [], ls="", marker="v", color="0.6", mec="k", mew=0.4, ms=4, label="no fit (no MSE)")]
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(runs_)), runs_, rotation=30, ha="right")
    ax.set_ylabel("MSE (activation ratio$^2$)")
    ax.legend(handles=handles, frameon=False, ncol=4, loc="lower left", bbox_to_anchor=(0, 1))
    fig.tight_layout()
    return fig


def dead_neurons(table: pd.DataFrame, p: float = 1.0, group: str | None = "scale"):
    """Dead-neuron ratio vs tokens (left) and, for ReLU-like activations (model.zeroes_negatives), the share
    of non-zero outputs (solid: the activation ratio of exact zeros) next to the activation ratio at PPL-p%
    (dashed) vs tokens (right); runs shaded by size."""
    style()
    t = in_group(table[np.isclose(table["p"], p)], group)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=DOUBLE)
    for act in dict.fromkeys(t["activation"]):
        names = _runs_by_size(t, act)
        for i, run in enumerate(names):
            g, c = t[t["run"] == run].sort_values("tokens"), _shade(act, i, len(names))
            x = g["tokens"] / 1e6
            a1.plot(x, g["dead_ratio"], "o-", ms=2, lw=1, color=c, label=run)
            if g["nonzero_ratio"].notna().any():
                a2.plot(x, g["nonzero_ratio"], "o-", ms=2, lw=1, color=c, label=f"{run} exact non-zeros")
                a2.plot(x, g["activation_ratio"], "--", lw=1, color=c)
    for ax in (a1, a2):
        log_x(ax)
        ax.set_xlabel("training tokens (millions)")
    a1.set_ylabel("dead-neuron ratio (share of neurons)")
    a2.set_ylabel("activation ratio (ReLU-like)")
    a1.legend(frameon=False, fontsize=5.5)
    _note(a2, f"solid: share of non-zero outputs (ReLU-like)\ndashed: active at PPL-{p:g}%")
    fig.tight_layout()
    return fig


def _piecewise_line(ax, row, x, mark: bool = True, **kw) -> None:
    """Draw a flat-above piecewise-linear fit row (analysis.width_depth summary) over x, its breakpoint
    interval shaded and, when `mark`, its breakpoint dashed (not for one the data do not place)."""
    xs = np.linspace(min(x), max(x), 200)
    ax.plot(xs, row["intercept"] + row["slope_below"] * np.minimum(xs, row["breakpoint"]), **kw)
    if mark:
        ax.axvline(row["breakpoint"], color="0.4", lw=0.8, ls="--")
    ax.axvspan(row["breakpoint_lo"], row["breakpoint_hi"], color="0.5", alpha=0.12, lw=0)


def _fitted_and_last(ax, points: pd.DataFrame, converged: str, fitted: str, last: str, c, label: str,
                     last_label: str, bounds: tuple[float, float] | None = None) -> None:
    """Per run against its width-depth ratio: the fitted limit with its interval where the fit converged
    (filled; `bounds`: the fitted quantity's, see _interval_bars) and the last measured value (hollow)."""
    f = points[points[converged].eq(True)]
    ax.plot(points["width_depth"], points[last], "o", mfc="none", ms=3, color=c, label=last_label)
    _interval_bars(ax, f["width_depth"], f[fitted], f[f"{fitted}_lo"], f[f"{fitted}_hi"], bounds, color=c,
                   label=label)


def width_depth_activation(points: pd.DataFrame, summary: pd.DataFrame, paper_values: dict | None = None):
    """Limit activation ratio vs width-depth ratio (paper Fig. 5): fitted A0 with its interval (filled),
    the last measured activation ratio (hollow), the piecewise-linear fit with its breakpoint interval
    (shaded). The paper's bottleneck is quoted as an annotation only (`paper_values`, paper.WIDTH_DEPTH)."""
    style()
    fig, ax = plt.subplots(figsize=SINGLE)
    if points.empty:  # an empty errorbar would still count as data: say why the panel is empty
        _nothing(ax, "this profile has no run in group 'width_depth'")
        return fig
    c = color("relu")
    pw = summary[(summary["kind"] == "piecewise_linear") & summary["breakpoint"].notna()]
    if len(pw):
        row = pw.iloc[0]
        unplaced = UNPLACED in str(row.get("message", ""))
        where = (f"breakpoint not placed\n(any of {row['breakpoint_lo']:.3g}-{row['breakpoint_hi']:.3g} fits)"
                 if unplaced else f"bottleneck {row['breakpoint']:.3g}" if as_bool(row["inside"]) else
                 f"breakpoint {row['breakpoint']:.3g}\n(candidates' edge: no bottleneck)")
        _piecewise_line(ax, row, points["width_depth"], mark=not unplaced, color=c, lw=1,
                        label=f"piecewise fit ({row['quantity']}), {where}")
    else:
        _note(ax, "no piecewise fit (too few runs)", "upper left")
    _fitted_and_last(ax, points, "converged", "A0", "A_last", c, "fitted limit $A_0$", "last checkpoint", (0.0, 1.0))
    if paper_values:
        _paper_note(ax, f"paper (0.1B): bottleneck ~{paper_values['bottleneck']:g}, limit activation ratio "
                        f"~{paper_values['limit_activation_ratio_above']:.2g} above it")
    ax.set(xlabel="width-depth ratio $d_h / L$", ylabel="limit activation ratio")
    ax.legend(frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


def _best_range_label(row, points: pd.DataFrame) -> str:
    """Legend label of a best_range row of analysis.width_depth: the runs whose point estimate is within
    its tolerance of the lowest (the row's message) and, for the fitted E, whether their intervals overlap
    the lowest run's interval (then the range is no statistical finding)."""
    q = row["quantity"]
    span = f"{row['best_lo']:.3g}" + (" only" if not row["best_hi"] > row["best_lo"] else f"-{row['best_hi']:.3g}")
    within = re.match(r"within (\S+) of the lowest", str(row.get("message", "") or ""))
    name = {"final_loss": "last-checkpoint loss"}.get(q, q)
    what = f"{name} within {within.group(1)} of the lowest" if within else f"best range ({name})"
    if q == "E":
        f = points[points["loss_converged"].eq(True)].dropna(subset=["E", "E_lo", "E_hi"])
        if len(f) > 1:
            best = f.loc[f["E"].idxmin()]
            others = f.drop(index=best.name)
            overlap = (others["E_lo"] <= best["E_hi"]) & (others["E_hi"] >= best["E_lo"])
            how = ("every E interval overlaps the lowest's" if overlap.all() else
                   f"{int(overlap.sum())} of {len(others)} other E intervals overlap the lowest's")
            return f"{what}: {span}\n(point estimates; {how})"
        return f"{what}: {span} (point estimates)"
    return f"{what}: {span}"


def width_depth_loss(points: pd.DataFrame, summary: pd.DataFrame, paper_values: dict | None = None):
    """Limit loss vs width-depth ratio (paper Fig. 6): fitted E with its interval (filled), last measured
    dense loss (hollow), our best ranges shaded: of the fitted E (point estimates within the tolerance of
    the lowest; the label says whether the intervals overlap) and of the last loss (hatched); the paper's
    best range quoted as an annotation. The legend sits below the axes, clear of the points."""
    style()
    fig, ax = plt.subplots(figsize=SINGLE)
    if points.empty:  # an empty errorbar would still count as data: say why the panel is empty
        _nothing(ax, "this profile has no run in group 'width_depth'")
        return fig
    c = color("relu")
    _fitted_and_last(ax, points, "loss_converged", "E", "final_loss", c, "fitted limit loss $E$", LAST_LOSS)
    br = summary[(summary["kind"] == "best_range") & summary["best_lo"].notna()]
    for q, kw in (("E", {"color": c, "alpha": 0.15}), ("final_loss", {"facecolor": "none", "edgecolor": "0.55",
                                                                     "hatch": "////", "alpha": 0.6})):
        rows = br[br["quantity"] == q]
        if not len(rows):
            continue
        row = rows.iloc[0]
        label = _best_range_label(row, points)
        if row["best_hi"] > row["best_lo"]:
            ax.axvspan(row["best_lo"], row["best_hi"], lw=0, label=label, **kw)
        else:  # a single ratio: a zero-width span would not show
            ax.axvline(row["best_lo"], color=kw.get("color", "0.55"), alpha=0.35, lw=3,
                       ls="-" if q == "E" else "--", label=label)
    if paper_values:
        lo, hi = paper_values["best_range"]
        _paper_note(ax, f"paper (0.1B): best range {lo:g}-{hi:g}")
    log_x(ax)
    ax.set(xlabel="width-depth ratio $d_h / L$", ylabel="limit loss (nats/token)")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith("fitted"))  # the fit first
    fig.set_layout_engine("constrained")  # places the legend below the axis label (tight_layout overlapped them)
    fig.legend([handles[i] for i in order], [labels[i] for i in order], frameon=False, loc="outside lower left",
               fontsize=5.5)
    return fig


def a0_vs_scale(points: pd.DataFrame, summary: pd.DataFrame, paper_values: dict | None = None):
    """Limit activation ratio A0 vs non-embedding parameters (paper Fig. 7): fitted A0 with intervals
    (filled), last measured ratio (hollow), the fitted line in log10 N with its slope; the paper's
    change from 0.1B to 1.2B (paper.A0_SCALE_CHANGE) quoted as an annotation."""
    style()
    acts = list(dict.fromkeys(points["activation"]))
    fig, axes = plt.subplots(1, max(len(acts), 1), figsize=DOUBLE, squeeze=False)
    for ax, act in zip(axes[0], acts):
        g, c = points[points["activation"] == act], color(act)
        a = g[g["converged"].eq(True)]
        ax.plot(g["non_embedding_params"] / 1e3, g["A_last"], "o", mfc="none", ms=3, color=c, label="last checkpoint")
        s = summary[(summary["activation"] == act) & (summary["quantity"] == "A0")]
        if len(s) and np.isfinite(s["slope"].iloc[0]):
            r = s.iloc[0]
            N = np.geomspace(r["N_min"], r["N_max"], 20)
            pts = [100 * r[k] for k in ("slope", "slope_lo", "slope_hi")]  # percentage points, as the paper's
            ax.plot(N / 1e3, r["intercept"] + r["slope"] * np.log10(N), color=c, lw=1,
                    label=f"slope {pts[0]:+.1f} [{pts[1]:+.1f}, {pts[2]:+.1f}] points / decade of N")
        else:  # said in the legend, which keeps clear of the points
            ax.plot([], [], " ", label=f"no A0 line: {int(s['n'].iloc[0]) if len(s) else 0} converged fit(s)")
        if len(a):
            _interval_bars(ax, a["non_embedding_params"] / 1e3, a["A0"], a["A0_lo"], a["A0_hi"], (0.0, 1.0), color=c,
                           label="fitted limit $A_0$")
        _ticks_at(ax, g["non_embedding_params"] / 1e3)
        ax.set(xlabel="non-embedding parameters N (thousands)")
        if paper_values and f"{act}_points" in paper_values:
            _paper_note(ax, f"{act}; paper {paper_values['from_scale']}->{paper_values['to_scale']}: "
                            f"{paper_values[f'{act}_points']:+.1f} points")
        else:
            ax.set_title(act)
        ax.legend(frameon=False, loc="best", fontsize=5.5)
    axes[0][0].set_ylabel("limit activation ratio (0.01 = 1 point)")
    fig.tight_layout()
    return fig


def convergence_speed(curves: pd.DataFrame, summary: pd.DataFrame, runs: pd.DataFrame | None = None):
    """|dA / d(D/N)| of each fitted law vs the data-scale ratio D/N (paper Fig. 8), one panel per
    activation, runs shaded by size; the dotted line marks the common ratio of analysis.convergence, each
    run's speed there a ringed point. The y axis is symmetric-log, linear below 1e-4 of the panel's
    fastest speed, so that a law flat over a stretch (dA/d(D/N) exactly 0) is drawn at "0 (flat)". A fit
    that is a step (summary's message: analysis.convergence leaves it out) is named as one, without a curve.

    `runs`: the runs of group "scale" (run, activation, non_embedding_params; e.g. analysis.scale's
    points): then every activation among them gets a panel, and the runs without a converged law fit
    (no curve) are named in it. Without it, only the activations and runs of `curves`."""
    style()
    runs = curves if runs is None else runs
    acts = list(dict.fromkeys([*runs["activation"], *curves["activation"]]))
    fig, axes = plt.subplots(1, max(len(acts), 1), figsize=DOUBLE, squeeze=False)
    if not acts:
        _nothing(axes[0][0], "no run of group 'scale' has a converged law fit: no convergence speed to draw")
    for ax, act in zip(axes[0], acts):
        g = curves[curves["activation"] == act]
        names = _runs_by_size(g, act)
        msg = as_text(summary, "message")
        steps = list(summary.loc[(summary["activation"] == act) & (msg != ""), "run"])  # analysis.convergence
        missing = [r for r in _runs_by_size(runs, act) if r not in names and r not in steps]
        if not names:
            why = ([f"no converged law fit among\n{', '.join(missing)}"] if missing else []) + (
                [f"steps (no measured slope):\n{', '.join(steps)}"] if steps else [])
            _nothing(ax, ";\n".join(why or ["no converged law fit"]) + ":\nno convergence speed to draw")
            ax.set_title(act)
            continue
        shades = {run: _shade(act, i, len(names)) for i, run in enumerate(names)}
        for run in names:
            r = g[g["run"] == run]
            ax.plot(r["data_scale_ratio"], r["dA_dratio"].abs(), color=shades[run], lw=1.2,
                    label=f"{run} ({r['non_embedding_params'].iloc[0] / 1e3:.0f}k)")
        top = g["dA_dratio"].abs().max()
        s = summary[summary["activation"] == act]
        if len(s) and np.isfinite(s["ratio_common"].iloc[0]):
            ax.axvline(s["ratio_common"].iloc[0], color="0.4", lw=0.8, ls=":")
            at = s[np.isfinite(s["dA_dratio_common"].astype(float)) & s["run"].isin(names)]
            for _, r in at.iterrows():  # every run behind the rho, a zero speed included
                ax.plot(r["ratio_common"], abs(r["dA_dratio_common"]), "o", mfc="none", mec=shades[r["run"]], ms=4,
                        mew=1, zorder=4, clip_on=False)
            top = max(top, at["dA_dratio_common"].abs().max() if len(at) else 0)
            rho = s["rho_N_speed"].iloc[0]
            # said in the legend, below the panel, clear of the curves
            ax.plot([], [], "o", mfc="none", mec="0.4", ms=4, mew=1,
                    label=f"speed at the common D/N = {s['ratio_common'].iloc[0]:.3g} (dotted):\n" + (
                        f"Spearman rho(N, speed) = {rho:+.2f}" if np.isfinite(rho) else
                        f"Spearman rho(N, speed) undefined:\n{len(at)} run(s) with a speed there, needs 3"))
        if missing:  # said in the legend, as in a0_vs_scale
            ax.plot([], [], " ", label=f"no converged fit: {', '.join(missing)}")
        if steps:
            ax.plot([], [], " ", label=f"a step, no measured slope: {', '.join(steps)}")
        log_x(ax)
        if np.isfinite(top) and top > 0:
            # symmetric log: a saturating law's tiny speeds no longer stretch the axis, and zeros show
            lin = top * 1e-4
            ax.set_yscale("symlog", linthresh=lin, linscale=0.5)
            ax.set_ylim(0, top * 3)
            decades = 10.0 ** np.arange(np.ceil(np.log10(lin)), np.floor(np.log10(top * 3)) + 1)
            ax.yaxis.set_major_locator(ticker.FixedLocator([0.0, *decades]))
            ax.yaxis.set_minor_locator(ticker.NullLocator())
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(
                lambda v, _: "0 (flat)" if v == 0 else f"$10^{{{int(round(np.log10(v)))}}}$"))
        ax.set(xlabel="data-scale ratio D/N (tokens per parameter)", title=act)
        ax.legend(frameon=False, fontsize=5.5, loc="upper left", bbox_to_anchor=(0, -0.24), ncol=2)
    axes[0][0].set_ylabel("|dA / d(D/N)| (per token/parameter)")
    fig.tight_layout()
    return fig


def domain_distributions(neurons: pd.DataFrame, table: pd.DataFrame, group: str | None = "scale", bins: int = 30):
    """Distribution of neuron activation frequency (share of tokens on which a neuron is active,
    PPL-1%, final checkpoint) per data domain (paper Fig. 9): rows = activations, columns = domains
    ("all" first), one step histogram per run, shaded by size."""
    style()
    info = in_group(table.drop_duplicates("run"), group)
    doms = [c for c in neurons.columns if c not in ("run", "step", "layer", "neuron")]
    acts = list(dict.fromkeys(info["activation"]))
    fig, axes = plt.subplots(len(acts), len(doms), figsize=(DOUBLE[0], 1.6 * len(acts) + 0.4), squeeze=False,
                             sharex="row")
    for a, act in enumerate(acts):
        names = _runs_by_size(info, act)
        hi = neurons.loc[neurons["run"].isin(names), doms].max().max()
        edges = np.linspace(0, hi if np.isfinite(hi) and hi > 0 else 1, bins + 1)
        for d, dom in enumerate(doms):
            ax = axes[a][d]
            ax.set_title(f"{act}, {dom}")
            values = [neurons.loc[neurons["run"] == run, dom].dropna() for run in names]
            if not any(len(v) for v in values):  # measure.write_results keeps the column and says why
                _nothing(ax, "no validation token of this\ndomain was measured")
                continue
            for i, (run, v) in enumerate(zip(names, values, strict=True)):
                ax.hist(v, edges, density=True, histtype="step", color=_shade(act, i, len(names)), lw=1, label=run)
            ax.set_xlabel("activation frequency (share of tokens)")
        axes[a][0].set_ylabel("density")
        axes[a][0].legend(frameon=False, fontsize=5.5)
    fig.tight_layout()
    return fig


def layer_distributions(summary: pd.DataFrame, domain: str = "all"):
    """Neuron activation frequency per layer (v4 Fig. 16): median with the 10-90% range against the
    relative depth (layer + 0.5) / L, per run (analysis.domain_distributions summary), one panel per
    activation."""
    style()
    s = summary[(summary["domain"] == domain) & (summary["layer"] >= 0)]
    acts = list(dict.fromkeys(s["activation"]))
    fig, axes = plt.subplots(1, max(len(acts), 1), figsize=DOUBLE, squeeze=False, sharey=True)
    for ax, act in zip(axes[0], acts):
        g = s[s["activation"] == act]
        names = _runs_by_size(g, act)
        for i, run in enumerate(names):
            r = g[g["run"] == run].sort_values("layer")
            x = (r["layer"] + 0.5) / len(r)
            c = _shade(act, i, len(names))
            ax.errorbar(x, r["median"], yerr=[r["median"] - r["q10"], r["q90"] - r["median"]], fmt="o-", ms=3,
                        lw=1, capsize=2, color=c, label=f"{run} (L={len(r)})")
        ax.set(xlabel="relative depth (layer + 0.5) / L", title=f"{act}, {domain}")
        ax.legend(frameon=False, fontsize=5.5)
    axes[0][0].set_ylabel("activation frequency (median, 10-90%)")
    fig.tight_layout()
    return fig


def token_pairs(tokens: pd.DataFrame, correlations: pd.DataFrame, max_cols: int = 6):
    """Per-token activation ratio of one run against another of the same activation (paper Fig. 10),
    one panel per pair (analysis.token_pairs; at most `max_cols` per activation, the title says when
    pairs are left out), with Pearson r [interval] and Spearman rho; the diagonal is equality."""
    style()
    acts = list(dict.fromkeys(correlations["activation"]))
    ncols = max(1, min(max_cols, max((correlations["activation"] == a).sum() for a in acts) if acts else 1))
    fig, axes = plt.subplots(max(len(acts), 1), ncols, figsize=(DOUBLE[0], 1.45 * max(len(acts), 1) + 0.3),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)
    wide = tokens.pivot_table(index="token_id", columns="run", values="activation_ratio")
    for a, act in enumerate(acts):
        for j, (_, r) in enumerate(correlations[correlations["activation"] == act].head(ncols).iterrows()):
            ax = axes[a][j]
            ax.set_visible(True)
            d = wide[[r["run_a"], r["run_b"]]].dropna()
            ax.plot(d[r["run_a"]], d[r["run_b"]], ".", ms=1.5, alpha=0.4, color=color(act))
            v = d.to_numpy()
            lim = [float(v.min()), float(v.max())] if v.size else [0.0, 1.0]
            ax.plot(lim, lim, color="0.5", lw=0.6, ls=":")
            ax.set(xlim=lim, ylim=lim)
            for axis in (ax.xaxis, ax.yaxis):  # few, small ticks: labels of narrow panels never run together
                axis.set_major_locator(ticker.MaxNLocator(2))
            ax.tick_params(labelsize=5.5)
            ax.set(xlabel=r["run_a"], ylabel=r["run_b"])
            ax.xaxis.label.set_size(6)
            ax.yaxis.label.set_size(6)
            if np.isfinite(r["pearson"]):
                ax.set_title(f"r={r['pearson']:.2f} [{r['pearson_lo']:.2f}, {r['pearson_hi']:.2f}]\n"
                             f"rho={r['spearman']:.2f}, n={int(r['n_tokens'])}", fontsize=5.5)
    cut = [(a, k) for a in acts if (k := int((correlations["activation"] == a).sum())) > ncols]
    shown = "".join(f"; first {ncols} of {k} {a} pairs shown" for a, k in cut)
    fig.suptitle(f"per-token activation ratio (share of neurons active), pairs of runs{shown}", fontsize=8)
    fig.tight_layout()
    return fig


def limit_loss_vs_scale(points: pd.DataFrame):
    """Limit loss vs non-embedding parameters (paper Fig. 12): fitted E of L(D) = E + B D^-beta with its
    interval (filled) and the last measured dense loss (hollow), per activation."""
    style()
    fig, ax = plt.subplots(figsize=SINGLE)
    for act in dict.fromkeys(points["activation"]):
        g, c = points[points["activation"] == act], color(act)
        e = g[g["loss_converged"].eq(True)]
        ax.errorbar(e["non_embedding_params"] / 1e3, e["E"], yerr=[e["E"] - e["E_lo"], e["E_hi"] - e["E"]], fmt="o-",
                    ms=3, lw=0.8, capsize=2, color=c, label=f"{act}: fitted limit loss E")
        ax.plot(g["non_embedding_params"] / 1e3, g["final_loss"], "o--", mfc="none", ms=3, lw=0.6, color=c,
                label=f"{act}: {LAST_LOSS}")
    _ticks_at(ax, points["non_embedding_params"] / 1e3)
    ax.set(xlabel="non-embedding parameters N (thousands)", ylabel="loss (nats/token)")
    fig.set_layout_engine("constrained")  # the legend below the axes: inside, it lay over the hollow points
    fig.legend(*ax.get_legend_handles_labels(), frameon=False, loc="outside lower left", fontsize=5.5, ncol=2)
    return fig


# -----------------------------------------------------------------------------------------------
# figure of notebook 06 (paper Table 1 analog: dense vs PPL-p% sparse inference on held-out text)


def sparse_inference(df: pd.DataFrame):
    """Held-out loss increase over the dense model (PPL ratio - 1, in %) vs the activation ratio reached,
    one panel per data domain ("all" first; inference.sparse_inference_for's table). Each run is a line
    from its dense point (p = 0, hollow: activation ratio = share of h_i != 0) through its PPL-p% points;
    colour by activation (lighter = smaller), marker by p; dotted lines mark the calibration targets p%.
    A p whose calibration target no tested c reached (`reached` False) is crossed: not a PPL-p% point."""
    from matplotlib.lines import Line2D

    style()
    domains = ["all", *[d for d in dict.fromkeys(df["domain"]) if d != "all"]]
    ps = sorted(df["p"].unique())
    markers = dict(zip(ps, "osD^vP*X", strict=False))
    fig, axes = plt.subplots(1, len(domains), figsize=(DOUBLE[0], DOUBLE[1] + 0.3), sharey=True, squeeze=False)
    for ax, dom in zip(axes[0], domains, strict=True):
        g = df[df["domain"] == dom]
        for act in dict.fromkeys(g["activation"]):
            names = _runs_by_size(g, act)
            for i, run in enumerate(names):
                r, c = g[g["run"] == run].sort_values("p"), _shade(act, i, len(names))
                ax.plot(r["activation_ratio"], 100 * (r["ppl_ratio"] - 1), "-", lw=0.7, color=c, label=run)
                for _, row in r.iterrows():
                    ax.plot(row["activation_ratio"], 100 * (row["ppl_ratio"] - 1), markers[row["p"]], ms=3.5,
                            color=c, mfc="none" if row["p"] == 0 else c)
                miss = r[_unreached(r)]
                ax.plot(miss["activation_ratio"], 100 * (miss["ppl_ratio"] - 1), "x", color="k", ms=6, mew=0.8)
        for p in ps[1:] if ps and ps[0] == 0 else ps:
            ax.axhline(p, color="0.6", lw=0.5, ls=":")
        n = int(g["n_tokens"].iloc[0]) if len(g) else 0
        ax.set(xlabel="activation ratio (held-out)", title=f"{dom} ({n:,} held-out tokens)", xlim=(0, 1.02))
    axes[0][0].set_ylabel("PPL increase over dense (%)")
    axes[0][0].legend(frameon=False, fontsize=5.5, loc="upper right")
    handles = [Line2D([], [], ls="", marker=markers[p], color="0.3", mfc="none" if p == 0 else "0.3", ms=3.5,
                      label="dense" if p == 0 else f"PPL-{p:g}%") for p in ps]
    if _unreached(df).any():
        handles.append(Line2D([], [], ls="", marker="x", color="k", ms=6, mew=0.8,
                              label="target not reached (c a lower bound)"))
    if any(ps):
        handles.append(Line2D([], [], ls=":", lw=0.5, color="0.6", label="dotted: the p% targets"))
    axes[0][-1].legend(handles=handles, frameon=False, fontsize=5.5, loc="upper right")
    fig.tight_layout()
    return fig
