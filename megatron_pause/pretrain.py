"""Pause-pretraining entry point: ``python -m megatron_pause.pretrain`` (or ``megatron-pause-pretrain``).

Launched once per rank by ``torchrun`` or ``srun``. Reads Megatron-LM's flags
(:mod:`megatron_pause.arguments`), rejects contradictory settings before any
process group exists, then builds each component from its own narrow config
and hands them to the :class:`~megatron_pause.training.trainer.Trainer`:

    flags -> PretrainConfig -> validate -> process groups -> tokenizer -> datasets
          -> model chunks (+ pause rows) -> DDP -> optimizer + LR schedule
          -> checkpoint (resume) -> Trainer.fit()

This file is where pauses are wired in: the tokenizer supplies the pause id,
the dataset inserts pauses and masks pause targets, and the loss re-applies
that mask. The trainer never sees the word "pause". Everything after the
flags is :func:`run_training`, which pause-finetuning
(:mod:`megatron_pause.finetune`) runs with its own datasets.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from megatron_pause.arguments import ConfigError, parse_args_and_given, validate_config, validate_vocab
from megatron_pause.config import PretrainConfig


def _world_size_from_env() -> int:
    from megatron_pause.distributed import launch_env

    return launch_env().world_size


@dataclass
class RunData:
    """What an entry point feeds the shared run: map-style sample datasets (either may be None)
    and the loss. ``eval_loss`` (optional) computes the validation loss from logits and may report
    more (see :func:`megatron_pause.training.step.make_forward_step`)."""

    train: Any
    valid: Any
    loss: Callable
    eval_loss: Callable | None = None
    # Targets are a few positions per sample (finetuning): cut trailing columns no target
    # reaches and compute logits only at targets (megatron_pause.training.sparse_targets).
    sparse_targets: bool = False


def _pretraining_data(cfg: PretrainConfig, tokenizer, log) -> RunData:
    from megatron_pause.loss import PauseMaskedLoss
    from megatron_pause.training.data import build_datasets

    train_ds, valid_ds = build_datasets(cfg, tokenizer, log)
    return RunData(train_ds, valid_ds, PauseMaskedLoss(tokenizer.pause_id))


def run(cfg: PretrainConfig):
    """Build everything and train. Returns the trainer's FitResult (on every rank)."""
    return run_training(cfg, _pretraining_data)


