"""data.py: corpus determinism, split and cap, prose tagging, tokenizer, cache, user corpora, batches.

Everything is tiny: user corpora are a few KB written into tmp_path; one module-scoped build of the
real python-env corpus is capped at 1 MB of the standard library.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import alive
from sparsinglaw import data
from sparsinglaw.config import DataConfig, SparsingLawError
from sparsinglaw.data import (
    CorpusError,
    Document,
    corpus_documents,
    encode_documents,
    eval_batches,
    get_batch,
    prepare,
    python_segments,
    segment_documents,
    token_dtype,
    window_coverage,
)

PY_SOURCE = '''"""Module docstring: explains the module."""
import os  # why os is imported

# a full-line comment
CONST = "a string that is not a docstring"


class Greeter:
    """Class docstring."""

    def greet(self, name):
        """Say hello
        over two lines."""
        msg = f"hello {name}"  # trailing comment
        "a stand-alone string statement"
        return msg.upper()
'''

UNICODE = "naïve café — 日本語のテキスト 🙂 Ελληνικά\n\ttabs\r\nand CRLF, <|endoftext|> as text\n"


def prose_words(i: int) -> str:
    """A few hundred bytes of varied English-like text (enough merges for small vocabularies)."""
    words = ["the", "model", "sparsity", "activation", "ratio", "grows", "with", "data", "and", "width",
             "depth", "neurons", "fire", "rarely", "law", "power", "loss", "tokens", "train", "layer"]
    rng = np.random.default_rng(i)
    lines = [" ".join(rng.choice(words, size=12)) + "." for _ in range(6)]
    return f"Document {i}.\n" + "\n".join(lines) + "\n"


def make_folder(root: Path, n: int = 30) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = root / ("sub" if i % 3 == 0 else ".") / f"doc{i:03d}.txt"
        sub.parent.mkdir(exist_ok=True)
        sub.write_text(prose_words(i), encoding="utf-8")
    return root


def user_cfg(corpus: Path, **kw) -> DataConfig:
    return DataConfig(**{"corpus": str(corpus), "vocab_size": 300, "max_mb": 1.0, "val_fraction": 0.1, **kw})


def assert_corpus_error(cfg: DataConfig, *needles: str, tmp: Path | None = None) -> str:
    with pytest.raises(CorpusError) as ei:
        if tmp is None:
            corpus_documents(cfg)
        else:
            prepare(cfg, tmp, progress=False)
    msg = str(ei.value)
    for n in needles:
        assert n in msg, (n, msg)
    assert isinstance(ei.value, SparsingLawError)
    return msg


# -----------------------------------------------------------------------------------------------
# prose tagging


def test_python_segments_concatenate_and_tag_prose():
    segs = python_segments(PY_SOURCE)
    assert "".join(t for t, _ in segs) == PY_SOURCE
    prose = [t for t, d in segs if d == "prose"]
    code = "".join(t for t, d in segs if d == "code")
    wanted = ['"""Module docstring: explains the module."""', "# why os is imported", "# a full-line comment",
              '"""Class docstring."""', '"""Say hello\n        over two lines."""', "# trailing comment",
              '"a stand-alone string statement"']
    for want in wanted:
        assert want in prose, want
    for want in ("import os", "class Greeter:", "def greet(self, name):", 'CONST = "a string that is not',
                 'msg = f"hello {name}"', "return msg.upper()"):
        assert want in code, want
    assert all(d in ("code", "prose") for _, d in segs)


def test_python_segments_merge_touching_prose():
    """A docstring followed at once by a comment is one prose segment (tokenized as one piece of text)."""
    assert python_segments('"""a"""# c\n') == [('"""a"""# c', "prose"), ("\n", "code")]
    assert python_segments('x = 1  # c\n"""d"""\n') == [("x = 1  ", "code"), ("# c", "prose"), ("\n", "code"),
                                                         ('"""d"""', "prose"), ("\n", "code")]


def test_documents_that_fill_max_mb_exactly_are_all_taken(tmp_path):
    """The cap is max_mb bytes inclusive: five documents of 1,000 bytes fit in 0.005 MB, four in 0.004999."""
    root = tmp_path / "five"
    root.mkdir()
    for i in range(5):
        (root / f"d{i}.txt").write_text(f"{i}" * 999 + "\n")
    for mb, n in ((0.005, 5), (0.004999, 4)):
        docs, fp = corpus_documents(user_cfg(root, max_mb=mb))
        assert (fp["files"], fp["bytes"]) == (n, 1000 * n), mb


def test_python_segments_unparseable_and_unicode():
    bad = "def f(:\n    x = '''never closed\n"
    assert python_segments(bad) == [(bad, "code")]
    src = "# héllo 🙂\r\nx = 'ü'  # ça\r\n"
    segs = python_segments(src)
    assert "".join(t for t, _ in segs) == src
    assert [t for t, d in segs if d == "prose"] == ["# héllo 🙂", "# ça"]


def test_segment_documents_parallel_equals_serial_without_forking_this_process(monkeypatch):
    """The workers tag as the serial path does, and they do not come from a fork of this process, which
    may hold other threads (torch's, tqdm's, a notebook kernel's): their locks would be copied held
    (Python 3.12+ warns that such a child may deadlock). A thread is alive and os.fork raises here."""
    docs = [Document(f"m{i}.py", "train", PY_SOURCE * (i + 1), "code", True) for i in range(4)]
    docs.append(Document("notes.txt", "train", "plain prose\n", "prose"))
    serial = segment_documents(docs, workers=1)
    assert serial[-1] == [("plain prose\n", "prose")]
    monkeypatch.setattr(data, "PARALLEL_SEGMENT_BYTES", 0)
    contexts = []

    def pool(workers, mp_context, **kw):
        contexts.append(mp_context.get_start_method())
        return ProcessPoolExecutor(workers, mp_context=mp_context, **kw)

    def no_fork():
        raise AssertionError("segment_documents forked the calling process")

    monkeypatch.setattr(data, "ProcessPoolExecutor", pool)
    monkeypatch.setattr(os, "fork", no_fork)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert segment_documents(docs, workers=2) == serial
    finally:
        stop.set()
        thread.join()
    assert contexts == ["forkserver"]  # the parallel path ran (Linux has a forkserver)


KILLED_BUILD = """
import os, sys, time
from pathlib import Path
from sparsinglaw import data
from sparsinglaw.config import DataConfig

def tagging(text):  # a worker that says it is tagging, then takes its time
    Path(sys.argv[1], f"tagging.{os.getpid()}").touch()
    time.sleep(60)
    return data.python_segments(text)

if __name__ == "__main__":
    data.PARALLEL_SEGMENT_BYTES, data.usable_cores, data.python_segments = 0, lambda: 2, tagging
    cfg = DataConfig(packages=["stdlib"], max_mb=1.0, vocab_size=300, tokenizer_mb=0.1)
    data.prepare(cfg, Path(sys.argv[1], "cache"), progress=False)
"""


def _family(pid: int) -> set[int]:
    """`pid` and every process below it, from the parent pids in /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
    family = {pid}
    while below := {p for p, parent in parents.items() if parent in family} - family:
        family |= below
    return family


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_tagging_workers_end_when_the_build_is_killed(tmp_path):
    """A build killed outright (SIGKILL, the OOM killer) while its workers tag Python sources takes them
    with it, within seconds, and the forkserver they came from: they are the forkserver's children, not
    the build's, and used to go on tagging and then wait for more work forever."""
    (tmp_path / "build.py").write_text(KILLED_BUILD)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(data.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "build.py"), str(tmp_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("tagging.*"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        workers = {int(p.suffix[1:]) for p in tmp_path.glob("tagging.*")}
        family = _family(proc.pid) - {proc.pid}
        assert len(workers) == 2 and workers < family  # the workers and the forkserver (resource tracker)
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while any(alive(pid) for pid in family) and time.time() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in family if alive(pid)], "a process of the build outlived it"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what outlived it
        proc.communicate()


# -----------------------------------------------------------------------------------------------
# the python-env corpus (real standard library, capped)


@pytest.fixture(scope="module")
def env_cfg() -> DataConfig:
    return DataConfig(packages=["stdlib"], max_mb=1.0, vocab_size=1024, tokenizer_mb=1.0, val_fraction=0.05)


@pytest.fixture(scope="module")
def env_tokens(env_cfg, tmp_path_factory) -> data.TokenData:
    return prepare(env_cfg, tmp_path_factory.mktemp("envcache"), progress=False)


def test_python_env_documents_deterministic_split_and_capped(env_cfg):
    docs, fp = corpus_documents(env_cfg)
    docs2, fp2 = corpus_documents(env_cfg)
    assert fp == fp2 and [d.name for d in docs] == [d.name for d in docs2]
    assert set(fp) == {"source", "files", "bytes", "sha256"} and fp["source"].startswith("python-env")
    assert 0.9 * data.MB < fp["bytes"] <= env_cfg.max_mb * data.MB  # the cap, nearly filled
    assert fp["files"] == len(docs) and sum(len(d.text.encode()) for d in docs) == fp["bytes"]
    names = [d.name for d in docs]
    assert len(set(names)) == len(names) and all(n.startswith("stdlib/") for n in names)
    assert not any(n.startswith("stdlib/test/") or "site-packages" in n or "/" == n[0] for n in names)
    assert all(d.name.endswith((".py", ".txt", ".rst", ".md")) for d in docs)
    train = {d.name for d in docs if d.split == "train"}
    val = {d.name for d in docs if d.split == "val"}
    assert train and val and not train & val
    # another seed gives another order, hence another fingerprint
    other = DataConfig(**{**env_cfg.__dict__, "seed": 1})
    assert corpus_documents(other)[1]["sha256"] != fp["sha256"]


def test_unknown_package_names_the_field():
    cfg = DataConfig(packages=["stdlib", "no_such_pkg_xyz"])
    assert_corpus_error(cfg, "data.packages", "no_such_pkg_xyz", "install it")


def test_env_tokens_dtype_vocab_and_meta(env_tokens, env_cfg):
    td = env_tokens
    assert td.train.dtype == np.uint16 and td.val.dtype == np.uint16
    assert td.train_domain.dtype == np.uint8 and len(td.train_domain) == len(td.train)
    assert len(td.val_domain) == len(td.val) and len(td.val) > 0
    assert td.tokenizer().get_vocab_size() == env_cfg.vocab_size == td.vocab_size
    assert int(td.train.max()) < td.vocab_size and td.eot == td.tokenizer().token_to_id("<|endoftext|>")
    assert td.domains == ["code", "prose"]
    meta = td.meta()
    assert meta["fingerprint"] == td.fingerprint == corpus_documents(env_cfg)[1]
    assert meta["tokens"] == {"train": len(td.train), "val": len(td.val)}
    assert sum(meta["domain_tokens"]["train"].values()) == len(td.train)
    assert meta["domain_tokens"]["train"]["prose"] > 0.1 * len(td.train)  # docstrings + comments
    assert "timings" not in meta
    assert td.root.name == f"{td.fingerprint['sha256'][:12]}-v{env_cfg.vocab_size}-t{env_cfg.tokenizer_mb:g}"


def test_token_dtype_helper():
    assert token_dtype(300) is np.uint16 and token_dtype(65536) is np.uint16
    assert token_dtype(65537) is np.uint32 and token_dtype(200_000) is np.uint32


def test_tokenizer_round_trip(env_tokens):
    tok = env_tokens.tokenizer()
    for text in (PY_SOURCE, prose_words(7), UNICODE, "    x = {'a': [1, 2.5e-3]}\n\n\n", ""):
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text
    assert env_tokens.eot not in tok.encode("<|endoftext|>").ids  # literal text is not the separator


def test_domain_arrays_align_with_tokens(env_tokens, env_cfg):
    """The first training document, decoded whole and by its prose-tagged tokens."""
    td, tok = env_tokens, env_tokens.tokenizer()
    docs, _ = corpus_documents(env_cfg)
    py_first = [d for d in docs if d.split == "train"]
    ids = np.asarray(td.train)
    ends = np.flatnonzero(ids == td.eot)
    assert len(ends) == len(py_first)  # one separator after every document
    starts = np.concatenate([[0], ends[:-1] + 1])
    prose_id = td.domains.index("prose")
    checked = 0
    for doc, s, e in zip(py_first, starts, ends, strict=True):
        if not doc.python or "#" not in doc.text:
            continue
        doc_ids, dom = ids[s:e], np.asarray(td.train_domain[s:e])
        assert tok.decode(doc_ids.tolist()) == doc.text
        prose = "".join(t for t, d in doc.segments if d == "prose")
        assert tok.decode(doc_ids[dom == prose_id].tolist()) == prose
        assert "#" in prose
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_two_builds_identical(tmp_path):
    cfg = DataConfig(packages=["stdlib"], max_mb=0.25, vocab_size=400, tokenizer_mb=0.25, seed=3)
    a, b = prepare(cfg, tmp_path / "a", progress=False), prepare(cfg, tmp_path / "b", progress=False)
    assert a.fingerprint == b.fingerprint and a.root.name == b.root.name
    for f in data.CACHE_FILES:
        assert (a.root / f).read_bytes() == (b.root / f).read_bytes(), f


# -----------------------------------------------------------------------------------------------
# cache


def test_cache_files_are_synced_before_meta_json_commits_them(tmp_path, monkeypatch):
    """meta.json, written last, commits the cache: each cache file's bytes are synced to disk before it is
    renamed into place, meta.json's before its rename, and the folder after it (a power cut keeps no meta.json
    counting arrays whose bytes were lost). The events are read from os.fsync's descriptors and os.replace."""
    cfg = user_cfg(make_folder(tmp_path / "corpus"))
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src).name, Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    td = prepare(cfg, tmp_path / "cache", progress=False)
    monkeypatch.undo()
    renamed = {e[2]: i for i, e in enumerate(events) if e[0] == "replace"}
    assert set(renamed) == {*data.CACHE_FILES, "meta.json"}
    for i, e in enumerate(events):
        if e[0] == "replace":
            assert ("fsync", e[1]) in events[:i], e  # its temp file's bytes first
    last = renamed["meta.json"]
    assert all(renamed[f] < last for f in data.CACHE_FILES)
    assert ("fsync", td.root.name) in events[last + 1:]  # then the folder's entries


def test_cache_reused_without_retokenizing(tmp_path, monkeypatch):
    cfg = user_cfg(make_folder(tmp_path / "corpus"))
    td = prepare(cfg, tmp_path / "cache", progress=False)
    mtimes = {f: (td.root / f).stat().st_mtime_ns for f in (*data.CACHE_FILES, "meta.json")}

    def boom(*a, **k):
        raise AssertionError("retokenized a complete cache")

    monkeypatch.setattr(data, "train_tokenizer", boom)
    td2 = prepare(cfg, tmp_path / "cache", progress=False)
    assert td2.root == td.root and np.array_equal(td2.train, td.train)
    assert mtimes == {f: (td.root / f).stat().st_mtime_ns for f in mtimes}
    # a different tokenizer budget is a different build, in its own folder: both stay valid
    monkeypatch.undo()
    small = dataclasses.replace(cfg, tokenizer_mb=0.001)
    td3 = prepare(small, tmp_path / "cache", progress=False)
    assert td3.root != td.root and json.loads((td3.root / "meta.json").read_text())["tokenizer_mb"] == 0.001
    monkeypatch.setattr(data, "train_tokenizer", boom)
    assert prepare(cfg, tmp_path / "cache", progress=False).root == td.root  # not rebuilt over the other
    assert mtimes == {f: (td.root / f).stat().st_mtime_ns for f in mtimes}
    # a cache of another DATA_VERSION in the same folder is rebuilt in place
    meta = json.loads((td3.root / "meta.json").read_text())
    meta["build_key"]["data_version"] = -1
    (td3.root / "meta.json").write_text(json.dumps(meta))
    monkeypatch.undo()
    td4 = prepare(small, tmp_path / "cache", progress=False)
    assert td4.root == td3.root and json.loads((td3.root / "meta.json").read_text())["build_key"] == \
        data._build_key(small, td4.fingerprint)


def test_reused_cache_reports_this_corpus(tmp_path):
    """The same text at another path reuses the token cache, but the fingerprint (recorded with every
    run and result) and meta()'s data settings name the corpus asked for, not the one that built it."""
    first = make_folder(tmp_path / "first")
    td = prepare(user_cfg(first), tmp_path / "cache", progress=False)
    moved = first.rename(tmp_path / "moved")
    cfg = user_cfg(moved, max_mb=2.0)  # a larger cap that takes the same documents
    td2 = prepare(cfg, tmp_path / "cache", progress=False)
    assert td2.root == td.root  # reused: the tokens are the same
    assert td2.fingerprint == corpus_documents(cfg)[1] == td2.meta()["fingerprint"]
    assert td2.fingerprint["source"] == f"corpus: {moved}"
    assert td2.meta()["data"]["corpus"] == str(moved) and td2.meta()["data"]["max_mb"] == 2.0


def test_concurrent_prepare_builds_once(tmp_path, monkeypatch):
    cfg = user_cfg(make_folder(tmp_path / "corpus"))
    calls, real = [], data._build

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(data, "_build", counting)
    out = []
    threads = [threading.Thread(target=lambda: out.append(prepare(cfg, tmp_path / "c", progress=False)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2 and len(calls) == 1 and out[0].root == out[1].root


def test_a_token_array_of_the_wrong_size_is_built_again_with_a_note(tmp_path, monkeypatch, capsys):
    """A token or domain array whose size is not what meta.json counts (a cut copy, a full disk) is never read:
    the cache is rebuilt in place, with a note naming the file, and gives the tokens of the first build."""
    from sparsinglaw import config

    cfg = user_cfg(make_folder(tmp_path / "corpus"))
    td = prepare(cfg, tmp_path / "cache", progress=False)
    root, names = td.root, ("train.bin", "val.bin", "train.dom", "val.dom")
    good = {f: (root / f).read_bytes() for f in names}
    del td  # its memory maps must not see the files cut below
    for name, size in [("train.bin", 100), ("val.dom", len(good["val.dom"]) + 1)]:  # cut, then grown
        monkeypatch.setattr(config, "_NOTED", set())
        os.truncate(root / name, size)
        td = prepare(cfg, tmp_path / "cache", progress=False)
        assert capsys.readouterr().err == (f"note: {root / name} holds {size} bytes where meta.json counts "
                                           f"{len(good[name])} (a cut or damaged token cache): building the cache "
                                           "again\n")
        assert td.root == root and {f: (root / f).read_bytes() for f in names} == good
        assert len(td.train) == len(td.train_domain) and len(td.val) == len(td.val_domain)
        del td
    prepare(cfg, tmp_path / "cache", progress=False)  # a sound cache: reused without a word
    assert capsys.readouterr().err == ""


def test_an_array_with_an_id_out_of_range_is_built_again_with_a_note(tmp_path, monkeypatch, capsys):
    """Bytes overwritten in place (same size): a token id past the vocabulary stopped training at the
    embedding with an IndexError traceback, naming no file; now the cache is rebuilt, with a note."""
    from sparsinglaw import config

    cfg = user_cfg(make_folder(tmp_path / "corpus"))
    td = prepare(cfg, tmp_path / "cache", progress=False)
    root, names = td.root, ("train.bin", "val.bin", "train.dom", "val.dom")
    vocab, n_dom = td.vocab_size, len(td.domains)
    good = {f: (root / f).read_bytes() for f in names}
    item = td.train.dtype.itemsize
    del td
    for name, at, value, what in [("train.bin", 40, vocab, f"vocabulary of {vocab}"),
                                  ("val.dom", 3, 255, f"{n_dom} domain(s)")]:
        monkeypatch.setattr(config, "_NOTED", set())
        raw = bytearray(good[name])
        size = item if name.endswith(".bin") else 1
        raw[at * size:(at + 1) * size] = value.to_bytes(size, "little")
        (root / name).write_bytes(bytes(raw))
        td = prepare(cfg, tmp_path / "cache", progress=False)
        assert capsys.readouterr().err == (f"note: {root / name} holds the id {value}, outside its {what} (a "
                                           "damaged token cache): building the cache again\n")
        assert {f: (root / f).read_bytes() for f in names} == good
        del td
    prepare(cfg, tmp_path / "cache", progress=False)
    assert capsys.readouterr().err == ""


def test_the_next_build_deletes_the_temporary_files_of_a_killed_one(tmp_path, monkeypatch):
    """A build stopped while it writes (Ctrl-C here; a SIGKILL leaves the same) leaves its <file>.tmp.<pid>
    files; the next build of that folder, under its lock, deletes those of every pid, and nothing else."""
    cfg = user_cfg(make_folder(tmp_path / "corpus"))
    root = prepare(cfg, tmp_path / "cache", progress=False).root
    (root / "meta.json").unlink()  # an incomplete cache: the next call builds it again, in place
    real = data.encode_documents

    def interrupted(*a, **k):
        yield next(real(*a, **k))
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "encode_documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, tmp_path / "cache", progress=False)

    def temps():
        return sorted(p.name for p in root.iterdir() if ".tmp." in p.name)

    assert temps() == [f"train.bin.tmp.{os.getpid()}", f"train.dom.tmp.{os.getpid()}"]
    (root / "val.bin.tmp.1").write_bytes(b"\0" * 10)  # another dead build's
    (root / "notes.tmp.1").write_text("not a cache file: kept")
    monkeypatch.undo()
    td = prepare(cfg, tmp_path / "cache", progress=False)
    assert temps() == ["notes.tmp.1"] and (root / "meta.json").is_file() and len(td.train) > 0


# -----------------------------------------------------------------------------------------------
# user corpora


def test_folder_corpus_split_by_file_and_cap(tmp_path):
    root = make_folder(tmp_path / "corpus", n=40)
    (root / ".hidden").write_text("skip me")
    docs, fp = corpus_documents(user_cfg(root, val_fraction=0.2))
    names = [d.name for d in docs]
    assert fp["files"] == 40 and len(set(names)) == 40 and ".hidden" not in names
    assert "sub/doc000.txt" in names  # portable relative names
    val = [d for d in docs if d.split == "val"]
    assert 1 <= len(val) < 20
    per_file = sum(len(d.text.encode()) for d in docs) / 40
    docs_c, fp_c = corpus_documents(user_cfg(root, max_mb=10 * per_file / data.MB))
    assert fp_c["bytes"] <= 10 * per_file and 5 <= fp_c["files"] <= 10
    assert [d.name for d in docs_c] == [n for n in names if n in {d.name for d in docs_c}]  # same order


def test_tiny_corpora_get_a_validation_split(tmp_path):
    root = make_folder(tmp_path / "three", n=3)
    docs, _ = corpus_documents(user_cfg(root, val_fraction=0.01))
    assert sorted(d.split for d in docs) == ["train", "train", "val"]
    one = tmp_path / "book.txt"
    one.write_text("".join(prose_words(i) for i in range(10)))
    docs, fp = corpus_documents(user_cfg(one, val_fraction=0.1))
    assert [d.split for d in docs] == ["train", "val"] and fp["files"] == 1
    assert docs[0].text + docs[1].text == one.read_text() and docs[0].text.endswith("\n")
    assert 0.05 < len(docs[1].text) / len(one.read_text()) < 0.2
    (tmp_path / "line.txt").write_text("just one line\n")
    assert_corpus_error(user_cfg(tmp_path / "line.txt"), "line.txt", "too small", "add text")


def test_each_user_format_loads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [prose_words(i) for i in range(12)]
    txt = tmp_path / "one.txt"
    txt.write_text("".join(texts))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "domain": "ab"[i % 2], "id": i})
                               for i, t in enumerate(texts)) + "\n\n")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": texts, "n": list(range(12))}), parquet)
    folder = make_folder(tmp_path / "f", n=12)
    for corpus, kw, n_docs, domains in ((txt, {}, 2, ["text"]), (jsonl, {}, 12, ["a", "b"]),
                                        (parquet, {"text_field": "body"}, 12, ["text"]),
                                        (folder, {}, 12, ["text"])):
        cfg = user_cfg(corpus, **kw)
        docs, fp = corpus_documents(cfg)
        assert len(docs) == n_docs and fp["source"] == f"corpus: {corpus}"
        td = prepare(cfg, tmp_path / "cache", progress=False)
        assert td.domains == domains and len(td.val) > 0 and len(td.train) > len(td.val)
        assert td.tokenizer().decode(np.asarray(td.val).tolist()).strip()
        if corpus == jsonl:  # domain ids follow the records' 'domain' values
            doms = np.asarray(td.train_domain)
            assert set(np.unique(doms)) == {0, 1}
            ends = np.flatnonzero(np.asarray(td.train) == td.eot)  # each separator: its document's domain
            assert doms[ends].tolist() == [td.domains.index(d.domain) for d in docs if d.split == "train"]
            assert 1 in doms[ends]


