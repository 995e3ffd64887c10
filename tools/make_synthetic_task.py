#!/usr/bin/env python
"""Write the synthetic late-threshold-count suite: tokenizer folder, pretraining corpus, task splits.

The logic lives in ``megatron_pause.data.synthetic_task``; this file only parses arguments. The
output runs through the ordinary pipeline unchanged:

    python tools/make_synthetic_task.py --out data/ltc
    python tools/preprocess_data.py --input data/ltc/pretrain.jsonl --output-prefix data/ltc/pretrain \\
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model data/ltc/tokenizer --append-eod
    python -m megatron_pause.pretrain --data-path data/ltc/pretrain_text_document \\
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model data/ltc/tokenizer ...

Finetuning and evaluation read ``<task>/train_seed<s>.jsonl``, ``<task>/valid.jsonl`` and the fixed
2,000-problem ``<task>/test.jsonl`` (``{"prompt", "answer"}`` lines). Tasks:
``late_threshold_count`` (query last, the main task) and ``late_threshold_count_qfirst`` (the
control with the query first). Same arguments, same bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_pause.data.synthetic_task import TASK_FORMATS, SuiteConfig, write_suite  # noqa: E402


def parse_seeds(text: str) -> tuple[int, ...]:
    """``0-7`` or ``3,5`` or ``0-3,8``."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise argparse.ArgumentTypeError(f"seeds must look like 0-7 or 3,5; got {text!r}")
        seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return tuple(dict.fromkeys(seeds))


def main(argv: list[str] | None = None) -> int:
    d = SuiteConfig()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-items", type=int, default=d.num_items, help="items per problem")
    p.add_argument("--num-values", type=int, default=d.num_values, help="value (and query) words")
    p.add_argument("--pretrain-examples", type=int, default=d.pretrain_examples)
    p.add_argument("--examples-per-document", type=int, default=d.examples_per_document)
    p.add_argument("--pretrain-seed", type=int, default=d.pretrain_seed)
    p.add_argument("--finetune-examples", type=int, default=d.finetune_examples, help="per seed")
    p.add_argument("--finetune-seeds", type=parse_seeds, default=d.finetune_seeds, help="e.g. 0-7 or 3,5")
    p.add_argument(
        "--finetune-seed-offset",
        type=int,
        default=d.finetune_seed_offset,
        help="finetuning data of seed s is drawn with generator seed offset+s",
    )
    p.add_argument("--valid-examples", type=int, default=d.valid_examples)
    p.add_argument("--test-examples", type=int, default=d.test_examples)
    p.add_argument("--test-seed", type=int, default=d.test_seed)
    p.add_argument("--tasks", nargs="+", default=list(d.tasks), choices=sorted(TASK_FORMATS))
    a = p.parse_args(argv)
    suite = SuiteConfig(
        num_items=a.num_items,
        num_values=a.num_values,
        pretrain_examples=a.pretrain_examples,
        examples_per_document=a.examples_per_document,
        pretrain_seed=a.pretrain_seed,
        finetune_examples=a.finetune_examples,
        finetune_seeds=tuple(a.finetune_seeds),
        finetune_seed_offset=a.finetune_seed_offset,
        valid_examples=a.valid_examples,
        valid_seed=d.valid_seed,
        test_examples=a.test_examples,
        test_seed=a.test_seed,
        tasks=tuple(a.tasks),
    )
    start = time.time()
    try:
        manifest = write_suite(a.out, suite)
    except ValueError as e:
        print(f"make_synthetic_task: {e}", file=sys.stderr)
        return 2
    total = sum(manifest["records"].values())
    print(
        f"wrote {len(manifest['records'])} files ({total:,d} records) and tokenizer/ "
        f"(vocabulary {manifest['vocab_size']}) to {a.out} in {time.time() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
