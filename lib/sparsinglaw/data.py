"""Corpus, tokenizer and token batches.

Pipeline: ``corpus_documents`` lists the documents of a corpus in a fixed order with their split and
a fingerprint; ``prepare`` trains a byte-level BPE tokenizer on the training text, encodes both
splits into flat token arrays (every document followed by ``<|endoftext|>``) with an aligned array of
domain ids, and caches everything under ``cache_dir / f"{sha[:12]}-v{vocab_size}-t{tokenizer_mb:g}"``;
``get_batch`` and ``eval_batches`` cut windows out of those arrays.

Default corpus (``data.corpus: python-env``): the Python source text of the running environment.

* ``stdlib`` is ``sysconfig.get_paths()["stdlib"]`` without ``site-packages``/``dist-packages``
  and without the ``test``, ``idlelib`` and ``lib2to3`` trees (CPython's own regression tests,
  the IDLE GUI and a deprecated converter: 20 MB of noise next to 13 MB of library code).
* Any other name in ``data.packages`` is located with ``importlib.util.find_spec`` and walked whole
  (its tests are code too), except that ``.txt/.rst/.md`` files inside ``test``/``tests``/``data``/
  ``testdata`` folders are skipped: they are numeric fixtures (scipy's distance tables), not prose.
* Files: ``*.py`` (tagged by the stdlib ``tokenize`` module: comments and docstrings are ``prose``,
  everything else ``code``; a docstring is any string literal standing alone as a statement; a file
  ``tokenize`` cannot parse is all ``code``) and ``*.txt/*.rst/*.md`` (all ``prose``). Files over
  1 MB (generated tables), empty files, non-UTF-8 files, hidden folders and ``__pycache__`` are
  skipped. Files are named portably: ``stdlib/json/decoder.py``, ``torch/nn/modules/linear.py``; a file
  reached from two listed packages (``numpy`` and ``numpy.linalg``) is read once, under the first name.

User corpora (``data.corpus`` is a path): a single text file (one document), a folder (every
regular, non-hidden file under it, each one document, all of which must be UTF-8, their names too;
symbolic links are skipped; its ``.jsonl``/``.ndjson``/``.parquet`` files are shards of records, read
as below and named ``<relative path>:<line or row>``), ``.jsonl`` (one JSON object per line, text in
``data.text_field``) or ``.parquet`` (string column ``data.text_field``; dictionary-encoded strings
such as a pandas Categorical too). Records may carry a ``domain`` field/column (a string, or an
integer label read as its decimal text; any other value is refused); the domains are then its
values, otherwise (or when ``data.text_field`` is ``domain`` itself) the single domain ``text``.
Empty texts are skipped; user corpora are read into memory.

Ordering, cap and split (the same rule for every corpus, by document): each document's name is
hashed, ``d = sha1(f"{seed}:{name}")``; documents are ordered by ``d[:8]`` and taken in that order
while they fit in ``max_mb`` (1 MB = 10**6 bytes of UTF-8; a document that would overflow the cap
is skipped and the next ones are tried; if not even the first fits, it is cut at a line boundary).
A document is held out for validation when ``int(d[8:16]) / 2**64 < val_fraction`` (bits
independent of the order, so a small cap still gets a proportional validation share). With two or
more documents both splits are forced non-empty (the document with the smallest split value goes to
validation, or the largest to training). A single document is split by lines: the last
~``val_fraction`` of its bytes (at least one line) is validation; a one-line document is too small.

Fingerprint: ``{"source", "files", "bytes", "sha256"}`` where ``files`` counts the documents used
(files, or records for .jsonl/.parquet), ``bytes`` their UTF-8 size, and ``sha256`` hashes
``DATA_VERSION`` and then, in order, each document's name, split, domain rule and text. The cache
folder is named by that hash, the vocabulary size and the tokenizer budget (``tokenizer_mb``), so
that configs that differ only in their tokenizer keep their own caches; the whole build key, with
``DATA_VERSION``, is checked against meta.json and a mismatching cache is rebuilt in place, as is one whose
token or domain arrays do not have the sizes meta.json counts (with a note naming the file); a rebuild first
deletes the temporary files that a build killed mid-way left in the folder. Every cache file is synced to
disk before meta.json is renamed into place (and the folder after it): a power cut cannot leave a
meta.json that counts arrays of the right size holding other bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import io
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
import sysconfig
import time
import tokenize
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import DataConfig, SparsingLawError, note_once
from .device import exit_with_parent, usable_cores

DATA_VERSION = 1  # bump when a change here changes the tokens built from the same corpus
EOT = "<|endoftext|>"
MB = 1_000_000  # bytes per MB in max_mb / tokenizer_mb
MAX_FILE_BYTES = 1_000_000  # python-env: larger files are generated tables, skipped
PROSE_SUFFIXES = (".txt", ".rst", ".md")
STDLIB_SKIP = {"site-packages", "dist-packages", "test", "idlelib", "lib2to3"}
RECORD_SUFFIXES = (".jsonl", ".ndjson", ".parquet")  # files of records: one document per record
FIXTURE_DIRS = {"test", "tests", "data", "testdata"}  # prose files here are numeric fixtures
ENCODE_CHUNK_BYTES = 4 * MB  # text per encode_batch call (bounds memory of Encoding objects)
PARALLEL_SEGMENT_BYTES = 8 * MB  # Python text above which tagging uses a process pool
PY_DOMAINS = ["code", "prose"]
CACHE_FILES = ("tokenizer.json", "train.bin", "val.bin", "train.dom", "val.dom")  # + meta.json, last


class CorpusError(SparsingLawError):
    """A corpus that cannot be used; the message names the file and the fix."""


# -----------------------------------------------------------------------------------------------
# documents


@dataclass
class Document:
    """One file or record of a corpus: its portable name, split and text with its domain rule.

    ``python=True`` means the text is Python source whose segments are tagged ``code``/``prose`` by
    ``python_segments``; otherwise the whole text is in ``domain``.
    """

    name: str
    split: str  # "train" or "val"
    text: str
    domain: str = "text"
    python: bool = False

    @property
    def segments(self) -> list[tuple[str, str]]:
        """``[(text, domain), ...]`` whose texts concatenate to the document's text."""
        if self.python:
            return python_segments(self.text)
        return [(self.text, self.domain)] if self.text else []

    def _rule(self) -> str:
        return "python" if self.python else f"domain={self.domain}"


