"""Offline preprocessing: JSONL(.gz) text -> Megatron indexed datasets, optionally with pauses.

This is Megatron-LM's ``tools/preprocess_data.py`` rebuilt for pause training and for the
failure modes that bite at C4 scale:

* **Every ``--json-keys`` key gets a complete output** (``<prefix>_<key>_document.bin/.idx``).
  Megatron-LM 0.16.1 finalizes only the last key's index.
* **Pauses can be inserted offline** (``--insert-pauses FRACTION``): each document gets
  ``num_pauses(len, FRACTION)`` pauses at uniformly random positions among its tokens (the eod
  that ``--append-eod`` adds stays last). The positions come from
  ``pause_key(seed, document_key(text), OFFLINE_STREAM)``: they depend only on the seed and the
  document's own text, so they are the same for any ``--workers``, any sharding, any input order
  and any re-run. A ``.pause.json`` sidecar records tokenizer, pause id, fraction, seed and counts.
* **Bad input never stops the run**: malformed JSON, a missing or non-string key, invalid UTF-8,
  empty documents, over-long lines and truncated gzip are skipped, counted by reason and logged
  (file, line, reason) to ``<prefix>.rejects.jsonl``; huge documents are split (or truncated or
  skipped, ``--huge-document-policy``). ``--max-bad-fraction`` turns too many rejects into a
  failure: the run then exits nonzero and publishes nothing under the final names.
* **Interruption never leaves a complete-looking dataset**: outputs are written under temporary
  names and renamed at the end, ``.bin`` first and ``.idx`` last, after any stale ``.idx`` of the
  same name has been removed.
* **Sentence splitting works offline** (Punkt parameters from JSON, see ``sentences.py``).

Throughput design: one process reads and parses JSON while SentencePiece encodes the previous
batch on ``--workers`` C++ threads with the GIL released, and the batch before that is written
(pause insertion, numpy, ``IndexedDatasetBuilder``). Tokenization is the only parallel stage, so
``--workers 1`` and ``--workers 2`` produce byte-identical files, and memory is bounded by a few
batches whatever the corpus size. The main thread shares the cores with the tokenizer threads, so
its work is kept per batch wherever it need not be per document (see ``_write_documents``).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from megatron_pause.data.jsonl_reader import JsonlFile, iter_records, resolve_inputs, shard_name
from megatron_pause.data.sidecar import PauseSidecar, read_sidecar, sidecar_path, write_sidecar
from megatron_pause.pause import (
    DEFAULT_PAUSE_TOKEN,
    OFFLINE_STREAM,
    document_key,
    fill_pause_slots,
    num_pauses,
    pause_key,
    pause_slots,
)

HUGE_DOCUMENT_POLICIES = ("split", "truncate", "skip")
# Reasons a (line, key) is skipped. Every one is counted and logged to the rejects file.
REJECT_REASONS = (
    "blank_line",
    "malformed_json",
    "not_an_object",
    "missing_key",
    "non_string_key",
    "invalid_utf8",
    "empty_document",
    "line_too_long",
    "corrupt_input",
    "huge_document_skipped",
)
# Documents that were kept but changed; counted and logged, but not "bad".
HANDLED_REASONS = ("huge_document_split", "huge_document_truncated")

EXIT_OK = 0
EXIT_TOO_MANY_BAD = 3
EXIT_INTERRUPTED = 130


@dataclass
class PreprocessConfig:
    """Everything one preprocessing run needs; field names follow Megatron-LM's flags."""

    input: list[str]
    output_prefix: str
    tokenizer_type: str
    tokenizer_model: str
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    append_eod: bool = False
    split_sentences: bool = False
    keep_newlines: bool = False
    lang: str = "english"
    punkt_params: str | None = None
    train_punkt_params: bool = False
    punkt_train_documents: int = 5000
    workers: int = 1
    log_interval: int = 1000
    log_interval_seconds: float = 30.0
    insert_pauses: float = 0.0
    seed: int = 1234
    pause_token: str = DEFAULT_PAUSE_TOKEN
    output_per_shard: bool = False
    merge: bool = False
    max_document_chars: int = 1_000_000
    huge_document_policy: str = "split"
    max_line_bytes: int = 256 << 20
    max_bad_fraction: float | None = None
    # Characters of text per tokenizer call; larger batches amortize thread start-up, smaller
    # ones bound memory (about 3 batches are alive at once).
    batch_chars: int = 2_000_000

    def validate(self) -> None:
        if not self.json_keys:
            raise ValueError("--json-keys needs at least one key")
        if len(set(self.json_keys)) != len(self.json_keys):
            raise ValueError(f"--json-keys has duplicates: {self.json_keys}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if not 0.0 <= self.insert_pauses <= 10.0:
            raise ValueError(f"--insert-pauses must be a fraction in [0, 10], got {self.insert_pauses}")
        if self.huge_document_policy not in HUGE_DOCUMENT_POLICIES:
            raise ValueError(f"--huge-document-policy must be one of {HUGE_DOCUMENT_POLICIES}")
        if self.max_document_chars < 1:
            raise ValueError("--max-document-chars must be positive")
        if self.max_bad_fraction is not None and not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"--max-bad-fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.merge and not self.output_per_shard:
            raise ValueError("--merge combines per-shard outputs; it needs --output-per-shard")
        if self.log_interval < 1:
            raise ValueError("--log-interval must be >= 1")

    @property
    def level(self) -> str:
        return "sentence" if self.split_sentences else "document"


@dataclass
class OutputSummary:
    """One finished indexed dataset."""

    prefix: str
    json_key: str
    documents: int
    sequences: int
    tokens: int
    pause_tokens: int
    literal_pause_tokens: int


@dataclass
class PreprocessResult:
    records: int
    rejected: Counter
    handled: Counter
    outputs: list[OutputSummary]  # one per (shard,) key; not published when exit_code != 0
    merged: list[OutputSummary]  # --merge results, one per key
    bad_fraction: float
    elapsed_s: float
    cpu_s: float  # CPU time of this process (all threads) over the same span
    stored_bytes: int
    exit_code: int
    rejects_path: str

    @property
    def documents(self) -> int:
        return sum(o.documents for o in self.outputs)

    @property
    def tokens(self) -> int:
        return sum(o.tokens for o in self.outputs)

    @property
    def pause_tokens(self) -> int:
        return sum(o.pause_tokens for o in self.outputs)


def output_prefix_for(cfg: PreprocessConfig, key: str, shard: str | None = None) -> str:
    """Megatron's naming, ``<prefix>_<key>_document``; per-shard outputs add the shard name."""
    middle = f"_{shard}" if shard else ""
    return f"{cfg.output_prefix}{middle}_{key}_{cfg.level}"


def rejects_path_for(output_prefix: str) -> str:
    return output_prefix + ".rejects.jsonl"


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _index_dtype(vocab_size: int):
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


class _PendingOutput:
    """An indexed dataset being written under temporary names until :meth:`publish`."""

    def __init__(self, prefix: str, json_key: str, dtype: Any):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.prefix = prefix
        self.json_key = json_key
        directory = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(directory, exist_ok=True)
        tag = f".tmp.{os.getpid()}"
        self.bin_tmp = prefix + ".bin" + tag
        self.idx_tmp = prefix + ".idx" + tag
        self.builder = IndexedDatasetBuilder(self.bin_tmp, dtype=dtype)
        self.dtype = dtype
        self.documents = 0
        self.sequences = 0
        self.tokens = 0
        self.pause_tokens = 0
        self.literal_pause_tokens = 0
        self.closed = False

    def add_document(self, tokens: np.ndarray, lengths: list[int], pauses: int, literal_pauses: int) -> None:
        self.builder.add_document(tokens, lengths)
        self.documents += 1
        self.sequences += len(lengths)
        self.tokens += int(tokens.shape[0])
        self.pause_tokens += pauses + literal_pauses
        self.literal_pause_tokens += literal_pauses

    def add_documents(
        self, tokens: np.ndarray, lengths: np.ndarray, pauses: int, literal_pauses: int
    ) -> None:
        """Append many one-sequence documents at once: ``tokens`` is their concatenation (in the
        builder's dtype), ``lengths`` their lengths.

        Writes exactly what ``builder.add_document`` once per document would, with one write and
        two list extends instead of a copy, a ``tobytes`` and a write per document. It reaches into
        the builder's lists, which megatron-core (pinned at 0.16.1) finalizes into the .idx.
        """
        builder = self.builder
        builder.data_file.write(memoryview(np.ascontiguousarray(tokens, dtype=builder.dtype)))
        count = int(lengths.shape[0])
        base = len(builder.sequence_lengths)
        builder.sequence_lengths.extend(lengths.tolist())
        builder.document_indices.extend(range(base + 1, base + count + 1))
        self.documents += count
        self.sequences += count
        self.tokens += int(tokens.shape[0])
        self.pause_tokens += pauses + literal_pauses
        self.literal_pause_tokens += literal_pauses

    def finish(self) -> None:
        """Write the .idx (still under its temporary name) and free the builder's index lists,
        so that a run over many shards holds one open builder at a time."""
        if self.builder is None:
            return
        self.builder.finalize(self.idx_tmp)
        self.builder = None
        for path in (self.bin_tmp, self.idx_tmp):
            with open(path, "rb+") as f:
                os.fsync(f.fileno())

    def publish(self, sidecar: PauseSidecar) -> OutputSummary:
        """Move everything to its final name, .idx last.

        A stale final .idx is removed first: otherwise a crash between the renames would pair a
        new .bin with an old .idx under names that look complete.
        """
        self.finish()
        _remove_quietly(self.prefix + ".idx")
        _remove_quietly(sidecar_path(self.prefix))
        os.replace(self.bin_tmp, self.prefix + ".bin")
        write_sidecar(self.prefix, sidecar)
        os.replace(self.idx_tmp, self.prefix + ".idx")
        self.closed = True
        return self.summary()

    def summary(self) -> OutputSummary:
        return OutputSummary(
            self.prefix,
            self.json_key,
            self.documents,
            self.sequences,
            self.tokens,
            self.pause_tokens,
            self.literal_pause_tokens,
        )

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.builder is not None:
            try:
                self.builder.data_file.close()
            except OSError:  # best effort during cleanup
                pass
        _remove_quietly(self.bin_tmp)
        _remove_quietly(self.idx_tmp)


class _RejectLog:
    """``<prefix>.rejects.jsonl``: one JSON line per skipped or altered (line, key)."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = path + f".tmp.{os.getpid()}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._f = open(self.tmp, "w", encoding="utf-8")
        self.rejected: Counter = Counter()
        self.handled: Counter = Counter()
        # (line, key) slots rejected: a line-level problem costs one slot per json key.
        self.bad_slots = 0

    def log(
        self, file: str, line: int, key: str | None, reason: str, detail: str = "", slots: int = 1
    ) -> None:
        if reason in HANDLED_REASONS:
            self.handled[reason] += 1
        else:
            self.rejected[reason] += 1
            self.bad_slots += slots
        entry = {"file": file, "line": line, "key": key, "reason": reason}
        if detail:
            entry["detail"] = detail[:300]
        self._f.write(json.dumps(entry, ensure_ascii=True) + "\n")

    def publish(self) -> None:
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        _remove_quietly(self.tmp)


@dataclass
class _Doc:
    """A document waiting in a batch: where it came from, its pause key and its text pieces."""

    output: _PendingOutput
    file: str
    line: int
    pause_key: int
    pieces: int  # texts it occupies in the batch (1, or its sentence count)


@dataclass
class _Batch:
    texts: list[str] = field(default_factory=list)
    docs: list[_Doc] = field(default_factory=list)
    chars: int = 0


def split_huge_text(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters, at the last whitespace in
    the final tenth of each window when there is one (so words are not split)."""
    chunks = []
    start, n = 0, len(text)
    while n - start > max_chars:
        end = start + max_chars
        window_start = end - max(1, max_chars // 10)
        cut = max(text.rfind(" ", window_start, end), text.rfind("\n", window_start, end))
        if cut <= start:
            cut = end
        else:
            cut += 1  # keep the whitespace with the left piece
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return [c for c in chunks if c.strip()]


class Preprocessor:
    """One run over the inputs. Use :func:`run_preprocess` unless you need the pieces."""

    def __init__(self, cfg: PreprocessConfig, log: Callable[[str], None] | None = None):
        from megatron_pause.tokenizer import build_tokenizer

        cfg.validate()
        self.cfg = cfg
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.files = resolve_inputs(cfg.input)
        if cfg.output_per_shard:
            names = Counter(shard_name(p) for p in self.files)
            clashes = sorted(name for name, n in names.items() if n > 1)
            if clashes:
                raise ValueError(f"--output-per-shard needs distinct file names; these repeat: {clashes}")
        self.tokenizer = build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_model, cfg.pause_token)
        self.dtype = _index_dtype(self.tokenizer.vocab_size)
        self.splitter = self._build_splitter() if cfg.split_sentences else None
        self.total_stored_bytes = sum(os.path.getsize(p) for p in self.files)
        self.done_stored_bytes = 0
        self.current_file: JsonlFile | None = None
        self.records = 0
        self.written_docs = 0
        self.written_tokens = 0
        self.start = 0.0
        self.next_log_docs = cfg.log_interval
        self.next_log_time = 0.0
        # When <pause> is a real piece of the tokenizer, literal "<pause>" text encodes to it;
        # those are counted separately so the sidecar's numbers add up.
        self.count_literal_pauses = not self.tokenizer.pause_appended

    # -- setup -----------------------------------------------------------------------------
    def _build_splitter(self):
        from megatron_pause.data.sentences import SentenceSplitter, resolve_punkt_params, train_punkt_params

        if self.cfg.train_punkt_params:
            params = train_punkt_params(self._head_texts(self.cfg.punkt_train_documents))
            self.log(f"trained Punkt parameters on the first {self.cfg.punkt_train_documents} documents")
        else:
            params = resolve_punkt_params(self.cfg.lang, self.cfg.punkt_params)
        return SentenceSplitter(params, keep_newlines=self.cfg.keep_newlines)

    def _head_texts(self, limit: int):
        for seen, record in enumerate(iter_records(self.files, self.cfg.max_line_bytes), start=1):
            for key in self.cfg.json_keys:
                text = record.get(key)
                if isinstance(text, str):
                    yield text
            if seen >= limit:
                return

    # -- per-record work ---------------------------------------------------------------------
    def _add_text(
        self, batch: _Batch, output: _PendingOutput, file: str, line: int, text: str, reject
    ) -> None:
        cfg = self.cfg
        if len(text) > cfg.max_document_chars:
            policy = cfg.huge_document_policy
            if policy == "skip":
                reject(
                    "huge_document_skipped",
                    f"{len(text)} chars > --max-document-chars {cfg.max_document_chars}",
                )
                return
            chunks = split_huge_text(text, cfg.max_document_chars)
            if policy == "truncate":
                reject("huge_document_truncated", f"{len(text)} chars cut to {len(chunks[0])}")
                chunks = chunks[:1]
            else:
                reject("huge_document_split", f"{len(text)} chars -> {len(chunks)} documents")
        else:
            chunks = [text]
        for chunk in chunks:
            key = document_key(chunk)
            if self.splitter is not None:
                sentences = [s for s in self.splitter.split(chunk) if s.strip()]
                if not sentences:
                    reject("empty_document", "no sentences")
                    continue
                batch.texts.extend(sentences)
                batch.docs.append(_Doc(output, file, line, key, len(sentences)))
            else:
                batch.texts.append(chunk)
                batch.docs.append(_Doc(output, file, line, key, 1))
            batch.chars += len(chunk)

    def _parse_into(
        self,
        batch: _Batch,
        outputs: list[_PendingOutput],
        file: str,
        line: int,
        data: bytes,
        rejects: _RejectLog,
    ) -> None:
        keys = self.cfg.json_keys
        try:
            record = json.loads(data)
        except UnicodeDecodeError as exc:
            rejects.log(file, line, None, "invalid_utf8", str(exc), slots=len(keys))
            return
        except ValueError as exc:
            reason = "blank_line" if not data.strip() else "malformed_json"
            rejects.log(file, line, None, reason, str(exc), slots=len(keys))
            return
        except RecursionError:
            rejects.log(file, line, None, "malformed_json", "nesting too deep", slots=len(keys))
            return
        if not isinstance(record, dict):
            rejects.log(file, line, None, "not_an_object", type(record).__name__, slots=len(keys))
            return
        for output, key in zip(outputs, keys):
            text = record.get(key, _MISSING)
            if text is _MISSING:
                rejects.log(file, line, key, "missing_key")
                continue
            if not isinstance(text, str):
                rejects.log(file, line, key, "non_string_key", type(text).__name__)
                continue
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:  # lone surrogates from \ud800-style escapes
                    rejects.log(file, line, key, "invalid_utf8", str(exc))
                    continue
            if not text or text.isspace():  # == not text.strip(), without copying the text
                rejects.log(file, line, key, "empty_document")
                continue

            def reject(reason: str, detail: str, _key: str = key) -> None:
                rejects.log(file, line, _key, reason, detail)

            self._add_text(batch, output, file, line, text, reject)

    # -- tokenized batch -> outputs ----------------------------------------------------------
    def _write_batch(self, batch: _Batch, arrays: list[np.ndarray], rejects: _RejectLog) -> None:
        if self.splitter is None:
            self._write_documents(batch, arrays, rejects)
        else:
            self._write_sentence_documents(batch, arrays, rejects)
        self._maybe_log_progress()

    def _write_documents(self, batch: _Batch, arrays: list[np.ndarray], rejects: _RejectLog) -> None:
        """One text per document: the whole batch is assembled with a few array operations.

        This runs on the main thread while SentencePiece's threads encode the next batch, on the
        same cores, so every CPU-second here is one the tokenizer loses. Per document only what
        must be per document stays in Python: the pause count and the pause slots (each document
        has its own generator, keyed on its text). Inserting the pauses, BOS and eod, the dtype
        conversion and the write happen once per batch and output; the bytes are those of
        ``insert_pauses`` + ``builder.add_document`` per document.
        """
        cfg, tok = self.cfg, self.tokenizer
        fraction = cfg.insert_pauses
        pause_id = tok.pause_id
        head = 1 if tok.add_bos else 0  # BOS (Llama2Tokenizer) stays first
        tail = 1 if cfg.append_eod else 0  # eod stays last
        seed = cfg.seed
        # id(output) -> (output, token arrays, pause-slot masks, body slots, pauses) in document order
        groups: dict[int, tuple[_PendingOutput, list, list, list, list]] = {}
        for doc, tokens in zip(batch.docs, arrays):
            n = tokens.shape[0]
            if n == 0:
                rejects.log(doc.file, doc.line, doc.output.json_key, "empty_document", "no tokens")
                continue
            group = groups.get(id(doc.output))
            if group is None:
                group = groups[id(doc.output)] = (doc.output, [], [], [], [])
            k = num_pauses(n, fraction) if fraction > 0.0 else 0
            group[1].append(tokens)
            if k:
                group[2].append(pause_slots(n + k, k, pause_key(seed, doc.pause_key, OFFLINE_STREAM)))
            else:
                group[2].append(np.zeros(n, dtype=bool))
            group[3].append(n + k)
            group[4].append(k)
        for output, token_arrays, masks, body_slots, pauses in groups.values():
            text = np.concatenate(token_arrays)
            is_pause = np.concatenate(masks)
            body = fill_pause_slots(is_pause, text, pause_id, output.dtype)
            lengths = np.asarray(body_slots, dtype=np.int64)
            if head or tail:
                lengths += head + tail
                ends = np.cumsum(lengths)
                out = np.empty(int(ends[-1]), dtype=output.dtype)
                is_body = np.ones(out.shape[0], dtype=bool)
                if head:
                    starts = ends - lengths
                    is_body[starts] = False
                    out[starts] = tok.bos
                if tail:
                    is_body[ends - 1] = False
                    out[ends - 1] = tok.eod
                out[is_body] = body
            else:
                out = body
            literal = 0
            if self.count_literal_pauses:
                literal = int(np.count_nonzero(text == pause_id))
                if head and tok.bos == pause_id:
                    literal += len(token_arrays)
            output.add_documents(out, lengths, sum(pauses), literal)
            self.written_docs += len(token_arrays)
            self.written_tokens += int(out.shape[0])

    def _write_sentence_documents(self, batch: _Batch, arrays: list[np.ndarray], rejects: _RejectLog) -> None:
        """Documents split into sentences, one by one (sentence splitting costs far more)."""
        cfg = self.cfg
        tok = self.tokenizer
        fraction = cfg.insert_pauses
        pause_id = tok.pause_id
        eod = np.array([tok.eod], dtype=np.int32)
        has_bos = tok.add_bos
        bos = np.array([tok.bos if has_bos else 0], dtype=np.int32)
        position = 0
        for doc in batch.docs:
            parts = [p for p in arrays[position : position + doc.pieces] if p.shape[0]]
            if not parts:
                parts = [np.zeros(0, dtype=np.int32)]
            tokens = np.concatenate(parts) if len(parts) > 1 else parts[0]
            lengths = [int(p.shape[0]) for p in parts]
            position += doc.pieces
            if tokens.shape[0] == 0:
                rejects.log(doc.file, doc.line, doc.output.json_key, "empty_document", "no tokens")
                continue
            if has_bos:
                tokens = np.concatenate([bos, tokens])
                lengths[0] += 1
            literal = int(np.count_nonzero(tokens == pause_id)) if self.count_literal_pauses else 0
            pauses = 0
            if fraction > 0.0:
                # BOS (Llama2Tokenizer) stays first: pauses go among the text's tokens only.
                head = 1 if has_bos else 0
                body = tokens[head:]
                pauses = num_pauses(body.shape[0], fraction)
                if pauses:
                    key = pause_key(cfg.seed, doc.pause_key, OFFLINE_STREAM)
                    tokens, lengths = _insert_pauses_in_sentences(
                        tokens, lengths, head, pauses, pause_id, key
                    )
            if cfg.append_eod:
                tokens = np.concatenate([tokens, eod])
                lengths[-1] += 1
            doc.output.add_document(tokens, lengths, pauses, literal)
            self.written_docs += 1
            self.written_tokens += int(tokens.shape[0])

    # -- progress ------------------------------------------------------------------------------
    def _stored_bytes_read(self) -> int:
        current = self.current_file.stored_bytes_read if self.current_file is not None else 0
        return self.done_stored_bytes + current

    def _maybe_log_progress(self, force: bool = False) -> None:
        now = time.perf_counter()
        due_docs = self.written_docs >= self.next_log_docs
        due_time = self.cfg.log_interval_seconds > 0 and now >= self.next_log_time
        if not (force or due_docs or due_time):
            return
        while self.next_log_docs <= self.written_docs:
            self.next_log_docs += self.cfg.log_interval
        self.next_log_time = now + self.cfg.log_interval_seconds
        elapsed = max(now - self.start, 1e-9)
        read = self._stored_bytes_read()
        line = (
            f"processed {self.written_docs} documents ({self.written_docs / elapsed:.0f} docs/s, "
            f"{self.written_tokens / elapsed / 1e6:.2f} M tokens/s, {read / elapsed / 1e6:.1f} MB/s read)"
        )
        if self.total_stored_bytes > 0 and read > 0:
            fraction = min(read / self.total_stored_bytes, 1.0)
            eta = elapsed * (1.0 - fraction) / fraction
            line += (
                f", {100 * fraction:.1f}% of {self.total_stored_bytes / 1e6:.1f} MB input, ETA {eta:.0f} s"
            )
        self.log(line)

    # -- the run ---------------------------------------------------------------------------
    def _new_outputs(self, shard: str | None) -> list[_PendingOutput]:
        return [
            _PendingOutput(output_prefix_for(self.cfg, key, shard), key, self.dtype)
            for key in self.cfg.json_keys
        ]

    def _sidecar(self, output: _PendingOutput | OutputSummary, inputs: list[str]) -> PauseSidecar:
        cfg, tok = self.cfg, self.tokenizer
        return PauseSidecar(
            tokenizer=tok.identity,
            tokenizer_type=tok.tokenizer_type,
            vocab_size=tok.vocab_size,
            pause_id=tok.pause_id,
            eod=tok.eod,
            pause_fraction=float(cfg.insert_pauses),
            seed=int(cfg.seed),
            documents=output.documents,
            tokens=output.tokens,
            pause_tokens=output.pause_tokens,
            extra={
                "json_key": output.json_key,
                "level": cfg.level,
                "sequences": output.sequences,
                "append_eod": cfg.append_eod,
                "literal_pause_tokens": output.literal_pause_tokens,
                "pause_positions": "uniform among each document's tokens; eod (if appended) stays last; "
                "slots = pause_slots(n + k, k, pause_key(seed, document_key(text), OFFLINE_STREAM))",
                "max_document_chars": cfg.max_document_chars,
                "huge_document_policy": cfg.huge_document_policy,
                "inputs": [os.path.basename(p) for p in inputs],
                "created_by": "megatron_pause.data.preprocess",
            },
        )

    def run(self) -> PreprocessResult:
        cfg = self.cfg
        self.start = time.perf_counter()
        cpu_start = time.process_time()
        self.next_log_time = self.start + cfg.log_interval_seconds
        rejects = _RejectLog(rejects_path_for(cfg.output_prefix))
        open_outputs: list[_PendingOutput] = []
        finished: list[tuple[_PendingOutput, list[str]]] = []  # published only if the run succeeds
        encoder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        pending: tuple[concurrent.futures.Future, _Batch] | None = None
        encode = self.tokenizer.tokenize_batch_arrays
        threads = cfg.workers

        def flush(batch: _Batch) -> None:
            nonlocal pending
            # BOS (Llama2Tokenizer) is added once per document in _write_batch, not per text.
            future = encoder.submit(encode, batch.texts, threads, False) if batch.texts else None
            if pending is not None:
                self._write_batch(pending[1], pending[0].result(), rejects)
                pending = None
            if future is not None:
                pending = (future, batch)

        def drain() -> None:
            nonlocal pending
            if pending is not None:
                self._write_batch(pending[1], pending[0].result(), rejects)
                pending = None

        try:
            if not cfg.output_per_shard:
                open_outputs = self._new_outputs(None)
            for path in self.files:
                outputs = self._new_outputs(shard_name(path)) if cfg.output_per_shard else open_outputs
                if cfg.output_per_shard:
                    open_outputs = open_outputs + outputs
                batch = _Batch()
                limit = cfg.batch_chars
                with JsonlFile(path, cfg.max_line_bytes) as jf:
                    self.current_file = jf
                    for raw in jf:
                        self.records += 1
                        if raw.data is None:
                            rejects.log(
                                path, raw.line_number, None, raw.problem, raw.detail, slots=len(cfg.json_keys)
                            )
                            continue
                        self._parse_into(batch, outputs, path, raw.line_number, raw.data, rejects)
                        if batch.chars >= limit:
                            flush(batch)
                            batch = _Batch()
                    flush(batch)
                    drain()
                    self.done_stored_bytes += jf.size
                    self.current_file = None
                if cfg.output_per_shard:
                    for output in outputs:
                        output.finish()
                    finished.extend((o, [path]) for o in outputs)
            if not cfg.output_per_shard:
                finished.extend((o, list(self.files)) for o in open_outputs)

            slots = self.records * len(cfg.json_keys)
            bad_fraction = rejects.bad_slots / slots if slots else 0.0
            too_bad = cfg.max_bad_fraction is not None and bad_fraction > cfg.max_bad_fraction
            summaries: list[OutputSummary] = []
            merged: list[OutputSummary] = []
            if too_bad:
                for output, _ in finished:
                    output.abort()
                summaries = [o.summary() for o, _ in finished]
            else:
                for output, inputs in finished:
                    summaries.append(output.publish(self._sidecar(output, inputs)))
                if cfg.merge:
                    for key in cfg.json_keys:
                        parts = [s.prefix for s in summaries if s.json_key == key]
                        merged.append(merge_datasets(parts, output_prefix_for(cfg, key)))
            rejects.publish()
        except BaseException:
            if pending is not None:
                pending[0].cancel()
            encoder.shutdown(wait=False, cancel_futures=True)
            for output in open_outputs:
                output.abort()
            rejects.abort()
            raise
        encoder.shutdown(wait=True)
        self._maybe_log_progress(force=True)
        elapsed = time.perf_counter() - self.start
        cpu = time.process_time() - cpu_start
        return PreprocessResult(
            records=self.records,
            rejected=rejects.rejected,
            handled=rejects.handled,
            outputs=summaries,
            merged=merged,
            bad_fraction=bad_fraction,
            elapsed_s=elapsed,
            cpu_s=cpu,
            stored_bytes=self.total_stored_bytes,
            exit_code=EXIT_TOO_MANY_BAD if too_bad else EXIT_OK,
            rejects_path=rejects.path,
        )


_MISSING = object()


def _insert_pauses_in_sentences(
    tokens: np.ndarray, lengths: list[int], head: int, k: int, pause_id: int, key: int
) -> tuple[np.ndarray, list[int]]:
    """Insert ``k`` pauses into a whole document split into sentences, and re-cut the sentences.

    The slots are those of the unsplit document (the same ``pause_slots`` draw for the same key).
    Each sentence after the first starts at its first real token: a pause joins the sentence
    before it, and leading pauses join the first sentence. Every sentence must have at least one
    token.
    """
    body_len = tokens.shape[0] - head
    is_pause = pause_slots(body_len + k, k, key)
    out = np.empty(head + is_pause.shape[0], dtype=tokens.dtype)
    out[:head] = tokens[:head]
    out[head:] = fill_pause_slots(is_pause, tokens[head:], pause_id)
    # Slot of the first token of each sentence (after the first) in the output.
    starts_in_body = np.cumsum(lengths)[:-1] - head  # sentence starts, as body token positions
    slot_of_token = np.flatnonzero(~is_pause) + head
    cuts = [0] + [int(slot_of_token[s]) for s in starts_in_body] + [int(out.shape[0])]
    new_lengths = [cuts[i + 1] - cuts[i] for i in range(len(lengths))]
    return out, new_lengths


def merge_datasets(prefixes: list[str], output_prefix: str) -> OutputSummary:
    """Concatenate indexed datasets (same dtype, same tokenizer) into ``output_prefix``.

    Written like a preprocessing output: temporary names, .idx renamed last. The sidecars of the
    parts, when present, must agree on tokenizer, pause id and pause settings; the merged sidecar
    sums their counts.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder, _IndexReader

    if not prefixes:
        raise ValueError("merge_datasets needs at least one dataset")
    for prefix in prefixes:
        if not (os.path.isfile(prefix + ".idx") and os.path.isfile(prefix + ".bin")):
            raise FileNotFoundError(f"cannot merge {prefix}: {prefix}.bin/.idx not found")
    dtypes = {_IndexReader(prefix + ".idx", False).dtype for prefix in prefixes}
    if len(dtypes) != 1:
        raise ValueError(f"cannot merge datasets with different token dtypes: {sorted(map(str, dtypes))}")
    sidecars = [read_sidecar(p) for p in prefixes]
    present = [s for s in sidecars if s is not None]
    if present and len(present) != len(prefixes):
        missing = [p for p, s in zip(prefixes, sidecars) if s is None]
        raise ValueError(f"cannot merge: some parts have a pause sidecar and {missing} do not")
    if present:
        first = present[0]
        for prefix, s in zip(prefixes, present):
            mismatched = [
                name
                for name in ("tokenizer", "vocab_size", "pause_id", "eod", "pause_fraction", "seed")
                if getattr(s, name) != getattr(first, name)
            ]
            if mismatched:
                raise ValueError(
                    f"cannot merge {prefix}: its sidecar differs from {prefixes[0]}'s in {mismatched}"
                )
    dtype = dtypes.pop()
    tag = f".tmp.{os.getpid()}"
    bin_tmp, idx_tmp = output_prefix + ".bin" + tag, output_prefix + ".idx" + tag
    try:
        builder = IndexedDatasetBuilder(bin_tmp, dtype=dtype)
        for prefix in prefixes:
            builder.add_index(prefix)
        builder.finalize(idx_tmp)
        _remove_quietly(output_prefix + ".idx")
        _remove_quietly(sidecar_path(output_prefix))
        os.replace(bin_tmp, output_prefix + ".bin")
        totals = {"documents": 0, "tokens": 0, "pause_tokens": 0, "sequences": 0, "literal_pause_tokens": 0}
        if present:
            for s in present:
                totals["documents"] += s.documents
                totals["tokens"] += s.tokens
                totals["pause_tokens"] += s.pause_tokens
                totals["sequences"] += int(s.extra.get("sequences", s.documents))
                totals["literal_pause_tokens"] += int(s.extra.get("literal_pause_tokens", 0))
            extra = dict(first.extra)
            extra.update(
                sequences=totals["sequences"],
                literal_pause_tokens=totals["literal_pause_tokens"],
                inputs=[i for s in present for i in s.extra.get("inputs", [])],
                merged_from=[os.path.basename(p) for p in prefixes],
            )
            write_sidecar(
                output_prefix,
                PauseSidecar(
                    tokenizer=first.tokenizer,
                    tokenizer_type=first.tokenizer_type,
                    vocab_size=first.vocab_size,
                    pause_id=first.pause_id,
                    eod=first.eod,
                    pause_fraction=first.pause_fraction,
                    seed=first.seed,
                    documents=totals["documents"],
                    tokens=totals["tokens"],
                    pause_tokens=totals["pause_tokens"],
                    extra=extra,
                ),
            )
        os.replace(idx_tmp, output_prefix + ".idx")
    except BaseException:
        _remove_quietly(bin_tmp)
        _remove_quietly(idx_tmp)
        raise
    merged = IndexedDataset(output_prefix, mmap=True)
    documents = len(merged.document_indices) - 1
    sequences = len(merged.sequence_lengths)
    tokens = int(np.sum(merged.sequence_lengths, dtype=np.int64))
    del merged
    key = present[0].extra.get("json_key", "") if present else ""
    return OutputSummary(
        output_prefix,
        key,
        documents,
        sequences,
        tokens,
        totals["pause_tokens"] if present else 0,
        totals["literal_pause_tokens"] if present else 0,
    )


def format_summary(cfg: PreprocessConfig, result: PreprocessResult) -> str:
    """The end-of-run report: per output, throughput, and rejects by reason."""
    elapsed = max(result.elapsed_s, 1e-9)
    tokens = result.tokens
    lines = [
        f"preprocessed {result.records} input lines from {result.stored_bytes / 1e6:.1f} MB in {elapsed:.1f} s "
        f"(CPU {result.cpu_s:.1f} s): "
        f"{tokens / elapsed / 1e6:.2f} M tokens/s, {result.records / elapsed:.0f} lines/s, "
        f"{result.stored_bytes / elapsed / 1e6:.1f} MB/s"
    ]
    state = "NOT PUBLISHED (too many bad lines)" if result.exit_code == EXIT_TOO_MANY_BAD else "written"
    for o in result.outputs + result.merged:
        lines.append(
            f"  {o.json_key or '?'} -> {o.prefix}.bin/.idx [{state}]: {o.documents} documents, "
            f"{o.sequences} sequences, {o.tokens} tokens, {o.pause_tokens} pause tokens"
            + (f" ({o.literal_pause_tokens} from literal text)" if o.literal_pause_tokens else "")
        )
    total_rejected = sum(result.rejected.values())
    if total_rejected:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(result.rejected.items()))
        lines.append(f"  rejected {total_rejected}: {reasons} (details in {result.rejects_path})")
    else:
        lines.append("  rejected 0")
    if result.handled:
        lines.append("  handled: " + ", ".join(f"{r}={n}" for r, n in sorted(result.handled.items())))
    limit = "" if cfg.max_bad_fraction is None else f" (limit {100 * cfg.max_bad_fraction:.3g}%)"
    lines.append(f"  bad fraction {100 * result.bad_fraction:.3g}%{limit}")
    return "\n".join(lines)


def run_preprocess(cfg: PreprocessConfig, log: Callable[[str], None] | None = None) -> PreprocessResult:
    return Preprocessor(cfg, log).run()
