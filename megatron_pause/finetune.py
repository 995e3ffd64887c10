"""Pause-finetuning entry point: ``python -m megatron_pause.finetune`` (or ``megatron-pause-finetune``).

The paper's Algorithm 2: each prompt/answer example becomes ``prompt <pause> x M answer eod``
(``--finetune-pauses M``; 0 = standard finetuning) and the loss covers the answer and the eod
only. Launched like pretraining (torchrun, srun) with the same Megatron flags for the model,
parallelism, precision, optimizer, training, checkpoints and logging, plus this module's
``finetuning data`` group. It runs the same engine as pretraining
(:func:`megatron_pause.pretrain.run_training`): only the data differs, and the trainer still
never sees a pause.

    --load CKPT --finetune    start from a pretrained checkpoint (weights only); a pause-free
                              checkpoint gets its <pause> rows initialised
    --load DIR                resume this finetuning run exactly (mid-epoch included)
    --load CKPT --skip-train  only evaluate on --valid-data-path
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import warnings
from collections.abc import Sequence

from megatron_pause.arguments import (
    FLAG_GROUPS,
    ConfigError,
    build_parser,
    parse_args_and_given,
    validate_config,
    warmup_problem,
)
from megatron_pause.finetune_config import FinetuneConfig, FinetuneDataConfig

# Every pretraining flag group but "data" (indexed shards): finetuning reads JSONL examples.
GROUPS = tuple(name for name in FLAG_GROUPS if name != "data")
_DEFAULTS = FinetuneDataConfig()


def _add_finetune_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("finetuning data")
    paths = "JSONL or JSONL.gz files, folders or globs, optionally weighted like --data-path ('0.7 A 0.3 B')"
    g.add_argument("--train-data-path", dest="finetune.train_data_path", nargs="+", metavar="PATH",
                   help=f"Training examples: {paths}.")  # fmt: skip
    g.add_argument("--valid-data-path", dest="finetune.valid_data_path", nargs="+", metavar="PATH",
                   help=f"Validation examples ({paths}); every evaluation reads each exactly once.")  # fmt: skip
    g.add_argument("--prompt-key", dest="finetune.prompt_key", metavar="KEY",
                   help=f"JSON key of the prompt (default: {_DEFAULTS.prompt_key}).")  # fmt: skip
    g.add_argument("--answer-key", dest="finetune.answer_key", metavar="KEY",
                   help=f"JSON key of the answer (default: {_DEFAULTS.answer_key}).")  # fmt: skip
    g.add_argument("--finetune-pauses", dest="finetune.finetune_pauses", type=int, metavar="M",
                   help="<pause> tokens between prompt and answer (M_ft; 0 = standard finetuning; default: 0).")  # fmt: skip
    g.add_argument("--pause-position", dest="finetune.pause_position", choices=("append", "prepend"),
                   help="Pauses after the prompt (the paper's PauseFT) or before it (its ablation); default: append.")  # fmt: skip
    g.add_argument("--pack-sequences", dest="finetune.pack_sequences", action="store_true",
                   help="Pack several examples per sequence, attention confined to each (needs --micro-batch-size 1).")  # fmt: skip
    g.add_argument("--train-epochs", dest="finetune.train_epochs", type=int, metavar="N",
                   help="Train N passes over the training examples (overrides --train-iters).")  # fmt: skip
    g.add_argument("--max-bad-fraction", dest="finetune.max_bad_fraction", type=float, metavar="F",
                   help="Stop with an error when more than this share of a split's examples is rejected.")  # fmt: skip
    g.add_argument("--rejects-file", dest="finetune.rejects_file", metavar="PATH",
                   help="Where skipped examples are listed (default: <--save>/finetune_rejects.jsonl, "
                   "else ./finetune_rejects.jsonl).")  # fmt: skip


def build_finetune_parser() -> argparse.ArgumentParser:
    parser = build_parser(
        groups=GROUPS,
        prog="megatron-pause-finetune",
        description=(
            "Pause-finetune a GPT model (Goyal et al., ICLR 2024, Algorithm 2) on prompt/answer JSONL: "
            "M <pause> tokens after each prompt, loss on the answer only. Flags follow Megatron-LM; "
            "launch one process per device with torchrun or srun."
        ),
    )
    _add_finetune_flags(parser)
    return parser


def parse_finetune_args(argv: Sequence[str] | None = None) -> FinetuneConfig:
    return parse_finetune_args_and_given(argv)[0]


def parse_finetune_args_and_given(argv: Sequence[str] | None = None) -> tuple[FinetuneConfig, frozenset[str]]:
    """:func:`parse_finetune_args` plus the dests the command line set (for the checkpoint check)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_finetune_parser()
    if any(a == "--pause-fraction" or a.startswith("--pause-fraction=") for a in argv):
        parser.error(
            "--pause-fraction is for pretraining; finetuning places --finetune-pauses after each prompt"
        )
    cfg, given = parse_args_and_given(argv, parser=parser, config_cls=FinetuneConfig)
    cfg.pause.pause_fraction = 0.0  # no random pauses: the M_ft pauses are placed per example
    return cfg, given


