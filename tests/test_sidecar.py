"""The pause sidecar: round trip, absence, corruption and the startup mismatch check."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from types import SimpleNamespace

import pytest

from megatron_pause.data.sidecar import PauseSidecar, check_sidecar, read_sidecar, sidecar_path, write_sidecar


def _sidecar(**overrides) -> PauseSidecar:
    fields = dict(
        tokenizer="SentencePieceTokenizer:sha256:abc",
        tokenizer_type="SentencePieceTokenizer",
        vocab_size=8000,
        pause_id=4,
        eod=2,
        pause_fraction=0.1,
        seed=7,
        documents=3,
        tokens=120,
        pause_tokens=11,
        extra={"json_key": "text", "inputs": ["a.jsonl"]},
    )
    fields.update(overrides)
    return PauseSidecar(**fields)


def _run_tokenizer(vocab_size=8000, pause_id=4, identity="SentencePieceTokenizer:sha256:abc"):
    return SimpleNamespace(vocab_size=vocab_size, pause_id=pause_id, identity=identity)


def test_round_trip_keeps_every_field(tmp_path):
    prefix = str(tmp_path / "ds_text_document")
    original = _sidecar()
    write_sidecar(prefix, original)
    assert sidecar_path(prefix) == prefix + ".pause.json"
    assert read_sidecar(prefix) == original
    on_disk = json.loads(open(sidecar_path(prefix)).read())
    assert on_disk["format"] == 1 and on_disk["json_key"] == "text"  # flat, readable JSON
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []


def test_rewrite_replaces_and_extra_cannot_shadow_standard_fields(tmp_path):
    prefix = str(tmp_path / "ds")
    write_sidecar(prefix, _sidecar(documents=1))
    write_sidecar(prefix, _sidecar(documents=2))
    assert read_sidecar(prefix).documents == 2
    with pytest.raises(ValueError, match="clash"):
        write_sidecar(prefix, _sidecar(extra={"pause_id": 9}))
    assert read_sidecar(prefix).documents == 2


def test_absent_sidecar_is_plain_megatron_data(tmp_path):
    prefix = str(tmp_path / "plain")
    assert read_sidecar(prefix) is None
    assert check_sidecar(prefix, _run_tokenizer()) is None


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"format": 99}), "format"),
        (json.dumps({"format": 1, "tokenizer": "x"}), "lacks fields"),
    ],
)
def test_corrupt_sidecar_raises_naming_the_file(tmp_path, content, message):
    prefix = str(tmp_path / "bad")
    with open(sidecar_path(prefix), "w") as f:
        f.write(content)
    with pytest.raises(ValueError, match=message) as info:
        read_sidecar(prefix)
    assert sidecar_path(prefix) in str(info.value)


def test_wrongly_typed_field_is_rejected(tmp_path):
    prefix = str(tmp_path / "typed")
    data = {"format": 1, **{k: v for k, v in dataclasses.asdict(_sidecar()).items() if k != "extra"}}
    data["pause_id"] = "4"
    with open(sidecar_path(prefix), "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="pause_id"):
        read_sidecar(prefix)


def test_check_accepts_matching_tokenizer(tmp_path):
    prefix = str(tmp_path / "ok")
    write_sidecar(prefix, _sidecar())
    assert check_sidecar(prefix, _run_tokenizer()).pause_tokens == 11


@pytest.mark.parametrize(
    "run, shown",
    [
        (dict(pause_id=8000, vocab_size=8001), ["pause id 4", "8000", "vocab size 8000", "8001"]),
        (dict(pause_id=5), ["pause id 4", "vs 5"]),
        (dict(vocab_size=32000), ["vocab size 8000", "32000"]),
    ],
)
def test_check_names_file_and_both_sides_on_mismatch(tmp_path, run, shown):
    prefix = str(tmp_path / "mismatch")
    write_sidecar(prefix, _sidecar())
    with pytest.raises(ValueError) as info:
        check_sidecar(prefix, _run_tokenizer(identity="HuggingFaceTokenizer:sha256:zzz", **run))
    text = str(info.value)
    for fragment in [
        sidecar_path(prefix),
        "SentencePieceTokenizer:sha256:abc",
        "HuggingFaceTokenizer:sha256:zzz",
        *shown,
    ]:
        assert fragment in text


def test_identity_difference_alone_only_warns(tmp_path, caplog):
    prefix = str(tmp_path / "resaved")
    write_sidecar(prefix, _sidecar())
    with caplog.at_level(logging.WARNING, logger="megatron_pause.data.sidecar"):
        assert (
            check_sidecar(prefix, _run_tokenizer(identity="SentencePieceTokenizer:sha256:other")) is not None
        )
    assert "sha256:other" in caplog.text
