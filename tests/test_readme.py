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


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_claims_block_is_the_committed_table(profile):
    md = REPO / "results" / profile / "claims.md"
    start, end = f"<!-- claims:{profile}:start -->", f"<!-- claims:{profile}:end -->"
    if not md.exists():
        assert start not in README or "not computed" in README.split(start)[1].split(end)[0]
        return
    block = README.split(start)[1].split(end)[0]
    assert block.strip() == md.read_text().strip(), f"README claims block ({profile}) differs from {md}: make verify"
