"""Bad input is skipped, counted by reason and logged; it never crashes or stalls a run."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections import Counter

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_pause.data.preprocess import split_huge_text
from megatron_pause.data.sidecar import read_sidecar
from megatron_pause.tokenizer import build_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_MODEL = os.path.join(REPO, "examples", "data", "sample_tokenizer.model")

_spec = importlib.util.spec_from_file_location(
    "preprocess_data_cli", os.path.join(REPO, "tools", "preprocess_data.py")
)
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

HUGE = " ".join(f"word{i}" for i in range(900))  # ~7,000 characters
GOOD_1 = "A first good document.\nWith two lines."
GOOD_2 = "The last good document; it follows every kind of bad line."
# (raw line, expected reason or None for a good line); line numbers are 1-based positions.
LINES: list[tuple[bytes, str | None]] = [
    (json.dumps({"text": GOOD_1}).encode(), None),
    (b'{"text": "unterminated', "malformed_json"),
    (b"", "blank_line"),
    (json.dumps({"other": "no text key"}).encode(), "missing_key"),
    (b'{"text": 5}', "non_string_key"),
    (b'{"text": null}', "non_string_key"),
    (b'{"text": "bad \xff byte"}', "invalid_utf8"),
    (b'{"text": "lone \\ud800 surrogate"}', "invalid_utf8"),
    (b'{"text": ""}', "empty_document"),
    (b'{"text": "   \\n\\t  "}', "empty_document"),
    (b"[1, 2, 3]", "not_an_object"),
    (json.dumps({"text": HUGE}).encode(), "huge"),
    (json.dumps({"text": "x" * 30_000}).encode(), "line_too_long"),
    (json.dumps({"text": GOOD_2}).encode(), None),
]
MAX_CHARS = 1000
MAX_LINE_BYTES = 20_000


def run(*args) -> int:
    return cli.main(
        [
            "--tokenizer-type",
            "SentencePieceTokenizer",
            "--tokenizer-model",
            SAMPLE_MODEL,
            "--log-interval-seconds",
            "0",
            "--max-document-chars",
            str(MAX_CHARS),
            "--max-line-bytes",
            str(MAX_LINE_BYTES),
            *map(str, args),
        ]
    )


@pytest.fixture
def bad_inputs(tmp_path):
    """A plain file with every kind of bad line, and a gzip file cut off mid-stream."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(line for line, _ in LINES) + b"\n")
    good_lines = [json.dumps({"text": f"Document number {i} of the truncated shard."}) for i in range(2000)]
    packed = gzip.compress(("\n".join(good_lines) + "\n").encode())
    truncated = tmp_path / "truncated.json.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    return str(bad), str(truncated)