def validate_finetune_config(cfg: FinetuneConfig, world_size: int) -> None:
    """:func:`validate_config` (without --data-path) plus the finetuning data checks, all
    problems reported together."""
    from megatron_pause.data.sft import parse_weighted_paths

    problems: list[str] = []
    checked = cfg
    if cfg.finetune.train_epochs is not None:
        # --train-iters is resolved from the epochs once the examples are read; its check
        # (warmup_problem: warmup within the run) is made then.
        checked = copy.deepcopy(cfg)
        checked.training.train_iters = max(cfg.training.train_iters, cfg.optimizer.lr_warmup_iters + 1)
    try:
        validate_config(checked, world_size, needs_data_path=False)
    except ConfigError as e:
        problems.extend(e.problems)
    f, tr = cfg.finetune, cfg.training
    if not tr.skip_train and not f.train_data_path:
        problems.append(
            "no training data: pass --train-data-path FILE.jsonl (or --skip-train to only evaluate)"
        )
    if tr.skip_train and not f.valid_data_path:
        problems.append("--skip-train evaluates on --valid-data-path, which is missing")
    for flag, tokens in (("--train-data-path", f.train_data_path), ("--valid-data-path", f.valid_data_path)):
        if tokens:
            try:
                parse_weighted_paths(tokens, flag)
            except ValueError as e:
                problems.append(str(e))
    if f.finetune_pauses < 0:
        problems.append(f"--finetune-pauses must be >= 0, got {f.finetune_pauses}")
    elif f.finetune_pauses + 2 > cfg.model.seq_length:
        problems.append(
            f"--finetune-pauses ({f.finetune_pauses}) leaves no room in --seq-length ({cfg.model.seq_length}) "
            "for a prompt token, an answer token and the eod"
        )
    if f.train_epochs is not None and f.train_epochs <= 0:
        problems.append(f"--train-epochs must be positive, got {f.train_epochs}")
    if f.max_bad_fraction is not None and not 0 <= f.max_bad_fraction <= 1:
        problems.append(f"--max-bad-fraction must be in [0, 1], got {f.max_bad_fraction}")
    if f.pack_sequences:
        if tr.micro_batch_size != 1:
            problems.append(
                f"--pack-sequences needs --micro-batch-size 1 (megatron's thd packing; got {tr.micro_batch_size}): "
                "a packed sequence already holds several examples"
            )
        if cfg.parallel.sequence_parallel:
            problems.append("--pack-sequences does not support --sequence-parallel yet")
    if not f.prompt_key or not f.answer_key or f.prompt_key == f.answer_key:
        problems.append("--prompt-key and --answer-key must be two different non-empty keys")
    if problems:
        raise ConfigError(problems)


def _rejects_path(cfg: FinetuneConfig) -> str:
    if cfg.finetune.rejects_file:
        return cfg.finetune.rejects_file
    return os.path.join(cfg.checkpoint.save or ".", "finetune_rejects.jsonl")


def _load_split(cfg: FinetuneConfig, tokenizer, tokens: list[str], flag: str, rejects):
    """[(weight, examples)] of one split, every example tokenized and fitted to --seq-length."""
    from megatron_pause.data.sft import parse_weighted_paths, read_examples, tokenize_examples

    f = cfg.finetune
    sources = []
    for weight, files in parse_weighted_paths(tokens, flag):
        origins: list[tuple[str, int]] = []
        texts = read_examples(files, f.prompt_key, f.answer_key, rejects, origins)
        examples = tokenize_examples(
            tokenizer, texts, f.finetune_pauses, cfg.model.seq_length, rejects, origins
        )
        sources.append((weight, examples))
    return sources