def run_training(cfg: PretrainConfig, build_data: Callable[[PretrainConfig, Any, Any], RunData]):
    """The run shared by pretraining and finetuning: process groups, tokenizer, ``build_data``
    (which may resolve run lengths in ``cfg`` before the LR schedule is built), model with pause
    rows, DDP, optimizer, schedule, checkpoint (resume, or weights only with --finetune), Trainer.
    Returns the trainer's FitResult (on every rank)."""
    import torch
    from megatron.core import parallel_state

    from megatron_pause import platform
    from megatron_pause.checkpoint_args import check_tokenizer, vocab_record
    from megatron_pause.distributed import destroy_distributed, init_distributed
    from megatron_pause.models import fusions
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.models.pause_vocab import init_pause_rows
    from megatron_pause.training import checkpoint, sparse_targets
    from megatron_pause.training.batches import MicrobatchLoader
    from megatron_pause.training.data import build_run_tokenizer
    from megatron_pause.training.flops import detect_peak_flops, model_flops_per_token
    from megatron_pause.training.metrics import MetricsLogger
    from megatron_pause.training.scheduler import build_scheduler
    from megatron_pause.training.step import build_optimizer, make_forward_step, wrap_model
    from megatron_pause.training.trainer import Trainer, TrainState

    launch = init_distributed(cfg.parallel, cfg.model.num_layers, cfg.training.seed)
    log = MetricsLogger(cfg.logging.metrics_file, cfg.logging.tensorboard_dir, enabled=launch.rank == 0)
    try:
        tokenizer = build_run_tokenizer(cfg)
        padded_vocab = tokenizer.padded_vocab_size(
            cfg.model.make_vocab_size_divisible_by, cfg.parallel.tensor_model_parallel_size
        )
        validate_vocab(cfg, tokenizer.pause_id, padded_vocab)
        vocab = vocab_record(tokenizer, padded_vocab)
        for note in check_tokenizer(cfg.checkpoint.load, cfg.checkpoint.ckpt_step, vocab):
            log.info(note)
        dp_size = parallel_state.get_data_parallel_world_size()
        log.info(
            f"megatron_pause: world {launch.world_size} = TP {cfg.parallel.tensor_model_parallel_size} x "
            f"PP {cfg.parallel.pipeline_model_parallel_size} x DP {dp_size} on {platform.device().type}; "
            f"vocab {tokenizer.vocab_size} (padded {padded_vocab}), pause id {tokenizer.pause_id}, "
            f"pause fraction {cfg.pause.pause_fraction}"
        )
        data = build_data(cfg, tokenizer, log)

        available = fusions.detect()
        log.info(
            f"megatron_pause: {fusions.describe(fusions.decide(cfg.fusion, cfg.model, cfg.precision, available))}"
        )
        tcfg = transformer_config(cfg.model, cfg.parallel, cfg.precision, cfg.training, cfg.fusion, available)
        chunks = build_model_chunks(cfg.model, tcfg, padded_vocab)
        init_pause_rows(
            chunks,
            tokenizer.pause_id,
            tokenizer.base_vocab_size,
            cfg.model.pause_init,
            cfg.model.init_method_std,
            cfg.training.seed,
        )
        chunks = wrap_model(chunks, tcfg, cfg.parallel)
        optimizer = build_optimizer(chunks, cfg.optimizer, cfg.parallel, cfg.precision)
        scheduler = build_scheduler(
            optimizer, cfg.optimizer, cfg.training.train_iters, cfg.checkpoint.override_opt_param_scheduler
        )

        state = TrainState()
        if cfg.checkpoint.load:
            finetune = cfg.checkpoint.finetune
            # With --finetune only weights are taken, but the optimizer is still
            # passed: under bf16/fp16 its fp32 main params must pick them up. --skip-train
            # (evaluation only) needs no optimizer or schedule state either, so optimizer flags
            # such as --lr may differ from the saved run's.
            weights_only = finetune or cfg.training.skip_train
            loaded = checkpoint.load_checkpoint(
                cfg.checkpoint.load, chunks,
                optimizer=optimizer,
                scheduler=None if weights_only else scheduler,
                sharding_type=cfg.checkpoint.dist_ckpt_optim_sharding,
                iteration=cfg.checkpoint.ckpt_step,
                load_rng=not finetune,
                load_optimizer_state=not weights_only,
                log=log.info,
            )  # fmt: skip
            if loaded is None:
                log.info(f"no checkpoint under --load {cfg.checkpoint.load}: starting from scratch")
            else:
                iteration, saved = loaded
                log.info(f"loaded checkpoint iteration {iteration} from {cfg.checkpoint.load}")
                if not finetune:
                    state = TrainState(
                        **{k: v for k, v in saved.items() if k in TrainState.__dataclass_fields__}
                    )
                elif not saved.get("pause_targets_seen"):
                    # Standard-pretrained -> pause-finetuned: the checkpoint's row at the
                    # pause id was never trained as a pause; start it like a fresh model's.
                    init_pause_rows(
                        chunks, tokenizer.pause_id, tokenizer.base_vocab_size, cfg.model.pause_init,
                        cfg.model.init_method_std, cfg.training.seed,
                    )  # fmt: skip
                    optimizer.reload_model_params()  # fp32 main params take the new rows too
                    log.info(
                        f"checkpoint {cfg.checkpoint.load} saw no pause tokens: "
                        f"initialised the <pause> rows ({cfg.model.pause_init})"
                    )

        train_ds, valid_ds = data.train, data.valid
        dp_rank = parallel_state.get_data_parallel_rank()
        t = cfg.training
        train_loader = None
        if train_ds is not None and not t.skip_train:
            train_loader = MicrobatchLoader(
                train_ds,
                t.micro_batch_size,
                t.global_batch_size,
                dp_rank,
                dp_size,
                state.consumed_samples,
                num_workers=cfg.data.num_workers,
                trim_multiple=sparse_targets.trim_multiple(cfg.parallel) if data.sparse_targets else None,
            )
        valid_factory = None
        if valid_ds is not None:
            # Every evaluation reads the same first samples of the validation split.
            valid_factory = partial(
                MicrobatchLoader, valid_ds, t.micro_batch_size, t.global_batch_size, dp_rank, dp_size, 0
            )

        peak = cfg.logging.peak_flops or detect_peak_flops(cfg.precision.params_dtype_name)
        if peak and cfg.precision.fp8_format:
            peak *= 2
        trainer = Trainer(
            training=t,
            checkpointing=cfg.checkpoint,
            logging=cfg.logging,
            seq_length=cfg.model.seq_length,
            chunks=chunks,
            optimizer=optimizer,
            scheduler=scheduler,
            forward_step=make_forward_step(
                data.loss, data.eval_loss, logits_at_targets_only=data.sparse_targets
            ),
            train_loader=train_loader,
            valid_loader_factory=valid_factory,
            logger=log,
            flops_per_token=model_flops_per_token(cfg.model, padded_vocab, cfg.model.seq_length),
            peak_flops=peak,
            config_dict=cfg.to_dict(),
            checkpoint_metadata={"vocab": vocab},
            state=state,
        )
        result = trainer.fit()
        log.info(
            f"done: {result.state.iteration} iterations, {result.state.consumed_tokens:,d} tokens "
            f"({result.stopped_by}); checkpoints: {cfg.checkpoint.save or 'not saved'}"
        )
        torch.distributed.barrier()
        return result
    finally:
        log.close()
        destroy_distributed()


def main(argv: Sequence[str] | None = None) -> int:
    # megatron-core warns at import that TE/apex are absent; expected on CPU.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex).*")
    cfg, given = parse_args_and_given(argv)
    usage_errors: tuple[type[Exception], ...] = (ConfigError,)
    try:
        if cfg.checkpoint.load:
            # Flags against the checkpoint's stored configuration, and its files, before anything is built.
            from megatron_pause.checkpoint_args import check_against_load
            from megatron_pause.training.checkpoint import CheckpointError

            usage_errors = (ConfigError, CheckpointError)
            cfg = check_against_load(cfg, given)
        validate_config(cfg, _world_size_from_env())
    except usage_errors as e:
        print(f"megatron_pause: {e}", file=sys.stderr)
        return 2
    from megatron_pause.training.checkpoint import CheckpointError
    from megatron_pause.training.step import NonFiniteLoss

    try:
        run(cfg)
    except NonFiniteLoss as e:
        print(f"megatron_pause: {e}", file=sys.stderr)
        return 3
    except (ConfigError, CheckpointError) as e:  # found once the tokenizer or the tensors are read
        print(f"megatron_pause: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