def test_user_corpus_errors_name_file_and_fix(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert_corpus_error(user_cfg(tmp_path / "nope.txt"), "nope.txt", "not found", "data.corpus")
    (tmp_path / "empty.txt").write_text("")
    assert_corpus_error(user_cfg(tmp_path / "empty.txt"), "empty.txt", "empty")
    (tmp_path / "emptydir").mkdir()
    assert_corpus_error(user_cfg(tmp_path / "emptydir"), "emptydir", "no text")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait\n" * 3)
    assert_corpus_error(user_cfg(tmp_path / "latin1.txt"), "latin1.txt", "not UTF-8", "byte offset 3",
                        "save it as UTF-8")
    d = make_folder(tmp_path / "mixed", n=3)
    (d / "bin.dat").write_bytes(b"\x00\xff\xfe")
    assert_corpus_error(user_cfg(d), "bin.dat", "byte offset 1", "remove it")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken\n')
    assert_corpus_error(user_cfg(bad), "bad.jsonl:2", "invalid JSON", "one JSON object")
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert_corpus_error(user_cfg(bad), "bad.jsonl:2", "not UTF-8", "byte offset 28")
    bad.write_text('{"text": "ok"}\n{"body": "x", "id": 3}\n')
    assert_corpus_error(user_cfg(bad), "bad.jsonl:2", "'body', 'id'", "data.text_field")
    bad.write_text('{"text": 5}\n')
    assert_corpus_error(user_cfg(bad), "bad.jsonl:1", "not a string", "data.text_field")
    bad.write_text('[1, 2]\n')
    assert_corpus_error(user_cfg(bad), "bad.jsonl:1", "JSON object")
    pq.write_table(pa.table({"body": ["x"], "id": [1]}), tmp_path / "p.parquet")
    assert_corpus_error(user_cfg(tmp_path / "p.parquet"), "p.parquet", "columns there: body, id",
                        "data.text_field")
    assert_corpus_error(user_cfg(tmp_path / "p.parquet", text_field="id"), "p.parquet", "not string")
    small = make_folder(tmp_path / "small", n=3)
    assert_corpus_error(user_cfg(small, vocab_size=5000), "small", "lower data.vocab_size",
                        tmp=tmp_path / "c")


# -----------------------------------------------------------------------------------------------
# batches


def test_get_batch_shapes_shift_and_determinism():
    tokens = np.arange(1000, dtype=np.uint16)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x, y = get_batch(tokens, 4, 16, g1)
    x2, y2 = get_batch(tokens, 4, 16, g2)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y, x + 1)  # arange: y is x shifted by one
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = get_batch(tokens, 4, 16, g1)
    assert not torch.equal(x, x3)
    with pytest.raises(CorpusError, match="seq_len"):
        get_batch(tokens[:17], 2, 16, g1)


