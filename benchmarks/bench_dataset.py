#!/usr/bin/env python
"""What online pause insertion costs per sample: plain GPTDataset vs PauseGPTDataset.

Why this shape: both datasets are built over the same synthetic shard with the same seed and
sequence length, so they read exactly the same token windows; what differs is how a window is
read (PauseGPTDataset reads it from the memory map in numpy when masks are cached, see
megatron_pause/data/window.py) and the pause work (the per-sample key, the insertion, the
pause-target mask). Fetch times are noisy
on a shared machine, so the two are interleaved in short blocks (alternating which goes first),
the blocks are repeated over several rounds, times are the fetching thread's CPU time (not wall
time, which charges random descheduling to whichever dataset was running), and the overhead is
reported as the ratio of the totals next to the median of the per-block ratios. A third dataset,
PauseGPTDataset at pause fraction 0, separates the read and the pause-target mask from the
insertion itself: pause minus fraction 0 is what the insertion costs.

GPTDataset caches its masks and position ids when nothing depends on the tokens (no
``--eod-mask-loss``, no position/attention reset: Megatron-LM's defaults); a plain fetch is then
little more than reading the window, and the pause work is measured against that. With
``--eod-mask-loss`` Megatron rebuilds them per sample, including the (seq x seq) causal attention
mask unless ``--no-create-attention-mask-in-dataloader``, which makes a plain fetch far costlier.
``--attention-mask both`` measures with and without that mask. ``--collate MICRO_BATCH`` adds
what a DataLoader does next, stacking samples into micro-batches (with Megatron's default
attention mask, a (seq x seq) boolean per sample).

``--breakdown`` measures the pause dataset in place, inside real fetches, with the compiled draw
(megatron_pause/_pause_kernels.c) and with its numpy twin, the fallback when the extension was
not built, interleaved. In place matters: after a fetch's torch work, numpy calls run with cold
caches and cost several times what they cost in a hot micro-benchmark loop (also printed).

Usage:
    python benchmarks/bench_dataset.py                           # 20k samples, seq 2048, cached masks
    python benchmarks/bench_dataset.py --breakdown --samples 6000          # where the pause us go
    python benchmarks/bench_dataset.py --collate 4 --samples 4000          # fetch + collate
    python benchmarks/bench_dataset.py --eod-mask-loss --samples 2000 --attention-mask both
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass
class BenchTokenizer:
    """The attributes the datasets read from a PauseTokenizer (no files needed)."""

    vocab_size: int = 32001
    base_vocab_size: int = 32000
    pause_id: int = 32000
    eod: int = 0
    pad: int = 0
    bos: int | None = None
    identity: str = "bench:uniform-32000"
    tokenizer_type: str = "Bench"


def write_shard(prefix: str, num_tokens: int, vocab: int, seed: int) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    written = 0
    while written < num_tokens:
        # Documents of 50..4000 tokens ending in eod, like real preprocessed text.
        length = int(rng.integers(50, 4000))
        doc = rng.integers(1, vocab, size=length, dtype=np.int64)
        doc[-1] = 0
        builder.add_item(torch.from_numpy(doc))
        builder.end_document()
        written += length
    builder.finalize(prefix + ".idx")


def build_datasets(
    prefix: str,
    cache: str,
    seq_length: int,
    samples: int,
    attention_mask: bool,
    fraction: float,
    eod_mask_loss: bool,
):
    """(plain GPTDataset, PauseGPTDataset at fraction 0, PauseGPTDataset at ``fraction``), all
    over the same windows. The fraction-0 one isolates the subclass and pause-mask cost from the
    insertion itself."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from megatron_pause.data.dataset import (
        MegatronTokenizerAdapter,
        PretrainDataConfig,
        build_pretraining_datasets,
    )

    tokenizer = BenchTokenizer()
    plain_config = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=seq_length,
        blend=([prefix], None),
        split="1,0,0",
        path_to_cache=cache,
        tokenizer=MegatronTokenizerAdapter(tokenizer),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=eod_mask_loss,
        create_attention_mask=attention_mask,
    )
    plain = BlendedMegatronDatasetBuilder(GPTDataset, [samples, 0, 0], lambda: True, plain_config).build()[0]
    paused = []
    for f in (0.0, fraction):
        config = PretrainDataConfig(
            data_path=[prefix],
            split="1,0,0",
            seed=1234,
            pause_fraction=f,
            data_cache_path=cache,
            create_attention_mask=attention_mask,
            eod_mask_loss=eod_mask_loss,
        )
        paused.append(build_pretraining_datasets(config, tokenizer, seq_length, [samples, 0, 0])[0])
    return plain, paused[0], paused[1]


