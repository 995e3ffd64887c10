"""The late-threshold count: a small text task on which pauses can measurably help on a CPU.

A problem is 16 items, each one of 256 value words, then a separator, a query word naming a
threshold q, then ``=``; the answer is the number of items greater than q, written as a value
word (``v0`` .. ``v16``)::

    v17 v203 v88 ... v141 | q120 =        ->  v7

Why this task (see the issue note on pause science): in a causal model the item positions cannot
see a query that comes after them, so only positions after the query, and therefore pauses, can
compare each item with q; a single attention head reading the items directly can only count
through a rank-limited bilinear score. The control puts the query first (``q120 | v17 ... =``),
where the item positions can do the comparison themselves and pauses should not help.

Everything is text over a word-level vocabulary, so the project's ordinary pipeline runs on it
unchanged: the tokenizer is written as a local Hugging Face folder (``HuggingFaceTokenizer``), the
pretraining corpus is JSONL for ``tools/preprocess_data.py``, and the finetuning and test sets are
``{"prompt", "answer"}`` JSONL lines for finetuning and evaluation. Every file is a deterministic
function of its seed (numpy PCG64), so a regenerated task is byte-identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

TaskFormat = Literal["query_last", "query_first"]
TASK_FORMATS: dict[str, TaskFormat] = {
    "late_threshold_count": "query_last",
    "late_threshold_count_qfirst": "query_first",
}
SEPARATOR = "|"
EQUALS = "="
EOS = "<eos>"
UNK = "<unk>"
PAUSE = "<pause>"


@dataclass(frozen=True)
class ThresholdCountConfig:
    num_items: int = 16
    num_values: int = 256

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError(f"num_items must be at least 1, got {self.num_items}")
        if self.num_items >= self.num_values:
            # Answers are written with value words, so the largest count must be one.
            raise ValueError(f"num_items ({self.num_items}) must be below num_values ({self.num_values})")


def value_word(i: int) -> str:
    return f"v{i}"


def query_word(i: int) -> str:
    return f"q{i}"


def vocabulary(cfg: ThresholdCountConfig) -> list[str]:
    """Every word, in id order: specials first (so their ids do not move with num_values)."""
    return [
        EOS,
        UNK,
        PAUSE,
        SEPARATOR,
        EQUALS,
        *(value_word(i) for i in range(cfg.num_values)),
        *(query_word(i) for i in range(cfg.num_values)),
    ]


def sample_problems(cfg: ThresholdCountConfig, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` problems: items (count, num_items) and thresholds (count,), uniform and iid."""
    rng = np.random.Generator(np.random.PCG64(seed))
    items = rng.integers(0, cfg.num_values, size=(count, cfg.num_items))
    queries = rng.integers(0, cfg.num_values, size=count)
    return items, queries


