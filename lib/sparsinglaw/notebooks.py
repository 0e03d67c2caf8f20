"""Notebooks: hygiene (stored without outputs, with null execution counts and only the `python3`
kernelspec; `make strip` applies `strip` to notebooks/), execution for one profile (`execute`, used by
make figures / replot / nb-NN) and the one-file HTML report (`report`, make report)."""

from __future__ import annotations

from pathlib import Path

import nbformat

from .config import SparsingLawError

KEEP_METADATA = {"kernelspec"}  # language_info carries the version of the Python that last ran it


def read(path: str | Path):
    """The notebook at `path` (nbformat v4), or a SparsingLawError naming it when it is not a readable
    notebook (a merge's conflict markers, a cut or hand-edited file)."""
    try:
        return nbformat.read(path, as_version=4)
    except OSError:  # a missing or unreadable file: the caller's message
        raise
    except Exception as e:  # not JSON (NotJSONError), or JSON that is not a notebook (jsonschema's ValidationError)
        why = " ".join(str(e).split())[:120]
        raise SparsingLawError(f"{path}: not a readable notebook ({why}); restore it (git checkout -- {path}, or "
                               "run the command that wrote it again)") from None


def strip(path: str | Path) -> bool:
    """Remove outputs, execution counts, editor metadata and papermill's injected-parameters cell; returns True
    when the file changed."""
    path = Path(path)
    nb = read(path)
    before = nbformat.writes(nb)
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_METADATA}
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for cell in nb.cells:  # (papermill's injected cell above: an executed copy would carry its profile along)
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
    if not Path(folder).is_dir():
        raise SparsingLawError(f"{folder}: no such folder (strip takes the folder of the notebooks)")
    for p in sorted(Path(folder).glob("*.ipynb")):
        if strip(p):
            print(f"stripped {p}")


def kernel_config():
    """traitlets config of the kernel manager: the kernel's channels encrypted with CurveZMQ where
    jupyter_client, pyzmq and the kernelspec support it (otherwise plain TCP on localhost, and the kernel
    logs a warning about it)."""
    import zmq
    from jupyter_client import KernelManager
    from traitlets.config import Config

    config = Config()
    if "transport_encryption" in KernelManager.class_trait_names() and zmq.has("curve"):
        config.KernelManager.transport_encryption = "auto"
    return config


