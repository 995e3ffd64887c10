"""Greedy completions of a checkpoint at TP1, TP2, PP2 and TP2 x PP2: identical?

Prompts are the starts (4 to 44 words) of documents of the bundled sample corpus, each
completed with M = 0 and M = 10 pauses. For every layout the script reports how many
completions equal TP1's, and at TP1 also whether batched equals one at a time and cached
equals uncached recomputation. fp32; forked gloo ranks on CPU.

    python benchmarks/generate_parity.py --load CKPT [--prompts 50] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "examples/data/sample_corpus.jsonl.gz")
LAYOUTS = [("TP2", 2, 1), ("PP2", 1, 2), ("TP2xPP2", 2, 2)]
PAUSES = (0, 10)


def prompt_texts(n: int) -> list[str]:
    out = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            words = json.loads(line)["text"].split()
            if len(words) >= 60:
                out.append(" ".join(words[: 4 + (i * 13) % 41]))
            if len(out) == n:
                break
    return out


def _run(rank: int, world: int, load: str, tp: int, pp: int, texts: list[str], n: int, checks: bool) -> dict:
    from megatron_pause.inference.session import DecodingConfig, open_generator

    overrides = {"parallel.tensor_model_parallel_size": tp, "parallel.pipeline_model_parallel_size": pp}
    loaded, g = open_generator(load, overrides, DecodingConfig(inference_max_requests=16))
    ids = [loaded.tokenizer.tokenize(t) for t in texts]
    out = {m: [c.tokens for c in g.generate(ids, m, n)] for m in PAUSES}
    if checks:
        out["single"] = {m: [g.generate([p], m, n)[0].tokens for p in ids] for m in PAUSES}
        out["uncached"] = {m: [c.tokens for c in g.generate(ids, m, n, use_cache=False)] for m in PAUSES}
    out["lengths"] = [len(p) for p in ids]
    return out


def main() -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True)
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--new-tokens", type=int, default=16)
    args = p.parse_args()
    sys.path.insert(0, REPO)
    from megatron_pause import platform
    from megatron_pause.testing import run_distributed

    platform.install()
    texts = prompt_texts(args.prompts)
    ref = run_distributed(_run, 1, args.load, 1, 1, texts, args.new_tokens, True, timeout=3600)[0]
    lengths = ref["lengths"]
    print(
        f"{len(texts)} prompts of {min(lengths)}-{max(lengths)} tokens, M in {PAUSES}, {args.new_tokens} new tokens"
    )
    for m in PAUSES:
        same_single = sum(a == b for a, b in zip(ref[m], ref["single"][m]))
        same_uncached = sum(a == b for a, b in zip(ref[m], ref["uncached"][m]))
        print(f"TP1 M={m}: batched == one at a time {same_single}/{len(texts)}, "
              f"cached == uncached {same_uncached}/{len(texts)}")  # fmt: skip
    for name, tp, pp in LAYOUTS:
        got = run_distributed(_run, tp * pp, args.load, tp, pp, texts, args.new_tokens, False, timeout=3600)
        for m in PAUSES:
            same = min(sum(a == b for a, b in zip(r[m], ref[m])) for r in got)
            print(f"{name} M={m}: identical to TP1 {same}/{len(texts)} (every rank)")
    if PAUSES[0] == 0:
        differ = sum(a != b for a, b in zip(ref[0], ref[PAUSES[1]]))
        print(f"completions that change with {PAUSES[1]} pauses: {differ}/{len(texts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
