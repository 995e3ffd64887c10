"""PauseTokenizer over SentencePiece and local Hugging Face folders (no hub, no network)."""

from __future__ import annotations

import io
import os
import shutil
import sys

import numpy as np
import pytest

from megatron_pause.pause import insert_pauses, pause_key
from megatron_pause.tokenizer import build_tokenizer, padded_vocab_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_MODEL = os.path.join(REPO, "examples", "data", "sample_tokenizer.model")
TEXTS = [
    "Return the number of items in a container.",
    "If the argument is a string, it is parsed as a URL; e.g. 'http://x.org/a?b=1'.\n\n  Indented code: x = 2",
    "Unicode survives byte fallback: naïve café — 東京 ✓",
]


def _train_spm(tmp_path, with_pause: bool, pad: bool) -> str:
    """A tiny SentencePiece model trained in-process (about a second)."""
    import sentencepiece as spm

    lines = [line for t in TEXTS * 20 for line in t.split("\n") if line.strip()]
    lines += [f"word{i} and more words number {i} in sentence {i}." for i in range(300)]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buffer,
        vocab_size=400,
        model_type="bpe",
        user_defined_symbols=["<pause>"] if with_pause else [],
        pad_id=3 if pad else -1,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    path = str(tmp_path / f"tiny_{with_pause}_{pad}.model")
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
    return path


@pytest.mark.parametrize(
    "vocab, divisible, tp, expected",
    [
        (8000, 128, 1, 8064),
        (8001, 128, 1, 8064),
        (8064, 128, 1, 8064),
        (8001, 128, 4, 8192),
        (50257, 128, 2, 50432),
    ],
)
def test_padded_vocab_size_follows_megatron(vocab, divisible, tp, expected):
    assert padded_vocab_size(vocab, divisible, tp) == expected
    assert padded_vocab_size(vocab, divisible, tp) % (divisible * tp) == 0


def test_padded_vocab_size_rejects_nonsense():
    with pytest.raises(ValueError):
        padded_vocab_size(0)
    with pytest.raises(ValueError):
        padded_vocab_size(100, 0)


def test_shipped_tokenizer_has_its_own_pause_piece():
    tok = build_tokenizer("SentencePieceTokenizer", SAMPLE_MODEL)
    assert (tok.base_vocab_size, tok.vocab_size) == (8000, 8000)
    assert not tok.pause_appended
    assert tok._backend.sp.id_to_piece(tok.pause_id) == "<pause>"
    assert (tok.eod, tok.pad, tok.bos) == (2, 3, 1)
    assert tok.tokenizer_type == "SentencePieceTokenizer"
    assert (
        tok.identity.startswith("SentencePieceTokenizer:sha256:") and len(tok.identity.split(":")[-1]) == 64
    )
    assert tok.padded_vocab_size() == 8064 and tok.padded_vocab_size(128, 8) == 8192
    # A literal "<pause>" in text is the pause token (user-defined symbol), useful for finetuning data.
    assert tok.pause_id in tok.tokenize("think <pause> then answer")


def test_pause_is_appended_when_missing_and_pad_falls_back_to_eod(tmp_path):
    tok = build_tokenizer("SentencePieceTokenizer", _train_spm(tmp_path, with_pause=False, pad=False))
    assert tok.pause_appended
    assert tok.pause_id == tok.base_vocab_size == 400
    assert tok.vocab_size == 401
    assert tok.pad == tok.eod == 2
    with_pause = build_tokenizer("SentencePieceTokenizer", _train_spm(tmp_path, with_pause=True, pad=True))
    assert not with_pause.pause_appended and with_pause.vocab_size == 400 and with_pause.pad == 3


