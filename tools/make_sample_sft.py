#!/usr/bin/env python
"""Make the bundled prompt/answer set for the finetuning quickstart from the sample corpus.

Why: the built-in default goes on to pause-finetune the quickstart model, which needs a small
prompt/answer set that may ship in the repository. Each example quotes a window of a document of
``examples/data/sample_corpus.jsonl.gz`` (PSF-licensed Python documentation, see
``examples/data/LICENSE.md``) and asks which standard-library module it comes from; the answer is
the module's dotted name, read from the document's ``url``. The task is answerable from the text
(names, vocabulary) yet not trivial for a tiny model, like the paper's reading-comprehension tasks.

Deterministic: documents are split into train/valid by a hash of their url, and windows are chosen
by a seeded generator, so the output is byte-identical on every run.

Usage:
    python tools/make_sample_sft.py --corpus examples/data/sample_corpus.jsonl.gz \\
        --output-prefix examples/data/sample_sft
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re

QUESTION = "Question: Which module of the Python standard library is this text from?\nAnswer:"


def module_of(url: str) -> str | None:
    m = re.search(r"/Lib/(.+?)\.py", url)
    if not m:
        return None
    name = m.group(1).replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def make(corpus: str, per_doc: int, valid_share: float, window: tuple[int, int], seed: int):
    train, valid = [], []
    with gzip.open(corpus, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    for doc in docs:
        module = module_of(doc["url"])
        text = " ".join(doc["text"].split())
        if not module or len(text) < window[0]:
            continue
        h = int(hashlib.sha256(doc["url"].encode()).hexdigest()[:8], 16)
        rng = random.Random(seed * 1_000_003 + h)
        split = valid if (h % 10_000) / 10_000 < valid_share else train
        for _ in range(per_doc):
            size = rng.randint(*window)
            start = rng.randint(0, max(0, len(text) - size))
            excerpt = text[start : start + size].strip()
            split.append({"prompt": f"Text: {excerpt}\n{QUESTION}", "answer": f" {module}"})
    return train, valid


def write(path: str, rows: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="examples/data/sample_corpus.jsonl.gz")
    p.add_argument("--output-prefix", default="examples/data/sample_sft")
    p.add_argument("--per-doc", type=int, default=2, help="Examples per document.")
    p.add_argument("--valid-share", type=float, default=0.1, help="Share of documents held out.")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    train, valid = make(args.corpus, args.per_doc, args.valid_share, (150, 450), args.seed)
    write(args.output_prefix + "_train.jsonl.gz", train)
    write(args.output_prefix + "_valid.jsonl.gz", valid)
    print(f"{len(train)} train, {len(valid)} valid examples -> {args.output_prefix}_{{train,valid}}.jsonl.gz")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
