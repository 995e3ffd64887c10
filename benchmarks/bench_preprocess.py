#!/usr/bin/env python
"""Benchmark tools/preprocess_data.py against SentencePiece's own batch-encode ceiling.

Why a script and not a timed test: throughput depends on the machine and on whatever else runs on
it, so it is measured and reported (with the load average), not asserted.

What it does, in one run:
1. builds a ~100 MB C4-format corpus (re-sampled standard-library prose from
   tools/make_sample_corpus.py, seeded) and a 32k BPE SentencePiece model, both cached;
2. measures the ceiling: SentencePiece batch encode of the same texts, in-process, 1 and 2 threads;
3. runs the tool end to end (subprocess, ``--insert-pauses 0.1 --append-eod``) with ``--workers 1``
   and ``--workers 2``, checks the two outputs are byte-identical, and samples the process tree's
   memory (RSS and PSS) with psutil;
4. repeats ``--workers 2`` on the first half of the corpus to show memory does not grow with it.

The tool's own throughput (its summary line: first byte read to last file renamed) is reported
next to the wall time of the whole command, which adds interpreter start-up and the import of
torch + megatron.core (several seconds, independent of corpus size).

Usage:
    python benchmarks/bench_preprocess.py                  # ~100 MB, cache in ~/.cache/megatron_pause_bench
    python benchmarks/bench_preprocess.py --corpus-mb 20   # quicker
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))

import make_sample_corpus  # noqa: E402
import psutil  # noqa: E402
import train_tokenizer  # noqa: E402


@dataclass
class ToolRun:
    label: str
    wall_s: float
    tool_s: float
    tool_cpu_s: float
    tokens: int  # text tokens only (pauses and eod excluded), comparable with the ceiling
    written_tokens: int
    peak_rss_mb: float
    peak_pss_mb: float
    prefix: str

    @property
    def tool_tok_s(self) -> float:
        return self.tokens / self.tool_s

    @property
    def wall_tok_s(self) -> float:
        return self.tokens / self.wall_s


def build_corpus(cache: str, corpus_mb: int, seed: int) -> str:
    path = os.path.join(cache, f"corpus_{corpus_mb}mb_seed{seed}.jsonl")
    if not os.path.exists(path):
        print(f"building {corpus_mb} MB corpus -> {path}", flush=True)
        records = make_sample_corpus.resampled_records(
            make_sample_corpus.stdlib_root(), corpus_mb * 10**6, seed
        )
        make_sample_corpus.write_jsonl(records, path)
    return path


def head_corpus(path: str, fraction: float) -> str:
    out = path.replace(".jsonl", f"_head{int(fraction * 100)}.jsonl")
    if not os.path.exists(out):
        target = os.path.getsize(path) * fraction
        size = 0
        with open(path, "rb") as src, open(out + ".tmp", "wb") as dst:
            for line in src:
                if size >= target:
                    break
                dst.write(line)
                size += len(line)
        os.replace(out + ".tmp", out)
    return out


def build_tokenizer_model(cache: str, corpus: str, vocab: int) -> str:
    prefix = os.path.join(cache, f"bpe{vocab // 1000}k_" + os.path.basename(corpus).replace(".jsonl", ""))
    if not os.path.exists(prefix + ".model"):
        print(f"training {vocab} BPE SentencePiece model -> {prefix}.model", flush=True)
        t = time.time()
        train_tokenizer.train_sentencepiece([corpus], prefix, vocab_size=vocab, max_input_bytes=30_000_000)
        print(f"  trained in {time.time() - t:.0f} s", flush=True)
    return prefix + ".model"


def ceiling(corpus: str, model: str, threads: int, batch_chars: int) -> tuple[int, float, float]:
    """SentencePiece batch encode of the corpus texts, already in memory, in the tool's batch size.
    Returns (tokens, wall seconds, CPU seconds of all threads)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    batches, batch, size = [], [], 0
    with open(corpus, "rb") as f:
        for line in f:
            text = json.loads(line)["text"]
            batch.append(text)
            size += len(text)
            if size >= batch_chars:
                batches.append(batch)
                batch, size = [], 0
    if batch:
        batches.append(batch)
    out_type = "numpy" if hasattr(sp, "EncodeAsNumpy") else int
    start, cpu_start = time.perf_counter(), time.process_time()
    tokens = 0
    for b in batches:
        tokens += sum(len(ids) for ids in sp.encode(b, out_type=out_type, num_threads=threads))
    return tokens, time.perf_counter() - start, time.process_time() - cpu_start


def _tree_memory(proc: psutil.Process) -> tuple[float, float]:
    rss = pss = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss / 1e6, pss / 1e6