def failed_path(out: str | Path) -> Path:
    """Where ``execute`` leaves the cells of a run that failed: ``NN_name.failed.ipynb`` beside ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.failed.ipynb")


def execute(notebook: str | Path, out: str | Path, profile: str, *, replot: bool = False,
            log_output: bool = False, cwd: str | Path = ".") -> Path:
    """Execute ``notebook`` for ``profile`` with papermill into ``out`` (parameters ``profile`` and, when
    ``replot``, ``replot=True``). ``log_output`` streams every cell's output instead of a progress bar.

    ``out`` is written only when every cell ran (papermill writes into a partial file renamed at the
    end): a run that fails or is interrupted removes ``out`` and leaves its executed cells in
    ``failed_path(out)``, so that make never takes a failed notebook for an executed one."""
    import papermill as pm

    from .config import load_profile

    notebook, out = Path(notebook), Path(out)
    part, failed = out.with_name(f"{out.stem}.partial.ipynb"), failed_path(out)
    if not notebook.is_file():
        raise SparsingLawError(f"{notebook}: no such notebook")
    if notebook.resolve() in {p.resolve() for p in (out, part, failed)}:
        raise SparsingLawError(f"{out}: the executed copy must go elsewhere than the notebook {notebook} itself "
                               "(a failing run removes it), e.g. runs/<profile>/notebooks/ as make writes it")
    read(notebook)  # a damaged notebook stops here, before a kernel starts
    # an unknown or invalid profile stops here, before a kernel starts (a YAML path as the kernel reads it, from cwd)
    load_profile(Path(cwd) / profile if Path(profile).suffix in (".yaml", ".yml") else profile)
    params = {"profile": profile, **({"replot": True} if replot else {})}
    try:
        pm.execute_notebook(str(notebook), str(part), parameters=params, kernel_name="python3", cwd=str(cwd),
                            progress_bar=not log_output, log_output=log_output, config=kernel_config())
    except BaseException:
        out.unlink(missing_ok=True)
        if part.exists():
            part.replace(failed)
        raise
    part.replace(out)
    failed.unlink(missing_ok=True)
    return out


def report(paths: list[str | Path], out: str | Path, title: str = "sparsing-law report") -> Path:
    """One self-contained HTML file (nbconvert, figures embedded) of the executed notebooks `paths`,
    in order, with a table of contents: for reading the results without Jupyter (make report)."""
    from nbconvert import HTMLExporter
    from nbformat.v4 import new_markdown_cell, new_notebook
    from traitlets.config import Config

    from .train import atomic_write_bytes

    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise SparsingLawError(f"no executed notebook to report ({', '.join(missing) or 'none given'}); "
                               "run make figures first")
    toc = "\n".join(f"{i + 1}. [{p.stem}](#{p.stem})" for i, p in enumerate(paths))
    merged = new_notebook(cells=[new_markdown_cell(f"# {title}\n\n{toc}")])
    for p in paths:
        nb = read(p)
        if nb.metadata.get("papermill", {}).get("exception"):  # saved after a failing cell (papermill itself)
            raise SparsingLawError(f"{p}: this notebook stopped at a failing cell; run it again (make figures, or "
                                   "make replot for FROM=replot) before the report")
        merged.metadata = merged.metadata or nb.metadata
        merged.cells.append(new_markdown_cell(f'<a id="{p.stem}"></a>\n\n---\n*notebook `{p.name}`*'))
        merged.cells.extend(nb.cells)
    # stream outputs as a terminal shows them: consecutive ones merged, a line redrawn by carriage returns
    # (a progress bar's updates) reduced to its last state (nbconvert's CoalesceStreamsPreprocessor)
    exporter = HTMLExporter(template_name="lab", config=Config({"CoalesceStreamsPreprocessor": {"enabled": True}}))
    html, _ = exporter.from_notebook_node(merged, resources={"metadata": {"name": title}})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, html.encode())
    return out


class Interrupted(SystemExit):
    """Ctrl-C during a notebook run (raised by its SIGINT handler)."""


def _main(argv=None) -> int:
    import argparse
    import logging
    import sys

    ap = argparse.ArgumentParser(prog="python -m sparsinglaw.notebooks",
                                 description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("strip", help="strip notebooks/ in place").add_argument("folder", nargs="?", default="notebooks")
    ep = sub.add_parser("run", help="execute one notebook for a profile (papermill)")
    ep.add_argument("notebook")
    ep.add_argument("out")
    ep.add_argument("--profile", required=True)
    ep.add_argument("--replot", action="store_true", help="redraw from the results tables only (no training)")
    ep.add_argument("--log-output", action="store_true", help="stream each cell's output (no progress bar)")
    ep.add_argument("--cwd", default=".", help="working directory of the kernel")
    rp = sub.add_parser("report", help="one HTML file of executed notebooks")
    rp.add_argument("notebooks", nargs="+")
    rp.add_argument("-o", "--out", required=True)
    rp.add_argument("--title", default="sparsing-law report")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "strip":
            strip_all(args.folder)
        elif args.cmd == "run":
            import signal

            from papermill.exceptions import PapermillExecutionError

            # a termination (a timeout, a batch system) and Ctrl-C unwind as SystemExit: execute's cleanup runs.
            # Ctrl-C is not left to Python's KeyboardInterrupt, which asyncio turns into a cancellation of the
            # kernel client's task that can leave the process waiting for good.
            def stop(exit_type: type[SystemExit], code: int):
                def handler(*_):
                    # the kernel client's task is abandoned mid-cell: asyncio's "Task exception was never
                    # retrieved" about it (its traceback, on Python 3.12) would follow the one-line message
                    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
                    raise exit_type(code)

                return handler

            signal.signal(signal.SIGTERM, stop(SystemExit, 128 + signal.SIGTERM))
            signal.signal(signal.SIGINT, stop(Interrupted, 128 + signal.SIGINT))

            logging.basicConfig(level=logging.INFO, format="%(message)s")  # as papermill's own command line
            try:
                execute(args.notebook, args.out, args.profile, replot=args.replot, log_output=args.log_output,
                        cwd=args.cwd)
            except PapermillExecutionError as e:
                print(f"{e}\nerror: {args.notebook} failed at In [{e.exec_count}] with {e.ename}: {e.evalue}"
                      f"{'' if args.log_output else f' (executed cells: {failed_path(args.out)})'}",
                      file=sys.stderr)
                return 1
        else:
            print(f"wrote {report(args.notebooks, args.out, args.title)}")
    except SparsingLawError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C: one line, not the traceback of where papermill waited
        ran = failed_path(args.out) if args.cmd == "run" else None
        done = (f" ({args.out} not written" + (f"; the cells run so far: {ran}" if ran.exists() else "") + ")"
                if ran is not None else "")
        print(f"interrupted{done}; rerun the same command (make runs again what is not finished)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
