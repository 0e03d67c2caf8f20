"""make report: one HTML file of executed notebooks, in order, outputs and figures embedded."""

from __future__ import annotations

import base64
import re
import signal

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from sparsinglaw import notebooks

PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a")).decode()  # only embedded, never decoded


def _nb(path, title, text):
    code = new_code_cell("print(1)", outputs=[new_output("stream", name="stdout", text=text),
                                              new_output("display_data", data={"image/png": PNG})])
    nbformat.write(new_notebook(cells=[new_markdown_cell(f"# {title}"), code]), path)


def test_report_joins_notebooks_in_order(tmp_path):
    a, b = tmp_path / "01_a.ipynb", tmp_path / "02_b.ipynb"
    _nb(a, "first notebook", "output-of-a")
    _nb(b, "second notebook", "output-of-b")
    out = notebooks.report([a, b], tmp_path / "r" / "report.html", title="my report")
    html = out.read_text()
    assert "my report" in html and html.count("data:image/png;base64," + PNG) == 2
    assert html.index("first notebook") < html.index("output-of-a") < html.index("second notebook") < html.index(
        "output-of-b")
    assert 'href="#01_a"' in html and 'id="02_b"' in html


def test_report_refuses_missing_notebooks(tmp_path, capsys):
    with pytest.raises(notebooks.SparsingLawError, match="run make figures first"):
        notebooks.report([tmp_path / "nope.ipynb"], tmp_path / "r.html")
    assert notebooks._main(["report", str(tmp_path / "nope.ipynb"), "-o", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("text, said", [("<<<<<<< HEAD\n{}\n", "Notebook does not appear to be JSON"),
                                        ('{"cells": 3}', "")])
@pytest.mark.parametrize("cmd", ["report", "run", "strip"])
def test_a_damaged_notebook_is_named_in_one_line(tmp_path, capsys, cmd, text, said):
    """Conflict markers left by a merge, or JSON that is not a notebook: every subcommand names the file and
    how to restore it in one line, exit 1 (it was nbformat's traceback), before any kernel starts."""
    nb = tmp_path / "nbs" / "01_x.ipynb"
    nb.parent.mkdir()
    nb.write_text(text)
    argv = {"report": ["report", str(nb), "-o", str(tmp_path / "r.html")],
            "run": ["run", str(nb), str(tmp_path / "out.ipynb"), "--profile", "smoke"],
            "strip": ["strip", str(nb.parent)]}[cmd]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # run sets its own
    try:
        assert notebooks._main(argv) == 1
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    err = capsys.readouterr().err
    assert err.startswith(f"error: {nb}: not a readable notebook ({said}") and len(err.splitlines()) == 1, err
    assert f"restore it (git checkout -- {nb}" in err and nb.read_text() == text
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "out.ipynb").exists()


def test_report_of_no_notebook_is_refused(tmp_path):
    with pytest.raises(notebooks.SparsingLawError, match=r"\(none given\); run make figures first"):
        notebooks.report([], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_report_heading_is_the_title(tmp_path):
    p = tmp_path / "01_a.ipynb"
    nbformat.write(new_notebook(cells=[new_markdown_cell("text")]), p)
    html = notebooks.report([p], tmp_path / "r.html", title="my report").read_text()
    assert re.search(r"<h1[^>]*>my report", html)


def test_progress_bars_are_one_line_in_the_report(tmp_path):
    """A cell's stream outputs as a terminal shows them: a bar redrawn with carriage returns over several
    outputs is its last state, one line (the report showed every update as a line of its own); printed
    lines and other outputs stay, in order."""
    code = new_code_cell("work()", outputs=[
        new_output("stream", name="stderr", text="training:   0%| 0/8\r"),
        new_output("stream", name="stderr", text="training:  50%| 4/8\r"),
        new_output("stream", name="stderr", text="training: 100%| 8/8\n"),
        new_output("stream", name="stdout", text="line one\nline two\n"),
        new_output("display_data", data={"image/png": PNG}),
        new_output("stream", name="stdout", text="after the figure\n"),
        new_output("stream", name="stdout", text="row 1\r\nrow 2\r\n")])  # CRLF line ends are line ends
    path = tmp_path / "01_a.ipynb"
    nbformat.write(new_notebook(cells=[code]), path)
    html = notebooks.report([path], tmp_path / "report.html").read_text()
    assert "training: 100%| 8/8" in html and "0/8" not in html and "4/8" not in html
    assert html.index("line one") < html.index("line two") < html.index(PNG) < html.index("after the figure")
    assert html.index("after the figure") < html.index("row 1") < html.index("row 2")
