"""Offline sentence splitting for ``--split-sentences``, with Punkt parameters stored as JSON.

Megatron-LM splits sentences with nltk's Punkt and fetches the English model with
``nltk.download`` -- which hangs forever on a machine without internet, and nltk >= 3.9 refuses
the pickled models anyway. Punkt is unsupervised, so we train its parameters with nltk's own
``PunktTrainer`` and store them as plain JSON: no pickle, no download, reviewable in a diff.

English parameters trained on the repository's sample corpus ship in
``megatron_pause/assets/punkt_english.json``. For other languages or domains, train on your own
text (``python -m megatron_pause.data.sentences --input corpus.jsonl.gz --output params.json``)
or let the preprocessing tool train on the head of its input (``--train-punkt-params``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
SHIPPED_PUNKT_PARAMS = {"english": os.path.join(ASSET_DIR, "punkt_english.json")}
PUNKT_JSON_FORMAT = 1
# Abbreviations common in English prose that a small training corpus may not teach Punkt
# (stored as Punkt does: lower case, without the final period).
COMMON_ENGLISH_ABBREVIATIONS = (
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "st",
    "jr",
    "sr",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "inc",
    "ltd",
    "co",
    "corp",
    "no",
    "fig",
    "approx",
    "dept",
    "est",
    "gen",
    "gov",
    "sen",
    "rep",
    "u.s",
    "u.k",
    "a.m",
    "p.m",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
)


class MissingSentenceModel(RuntimeError):
    """No Punkt parameters for the requested language; the message says how to get them."""


def _punkt():
    # Imported lazily: nltk costs ~1 s to import and only sentence splitting needs it.
    from nltk.tokenize import punkt

    return punkt


def params_to_json(params) -> dict:
    """PunktParameters -> JSON-able dict (sorted, so the file is deterministic)."""
    return {
        "format": PUNKT_JSON_FORMAT,
        "abbrev_types": sorted(params.abbrev_types),
        "collocations": sorted([a, b] for a, b in params.collocations),
        "sent_starters": sorted(params.sent_starters),
        "ortho_context": {k: int(v) for k, v in sorted(params.ortho_context.items())},
    }


def params_from_json(data: dict, source: str = "<dict>"):
    punkt = _punkt()
    if not isinstance(data, dict) or data.get("format") != PUNKT_JSON_FORMAT:
        raise ValueError(f"{source} is not a Punkt parameter file of format {PUNKT_JSON_FORMAT}")
    try:
        params = punkt.PunktParameters()
        params.abbrev_types = set(data["abbrev_types"])
        params.collocations = {(a, b) for a, b in data["collocations"]}
        params.sent_starters = set(data["sent_starters"])
        for key, value in data["ortho_context"].items():
            params.ortho_context[key] = int(value)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source} has malformed Punkt parameters: {exc}") from exc
    return params


def load_punkt_params(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as exc:
        raise MissingSentenceModel(f"Punkt parameter file {path} not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"Punkt parameter file {path} is not valid JSON: {exc}") from exc
    return params_from_json(data, path)


def save_punkt_params(params, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(params_to_json(params), f, indent=0, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def train_punkt_params(texts: Iterable[str]):
    """Train Punkt parameters on ``texts`` with nltk's PunktTrainer (unsupervised, deterministic)."""
    punkt = _punkt()
    trainer = punkt.PunktTrainer()
    trainer.INCLUDE_ALL_COLLOCS = True
    any_text = False
    for text in texts:
        if text and text.strip():
            trainer.train(text, finalize=False)
            any_text = True
    if not any_text:
        raise ValueError("cannot train Punkt parameters: no text")
    trainer.finalize_training()
    return trainer.get_params()


def resolve_punkt_params(lang: str, params_path: str | None):
    """The parameters to split with: an explicit file, else the shipped ones for ``lang``.

    Fails fast (never downloads) with a message saying what to do.
    """
    if params_path:
        return load_punkt_params(params_path)
    shipped = SHIPPED_PUNKT_PARAMS.get(lang.lower())
    if shipped is None:
        raise MissingSentenceModel(
            f"no shipped Punkt parameters for language {lang!r} (shipped: {', '.join(SHIPPED_PUNKT_PARAMS)}). "
            "Pass --punkt-params FILE (make one with `python -m megatron_pause.data.sentences --input "
            "YOUR.jsonl --output FILE`) or --train-punkt-params to train on the head of the input. "
            "Nothing is downloaded."
        )
    if not os.path.isfile(shipped):
        raise MissingSentenceModel(
            f"shipped Punkt parameters {shipped} are missing from this installation; reinstall megatron_pause "
            "or pass --punkt-params FILE / --train-punkt-params"
        )
    return load_punkt_params(shipped)


@dataclass
class SentenceSplitter:
    """Splits a document into sentences with Punkt.

    With ``keep_newlines`` every character of the document is kept: each sentence carries the
    whitespace (newlines included) that follows it, so joining the sentences gives the document
    back -- Megatron-LM's ``--keep-newlines``. Without it, sentences are the stripped spans and the
    whitespace between them is dropped, as in Megatron-LM.
    """

    params: object
    keep_newlines: bool = False

    def __post_init__(self) -> None:
        self._tokenizer = _punkt().PunktSentenceTokenizer(self.params)

    def split(self, text: str) -> list[str]:
        spans = list(self._tokenizer.span_tokenize(text))
        if not spans:
            return []
        if not self.keep_newlines:
            return [text[s:e] for s, e in spans]
        starts = [0] + [s for s, _ in spans[1:]]
        ends = [s for s, _ in spans[1:]] + [len(text)]
        return [text[s:e] for s, e in zip(starts, ends)]


def main(argv: list[str] | None = None) -> int:
    from megatron_pause.data.jsonl_reader import JsonlFile, resolve_inputs

    parser = argparse.ArgumentParser(
        description="Train Punkt sentence-splitting parameters (JSON) on JSONL text."
    )
    parser.add_argument("--input", nargs="+", required=True, help="JSONL(.gz) files, globs or folders")
    parser.add_argument("--json-key", default="text")
    parser.add_argument("--max-documents", type=int, default=20000)
    parser.add_argument("--output", required=True)
    parser.add_argument(
        "--add-common-english-abbreviations",
        action="store_true",
        help="also mark Mr., Dr., e.g., Jan. ... as abbreviations (used for the shipped English file)",
    )
    args = parser.parse_args(argv)

    def texts():
        seen = 0
        for path in resolve_inputs(args.input):
            with JsonlFile(path) as f:
                for line in f:
                    if line.data is None:
                        continue
                    try:
                        text = json.loads(line.data).get(args.json_key)
                    except (ValueError, AttributeError):
                        continue
                    if isinstance(text, str):
                        yield text
                        seen += 1
                        if seen >= args.max_documents:
                            return

    params = train_punkt_params(texts())
    if args.add_common_english_abbreviations:
        params.abbrev_types.update(COMMON_ENGLISH_ABBREVIATIONS)
    save_punkt_params(params, args.output)
    print(f"wrote Punkt parameters to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
