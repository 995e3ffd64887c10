"""The synthetic late-threshold-count suite: correct answers, fixed bytes, a tokenizer folder the
project's tokenizer loads. Preprocessing and pretraining on it run in tests/test_experiment_smoke.py,
through the experiment driver."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_pause.data import synthetic_task as st

REPO = Path(__file__).resolve().parent.parent
SMALL = [
    "--pretrain-examples", "600", "--examples-per-document", "20", "--finetune-examples", "50",
    "--finetune-seeds", "0-1", "--valid-examples", "10", "--test-examples", "40",
]  # fmt: skip


def _make(out: Path, *extra: str) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_synthetic_task.py"), "--out", str(out), *SMALL, *extra],
        check=True,
        capture_output=True,
    )


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _solve(prompt: str) -> tuple[list[int], int]:
    words = prompt.split()
    assert words[-1] == "="
    q = next(int(w[1:]) for w in words if w.startswith("q"))
    items = [int(w[1:]) for w in words if w.startswith("v")]
    return items, q


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    _make(out)
    return out


def test_answers_are_the_count_above_the_threshold(suite):
    for task in ("late_threshold_count", "late_threshold_count_qfirst"):
        for rec in _read(suite / task / "test.jsonl"):
            items, q = _solve(rec["prompt"])
            assert len(items) == 16 and all(0 <= x < 256 for x in items) and 0 <= q < 256
            assert rec["answer"] == f"v{sum(x > q for x in items)}"


def test_formats_put_the_query_last_or_first_on_the_same_test_problems(suite):
    last = _read(suite / "late_threshold_count" / "test.jsonl")
    first = _read(suite / "late_threshold_count_qfirst" / "test.jsonl")
    assert len(last) == len(first) == 40
    for a, b in zip(last, first):
        wa, wb = a["prompt"].split(), b["prompt"].split()
        assert wa[-3:-1] == ["|", wb[0]] and wb[1] == "|"  # "... | qN =" vs "qN | ... ="
        assert wa[:16] == wb[2:18] and a["answer"] == b["answer"]


def test_splits_are_fresh_and_seeded(suite):
    task = suite / "late_threshold_count"
    s0, s1 = _read(task / "train_seed0.jsonl"), _read(task / "train_seed1.jsonl")
    test = {r["prompt"] for r in _read(task / "test.jsonl")}
    assert len(s0) == len(s1) == 50 and s0 != s1
    assert not test & {r["prompt"] for r in s0 + s1}  # 256^17 problems: a collision means a seed bug
    # Counts are spread over many values, not one constant the model could memorise.
    counts = [int(r["answer"][1:]) for r in s0 + s1]
    assert len(set(counts)) >= 8


def test_same_arguments_same_bytes(suite, tmp_path):
    _make(tmp_path)
    for name in ("pretrain.jsonl", "late_threshold_count/test.jsonl", "tokenizer/tokenizer.json"):
        assert (tmp_path / name).read_bytes() == (suite / name).read_bytes(), name
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["records"]["late_threshold_count/train_seed1.jsonl"] == 50


def test_pretraining_documents_pack_whole_examples():
    cfg = st.ThresholdCountConfig(num_items=4, num_values=8)
    docs = list(
        st.pretraining_documents(cfg, num_examples=7, examples_per_document=3, seed=3, fmt="query_last")
    )
    assert len(docs) == 3
    words = " ".join(d["text"] for d in docs).split()
    assert len(words) == 7 * (4 + 3 + 1)  # items, "| qN =", answer
    items, queries = st.sample_problems(cfg, 7, 3)
    assert words[:8] == [
        *(f"v{x}" for x in items[0]),
        "|",
        f"q{queries[0]}",
        "=",
        f"v{(items[0] > queries[0]).sum()}",
    ]


def test_bad_configuration_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="num_items"):
        st.ThresholdCountConfig(num_items=16, num_values=16)
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "make_synthetic_task.py"),
            "--out",
            str(tmp_path),
            "--num-values",
            "8",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "num_items" in out.stderr


def test_tokenizer_folder_is_word_level_with_pause_and_eod(suite):
    from megatron_pause.tokenizer import build_tokenizer

    tok = build_tokenizer("HuggingFaceTokenizer", str(suite / "tokenizer"))
    assert tok.vocab_size == 5 + 2 * 256 and not tok.pause_appended
    assert tok.pause_id == st.vocabulary(st.ThresholdCountConfig()).index("<pause>")
    rec = _read(suite / "late_threshold_count" / "test.jsonl")[0]
    ids = tok.tokenize(f"{rec['prompt']} {rec['answer']}")
    assert len(ids) == 20 and tok.eod not in ids and tok.pause_id not in ids
    assert tok.detokenize(ids) == f"{rec['prompt']} {rec['answer']}"
    assert np.unique(ids[:16]).size == len(set(rec["prompt"].split()[:16]))