def fetch_block(dataset, indices: range, micro_batch: int = 0) -> float:
    """CPU seconds to fetch ``indices`` (and, with ``micro_batch``, to collate them into micro-batches
    the way a DataLoader does)."""
    # CPU time of this thread, not wall time: on a shared machine the process is descheduled
    # at random, which wall time would charge to whichever dataset happened to be running.
    start = time.thread_time()
    if micro_batch:
        for begin in range(indices.start, indices.stop, micro_batch):
            torch.utils.data.default_collate(
                [dataset[i] for i in range(begin, min(begin + micro_batch, indices.stop))]
            )
    else:
        for i in indices:
            dataset[i]
    return time.thread_time() - start


def measure(datasets: dict, samples: int, rounds: int, block: int, micro_batch: int) -> dict:
    plain, paused = datasets["plain"], datasets["pause"]
    # Same-window check: the pause dataset must read the plain dataset's tokens, or the
    # comparison is meaningless.
    a, b = plain[7], paused[7]
    real = b["tokens"][b["tokens"] != paused.pause_id]
    assert torch.equal(real, a["tokens"][: real.numel()]), "datasets read different windows"
    for dataset in datasets.values():  # warm the page cache and allocator
        fetch_block(dataset, range(min(samples, 2000)), micro_batch)
    totals = dict.fromkeys(datasets, 0.0)
    ratios: dict[str, list[float]] = {name: [] for name in datasets if name != "plain"}
    names = list(datasets)
    for r in range(rounds):
        for b, begin in enumerate(range(0, samples, block)):
            indices = range(begin, min(begin + block, samples))
            shift = (r + b) % len(names)  # rotate who goes first
            times = {
                name: fetch_block(datasets[name], indices, micro_batch)
                for name in names[shift:] + names[:shift]
            }
            for name, t in times.items():
                totals[name] += t
                if name != "plain":
                    ratios[name].append(t / times["plain"])
    fetched = samples * rounds
    result = {f"{name}_us_per_sample": totals[name] / fetched * 1e6 for name in names}
    for name in ratios:
        result[f"{name}_overhead_pct"] = (totals[name] / totals["plain"] - 1) * 100
        result[f"{name}_overhead_median_block_pct"] = (statistics.median(ratios[name]) - 1) * 100
    result["blocks"] = len(ratios["pause"])
    return result


