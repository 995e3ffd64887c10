"""Step-time overhead of pause insertion + masking vs. no pauses, on the tiny preset.

Runs the real entry point (``megatron_pause.pretrain.main``) on the sample
corpus, preprocessed *without* offline pauses, alternating
``--pause-fraction 0.1`` and ``--pause-fraction 0`` runs so that machine noise
hits both alike, and compares the median step time and tokens/s of the
steady-state iterations. Target: overhead <= 3%.

    python benchmarks/bench_pause_overhead.py [--iters 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _preprocess(out: str) -> str:
    prefix = os.path.join(out, "sample")
    subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/preprocess_data.py"),
         "--input", os.path.join(REPO, "examples/data/sample_corpus.jsonl.gz"),
         "--tokenizer-type", "SentencePieceTokenizer",
         "--tokenizer-model", os.path.join(REPO, "examples/data/sample_tokenizer.model"),
         "--append-eod", "--workers", "1", "--output-prefix", prefix],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return prefix + "_text_document"


def _run(data: str, cache: str, fraction: float, iters: int, metrics: str) -> list[dict]:
    if os.path.exists(metrics):
        os.remove(metrics)
    subprocess.run(
        [sys.executable, "-m", "megatron_pause.pretrain", "--model-size", "tiny",
         "--tokenizer-type", "SentencePieceTokenizer",
         "--tokenizer-model", os.path.join(REPO, "examples/data/sample_tokenizer.model"),
         "--data-path", data, "--split", "98,2,0", "--data-cache-path", cache,
         "--micro-batch-size", "8", "--global-batch-size", "16", "--train-iters", str(iters),
         "--eval-interval", str(10 * iters), "--eval-iters", "1", "--log-interval", "1",
         "--pause-fraction", str(fraction), "--metrics-file", metrics],
        check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )  # fmt: skip
    with open(metrics) as f:
        return [r for r in map(json.loads, f) if r["split"] == "train"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5, help="iterations excluded from the timing")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = _preprocess(tmp)
        times: dict[float, list[float]] = {0.0: [], 0.1: []}
        share: dict[float, list[float]] = {0.0: [], 0.1: []}
        for rep in range(args.repeats):
            for fraction in (0.0, 0.1) if rep % 2 == 0 else (0.1, 0.0):
                recs = _run(
                    data, os.path.join(tmp, "cache"), fraction, args.iters, os.path.join(tmp, "m.jsonl")
                )
                times[fraction] += [r["step_time_s"] for r in recs[args.warmup :]]
                share[fraction] += [r["pause_fraction"] for r in recs]
        base, paused = statistics.median(times[0.0]), statistics.median(times[0.1])
        tokens = 16 * 128
        print(
            f"tiny preset, seq 128, global batch 16, {args.repeats} x {args.iters} iterations each, load {os.getloadavg()[0]:.2f}"
        )
        print(f"{'pause fraction':>15} {'median step ms':>15} {'tokens/s':>10} {'pause targets':>14}")
        for fraction, t in ((0.0, base), (0.1, paused)):
            print(
                f"{fraction:>15.1f} {1000 * t:>15.1f} {tokens / t:>10,.0f} {100 * statistics.mean(share[fraction]):>13.1f}%"
            )
        print(f"overhead of pause insertion + masking: {100 * (paused / base - 1):+.2f}% (target <= 3%)")


if __name__ == "__main__":
    main()
