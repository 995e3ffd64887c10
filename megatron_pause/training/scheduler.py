"""Learning-rate schedule: megatron-core's OptimizerParamScheduler, counted in iterations.

megatron-core's scheduler is unit-agnostic: it counts "steps" and is told how
many passed with ``step(increment)``. Megatron-LM feeds it *samples*
(``increment = global_batch_size``, decay lengths multiplied by the batch
size) so that a run with a changing batch size keeps its schedule. We keep
the global batch size fixed for a run, so we count *iterations*: warmup and
decay lengths are iterations and the training loop calls
``scheduler.step(increment=1)`` once after every optimizer step. The scheduler's
``num_steps`` is therefore the number of completed iterations, which is what a
checkpoint stores and restores.

Weight decay is constant (``start_wd == end_wd``); megatron's parameter groups
carry ``wd_mult`` = 0 for biases and norms, which the scheduler applies.

As in Megatron-LM, the warmup starts at ``init_lr = 0``: the first iteration of
a run with warmup steps with learning rate 0 (AdamW's moments still update).
"""

from __future__ import annotations

from typing import Any

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_pause.config import OptimizerConfig

DECAY_STYLES = ("cosine", "linear", "constant")


def build_scheduler(optimizer: Any, optim: OptimizerConfig, train_iters: int) -> OptimizerParamScheduler:
    """Warmup over ``optim.lr_warmup_iters`` iterations from 0 to ``optim.lr``,
    then ``optim.lr_decay_style`` decay to ``optim.min_lr`` at iteration
    ``optim.lr_decay_iters`` (default ``train_iters``); ``min_lr`` after that.

    Call ``scheduler.step(increment=1)`` after each optimizer step.
    """
    decay_iters = optim.lr_decay_iters if optim.lr_decay_iters is not None else train_iters
    if optim.lr_decay_style not in DECAY_STYLES:
        raise ValueError(f"--lr-decay-style must be one of {DECAY_STYLES}, got {optim.lr_decay_style!r}")
    if decay_iters <= 0:
        raise ValueError(f"--lr-decay-iters (default --train-iters) must be positive, got {decay_iters}")
    if not 0 <= optim.lr_warmup_iters < decay_iters:
        raise ValueError(
            f"--lr-warmup-iters ({optim.lr_warmup_iters}) must be >= 0 and below the decay length "
            f"(--lr-decay-iters or --train-iters = {decay_iters})"
        )
    if not 0.0 <= optim.min_lr <= optim.lr:
        raise ValueError(f"--min-lr ({optim.min_lr}) must be between 0 and --lr ({optim.lr})")
    if optim.weight_decay < 0:
        raise ValueError(f"--weight-decay must be >= 0, got {optim.weight_decay}")
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        lr_warmup_steps=optim.lr_warmup_iters,
        lr_decay_steps=decay_iters,
        lr_decay_style=optim.lr_decay_style,
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=decay_iters,
        wd_incr_style="constant",
        # A resumed run takes the schedule stored in the checkpoint, as Megatron-LM does by default.
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )
