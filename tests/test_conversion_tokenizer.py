"""The exported Hugging Face tokenizer gives exactly the project's ids.

Contract for a literal ``"<pause>"`` in text (both sides): it encodes to the
pause id. Everything else -- space runs, tabs, newlines, digits, byte-fallback
characters, literal ``"<s>"``/``"</s>"``/``"<unk>"`` -- is plain text, and no
BOS is added. Checked on 10,000 documents (the sample corpus's documents plus
windows cut from it) and 3,000 fuzz strings; decoding gives the same text.
"""

from __future__ import annotations

import gzip
import json
import os
import random

import pytest

pytest.importorskip("transformers")

from megatron_pause.conversion.hf_tokenizer import load_hf_tokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SP_MODEL = os.path.join(REPO, "examples", "data", "sample_tokenizer.model")
CORPUS = os.path.join(REPO, "examples", "data", "sample_corpus.jsonl.gz")

_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n",
    ".,;:!?'\"()[]{}-_=+*/\\|@#$%^&~`<>",
    "éèàüößçñÅØæœ", "日本語中文한국어", "αβγδεζηθ", "🙂🚀👍🏽", "\u200b\u00a0",
    "▁",
]  # fmt: skip
_LITERALS = ["<pause>", "<s>", "</s>", "<unk>", "<pad>", "<pause", "pause>", " <pause> ", "<pause><pause>"]


def _fuzz(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.2:
                parts.append(rng.choice(_LITERALS))
            else:
                pool = rng.choice(_POOLS)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
        out.append("".join(parts))
    return out


def _documents(n: int, seed: int = 1) -> list[str]:
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    text = "\n\n".join(docs)
    rng = random.Random(seed)
    out = [d[:1500] for d in docs]  # each corpus document (its first 1,500 characters) ...
    while len(out) < n:  # ... and windows of the corpus (mid-word starts, paragraph breaks)
        start = rng.randrange(len(text))
        out.append(text[start : start + rng.randint(1, 200)])
    return out[:n]


# Literal reserved-piece text as a whole segment: right after a "<pause>", up to the next pause or
# the end. SentencePiece encodes it as plain text; the exported BPE would look it up whole.
_AFTER_PAUSE = ["<pause><unk>", "<pause><s><pause>", "x<pause></s>", "<pause><pad><pause>y", "<pause><0x41>",
                "<pause><0xFF><pause>", " <pause> <unk>", "<pause><unk", "<pause>unk>", "<pause>", ""]  # fmt: skip


def _check_identical(project, hf, texts: list[str]) -> None:
    """Assert identical ids on every text and that decoding matches SentencePiece's."""
    want = project.tokenize_batch(texts)
    got = hf(texts)["input_ids"]  # default call: the tokenizer's own special-token policy
    mismatches = [(t, w, g) for t, w, g in zip(texts, want, got) if list(g) != list(w)]
    assert not mismatches, f"{len(mismatches)}/{len(texts)} differ, e.g. {mismatches[0]}"
    backend_decode = project._backend.decode
    for ids in want[:: max(1, len(want) // 1000)]:
        assert hf.decode(ids) == backend_decode(ids)


def test_sentencepiece_export_matches_on_documents_and_fuzz():
    hf, project = load_hf_tokenizer("SentencePieceTokenizer", SP_MODEL, "<pause>")
    docs, fuzz = _documents(10_000), _fuzz(3_000)
    assert sum("<pause>" in t for t in fuzz) > 300  # the contract is exercised
    # ... including a control literal forming a whole segment after a pause
    assert sum(any(f"<pause>{c}" in t for c in ("<unk>", "<s>", "</s>", "<pad>")) for t in fuzz) > 10
    _check_identical(project, hf, docs)
    _check_identical(project, hf, fuzz)
    print(f"identical ids: {len(docs)}/{len(docs)} documents, {len(fuzz)}/{len(fuzz)} fuzz strings")
    _check_identical(project, hf, _AFTER_PAUSE)
    pause, unk = project.pause_id, hf.unk_token_id
    assert project.tokenize("<pause><unk>")[-4:] == [pause, *project.tokenize("a<unk>")[1:]]
    assert (
        unk not in hf("<pause><unk>")["input_ids"]
        and hf.convert_tokens_to_ids("<0x41>") not in hf("<pause><0x41>")["input_ids"]
    )
    assert project.tokenize("a<pause>b").count(pause) == 1
    # Decoding round-trips the original text.
    for text in docs[::50]:
        assert hf.decode(hf(text)["input_ids"]) == text


def test_sentencepiece_export_survives_save_and_reload(tmp_path):
    from transformers import AutoTokenizer

    hf, project = load_hf_tokenizer("SentencePieceTokenizer", SP_MODEL, "<pause>")
    hf.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    _check_identical(project, reloaded, _fuzz(500, seed=7) + _AFTER_PAUSE)
    assert (
        reloaded.eos_token_id == project.eod and reloaded.convert_tokens_to_ids("<pause>") == project.pause_id
    )


def test_hf_tokenizer_without_pause_gets_the_same_appended_id(tmp_path):
    """A project run on an HF tokenizer lacking <pause> appends it; the export adds it at that id,
    and a literal "<pause>" is the pause on both sides."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_documents(300), trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", eos_token="</s>").save_pretrained(
        tmp_path
    )
    hf, project = load_hf_tokenizer("HuggingFaceTokenizer", str(tmp_path), "<pause>")
    assert project.pause_appended and project.pause_id == 400 and len(hf) == 401
    _check_identical(project, hf, _fuzz(1_000, seed=3))
    assert project.tokenize("x <pause> y").count(400) == 1
