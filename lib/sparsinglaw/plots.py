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
