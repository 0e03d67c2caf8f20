"""One figure style, the figures themselves, and `save`, which writes PNG+PDF atomically and records
each file in figures/<profile>/MANIFEST.csv (paper figure, notebook, config hash, git sha)."""

from __future__ import annotations

import csv
import io
import os
import sys

import matplotlib

if "MPLBACKEND" not in os.environ and "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # non-interactive backend outside notebooks: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .config import ProfileConfig  # noqa: E402
from .runs import figures_dir, git_state, group_runs, load_log, states_table  # noqa: E402
from .train import atomic_write_bytes  # noqa: E402

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
    """Log-scaled x axis with plain tick labels (1, 2, 5, ...)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def color(activation: str) -> str:
    return ACTIVATION_COLORS.get(activation, "#444444")


def save(fig, name: str, profile: ProfileConfig, paper: str, notebook: str) -> list[str]:
    """Write figures/<profile>/<name>.png and .pdf (no timestamps in their metadata, so committed
    figures change only when data change) and upsert their MANIFEST rows."""
    out = figures_dir(profile.name)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "ModDate": None, "Producer": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, metadata=meta)
        atomic_write_bytes(out / f"{name}.{ext}", buf.getvalue())
        written.append(f"{name}.{ext}")
    g = git_state()
    rows = {}
    manifest = out / "MANIFEST.csv"
    if manifest.exists():
        with open(manifest, newline="") as f:
            rows = {r["file"]: r for r in csv.DictReader(f)}
    for w in written:
        rows[w] = {"file": w, "paper": paper, "notebook": notebook, "profile": profile.name,
                   "config_hash": profile.config_hash()[:12], "git_sha": g["git_sha"][:12], "git_dirty": g["git_dirty"]}
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS)
    wr.writeheader()
    for k in sorted(rows):
        wr.writerow({f: rows[k].get(f, "") for f in MANIFEST_FIELDS})
    atomic_write_bytes(manifest, buf.getvalue().encode())
    return written


# -----------------------------------------------------------------------------------------------
# figures of notebook 01


def loss_curves(logs: dict[str, pd.DataFrame], info: pd.DataFrame, title: str = ""):
    """Training loss vs tokens for each run (paper Fig. 11 analog): one panel per activation, runs
    coloured by non-embedding parameters; validation losses at the checkpoints as dots.

    `logs` maps run name -> its log (runs.load_log); `info` is runs.states_table restricted to the runs.
    """
    style()
    acts = list(dict.fromkeys(info["activation"]))
    fig, axes = plt.subplots(1, len(acts), figsize=(DOUBLE[0], DOUBLE[1]), squeeze=False, sharey=True)
    for ax, act in zip(axes[0], acts):
        sub = info[info["activation"] == act].sort_values("non_embedding_params")
        cmap = plt.get_cmap("viridis", max(len(sub), 2) + 1)
        for i, (_, r) in enumerate(sub.iterrows()):
            log = logs[r["run"]]
            tr, va = log[log["split"] == "train"], log[log["split"] == "val"]
            label = f"{r['run']} ({r['non_embedding_params'] / 1e6:.2f}M)"
            smooth = tr["loss"].rolling(5, min_periods=1, center=True).mean()
            ax.plot(tr["tokens"] / 1e6, smooth, color=cmap(i), lw=1, label=label)
            ax.plot(va["tokens"] / 1e6, va["loss"], "o", color=cmap(i), ms=2)
        log_x(ax)
        ax.set_xlabel("training tokens (millions)")
        ax.set_title(f"{act}")
        ax.legend(frameon=False)
    axes[0][0].set_ylabel("loss (nats/token)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def loss_curves_for(profile: ProfileConfig, group: str | None = None, runs_dir=None):
    """loss_curves for the runs of one analysis group of a trained profile."""
    names = [r.name for r in group_runs(profile, group)]
    info = states_table(profile, runs_dir)
    info = info[info["run"].isin(names)]
    logs = {r.name: load_log(profile, r, runs_dir) for r in group_runs(profile, group)}
    what = f"{group.replace('_', '-')} grid" if group else "all runs"
    return loss_curves(logs, info, title=f"Training loss, {what} (profile {profile.name})")


# -----------------------------------------------------------------------------------------------
# figures of notebook 02

METHOD_STYLE = {"cett": ("PPL-p% (CETT swept)", "-", "o"), "topk": ("Top-k per token", "--", "s"),
                "topk_batch": ("Top-k per batch (authors)", ":", "s"), "fat": ("FAT-eps", "-.", "^")}


def pareto_curves(df: pd.DataFrame):
    """PPL vs activation ratio for each method on each run's final checkpoint (paper Fig. 3, v4 Fig. 2)."""
    style()
    runs_ = list(dict.fromkeys(df["run"]))
    fig, axes = plt.subplots(1, len(runs_), figsize=DOUBLE, squeeze=False)
    for ax, run in zip(axes[0], runs_):
        sub = df[df["run"] == run]
        for method, (label, ls, mk) in METHOD_STYLE.items():
            m = sub[sub["method"] == method].sort_values("activation_ratio")
            if len(m):
                ax.plot(m["activation_ratio"], m["ppl"], ls=ls, marker=mk, ms=3, lw=1, label=label)
        z = sub[sub["method"] == "zeros"]
        if len(z):
            ax.plot(z["activation_ratio"], z["ppl"], "kx", ms=6, label="exact zeros (ReLU)")
        for _, r in sub[sub["method"].str.startswith("ppl-")].iterrows():
            ax.plot(r["activation_ratio"], r["ppl"], "*", color="crimson", ms=9, label=r["method"].upper())
        ax.axhline(sub["dense_loss"].map(np.exp).iloc[0], color="grey", lw=0.8, ls=":", label="dense")
        ax.set_xlabel("activation ratio")
        ax.set_title(f"{run} ({sub['activation'].iloc[0]})")
        top = sub["dense_loss"].map(np.exp).iloc[0] * 1.3
        ax.set_ylim(top=min(ax.get_ylim()[1], top))
    axes[0][0].set_ylabel("validation perplexity")
    axes[0][0].legend(frameon=False, fontsize=6)
    fig.tight_layout()
    return fig


