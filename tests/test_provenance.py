"""The committed provenance points into this repository's history: every git sha that a figure's
MANIFEST row or a results table's sidecar records is a commit that HEAD descends from."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import pytest

from conftest import REPO, committed


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def _recorded_shas() -> dict[str, set[str]]:
    """sha -> the committed files that record it."""
    shas: dict[str, set[str]] = {}
    for manifest in committed("figures/*/MANIFEST.csv"):
        with open(manifest, newline="") as f:
            for row in csv.DictReader(f):
                shas.setdefault(row["git_sha"], set()).add(f"{manifest.relative_to(REPO)}: {row['file']}")
    for meta in committed("results/*/*.meta.json"):
        sha = json.loads(meta.read_text()).get("git_sha")
        shas.setdefault(sha, set()).add(str(meta.relative_to(REPO)))
    return shas


def test_every_recorded_commit_is_in_the_history():
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("not a git checkout")
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("a shallow clone holds only part of the history")
    shas = _recorded_shas()
    assert len(shas) > 1 and all(isinstance(s, str) and len(s) >= 12 for s in shas), sorted(map(str, shas))
    foreign = {s: sorted(files)[:3] for s, files in shas.items()
               if _git("merge-base", "--is-ancestor", s, "HEAD").returncode != 0}
    assert not foreign, f"recorded commits HEAD does not descend from: {foreign}"