@pytest.mark.parametrize("appended", [False, True])
def test_detokenize_drops_pauses(tmp_path, appended):
    model = _train_spm(tmp_path, with_pause=not appended, pad=True) if appended else SAMPLE_MODEL
    tok = build_tokenizer("SentencePieceTokenizer", model)
    for text in TEXTS:
        ids = np.asarray(tok.tokenize(text), dtype=np.int32)
        with_pauses = insert_pauses(ids, 5, tok.pause_id, pause_key(0, 1))
        assert int((with_pauses == tok.pause_id).sum()) == 5
        assert tok.detokenize(with_pauses) == tok.detokenize(ids) == text


def test_batch_paths_agree_with_single_tokenize():
    tok = build_tokenizer("SentencePieceTokenizer", SAMPLE_MODEL)
    single = [tok.tokenize(t) for t in TEXTS]
    assert tok.tokenize_batch(TEXTS) == single
    assert tok.tokenize_batch(TEXTS, num_threads=2) == single
    arrays = tok.tokenize_batch_arrays(TEXTS, num_threads=2)
    assert [a.tolist() for a in arrays] == single and all(a.dtype == np.int32 for a in arrays)


def test_llama2_alias_prepends_bos_and_others_do_not():
    plain = build_tokenizer("GPTSentencePieceTokenizer", SAMPLE_MODEL)
    llama = build_tokenizer("Llama2Tokenizer", SAMPLE_MODEL)
    assert plain.tokenizer_type == llama.tokenizer_type == "SentencePieceTokenizer"
    assert plain.identity == llama.identity
    text = TEXTS[0]
    assert llama.tokenize(text) == [llama.bos, *plain.tokenize(text)]
    assert llama.tokenize_batch_arrays([text])[0].tolist() == llama.tokenize(text)
    assert llama.tokenize_batch_arrays([text], add_bos=False)[0].tolist() == plain.tokenize(text)
    assert llama.detokenize(llama.tokenize(text)) == text


def test_identity_is_content_based(tmp_path):
    copy = str(tmp_path / "elsewhere.model")
    shutil.copy(SAMPLE_MODEL, copy)
    assert (
        build_tokenizer("SentencePieceTokenizer", copy).identity
        == build_tokenizer("SentencePieceTokenizer", SAMPLE_MODEL).identity
    )
    other = build_tokenizer("SentencePieceTokenizer", _train_spm(tmp_path, True, True))
    assert other.identity != build_tokenizer("SentencePieceTokenizer", SAMPLE_MODEL).identity


def test_clear_errors_for_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown --tokenizer-type 'GPT2BPETokenizer'"):
        build_tokenizer("GPT2BPETokenizer", SAMPLE_MODEL)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_tokenizer("SentencePieceTokenizer", str(tmp_path / "missing.model"))
    with pytest.raises(FileNotFoundError, match="hub names are not supported"):
        build_tokenizer("HuggingFaceTokenizer", "gpt2")
    with pytest.raises(ValueError, match="required"):
        build_tokenizer("SentencePieceTokenizer", "")


