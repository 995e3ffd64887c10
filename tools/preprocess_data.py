#!/usr/bin/env python
"""Preprocess JSONL(.gz) text into Megatron indexed datasets, optionally inserting pauses.

Megatron-LM's flags (--input, --json-keys, --output-prefix, --tokenizer-type, --tokenizer-model,
--append-eod, --split-sentences, --keep-newlines, --lang, --workers, --log-interval) keep their
meaning; the pause, robustness and sharding flags are ours. The logic lives in
``megatron_pause.data.preprocess``; this file only parses arguments and reports.

Examples:
    python tools/preprocess_data.py --input examples/data/sample_corpus.jsonl.gz \\
        --output-prefix data/sample --tokenizer-type SentencePieceTokenizer \\
        --tokenizer-model examples/data/sample_tokenizer.model --append-eod \\
        --insert-pauses 0.1 --seed 1234 --workers 2

    # C4: one output per shard, then one merged dataset
    python tools/preprocess_data.py --input 'c4/en/c4-train.*-of-01024.json.gz' --output-prefix data/c4 \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --append-eod \\
        --output-per-shard --merge --max-bad-fraction 0.01

Exit status: 0 on success; 2 on a usage or setup error (missing file, unknown tokenizer, no
sentence model); 3 when --max-bad-fraction was exceeded (nothing published under the final names,
the rejects file is kept); 130 when interrupted (nothing published for unfinished outputs).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_pause.data.preprocess import (  # noqa: E402
    EXIT_INTERRUPTED,
    HUGE_DOCUMENT_POLICIES,
    PreprocessConfig,
    format_summary,
    run_preprocess,
)
from megatron_pause.pause import DEFAULT_PAUSE_TOKEN  # noqa: E402
from megatron_pause.tokenizer import SUPPORTED_TOKENIZER_TYPES  # noqa: E402

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="JSONL(.gz) -> Megatron indexed datasets, with optional offline pause insertion.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    group = parser.add_argument_group("input data")
    group.add_argument("--input", nargs="+", required=True, help="JSONL(.gz) file(s), glob(s) or folder(s)")
    group.add_argument(
        "--json-keys", nargs="+", default=["text"], help="keys to extract; each gets its own complete output"
    )
    group.add_argument(
        "--split-sentences", action="store_true", help="one sequence per sentence (Punkt, offline)"
    )
    group.add_argument("--keep-newlines", action="store_true", help="keep newlines between sentences")
    group.add_argument("--lang", default="english", help="language of the shipped Punkt parameters")
    group.add_argument(
        "--punkt-params", default=None, help="Punkt parameters as JSON (see data/sentences.py)"
    )
    group.add_argument(
        "--train-punkt-params",
        action="store_true",
        help="train Punkt parameters on the head of the input first",
    )
    group.add_argument("--punkt-train-documents", type=int, default=5000)

    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", required=True, choices=SUPPORTED_TOKENIZER_TYPES)
    group.add_argument(
        "--tokenizer-model", required=True, help="SentencePiece .model file, or a local Hugging Face folder"
    )
    group.add_argument("--append-eod", action="store_true", help="append the end-of-document token")
    group.add_argument("--pause-token", default=DEFAULT_PAUSE_TOKEN)

    group = parser.add_argument_group("pauses")
    group.add_argument(
        "--insert-pauses",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="insert round(FRACTION x length) pauses per document at uniform positions (0 = off)",
    )
    group.add_argument("--seed", type=int, default=1234, help="pause-position seed")

    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.bin/.idx")
    group.add_argument(
        "--output-per-shard",
        action="store_true",
        help="one output per input file: <prefix>_<shard>_<key>_...",
    )
    group.add_argument(
        "--merge", action="store_true", help="with --output-per-shard, also merge them into one"
    )

    group = parser.add_argument_group("bad input")
    group.add_argument(
        "--max-document-chars",
        type=int,
        default=1_000_000,
        help="longer documents get --huge-document-policy",
    )
    group.add_argument(
        "--huge-document-policy",
        choices=HUGE_DOCUMENT_POLICIES,
        default="split",
        help="split: cut into documents of at most --max-document-chars at whitespace; truncate: keep the "
        "first such piece; skip: reject",
    )
    group.add_argument(
        "--max-line-bytes", type=int, default=256 << 20, help="longer input lines are skipped unread"
    )
    group.add_argument(
        "--max-bad-fraction",
        type=float,
        default=None,
        help="fail (exit 3, publish nothing) when more than this fraction of (line, key) pairs is rejected",
    )

    group = parser.add_argument_group("runtime")
    group.add_argument(
        "--workers", type=int, default=1, help="tokenizer threads (output does not depend on it)"
    )
    group.add_argument("--log-interval", type=int, default=1000, help="progress line every N documents")
    group.add_argument(
        "--log-interval-seconds", type=float, default=30.0, help="and at least every N seconds (0 = off)"
    )
    group.add_argument("--batch-chars", type=int, default=2_000_000, help="characters per tokenizer batch")
    return parser


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(
        input=args.input,
        output_prefix=args.output_prefix,
        tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model,
        json_keys=args.json_keys,
        append_eod=args.append_eod,
        split_sentences=args.split_sentences,
        keep_newlines=args.keep_newlines,
        lang=args.lang,
        punkt_params=args.punkt_params,
        train_punkt_params=args.train_punkt_params,
        punkt_train_documents=args.punkt_train_documents,
        workers=args.workers,
        log_interval=args.log_interval,
        log_interval_seconds=args.log_interval_seconds,
        insert_pauses=args.insert_pauses,
        seed=args.seed,
        pause_token=args.pause_token,
        output_per_shard=args.output_per_shard,
        merge=args.merge,
        max_document_chars=args.max_document_chars,
        huge_document_policy=args.huge_document_policy,
        max_line_bytes=args.max_line_bytes,
        max_bad_fraction=args.max_bad_fraction,
        batch_chars=args.batch_chars,
    )


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    # SIGTERM (e.g. a scheduler's kill) cleans up like Ctrl-C instead of leaving temporaries.
    previous = None
    if hasattr(signal, "SIGTERM"):
        try:
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread (e.g. called from a test worker thread)
            previous = None
    try:
        result = run_preprocess(cfg)
    except KeyboardInterrupt:
        print(
            "interrupted: unfinished outputs were removed; nothing incomplete was published", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(format_summary(cfg, result), flush=True)
    if result.exit_code:
        print(
            f"error: {100 * result.bad_fraction:.3g}% of input was rejected, above --max-bad-fraction "
            f"{100 * cfg.max_bad_fraction:.3g}%; nothing was published (see {result.rejects_path})",
            file=sys.stderr,
        )
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