def python_segments(text: str) -> list[tuple[str, str]]:
    """Split Python source into ``(text, "code"|"prose")`` segments that concatenate to ``text``.

    Prose = COMMENT tokens and docstrings, where a docstring is any logical line made only of
    string literals (a string standing alone as a statement, wherever it is). The exact source text
    is kept, so indentation and newlines around a comment or docstring are code. Source that
    ``tokenize`` rejects is one code segment.
    """
    if not text:
        return []
    try:
        spans = _prose_spans(text)
    except (tokenize.TokenError, SyntaxError, ValueError):
        return [(text, "code")]
    out: list[tuple[str, str]] = []
    pos = 0
    for a, b in spans:
        if a > pos:
            out.append((text[pos:a], "code"))
        if out and out[-1][1] == "prose" and a == pos:
            out[-1] = (out[-1][0] + text[a:b], "prose")
        else:
            out.append((text[a:b], "prose"))
        pos = b
    if pos < len(text):
        out.append((text[pos:], "code"))
    return out


def _prose_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of comments and stand-alone string statements, sorted."""
    # tokenize reports (row, col) with rows split at "\n" only (io.StringIO.readline) and col in
    # characters; convert to absolute character offsets.
    line_start = [0, *itertools.accumulate(len(line) + 1 for line in text.split("\n"))]

    def span(tok: tokenize.TokenInfo) -> tuple[int, int]:
        return line_start[tok.start[0] - 1] + tok.start[1], line_start[tok.end[0] - 1] + tok.end[1]

    spans: list[tuple[int, int]] = []
    strings: list[tokenize.TokenInfo] = []
    only_strings = True
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        t = tok.type
        if t == tokenize.COMMENT:
            spans.append(span(tok))
        elif t in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT):
            continue
        elif t in (tokenize.NEWLINE, tokenize.ENDMARKER):
            if only_strings and strings:
                spans.extend(span(s) for s in strings)
            strings, only_strings = [], True
        elif t == tokenize.STRING:
            if only_strings:
                strings.append(tok)
        else:
            only_strings = False
    spans.sort()
    return spans


# -----------------------------------------------------------------------------------------------
# corpus sources: candidates (name, size, loader) before ordering, cap and split


@dataclass
class _Candidate:
    name: str
    size: int  # UTF-8 bytes (the file size until the file is read)
    text: str | None = None  # None: read from path when taken (python-env reads only what it takes)
    path: Path | None = None
    domain: str = "text"
    python: bool = False


def _file_text(path: Path, shown: str, fix: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{shown}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} at byte offset "
                          f"{e.start}); {fix}") from None


def _python_env_candidates(cfg: DataConfig) -> tuple[list[_Candidate], str]:
    roots: list[tuple[str, Path, bool]] = []  # (prefix, folder or single file, is_stdlib)
    source = []
    for pkg in dict.fromkeys(cfg.packages):
        if pkg == "stdlib":
            roots.append(("stdlib", Path(sysconfig.get_paths()["stdlib"]), True))
            source.append(f"stdlib {sys.version.split()[0]}")
            continue
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise CorpusError(f"data.packages: package {pkg!r} is not installed in this environment "
                              f"({sys.executable}); install it or remove it from data.packages")
        if spec.submodule_search_locations:
            for loc in sorted(spec.submodule_search_locations):
                roots.append((pkg, Path(loc), False))
        elif spec.origin and spec.origin.endswith(".py"):
            roots.append((pkg, Path(spec.origin), False))
        else:
            raise CorpusError(f"data.packages: {pkg!r} has no Python source files (it is a compiled "
                              "module); remove it from data.packages")
        try:
            source.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            source.append(pkg)

    cands: dict[str, _Candidate] = {}
    seen: set[Path] = set()  # a file reached from two listed packages (numpy and numpy.linalg) is read once
    for prefix, root, is_stdlib in roots:
        if root.is_file():
            files = [(root, f"{prefix}.py")]
        else:
            files = []
            for d, dirs, names in os.walk(root):
                rel = Path(d).relative_to(root)
                dirs[:] = sorted(x for x in dirs if not x.startswith(".") and x != "__pycache__"
                                 and not (is_stdlib and rel == Path(".") and x in STDLIB_SKIP))
                fixture = not is_stdlib and any(p in FIXTURE_DIRS for p in rel.parts)
                for n in names:
                    if n.endswith(".py") or (n.endswith(PROSE_SUFFIXES) and not fixture):
                        files.append((Path(d) / n, f"{prefix}/{(rel / n).as_posix()}"))
        for path, name in files:
            try:
                st = path.stat()
            except OSError:
                continue
            if path.is_symlink() or not path.is_file() or st.st_size == 0 or st.st_size > MAX_FILE_BYTES:
                continue
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            is_py = name.endswith(".py")
            dom = "code" if is_py else "prose"
            cands.setdefault(name, _Candidate(name, st.st_size, path=path, domain=dom, python=is_py))
    if not cands:
        raise CorpusError(f"data.packages: no Python source found in {cfg.packages}; list packages "
                          "installed here (e.g. stdlib, torch)")
    return list(cands.values()), "python-env: " + ", ".join(source)


def _user_candidates(cfg: DataConfig) -> tuple[list[_Candidate], str]:
    path = Path(cfg.corpus).expanduser()
    if not path.exists():
        raise CorpusError(f"{path}: corpus not found; set data.corpus to an existing .txt file, folder, "
                          ".jsonl or .parquet file, or to python-env")
    if not path.is_dir():
        _check_name(path.name, path)  # the documents of a single file are named after it
    if path.is_dir():
        cands = _folder_candidates(path, cfg.text_field)
    elif path.name.lower().endswith(RECORD_SUFFIXES):
        cands = _record_candidates(path, cfg.text_field, path.name)
    else:
        text = _file_text(path, str(path), "save it as UTF-8")
        if not text.strip():
            raise CorpusError(f"{path}: the file is empty (no text); point data.corpus at a file with text")
        cands = [_Candidate(path.name, len(text.encode()), text)]
    return cands, f"corpus: {cfg.corpus}"


def _folder_candidates(root: Path, text_field: str) -> list[_Candidate]:
    cands = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith(".") and x != "__pycache__")
        for n in sorted(names):
            p = Path(d) / n
            if n.startswith(".") or p.is_symlink() or not p.is_file():
                continue
            rel = p.relative_to(root).as_posix()
            _check_name(rel, p)
            if n.lower().endswith(RECORD_SUFFIXES):  # shards of records, read as the single files are
                if p.stat().st_size:  # a shard without text adds nothing, as an empty text file
                    cands += _record_candidates(p, text_field, rel, shard=True)
                continue
            text = _file_text(p, str(p), f"convert it to UTF-8 or remove it from {root}")
            if text:
                cands.append(_Candidate(rel, len(text.encode()), text))
    if not cands:
        raise CorpusError(f"{root}: the folder holds no text (no non-empty, non-hidden files; symbolic links are "
                          "skipped); add UTF-8 text files or point data.corpus elsewhere")
    return cands


def _check_name(name: str, path: Path) -> None:
    """A document's name is hashed as UTF-8: a file name in another encoding is refused."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", errors="backslashreplace")
        raise CorpusError(f"{shown}: the file name is not valid UTF-8; rename it (documents are named by their "
                          "path)") from None


