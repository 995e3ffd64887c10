"""tools/preprocess_data.py end to end, in-process: round trip, determinism, shards, keys, sentences."""

from __future__ import annotations

import filecmp
import gzip
import importlib.util
import json
import os
import random
import re
import socket

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_pause.data.sidecar import read_sidecar
from megatron_pause.pause import num_pauses
from megatron_pause.tokenizer import build_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CORPUS = os.path.join(REPO, "examples", "data", "sample_corpus.jsonl.gz")
SAMPLE_MODEL = os.path.join(REPO, "examples", "data", "sample_tokenizer.model")
N_DOCS = 48

_spec = importlib.util.spec_from_file_location(
    "preprocess_data_cli", os.path.join(REPO, "tools", "preprocess_data.py")
)
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    with gzip.open(SAMPLE_CORPUS, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(N_DOCS), f)]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("SentencePieceTokenizer", SAMPLE_MODEL)


def write_jsonl(path, recs, compress=False) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8")
    with gzip.open(path, "wb") if compress else open(path, "wb") as f:
        f.write(data)
    return str(path)


def run(*args, tokenizer=("SentencePieceTokenizer", SAMPLE_MODEL)) -> int:
    argv = [
        "--tokenizer-type",
        tokenizer[0],
        "--tokenizer-model",
        tokenizer[1],
        "--log-interval-seconds",
        "0",
        "--batch-chars",
        "20000",  # several batches even for small inputs, so the pipeline is exercised
        *map(str, args),
    ]
    return cli.main(argv)


def files_equal(a: str, b: str, exts=(".bin", ".idx")) -> bool:
    return all(filecmp.cmp(a + ext, b + ext, shallow=False) for ext in exts)


def documents(prefix: str) -> list[np.ndarray]:
    ds = IndexedDataset(prefix)
    bounds = ds.document_indices
    out = []
    for d in range(len(bounds) - 1):
        seqs = [ds[j] for j in range(bounds[d], bounds[d + 1])]
        out.append(np.concatenate(seqs))
    return out


