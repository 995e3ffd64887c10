"""Pause-inference entry point: ``python -m megatron_pause.generate`` (or ``megatron-pause-generate``).

    python -m megatron_pause.generate --load CKPT --prompts-file in.jsonl --inference-pauses 10 \\
        --max-new-tokens 64 --output-file out.jsonl

Launched like training (one process per device, torchrun/srun) at any TP/PP layout the
checkpoint loads at. The model, tokenizer and pause token come from the checkpoint's stored
configuration; model/tokenizer flags given here override it. Each prompt gets M pauses appended
and is completed after the last one (the paper's Algorithm 3); ``<pause>`` is never emitted.
The output has one JSON line per prompt, in input order: the input record plus ``completion``,
``finish_reason`` (eod, stop, length) and ``inference_pauses``.
"""

from __future__ import annotations

import argparse
import json
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


def build_generate_parser() -> argparse.ArgumentParser:
    parser = build_parser(
        groups=MODEL_FLAG_GROUPS,
        prog="megatron-pause-generate",
        description="Generate completions with M pause tokens after each prompt, from a megatron_pause "
        "checkpoint, at any TP/PP layout (one process per device, torchrun or srun).",
    )
    g = parser.add_argument_group("generation")
    g.add_argument(
        "--load",
        dest="generate.load",
        required=True,
        metavar="CKPT",
        help="Checkpoint directory (its stored configuration gives model and tokenizer).",
    )
    g.add_argument(
        "--prompt", dest="generate.prompt", action="append", metavar="TEXT", help="A prompt; repeatable."
    )
    g.add_argument(
        "--prompts-file",
        dest="generate.prompts_file",
        metavar="F.jsonl",
        help="JSON lines with a 'prompt' string each (other keys are copied to the output).",
    )
    g.add_argument(
        "--interactive",
        dest="generate.interactive",
        action="store_true",
        help="Read prompts from standard input, one per line (single process).",
    )
    g.add_argument(
        "--inference-pauses",
        dest="generate.inference_pauses",
        type=int,
        default=0,
        metavar="M",
        help="Pauses appended after each prompt (M_inf; default: 0).",
    )
    g.add_argument("--output-file", dest="generate.output_file", metavar="O.jsonl",
                   help="Where to write the completions (default: standard output).")  # fmt: skip
    add_decoding_flags(parser)
    return parser


def _read_prompts(opts: dict) -> list[dict]:
    from megatron_pause.evaluation.tasks import TaskFileError, iter_json_lines

    records = [{"prompt": p} for p in opts.get("prompt") or []]
    path = opts.get("prompts_file")
    if path:
        for lineno, obj in iter_json_lines(path):
            if not isinstance(obj.get("prompt"), str):
                raise TaskFileError(f"{path}:{lineno}: 'prompt' must be a string")
            records.append(obj)
    return records


def _write_jsonl(path: str | None, lines: list[dict]) -> None:
    text = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
    if path is None:
        sys.stdout.write(text)
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def run(opts: dict, overrides: dict, decoding) -> None:
    import torch

    from megatron_pause.distributed import destroy_distributed

    records = _read_prompts(opts)
    if opts.get("output_file"):  # fail (or prepare) before the model is loaded
        os.makedirs(os.path.dirname(os.path.abspath(opts["output_file"])), exist_ok=True)
    _, generator = open_generator(opts["load"], overrides, decoding)
    try:
        m = opts.get("inference_pauses", 0)
        tok, sampling = generator.tokenizer, sampling_config(decoding)

        def complete(batch: list[dict]) -> list[dict]:
            outs = generator.generate(
                [tok.tokenize(r["prompt"]) for r in batch], m, decoding.max_new_tokens, sampling,
                stop=decoding.stop, use_cache=not decoding.no_kv_cache,
            )  # fmt: skip
            return [
                {**r, "completion": o.text, "finish_reason": o.finish_reason, "inference_pauses": m}
                for r, o in zip(batch, outs)
            ]

        if opts.get("interactive"):
            if torch.distributed.get_world_size() != 1:
                raise ValueError("--interactive runs in a single process")
            while True:
                try:
                    line = input("prompt> ")
                except EOFError:
                    break
                if line.strip():
                    print(complete([{"prompt": line}])[0]["completion"], flush=True)
            return
        results = complete(records)
        if is_output_rank():
            _write_jsonl(opts.get("output_file"), results)
    finally:
        destroy_distributed()


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex|DEPRECATED).*")
    parser = build_generate_parser()
    overrides, own = split_namespace(vars(parser.parse_args(argv)), ("generate", "decoding"))
    opts = own["generate"]
    given = sum(bool(opts.get(k)) for k in ("prompt", "prompts_file", "interactive"))
    if given == 0:
        parser.error("give --prompt, --prompts-file or --interactive")
    if opts.get("interactive") and given > 1:
        parser.error("--interactive excludes --prompt and --prompts-file")
    if opts.get("inference_pauses", 0) < 0:
        parser.error("--inference-pauses must be >= 0")
    from megatron_pause.training.checkpoint import CheckpointError

    try:
        decoding = decoding_config(own["decoding"])
        run(opts, overrides, decoding)
    except (
        ValueError,
        OSError,
        CheckpointError,
    ) as e:  # bad input files, flags or checkpoints: a clear message
        print(f"megatron-pause-generate: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