def _utf8_size(text: str, where: str, what: str) -> int:
    """UTF-8 bytes of a record's string; a lone surrogate (JSON's "\\ud83d" escape alone) is no Unicode."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise CorpusError(f"{where}: {what} holds {text[e.start]!r} at character {e.start}, half of a surrogate "
                          "pair (not Unicode text); fix its escapes (one emoji is \\ud83d\\ude00) or drop the "
                          "record") from None


def _domain_value(dom: object, where: str) -> str:
    """A record's optional 'domain' field: a non-empty string, or an integer as its decimal text (labels
    0, 1, 2); missing, null or empty: "text". Any other value is refused (it was merged into "text")."""
    if dom is None or dom == "":
        return "text"
    if isinstance(dom, int) and not isinstance(dom, bool):
        return str(dom)
    if not isinstance(dom, str):
        raise CorpusError(f"{where}: field 'domain' is {type(dom).__name__} ({dom!r}); a domain is a string or "
                          "an integer label; fix the value or drop the field")
    return dom


def _record_candidates(path: Path, text_field: str, name: str, shard: bool = False) -> list[_Candidate]:
    """The records of a .jsonl/.ndjson or .parquet file, named ``<name>:<line or row>``; a file without
    text is refused unless it is one `shard` of a folder (the folder as a whole must hold text)."""
    read = _parquet_candidates if path.name.lower().endswith(".parquet") else _jsonl_candidates
    return read(path, text_field, name, shard)


def _jsonl_candidates(path: Path, text_field: str, name: str, shard: bool = False) -> list[_Candidate]:
    data = path.read_bytes()
    try:
        whole = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CorpusError(f"{path}:{line}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} at byte "
                          f"offset {e.start}); re-encode the file as UTF-8") from None
    cands = []
    for i, line in enumerate(whole.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{i}: invalid JSON ({e.msg} at column {e.colno}); each line must be "
                              "one JSON object such as {\"" + text_field + "\": \"...\"}") from None
        if not isinstance(rec, dict):
            raise CorpusError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}; each line must "
                              "be one JSON object such as {\"" + text_field + "\": \"...\"}")
        if text_field not in rec:
            have = ", ".join(map(repr, rec)) or "(none)"
            raise CorpusError(f"{path}:{i}: no field {text_field!r} (fields there: {have}); set "
                              "data.text_field to the field holding the text")
        text = rec[text_field]
        if not isinstance(text, str):
            raise CorpusError(f"{path}:{i}: field {text_field!r} is {type(text).__name__}, not a string; "
                              "set data.text_field to a field holding text")
        if text:
            dom = _domain_value(rec.get("domain") if text_field != "domain" else None, f"{path}:{i}")  # as .parquet
            _utf8_size(dom, f"{path}:{i}", "field 'domain'")
            size = _utf8_size(text, f"{path}:{i}", f"field {text_field!r}")
            cands.append(_Candidate(f"{name}:{i}", size, text, domain=dom))
    if not cands and not shard:
        raise CorpusError(f"{path}: no text (the file has no non-empty {text_field!r} values); "
                          "point data.corpus at a file with text")
    return cands


def _parquet_candidates(path: Path, text_field: str, name: str, shard: bool = False) -> list[_Candidate]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CorpusError(f"{path}: not a readable Parquet file ({e}); check or re-export it") from None
    if text_field not in schema.names:
        raise CorpusError(f"{path}: no column {text_field!r} (columns there: {', '.join(schema.names)}); "
                          "set data.text_field to the column holding the text")
    typ = schema.field(text_field).type
    if not _is_text_type(typ):
        raise CorpusError(f"{path}: column {text_field!r} has type {typ}, not string; set data.text_field "
                          "to a text column")
    cols = [text_field] + (["domain"] if "domain" in schema.names and text_field != "domain" else [])
    table = pq.read_table(path, columns=cols)
    texts = _column_values(table, text_field, path)
    doms = _column_values(table, "domain", path) if len(cols) > 1 else [None] * len(texts)
    cands = [_Candidate(f"{name}:{i}", len(t.encode()), t, domain=_domain_value(d, f"{path}, row {i}"))
             for i, (t, d) in enumerate(zip(texts, doms, strict=True)) if t]
    if not cands and not shard:
        raise CorpusError(f"{path}: no text (column {text_field!r} is empty); point data.corpus at a "
                          "file with text")
    return cands


def _is_text_type(typ) -> bool:
    """string, large_string, string_view, or a dictionary of one of them (a pandas Categorical)."""
    import pyarrow as pa

    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


def _column_values(table, column: str, path: Path) -> list:
    """A Parquet column as Python values; string bytes that are not UTF-8 are refused, naming the column."""
    try:
        return table.column(column).to_pylist()
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: column {column!r} holds text that is not UTF-8 (invalid byte "
                          f"0x{e.object[e.start]:02x}); re-export the file with UTF-8 text") from None


# -----------------------------------------------------------------------------------------------
# ordering, cap, split, fingerprint


def _digest(seed: int, name: str) -> bytes:
    return hashlib.sha1(f"{seed}:{name}".encode()).digest()


def _split_value(d: bytes) -> float:
    return int.from_bytes(d[8:16], "big") / 2**64


def _cut_at_line(text: str, max_bytes: int) -> str:
    """The longest prefix of whole lines within max_bytes (at least something if possible)."""
    head = text.encode()[:max_bytes].decode("utf-8", errors="ignore")
    nl = head.rfind("\n")
    return head[: nl + 1] if nl >= 0 else head


def corpus_documents(cfg: DataConfig) -> tuple[list[Document], dict]:
    """The corpus as an ordered list of documents with their split, and its fingerprint.

    Deterministic for a given corpus and ``(seed, max_mb, val_fraction)``; reads only the files
    it takes (python-env orders files by name before reading them).
    """
    if cfg.corpus == "python-env":
        cands, source = _python_env_candidates(cfg)
    else:
        cands, source = _user_candidates(cfg)
    digests = {c.name: _digest(cfg.seed, c.name) for c in cands}
    cands.sort(key=lambda c: (digests[c.name][:8], c.name))
    budget = int(cfg.max_mb * MB)
    where = "data.packages" if cfg.corpus == "python-env" else str(cfg.corpus)

    taken: list[_Candidate] = []
    used = 0
    for c in cands:
        if used + c.size > budget and taken:
            continue
        if c.text is None:
            try:
                c.text = c.path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # python-env: unreadable or non-UTF-8 (a latin-1 test file) is skipped
            c.size = len(c.text.encode())
        if used + c.size > budget:
            if taken:
                continue
            c.text = _cut_at_line(c.text, budget)  # not even the first document fits: cut it
            c.size = len(c.text.encode())
            if not c.text:
                continue
        taken.append(c)
        used += c.size
    if not taken:
        raise CorpusError(f"{where}: no text within data.max_mb={cfg.max_mb}; raise data.max_mb")

    docs: list[Document] = []
    if len(taken) == 1:
        c = taken[0]
        lines = c.text.splitlines(keepends=True)
        if len(lines) < 2:
            raise CorpusError(f"{where}: corpus too small for a validation split (one document of one "
                              "line); add text, more documents, or raise data.max_mb")
        target = (1 - cfg.val_fraction) * c.size
        sizes = list(itertools.accumulate(len(line.encode()) for line in lines))
        k = min(range(1, len(lines)), key=lambda j: abs(sizes[j - 1] - target))
        head, tail = "".join(lines[:k]), "".join(lines[k:])
        docs = [Document(c.name, "train", head, c.domain, c.python),
                Document(c.name, "val", tail, c.domain, c.python)]
    else:
        u = {c.name: _split_value(digests[c.name]) for c in taken}
        val = {c.name for c in taken if u[c.name] < cfg.val_fraction}
        if not val:
            val = {min(taken, key=lambda c: u[c.name]).name}
        if len(val) == len(taken):
            val.discard(max(taken, key=lambda c: u[c.name]).name)
        docs = [Document(c.name, "val" if c.name in val else "train", c.text, c.domain, c.python)
                for c in taken]
        share = sum(c.size for c in taken if c.name in val) / max(1, sum(c.size for c in taken))
        if share > 2 * cfg.val_fraction + 0.05:  # a few large documents: the split is by document, not by byte
            note_once(f"note: {where}: the validation split holds {share:.0%} of the text ({len(val)} of "
                      f"{len(taken)} documents: data.val_fraction={cfg.val_fraction:g} holds out about that share "
                      "of the documents, not of the bytes); training sees the rest only: split large files into "
                      "more documents, or lower data.val_fraction")

    sha = hashlib.sha256(f"sparsinglaw-data-v{DATA_VERSION}\n".encode())
    nbytes = 0
    for d in docs:
        b = d.text.encode()
        nbytes += len(b)
        sha.update(f"{d.name}\0{d.split}\0{d._rule()}\0{len(b)}\0".encode())
        sha.update(b)
    fingerprint = {"source": source, "files": len(taken), "bytes": nbytes, "sha256": sha.hexdigest()}
    return docs, fingerprint


def corpus_domains(cfg: DataConfig, docs: list[Document]) -> list[str]:
    """Domain id -> name: ["code", "prose"] for python-env, else the sorted domain values."""
    if cfg.corpus == "python-env":
        return list(PY_DOMAINS)
    return sorted({d.domain for d in docs})


# -----------------------------------------------------------------------------------------------
# tokenizer and token files


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """Smallest unsigned dtype holding every token id: uint16 up to 65536 tokens, else uint32."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def train_tokenizer(texts: Iterator[str], vocab_size: int, where: str = "corpus"):
    """Byte-level BPE with ``<|endoftext|>`` (id 0) and exactly ``vocab_size`` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    got = tok.get_vocab_size()
    if got != vocab_size:
        raise CorpusError(f"{where}: the tokenizer text only supports {got} tokens, not data.vocab_size="
                          f"{vocab_size}; lower data.vocab_size (to at most {got}) or use more text "
                          "(data.max_mb, data.tokenizer_mb)")
    tok.encode_special_tokens = True  # a literal "<|endoftext|>" in the text is text, not a separator
    return tok


def _tokenizer_texts(docs: list[Document], budget: int) -> Iterator[str]:
    """The first ``budget`` bytes of training text, document by document."""
    left = budget
    for d in docs:
        if d.split != "train" or not d.text:
            continue
        if left <= 0:
            return
        b = len(d.text.encode())
        yield d.text if b <= left else d.text.encode()[:left].decode("utf-8", errors="ignore")
        left -= b


def segment_documents(docs: list[Document], workers: int | None = None) -> list[list[tuple[str, str]]]:
    """``doc.segments`` for every document; Python sources are tagged in parallel processes.

    ``tokenize`` runs at ~3 MB/s per core (the cpu corpus's 30M characters of Python in about 10.5 s), so
    above PARALLEL_SEGMENT_BYTES of Python text the tagging is spread over ``workers`` processes (default:
    the CPU count; serial inside a daemonic pool worker, which may have no children). They start from a
    forkserver (spawned where there is none), never by forking this process, which may hold other threads (a
    notebook kernel's, pyarrow's allocator, tqdm's monitor) whose locks a fork would copy held; Python 3.12+
    warns that such a child may deadlock. As with every start method but fork, a script that calls this (or
    trains runs in parallel, see ``runs.run_parallel``) must guard its entry point with ``if __name__ ==
    "__main__":``, because each worker imports the script's main module. Killed outright (SIGKILL, the OOM
    killer), this process takes the workers with it (``exit_with_parent``), and so their forkserver, which
    ends after its last worker (each holds its end of the pipe that keeps it alive).
    """
    py = [i for i, d in enumerate(docs) if d.python]
    out: list = [None if d.python else d.segments for d in docs]
    workers = workers or usable_cores()
    py_bytes = sum(len(docs[i].text) for i in py)
    if workers > 1 and py_bytes > PARALLEL_SEGMENT_BYTES and not mp.current_process().daemon:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=exit_with_parent,
                                 initargs=(method,)) as pool:
            texts = (docs[i].text for i in py)
            for i, segs in zip(py, pool.map(python_segments, texts, chunksize=16), strict=True):
                out[i] = segs
    else:
        for i in py:
            out[i] = docs[i].segments
    return out


def encode_documents(tok, segmented: list[list[tuple[str, str]]], domains: list[str], dtype, bar=None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(token ids, domain ids) per chunk of documents, each document followed by ``<|endoftext|>``.

    ``segmented`` holds each document's ``[(text, domain), ...]``. Segments are encoded with
    ``encode_batch_fast`` over ~ENCODE_CHUNK_BYTES of text at a time (one Rust call, threads inside);
    the separator takes the domain of its document's last segment. ``bar`` advances by characters.
    """
    eot = tok.token_to_id(EOT)
    dom_id = {name: i for i, name in enumerate(domains)}

    def flush(chunk):
        texts = [text for segs in chunk for text, _ in segs]
        encs = tok.encode_batch_fast(texts, add_special_tokens=False)
        pieces, piece_dom = [], []
        j = 0
        for segs in chunk:
            for _, dom in segs:
                pieces.append(encs[j].ids)
                piece_dom.append(dom_id[dom])
                j += 1
            pieces.append([eot])
            piece_dom.append(dom_id[segs[-1][1]] if segs else 0)
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        ids = np.fromiter(itertools.chain.from_iterable(pieces), dtype=dtype, count=int(lengths.sum()))
        doms = np.repeat(np.asarray(piece_dom, dtype=np.uint8), lengths)
        return ids, doms

    chunk, size = [], 0
    for segs in segmented:
        chunk.append(segs)
        size += sum(len(t) for t, _ in segs)
        if size >= ENCODE_CHUNK_BYTES:
            yield flush(chunk)
            if bar is not None:
                bar.update(size)
            chunk, size = [], 0
    if chunk:
        yield flush(chunk)
        if bar is not None:
            bar.update(size)


# -----------------------------------------------------------------------------------------------
# the cache


@dataclass
class TokenData:
    root: Path  # cache folder holding the files below
    train: np.ndarray  # token ids (np.memmap, uint16 or uint32)
    val: np.ndarray
    train_domain: np.ndarray  # np.memmap uint8, domain id of each token of train
    val_domain: np.ndarray
    domains: list[str]  # domain id -> name
    vocab_size: int
    eot: int  # id of <|endoftext|>, placed after every document
    fingerprint: dict  # {"source", "files", "bytes", "sha256"}
    tokenizer_path: Path
    _meta: dict = field(default_factory=dict, repr=False, compare=False)
    _tok: object = field(default=None, repr=False, compare=False)

    def tokenizer(self):
        """The trained ``tokenizers.Tokenizer`` (literal "<|endoftext|>" text encodes as text)."""
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(self.tokenizer_path))
            self._tok.encode_special_tokens = True
        return self._tok

    def meta(self) -> dict:
        """Provenance: fingerprint, vocabulary, token counts per split and domain (no timings)."""
        return {k: v for k, v in self._meta.items() if k != "timings"}


