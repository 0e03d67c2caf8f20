"""compare: two results folders side by side, checked against differences put into a copy on purpose."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from conftest import REPO
from sparsinglaw import cli, compare, runs
from sparsinglaw.config import SparsingLawError

COMMITTED = REPO / "results" / "cpu"


def _copy(tmp_path, name):
    out = tmp_path / name
    shutil.copytree(COMMITTED, out)
    return out


def _rewrite(folder, name, edit, **meta):
    """Change results table `name` by `edit` (a function of the DataFrame) and write it with its sidecar."""
    path = folder / f"{name}.csv"
    old = json.loads(path.with_suffix(".meta.json").read_text())
    df = edit(runs.read_csv(path))
    runs.write_table(df, path, {k: v for k, v in {**old, **meta}.items() if k not in ("file", "sha256", "rows")})


def test_a_folder_against_its_copy_is_the_same(tmp_path):
    t = compare.compare(COMMITTED, _copy(tmp_path, "b"))
    s = runs.read_csv(COMMITTED / "sparsity.csv")
    s = s[s["p"] == 1.0]
    assert t["claims"]["same"].all() and len(t["claims"]) == len(runs.read_csv(COMMITTED / "claims.csv"))
    r = t["runs"].dropna(subset=["checkpoints"])
    assert list(r["run"]) == list(dict.fromkeys(s["run"]))  # every measured run, in the table's order
    assert r["checkpoints"].sum() == len(s) and (r["max_ratio_diff"] == 0).all()
    assert set(t["runs"]["run"]) == set(runs.read_csv(COMMITTED / "train_log.csv")["run"])  # MoE runs: loss only
    text = compare.summary(t)
    n = len(runs.read_csv(COMMITTED / "claims.csv"))
    assert (f"{n} of {n} verdicts the same\nactivation ratio at PPL-1%: largest |B - A| 0.0000 over {len(s)} "
            "checkpoints") in text
    assert "made from (sparsity.csv): profile cpu in both;" in text and "not compared" not in text


def test_differences_put_into_a_copy_are_found(tmp_path):
    b = _copy(tmp_path, "b")
    s = runs.read_csv(COMMITTED / "sparsity.csv")
    mid = s[(s["run"] == "relu-s3") & (s["p"] == 1.0)]["step"].iloc[5]
    last = s[(s["run"] == "silu-s2") & (s["p"] == 1.0)]["step"].max()

    def ratios(df):
        df = df.copy()
        df.loc[(df["run"] == "relu-s3") & (df["step"] == mid), "activation_ratio"] += 0.0123
        df.loc[(df["run"] == "silu-s2") & (df["step"] == last), "activation_ratio"] -= 0.004
        return df

    _rewrite(b, "sparsity", ratios, versions={"cpu_capability": "AVX2"})
    _rewrite(b, "claims", lambda df: df.assign(verdict=df["verdict"].where(df["id"] != "relu_falls", "FAIL")))

    def val_loss(df):
        df = df.copy()
        last_val = df[(df["run"] == "relu-s1") & (df["split"] == "val")].index[-1]
        df.loc[last_val, "loss"] += 0.05
        return df

    _rewrite(b, "train_log", val_loss)
    fits = runs.read_csv(COMMITTED / "fits.csv").set_index("run")
    hi = fits.at["relu-s4", "A0_hi"]
    _rewrite(b, "fits", lambda df: df.assign(A0=df["A0"].where(df["run"] != "relu-s4", hi + 0.01)))

    t = compare.compare(COMMITTED, b)
    r = t["runs"].set_index("run")
    assert r.at["relu-s3", "max_ratio_diff"] == pytest.approx(0.0123, abs=1e-12)
    assert r.at["silu-s2", "max_ratio_diff"] == pytest.approx(0.004, abs=1e-12)
    assert r.at["silu-s2", "ratio_a"] - r.at["silu-s2", "ratio_b"] == pytest.approx(0.004, abs=1e-12)
    assert (r.drop(index=["relu-s3", "silu-s2"])["max_ratio_diff"].dropna() == 0).all()
    assert r.at["relu-s1", "val_loss_b"] - r.at["relu-s1", "val_loss_a"] == pytest.approx(0.05, abs=1e-9)
    f = t["fits"].set_index("run")
    assert not f.at["relu-s4", "b_in_a"]
    known = f["converged_a"] & f["A0_lo_a"].notna()
    assert f.loc[known, "b_in_a"].sum() == known.sum() - 1
    text = compare.summary(t)
    # per shared table: B's sparsity.csv alone was made on another instruction set
    assert ("made from (sparsity.csv): profile cpu in both; config hash" in text
            and "; CPU instruction set: claims.csv AVX512 in both, sparsity.csv unrecorded in A, AVX2 in B, "
            "train_log.csv unrecorded in both, fits.csv AVX512 in both\n" in text)
    assert t["cpu_capability"].loc["sparsity.csv"].tolist() == ["unrecorded", "AVX2"]
    n = len(runs.read_csv(COMMITTED / "claims.csv"))
    assert f"{n - 1} of {n} verdicts the same; changed: relu_falls INCONCLUSIVE -> FAIL" in text
    assert "largest |B - A| 0.0123 (relu-s3)" in text
    assert "final checkpoints of 18 runs median 0.0000, largest 0.0040" in text
    assert "final validation loss: largest |B - A| 0.0500 (relu-s1), median 0.0000, over 21 runs" in text
    inside = f"B's A0 inside A's interval for {known.sum() - 1} of the {known.sum()} converged in both with an interval"
    assert inside in text
    assert "relu_falls" in compare.report(t)


def test_other_levels_order_gaps_and_profiles(tmp_path):
    """Only PPL-1% rows count, in any row order; a NaN or a missing checkpoint is counted as one-sided and
    never replaced by an earlier value; a run in one folder only is named; another profile is warned of."""
    a, b = _copy(tmp_path, "a"), _copy(tmp_path, "b")
    five = lambda df, shift: pd.concat([df, df[df["p"] == 1.0].assign(p=5.0, activation_ratio=lambda d:  # noqa: E731
                                                                        d["activation_ratio"] + shift)])
    _rewrite(a, "sparsity", lambda df: five(df, 0.0))
    s = runs.read_csv(COMMITTED / "sparsity.csv")
    last = s[s["run"] == "relu-s2"]["step"].max()

    def edit(df):  # PPL-5% rows far off, rows shuffled, relu-s2's final ratio NaN, relu-wd96 unmeasured
        df = five(df, 0.3).sample(frac=1.0, random_state=0)
        df.loc[(df["run"] == "relu-s2") & (df["step"] == last) & (df["p"] == 1.0), "activation_ratio"] = float("nan")
        return df[df["run"] != "relu-wd96"]

    _rewrite(b, "sparsity", edit, profile="other")
    _rewrite(b, "train_log", lambda df: df[df["run"] != "relu-wd96"].iloc[::-1])
    # a claim without a verdict in B, one in B only
    _rewrite(b, "claims", lambda df: pd.concat([df.assign(verdict=df["verdict"].where(df["id"] != "law_forms")),
                                               df.iloc[:1].assign(id="new_claim")]))
    t = compare.compare(a, b)
    r = t["runs"].set_index("run")
    assert r.at["relu-s2", "step"] == last and pd.isna(r.at["relu-s2", "ratio_b"])  # not an earlier checkpoint's
    assert r.at["relu-s2", "one_sided"] == 1 and r.at["relu-s2", "checkpoints"] == 15
    assert r.at["relu-wd96", "where"] == "A only" and r.at["relu-wd96", "one_sided"] == 16
    assert r.at["relu-wd96", "unreached_a"] == 0 and pd.isna(r.at["relu-wd96", "unreached_b"])  # not measured in B
    assert (r.drop(index="relu-wd96")["unreached_b"] == 0).all()
    assert (r.drop(index=["relu-s2", "relu-wd96"])["max_ratio_diff"].dropna() == 0).all()  # PPL-5% left out
    assert r.at["relu-s1", "val_loss_a"] == r.at["relu-s1", "val_loss_b"]  # the last step's, whatever the order
    text = compare.summary(t)
    assert text.startswith("warning: A holds profile cpu, B other")
    assert "runs in one folder only: A only: relu-wd96" in text
    assert "largest |B - A| 0.0000 over 271 checkpoints of 17 runs" in text and "17 checkpoint(s) with a value in one" \
        in text
    assert "final validation loss: largest |B - A| 0.0000, median 0.0000, over 20 runs" in text
    assert "changed: law_forms FAIL -> (empty), new_claim (absent) -> INCONCLUSIVE" in text


def test_checkpoints_without_values_and_repeated_rows(tmp_path):
    """A checkpoint with no value in either folder is not one-sided; a run in B only is named; a repeated
    key refuses the table (pairing A's and B's rows would be arbitrary)."""
    a, b = _copy(tmp_path, "a"), _copy(tmp_path, "b")
    nan_s1 = lambda df: df.assign(activation_ratio=df["activation_ratio"].where(df["run"] != "relu-s1"))  # noqa: E731
    _rewrite(a, "sparsity", nan_s1)
    _rewrite(b, "sparsity", lambda df: pd.concat([nan_s1(df), df[df["run"] == "relu-s2"].assign(run="relu-x")]))
    t = compare.compare(a, b)
    r = t["runs"].set_index("run")
    assert r.at["relu-s1", "one_sided"] == 0 and r.at["relu-s1", "checkpoints"] == 0
    assert r.at["relu-x", "where"] == "B only" and r.at["relu-x", "one_sided"] == 16
    assert pd.isna(r.at["relu-x", "unreached_a"]) and r.at["relu-x", "unreached_b"] == 0
    text = compare.summary(t)
    assert "runs in one folder only: B only: relu-x" in text and "; 16 checkpoint(s) with a value in one folder" in text
    _rewrite(b, "sparsity", lambda df: pd.concat([df, df[df["run"] == "relu-s3"].iloc[:1]]))
    with pytest.raises(SparsingLawError, match=r"sparsity.csv: repeated rows for run relu-s3, step \d+, p 1.0"):
        compare.compare(a, b)


@pytest.mark.parametrize("table, column, value, said", [
    ("sparsity", "activation_ratio", "high", "'high' is not a number"),
    ("sparsity", "step", "last", "'last' is not a number"),
    ("train_log", "loss", "low", "'low' is not a number"),
    ("fits", "A0", "?", "'?' is not a number"),
    ("fits", "converged", "maybe", "'maybe' is not True or False"),
    ("sparsity", "reached", "yes", "'yes' is not True or False"),
])
def test_a_value_of_the_wrong_kind_is_named(tmp_path, capsys, table, column, value, said):
    """A table whose sidecar matches (written by a script of one's own) but with text where compare needs a
    number, or a truth value other than True/False: exit 2 with the file, line and column (it was an
    ArrowNotImplementedError or TypeError traceback, and fits.converged = maybe read as False)."""
    b = _copy(tmp_path, "b")
    _rewrite(b, table, lambda df: df.astype({column: object}).assign(**{column: [value] + list(df[column].iloc[1:])}))
    assert cli.main(["compare", str(COMMITTED), str(b)]) == 2
    err = capsys.readouterr().err
    assert f"{b / table}.csv: line 2, column {column}: {said}" in err and len(err.splitlines()) == 1, err


def test_missing_tables_and_folders(tmp_path):
    b = _copy(tmp_path, "b")
    for f in ("claims.csv", "claims.meta.json"):
        (b / f).unlink()
    t = compare.compare(COMMITTED, b)
    assert "claims" not in t and "not compared: claims.csv (only in A)" in compare.summary(t)
    assert "claims.csv (in neither folder)" in compare.summary(compare.compare(b, b))  # was "only in neither"
    with pytest.raises(SparsingLawError, match="no such folder"):
        compare.compare(COMMITTED, tmp_path / "nope")
    with pytest.raises(SparsingLawError, match=r"claims\.csv: a file, not a folder; expected a results folder"):
        compare.compare(COMMITTED, COMMITTED / "claims.csv")
    c, d = _copy(tmp_path, "c"), _copy(tmp_path, "d")
    for f in (c, d):
        _rewrite(f, "claims", lambda df: df.iloc[:0])  # claims.csv with its header only
    assert "claims: 0 of 0 verdicts the same" in compare.summary(compare.compare(c, d))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparsingLawError, match="share none of the tables") as e:
        compare.compare(COMMITTED, tmp_path / "empty")
    assert "a profile's folder" not in str(e.value)
    with pytest.raises(SparsingLawError, match=r"of one profile \(a profile's folder, e\.g\. "
                                               + re.escape(f"{COMMITTED.parent}/{{cpu,cpu-long}}?)")):
        compare.compare(COMMITTED.parent, tmp_path / "empty")  # results/, not results/cpu


def test_cli_prints_the_report_or_one_error_line(tmp_path, capsys):
    b = _copy(tmp_path, "b")
    assert cli.main(["compare", str(COMMITTED), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("made from (sparsity.csv): profile cpu in both")
    assert "\nclaims:\n" in out and "\nfits:\n" in out
    path = b / "sparsity.csv"
    path.write_text(path.read_text().replace("relu-s1,", "relu-s9,", 1))  # edited by hand: its sha256 is off
    assert cli.main(["compare", str(COMMITTED), str(b)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "sha256 does not match" in err and "Traceback" not in err


def test_unreached_targets_are_counted(tmp_path):
    """A checkpoint whose PPL-1% target was not reached (c a lower bound) is compared but counted per folder;
    PPL-5% rows and a table without the column count none."""
    a, b = _copy(tmp_path, "a"), _copy(tmp_path, "b")
    s = runs.read_csv(COMMITTED / "sparsity.csv")
    steps = sorted(s[s["run"] == "silu-s3"]["step"].unique())[-2:]

    def miss(df):
        hit = (df["run"] == "silu-s3") & df["step"].isin(steps)
        return pd.concat([df.assign(reached=df["reached"] & ~hit),
                          df[df["p"] == 1.0].assign(p=5.0, reached=False)])

    _rewrite(b, "sparsity", miss)
    _rewrite(a, "sparsity", lambda df: df.drop(columns="reached"))
    t = compare.compare(a, b)
    r = t["runs"].set_index("run")
    assert r.at["silu-s3", "unreached_b"] == 2 and r["unreached_b"].sum() == 2 and r["unreached_a"].sum() == 0
    assert r.at["silu-s3", "max_ratio_diff"] == 0  # still compared
    assert "target not reached (c a lower bound) at 0 checkpoint(s) in A, 2 in B" in compare.summary(t)
    assert "target not reached" not in compare.summary(compare.compare(COMMITTED, _copy(tmp_path, "c")))


def test_fits_in_one_folder_only_are_named(tmp_path):
    b = _copy(tmp_path, "b")
    _rewrite(b, "fits", lambda df: pd.concat([df[df["run"] != "relu-s2"],
                                              df[df["run"] == "silu-s1"].assign(run="silu-x")]))
    t = compare.compare(COMMITTED, b)
    f = t["fits"].set_index("run")
    assert f.at["relu-s2", "where"] == "A only" and f.at["silu-x", "where"] == "B only"
    assert not f.at["relu-s2", "converged_b"] and not f.at["silu-x", "converged_a"] and not f.at["silu-x", "b_in_a"]
    assert (f.drop(index=["relu-s2", "silu-x"])["where"] == "A and B").all()
    assert "; fitted in one folder only: relu-s2 (A only), silu-x (B only)" in compare.summary(t)


def test_last_checkpoint_is_the_last_both_list(tmp_path):
    """A run whose final checkpoint B lacks is compared at the last checkpoint both folders list, with A's
    ratio there (not A's final one against nothing); its last val step in B differs, and the summary says so."""
    b = _copy(tmp_path, "b")
    s = runs.read_csv(COMMITTED / "sparsity.csv")
    s4 = s[(s["run"] == "relu-s4") & (s["p"] == 1.0)].sort_values("step")
    before_last, last = s4["step"].iloc[-2], s4["step"].iloc[-1]
    _rewrite(b, "sparsity", lambda df: df[~((df["run"] == "relu-s4") & (df["step"] == last))])
    _rewrite(b, "train_log", lambda df: df[~((df["run"] == "relu-s4") & (df["split"] == "val")
                                             & (df["step"] == df.loc[df["run"] == "relu-s4", "step"].max()))])
    t = compare.compare(COMMITTED, b)
    r = t["runs"].set_index("run")
    assert r.at["relu-s4", "step"] == before_last
    assert r.at["relu-s4", "ratio_a"] == r.at["relu-s4", "ratio_b"] == s4["activation_ratio"].iloc[-2]
    assert r.at["relu-s4", "one_sided"] == 1 and r.at["relu-s4", "checkpoints"] == len(s4) - 1
    assert r.at["relu-s4", "val_step_b"] < r.at["relu-s4", "val_step_a"]
    assert "over 21 runs (1 of them logged last at another step in B)" in compare.summary(t)


def test_b_in_a_needs_b_converged_and_inside_both_bounds(tmp_path):
    """B's A0 below A's lower bound is outside A's interval; an A0 that did not converge in B is never inside
    it, whatever its value; the summary counts the runs converged in one folder only."""
    b = _copy(tmp_path, "b")
    fits = runs.read_csv(COMMITTED / "fits.csv").set_index("run")
    lo = fits.at["relu-wd18.7", "A0_lo"]
    assert fits.loc[["relu-wd18.7", "relu-wd96"], "converged"].all()

    def edit(df):
        df = df.assign(A0=df["A0"].where(df["run"] != "relu-wd18.7", lo - 0.001))
        return df.assign(converged=df["converged"] & (df["run"] != "relu-wd96"))  # A0 kept as it was

    _rewrite(b, "fits", edit)
    f = compare.compare(COMMITTED, b)["fits"].set_index("run")
    assert not f.at["relu-wd18.7", "b_in_a"] and f.at["relu-wd18.7", "A0_b"] == pytest.approx(lo - 0.001)
    assert not f.at["relu-wd96", "b_in_a"] and pd.isna(f.at["relu-wd96", "A0_b"])
    assert f.at["relu-wd96", "A0_a"] == fits.at["relu-wd96", "A0"]
    n_both = int((fits["converged"] & ~fits.index.isin(["relu-wd96"])).sum())
    assert f"law fits: {n_both} of {len(fits)} runs converged in both, 1 in one only" in \
        compare.summary(compare.compare(COMMITTED, b))


def test_claim_values_are_cut_at_the_first_semicolon():
    a = pd.DataFrame({"id": ["x"], "verdict": ["PASS"], "value": ["p = 0.01; run-a: +0.5; run-b: -0.1"]})
    t = compare.claims_table(a, a.assign(value="p = 0.2"))
    assert (t.at[0, "value_a"], t.at[0, "value_b"]) == ("p = 0.01", "p = 0.2") and t.at[0, "same"]


def test_b_in_a_counts_an_a0_on_either_bound_of_the_interval():
    """K1. A's interval is closed: B's A0 equal to A0_lo or to A0_hi lies in it; just outside does not."""
    import pandas as pd

    from sparsinglaw import compare

    rows = [("r1", 0.10), ("r2", 0.20), ("r3", 0.0999), ("r4", 0.2001)]
    a = pd.DataFrame({"run": [r for r, _ in rows], "form": "power", "converged": True, "A0": 0.15,
                      "A0_lo": 0.10, "A0_hi": 0.20})
    b = pd.DataFrame({"run": [r for r, _ in rows], "form": "power", "converged": True, "A0": [v for _, v in rows],
                      "A0_lo": 0.0, "A0_hi": 1.0})
    got = compare.fits_table(a, b).set_index("run")["b_in_a"].to_dict()
    assert got == {"r1": True, "r2": True, "r3": False, "r4": False}


def test_the_instruction_set_is_one_phrase_when_every_table_agrees():
    p = pd.DataFrame({"table": ["fits.csv"] * 2, "profile": ["cpu", "cpu-long"], "config_hash": ["a" * 20, "b" * 20],
                      "corpus": ["c" * 20] * 2}, index=["a", "b"])
    caps = pd.DataFrame({"a": ["AVX512", "AVX512"], "b": ["AVX2", "AVX2"]}, index=["claims.csv", "fits.csv"])
    assert compare._provenance_line(p, caps) == ("made from (fits.csv): profile cpu in A, cpu-long in B; config hash "
                                                 f"{'a' * 12} in A, {'b' * 12} in B; corpus {'c' * 12} in both; CPU "
                                                 "instruction set AVX512 in A, AVX2 in B")


def test_a_lost_training_log_and_a_claim_value_that_moved_are_named(tmp_path):
    """A run of both folders whose training log one lacks is named beside the final losses (the summary
    counted the other runs only), and a claim whose value changed under the same verdict is named beside
    the verdicts (only the wide table showed it)."""
    b = _copy(tmp_path, "b")
    _rewrite(b, "train_log", lambda df: df[(df["run"] != "silu-s3") | (df["split"] != "val")])  # its train rows stay
    value = runs.read_csv(COMMITTED / "claims.csv").set_index("id").at["dense_beats_moe", "value"]
    parts = value.split(";")  # the headline of counts, then each MoE ending with its gap, e.g. "(+2.3%)"
    gap = re.search(r"\([+-][0-9.]+%\)$", parts[1]).group(0)
    assert gap != "(+99.9%)"
    moved = ";".join([parts[0], parts[1].replace(gap, "(+99.9%)"), *parts[2:]])  # the first MoE's gap moves
    _rewrite(b, "claims", lambda df: df.assign(value=df["value"].where(df["id"] != "dense_beats_moe", moved)))
    t = compare.compare(COMMITTED, b)
    text = compare.summary(t)
    n = len(runs.read_csv(COMMITTED / "claims.csv"))
    assert f"claims: {n} of {n} verdicts the same; 1 of the same with another value: dense_beats_moe" in text
    row = t["claims"].set_index("id").loc["dense_beats_moe"]  # what moved, not the headline both share
    assert row["value_a"].endswith(gap) and row["value_b"].endswith("(+99.9%)") and not row["same_value"]
    assert "over 20 runs; a validation loss in one folder only: silu-s3 (no loss in B)" in text
    assert "runs in one folder only" not in text  # silu-s3 is measured in both


def test_compare_exits_0_whatever_the_differences_and_2_when_a_table_cannot_be_read(tmp_path, capsys):
    b = _copy(tmp_path, "b")
    _rewrite(b, "claims", lambda df: df.assign(verdict="FAIL"))
    assert cli.main(["compare", str(COMMITTED), str(b)]) == 0
    assert "changed: " in capsys.readouterr().out
    (b / "fits.csv").write_text("edited by hand\n")
    assert cli.main(["compare", str(COMMITTED), str(b)]) == 2
    assert "fits.csv: its sha256 does not match" in capsys.readouterr().err


def test_claims_judged_on_other_tables_than_the_folder_holds_are_named(tmp_path):
    """claims.csv's sidecar records the sha256 of the base tables its verdicts read (claims.judged_on); a
    measurement rewritten since (a measure rerun without verify) was compared as if judged: '15 of 15
    verdicts the same' beside a sparsity.csv on which verify says otherwise."""
    from sparsinglaw import claims

    a, b = _copy(tmp_path, "a"), _copy(tmp_path, "b")
    for f in (a, b):
        side = f / "claims.meta.json"
        meta = json.loads(side.read_text())
        side.write_text(json.dumps(meta | {"inputs": claims.judged_on(f)}))
    assert set(claims.judged_on(a)) == {f"{t}.csv" for t in claims.JUDGED}  # cpu holds every one
    assert "judged on other tables" not in compare.summary(compare.compare(a, b))

    def louder(df):
        df = df.copy()
        df.loc[df["run"] == "relu-s4", "activation_ratio"] += 0.3
        return df

    _rewrite(b, "sparsity", louder)
    text = compare.summary(compare.compare(a, b))
    assert ("warning: B's claims.csv was judged on other tables than B holds now (sparsity.csv changed since): its "
            "verdicts may not describe them; python -m sparsinglaw verify on that folder judges them again") in text
    assert "A's claims.csv" not in text
    (a / "pareto.csv").unlink()  # a table gone since is a change too, and a refit without verify
    _rewrite(a, "width_depth_fit", lambda df: df.assign(message="refitted"))
    assert "A's claims.csv was judged on other tables than A holds now (pareto.csv, width_depth_fit.csv changed " \
        "since)" in compare.summary(compare.compare(a, b))
    side = a / "claims.meta.json"  # a sidecar written before inputs were recorded: nothing to say
    side.write_text(json.dumps({k: v for k, v in json.loads(side.read_text()).items() if k != "inputs"}))
    assert "A's claims.csv" not in compare.summary(compare.compare(a, b))