def breakdown(paused, samples: int, rounds: int, block: int) -> dict:
    """us/sample of the pause dataset with the compiled draw and with its numpy twin (the fallback
    when megatron_pause._pause_kernels was not built), interleaved in place; then the key and the
    insertion alone in a hot loop, for contrast."""
    import megatron_pause.pause as pause

    kernel = pause._pause_kernels
    variants = {"kernel": kernel, "numpy_twin": None} if kernel is not None else {"numpy_twin": None}
    totals = dict.fromkeys(variants, 0.0)
    try:
        for r in range(rounds):
            for b, begin in enumerate(range(0, samples, block)):
                names = list(variants)
                shift = (r + b) % len(names)
                for name in names[shift:] + names[:shift]:
                    pause._pause_kernels = variants[name]
                    totals[name] += fetch_block(paused, range(begin, min(begin + block, samples)))
    finally:
        pause._pause_kernels = kernel
    result = {f"{name}_us_per_sample": t / (samples * rounds) * 1e6 for name, t in totals.items()}
    window = np.asarray(paused._window_reader.read(0))
    k, pause_id, length = paused.pause_mode.online_pauses, paused.pause_id, window.shape[0]

    def hot_loop(call) -> float:
        start = time.thread_time()
        for i in range(samples):
            call(i)
        return (time.thread_time() - start) / samples * 1e6

    result["hot_key_us"] = hot_loop(lambda i: pause.pause_key(1, i, pause.ONLINE_STREAM))
    try:
        for name, module in variants.items():
            pause._pause_kernels = module
            result[f"hot_insert_{name}_us"] = hot_loop(
                lambda i: pause.insert_pauses(window, k, pause_id, i, length, np.int64)
            )
    finally:
        pause._pause_kernels = kernel
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--pause-fraction", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=500, help="samples per interleaved block")
    parser.add_argument("--attention-mask", choices=["on", "off", "both"], default="on")
    parser.add_argument(
        "--eod-mask-loss",
        action="store_true",
        help="Megatron then rebuilds the masks for every sample instead of caching them",
    )
    parser.add_argument(
        "--collate",
        type=int,
        default=0,
        metavar="MICRO_BATCH",
        help="also collate samples into micro-batches of this size, as a DataLoader does (0: fetch only)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also split the pause cost: re-keying vs insertion, in place and in a hot loop",
    )
    parser.add_argument("--workdir", default=None, help="where the shard is written (default: a temp dir)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    from megatron_pause.pause import kernel_in_use

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)  # a DataLoader worker's setting; keeps the two datasets comparable

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        prefix = str(Path(tmp) / "bench_text_document")
        # One more sequence's worth than needed so no sample wraps into a second epoch.
        write_shard(
            prefix, (args.samples + 1) * args.seq_length + 8000, BenchTokenizer.base_vocab_size, seed=0
        )
        results: dict = OrderedDict(
            samples=args.samples,
            seq_length=args.seq_length,
            pause_fraction=args.pause_fraction,
            eod_mask_loss=args.eod_mask_loss,
            collate_micro_batch=args.collate,
            rounds=args.rounds,
            torch=torch.__version__,
            numpy=np.__version__,
            compiled_pause_kernel=kernel_in_use(),
        )
        masks = {"on": [True], "off": [False], "both": [True, False]}[args.attention_mask]
        for attention_mask in masks:
            plain, mask_only, paused = build_datasets(
                prefix,
                str(Path(tmp) / "cache"),
                args.seq_length,
                args.samples,
                attention_mask,
                args.pause_fraction,
                args.eod_mask_loss,
            )
            datasets = {"plain": plain, "mask_only": mask_only, "pause": paused}
            key = f"attention_mask_{'on' if attention_mask else 'off'}"
            results[key] = r = measure(datasets, args.samples, args.rounds, args.block, args.collate)
            print(
                f"{key}: plain {r['plain_us_per_sample']:.1f} us/sample | pause {r['pause_us_per_sample']:.1f} "
                f"us/sample, overhead {r['pause_overhead_pct']:+.1f}% (median block "
                f"{r['pause_overhead_median_block_pct']:+.1f}%) | fraction 0 (subclass + pause mask only) "
                f"{r['mask_only_us_per_sample']:.1f} us/sample, {r['mask_only_overhead_pct']:+.1f}%",
                flush=True,
            )
            if args.breakdown and paused.pause_mode.online_pauses:
                r["breakdown"] = d = breakdown(paused, args.samples, args.rounds, args.block)
                print(
                    "  breakdown (us/sample): in place "
                    + ", ".join(f"{n[:-14]} {v:.1f}" for n, v in d.items() if n.endswith("_us_per_sample"))
                    + " | hot loop "
                    + ", ".join(f"{n[4:-3]} {v:.1f}" for n, v in d.items() if n.startswith("hot_")),
                    flush=True,
                )
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