def _memmap(path: Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _load(root: Path, meta: dict) -> TokenData:
    dtype = np.dtype(meta["dtype"])
    return TokenData(
        root=root, train=_memmap(root / "train.bin", dtype), val=_memmap(root / "val.bin", dtype),
        train_domain=_memmap(root / "train.dom", np.uint8), val_domain=_memmap(root / "val.dom", np.uint8),
        domains=list(meta["domains"]), vocab_size=int(meta["vocab_size"]), eot=int(meta["eot"]),
        fingerprint=dict(meta["fingerprint"]), tokenizer_path=root / "tokenizer.json", _meta=meta)


def _build_key(cfg: DataConfig, fingerprint: dict) -> dict:
    return {"data_version": DATA_VERSION, "sha256": fingerprint["sha256"], "vocab_size": cfg.vocab_size,
            "tokenizer_mb": cfg.tokenizer_mb}


def _read_meta(root: Path, key: dict, say: bool = False) -> dict | None:
    """The cache's meta.json when the cache is complete and built for ``key``, else None (then it is rebuilt);
    ``say``: note an array file whose size disagrees with meta.json, or that holds an id out of range (once,
    by the process that rebuilds)."""
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("build_key") != key:
        return None
    if not all((root / f).is_file() for f in CACHE_FILES):
        return None
    try:
        bad = _wrong_size(root, meta)
        value = _out_of_range(root, meta) if bad is None else None
    except (OSError, KeyError, TypeError, ValueError):  # a meta.json without token counts: unreadable, as above
        return None
    if bad is not None:
        if say:
            note_once(f"note: {root / bad[0]} holds {bad[1]} bytes where meta.json counts {bad[2]} (a cut or "
                      "damaged token cache): building the cache again")
        return None
    if value is not None:
        if say:
            note_once(f"note: {root / value[0]} holds the id {value[1]}, outside its {value[2]} (a damaged token "
                      "cache): building the cache again")
        return None
    return meta


def _out_of_range(root: Path, meta: dict) -> tuple[str, int, str] | None:
    """(file, id, what it must lie in) of the first array holding an id no token or domain has (bytes
    overwritten in place, which the sizes do not show; the model would stop at its embedding), else None.
    One pass over each array (a max: ~1 ms for 10M tokens read from the page cache); other same-size damage
    goes unseen."""
    n_dom = len(meta["domains"])
    for name, limit, what in (("train.bin", meta["vocab_size"], "vocabulary of {n}"),
                              ("val.bin", meta["vocab_size"], "vocabulary of {n}"),
                              ("train.dom", n_dom, "{n} domain(s)"), ("val.dom", n_dom, "{n} domain(s)")):
        arr = _memmap(root / name, np.dtype(meta["dtype"]) if name.endswith(".bin") else np.uint8)
        top = int(arr.max()) if len(arr) else -1
        del arr
        if top >= int(limit):
            return name, top, what.format(n=limit)
    return None


def _array_bytes(meta: dict) -> dict[str, int]:
    """The size meta.json implies for each token and domain array: its split's token count times the item size."""
    item = np.dtype(meta["dtype"]).itemsize
    return {f"{split}.{ext}": int(meta["tokens"][split]) * size
            for split in ("train", "val") for ext, size in (("bin", item), ("dom", 1))}


def _wrong_size(root: Path, meta: dict) -> tuple[str, int, int] | None:
    """(file, bytes, expected) of the first array whose size is not what meta.json counts, else None (stat only,
    no hashing: a cut or overwritten file is caught; of a same-size corruption, only ids out of range are:
    _out_of_range)."""
    for name, n in _array_bytes(meta).items():
        size = (root / name).stat().st_size
        if size != n:
            return name, size, n
    return None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Sync a file's bytes or a folder's entries to disk (after a rename into it), so that what a later
    write commits survives a power cut: meta.json here, a checkpoint's sidecar in train. Best effort: where
    the platform cannot open a folder (Windows) or the file system refuses to sync one, the write is done
    all the same, only not yet durable."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_temps(root: Path) -> None:
    """Delete the ``<cache file>.tmp.<pid>`` files of builds killed mid-way. Called under the folder's lock, which
    every writer of these files holds while it writes: any such file left is a dead build's, whatever its pid."""
    names = (*CACHE_FILES, "meta.json")
    for path in root.iterdir():
        name, _, pid = path.name.rpartition(".tmp.")
        if name in names and pid.isdigit():
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare(cfg: DataConfig, cache_dir: Path, progress: bool = True) -> TokenData:
    """Tokenized corpus for ``cfg``, built once under ``cache_dir`` and reused afterwards.

    The fingerprint is recomputed on every call (it reads the corpus files, seconds at most);
    a complete cache (meta.json present, written last, and arrays of the sizes it counts, with no id outside
    the vocabulary or the domains) with the same
    fingerprint, vocabulary and tokenizer budget is reused. An fcntl lock in ``cache_dir`` keeps two
    processes from building the same cache at once: the second waits and then reuses the first one's files.
    """
    cache_dir = Path(cache_dir)
    t0 = time.perf_counter()
    docs, fingerprint = corpus_documents(cfg)
    t_scan = time.perf_counter() - t0
    key = _build_key(cfg, fingerprint)
    root = cache_dir / f"{fingerprint['sha256'][:12]}-v{cfg.vocab_size}-t{cfg.tokenizer_mb:g}"
    meta = _read_meta(root, key)
    if meta is not None:
        return _load(root, _this_call(meta, cfg, fingerprint))
    with _locked(cache_dir / f"{root.name}.lock"):
        meta = _read_meta(root, key, say=True)
        if meta is None:
            fresh = not root.exists()
            try:
                meta = _build(cfg, docs, fingerprint, key, root, progress, t_scan)
            except BaseException:
                if fresh:  # a failed first build (a corpus too small for the vocabulary) leaves nothing
                    shutil.rmtree(root, ignore_errors=True)
                raise
    return _load(root, _this_call(meta, cfg, fingerprint))


def _data_settings(cfg: DataConfig) -> dict:
    return {"corpus": cfg.corpus, "packages": list(cfg.packages) if cfg.corpus == "python-env" else [],
            "max_mb": cfg.max_mb, "val_fraction": cfg.val_fraction, "seed": cfg.seed, "text_field": cfg.text_field}


def _this_call(meta: dict, cfg: DataConfig, fingerprint: dict) -> dict:
    """meta.json with the fingerprint and data settings of this call: a cache is shared by every config that
    selects the same text (a moved corpus, a larger cap), and its "source" names whichever built it."""
    return {**meta, "fingerprint": fingerprint, "data": _data_settings(cfg)}


def _build(cfg: DataConfig, docs: list[Document], fingerprint: dict, key: dict, root: Path,
           progress: bool, t_scan: float) -> dict:
    from tqdm import tqdm

    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").unlink(missing_ok=True)  # an incomplete or stale build is redone
    _remove_temps(root)
    where = "data.packages" if cfg.corpus == "python-env" else str(cfg.corpus)
    domains = corpus_domains(cfg, docs)
    if len(domains) > 256:
        raise CorpusError(f"{where}: {len(domains)} distinct 'domain' values; at most 256 fit the uint8 "
                          "domain arrays; merge domains or drop the 'domain' field")

    t0 = time.perf_counter()
    segmented = segment_documents(docs)  # code/prose tags, in parallel processes
    t_seg = time.perf_counter() - t0

    t0 = time.perf_counter()
    budget = int(cfg.tokenizer_mb * MB)
    tok = train_tokenizer(_tokenizer_texts(docs, budget), cfg.vocab_size, where)
    tmp = root / f"tokenizer.json.tmp.{os.getpid()}"
    tok.save(str(tmp))
    fsync_path(tmp)
    os.replace(tmp, root / "tokenizer.json")
    t_bpe = time.perf_counter() - t0

    t0 = time.perf_counter()
    dtype = token_dtype(cfg.vocab_size)
    tokens: dict[str, int] = {}
    domain_tokens: dict[str, dict[str, int]] = {}
    n_docs: dict[str, int] = {}
    total = sum(len(d.text) for d in docs)
    with tqdm(total=total, unit="char", unit_scale=True, desc="tokenizing", disable=not progress) as bar:
        for split in ("train", "val"):
            part = [segs for d, segs in zip(docs, segmented, strict=True) if d.split == split]
            n_docs[split] = len(part)
            counts = np.zeros(len(domains), dtype=np.int64)
            tmp_bin = root / f"{split}.bin.tmp.{os.getpid()}"
            tmp_dom = root / f"{split}.dom.tmp.{os.getpid()}"
            n = 0
            with open(tmp_bin, "wb") as fb, open(tmp_dom, "wb") as fd:
                for ids, doms in encode_documents(tok, part, domains, dtype, bar):
                    ids.tofile(fb)
                    doms.tofile(fd)
                    counts += np.bincount(doms, minlength=len(domains))
                    n += len(ids)
            fsync_path(tmp_bin)
            fsync_path(tmp_dom)
            os.replace(tmp_bin, root / f"{split}.bin")
            os.replace(tmp_dom, root / f"{split}.dom")
            tokens[split] = n
            domain_tokens[split] = {name: int(c) for name, c in zip(domains, counts, strict=True)}
    t_enc = time.perf_counter() - t0

    meta = {
        "build_key": key,
        "fingerprint": fingerprint,
        "vocab_size": cfg.vocab_size,
        "eot": tok.token_to_id(EOT),
        "dtype": np.dtype(dtype).name,
        "domains": domains,
        "documents": n_docs,
        "tokens": tokens,
        "domain_tokens": domain_tokens,
        "tokenizer_mb": cfg.tokenizer_mb,
        "data": _data_settings(cfg),
        "timings": {"scan_s": round(t_scan, 2), "tag_s": round(t_seg, 2), "bpe_s": round(t_bpe, 2),
                    "encode_s": round(t_enc, 2)},
    }
    _atomic_write_text(root / "meta.json", json.dumps(meta, indent=2, sort_keys=True))
    return meta


# -----------------------------------------------------------------------------------------------
# batches


def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator
              ) -> tuple[Tensor, Tensor]:
    """Random windows: x = tokens[s:s+T], y = tokens[s+1:s+T+1] as int64 (B, T) tensors. The starts are
    drawn with replacement, so windows repeat even under one pass over the split (window_coverage)."""
    high = len(tokens) - seq_len - 1
    if high < 1:
        raise CorpusError(f"a split of {len(tokens)} tokens is too short for windows of seq_len={seq_len} "
                          f"(needs at least {seq_len + 2}); lower model.seq_len or raise data.max_mb")
    starts = torch.randint(0, high, (batch_size,), generator=generator).numpy()
    idx = starts[:, None] + np.arange(seq_len + 1)
    buf = torch.from_numpy(np.asarray(tokens[idx]).astype(np.int64))
    return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()