@pytest.mark.parametrize("passes", [0.3, 0.9, 2.5])
def test_window_coverage_matches_sampling_windows(passes):
    """window_coverage's seen and repeated shares against a count over the windows get_batch draws
    (tokens are their positions, so a batch names the positions it covers)."""
    n, T, B = 20_000, 16, 32
    tokens = np.arange(n, dtype=np.int32)
    g = torch.Generator().manual_seed(0)
    hits = np.zeros(n, dtype=np.int64)
    drawn = 0
    while drawn < passes * n:
        x, _ = get_batch(tokens, B, T, g)
        np.add.at(hits, x.numpy().ravel(), 1)
        drawn += x.numel()
    seen, repeated = window_coverage(drawn / n)
    assert abs((hits > 0).mean() - seen) < 0.01
    assert abs(1 - (hits > 0).sum() / drawn - repeated) < 0.01
    assert window_coverage(0) == (0.0, 0.0)


def test_get_batch_on_memmap(env_tokens):
    """On the memory-mapped split, each row is a window the split holds (found by brute force), as int64,
    and the batch equals the one drawn from an in-memory copy with the same seed."""
    assert isinstance(env_tokens.val, np.memmap)
    x, y = get_batch(env_tokens.val, 3, 32, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 32) and x.dtype == y.dtype == torch.int64
    windows = np.lib.stride_tricks.sliding_window_view(np.array(env_tokens.val, dtype=np.int64), 33)
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        at = np.flatnonzero((windows[:, :32] == row_x).all(1) & (windows[:, 1:] == row_y).all(1))
        assert at.size >= 1, "a row is not a window of the split"
    x2, y2 = get_batch(np.array(env_tokens.val), 3, 32, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_eval_batches_cover_exactly_the_requested_tokens():
    tokens = np.arange(1000, dtype=np.uint32)
    dom = (np.arange(1000) % 3).astype(np.uint8)
    batches = list(eval_batches(tokens, 16, 5, 480))
    ys = torch.cat([y.reshape(-1) for _, y in batches])
    assert [x.shape[0] for x, _ in batches] == [5, 5, 5, 5, 5, 5] and len(ys) == 480
    assert torch.equal(ys, torch.arange(1, 481))
    assert torch.equal(torch.cat([x.reshape(-1) for x, _ in batches]), torch.arange(480))
    out = list(eval_batches(tokens, 16, 4, 10_000, domain=dom))  # capped by what is there: 999 // 16
    assert sum(y.numel() for _, y, _ in out) == 62 * 16 and out[-1][0].shape == (2, 16)
    for _, y, d in out:
        assert torch.equal(d, y % 3)
    with pytest.raises(CorpusError, match="seq_len"):
        list(eval_batches(tokens[:10], 16, 4, 100))


# -----------------------------------------------------------------------------------------------
# user corpora: text or names that are no Unicode, other Parquet string types


def _bad_utf8_parquet(path: Path, **columns) -> None:
    """A Parquet file whose string columns hold the given bytes as they are (pyarrow does not check them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def column(values: list[bytes]):
        offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
        return pa.Array.from_buffers(pa.string(), len(values),
                                     [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(values))])

    pq.write_table(pa.table({k: column(v) for k, v in columns.items()}), path)


def test_jsonl_text_that_is_not_unicode_is_one_corpus_error(tmp_path):
    """A lone surrogate escape in a .jsonl record ("\\ud83d": half an emoji): a CorpusError naming the file, the
    line and the field, not a UnicodeEncodeError."""
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"text": "fine\\nline"}\n{"text": "half \\ud83d an emoji"}\n')
    assert_corpus_error(user_cfg(bad), "s.jsonl:2: field 'text' holds '\\ud83d' at character 5", "surrogate",
                        "drop the record")
    bad.write_text('{"text": "fine\\nline", "domain": "web \\udc00"}\n')
    assert_corpus_error(user_cfg(bad), "s.jsonl:1: field 'domain' holds '\\udc00'")


def test_parquet_text_that_is_not_utf8_is_one_corpus_error(tmp_path):
    """Bytes that are not UTF-8 in a Parquet string column (pyarrow writes and reads them unchecked): a
    CorpusError naming the file and the column, not a UnicodeDecodeError."""
    _bad_utf8_parquet(tmp_path / "t.parquet", text=[b"good text\nline", b"bad \xff\xfe bytes\nx"])
    assert_corpus_error(user_cfg(tmp_path / "t.parquet"), "t.parquet: column 'text' holds text that is not UTF-8 "
                        "(invalid byte 0xff)", "re-export")
    _bad_utf8_parquet(tmp_path / "d.parquet", text=[b"good text\nline", b"more\nx"], domain=[b"web", b"c\xe9"])
    assert_corpus_error(user_cfg(tmp_path / "d.parquet"), "d.parquet: column 'domain' holds text that is not UTF-8")


def test_file_names_that_are_not_utf8_are_one_corpus_error(tmp_path):
    """Documents are named (and hashed) by their path as UTF-8: a Latin-1 file name in a folder corpus, or as a
    single-file corpus, was a UnicodeEncodeError traceback."""
    root = make_folder(tmp_path / "f", n=3)
    (root / os.fsdecode(b"caf\xe9.txt")).write_text("some text\nmore\n")
    assert_corpus_error(user_cfg(root), f"{root}/caf\\xe9.txt: the file name is not valid UTF-8; rename it")
    one = tmp_path / os.fsdecode(b"na\xefve.txt")
    one.write_text("some text\nmore\n")
    assert_corpus_error(user_cfg(one), f"{tmp_path}/na\\xefve.txt: the file name is not valid UTF-8")


def test_a_folder_of_symbolic_links_says_they_are_skipped(tmp_path):
    """Symbolic links in a folder corpus are skipped (as before); a folder of nothing else says so."""
    blobs = make_folder(tmp_path / "blobs", n=2)
    links = tmp_path / "links"
    links.mkdir()
    for p in sorted(blobs.glob("*.txt")):
        (links / p.name).symlink_to(p)
    assert_corpus_error(user_cfg(links), "links: the folder holds no text", "symbolic links are skipped")


def test_parquet_text_in_dictionary_and_view_columns(tmp_path):
    """A dictionary-encoded text column (pandas Categorical) or a string_view one reads as the same documents as
    a plain string column: the same fingerprint, hence the same tokens (it was refused as "not string")."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [prose_words(i) for i in range(6)]
    tables = {"plain": pa.table({"text": texts}), "dictionary": pa.table({"text": pa.array(texts).dictionary_encode()}),
              "view": pa.table({"text": pa.array(texts, type=pa.string_view())})}
    for name, table in list(tables.items()):
        (tmp_path / name).mkdir()
        try:
            pq.write_table(table, tmp_path / name / "c.parquet")
        except pa.ArrowNotImplementedError:  # pyarrow 18 (requirements-min.txt) writes no string_view column
            assert name == "view", name
            del tables[name]
    (tmp_path / "pandas").mkdir()
    pd.DataFrame({"text": pd.Categorical(texts)}).to_parquet(tmp_path / "pandas" / "c.parquet")
    prints = {}
    for name in [*tables, "pandas"]:
        docs, fp = corpus_documents(user_cfg(tmp_path / name / "c.parquet"))
        assert sorted(d.text for d in docs) == sorted(texts), name
        prints[name] = fp["sha256"]
    assert len(set(prints.values())) == 1, prints


def test_text_field_domain_is_no_domain_in_jsonl_either(tmp_path):
    """data.text_field: domain: Parquet drops the domain column then (one domain, text); .jsonl made every record
    its own domain (its text). Both now agree."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [prose_words(i) for i in range(6)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"domain": t}) + "\n" for t in texts))
    pq.write_table(pa.table({"domain": texts}), tmp_path / "d.parquet")
    for corpus in ("d.jsonl", "d.parquet"):
        docs, _ = corpus_documents(user_cfg(tmp_path / corpus, text_field="domain"))
        assert {d.domain for d in docs} == {"text"} and len(docs) == 6, corpus


def test_a_folder_of_record_shards_reads_their_records(tmp_path):
    """.jsonl and .parquet files in a folder are shards of records, read as the single files are: the same
    texts and domains, named by their relative path (a .jsonl shard was one document of JSON syntax, a
    .parquet one was refused as not UTF-8); a plain text file beside them stays one document."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": prose_words(i), "domain": ("code", "prose")[i % 2]} for i in range(12)]
    root = tmp_path / "shards"
    (root / "part").mkdir(parents=True)
    (root / "part" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    pq.write_table(pa.Table.from_pylist(rows[6:]), root / "part" / "b.parquet")
    (root / "empty.JSONL").write_text("")  # an empty shard is skipped as an empty text file is
    (root / "notes.txt").write_text(prose_words(99))
    docs, fp = corpus_documents(user_cfg(root))
    got = {d.name: d for d in docs}
    assert fp["files"] == 13 and set(got) == {f"part/a.jsonl:{i + 1}" for i in range(6)} | \
        {f"part/b.parquet:{i}" for i in range(6)} | {"notes.txt"}
    assert [(got[f"part/a.jsonl:{i + 1}"].text, got[f"part/a.jsonl:{i + 1}"].domain) for i in range(6)] + \
        [(got[f"part/b.parquet:{i}"].text, got[f"part/b.parquet:{i}"].domain) for i in range(6)] == \
        [(r["text"], r["domain"]) for r in rows]
    assert got["notes.txt"].domain == "text" and not any("{" in d.text for d in docs)
    # shards without text add nothing, as an empty text file (one of them stopped the whole folder)
    (root / "blank.jsonl").write_text("\n\n")
    (root / "empty-texts.jsonl").write_text('{"text": ""}\n')
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), root / "no-rows.parquet")
    assert [d.name for d in corpus_documents(user_cfg(root))[0]] == [d.name for d in docs]
    (root / "part" / "c.jsonl").write_text('{"txt": "x"}\n')  # a shard's errors name the shard and its line
    assert_corpus_error(user_cfg(root), "c.jsonl:1: no field 'text'")


