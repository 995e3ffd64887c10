"""Tokenizers that know about ``<pause>``: one interface over SentencePiece and Hugging Face.

Pause training needs one extra id. A tokenizer trained for it (``tools/train_tokenizer.py``)
already has a ``<pause>`` piece; any other tokenizer (a Llama SentencePiece model, a GPT-2 folder)
gets ``<pause>`` appended as id ``base_vocab_size``, which the embedding learns from scratch, as
in the paper. Either way the rest of the code sees one ``pause_id`` and one ``vocab_size``.

The tokenizer names are Megatron-LM's ``--tokenizer-type`` values so that existing command lines
keep working. Only local files are read: there is no model hub on the machines this runs on, and a
training job must not depend on one.

``identity`` is a content hash of the tokenizer files, so the pause sidecar written by
preprocessing can tell, on any machine, whether a dataset was made with the run's tokenizer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from megatron_pause.pause import DEFAULT_PAUSE_TOKEN

SENTENCEPIECE = "SentencePieceTokenizer"
HUGGINGFACE = "HuggingFaceTokenizer"
# Megatron-LM names that load a SentencePiece model. Llama2Tokenizer prepends BOS to every
# tokenized text, as Megatron-LM's does; the others add no specials.
_SENTENCEPIECE_ALIASES = {"SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer"}
_ADD_BOS_TYPES = {"Llama2Tokenizer"}
_HUGGINGFACE_ALIASES = {"HuggingFaceTokenizer"}
SUPPORTED_TOKENIZER_TYPES = tuple(sorted(_SENTENCEPIECE_ALIASES | _HUGGINGFACE_ALIASES))

# Files that define a Hugging Face tokenizer; model weights and model config are excluded from
# the identity hash because they do not change tokenization.
_HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
)


def padded_vocab_size(
    vocab_size: int, make_vocab_size_divisible_by: int = 128, tensor_model_parallel_size: int = 1
) -> int:
    """Megatron's rule: round up to a multiple of ``make_vocab_size_divisible_by * TP`` so the
    embedding splits evenly across tensor-parallel ranks and matmuls stay aligned."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if make_vocab_size_divisible_by <= 0 or tensor_model_parallel_size <= 0:
        raise ValueError(
            "make_vocab_size_divisible_by and tensor_model_parallel_size must be positive, got "
            f"{make_vocab_size_divisible_by} and {tensor_model_parallel_size}"
        )
    multiple = make_vocab_size_divisible_by * tensor_model_parallel_size
    return -(-vocab_size // multiple) * multiple


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _SentencePieceBackend:
    def __init__(self, model_path: str):
        import sentencepiece as spm

        self.model_path = model_path
        self.sp = spm.SentencePieceProcessor(model_file=model_path)
        # sentencepiece >= 0.2.1 returns int32 buffers directly; older versions return lists.
        self._has_numpy = hasattr(self.sp, "EncodeAsNumpy")

    @property
    def base_vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    def find_piece(self, piece: str) -> int | None:
        i = int(self.sp.piece_to_id(piece))
        if i < 0 or i >= self.base_vocab_size or self.sp.id_to_piece(i) != piece:
            return None
        return i

    def special_ids(self) -> tuple[int | None, int | None, int | None]:
        def opt(i: int) -> int | None:
            return None if i < 0 else int(i)

        return opt(self.sp.eos_id()), opt(self.sp.pad_id()), opt(self.sp.bos_id())

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch_arrays(self, texts: list[str], num_threads: int) -> list[np.ndarray]:
        if self._has_numpy:
            return self.sp.encode(texts, out_type="numpy", num_threads=num_threads)
        return [
            np.asarray(ids, dtype=np.int32)
            for ids in self.sp.encode(texts, out_type=int, num_threads=num_threads)
        ]

    def encode_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int, num_threads=num_threads)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


