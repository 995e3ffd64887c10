#!/usr/bin/env python
"""Convert an official file of one of the paper's nine downstream tasks into task JSONL.

Nothing is downloaded: fetch the official files first (SQuAD v1.1 ``*-v1.1.json``, CoQA
``coqa-*-v1.0.json``, CommonsenseQA ``*_rand_split.jsonl``, PIQA ``*.jsonl`` + ``*-labels.lst``,
HellaSwag ``hellaswag_*.jsonl``, GSM8k ``*.jsonl``, LAMBADA ``lambada_test_plain_text.txt``,
WebQuestions ``webquestions.examples.*.json``, Natural Questions open ``NQ-open.*.jsonl``).

``--split eval`` writes what ``megatron_pause.evaluate --task`` reads (gold answers, or choices
and a label); ``--split train`` writes finetuning lines ``{"id", "prompt", "answer"}``. The file is
written under a temporary name and renamed when complete.

    python tools/prepare_task.py --task squad --input dev-v1.1.json --split eval --output squad_eval.jsonl
    python tools/prepare_task.py --task piqa --input valid.jsonl --labels valid-labels.lst \\
        --split eval --output piqa_eval.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_pause.data.task_formats import ANSWER_FORMAT, READERS, TaskFormatError, train_record  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=sorted(READERS))
    p.add_argument("--input", required=True, help="The official file of one split.")
    p.add_argument("--labels", help="PIQA only: the matching -labels.lst file.")
    p.add_argument(
        "--split", required=True, choices=("train", "eval"), help="Output for finetuning or evaluation."
    )
    p.add_argument("--output", required=True, help="Task JSONL to write.")
    args = p.parse_args(argv)
    try:
        converted = READERS[args.task](args.input, labels=args.labels)
    except TaskFormatError as e:
        print(f"prepare_task: {e}", file=sys.stderr)
        return 2
    if not converted.examples:
        print(f"prepare_task: {args.input}: no examples", file=sys.stderr)
        return 2
    rows = converted.examples if args.split == "eval" else [train_record(x) for x in converted.examples]
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, args.output)
    skipped = ", ".join(f"{n} {why}" for why, n in converted.skipped.items()) or "none"
    kind = "multiple choice" if "choices" in converted.examples[0] else "generation"
    print(
        f"prepare_task: {args.task} {args.split}: {len(rows)} examples ({kind}) -> {args.output}; skipped: {skipped}"
    )
    if args.split == "eval" and args.task in ANSWER_FORMAT:
        print(f"prepare_task: evaluate with --answer-format {ANSWER_FORMAT[args.task]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