def test_integer_domains_are_labels_and_other_values_are_refused(tmp_path):
    """Integer domain labels (0, 1, 2) were merged silently into the one domain "text"; now they are their
    decimal text in both formats, null is "text", and a float or a list is refused naming the record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [prose_words(i) for i in range(6)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "domain": i % 3 if i else None}) + "\n"
                                              for i, t in enumerate(texts)))
    pq.write_table(pa.table({"text": texts, "domain": pa.array([None, 1, 2, 0, 1, 2], pa.int64())}),
                   tmp_path / "d.parquet")
    for corpus in ("d.jsonl", "d.parquet"):
        docs, _ = corpus_documents(user_cfg(tmp_path / corpus))
        assert sorted(d.domain for d in docs) == ["0", "1", "1", "2", "2", "text"], corpus
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": texts[0], "domain": 1.5}) + "\n")
    assert_corpus_error(user_cfg(tmp_path / "bad.jsonl"), "bad.jsonl:1: field 'domain' is float (1.5)")
    pq.write_table(pa.table({"text": texts[:2], "domain": [["a"], ["b"]]}), tmp_path / "bad.parquet")
    assert_corpus_error(user_cfg(tmp_path / "bad.parquet"), "bad.parquet, row 0: field 'domain' is list")


def test_a_package_inside_another_is_read_once(tmp_path):
    """data.packages [json, json.tool]: json/tool.py is reached from both; it is one document, named under
    the first package listed (it was two, which could land in both splits)."""
    both, _ = corpus_documents(DataConfig(corpus="python-env", packages=["json", "json.tool"], vocab_size=300,
                                          max_mb=100, val_fraction=0.5))
    alone, _ = corpus_documents(DataConfig(corpus="python-env", packages=["json"], vocab_size=300, max_mb=100,
                                           val_fraction=0.5))
    assert [d.name for d in both] == [d.name for d in alone] and "json/tool.py" in {d.name for d in both}
    tool, _ = corpus_documents(DataConfig(corpus="python-env", packages=["json.tool"], vocab_size=300, max_mb=100))
    assert {d.name for d in tool} == {"json.tool.py"}  # alone it is read under its own name (split by lines)


def test_fingerprint_changes_with_the_split_or_the_domains_alone(tmp_path):
    """The token cache is found by the fingerprint: the same documents with another split (another
    val_fraction) or with other domains (a .jsonl's domain field) must give another sha256, else a cache
    with other splits or other domain arrays would be reused."""
    root = make_folder(tmp_path / "corpus")
    a, fa = corpus_documents(user_cfg(root, val_fraction=0.1))
    b, fb = corpus_documents(user_cfg(root, val_fraction=0.4))
    assert [(d.name, d.text) for d in a] == [(d.name, d.text) for d in b]
    assert [d.split for d in a] != [d.split for d in b] and fa["sha256"] != fb["sha256"]
    got = {}
    for dom in ("code", "prose"):
        path = tmp_path / dom / "c.jsonl"
        path.parent.mkdir()
        path.write_text("".join(json.dumps({"text": prose_words(i), "domain": dom}) + "\n" for i in range(6)))
        got[dom] = corpus_documents(user_cfg(path))
    (dc, fc), (dp, fp) = got["code"], got["prose"]
    assert [(d.name, d.split, d.text) for d in dc] == [(d.name, d.split, d.text) for d in dp]
    assert {d.domain for d in dc} == {"code"} and {d.domain for d in dp} == {"prose"}
    assert fc["sha256"] != fp["sha256"]


def test_tokenizer_learns_from_the_first_tokenizer_mb_of_training_text_only(tmp_path):
    """BPE merges come from the training split alone, and from its first data.tokenizer_mb bytes: a word of
    letters no other document holds ("zqxj", 300 times) gets no merged token when it is a validation
    document, nor when it is the last training document and past the budget; within the budget it is merged
    (so the check can see a merge)."""
    root = make_folder(tmp_path / "corpus")
    cfg = user_cfg(root)
    docs, _ = corpus_documents(cfg)
    val = next(d for d in docs if d.split == "val")
    train_docs = [d for d in docs if d.split == "train"]
    word = "zqxj " * 300

    def merged(cfg: DataConfig, cache: str) -> bool:
        td = prepare(cfg, tmp_path / cache, progress=False)
        return any("zq" in t for t in td.tokenizer().get_vocab())

    (root / val.name).write_text(word)
    assert not merged(cfg, "val")
    (root / val.name).write_text(val.text)
    (root / train_docs[-1].name).write_text(word)
    head = sum(len(d.text.encode()) for d in train_docs[: len(train_docs) // 2])
    assert not merged(dataclasses.replace(cfg, tokenizer_mb=head / data.MB), "budget")
    assert merged(cfg, "all")


def test_eval_windows_leave_room_for_the_shifted_targets():
    """A split of exactly 4 windows of 16 tokens has 3 full (input, target) windows: the targets are the
    inputs shifted by one, so the last window would need a 65th token."""
    batches = list(eval_batches(np.arange(64, dtype=np.uint16), 16, 8, 10_000))
    assert len(batches) == 1 and batches[0][1].shape == (3, 16)
    assert torch.equal(batches[0][1].reshape(-1), torch.arange(1, 49))


def test_order_cap_and_split_follow_the_documented_hash_rule(tmp_path):
    """Oracle: the module docstring's rule computed here with hashlib: d = sha1(f"{seed}:{name}"), documents in
    the order of d[:8], each taken while it fits the cap (one that would overflow is skipped and the next ones
    are tried), validation when int(d[8:16]) / 2**64 < val_fraction (bits independent of the order)."""
    import hashlib

    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(40):
        (root / f"doc{i:02d}.txt").write_text(f"doc {i}\n" + "words in a line\n" * (1 + (i * 7) % 23))
    names = sorted(p.name for p in root.iterdir())
    digest = {n: hashlib.sha1(f"3:{n}".encode()).digest() for n in names}
    size = {n: (root / n).stat().st_size for n in names}
    cap = sum(size.values()) // 3
    taken, used = [], 0
    for n in sorted(names, key=lambda n: digest[n][:8]):
        if used + size[n] <= cap:
            taken.append(n)
            used += size[n]
    val = {n for n in taken if int.from_bytes(digest[n][8:16], "big") / 2**64 < 0.3}
    assert 0 < len(val) < len(taken) < 40
    docs, fp = corpus_documents(user_cfg(root, seed=3, val_fraction=0.3, max_mb=cap / data.MB))
    assert [d.name for d in docs] == taken and fp["bytes"] == used
    assert {d.name for d in docs if d.split == "val"} == val


def test_cut_at_line_keeps_whole_lines_within_the_byte_budget():
    """A document too large for the corpus budget is cut after its last whole line (newline kept) within
    max_bytes of UTF-8; a text without a newline keeps the characters that fit whole."""
    from sparsinglaw.data import _cut_at_line

    assert _cut_at_line("ab\ncd\nef", 7) == "ab\ncd\n"
    assert _cut_at_line("ab\ncd\nef", 5) == "ab\n"
    assert _cut_at_line("abcdef", 3) == "abc"
    assert _cut_at_line("é\né\n", 5) == "é\n"  # 2 bytes a character: the second line's newline does not fit
    assert _cut_at_line("éé", 3) == "é"  # a cut inside a character drops it


# ----------------------------------------------------------------------------- splits, caps and encoding by hand


def _folder(root, n):
    root.mkdir()
    for i in range(n):
        (root / f"doc{i}.txt").write_text(f"document {i}\nsome words here\n")
    return root


def _u(seed, name):  # the documented split value, by hashlib
    return int.from_bytes(hashlib.sha1(f"{seed}:{name}".encode()).digest()[8:16], "big") / 2**64


def test_no_validation_document_drawn_forces_the_smallest_split_value(tmp_path):
    """Three documents, val_fraction 0.01: none has a split value below it (checked), so the document with
    the smallest value goes to validation (module docstring)."""
    root = _folder(tmp_path / "c", 3)
    names = [f"doc{i}.txt" for i in range(3)]
    seed = next(s for s in range(100) if min(_u(s, n) for n in names) >= 0.01)
    docs, _ = corpus_documents(user_cfg(root, seed=seed, val_fraction=0.01))
    assert [d.name for d in docs if d.split == "val"] == [min(names, key=lambda n: _u(seed, n))]


def test_every_document_drawn_for_validation_keeps_the_largest_split_value_for_training(tmp_path):
    """Three documents whose split values all lie below val_fraction 0.45 (a seed searched here with
    hashlib): the one with the largest value is moved to training, the other two stay in validation."""
    root = _folder(tmp_path / "c", 3)
    names = [f"doc{i}.txt" for i in range(3)]
    seed = next(s for s in range(2000) if max(_u(s, n) for n in names) < 0.45)
    docs, _ = corpus_documents(user_cfg(root, seed=seed, val_fraction=0.45))
    assert [d.name for d in docs if d.split == "train"] == [max(names, key=lambda n: _u(seed, n))]
    assert sum(d.split == "val" for d in docs) == 2


def test_one_document_is_split_at_the_line_end_nearest_the_byte_target(tmp_path):
    """One file of ten 9-byte lines, val_fraction 0.1: the training part ends at byte 81 (the line end
    nearest 0.9 * 90), so validation is exactly the last line. With 2-byte characters: five lines "éééé\\n"
    (9 bytes, 5 characters) then five "abcdefgh\\n", val_fraction 0.4: the byte target 0.6 * 90 = 54 is the
    end of line 6, so validation is the last four lines (a character count, 0.6 * 70 = 42, would cut at 45)."""
    one = tmp_path / "a.txt"
    one.write_text("".join(f"line {i:03d}\n" for i in range(10)))
    docs, _ = corpus_documents(user_cfg(one, val_fraction=0.1))
    assert [(d.split, d.text) for d in docs] == [("train", "".join(f"line {i:03d}\n" for i in range(9))),
                                                 ("val", "line 009\n")]
    two = tmp_path / "b.txt"
    two.write_text("éééé\n" * 5 + "abcdefgh\n" * 5, encoding="utf-8")
    docs, _ = corpus_documents(user_cfg(two, val_fraction=0.4))
    assert [(d.split, d.text) for d in docs] == [("train", "éééé\n" * 5 + "abcdefgh\n"), ("val", "abcdefgh\n" * 4)]


def test_a_first_document_over_the_cap_keeps_every_whole_line_within_it(tmp_path):
    """One file of 1000 lines "abc\\n" (4000 bytes) under max_mb = 2000 bytes: cut after line 500, which
    ends exactly at the cap, so the corpus is 2000 bytes."""
    one = tmp_path / "a.txt"
    one.write_text("abc\n" * 1000)
    docs, fp = corpus_documents(user_cfg(one, max_mb=0.002, val_fraction=0.1))
    assert fp["bytes"] == 2000 and "".join(d.text for d in docs) == "abc\n" * 500


def test_encode_documents_in_chunks_equals_encoding_each_segment(monkeypatch):
    """Oracle: every segment encoded on its own (tok.encode), then <|endoftext|> with the domain of the
    document's last segment. The 4 MB chunking is forced down to 40 bytes so that chunks are flushed mid-corpus
    (no test corpus reaches 4 MB); each Python document opens with prose and ends with code."""
    texts = ["the model learns sparse activations\n" * 20, "def f(x):\n    return x + 1\n" * 20]
    tok = data.train_tokenizer(iter(texts), 270)
    eot = tok.token_to_id(data.EOT)
    domains = ["code", "prose"]
    segmented = [[(f"# comment {i}\n", "prose"), (f"x = {i}\n", "code")] for i in range(12)]
    segmented += [[("plain text document\n", "prose")], [], [('"""doc"""', "prose"), ("\ny = 2\n", "code")]]
    want_ids, want_dom = [], []
    for segs in segmented:
        for text, dom in segs:
            ids = tok.encode(text, add_special_tokens=False).ids
            want_ids += ids
            want_dom += [domains.index(dom)] * len(ids)
        want_ids.append(eot)
        want_dom.append(domains.index(segs[-1][1]) if segs else 0)
    for chunk in (data.ENCODE_CHUNK_BYTES, 40):
        monkeypatch.setattr(data, "ENCODE_CHUNK_BYTES", chunk)
        parts = list(encode_documents(tok, segmented, domains, np.uint16))
        assert (len(parts) > 3) == (chunk == 40)
        assert np.concatenate([p[0] for p in parts]).tolist() == want_ids
        assert np.concatenate([p[1] for p in parts]).tolist() == want_dom


def test_docstrings_after_a_blank_line_or_a_comment_line_are_prose():
    """A string statement is a docstring wherever it stands, also after a blank line or a comment line
    (which tokenize reports as NL tokens)."""
    src = 'import os\n\n"""after a blank line"""\n# a comment\n"""after a comment"""\nx = "not prose"\n'
    segs = data.python_segments(src)
    assert "".join(t for t, _ in segs) == src
    assert [t for t, d in segs if d == "prose"] == ['"""after a blank line"""', "# a comment", '"""after a comment"""']


def test_tokenizer_texts_stop_at_the_byte_budget_inside_a_document():
    """The tokenizer reads the first `budget` bytes of training text: the document the budget ends in
    is cut there (a cut inside a character drops it), validation documents are skipped, nothing follows."""
    docs = [Document("a", "train", "abcdef"), Document("v", "val", "zzzz"), Document("b", "train", "ghij"),
            Document("c", "train", "klm")]
    assert list(data._tokenizer_texts(docs, 8)) == ["abcdef", "gh"]
    assert list(data._tokenizer_texts(docs, 5)) == ["abcde"]
    assert list(data._tokenizer_texts(docs, 100)) == ["abcdef", "ghij", "klm"]
    assert list(data._tokenizer_texts([Document("e", "train", "aé"), Document("f", "train", "xyz")], 2)) == ["a"]


def test_a_split_lopsided_by_large_documents_gets_a_note(tmp_path, monkeypatch, capsys):
    """The split holds out documents, not bytes: when the validation documents carry far more than
    data.val_fraction of the text (one large file among small ones), a note says how much and what to do;
    an even split says nothing."""
    from sparsinglaw import config

    monkeypatch.setattr(config, "_NOTED", set())
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(20):
        (folder / f"small{i:02d}.txt").write_text(f"document {i}\n" * 20)
    cfg = DataConfig(corpus=str(folder), vocab_size=300, max_mb=1.0, val_fraction=0.05)
    docs, _ = data.corpus_documents(cfg)
    assert capsys.readouterr().err == ""  # 20 like documents: one of them held out
    held = next(d.name for d in docs if d.split == "val")
    (folder / held).write_text("a much longer line of text\n" * 2000)  # the held-out one grows
    docs, _ = data.corpus_documents(cfg)
    val = sum(len(d.text.encode()) for d in docs if d.split == "val") / sum(len(d.text.encode()) for d in docs)
    assert [d.name for d in docs if d.split == "val"] == [held] and val > 0.9
    err = capsys.readouterr().err
    assert err.startswith(f"note: {folder}: the validation split holds {val:.0%} of the text (1 of 20 documents: "
                          "data.val_fraction=0.05 holds out about that share of the documents, not of the bytes)")