def _save_hf_folder(path: str, with_pause: bool) -> str:
    """A byte-level BPE tokenizer trained with `tokenizers` and saved as a transformers folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>"] + (["<pause>"] if with_pause else [])
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(TEXTS * 50, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")
    fast.save_pretrained(path)
    return path


@pytest.mark.parametrize("with_pause", [True, False])
def test_huggingface_folder(tmp_path, with_pause):
    folder = _save_hf_folder(str(tmp_path / "hf"), with_pause)
    tok = build_tokenizer("HuggingFaceTokenizer", folder)
    assert tok.tokenizer_type == "HuggingFaceTokenizer"
    assert tok.identity.startswith("HuggingFaceTokenizer:sha256:")
    assert tok.eod == tok._backend.tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.pad == tok.eod  # no pad token in the folder
    if with_pause:
        assert not tok.pause_appended and tok.pause_id == tok._backend.tok.convert_tokens_to_ids("<pause>")
        assert tok.vocab_size == tok.base_vocab_size
    else:
        assert (
            tok.pause_appended
            and tok.pause_id == tok.base_vocab_size
            and tok.vocab_size == tok.base_vocab_size + 1
        )
    text = TEXTS[0]
    ids = np.asarray(tok.tokenize(text))
    assert tok.tokenize_batch([text, text]) == [ids.tolist()] * 2
    assert tok.detokenize(insert_pauses(ids, 3, tok.pause_id, pause_key(1, 2))) == text


def test_huggingface_without_transformers_says_what_to_install(tmp_path, monkeypatch):
    folder = str(tmp_path / "hf_folder")
    os.makedirs(folder)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install"):
        build_tokenizer("HuggingFaceTokenizer", folder)


def test_train_tokenizer_is_deterministic_and_has_the_pipeline_specials(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_tokenizer", os.path.join(REPO, "tools", "train_tokenizer.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    corpus = os.path.join(REPO, "examples", "data", "sample_corpus.jsonl.gz")
    args = ["--input", corpus, "--vocab-size", "600", "--max-input-bytes", "200000"]
    assert tool.main([*args, "--output-prefix", str(tmp_path / "a")]) == 0
    assert tool.main([*args, "--output-prefix", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    tok = build_tokenizer("SentencePieceTokenizer", str(tmp_path / "a.model"))
    assert (tok.vocab_size, tok.pause_id, tok.eod, tok.pad, tok.bos) == (600, 4, 2, 3, 1)
    assert not tok.pause_appended
    assert tok.detokenize(tok.tokenize(TEXTS[2])) == TEXTS[2]  # byte fallback: nothing is unknown


def test_shipped_sample_corpus_is_c4_shaped():
    import gzip
    import json

    corpus = os.path.join(REPO, "examples", "data", "sample_corpus.jsonl.gz")
    assert os.path.getsize(corpus) < 3_000_000
    with gzip.open(corpus, "rb") as f:
        raw = f.read()
    assert 2_000_000 <= len(raw) <= 4_000_000
    records = [json.loads(line) for line in raw.splitlines()]
    assert len(records) > 500
    assert all(list(r) == ["text", "timestamp", "url"] and r["text"].strip() for r in records)
    assert len({r["text"] for r in records}) == len(records)


def test_huggingface_batch_arrays_take_the_rust_path_only_where_it_agrees(tmp_path, monkeypatch):
    """The fast batch path (the Rust tokenizer's encode_batch) gives the full call's ids, pauses
    included; a tokenizer class that changes ids in Python makes it fall back to the full call."""
    folder = _save_hf_folder(str(tmp_path / "hf"), with_pause=False)
    tok = build_tokenizer("HuggingFaceTokenizer", folder)
    backend = tok._backend
    texts = [*TEXTS, f"a{tok.pause_token}b", "", "  spaces  "] * 30
    expected = [list(ids) for ids in backend.tok(texts)["input_ids"]]
    calls = []
    rust = backend.tok.backend_tokenizer
    real_encode_batch = rust.encode_batch

    class Spy:
        def encode_batch(self, batch, add_special_tokens):
            calls.append(len(batch))
            return real_encode_batch(batch, add_special_tokens=add_special_tokens)

    monkeypatch.setattr(type(backend.tok), "backend_tokenizer", property(lambda self: Spy()))
    assert [a.tolist() for a in tok.tokenize_batch_arrays(texts)] == expected
    assert calls == [64, len(texts)]  # the check on a sample, then the whole batch

    # A class whose full call differs (here: every id shifted) must not get Rust's ids.
    original_call = type(backend.tok).__call__
    monkeypatch.setattr(
        type(backend.tok), "__call__",
        lambda self, t, **kw: {"input_ids": [[i + 1 for i in ids] for ids in original_call(self, t, **kw)["input_ids"]]},
    )  # fmt: skip
    calls.clear()
    assert [a.tolist() for a in tok.tokenize_batch_arrays(texts)] == [
        [i + 1 for i in ids] for ids in expected
    ]
    assert calls == [64]
