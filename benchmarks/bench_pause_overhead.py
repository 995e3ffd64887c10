"""Step-time overhead of pause insertion + masking vs. no pauses, on the tiny preset.

One process, one model, two data pipelines over the same sample corpus
(preprocessed *without* offline pauses): online insertion at
``--pause-fraction 0.1`` and at 0. Training steps alternate between them
(A B B A A B ...), so machine noise -- this runs on shared 2-core boxes -- hits
both alike, and each step's time includes fetching and collating its global
batch and the pause-masked loss, exactly as in ``Trainer.fit``. Reported: the
median step time of each, their ratio, and tokens/s. Target: overhead <= 3%.

    python benchmarks/bench_pause_overhead.py [--steps 60] [--warmup 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "examples/data/sample_tokenizer.model")


def _preprocess(out: str) -> str:
    prefix = os.path.join(out, "sample")
    subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/preprocess_data.py"),
         "--input", os.path.join(REPO, "examples/data/sample_corpus.jsonl.gz"),
         "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", TOKENIZER,
         "--append-eod", "--workers", "1", "--output-prefix", prefix],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return prefix + "_text_document"


def _bench(rank: int, world: int, data: str, cache: str, steps: int, warmup: int) -> dict:
    import dataclasses

    import torch
    from megatron.core import parallel_state

    from megatron_pause.arguments import parse_args
    from megatron_pause.distributed import destroy_distributed, init_distributed
    from megatron_pause.loss import PauseMaskedLoss
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.training.batches import MicrobatchLoader
    from megatron_pause.training.data import build_datasets, build_run_tokenizer
    from megatron_pause.training.metrics import MetricsLogger
    from megatron_pause.training.step import build_optimizer, make_forward_step, train_step, wrap_model

    torch.set_num_threads(os.cpu_count() or 1)  # the harness defaults ranks to one thread
    cfg = parse_args(
        ["--model-size", "tiny", "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", TOKENIZER,
         "--data-path", data, "--split", "98,2,0", "--data-cache-path", cache, "--micro-batch-size", "8",
         "--global-batch-size", "16", "--train-iters", str(2 * (steps + warmup)), "--eval-iters", "1"]
    )  # fmt: skip
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.training.seed)
    tok = build_run_tokenizer(cfg)
    padded = tok.padded_vocab_size(cfg.model.make_vocab_size_divisible_by, 1)
    tcfg = transformer_config(cfg.model, cfg.parallel, cfg.precision, cfg.training)
    chunks = wrap_model(build_model_chunks(cfg.model, tcfg, padded), tcfg, cfg.parallel)
    optimizer = build_optimizer(chunks, cfg.optimizer, cfg.parallel, cfg.precision)
    forward_step = make_forward_step(PauseMaskedLoss(tok.pause_id))
    loaders = {}
    for fraction in (0.0, 0.1):
        variant = dataclasses.replace(cfg, pause=dataclasses.replace(cfg.pause, pause_fraction=fraction))
        train, _ = build_datasets(variant, tok, MetricsLogger(None, None, enabled=False))
        loaders[fraction] = MicrobatchLoader(train, 8, 16, parallel_state.get_data_parallel_rank(), 1)
    times: dict[float, list[float]] = {0.0: [], 0.1: []}
    pause_share: dict[float, list[float]] = {0.0: [], 0.1: []}
    order = [0.0, 0.1]
    for step in range(steps + warmup):
        for fraction in order if step % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            result = train_step(
                chunks, optimizer, forward_step, loaders[fraction].next_global_batch(), 128, 8
            )
            elapsed = time.perf_counter() - start
            if step >= warmup:
                times[fraction].append(elapsed)
                pause_share[fraction].append(result.pause_targets / result.targets)
    destroy_distributed()
    return {"times": times, "pause_share": pause_share}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from megatron_pause import platform
    from megatron_pause.testing import run_distributed

    platform.install()
    with tempfile.TemporaryDirectory() as tmp:
        data = _preprocess(tmp)
        (res,) = run_distributed(
            _bench, 1, data, os.path.join(tmp, "cache"), args.steps, args.warmup, timeout=3600
        )
    base, paused = (statistics.median(res["times"][f]) for f in (0.0, 0.1))
    tokens = 16 * 128
    print(f"tiny preset (4 x 128, seq 128), global batch 16 = {tokens} tokens/step, {args.steps} alternating steps each, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'pause fraction':>15} {'median step ms':>15} {'tokens/s':>10} {'pause targets':>14}")
    for fraction, t in ((0.0, base), (0.1, paused)):
        share = 100 * statistics.mean(res["pause_share"][fraction])
        print(f"{fraction:>15.1f} {1000 * t:>15.1f} {tokens / t:>10,.0f} {share:>13.1f}%")
    print(f"overhead of pause insertion + masking: {100 * (paused / base - 1):+.2f}% (target <= 3%)")


if __name__ == "__main__":
    main()
