"""Streaming reader for JSONL corpora (plain or gzip), line by line, with byte-accurate progress.

Preprocessing must handle C4-sized inputs (1024 gzip shards of ~300 MB each) in constant memory
and must survive bad input: one unreadable line or a truncated gzip member must cost that line or
the rest of that file, not the run. This module only finds files and yields raw lines; parsing
and validation happen in :mod:`megatron_pause.data.preprocess`, which counts every rejection.

Files are recognised as gzip by their magic bytes, not their name, so ``.json.gz``, ``.jsonl.gz``
and mislabelled files all work. Progress is measured in bytes of the file *as stored*
(compressed bytes for gzip), which is what is known up front for an ETA.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

# Extensions picked up when --input is a folder.
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.gzip", ".json.gzip")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class RawLine:
    """One input line: its 1-based number, its bytes (without the newline), or a problem."""

    line_number: int
    data: bytes | None  # None when the line could not be read (see ``problem``)
    problem: str | None = None  # "line_too_long" | "corrupt_input"
    detail: str = ""


def resolve_inputs(inputs: str | list[str]) -> list[str]:
    """Expand files, globs and folders into a sorted, de-duplicated list of files.

    Sorted order makes output order (and so the output bytes) independent of the file system's
    listing order. Raises FileNotFoundError when nothing matches, naming what was given.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    files: list[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = sorted(
                os.path.join(spec, name)
                for name in os.listdir(spec)
                if name.endswith(JSONL_SUFFIXES) and os.path.isfile(os.path.join(spec, name))
            )
            if not found:
                raise FileNotFoundError(f"--input folder {spec} has no {'/'.join(JSONL_SUFFIXES)} files")
            files.extend(found)
        elif os.path.exists(spec):
            files.append(spec)  # a regular file, or a pipe such as /dev/stdin
        else:
            found = sorted(p for p in glob.glob(spec) if os.path.exists(p) and not os.path.isdir(p))
            if not found:
                raise FileNotFoundError(f"--input {spec!r} matches no file")
            files.extend(found)
    unique: list[str] = []
    seen: set[str] = set()
    for path in files:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(path)
    return unique


def shard_name(path: str) -> str:
    """A file's name without its JSONL/gzip suffixes: ``c4-train.00000-of-01024.json.gz`` ->
    ``c4-train.00000-of-01024``; used to name per-shard outputs."""
    name = os.path.basename(path)
    for suffix in (".gzip", ".gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for suffix in (".jsonl", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name


def _stored_size(path: str) -> int:
    """Size on disk, or 0 for pipes (no ETA then)."""
    st = os.stat(path)
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


class JsonlFile:
    """Iterate the lines of one (possibly gzip) file, tracking stored bytes consumed.

    Lines longer than ``max_line_bytes`` are skipped without being held in memory: they are
    read and dropped in ``max_line_bytes`` pieces and reported as ``line_too_long``. A corrupt or
    truncated gzip stream ends the file with one ``corrupt_input`` line.
    """

    def __init__(self, path: str, max_line_bytes: int = 256 << 20, buffer_size: int = 1 << 20):
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.size = _stored_size(path)
        self._raw = open(path, "rb", buffering=buffer_size)
        # peek, not read: the input may be a pipe that cannot be reopened or rewound.
        gzipped = self._raw.peek(2)[:2] == _GZIP_MAGIC
        self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb") if gzipped else self._raw
        self._seekable = self._raw.seekable()

    @property
    def stored_bytes_read(self) -> int:
        return self._raw.tell() if self._seekable else 0

    def close(self) -> None:
        if self._stream is not self._raw:
            self._stream.close()
        self._raw.close()

    def __enter__(self) -> JsonlFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[RawLine]:
        limit = self.max_line_bytes
        readline = self._stream.readline
        number = 0
        while True:
            try:
                line = readline(limit)
            except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
                yield RawLine(number + 1, None, "corrupt_input", f"{type(exc).__name__}: {exc}")
                return
            if not line:
                return
            number += 1
            if len(line) >= limit and not line.endswith(b"\n"):
                # Drain the rest of the over-long line piecewise so memory stays bounded.
                total = len(line)
                try:
                    while line and not line.endswith(b"\n"):
                        line = readline(limit)
                        total += len(line)
                except (OSError, EOFError, zlib.error) as exc:
                    yield RawLine(number, None, "corrupt_input", f"{type(exc).__name__}: {exc}")
                    return
                yield RawLine(number, None, "line_too_long", f"{total} bytes > --max-line-bytes {limit}")
                continue
            yield RawLine(number, line.rstrip(b"\r\n"))


def iter_records(paths: list[str], max_line_bytes: int = 256 << 20) -> Iterator[dict]:
    """Every well-formed JSON object of the files, in order, silently skipping what is not one.

    For the side readers (Punkt training, tokenizer training) that only need clean samples of
    the text; the preprocessing pass itself counts and reports every rejected line instead.
    """
    for path in paths:
        with JsonlFile(path, max_line_bytes) as f:
            for raw in f:
                if raw.data is None:
                    continue
                try:
                    record = json.loads(raw.data)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record
