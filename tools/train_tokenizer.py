#!/usr/bin/env python
"""Train a SentencePiece tokenizer for pause training from JSONL(.gz) text.

The model gets everything the rest of the pipeline relies on: ``<pause>`` as a user-defined
symbol (so it has a real id, and a literal "<pause>" in finetuning text maps to it), an eos piece
(Megatron's end-of-document, eod), a pad id, and byte fallback (no text is ever unknown, so
detokenize(tokenize(text)) gives the text back). Normalisation is the identity and whitespace is
kept, so code and layout survive tokenization.

Determinism: documents are read in sorted file order, split into lines, and handed to the trainer
through an iterator (so no input path is recorded in the model); the trainer's random seed is
fixed. The same input and flags give the same model bytes, hence the same tokenizer identity.

Usage:
    python tools/train_tokenizer.py --input examples/data/sample_corpus.jsonl.gz \\
        --output-prefix examples/data/sample_tokenizer --vocab-size 8000
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_pause.data.jsonl_reader import iter_records, resolve_inputs  # noqa: E402
from megatron_pause.pause import DEFAULT_PAUSE_TOKEN  # noqa: E402

# SentencePiece skips training "sentences" longer than this many bytes; documents are fed
# line by line, and longer lines are cut into pieces of this size.
MAX_SENTENCE_BYTES = 8192


def iter_training_lines(inputs: list[str], json_key: str, max_bytes: int | None) -> Iterator[str]:
    """Non-empty lines of every document's ``json_key`` text, in input order, up to ``max_bytes``."""
    total = 0
    for record in iter_records(resolve_inputs(inputs)):
        text = record.get(json_key)
        if not isinstance(text, str):
            continue
        for line in text.split("\n"):
            if not line.strip():
                continue
            for start in range(0, len(line), MAX_SENTENCE_BYTES // 4):
                piece = line[start : start + MAX_SENTENCE_BYTES // 4]
                total += len(piece)
                yield piece
            if max_bytes is not None and total >= max_bytes:
                return


def train_sentencepiece(
    inputs: list[str],
    output_prefix: str,
    json_key: str = "text",
    vocab_size: int = 8000,
    model_type: str = "bpe",
    pause_token: str = DEFAULT_PAUSE_TOKEN,
    max_input_bytes: int | None = None,
    num_threads: int = 2,
    seed: int = 1234,
    character_coverage: float = 0.9995,
) -> str:
    """Train and write ``<output_prefix>.model`` (atomically); returns its path."""
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter_training_lines(inputs, json_key, max_input_bytes),
        model_writer=buffer,
        model_type=model_type,
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        user_defined_symbols=[pause_token],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        max_sentence_length=MAX_SENTENCE_BYTES,
        num_threads=num_threads,
        minloglevel=2,
    )
    path = output_prefix + ".model"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a SentencePiece model with <pause>, eos and pad.")
    parser.add_argument("--input", nargs="+", required=True, help="JSONL(.gz) files, globs or folders")
    parser.add_argument("--json-key", default="text")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--output-prefix", required=True, help="writes <prefix>.model")
    parser.add_argument("--model-type", default="bpe", choices=["bpe", "unigram", "char", "word"])
    parser.add_argument("--pause-token", default=DEFAULT_PAUSE_TOKEN)
    parser.add_argument(
        "--max-input-bytes", type=int, default=None, help="train on the first N characters only"
    )
    parser.add_argument("--character-coverage", type=float, default=0.9995)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    if args.vocab_size < 300:
        parser.error("--vocab-size must be at least 300 (256 byte-fallback pieces + specials + merges)")
    path = train_sentencepiece(
        args.input,
        args.output_prefix,
        json_key=args.json_key,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        pause_token=args.pause_token,
        max_input_bytes=args.max_input_bytes,
        num_threads=args.threads,
        seed=args.seed,
        character_coverage=args.character_coverage,
    )
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path)
    print(
        f"wrote {path}: vocab {sp.get_piece_size()}, {args.pause_token}={sp.piece_to_id(args.pause_token)}, "
        f"eos={sp.eos_id()}, pad={sp.pad_id()}, bos={sp.bos_id()}, unk={sp.unk_id()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
