"""Notebook hygiene: notebooks are stored without outputs, with null execution counts and only the
`python3` kernelspec; `make strip` applies `strip` to notebooks/."""

from __future__ import annotations

from pathlib import Path

import nbformat

KEEP_METADATA = {"kernelspec", "language_info"}


def strip(path: str | Path) -> bool:
    """Remove outputs, execution counts and editor metadata; returns True when the file changed."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_METADATA}
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata.pop("language_info", None)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        cell.metadata = {"tags": tags} if tags else {}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after + ("" if after.endswith("\n") else "\n"))
    return after != before


def strip_all(folder: str | Path = "notebooks") -> None:
    for p in sorted(Path(folder).glob("*.ipynb")):
        if strip(p):
            print(f"stripped {p}")
