#!/usr/bin/env python
"""Export time and peak memory of a 1B-preset checkpoint (random weights), in one process.

Stage 1 saves a ``--model-size 1b`` model (bf16 parameters, the sample tokenizer, TP1) with the
project's own ``save_checkpoint``; stage 2 runs ``tools/convert_checkpoint.py export`` in a fresh
process and reads that process's peak RSS from ``wait4``. The target is peak RSS <= 1.5x the
exported model's size. A 1B model is too big for the test suite; run this by hand:

    python benchmarks/bench_export.py --workdir /tmp/bench_export [--dtype bf16] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
TOKENIZER = os.path.join(REPO, "examples", "data", "sample_tokenizer.model")


def _save_1b(rank: int, world: int, root: str, bf16: bool) -> float:
    from megatron_pause.config import (
        ParallelConfig,
        PrecisionConfig,
        PretrainConfig,
        TokenizerConfig,
        model_preset,
    )
    from megatron_pause.distributed import destroy_distributed, init_distributed
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.tokenizer import build_tokenizer
    from megatron_pause.training.checkpoint import save_checkpoint

    model = model_preset("1b")
    precision = PrecisionConfig(bf16=bf16)
    cfg = PretrainConfig(
        model=model, precision=precision, tokenizer=TokenizerConfig("SentencePieceTokenizer", TOKENIZER)
    )
    init_distributed(ParallelConfig(), model.num_layers, seed=1)
    padded = build_tokenizer("SentencePieceTokenizer", TOKENIZER).padded_vocab_size()
    chunks = build_model_chunks(model, transformer_config(model, ParallelConfig(), precision), padded)
    start = time.perf_counter()
    save_checkpoint(root, 0, chunks, None, None, {"iteration": 0}, cfg.to_dict())
    destroy_distributed()
    return time.perf_counter() - start


def _run_measured(argv: list[str]) -> tuple[float, int, int]:
    """(wall seconds, exit status, peak RSS bytes) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, proc.returncode, usage.ru_maxrss * 1024  # ru_maxrss is KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/bench_export")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="training and export dtype")
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and export")
    parser.add_argument("--stage", choices=["all", "save"], default="all", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ckpt, out = os.path.join(args.workdir, "ckpt"), os.path.join(args.workdir, "hf")

    if args.stage == "save":
        from megatron_pause.testing import run_distributed

        [seconds] = run_distributed(_save_1b, 1, ckpt, args.dtype == "bf16", timeout=3600)
        print(f"saved {ckpt} in {seconds:.1f} s")
        return 0

    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    save_s, rc, save_rss = _run_measured([sys.executable, __file__, "--stage", "save", "--workdir", args.workdir,
                                          "--dtype", args.dtype])  # fmt: skip
    if rc:
        return rc
    ckpt_bytes = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ckpt) for f in fs if f.endswith(".distcp")
    )
    # Baseline: the same interpreter importing what the exporter imports, doing nothing.
    _, _, base_rss = _run_measured([sys.executable, "-c",
                                    "import torch, transformers, megatron_pause.conversion.export"])  # fmt: skip
    export_s, rc, export_rss = _run_measured([
        sys.executable, os.path.join(REPO, "tools", "convert_checkpoint.py"), "export", "--load", ckpt,
        "--output", out, "--dtype", args.dtype, "--max-shard-size", args.max_shard_size,
    ])  # fmt: skip
    if rc:
        return rc
    model_bytes = sum(
        os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors")
    )
    result = {
        "preset": "1b",
        "dtype": args.dtype,
        "checkpoint_gb": round(ckpt_bytes / 1e9, 3),
        "save_s": round(save_s, 1),
        "exported_model_gb": round(model_bytes / 1e9, 3),
        "export_s": round(export_s, 1),
        "export_peak_rss_gb": round(export_rss / 1e9, 3),
        "peak_rss_over_model": round(export_rss / model_bytes, 3),
        "import_only_rss_gb": round(base_rss / 1e9, 3),
        "safetensors_files": sum(f.endswith(".safetensors") for f in os.listdir(out)),
    }
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