def test_round_trip_with_pauses_and_counts(tmp_path, records, tok, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", records)
    prefix = str(tmp_path / "out")
    assert (
        run("--input", src, "--output-prefix", prefix, "--append-eod", "--insert-pauses", 0.1, "--workers", 2)
        == 0
    )
    out = prefix + "_text_document"
    ds = IndexedDataset(out)
    side = read_sidecar(out)
    docs = documents(out)
    assert len(docs) == len(ds) == side.documents == len(records)
    assert int(ds.sequence_lengths.sum()) == side.tokens
    total_pauses = 0
    for doc, rec in zip(docs, records):
        assert doc[-1] == tok.eod and tok.eod not in doc[:-1]
        pauses = int((doc == tok.pause_id).sum())
        assert pauses == num_pauses(len(doc) - 1 - pauses, 0.1) > 0
        assert tok.detokenize(doc[:-1]) == rec["text"]  # exact: identity normalisation + byte fallback
        total_pauses += pauses
    assert side.pause_tokens == total_pauses
    assert (side.pause_id, side.vocab_size, side.eod, side.pause_fraction) == (4, 8000, 2, 0.1)
    assert side.tokenizer == tok.identity
    printed = capsys.readouterr().out
    match = re.search(r"(\d+) documents, (\d+) sequences, (\d+) tokens, (\d+) pause tokens", printed)
    assert tuple(map(int, match.groups())) == (len(ds), len(ds), side.tokens, total_pauses)
    assert os.path.getsize(prefix + ".rejects.jsonl") == 0
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_workers_and_gzip_do_not_change_a_byte(tmp_path, records):
    plain = write_jsonl(tmp_path / "in.jsonl", records)
    packed = write_jsonl(tmp_path / "in.json.gz", records, compress=True)
    common = ("--append-eod", "--insert-pauses", 0.1, "--seed", 3)
    assert run("--input", plain, "--output-prefix", tmp_path / "w1", "--workers", 1, *common) == 0
    assert run("--input", plain, "--output-prefix", tmp_path / "w2", "--workers", 2, *common) == 0
    assert run("--input", packed, "--output-prefix", tmp_path / "gz", "--workers", 2, *common) == 0
    w1, w2, gz = (str(tmp_path / n) + "_text_document" for n in ("w1", "w2", "gz"))
    assert files_equal(w1, w2) and files_equal(w1, gz)
    assert read_sidecar(w1).documents == read_sidecar(gz).documents == len(records)


def test_shards_per_shard_outputs_and_merge_equal_one_run(tmp_path, records):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(3):
        write_jsonl(
            folder / f"c4-train.0000{i}-of-00003.json.gz", records[i * 16 : (i + 1) * 16], compress=True
        )
    common = ("--append-eod", "--insert-pauses", 0.1)
    assert run("--input", folder, "--output-prefix", tmp_path / "one", *common) == 0
    assert (
        run("--input", folder, "--output-prefix", tmp_path / "sh", "--output-per-shard", "--merge", *common)
        == 0
    )
    shard_sidecars = []
    for i in range(3):
        prefix = str(tmp_path / f"sh_c4-train.0000{i}-of-00003_text_document")
        assert len(IndexedDataset(prefix)) == 16
        shard_sidecars.append(read_sidecar(prefix))
    merged = str(tmp_path / "sh_text_document")
    assert files_equal(merged, str(tmp_path / "one_text_document"))
    side = read_sidecar(merged)
    assert side.documents == 48 == sum(s.documents for s in shard_sidecars)
    assert (
        side.pause_tokens
        == sum(s.pause_tokens for s in shard_sidecars)
        == read_sidecar(str(tmp_path / "one_text_document")).pause_tokens
    )
    assert len(side.extra["merged_from"]) == 3


def test_every_json_key_gets_a_complete_output(tmp_path, records, tok):
    recs = [{"title": r["text"].split("\n")[0][:80], "text": r["text"], "url": r["url"]} for r in records]
    src = write_jsonl(tmp_path / "keys.jsonl", recs)
    assert (
        run(
            "--input",
            src,
            "--output-prefix",
            tmp_path / "k",
            "--json-keys",
            "text",
            "title",
            "url",
            "--append-eod",
        )
        == 0
    )
    for key in ("text", "title", "url"):
        prefix = str(tmp_path / f"k_{key}_document")
        docs = documents(prefix)
        assert len(docs) == len(recs) == read_sidecar(prefix).documents
        assert [tok.detokenize(d[:-1]) for d in docs] == [r[key] for r in recs]


def test_pause_positions_depend_only_on_seed_and_text(tmp_path, records, tok):
    src = write_jsonl(tmp_path / "a.jsonl", records)
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    src_shuffled = write_jsonl(tmp_path / "b.jsonl", shuffled)
    for name, path, seed in (("s1", src, 1), ("s1again", src, 1), ("s2", src, 2), ("shuf", src_shuffled, 1)):
        assert (
            run("--input", path, "--output-prefix", tmp_path / name, "--insert-pauses", 0.2, "--seed", seed)
            == 0
        )
    s1, again, s2, shuf = (str(tmp_path / n) + "_text_document" for n in ("s1", "s1again", "s2", "shuf"))
    assert files_equal(s1, again)
    # Another seed moves the pauses but not their number (the .idx holds only lengths).
    assert filecmp.cmp(s1 + ".idx", s2 + ".idx", shallow=False)
    assert not filecmp.cmp(s1 + ".bin", s2 + ".bin", shallow=False)
    # Reordering the input reorders documents but each keeps exactly its pauses.
    by_text = {tok.detokenize(d): d.tolist() for d in documents(s1)}
    assert all(by_text[tok.detokenize(d)] == d.tolist() for d in documents(shuf))
    assert run("--input", src, "--output-prefix", tmp_path / "off") == 0
    assert all(tok.pause_id not in d for d in documents(str(tmp_path / "off_text_document")))
    assert read_sidecar(str(tmp_path / "off_text_document")).pause_fraction == 0.0


def test_sentence_splitting_is_offline(tmp_path, records, tok, monkeypatch):
    import nltk

    from megatron_pause.data.sentences import SentenceSplitter, resolve_punkt_params

    def no_download(*args, **kwargs):
        raise AssertionError("nltk.download must never be called")

    def no_network(*args, **kwargs):
        raise AssertionError("no network access allowed")

    monkeypatch.setattr(nltk, "download", no_download)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    src = write_jsonl(tmp_path / "s.jsonl", records[:16])
    prefix = str(tmp_path / "sent")
    args = ("--input", src, "--output-prefix", prefix, "--split-sentences", "--keep-newlines", "--append-eod")
    assert run(*args, "--insert-pauses", 0.1) == 0
    ds = IndexedDataset(prefix + "_text_sentence")
    side = read_sidecar(prefix + "_text_sentence")
    assert side.extra["level"] == "sentence" and side.documents == 16
    assert side.extra["sequences"] == len(ds) > 16
    splitter = SentenceSplitter(resolve_punkt_params("english", None), keep_newlines=True)
    bounds = ds.document_indices
    for d, rec in enumerate(records[:16]):
        expected = [s for s in splitter.split(rec["text"]) if s.strip()]
        seqs = [ds[j] for j in range(bounds[d], bounds[d + 1])]
        assert len(seqs) == len(expected)
        whole = np.concatenate(seqs)
        pauses = int((whole == tok.pause_id).sum())
        assert pauses == num_pauses(len(whole) - 1 - pauses, 0.1)
        assert seqs[-1][-1] == tok.eod
        seqs[-1] = seqs[-1][:-1]
        assert [tok.detokenize(s) for s in seqs] == expected


def test_missing_sentence_model_fails_fast_and_training_on_input_works(tmp_path, records, capsys):
    src = write_jsonl(tmp_path / "s.jsonl", records[:8])
    assert (
        run("--input", src, "--output-prefix", tmp_path / "de", "--split-sentences", "--lang", "german") == 2
    )
    err = capsys.readouterr().err
    assert "--punkt-params" in err and "german" in err
    assert not os.path.exists(str(tmp_path / "de_text_sentence.idx"))
    assert (
        run(
            "--input",
            src,
            "--output-prefix",
            tmp_path / "tr",
            "--split-sentences",
            "--lang",
            "german",
            "--train-punkt-params",
        )
        == 0
    )
    assert len(IndexedDataset(str(tmp_path / "tr_text_sentence"))) > 8


def test_llama2_alias_keeps_bos_first(tmp_path, records, tok):
    src = write_jsonl(tmp_path / "l.jsonl", records[:10])
    assert (
        run(
            "--input",
            src,
            "--output-prefix",
            tmp_path / "ll",
            "--insert-pauses",
            0.3,
            "--append-eod",
            tokenizer=("Llama2Tokenizer", SAMPLE_MODEL),
        )
        == 0
    )
    for doc, rec in zip(documents(str(tmp_path / "ll_text_document")), records[:10]):
        assert doc[0] == tok.bos and doc[-1] == tok.eod and doc[1] != tok.bos
        assert tok.detokenize(doc[1:-1]) == rec["text"]


def test_huggingface_tokenizer_with_appended_pause(tmp_path, records):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator([r["text"] for r in records], trainer=trainer)
    folder = str(tmp_path / "hf")
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>").save_pretrained(folder)
    hf = build_tokenizer("HuggingFaceTokenizer", folder)
    src = write_jsonl(tmp_path / "h.jsonl", records[:12])
    assert (
        run(
            "--input",
            src,
            "--output-prefix",
            tmp_path / "hf_out",
            "--insert-pauses",
            0.1,
            "--append-eod",
            tokenizer=("HuggingFaceTokenizer", folder),
        )
        == 0
    )
    prefix = str(tmp_path / "hf_out_text_document")
    side = read_sidecar(prefix)
    assert side.pause_id == hf.base_vocab_size and side.vocab_size == hf.base_vocab_size + 1
    docs = documents(prefix)
    assert sum(int((d == side.pause_id).sum()) for d in docs) == side.pause_tokens > 0
    assert [hf.detokenize(d[:-1]) for d in docs] == [r["text"] for r in records[:12]]