class _HuggingFaceBackend:
    def __init__(self, folder: str):
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # optional dependency: only HF users need it
            raise ImportError(
                "HuggingFaceTokenizer needs the 'transformers' package: pip install 'megatron_pause[hf]'"
            ) from exc
        self.folder = folder
        self.tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    @property
    def base_vocab_size(self) -> int:
        return len(self.tok)

    def find_piece(self, piece: str) -> int | None:
        return self.tok.get_vocab().get(piece)

    def special_ids(self) -> tuple[int | None, int | None, int | None]:
        return self.tok.eos_token_id, self.tok.pad_token_id, self.tok.bos_token_id

    def register_appended(self, piece: str, token_id: int) -> None:
        """Make a literal ``piece`` in text encode to the appended pause id, as SentencePiece does
        for its ``<pause>`` piece (and as the exported Hugging Face tokenizer does)."""
        from transformers import AddedToken

        self.tok.add_tokens([AddedToken(piece, special=True, normalized=False)])
        if self.tok.convert_tokens_to_ids(piece) != token_id:
            raise ValueError(f"{piece} got id {self.tok.convert_tokens_to_ids(piece)}, expected {token_id}")

    def encode(self, text: str) -> list[int]:
        # Megatron-LM's HuggingFaceTokenizer keeps the tokenizer's own special-token policy.
        return list(self.tok(text)["input_ids"])

    def encode_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        # Fast tokenizers parallelise batches in Rust; num_threads is left to TOKENIZERS_PARALLELISM.
        return [list(ids) for ids in self.tok(texts)["input_ids"]]

    def encode_batch_arrays(self, texts: list[str], num_threads: int) -> list[np.ndarray]:
        # The Rust tokenizer's own batch call skips transformers' per-text Python conversion (2x
        # faster on 128k short texts), but a tokenizer class may add Python-side steps, so its ids
        # are used only where they match the full call on a sample of the batch.
        rust = getattr(self.tok, "backend_tokenizer", None)
        if rust is not None and self._rust_matches(rust, texts[:64]):
            return [
                np.asarray(e.ids, dtype=np.int32) for e in rust.encode_batch(texts, add_special_tokens=True)
            ]
        return [np.asarray(ids, dtype=np.int32) for ids in self.tok(texts)["input_ids"]]

    def _rust_matches(self, rust, sample: list[str]) -> bool:
        if not sample:
            return True
        direct = [e.ids for e in rust.encode_batch(sample, add_special_tokens=True)]
        return direct == [list(ids) for ids in self.tok(sample)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def identity_hash(self) -> str:
        h = hashlib.sha256()
        found = [name for name in _HF_TOKENIZER_FILES if os.path.isfile(os.path.join(self.folder, name))]
        for name in found:
            h.update(name.encode() + b"\0" + _sha256_file(os.path.join(self.folder, name)).encode() + b"\n")
        return h.hexdigest()


class PauseTokenizer:
    """A tokenizer plus a ``<pause>`` id, with Megatron's eod/pad conventions.

    Build one with :func:`build_tokenizer`. ``vocab_size`` is unpadded; use
    :meth:`padded_vocab_size` for the embedding size.
    """

    def __init__(self, backend: Any, tokenizer_type: str, identity: str, pause_token: str, add_bos: bool):
        self._backend = backend
        self.tokenizer_type = tokenizer_type
        self.identity = identity
        self.pause_token = pause_token
        self.add_bos = add_bos
        self.base_vocab_size = int(backend.base_vocab_size)
        existing = backend.find_piece(pause_token)
        self.pause_appended = existing is None
        self.pause_id = self.base_vocab_size if existing is None else int(existing)
        self.vocab_size = self.base_vocab_size + (1 if self.pause_appended else 0)
        if self.pause_appended and hasattr(backend, "register_appended"):
            # One contract for text that contains a literal "<pause>": it is the pause id.
            backend.register_appended(pause_token, self.pause_id)
        eos, pad, bos = backend.special_ids()
        if eos is None:
            raise ValueError(
                f"tokenizer {identity} has no end-of-sequence token, which Megatron uses as end-of-document "
                "(eod); use a tokenizer with an eos token (tools/train_tokenizer.py sets one)"
            )
        self.eod = int(eos)
        self.pad = int(pad) if pad is not None else self.eod
        self.bos = int(bos) if bos is not None else None
        if self.add_bos and self.bos is None:
            raise ValueError(f"{tokenizer_type} prepends BOS but tokenizer {identity} has no bos token")

    def __repr__(self) -> str:
        return (
            f"PauseTokenizer({self.tokenizer_type}, vocab_size={self.vocab_size}, pause_id={self.pause_id}, "
            f"eod={self.eod}, identity={self.identity})"
        )

    def tokenize(self, text: str) -> list[int]:
        ids = self._backend.encode(text)
        return [self.bos, *ids] if self.add_bos else list(ids)

    def tokenize_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """Tokenize many texts at once; SentencePiece encodes them on ``num_threads`` C++ threads."""
        out = self._backend.encode_batch(list(texts), num_threads)
        return [[self.bos, *ids] for ids in out] if self.add_bos else [list(ids) for ids in out]

    def tokenize_batch_arrays(
        self, texts: list[str], num_threads: int = 1, add_bos: bool | None = None
    ) -> list[np.ndarray]:
        """Like :meth:`tokenize_batch` but returns int32 arrays (no per-token Python objects):
        the preprocessing hot path. ``add_bos=False`` skips the BOS that Llama2Tokenizer would
        prepend (preprocessing adds it once per document itself)."""
        out = self._backend.encode_batch_arrays(list(texts), num_threads)
        if self.add_bos if add_bos is None else add_bos:
            bos = np.array([self.bos], dtype=np.int32)
            out = [np.concatenate([bos, ids]) for ids in out]
        return out

    def detokenize(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text for ``ids`` with every pause dropped (pauses carry no text, and an appended pause id
        is unknown to the underlying tokenizer)."""
        kept = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1) if int(i) != self.pause_id]
        return self._backend.decode(kept)

    def padded_vocab_size(
        self, make_vocab_size_divisible_by: int = 128, tensor_model_parallel_size: int = 1
    ) -> int:
        return padded_vocab_size(self.vocab_size, make_vocab_size_divisible_by, tensor_model_parallel_size)


def canonical_tokenizer_type(tokenizer_type: str) -> str:
    if tokenizer_type in _SENTENCEPIECE_ALIASES:
        return SENTENCEPIECE
    if tokenizer_type in _HUGGINGFACE_ALIASES:
        return HUGGINGFACE
    raise ValueError(
        f"unknown --tokenizer-type {tokenizer_type!r}; supported: {', '.join(SUPPORTED_TOKENIZER_TYPES)}"
    )


def build_tokenizer(
    tokenizer_type: str, tokenizer_model: str | None, pause_token: str = DEFAULT_PAUSE_TOKEN
) -> PauseTokenizer:
    """Load a tokenizer from local files.

    ``tokenizer_model`` is a SentencePiece ``.model`` file for the SentencePiece types and a local
    folder (``save_pretrained`` output) for ``HuggingFaceTokenizer``.
    """
    canonical = canonical_tokenizer_type(tokenizer_type)
    if not tokenizer_model:
        raise ValueError(f"--tokenizer-model is required for {tokenizer_type}")
    if canonical == SENTENCEPIECE:
        if not os.path.isfile(tokenizer_model):
            raise FileNotFoundError(f"SentencePiece model file not found: {tokenizer_model}")
        backend = _SentencePieceBackend(tokenizer_model)
        identity = f"{SENTENCEPIECE}:sha256:{_sha256_file(tokenizer_model)}"
    else:
        if not os.path.isdir(tokenizer_model):
            raise FileNotFoundError(
                f"Hugging Face tokenizer folder not found: {tokenizer_model} (a local folder written by "
                "save_pretrained; hub names are not supported because nothing is downloaded)"
            )
        backend = _HuggingFaceBackend(tokenizer_model)
        identity = f"{HUGGINGFACE}:sha256:{backend.identity_hash()}"
    return PauseTokenizer(backend, canonical, identity, pause_token, add_bos=tokenizer_type in _ADD_BOS_TYPES)