def read_rejects(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("policy", ["split", "truncate", "skip"])
def test_each_bad_kind_is_counted_logged_and_skipped(tmp_path, bad_inputs, policy, capsys):
    bad, truncated = bad_inputs
    prefix = str(tmp_path / "out")
    assert (
        run(
            "--input",
            bad,
            truncated,
            "--output-prefix",
            prefix,
            "--append-eod",
            "--huge-document-policy",
            policy,
        )
        == 0
    )

    huge_reason = {
        "split": "huge_document_split",
        "truncate": "huge_document_truncated",
        "skip": "huge_document_skipped",
    }
    expected = Counter(huge_reason[policy] if r == "huge" else r for _, r in LINES if r)
    expected["corrupt_input"] = 1
    rejects = read_rejects(prefix + ".rejects.jsonl")
    assert Counter(r["reason"] for r in rejects) == expected
    # file and 1-based line number of every bad line in the plain file
    logged = {(r["line"], r["reason"]) for r in rejects if r["file"] == bad}
    assert logged == {
        (i + 1, huge_reason[policy] if r == "huge" else r) for i, (_, r) in enumerate(LINES) if r
    }
    assert [r["file"] for r in rejects if r["reason"] == "corrupt_input"] == [truncated]

    tok = build_tokenizer("SentencePieceTokenizer", SAMPLE_MODEL)
    ds = IndexedDataset(prefix + "_text_document")
    texts = [tok.detokenize(ds[i][:-1]) for i in range(len(ds))]
    chunks = split_huge_text(HUGE, MAX_CHARS)
    kept_huge = {"split": chunks, "truncate": chunks[:1], "skip": []}[policy]
    assert len(chunks) >= 7 and all(len(c) <= MAX_CHARS for c in chunks) and "".join(chunks) == HUGE
    plain_part = [GOOD_1, *kept_huge, GOOD_2]
    assert texts[: len(plain_part)] == plain_part
    shard_docs = texts[len(plain_part) :]
    assert 0 < len(shard_docs) < 2000  # everything before the cut of the gzip stream was kept
    assert shard_docs == [f"Document number {i} of the truncated shard." for i in range(len(shard_docs))]
    assert read_sidecar(prefix + "_text_document").documents == len(ds)

    out = capsys.readouterr().out
    rejected_total = sum(
        n
        for reason, n in expected.items()
        if not reason.startswith(("huge_document_split", "huge_document_trunc"))
    )
    assert f"rejected {rejected_total}:" in out
    for reason in expected:
        assert f"{reason}={expected[reason]}" in out


def test_max_bad_fraction_fails_and_publishes_nothing(tmp_path, bad_inputs, capsys):
    bad, _ = bad_inputs
    prefix = str(tmp_path / "strict")
    assert run("--input", bad, "--output-prefix", prefix, "--max-bad-fraction", 0.2) == 3
    assert "above --max-bad-fraction" in capsys.readouterr().err
    leftovers = sorted(os.listdir(tmp_path))
    assert leftovers == ["bad.jsonl", "strict.rejects.jsonl", "truncated.json.gz"]
    assert len(read_rejects(prefix + ".rejects.jsonl")) == sum(1 for _, r in LINES if r)
    # 11 of 14 lines are bad: a loose enough limit lets the run succeed.
    assert run("--input", bad, "--output-prefix", prefix, "--max-bad-fraction", 0.9) == 0
    assert len(IndexedDataset(prefix + "_text_document")) > 2


def test_bad_fraction_counts_each_json_key(tmp_path):
    src = tmp_path / "keys.jsonl"
    src.write_text(
        "\n".join(json.dumps(r) for r in [{"a": "x y", "b": "z"}, {"a": "only a"}, {"a": "p", "b": "q"}])
        + "\n"
    )
    prefix = str(tmp_path / "k")
    # one (line, key) slot of six is bad: 16.7%
    assert (
        run("--input", src, "--output-prefix", prefix, "--json-keys", "a", "b", "--max-bad-fraction", 0.16)
        == 3
    )
    assert (
        run("--input", src, "--output-prefix", prefix, "--json-keys", "a", "b", "--max-bad-fraction", 0.17)
        == 0
    )
    assert (
        len(IndexedDataset(prefix + "_a_document")) == 3 and len(IndexedDataset(prefix + "_b_document")) == 2
    )
    assert [r["key"] for r in read_rejects(prefix + ".rejects.jsonl")] == ["b"]


def test_missing_input_and_bad_flags_are_usage_errors(tmp_path, capsys):
    assert run("--input", str(tmp_path / "nope*.jsonl"), "--output-prefix", tmp_path / "x") == 2
    assert "matches no file" in capsys.readouterr().err
    src = tmp_path / "one.jsonl"
    src.write_text('{"text": "hi"}\n')
    assert run("--input", src, "--output-prefix", tmp_path / "x", "--merge") == 2
    assert "--output-per-shard" in capsys.readouterr().err
    assert not [p for p in os.listdir(tmp_path) if p.endswith((".idx", ".bin"))]


def test_split_huge_text_prefers_whitespace_and_never_loses_text():
    text = "abc " * 1000 + "z" * 2500
    chunks = split_huge_text(text, 700)
    assert "".join(chunks) == text and all(len(c) <= 700 for c in chunks)
    assert all(c.endswith(" ") for c in chunks[:5])  # cut after whitespace while there is some
    assert np.all([len(c) == 700 for c in chunks[-4:-1]])  # hard cuts inside the long word