def answers(items: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The number of items strictly greater than the threshold."""
    return (items > queries[:, None]).sum(axis=1)


def examples(cfg: ThresholdCountConfig, count: int, seed: int, fmt: TaskFormat) -> Iterator[dict[str, str]]:
    """``{"prompt", "answer"}`` records, the finetuning and evaluation format: the items' words
    and the query word around the separator (query last or first), then ``=``."""
    if fmt not in TASK_FORMATS.values():
        raise ValueError(f"unknown task format {fmt!r}; choose one of {sorted(set(TASK_FORMATS.values()))}")
    items, queries = sample_problems(cfg, count, seed)
    # Words from lookup tables: two million records are written per grid.
    values = [value_word(i) for i in range(cfg.num_values)]
    query_words = [query_word(i) for i in range(cfg.num_values)]
    for row, q, a in zip(items.tolist(), queries.tolist(), answers(items, queries).tolist()):
        words = " ".join([values[x] for x in row])
        if fmt == "query_last":
            prompt = f"{words} {SEPARATOR} {query_words[q]} {EQUALS}"
        else:
            prompt = f"{query_words[q]} {SEPARATOR} {words} {EQUALS}"
        yield {"prompt": prompt, "answer": values[a]}


def pretraining_documents(
    cfg: ThresholdCountConfig, num_examples: int, examples_per_document: int, seed: int, fmt: TaskFormat
) -> Iterator[dict[str, str]]:
    """``{"text"}`` documents of (prompt + answer) examples back to back, as in the probe: a model
    pretrained on them sees the task only as a language-modelling stream."""
    if examples_per_document < 1:
        raise ValueError(f"examples_per_document must be at least 1, got {examples_per_document}")
    batch: list[str] = []
    for ex in examples(cfg, num_examples, seed, fmt):
        batch.append(f"{ex['prompt']} {ex['answer']}")
        if len(batch) == examples_per_document:
            yield {"text": " ".join(batch)}
            batch = []
    if batch:
        yield {"text": " ".join(batch)}


def write_jsonl(path: str, records: Iterator[dict[str, str]]) -> int:
    """Write records to ``path`` through a temporary name (a killed run leaves no half file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def write_tokenizer(folder: str, cfg: ThresholdCountConfig) -> None:
    """A word-level Hugging Face tokenizer folder that ``HuggingFaceTokenizer`` loads.

    Whitespace splits words and each word is one id; ``<eos>`` is the end of document, and
    ``<pause>`` is already a piece so the pause id is inside the base vocabulary. No BOS and no
    post-processor: encoding a prompt gives exactly its words.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary(cfg))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # WordLevel has no decoder of its own; joining pieces with spaces inverts WhitespaceSplit.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, unk_token=UNK)
    tmp = f"{folder}.tmp{os.getpid()}"
    tok.save_pretrained(tmp)
    if os.path.isdir(folder):
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)


@dataclass(frozen=True)
class SuiteConfig:
    """What ``tools/make_synthetic_task.py`` writes; the defaults are the issue's design."""

    num_items: int = 16
    num_values: int = 256
    pretrain_examples: int = 64_000
    examples_per_document: int = 64
    pretrain_seed: int = 1000
    finetune_examples: int = 128_000
    finetune_seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    finetune_seed_offset: int = 2000
    valid_examples: int = 500
    valid_seed: int = 54321
    test_examples: int = 2000
    test_seed: int = 12345
    tasks: tuple[str, ...] = tuple(TASK_FORMATS)


def write_suite(out: str, suite: SuiteConfig) -> dict[str, object]:
    """Write the tokenizer, the pretraining corpus and every task's splits under ``out``.

    Layout: ``tokenizer/``, ``pretrain.jsonl`` (query-last), and per task
    ``<task>/train_seed<s>.jsonl``, ``<task>/valid.jsonl``, ``<task>/test.jsonl``; then
    ``manifest.json`` (written last, so its presence means the suite is complete).
    """
    cfg = ThresholdCountConfig(suite.num_items, suite.num_values)
    for task in suite.tasks:
        if task not in TASK_FORMATS:
            raise ValueError(f"unknown task {task!r}; choose from {sorted(TASK_FORMATS)}")
    os.makedirs(out, exist_ok=True)
    manifest_path = os.path.join(out, "manifest.json")
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # incomplete until rewritten below
    write_tokenizer(os.path.join(out, "tokenizer"), cfg)
    counts: dict[str, int] = {}
    counts["pretrain.jsonl"] = write_jsonl(
        os.path.join(out, "pretrain.jsonl"),
        pretraining_documents(
            cfg, suite.pretrain_examples, suite.examples_per_document, suite.pretrain_seed, "query_last"
        ),
    )
    for task in suite.tasks:
        fmt = TASK_FORMATS[task]
        for seed in suite.finetune_seeds:
            name = f"{task}/train_seed{seed}.jsonl"
            counts[name] = write_jsonl(
                os.path.join(out, name),
                examples(cfg, suite.finetune_examples, suite.finetune_seed_offset + seed, fmt),
            )
        for split, n, seed in (
            ("valid", suite.valid_examples, suite.valid_seed),
            ("test", suite.test_examples, suite.test_seed),
        ):
            name = f"{task}/{split}.jsonl"
            counts[name] = write_jsonl(os.path.join(out, name), examples(cfg, n, seed, fmt))
    manifest = {"suite": asdict(suite), "records": counts, "vocab_size": len(vocabulary(cfg))}
    tmp = f"{manifest_path}.tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, manifest_path)
    return manifest
