"""Two results folders of one profile side by side: did a rerun reproduce the committed results?

Training is deterministic on one machine, but on another one (another CPU instruction set, for which
torch picks other kernels that round differently, or another build) the same seed can train other
weights: the losses drift apart after some steps, and so do the measurements and the fits.
``compare(a, b)`` says how far, from the tables alone:

  * claims   -- each claim's verdict and value in A and in B (claims.csv);
  * runs     -- per run of either folder, the final validation loss (train_log.csv) and the activation
                ratio at PPL-1% at the last checkpoint both list, and the largest difference of that ratio
                over the checkpoints both measured, with the count of those measured in one folder only
                and of those whose PPL-1% target was not reached in each folder (sparsity.csv: such a
                ratio comes from a lower bound on c, so it is compared but counted);
  * fits     -- per run of either folder, whether the law fit (Eq. 4 / Eq. 5) converged in A and in B,
                A0 with its interval in each, and whether B's A0 lies in A's interval (fits.csv).

Every table is read with its provenance sidecar checked (runs.read_table). A table missing from either
folder leaves its section out, named in the summary. ``python -m sparsinglaw compare A B`` prints
``report`` and exits 0 whatever the differences (a report, not a test); 2 when a folder or a table
cannot be read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import SparsingLawError
from .runs import as_bool, read_table

TABLES = {"claims": ["id", "verdict", "value"],
          "sparsity": ["run", "step", "p", "activation_ratio"],
          "train_log": ["run", "step", "split", "loss"],
          "fits": ["run", "form", "converged", "A0", "A0_lo", "A0_hi"]}


KEYS = {"claims": ["id"], "sparsity": ["run", "step", "p"], "train_log": ["run", "step", "split"],
        "fits": ["run", "form"]}  # one row per key in each table
NUMERIC = {"sparsity": ["step", "p", "activation_ratio"], "train_log": ["step", "loss"],
           "fits": ["A0", "A0_lo", "A0_hi"]}  # compared as numbers
BOOLEAN = {"sparsity": ["reached"], "fits": ["converged"]}  # True or False (where the table has the column)


def _read(folder: Path, name: str) -> pd.DataFrame | None:
    """folder/<name>.csv checked (sidecar, columns, one row per KEYS[name]), or None when absent."""
    path = folder / f"{name}.csv"
    if not path.is_file():
        return None
    fix = "rerun the stage of its profile that writes it (make figures, or python -m sparsinglaw compute, fit, verify)"
    df = read_table(path, TABLES[name], numeric=NUMERIC.get(name, []), fix=fix)
    for c in (c for c in BOOLEAN.get(name, []) if c in df):
        bad = ~df[c].astype(str).str.strip().str.lower().isin(["true", "false"])
        if bad.any():  # as_bool would read it as False
            i = int(bad.to_numpy().argmax())
            raise SparsingLawError(f"{path}: line {i + 2}, column {c}: {df[c].iloc[i]!r} is not True or False; {fix}")
    if df.duplicated(KEYS[name]).any():  # a pairing of A's and B's rows would be arbitrary
        row = df[df.duplicated(KEYS[name])].iloc[0]
        raise SparsingLawError(f"{path}: repeated rows for {', '.join(f'{k} {row[k]}' for k in KEYS[name])}; "
                               "expected one row per key, as the pipeline writes them")
    return df


def _moved_inputs(folder: Path, claims: pd.DataFrame) -> str:
    """The tables of `folder` that differ from those its claims.csv was judged on (its sidecar's `inputs`;
    a table recorded there and gone since differs too), comma-separated; "" when none did or the sidecar
    records none (one written before `inputs` was recorded)."""
    from .claims import judged_on

    recorded = claims.attrs.get("meta", {}).get("inputs")
    if not isinstance(recorded, dict):
        return ""
    now = judged_on(folder)
    return ", ".join(n for n in sorted(recorded) if recorded[n] != now.get(n))


def _headline(value) -> str:
    """A claim's value up to its first ';' (the rest lists runs)."""
    return str(value).split(";")[0]


