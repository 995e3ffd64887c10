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

**Resuming.** As in Megatron-LM, a resumed run follows the schedule stored in
the checkpoint (peak and minimum LR, warmup and decay lengths, decay style,
weight decay), whatever the flags say; ``--override-opt-param-scheduler``
takes the flags' schedule instead (the position in it, ``num_steps``, always
comes from the checkpoint). Megatron-LM applies its choice silently, so a run
extended from 250 to 260 iterations kept decaying to 250 and trained its last
10 iterations at ``min_lr`` without a word; :func:`schedule_note` says which
schedule is used, and why, whenever the two differ.
"""

from __future__ import annotations

from typing import Any

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_pause.config import OptimizerConfig

DECAY_STYLES = ("cosine", "linear", "constant")


def build_scheduler(
    optimizer: Any, optim: OptimizerConfig, train_iters: int, override_checkpoint: bool = False
) -> OptimizerParamScheduler:
    """Warmup over ``optim.lr_warmup_iters`` iterations from 0 to ``optim.lr``,
    then ``optim.lr_decay_style`` decay to ``optim.min_lr`` at iteration
    ``optim.lr_decay_iters`` (default ``train_iters``); ``min_lr`` after that.

    Call ``scheduler.step(increment=1)`` after each optimizer step. When a
    checkpoint is loaded, its schedule replaces this one unless
    ``override_checkpoint`` (``--override-opt-param-scheduler``).
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
        use_checkpoint_opt_param_scheduler=not override_checkpoint,
        override_opt_param_scheduler=override_checkpoint,
    )


# (state-dict key, the flag that sets it)
_SCHEDULE_FIELDS: tuple[tuple[str, str], ...] = (
    ("max_lr", "--lr"),
    ("min_lr", "--min-lr"),
    ("lr_warmup_steps", "--lr-warmup-iters"),
    ("lr_decay_steps", "--lr-decay-iters (default: --train-iters)"),
    ("lr_decay_style", "--lr-decay-style"),
    ("start_wd", "--weight-decay"),
)


def schedule_note(scheduler: OptimizerParamScheduler, saved: dict[str, Any]) -> str | None:
    """What loading ``saved`` (a checkpoint's scheduler state) into ``scheduler`` (built from
    the flags) will do, when the two schedules differ; None when they agree.

    Call before ``scheduler.load_state_dict(saved)``."""
    differences = []
    for key, flag in _SCHEDULE_FIELDS:
        if key not in saved:
            continue  # a field older megatron-core states lack: load_state_dict handles the aliases
        ours, theirs = getattr(scheduler, key), saved[key]
        if ours != theirs:
            differences.append(f"  {flag}: checkpoint {theirs}, flags {ours}")
    if not differences:
        return None
    listing = "\n".join(differences)
    if scheduler.override_opt_param_scheduler:
        return (
            "LR schedule: using the flags' schedule, not the checkpoint's (--override-opt-param-scheduler); "
            f"they differ in\n{listing}\n  the position in the schedule (iteration "
            f"{saved.get('num_steps')}) comes from the checkpoint"
        )
    return (
        "LR schedule: continuing the checkpoint's schedule, which differs from the flags in\n"
        f"{listing}\n  a resumed run keeps the schedule it started with (as in Megatron-LM); "
        "add --override-opt-param-scheduler to follow the flags' schedule from here on"
    )
