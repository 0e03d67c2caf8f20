"""Notebook hygiene: notebooks are stored without outputs, with null execution counts and only the
`python3` kernelspec; `make strip` applies `strip` to notebooks/."""

from __future__ import annotations

from pathlib import Path

import nbformat

from .config import SparsingLawError

KEEP_METADATA = {"kernelspec"}  # language_info carries the version of the Python that last ran it


def strip(path: str | Path) -> bool:
    """Remove outputs, execution counts and editor metadata; returns True when the file changed."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_METADATA}
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
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


def report(paths: list[str | Path], out: str | Path, title: str = "sparsing-law report") -> Path:
    """One self-contained HTML file (nbconvert, figures embedded) of the executed notebooks `paths`,
    in order, with a table of contents: for reading the results without Jupyter (make report)."""
    from nbconvert import HTMLExporter
    from nbformat.v4 import new_markdown_cell, new_notebook

    from .train import atomic_write_bytes

    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise SparsingLawError(f"no executed notebook to report ({', '.join(missing) or 'none given'}); "
                               "run make figures first")
    toc = "\n".join(f"{i + 1}. [{p.stem}](#{p.stem})" for i, p in enumerate(paths))
    merged = new_notebook(cells=[new_markdown_cell(f"# {title}\n\n{toc}")])
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        merged.metadata = merged.metadata or nb.metadata
        merged.cells.append(new_markdown_cell(f'<a id="{p.stem}"></a>\n\n---\n*notebook `{p.name}`*'))
        merged.cells.extend(nb.cells)
    html, _ = HTMLExporter(template_name="lab").from_notebook_node(merged, resources={"metadata": {"name": title}})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, html.encode())
    return out


def _main(argv=None) -> int:
    import argparse
    import sys


    ap = argparse.ArgumentParser(prog="python -m sparsinglaw.notebooks", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("strip", help="strip notebooks/ in place").add_argument("folder", nargs="?", default="notebooks")
    rp = sub.add_parser("report", help="one HTML file of executed notebooks")
    rp.add_argument("notebooks", nargs="+")
    rp.add_argument("-o", "--out", required=True)
    rp.add_argument("--title", default="sparsing-law report")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "strip":
            strip_all(args.folder)
        else:
            print(f"wrote {report(args.notebooks, args.out, args.title)}")
    except SparsingLawError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