def build_finetune_data(cfg: FinetuneConfig, tokenizer, log):
    """The finetuning :class:`~megatron_pause.pretrain.RunData`: read, tokenize and fit the examples
    (counting and listing rejects), resolve --train-epochs into --train-iters and size each
    evaluation to read the validation set exactly once."""
    import torch

    from megatron_pause.data.sft import FinetuneDataset, RejectLog, TooManyRejects, check_reject_fraction
    from megatron_pause.loss import PauseMaskedLoss, PauseMaskedLossWithAccuracy
    from megatron_pause.pretrain import RunData

    f, t = cfg.finetune, cfg.training
    common = dict(
        seq_length=cfg.model.seq_length, num_pauses=f.finetune_pauses, pause_id=tokenizer.pause_id,
        eod=tokenizer.eod, pad=tokenizer.pad, position=f.pause_position, pack=f.pack_sequences, seed=t.seed,
    )  # fmt: skip
    splits = {}
    entries = []
    checks = []  # (rejects, accepted, what): checked once the rejects file is written
    for name, tokens, flag in (
        ("train", [] if t.skip_train else f.train_data_path, "--train-data-path"),
        ("valid", f.valid_data_path if t.eval_iters > 0 else [], "--valid-data-path"),
    ):
        if not tokens:
            splits[name] = None
            continue
        rejects = RejectLog()
        sources = _load_split(cfg, tokenizer, tokens, flag, rejects)
        accepted = sum(len(exs) for _, exs in sources)
        log.info(f"{name} examples: {accepted:,d} used, {rejects.rejected:,d} rejected ({rejects.summary()})")
        entries.extend({"split": name, **e} for e in rejects.entries)
        checks.append((rejects, accepted, f"{flag} {' '.join(tokens)}"))
        splits[name] = sources
    if entries:
        path = _rejects_path(cfg)
        if torch.distributed.get_rank() == 0:
            log_ = RejectLog()
            log_.entries = entries
            log_.write(path)
        log.info(f"skipped or truncated examples are listed in {path}")
    for rejects, accepted, what in checks:
        check_reject_fraction(rejects, accepted, f.max_bad_fraction, what)
        if accepted == 0:
            raise TooManyRejects(f"{what}: no usable examples ({rejects.summary()})")

    train = valid = None
    if splits["train"] is not None:
        train = FinetuneDataset(splits["train"], shuffle=True, **common)
        if f.train_epochs is not None:
            samples = train.samples_in_epochs(f.train_epochs)
            t.train_iters = math.ceil(samples / t.global_batch_size)
            problem = warmup_problem(
                cfg, f"the {t.train_iters} iterations of --train-epochs {f.train_epochs} "
                f"({samples:,d} samples / --global-batch-size {t.global_batch_size})",
            )  # fmt: skip
            if problem:
                raise ConfigError([problem])
            log.info(
                f"--train-epochs {f.train_epochs}: {samples:,d} samples = {t.train_iters} iterations of "
                f"{t.global_batch_size}"
            )
        train.num_samples = max(t.train_iters, 1) * t.global_batch_size
    if splits["valid"] is not None:
        valid = FinetuneDataset(splits["valid"], shuffle=False, **common)
        samples = valid.samples_per_epoch(0)
        t.eval_iters = math.ceil(samples / t.global_batch_size)
        # Pad to whole global batches with empty samples: each example is read exactly once.
        valid.num_samples = t.eval_iters * t.global_batch_size
        log.info(f"validation: {samples:,d} samples, {t.eval_iters} batches per evaluation")
    return RunData(
        train,
        valid,
        PauseMaskedLoss(tokenizer.pause_id),
        PauseMaskedLossWithAccuracy(tokenizer.pause_id),
        sparse_targets=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    # megatron-core warns at import that TE/apex are absent; expected on CPU.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex).*")
    cfg, given = parse_finetune_args_and_given(argv)
    from megatron_pause.pretrain import _world_size_from_env, run_training
    from megatron_pause.training.checkpoint import CheckpointError

    try:
        if cfg.checkpoint.load:
            # The pretraining entry point's check: flags vs the checkpoint's stored configuration.
            from megatron_pause.checkpoint_args import check_against_load

            cfg = check_against_load(cfg, given)
        validate_finetune_config(cfg, _world_size_from_env())
    except (ConfigError, CheckpointError) as e:
        print(f"megatron_pause: {e}", file=sys.stderr)
        return 2
    from megatron_pause.data.sft import TooManyRejects
    from megatron_pause.training.step import NonFiniteLoss

    try:
        run_training(cfg, build_finetune_data)
    except (TooManyRejects, ConfigError, CheckpointError) as e:
        print(f"megatron_pause: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"megatron_pause: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
