"""The pause sidecar: a small JSON file next to an indexed dataset that says how it was made.

A Megatron indexed dataset (``P.bin`` / ``P.idx``) stores bare token ids; nothing in it says which
tokenizer produced them, which id is ``<pause>`` or whether pauses were already inserted offline.
Training on such data with a different tokenizer fails silently (the model learns garbage), and a
pause id that disagrees between the data and the run masks the wrong tokens out of the loss. The
sidecar ``P.pause.json`` records the facts needed to catch that at startup, before any compute is
spent. Datasets without a sidecar are plain Megatron data and are accepted as they are.

The file is flat JSON so that people can read and ``jq`` it; fields the dataclass does not know
are kept in :attr:`PauseSidecar.extra` (and written back at the top level), so newer writers stay
readable by older readers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
SIDECAR_SUFFIX = ".pause.json"


@dataclass
class PauseSidecar:
    """What one indexed dataset was built with, and what it holds."""

    tokenizer: str  # PauseTokenizer.identity, e.g. "SentencePieceTokenizer:sha256:<hex>"
    tokenizer_type: str
    vocab_size: int  # unpadded: base vocab (+1 if <pause> was appended)
    pause_id: int
    eod: int
    pause_fraction: float  # 0.0 when no pauses were inserted offline
    seed: int
    documents: int
    tokens: int  # all tokens in the .bin, pauses and eod included
    pause_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)


_KNOWN_FIELDS = tuple(f.name for f in dataclasses.fields(PauseSidecar) if f.name != "extra")
# Expected JSON types per field; bool is excluded from int on purpose (json true is not a count).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "tokenizer": (str,),
    "tokenizer_type": (str,),
    "vocab_size": (int,),
    "pause_id": (int,),
    "eod": (int,),
    "pause_fraction": (int, float),
    "seed": (int,),
    "documents": (int,),
    "tokens": (int,),
    "pause_tokens": (int,),
}


def sidecar_path(prefix: str) -> str:
    """``P.pause.json`` for the indexed dataset prefix ``P`` (the path without .bin/.idx)."""
    return prefix + SIDECAR_SUFFIX


def sidecar_to_dict(sidecar: PauseSidecar) -> dict[str, Any]:
    clash = set(sidecar.extra) & (set(_KNOWN_FIELDS) | {"format"})
    if clash:
        raise ValueError(f"sidecar extra fields clash with standard fields: {sorted(clash)}")
    data: dict[str, Any] = {"format": SIDECAR_FORMAT}
    for name in _KNOWN_FIELDS:
        data[name] = getattr(sidecar, name)
    data.update(sidecar.extra)
    return data


def write_sidecar(prefix: str, sidecar: PauseSidecar) -> None:
    """Write ``P.pause.json`` atomically: a reader sees the old file or the new one, never half."""
    path = sidecar_path(prefix)
    text = json.dumps(sidecar_to_dict(sidecar), indent=2, sort_keys=False) + "\n"
    # A per-process temporary name (not mkstemp, whose 0600 mode would make the sidecar
    # unreadable to the other users of a shared dataset folder).
    tmp = f"{path}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_sidecar(prefix: str) -> PauseSidecar | None:
    """Read ``P.pause.json``; None when it does not exist (plain Megatron data).

    A file that exists but cannot be used raises ValueError naming the file and the problem:
    a corrupt sidecar must not be mistaken for an absent one.
    """
    path = sidecar_path(prefix)
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"pause sidecar {path} is not valid JSON ({exc}); delete it or re-run preprocessing"
        ) from exc
    if not isinstance(data, dict):
        raise ValueError(f"pause sidecar {path} must hold a JSON object, found {type(data).__name__}")
    fmt = data.get("format")
    if fmt != SIDECAR_FORMAT:
        raise ValueError(
            f"pause sidecar {path} has format {fmt!r}; this version reads format {SIDECAR_FORMAT}"
        )
    missing = [name for name in _KNOWN_FIELDS if name not in data]
    if missing:
        raise ValueError(f"pause sidecar {path} lacks fields {missing}")
    for name, types in _FIELD_TYPES.items():
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"pause sidecar {path}: field {name!r} has invalid value {value!r}")
    known = {name: data[name] for name in _KNOWN_FIELDS}
    known["pause_fraction"] = float(known["pause_fraction"])
    extra = {k: v for k, v in data.items() if k not in _KNOWN_FIELDS and k != "format"}
    return PauseSidecar(**known, extra=extra)


def check_sidecar(prefix: str, tokenizer: Any) -> PauseSidecar | None:
    """Check that the dataset at ``prefix`` was made with a tokenizer compatible with the run's.

    ``tokenizer`` is a :class:`megatron_pause.tokenizer.PauseTokenizer` (anything with
    ``vocab_size``, ``pause_id`` and ``identity``). Raises ValueError naming the sidecar, the
    dataset's values and the run's when the pause id or the (unpadded) vocabulary size disagree.
    A differing identity with equal ids is only logged: re-saving a Hugging Face folder changes
    its bytes without changing its ids. Returns the sidecar, or None when the dataset has none.
    """
    sidecar = read_sidecar(prefix)
    if sidecar is None:
        return None
    run_vocab = int(tokenizer.vocab_size)
    run_pause = int(tokenizer.pause_id)
    run_identity = str(getattr(tokenizer, "identity", "?"))
    problems = []
    if sidecar.pause_id != run_pause:
        problems.append(f"pause id {sidecar.pause_id} in the data vs {run_pause} in this run")
    if sidecar.vocab_size != run_vocab:
        problems.append(f"vocab size {sidecar.vocab_size} in the data vs {run_vocab} in this run")
    if problems:
        raise ValueError(
            f"dataset {prefix} does not match this run's tokenizer ({'; '.join(problems)}). "
            f"{sidecar_path(prefix)} says it was made with tokenizer {sidecar.tokenizer} "
            f"({sidecar.tokenizer_type}); this run uses {run_identity}. Re-run preprocessing with this "
            "tokenizer or pass the tokenizer the data was made with (--tokenizer-type/--tokenizer-model)."
        )
    if sidecar.tokenizer != run_identity:
        logger.warning(
            "dataset %s was made with tokenizer %s, this run uses %s; vocab size and pause id agree, continuing",
            prefix,
            sidecar.tokenizer,
            run_identity,
        )
    return sidecar
