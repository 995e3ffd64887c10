"""Evaluation entry point: ``python -m megatron_pause.evaluate`` (or ``megatron-pause-evaluate``).

    python -m megatron_pause.evaluate --load ckpt/seed1 ckpt/seed2 --task squad_eval.jsonl \\
        --inference-pauses 0,5,10,25 --results-file R.json --predictions-file P.jsonl

Each checkpoint (e.g. one per finetuning seed) is evaluated at every M_inf: exact match and F1
(SQuAD v1.1 normalisation) or the final number (``--answer-format number``) for generation
tasks, ``acc``/``acc_norm`` by log-likelihood for multiple-choice tasks (see
:mod:`megatron_pause.evaluation.tasks` for the file format, ``tools/prepare_task.py`` to make
one). Writes ``P.jsonl`` (one line per example and M, resumable), ``R.json`` (per checkpoint and
M every metric and the example count, plus mean / std (ddof=1) / 95% CI over checkpoints), and
``R.md`` (table) and ``R.png`` (metric vs M_inf) beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from megatron_pause.arguments import build_parser
from megatron_pause.inference.session import (
    MODEL_FLAG_GROUPS,
    add_decoding_flags,
    decoding_config,
    is_output_rank,
    open_generator,
    sampling_config,
    split_namespace,
)


def _pause_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return list(dict.fromkeys(values))


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = build_parser(
        groups=MODEL_FLAG_GROUPS,
        prog="megatron-pause-evaluate",
        description="Evaluate megatron_pause checkpoints on a task at several numbers of inference pauses.",
    )
    g = parser.add_argument_group("evaluation")
    g.add_argument(
        "--load",
        dest="evaluation.load",
        nargs="+",
        required=True,
        metavar="CKPT",
        help="Checkpoint directories; several (finetuning seeds) are aggregated.",
    )
    g.add_argument(
        "--task",
        dest="evaluation.task",
        required=True,
        metavar="F.jsonl",
        help="Task file (tools/prepare_task.py writes them).",
    )
    g.add_argument(
        "--inference-pauses",
        dest="evaluation.inference_pauses",
        type=_pause_list,
        default=[0],
        metavar="M[,M...]",
        help="Numbers of pauses after each prompt (default: 0).",
    )
    g.add_argument(
        "--answer-format",
        dest="evaluation.answer_format",
        choices=("text", "number"),
        default="text",
        help="Generation tasks: SQuAD EM/F1 (text, default) or final number (GSM8k).",
    )
    g.add_argument(
        "--results-file",
        dest="evaluation.results_file",
        required=True,
        metavar="R.json",
        help="Metrics per checkpoint and M; R.md and R.png are written beside it.",
    )
    g.add_argument(
        "--predictions-file",
        dest="evaluation.predictions_file",
        metavar="P.jsonl",
        help="Per-example predictions and scores (default: R.predictions.jsonl); resumed if present.",
    )
    g.add_argument("--label", dest="evaluation.label", metavar="NAME",
                   help="Name of the checkpoint group in the table and plot.")  # fmt: skip
    add_decoding_flags(parser)
    return parser


def run(opts: dict, overrides: dict, decoding) -> dict:
    import torch

    from megatron_pause.distributed import destroy_distributed
    from megatron_pause.evaluation.report import write_reports
    from megatron_pause.evaluation.runner import Evaluator, Progress, metric_names, read_predictions
    from megatron_pause.evaluation.tasks import read_task

    examples = read_task(opts["task"])
    ms = opts.get("inference_pauses", [0])
    fmt = opts.get("answer_format", "text")
    if examples[0].kind != "generation" and fmt != "text":
        raise ValueError("--answer-format applies to generation tasks only")
    if fmt == "number":  # fail now, not after hours of decoding
        from megatron_pause.evaluation.metrics import extract_number

        bad = [e.index for e in examples if all(extract_number(a) is None for a in e.answers)]
        if bad:
            raise ValueError(
                f"{opts['task']}: example #{bad[0]} has no number in its answers (--answer-format number)"
            )
    results_file = opts["results_file"]
    pred_file = opts.get("predictions_file") or os.path.splitext(results_file)[0] + ".predictions.jsonl"
    for path in (results_file, pred_file):  # fail (or prepare) before any model is loaded
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    results = {
        "task": opts["task"], "task_type": examples[0].kind, "answer_format": fmt,
        "metrics": metric_names(examples[0].kind, fmt), "metric_scale": "percent (per-example scores in P are 0..1)",
        "inference_pauses": ms, "label": opts.get("label"), "predictions_file": pred_file, "checkpoints": [],
    }  # fmt: skip
    progress = Progress(len(examples) * len(ms) * len(opts["load"]), enabled=is_output_rank())
    done = None
    try:
        for ckpt in opts["load"]:
            loaded, generator = open_generator(ckpt, overrides, decoding)
            if done is None:  # rank 0 reads (and repairs) the predictions; everyone gets the same
                box = [read_predictions(pred_file) if is_output_rank() else None]
                torch.distributed.broadcast_object_list(box, src=0)
                done = box[0]

            def write(lines: list[dict]) -> None:
                if is_output_rank() and lines:
                    import json

                    with open(pred_file, "a", encoding="utf-8") as f:
                        f.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))

            entry = {"load": ckpt, "iteration": loaded.iteration, "results": {}}
            results["checkpoints"].append(entry)
            ev = Evaluator(
                generator, loaded.tokenizer, examples, ckpt, fmt, decoding, sampling_config(decoding), write,
                progress, chunk=4 * decoding.inference_max_requests,
            )  # fmt: skip
            for m in ms:
                entry["results"][str(m)] = ev.run(m, done)
                progress.add(0, f"{ckpt} M={m} done: {entry['results'][str(m)]}", force=True)
                if is_output_rank():  # after every M, so an interruption keeps the results so far
                    write_reports(results, results_file, with_plot=False)
        if is_output_rank():
            write_reports(results, results_file)
    finally:
        destroy_distributed()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex|DEPRECATED).*")
    parser = build_evaluate_parser()
    overrides, own = split_namespace(vars(parser.parse_args(argv)), ("evaluation", "decoding"))
    from megatron_pause.training.checkpoint import CheckpointError

    try:
        run(own["evaluation"], overrides, decoding_config(own["decoding"]))
    except (ValueError, OSError, CheckpointError) as e:
        print(f"megatron-pause-evaluate: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
