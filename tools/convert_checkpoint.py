#!/usr/bin/env python
"""Convert between megatron_pause checkpoints and Hugging Face Llama folders.

    # checkpoint (any TP/PP/VPP/DP layout) -> HF folder, in one CPU process
    python tools/convert_checkpoint.py export --load ckpt [--iteration N] --output hf_model \\
        [--dtype fp32|bf16|fp16] [--max-shard-size 5GB] [--tokenizer-model PATH]
    # HF Llama folder -> checkpoint that `pretrain --finetune --load ckpt` takes at any layout
    python tools/convert_checkpoint.py import --hf hf_model --save ckpt [--pause-init mean]

The model's shape comes from the configuration stored with the checkpoint
(export) or from config.json (import); import prints the flags a run needs.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="megatron_pause checkpoint -> Hugging Face LlamaForCausalLM folder")
    ex.add_argument("--load", required=True, help="checkpoint directory (--save of the run)")
    ex.add_argument("--iteration", type=int, default=None, help="default: the latest complete one")
    ex.add_argument("--output", required=True, help="folder to write (must be empty or absent)")
    ex.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    ex.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB, 2GiB")
    ex.add_argument("--tokenizer-model", default=None, help="tokenizer path if it moved since training")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    im = sub.add_parser("import", help="Hugging Face Llama folder -> megatron_pause checkpoint")
    im.add_argument("--hf", required=True, help="local Hugging Face model folder")
    im.add_argument("--save", required=True, help="new checkpoint directory")
    im.add_argument("--pause-token", default="<pause>")
    im.add_argument("--pause-init", choices=["mean", "normal", "zeros"], default="mean")
    im.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    im.add_argument(
        "--seq-length",
        type=int,
        default=None,
        help="training length recorded in the checkpoint (default: min(2048, max_position_embeddings))",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex|DEPRECATED|deprecated).*")
    args = build_parser().parse_args(argv)
    if args.command == "export":
        from megatron_pause.conversion.dist_reader import CheckpointReadError
        from megatron_pause.conversion.export import ExportError, export_checkpoint

        try:
            r = export_checkpoint(
                args.load, args.output, args.iteration, args.dtype, args.max_shard_size,
                tokenizer_model=args.tokenizer_model, overwrite=args.overwrite, log=print,
            )  # fmt: skip
        except (ExportError, CheckpointReadError, ValueError, FileNotFoundError) as e:
            print(f"convert_checkpoint export: {e}", file=sys.stderr)
            return 2
        print(f"wrote {r.output}: iteration {r.iteration}, {r.num_files} safetensors file(s), "
              f"{r.total_bytes / 1e9:.3f} GB, {r.seconds:.1f} s")  # fmt: skip
        return 0
    from megatron_pause.conversion.hf_import import HFImportError, import_hf

    try:
        r = import_hf(args.hf, args.save, args.pause_token, args.pause_init, args.make_vocab_size_divisible_by,
                      args.seq_length)  # fmt: skip
    except (HFImportError, ValueError, FileNotFoundError) as e:
        print(f"convert_checkpoint import: {e}", file=sys.stderr)
        return 2
    note = "added and initialised" if r.pause_added else "already in the tokenizer"
    print(f"wrote {r.checkpoint_dir}: vocabulary {r.vocab_size}, pause id {r.pause_id} ({note})")
    print(f"finetune with: --finetune --load {r.save} {r.model_flags()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