def run_tool(label: str, corpus: str, model: str, out_dir: str, workers: int, batch_chars: int) -> ToolRun:
    prefix = os.path.join(out_dir, label)
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "preprocess_data.py"),
        "--input",
        corpus,
        "--output-prefix",
        prefix,
        "--tokenizer-type",
        "SentencePieceTokenizer",
        "--tokenizer-model",
        model,
        "--append-eod",
        "--insert-pauses",
        "0.1",
        "--seed",
        "1234",
        "--workers",
        str(workers),
        "--log-interval",
        "10000000",
        "--log-interval-seconds",
        "0",
        "--batch-chars",
        str(batch_chars),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    ps = psutil.Process(proc.pid)
    peak = [0.0, 0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss, pss = _tree_memory(ps)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed ({proc.returncode}):\n{output}")
    match = re.search(r"in ([0-9.]+) s \(CPU ([0-9.]+) s\):", output)
    counts = re.search(r"(\d+) documents, \d+ sequences, (\d+) tokens, (\d+) pause tokens", output)
    if not match or not counts:
        raise RuntimeError(f"cannot parse the summary of {label}:\n{output}")
    documents, written, pauses = (int(g) for g in counts.groups())
    text_tokens = written - pauses - documents  # one eod per document
    return ToolRun(
        label,
        wall,
        float(match.group(1)),
        float(match.group(2)),
        text_tokens,
        written,
        peak[0],
        peak[1],
        prefix + "_text_document",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/megatron_pause_bench"))
    parser.add_argument("--corpus-mb", type=int, default=100)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-chars", type=int, default=2_000_000)
    parser.add_argument(
        "--repeats", type=int, default=1, help="best of N (wall) for the ceiling and the tool"
    )
    args = parser.parse_args(argv)
    os.makedirs(args.cache_dir, exist_ok=True)

    load_before = os.getloadavg()
    corpus = build_corpus(args.cache_dir, args.corpus_mb, args.seed)
    half = head_corpus(corpus, 0.5)
    model = build_tokenizer_model(args.cache_dir, corpus, args.vocab_size)
    size_mb = os.path.getsize(corpus) / 1e6

    # rows: what, tokens, wall s, CPU s, wall incl. start-up (s), peak RSS / PSS
    rows: list[tuple[str, int, float, float, str, str]] = []
    for threads in (1, 2):
        best = min(
            (ceiling(corpus, model, threads, args.batch_chars) for _ in range(args.repeats)),
            key=lambda r: r[1],
        )
        tokens, seconds, cpu = best
        rows.append((f"spm batch encode, {threads} thread(s) (ceiling)", tokens, seconds, cpu, "", ""))
        print(
            f"ceiling {threads} thread(s): {tokens} tokens in {seconds:.1f} s (CPU {cpu:.1f} s)", flush=True
        )

    def tool_row(title: str, run: ToolRun) -> tuple[str, int, float, float, str, str]:
        return (
            title,
            run.tokens,
            run.tool_s,
            run.tool_cpu_s,
            f"{run.wall_tok_s / 1e6:.2f} ({run.wall_s:.1f} s)",
            f"{run.peak_rss_mb:.0f} / {run.peak_pss_mb:.0f}",
        )

    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as out_dir:
        runs = []
        for workers in (1, 2):
            attempts = [
                run_tool(f"w{workers}", corpus, model, out_dir, workers, args.batch_chars)
                for _ in range(args.repeats)
            ]
            run = min(attempts, key=lambda r: r.tool_s)
            run.peak_rss_mb = max(a.peak_rss_mb for a in attempts)
            run.peak_pss_mb = max(a.peak_pss_mb for a in attempts)
            runs.append(run)
            print(f"tool --workers {workers}: {run}", flush=True)
            rows.append(tool_row(f"preprocess_data --workers {workers} --insert-pauses 0.1", run))
        identical = all(
            filecmp.cmp(runs[0].prefix + ext, runs[1].prefix + ext, shallow=False) for ext in (".bin", ".idx")
        )
        half_run = run_tool("half_w2", half, model, out_dir, 2, args.batch_chars)
        print(f"tool --workers 2 on half corpus: {half_run}", flush=True)
        rows.append(tool_row("preprocess_data --workers 2, half corpus", half_run))
    load_after = os.getloadavg()

    print()
    print(
        f"corpus {size_mb:.0f} MB: {runs[0].tokens} text tokens ({runs[0].written_tokens} written with pauses "
        f"and eod; token rates count text tokens only, like the ceiling), vocab {args.vocab_size} BPE, "
        f"{os.cpu_count()} CPUs, load average before {load_before[0]:.2f} after {load_after[0]:.2f}"
    )
    print(
        "'2-core CPU bound' = tokens / CPU seconds x 2: the rate on two otherwise idle cores if every core "
        "were busy; it does not depend on other load, so it is the fair comparison on a shared machine."
    )
    header = (
        "what",
        "M tok/s",
        "seconds",
        "CPU s",
        "2-core CPU bound M tok/s",
        "wall incl. start-up",
        "peak RSS/PSS MB",
    )
    table = [header]
    for title, tokens, seconds, cpu, wall, mem in rows:
        table.append(
            (
                title,
                f"{tokens / seconds / 1e6:.2f}",
                f"{seconds:.1f}",
                f"{cpu:.1f}",
                f"{2 * tokens / cpu / 1e6:.2f}",
                wall,
                mem,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"--workers 1 and --workers 2 outputs byte-identical: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
