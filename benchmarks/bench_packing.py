"""Finetuning throughput with --pack-sequences vs one padded example per sequence.

A SQuAD-like length mix (prompts 150-400 tokens, answers 2-20, uniform; M_ft pauses after each
prompt) at sequence length 1024. One process trains one model; steps alternate between a packed
global batch and a padded one (A B B A ...), so noise on a shared machine hits both alike. Each
step's time includes building and collating its samples, as in ``Trainer.fit``. Reported: useful
(prompt + answer) tokens per second of each and their ratio, per wall-clock second and per
CPU-second of this process (less sensitive to other load on a shared machine). Target: packed
>= 3x padded.

The model is small (CPU), so attention's share of a step is larger than on a GPU-sized model;
the ratio is set mostly by how many examples a sequence holds (padded: one, ~28% of the
positions; packed first-fit: ~3.3, ~95%).

    python benchmarks/bench_packing.py [--steps 10] [--warmup 2] [--layers 2 --hidden 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SEQ = 1024
PAUSES = 10
GLOBAL_BATCH = 4


def _examples(n: int, seed: int):
    import numpy as np

    from megatron_pause.data.sft import Example

    rng = np.random.default_rng(seed)
    return [
        Example(
            rng.integers(10, 8000, int(rng.integers(150, 401))),
            rng.integers(10, 8000, int(rng.integers(2, 21))),
        )
        for _ in range(n)
    ]


def _bench(rank: int, world: int, steps: int, warmup: int, layers: int, hidden: int, threads: int) -> dict:
    import torch

    from megatron_pause.config import ModelConfig, OptimizerConfig, ParallelConfig, PrecisionConfig
    from megatron_pause.data.sft import FinetuneDataset
    from megatron_pause.distributed import destroy_distributed, init_distributed
    from megatron_pause.loss import PauseMaskedLoss
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.training.batches import collate
    from megatron_pause.training.step import build_optimizer, make_forward_step, train_step, wrap_model

    torch.set_num_threads(threads)
    model = ModelConfig(
        num_layers=layers, hidden_size=hidden, ffn_hidden_size=4 * hidden, num_attention_heads=max(hidden // 64, 1),
        seq_length=SEQ,
    )  # fmt: skip
    par, prec = ParallelConfig(), PrecisionConfig()
    init_distributed(par, model.num_layers, seed=1)
    cfg = transformer_config(model, par, prec)
    chunks = wrap_model(build_model_chunks(model, cfg, 8064), cfg, par)
    opt = build_optimizer(chunks, OptimizerConfig(lr=1e-4), par, prec)
    forward_step = make_forward_step(PauseMaskedLoss(4))
    examples = _examples(4000, seed=0)
    common = dict(seq_length=SEQ, num_pauses=PAUSES, pause_id=4, eod=2, pad=3, seed=1)
    datasets = {"padded": FinetuneDataset([(None, examples)], pack=False, **common)}
    datasets["packed"] = FinetuneDataset([(None, examples)], pack=True, **common)
    mbs = {"padded": 2, "packed": 1}
    position = {"padded": 0, "packed": 0}
    times: dict[str, list[float]] = {"padded": [], "packed": []}
    cpu_times: dict[str, list[float]] = {"padded": [], "packed": []}
    useful: dict[str, list[int]] = {"padded": [], "packed": []}
    order = ["padded", "packed", "packed", "padded"]
    for i in range(2 * (steps + warmup)):
        mode = order[i % 4]
        ds, m = datasets[mode], mbs[mode]
        start, cpu_start = time.perf_counter(), time.process_time()
        first = position[mode]
        samples = [ds[first + k] for k in range(GLOBAL_BATCH)]
        batches = [collate(samples[k : k + m]) for k in range(0, GLOBAL_BATCH, m)]
        train_step(chunks, opt, forward_step, batches, SEQ, m)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        position[mode] += GLOBAL_BATCH
        if i >= 2 * warmup:
            members = [idx for k in range(GLOBAL_BATCH) for idx in ds.members(first + k)]
            times[mode].append(elapsed)
            cpu_times[mode].append(cpu)
            useful[mode].append(sum(len(ds.examples[j].prompt) + len(ds.examples[j].answer) for j in members))
    destroy_distributed()
    out = {}
    for mode in ("padded", "packed"):
        out[mode] = dict(
            step_s=statistics.median(times[mode]),
            tokens_per_s=sum(useful[mode]) / sum(times[mode]),
            tokens_per_cpu_s=sum(useful[mode]) / sum(cpu_times[mode]),
            examples_per_seq=sum(len(datasets[mode].members(k)) for k in range(200)) / 200,
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="Measured steps of each kind.")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads. On a loaded shared machine every parallel op waits for its "
        "threads to be scheduled, which penalises the packed path's extra small per-example ops "
        "(RoPE per example) far beyond their compute; one thread measures the compute.",
    )
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    from megatron_pause import platform
    from megatron_pause.testing import run_distributed

    platform.install()
    (r,) = run_distributed(
        _bench, 1, args.steps, args.warmup, args.layers, args.hidden, args.threads, timeout=3600
    )
    print(
        f"sequence {SEQ}, prompts 150-400, answers 2-20, {PAUSES} pauses, global batch {GLOBAL_BATCH}, "
        f"{args.layers} layers x {args.hidden} hidden, {args.steps} steps each, {args.threads} thread(s)"
    )
    for mode in ("padded", "packed"):
        m = r[mode]
        print(
            f"{mode:>7}: {m['examples_per_seq']:.2f} examples/sequence, median step {m['step_s'] * 1000:.0f} ms, "
            f"{m['tokens_per_s']:,.0f} prompt+answer tokens/s ({m['tokens_per_cpu_s']:,.0f} per CPU-second)"
        )
    ratio = r["packed"]["tokens_per_s"] / r["padded"]["tokens_per_s"]
    cpu_ratio = r["packed"]["tokens_per_cpu_s"] / r["padded"]["tokens_per_cpu_s"]
    print(f"packed / padded: {ratio:.2f}x wall-clock, {cpu_ratio:.2f}x CPU time (target >= 3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
