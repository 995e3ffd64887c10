#!/usr/bin/env python
"""Make a small real-text corpus, in C4's JSONL format, from the Python standard library.

Why: tests, examples and the built-in default run need real English text (sentences, code
snippets, punctuation, abbreviations) that may ship in the repository. The standard library's
docstrings and source comments are exactly that and are PSF-licensed (see examples/data/LICENSE.md).
Nothing is downloaded: the text is read from the running interpreter's own ``Lib`` folder.

The output is deterministic for a given Python version: files are visited in sorted order,
paragraphs are grouped into documents of C4-like length, and the documents are ordered by a hash,
so the file looks like a shuffled web crawl but is reproducible byte for byte (gzip mtime is 0).

``--target-bytes`` larger than the natural size (a few MB) builds a bigger benchmark corpus by
re-sampling paragraphs into new documents with a seeded generator; that is what
``benchmarks/bench_preprocess.py`` uses for its ~100 MB corpus.

Usage:
    python tools/make_sample_corpus.py --output examples/data/sample_corpus.jsonl.gz
    python tools/make_sample_corpus.py --output /tmp/big.jsonl --target-bytes 100000000 --seed 1
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import inspect
import io
import json
import os
import random
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass

# Folders of the standard library whose text is test data or generated tables rather than prose.
_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "encodings",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
}
# Comment lines that are boilerplate rather than prose.
_SKIP_COMMENT_PREFIXES = ("!", "-*-", "coding", "Copyright", "copyright", "type:", "noqa", "pragma", "fmt:")

DEFAULT_TARGET_BYTES = 3_000_000
# C4 documents are a few hundred to a few thousand characters; we aim for the same spread.
MIN_DOC_CHARS = 300
MAX_DOC_CHARS = 4000


@dataclass(frozen=True)
class Paragraph:
    module_path: str  # path relative to the stdlib root, with '/' separators
    text: str


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def iter_stdlib_files(root: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                yield os.path.join(dirpath, name)


def _split_paragraphs(text: str) -> list[str]:
    out = []
    for block in text.split("\n\n"):
        block = block.strip("\n")
        if block.strip():
            out.append(block)
    return out


def _docstrings(tree: ast.AST) -> Iterator[str]:
    nodes = [tree] + [
        n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    for node in nodes:
        doc = ast.get_docstring(node, clean=False)
        if doc:
            yield inspect.cleandoc(doc)


def _comment_blocks(source: str) -> Iterator[str]:
    """Runs of full-line comments, joined into one paragraph each (code comments are prose too)."""
    block: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped.lstrip("#").strip()
            if body and not body.startswith(_SKIP_COMMENT_PREFIXES) and any(c.isalpha() for c in body):
                block.append(body)
                continue
        if len(block) >= 2 or (block and len(block[0]) > 60):
            yield " ".join(block)
        block = []
    if len(block) >= 2:
        yield " ".join(block)


def collect_paragraphs(root: str) -> list[Paragraph]:
    paragraphs: list[Paragraph] = []
    for path in iter_stdlib_files(root):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are deliberately unparsable or not UTF-8
        for doc in _docstrings(tree):
            for para in _split_paragraphs(doc):
                if len(para) >= 40 and any(c.isalpha() for c in para):
                    paragraphs.append(Paragraph(rel, para))
        for comment in _comment_blocks(source):
            paragraphs.append(Paragraph(rel, comment))
    return paragraphs


def group_documents(paragraphs: list[Paragraph]) -> list[tuple[str, str]]:
    """Consecutive paragraphs of one module become documents of MIN..MAX_DOC_CHARS characters."""
    docs: list[tuple[str, str]] = []
    current: list[str] = []
    current_module = None
    size = 0

    def flush() -> None:
        nonlocal current, size
        if current and size >= MIN_DOC_CHARS:
            docs.append((current_module, "\n\n".join(current)))
        current, size = [], 0

    for para in paragraphs:
        if para.module_path != current_module:
            flush()
            current_module = para.module_path
        if size + len(para.text) > MAX_DOC_CHARS and current:
            flush()
        current.append(para.text[:MAX_DOC_CHARS])
        size += len(para.text) + 2
    flush()
    return docs


def _stable_hash(*parts: object) -> int:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(str(part).encode("utf-8"))
        h.update(b"\0")
    return int.from_bytes(h.digest(), "little")


def _timestamp(key: int) -> str:
    # C4's timestamps are crawl dates in April 2019; derive one per document so the field looks real.
    day = 15 + key % 12
    hour, minute, second = (key >> 8) % 24, (key >> 16) % 60, (key >> 24) % 60
    return f"2019-04-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"


def _record(module: str, index: int, text: str, version: str) -> dict[str, str]:
    key = _stable_hash(module, index, text)
    url = f"https://github.com/python/cpython/blob/v{version}/Lib/{module}#doc{index}"
    return {"text": text, "timestamp": _timestamp(key), "url": url}


def natural_records(root: str, target_bytes: int) -> list[dict[str, str]]:
    """Documents made of real consecutive paragraphs, hash-ordered, capped at ``target_bytes``."""
    version = ".".join(str(v) for v in sys.version_info[:3])
    docs = group_documents(collect_paragraphs(root))
    indexed = [(module, i, text) for i, (module, text) in enumerate(docs)]
    indexed.sort(key=lambda item: _stable_hash(item[0], item[1], item[2]))
    records, total = [], 0
    for module, i, text in indexed:
        rec = _record(module, i, text, version)
        total += len(json.dumps(rec, ensure_ascii=False).encode("utf-8")) + 1
        if total > target_bytes:
            break
        records.append(rec)
    return records


def resampled_records(root: str, target_bytes: int, seed: int) -> Iterator[dict[str, str]]:
    """Unbounded-size corpus: documents re-sampled from all paragraphs with a seeded generator.

    Each document draws consecutive paragraphs from a random position (so it reads like text),
    with a C4-like length drawn from a log-normal; every document is distinct. Streams: memory
    is the paragraph pool only.
    """
    version = ".".join(str(v) for v in sys.version_info[:3])
    paragraphs = collect_paragraphs(root)
    rng = random.Random(seed)
    total, index = 0, 0
    while total < target_bytes:
        want = int(min(max(rng.lognormvariate(7.3, 0.8), MIN_DOC_CHARS), 20 * MAX_DOC_CHARS))
        start = rng.randrange(len(paragraphs))
        parts, size, j = [], 0, start
        while size < want:
            text = paragraphs[j % len(paragraphs)].text
            parts.append(text)
            size += len(text) + 2
            j += 1 + (rng.random() < 0.3) * rng.randrange(1, 50)  # sometimes jump elsewhere
        rec = _record(paragraphs[start].module_path, index, "\n\n".join(parts), version)
        line_bytes = len(json.dumps(rec, ensure_ascii=False).encode("utf-8")) + 1
        total += line_bytes
        index += 1
        yield rec


def write_jsonl(records, output: str) -> tuple[int, int]:
    """Write records as JSONL (gzip when the name ends in .gz, with mtime 0 for reproducibility).
    Written to a temporary name and renamed, so an interrupted run leaves no partial corpus."""
    tmp = output + ".tmp"
    count = size = 0
    raw = open(tmp, "wb")
    try:
        stream = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9)
            if output.endswith(".gz")
            else raw
        )
        writer = io.BufferedWriter(stream, buffer_size=1 << 20) if stream is not raw else raw
        for rec in records:
            line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
            writer.write(line)
            count += 1
            size += len(line)
        writer.flush()
        if stream is not raw:
            stream.close()
        raw.close()
        os.replace(tmp, output)
    except BaseException:
        raw.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return count, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="output .jsonl or .jsonl.gz")
    parser.add_argument(
        "--target-bytes",
        type=int,
        default=DEFAULT_TARGET_BYTES,
        help="uncompressed size to aim for; above the natural size, documents are re-sampled",
    )
    parser.add_argument("--seed", type=int, default=1234, help="seed for re-sampling (big corpora only)")
    parser.add_argument("--resample", action="store_true", help="always re-sample (even for small targets)")
    parser.add_argument(
        "--stdlib", default=None, help="standard library folder (default: this interpreter's)"
    )
    args = parser.parse_args(argv)
    root = args.stdlib or stdlib_root()
    if args.resample or args.target_bytes > 2 * DEFAULT_TARGET_BYTES:
        records = resampled_records(root, args.target_bytes, args.seed)
    else:
        records = natural_records(root, args.target_bytes)
    count, size = write_jsonl(records, args.output)
    print(f"wrote {count} documents, {size / 1e6:.2f} MB uncompressed, to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
