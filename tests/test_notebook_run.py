"""`python -m sparsinglaw.notebooks run`, the command make figures / replot / nb-NN execute notebooks with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from sparsinglaw import notebooks

REPO = Path(__file__).resolve().parents[1]


def _notebook(path: Path, *cells: str) -> Path:
    first = new_code_cell("profile = None\nreplot = False", metadata={"tags": ["parameters"]})
    nbformat.write(new_notebook(cells=[first, *map(new_code_cell, cells)],
                                metadata={"kernelspec": {"name": "python3", "language": "python",
                                                         "display_name": "Python 3"}}), path)
    return path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib")}
    return subprocess.run([sys.executable, "-m", "sparsinglaw.notebooks", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_run_injects_the_profile_and_replot_in_the_working_directory(tmp_path):
    nb = _notebook(tmp_path / "nb.ipynb", "import os\nprint(profile, replot, os.getcwd())")
    (tmp_path / "here").mkdir()
    r = _run(str(nb), str(tmp_path / "out.ipynb"), "--profile", "smoke", "--replot", "--log-output",
             "--cwd", str(tmp_path / "here"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[-1].outputs[0]["text"] == f"smoke True {tmp_path / 'here'}\n"
    assert f"smoke True {tmp_path / 'here'}" in r.stderr  # --log-output streams the cell's output
    # the kernel's channels are encrypted where the versions allow it: no plain-TCP warning from the kernel
    assert "without encryption" not in r.stdout + r.stderr
    r = _run(str(nb), str(tmp_path / "out2.ipynb"), "--profile", "cpu", cwd=tmp_path)
    assert r.returncode == 0 and nbformat.read(tmp_path / "out2.ipynb", as_version=4).cells[-1].outputs[0][
        "text"] == f"cpu False {tmp_path}\n"


def test_kernel_config_asks_for_curve_where_it_is_supported():
    import zmq
    from jupyter_client import KernelManager

    cfg = notebooks.kernel_config()
    if "transport_encryption" not in KernelManager.class_trait_names() or not zmq.has("curve"):
        pytest.skip("this jupyter_client or pyzmq has no CurveZMQ transport encryption")
    assert cfg.KernelManager.transport_encryption == "auto"


def test_a_failing_cell_names_the_cell_and_the_error(tmp_path):
    nb = _notebook(tmp_path / "bad.ipynb", "print('first')", "raise ValueError('no results for ' + profile)",
                   "print('never')")
    r = _run(str(nb), str(tmp_path / "out.ipynb"), "--profile", "smoke", cwd=tmp_path)
    assert r.returncode == 1  # In [4]: the parameters cell, papermill's injected one, then the two cells
    last = r.stderr.strip().splitlines()[-1]
    assert last == f"error: {nb} failed at In [4] with ValueError: no results for smoke (executed cells: " \
                   f"{tmp_path / 'out.failed.ipynb'})", r.stderr
    assert "raise ValueError" in r.stderr  # the cell's own traceback, not papermill's internals
    assert "Traceback (most recent call last):\n  File" not in r.stderr


def test_a_failed_run_leaves_no_output_that_make_would_take_as_executed(tmp_path):
    """The output of a failing notebook was written (papermill saves after the error), newer than its sources:
    the next make figures skipped it and make report showed it. Now out is written only on success; a
    failure removes an older out and keeps the executed cells in out.failed.ipynb, which a later success
    removes; report refuses a notebook papermill saved after a failing cell."""
    nb = _notebook(tmp_path / "nb.ipynb", "if profile == 'cpu':\n    raise ValueError('no results')\nprint(profile)")
    out, failed = tmp_path / "out.ipynb", tmp_path / "out.failed.ipynb"
    assert _run(str(nb), str(out), "--profile", "smoke", cwd=tmp_path).returncode == 0 and out.is_file()
    assert _run(str(nb), str(out), "--profile", "cpu", cwd=tmp_path).returncode == 1
    assert not out.exists() and nbformat.read(failed, as_version=4).metadata.papermill.exception is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nb.ipynb", "out.failed.ipynb"]  # no partial file
    with pytest.raises(notebooks.SparsingLawError, match="out.failed.ipynb: this notebook stopped at a failing"):
        notebooks.report([failed], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    assert _run(str(nb), str(out), "--profile", "smoke", cwd=tmp_path).returncode == 0
    assert out.is_file() and not failed.exists()


def test_a_missing_notebook_an_unknown_profile_or_the_notebook_as_its_own_output_stop_before_a_kernel(tmp_path):
    """Each is one message, before a kernel starts, and nothing is written or removed: run with OUT equal to
    the notebook, a failing cell used to remove the notebook itself."""
    nb = _notebook(tmp_path / "nb.ipynb", "raise ValueError('fails')")
    kept = _notebook(tmp_path / "x.failed.ipynb", "raise ValueError('fails')")  # out x.ipynb would fail into it
    before = nb.read_bytes()
    missing = tmp_path / "missing.ipynb"
    cases = {(str(missing), "out.ipynb", "smoke"): f"error: {missing}: no such notebook",
             (str(nb), str(nb), "smoke"): f"error: {nb}: the executed copy must go elsewhere than the notebook",
             (str(kept), "x.ipynb", "smoke"): "error: x.ipynb: the executed copy must go elsewhere than the notebook",
             (str(nb), "out.ipynb", "smok"): "error: profile 'smok': not found; known profiles in",
             (str(nb), "out.ipynb", "mine.yaml"): "error: profile 'mine.yaml': no such file"}
    for (src, out, profile), message in cases.items():
        r = _run(src, out, "--profile", profile, cwd=tmp_path)
        assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(message), r.stderr
        assert "Traceback" not in r.stderr and "Executing" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nb.ipynb", "x.failed.ipynb"] and nb.read_bytes() == before
    (tmp_path / "mine.yaml").write_text((REPO / "configs" / "smoke.yaml").read_text())  # from cwd, as the kernel
    r = _run(str(nb), "out.ipynb", "--profile", "mine.yaml", cwd=tmp_path)
    assert r.returncode == 1 and "failed at In [3] with ValueError: fails" in r.stderr, r.stderr


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_terminated_run_removes_its_output_as_a_failed_one(tmp_path, sig):
    """SIGTERM (a timeout, a batch system) killed the run without cleanup: the partial file stayed and the
    older output with it. Now it unwinds as Ctrl-C does: no output, the executed cells in out.failed.ipynb.
    Ctrl-C (SIGINT) ends with one line, not a traceback of papermill's internals."""
    import signal
    import time

    nb = _notebook(tmp_path / "nb.ipynb", "import time\ntime.sleep(120)")
    out = tmp_path / "out.ipynb"
    out.write_text("an older output")
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib")}
    p = subprocess.Popen([sys.executable, "-m", "sparsinglaw.notebooks", "run", str(nb), str(out), "--profile",
                          "smoke"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 120
    while not (tmp_path / "out.partial.ipynb").exists() and time.time() < deadline:  # the kernel runs the cell
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(getattr(signal, sig))
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 128 + getattr(signal, sig)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["nb.ipynb", "out.failed.ipynb"]
    if sig == "SIGINT":
        assert (f"interrupted ({out} not written; the cells run so far: {tmp_path / 'out.failed.ipynb'}); rerun the "
                "same command (make runs again what is not finished)") in err.splitlines(), err
        assert "KeyboardInterrupt" not in err, err  # (the kernel, stopped mid-reply, may log a ZMQ error of its own)