def _shown(a: str, b: str) -> tuple[str, str]:
    """Two values of one claim as the table shows them: their headlines, or, when the headlines agree and
    the values do not, the first ';'-separated part where they differ (what moved)."""
    ha, hb = _headline(a), _headline(b)
    if ha != hb or a == b:
        return ha, hb
    pa, pb = a.split(";"), b.split(";")
    k = next((i for i, (x, y) in enumerate(zip(pa, pb)) if x != y), min(len(pa), len(pb)))
    return tuple((p[k].strip() if k < len(p) else "(no more)") for p in (pa, pb))


def claims_table(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """id, verdict and headline value in A and B, whether the verdict is the same and whether the whole
    value is (ids of either)."""
    a, b = (t[["id", "verdict", "value"]].astype(object) for t in (a, b))  # an empty table reads as float
    ids = list(dict.fromkeys([*a["id"], *b["id"]]))  # A's order, then B's others
    m = pd.DataFrame({"id": ids}, dtype=object).merge(a, on="id", how="left").merge(
        b, on="id", how="left", suffixes=("_a", "_b"))
    va, vb = (m[f"value{s}"].fillna("").astype(str) for s in ("_a", "_b"))
    m["same_value"] = va == vb
    shown = [_shown(x, y) for x, y in zip(va, vb, strict=True)]
    m["value_a"], m["value_b"] = [s[0] for s in shown], [s[1] for s in shown]
    for s, t in (("_a", a), ("_b", b)):
        m[f"verdict{s}"] = m[f"verdict{s}"].where(m["id"].isin(t["id"]), "(absent)").fillna("(empty)")
    m["same"] = m["verdict_a"] == m["verdict_b"]
    return m[["id", "verdict_a", "verdict_b", "same", "same_value", "value_a", "value_b"]]


def _last(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Per run (the index), `cols` at the run's last step (a NaN there stays NaN)."""
    return df.sort_values("step", kind="stable").groupby("run", sort=False).tail(1).set_index("run")[cols]


def runs_table(sa: pd.DataFrame | None, sb: pd.DataFrame | None, la: pd.DataFrame | None,
               lb: pd.DataFrame | None, p: float = 1.0) -> pd.DataFrame:
    """Per run of either folder: where it is (A and B, A only, B only); the final validation loss in A
    and B (train_log.csv); from sparsity.csv, the checkpoints with a PPL-p% activation ratio in both
    folders, those with one in a single folder (one_sided: a checkpoint or a value missing in the other),
    the last checkpoint both list with its ratio in A and B, the largest |B - A| of the ratio over
    the checkpoints with a value in both (NaN for a run without measurements: an MoE run), and the
    checkpoints whose PPL-p% target was not reached in A and in B (unreached_a/_b; 0 for a table made
    before sparsity.csv had `reached`, <NA> for a run that folder did not measure)."""
    parts = []
    if la is not None and lb is not None:
        parts += [_last(t[t["split"] == "val"], ["step", "loss"]).add_prefix("val_").add_suffix(s)
                  for t, s in ((la, "_a"), (lb, "_b"))]
    if sa is not None and sb is not None:
        cols = ["run", "step", "activation_ratio", "unreached"]
        sa, sb = (t.assign(unreached=~as_bool(t["reached"]) if "reached" in t else False) for t in (sa, sb))
        m = sa.loc[sa["p"] == p, cols].merge(sb.loc[sb["p"] == p, cols], on=["run", "step"], how="outer",
                                             suffixes=("_a", "_b"), indicator=True)
        m["diff"] = (m["activation_ratio_b"] - m["activation_ratio_a"]).abs()  # NaN unless both have a value
        for c in ("unreached_a", "unreached_b"):  # False where the folder lacks the checkpoint
            m[c] = m[c].astype("boolean").fillna(False).astype(bool)
        measured = {s: set(t.loc[t["p"] == p, "run"]) for s, t in (("a", sa), ("b", sb))}
        m["one_sided"] = m["activation_ratio_a"].notna() != m["activation_ratio_b"].notna()
        g = m.groupby("run", sort=False)
        last = _last(m[m["_merge"] == "both"], ["step", "activation_ratio_a", "activation_ratio_b"])
        parts.append(pd.DataFrame({"checkpoints": g["diff"].count(), "one_sided": g["one_sided"].sum(),
                                   "step": last["step"], "ratio_a": last["activation_ratio_a"],
                                   "ratio_b": last["activation_ratio_b"], "max_ratio_diff": g["diff"].max(),
                                   "unreached_a": g["unreached_a"].sum(), "unreached_b": g["unreached_b"].sum()}))
        for side in ("a", "b"):  # a run the folder did not measure has no count there (not 0)
            col = parts[-1][f"unreached_{side}"].astype("Int64")
            parts[-1][f"unreached_{side}"] = col.where(col.index.isin(list(measured[side])), pd.NA)
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, axis=1, sort=False)
    ra, rb = ({r for t in pair if t is not None for r in t["run"]} for pair in ((la, sa), (lb, sb)))
    order = dict.fromkeys(r for t in (la, sa, lb, sb) if t is not None for r in t["run"])  # as A lists them
    out = out.reindex([r for r in order if r in out.index]).rename_axis("run").reset_index()
    where = ["A and B" if r in ra and r in rb else "A only" if r in ra else "B only" for r in out["run"]]
    out.insert(1, "where", where)
    return out


def fits_table(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per run of either fits.csv: where its fit row is (A and B, A only, B only), converged in A and in B
    (False where the row is absent), A0 with its interval in each, and whether B's A0 lies in A's
    interval (False when either did not converge or A has no interval)."""
    cols = ["run", "form", "converged", "A0", "A0_lo", "A0_hi"]
    m = a[cols].merge(b[cols], on=["run", "form"], how="outer", sort=False, suffixes=("_a", "_b"), indicator=True)
    where = {"both": "A and B", "left_only": "A only", "right_only": "B only"}
    m.insert(2, "where", m.pop("_merge").astype(str).map(where))
    for s in ("_a", "_b"):
        m[f"converged{s}"] = as_bool(m[f"converged{s}"])
        m.loc[~m[f"converged{s}"], [f"A0{s}", f"A0_lo{s}", f"A0_hi{s}"]] = np.nan
    m["b_in_a"] = (m["A0_b"] >= m["A0_lo_a"]) & (m["A0_b"] <= m["A0_hi_a"])
    return m


def _capability(df: pd.DataFrame) -> str:
    """The CPU instruction set a table's sidecar records (train.versions), or "unrecorded"."""
    return (df.attrs.get("meta", {}).get("versions") or {}).get("cpu_capability", "unrecorded")


def compare(a: str | Path, b: str | Path) -> dict[str, pd.DataFrame]:
    """The comparison tables of results folders `a` and `b` (claims, runs, fits; a section whose table
    either folder lacks is absent). Raises SparsingLawError when a folder does not exist or the two share
    none of the tables."""
    a, b = Path(a), Path(b)
    for f in (a, b):
        if not f.is_dir():
            what = "a file, not a folder" if f.exists() else "no such folder"
            raise SparsingLawError(f"{f}: {what}; expected a results folder such as results/cpu")
    ta, tb = ({n: _read(f, n) for n in TABLES} for f in (a, b))
    shared = [n for n in TABLES if ta[n] is not None and tb[n] is not None]
    if not shared:
        inner = {f: sorted(p.name for p in f.iterdir() if (p / "sparsity.csv").is_file()) for f in (a, b)}
        named = ", ".join(f"{f}/{{{','.join(names)}}}" for f, names in inner.items() if names)
        hint = f" (a profile's folder, e.g. {named}?)" if named else ""
        raise SparsingLawError(f"{a} and {b} share none of the tables {', '.join(f'{n}.csv' for n in TABLES)}; "
                               f"expected two results folders of one profile{hint}")
    first = next(n for n in ("sparsity", "train_log", "fits", "claims") if n in shared)  # a base table first
    meta = {s: t[first].attrs.get("meta", {}) for s, t in (("a", ta), ("b", tb))}
    out = {"provenance": pd.DataFrame({s: {"table": f"{first}.csv", "profile": m.get("profile"),
                                           "config_hash": m.get("config_hash"),
                                           "corpus": (m.get("corpus") or {}).get("sha256")}
                                       for s, m in meta.items()}).T,
           # the instruction set each shared table was made on: tables of one folder may come from other machines
           "cpu_capability": pd.DataFrame({s: {f"{n}.csv": _capability(t[n]) for n in shared}
                                           for s, t in (("a", ta), ("b", tb))})}
    if "claims" in shared:
        out["claims"] = claims_table(ta["claims"], tb["claims"])
        out["claims_inputs"] = pd.DataFrame([{"side": s, "tables": moved} for s, f, t in (("A", a, ta), ("B", b, tb))
                                             if (moved := _moved_inputs(f, t["claims"]))])
    runs = runs_table(ta["sparsity"], tb["sparsity"], ta["train_log"], tb["train_log"])
    if len(runs):
        out["runs"] = runs
    if "fits" in shared:
        out["fits"] = fits_table(ta["fits"], tb["fits"])
    out["missing"] = pd.DataFrame({"table": [f"{n}.csv" for n in TABLES if n not in shared],
                                   "in_a": [ta[n] is not None for n in TABLES if n not in shared],
                                   "in_b": [tb[n] is not None for n in TABLES if n not in shared]})
    return out


def summary(t: dict[str, pd.DataFrame]) -> str:
    """A few lines: what A and B were made from, verdicts kept and changed, the largest differences, the
    fits that moved."""
    lines = []
    if "provenance" in t:
        p = t["provenance"]
        if p.at["a", "profile"] != p.at["b", "profile"]:
            lines.append(f"warning: A holds profile {p.at['a', 'profile']}, B {p.at['b', 'profile']}: other runs, "
                         "not a rerun of the same ones")
        lines.append(_provenance_line(p, t.get("cpu_capability")))
    for r in t.get("claims_inputs", pd.DataFrame()).itertuples():
        lines.append(f"warning: {r.side}'s claims.csv was judged on other tables than {r.side} holds now ({r.tables} "
                     "changed since): its verdicts may not describe them; python -m sparsinglaw verify on that "
                     "folder judges them again")
    if "claims" in t:
        c = t["claims"]
        changed = c[~c["same"]]
        moved = c[c["same"] & ~c["same_value"]]  # the same verdict on other numbers
        lines.append(f"claims: {int(c['same'].sum())} of {len(c)} verdicts the same"
                     + ("" if changed.empty else "; changed: " + ", ".join(
                         f"{r.id} {r.verdict_a} -> {r.verdict_b}" for r in changed.itertuples()))
                     + ("" if moved.empty else f"; {len(moved)} of the same with another value: "
                        + ", ".join(moved["id"])))
    r = t.get("runs")
    if r is not None:
        alone = {w: ", ".join(r.loc[r["where"] == w, "run"]) for w in ("A only", "B only")}
        if any(alone.values()):
            lines.append("runs in one folder only: " + "; ".join(f"{w}: {v}" for w, v in alone.items() if v))
    if r is not None and "max_ratio_diff" in r:
        both = r.dropna(subset=["max_ratio_diff"])
        final = (both["ratio_b"] - both["ratio_a"]).abs().dropna()
        parts = [f"largest |B - A| {_largest(both, both['max_ratio_diff'])} over {int(both['checkpoints'].sum())} "
                 f"checkpoints of {len(both)} runs" if len(both) else "no checkpoint with a value in both"]
        if len(final):
            parts.append(f"at the final checkpoints of {len(final)} runs median {final.median():.4f}, largest "
                         f"{final.max():.4f}")
        if r["one_sided"].sum():
            parts.append(f"{int(r['one_sided'].sum())} checkpoint(s) with a value in one folder only")
        missed = {s: int(r[f"unreached_{s}"].sum()) for s in ("a", "b")}
        if any(missed.values()):
            parts.append(f"target not reached (c a lower bound) at {missed['a']} checkpoint(s) in A, "
                         f"{missed['b']} in B")
        lines.append("activation ratio at PPL-1%: " + "; ".join(parts))
    if r is not None and "val_loss_a" in r:
        both = r.dropna(subset=["val_loss_a", "val_loss_b"])
        d = (both["val_loss_b"] - both["val_loss_a"]).abs()
        text = (f"largest |B - A| {_largest(both, d)}, median {d.median():.4f}, over {len(both)} runs" if len(both)
                else "no run with one in both")
        other_step = int((both["val_step_a"] != both["val_step_b"]).sum())
        if other_step:
            text += f" ({other_step} of them logged last at another step in B)"
        one = r[(r["where"] == "A and B") & (r["val_loss_a"].isna() != r["val_loss_b"].isna())]
        if len(one):  # a run of both folders without a validation loss in one train_log.csv
            text += "; a validation loss in one folder only: " + ", ".join(
                f"{x.run} (no loss in {'B' if pd.notna(x.val_loss_a) else 'A'})" for x in one.itertuples())
        lines.append("final validation loss: " + text)
    if "fits" in t:
        f = t["fits"]
        both = f["converged_a"] & f["converged_b"]
        known = both & f["A0_lo_a"].notna() & f["A0_hi_a"].notna()
        alone = f[f["where"] != "A and B"]
        lines.append(f"law fits: {int(both.sum())} of {len(f)} runs converged in both, "
                     f"{int((f['converged_a'] != f['converged_b']).sum())} in one only; B's A0 inside A's "
                     f"interval for {int(f['b_in_a'].sum())} of the {int(known.sum())} converged in both with an "
                     "interval in A" + ("" if alone.empty else "; fitted in one folder only: " + ", ".join(
                         f"{r.run} ({r.where})" for r in alone.itertuples())))
    m = t.get("missing")
    if m is not None and len(m):
        def where(row) -> str:
            return "only in A" if row.in_a else "only in B" if row.in_b else "in neither folder"

        lines.append("not compared: " + ", ".join(f"{row.table} ({where(row)})" for row in m.itertuples()))
    return "\n".join(lines)


def _provenance_line(p: pd.DataFrame, caps: pd.DataFrame | None = None) -> str:
    """'made from (sparsity.csv): profile cpu in both; config hash ... in both; ...': what the first table
    both folders hold was made from (its sidecar); then the CPU instruction set of every shared table
    (train.versions; one phrase when every table agrees)."""
    def pair(what: str, a, b) -> str:
        return f"{what} {a} in both" if a == b else f"{what} {a} in A, {b} in B"

    out = [pair("profile", p.at["a", "profile"], p.at["b", "profile"])]
    out += [pair(what, str(p.at["a", key])[:12], str(p.at["b", key])[:12])
            for key, what in (("config_hash", "config hash"), ("corpus", "corpus"))]
    if caps is not None and len(caps):
        same = caps.drop_duplicates()
        out.append(pair("CPU instruction set", *same.iloc[0]) if len(same) == 1 else
                   "CPU instruction set: " + ", ".join(pair(table, a, b) for table, (a, b) in caps.iterrows()))
    return f"made from ({p.at['a', 'table']}): " + "; ".join(out)


def _largest(rows: pd.DataFrame, diff: pd.Series) -> str:
    """'0.0123 (run)': the largest difference and its run (no run when every difference is 0)."""
    top = diff.max()
    return f"{top:.4f}" + (f" ({rows.at[diff.idxmax(), 'run']})" if top > 0 else "")


def report(t: dict[str, pd.DataFrame]) -> str:
    """The summary, then each table as text."""
    parts = [summary(t)]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 70,
                           "display.float_format", "{:.4g}".format):
        for name in ("claims", "runs", "fits"):
            if name in t:
                parts += ["", f"{name}:", t[name].to_string(index=False)]
    return "\n".join(parts) + "\n"