def window_coverage(passes: float) -> tuple[float, float]:
    """(seen, repeated) after a run draws `passes` times its split's length in random windows (get_batch):
    a token misses each of the k windows of T tokens with chance 1 - T/n, so it is still unseen with chance
    (1 - T/n)^k ~ exp(-kT/n) = exp(-passes); seen = 1 - exp(-passes) of the split, and repeated =
    1 - seen / passes of the tokens drawn are text the run had already seen (the paper's runs: none)."""
    if passes <= 0:
        return 0.0, 0.0
    seen = -np.expm1(-passes)
    return float(seen), float(1.0 - seen / passes)


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_tokens: int,
                 domain: np.ndarray | None = None
                 ) -> Iterator[tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]]:
    """Contiguous, non-overlapping windows from the start of ``tokens``, batched.

    The windows hold ``min(max_tokens, len(tokens) - 1) // seq_len * seq_len`` target tokens
    (y of window i is tokens[i*T+1 : i*T+T+1]); the last batch may be smaller. When ``domain``
    (the split's aligned domain array) is given, each batch also carries the (B, T) int64 domain
    ids of its targets.
    """
    n_windows = min(max_tokens, len(tokens) - 1) // seq_len
    if n_windows < 1:
        raise CorpusError(f"a split of {len(tokens)} tokens has no full window of seq_len={seq_len} "
                          "(and max_tokens must be >= seq_len); lower model.seq_len or raise data.max_mb")
    if domain is not None and len(domain) != len(tokens):
        raise ValueError(f"domain array has {len(domain)} entries for {len(tokens)} tokens")
    for w0 in range(0, n_windows, batch_size):
        w1 = min(n_windows, w0 + batch_size)
        lo, hi = w0 * seq_len, w1 * seq_len
        x = torch.from_numpy(np.asarray(tokens[lo:hi]).astype(np.int64)).view(-1, seq_len)
        y = torch.from_numpy(np.asarray(tokens[lo + 1:hi + 1]).astype(np.int64)).view(-1, seq_len)
        if domain is None:
            yield x, y
        else:
            yield x, y, torch.from_numpy(np.asarray(domain[lo + 1:hi + 1]).astype(np.int64)).view(-1, seq_len)