def cett_sweep(df: pd.DataFrame):
    """PPL ratio and activation ratio vs the CETT value c (v4 Fig. 15: both grow monotonically)."""
    style()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=DOUBLE)
    for run, sub in df[df["method"] == "cett"].groupby("run", sort=False):
        sub = sub.sort_values("param")
        kw = {"color": color(sub["activation"].iloc[0]), "marker": "o", "ms": 3, "lw": 1, "label": run}
        a1.plot(sub["param"], sub["ppl_ratio"], **kw)
        a2.plot(sub["param"], sub["activation_ratio"], **kw)
    a1.axhline(1.01, color="grey", ls=":", lw=0.8)
    a1.set(xlabel="CETT value c", ylabel="PPL ratio (sparse / dense)", yscale="log")
    a2.set(xlabel="CETT value c", ylabel="activation ratio")
    a2.legend(frameon=False)
    fig.tight_layout()
    return fig


def layer_thresholds(table: pd.DataFrame, p: float = 1.0):
    """Per-layer thresholds tau_l and activation ratios at PPL-p% on each run's final checkpoint."""
    style()
    fin = table[(table["p"] == p)].sort_values("tokens").groupby("run", sort=False).tail(1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=DOUBLE)
    for _, r in fin.iterrows():
        taus = [float(v) for v in r["taus"].split(";")]
        ratios = [float(v) for v in r["layer_ratios"].split(";")]
        kw = {"color": color(r["activation"]), "marker": "o", "ms": 3, "lw": 1,
              "alpha": 0.4 + 0.6 * (r["non_embedding_params"] / fin["non_embedding_params"].max()),
              "label": f"{r['run']} (L={r['n_layers']})"}
        x = np.arange(1, len(taus) + 1)
        a1.plot(x, taus, **kw)
        a2.plot(x, ratios, **kw)
    a1.set(xlabel="layer", ylabel=r"threshold $\tau_l$", yscale="log")
    a2.set(xlabel="layer", ylabel=f"activation ratio at PPL-{p:g}%")
    a2.legend(frameon=False, fontsize=5.5, ncol=2)
    fig.tight_layout()
    return fig
