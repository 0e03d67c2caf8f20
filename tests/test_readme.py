"""README stays true: every file it links exists, and the claims tables it shows are the committed ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_linked_files_exist():
    links = re.findall(r"\]\(([^)#\s]+)\)", README)
    local = [p for p in links if not re.match(r"[a-z]+:", p)]
    assert local, "README links no file"
    missing = [p for p in local if not (REPO / p).exists()]
    assert not missing, f"README links missing files: {missing}"


def test_every_environment_variable_the_library_reads_is_in_the_readme():
    """SPARSINGLAW_* variables read in lib/ are documented (SPARSINGLAW_TEST_FAULT: the fault-injection hook of
    the tests, documented where it is read)."""
    read = set(re.findall(r"SPARSINGLAW_[A-Z_]+", "".join(p.read_text() for p in (REPO / "lib").rglob("*.py"))))
    assert {"SPARSINGLAW_RUNS", "SPARSINGLAW_DATA", "SPARSINGLAW_ROOT"} <= read
    assert sorted(v for v in read - {"SPARSINGLAW_TEST_FAULT"} if v not in README) == []


def test_every_profile_make_verify_writes_into_the_readme_has_its_block(tmp_path):
    """make verify passes --readme README.md for the profiles of README_PROFILE; update_readme refuses a
    README without that profile's markers, after claims.csv is written: each must have one block."""
    from sparsinglaw import claims

    makefile = (REPO / "Makefile").read_text()
    profiles = re.search(r"^README_PROFILE := \$\(filter ([\w -]+),\$\(PROFILE\)\)$", makefile, re.M).group(1).split()
    assert profiles == ["cpu", "gpu"]
    copy = tmp_path / "README.md"
    for profile in profiles:
        copy.write_text(README)
        assert claims.update_readme(f"table of {profile}\n", copy, profile)
        block = copy.read_text().split(f"<!-- claims:{profile}:start -->")[1].split(f"<!-- claims:{profile}:end -->")[0]
        assert block == f"\ntable of {profile}\n"


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_claims_block_is_the_committed_table(profile):
    md = REPO / "results" / profile / "claims.md"
    start, end = f"<!-- claims:{profile}:start -->", f"<!-- claims:{profile}:end -->"
    if not md.exists():
        assert start not in README or "not computed" in README.split(start)[1].split(end)[0]
        return
    block = README.split(start)[1].split(end)[0]
    assert block.strip() == md.read_text().strip(), f"README claims block ({profile}) differs from {md}: make verify"


def test_the_fitting_example_runs_as_printed(capsys):
    """README's "Fitting your own measurements" example, executed: the Eq. 4 fit of the paper's 0.2B ReLU
    curve with noise recovers A0 within its interval, and the table route fits the same run."""
    text = (REPO / "README.md").read_text()
    start = text.index("### Fitting your own measurements")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    r, fits = scope["r"], scope["fits"]
    assert r.converged and r.intervals["A0"][0] <= 0.0674 <= r.intervals["A0"][1]
    assert fits["A0"].iloc[0] == pytest.approx(r.params["A0"], rel=1e-9) and bool(fits["converged"].iloc[0])
    assert bool(scope["losses"]["converged"].iloc[0]) and scope["losses"]["E"].iloc[0] == pytest.approx(3.0, abs=0.05)
    out = capsys.readouterr().out
    assert out.startswith("True 0.06") and "paper (v1)" in out
