"""One training step on megatron-core: wrap, optimise, forward/backward.

The pieces a training loop needs and nothing more: wrap model chunks for
mixed precision and megatron DDP, build megatron's optimizer, and run one
global batch through ``get_forward_backward_func`` (no pipelining, 1F1B, or
interleaved 1F1B with virtual stages -- megatron picks). The step knows
nothing about pauses: batches arrive as ``tokens``/``labels``/``loss_mask``/
``position_ids`` and the loss function is handed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from megatron.core import parallel_state
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import get_model_config

from megatron_pause import platform
from megatron_pause.config import OptimizerConfig, ParallelConfig, PrecisionConfig

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple]


def wrap_model(
    chunks: list[torch.nn.Module], config: TransformerConfig, parallel: ParallelConfig
) -> list[DistributedDataParallel]:
    """Float16Module for bf16/fp16 (megatron casts inputs/outputs there), then megatron DDP."""
    if config.bf16 or config.fp16:
        chunks = [Float16Module(config, c) for c in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        # Grads are summed (per-token loss) and scaled by 1/tokens in finalize_model_grads.
        average_in_collective=False,
    )
    wrapped = [
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=c, disable_bucketing=(i > 0))
        for i, c in enumerate(chunks)
    ]
    for w in wrapped:
        w.broadcast_params()
    return wrapped


def build_optimizer(
    chunks: list[DistributedDataParallel],
    optim: OptimizerConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig,
):
    cfg = MegatronOptimizerConfig(
        optimizer="adam",
        lr=optim.lr,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        bf16=precision.bf16,
        fp16=precision.fp16,
        params_dtype=torch.bfloat16 if precision.bf16 else torch.float16 if precision.fp16 else torch.float32,
        loss_scale=precision.loss_scale,
        initial_loss_scale=precision.initial_loss_scale,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(cfg, chunks)
    _hook_model_config(chunks, optimizer, parallel)
    return optimizer


def _hook_model_config(chunks, optimizer, parallel: ParallelConfig) -> None:
    """Connect the schedule to DDP and the optimizer, as megatron's trainer does."""
    config = get_model_config(chunks[0])
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    if parallel.overlap_grad_reduce:
        no_sync = [c.no_sync for c in chunks]
        config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
        grad_sync = [c.start_grad_sync for c in chunks]
        config.grad_sync_func = grad_sync[0] if len(grad_sync) == 1 else grad_sync
    if parallel.overlap_param_gather:
        param_sync = [c.start_param_sync for c in chunks]
        config.param_sync_func = param_sync[0] if len(param_sync) == 1 else param_sync


def _move(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    dev = platform.device()
    return {k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def packed_seq_params(batch: dict[str, torch.Tensor]) -> PackedSeqParams | None:
    """megatron's ``thd`` packing description for a batch that carries ``cu_seqlens`` (several
    sequences in one row, attention confined to each); None for an ordinary batch."""
    cu = batch.get("cu_seqlens")
    if cu is None:
        return None
    if cu.shape[0] != 1 or batch["tokens"].shape[0] != 1:
        raise ValueError("packed sequences need --micro-batch-size 1 (megatron's thd format)")
    cu = cu[0].to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest, max_seqlen_kv=longest
    )


def make_forward_step(
    loss_fn: LossFn, eval_loss_fn: LossFn | None = None, logits_at_targets_only: bool = False
) -> Callable:
    """megatron's forward_step_func: model output plus the loss closure.

    With ``eval_loss_fn``, evaluation (the model in eval mode) asks the model for its logits
    instead of its per-token loss and hands them to ``eval_loss_fn(loss_mask, labels, logits)``,
    which can report more than the loss (e.g. teacher-forced accuracy). With
    ``logits_at_targets_only``, training computes the output layer only where the loss mask is
    set (:func:`~megatron_pause.training.sparse_targets.loss_at_targets`).
    """
    from megatron_pause.training.sparse_targets import loss_at_targets

    def forward_step(data_iterator: Iterator[dict], model: torch.nn.Module):
        batch = _move(next(data_iterator))
        packed = packed_seq_params(batch)
        args = (batch["tokens"], batch["position_ids"], batch.get("attention_mask"))
        if eval_loss_fn is not None and not model.training:
            output = model(*args, packed_seq_params=packed)
            return output, partial(eval_loss_fn, batch["loss_mask"], batch["labels"])
        if logits_at_targets_only:
            output = model(
                *args, labels=batch["labels"], packed_seq_params=packed,
                loss_mask=batch["loss_mask"], output_processor=loss_at_targets,
            )  # fmt: skip
        else:
            output = model(*args, labels=batch["labels"], packed_seq_params=packed)
        return output, partial(loss_fn, batch["loss_mask"], batch["labels"])

    return forward_step


@dataclass
class StepResult:
    loss_sum: float  # sum of token losses over the global batch (all DP ranks)
    num_tokens: int  # unmasked target tokens over the global batch
    pause_targets: int  # targets that were <pause> (masked)
    targets: int  # all target positions
    grad_norm: float | None
    update_successful: bool
    correct: int = 0  # targets predicted right (argmax), where the loss reports it
    scored: int = 0  # targets whose correctness was reported (0: no accuracy)

    @property
    def lm_loss(self) -> float:
        return self.loss_sum / max(self.num_tokens, 1)


def _reduce_reports(reports: list[dict[str, torch.Tensor]]) -> tuple[float, int, int, int, int, int]:
    """Sum the per-microbatch reports, then over data-parallel ranks. Only the
    last pipeline stage has them; it broadcasts so every rank can log."""
    vec = torch.zeros(6, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True) and reports:
        no_accuracy = torch.zeros(2)
        for r in reports:
            parts = [r["lm loss"], r["pause targets"], r["targets"], r.get("accuracy", no_accuracy)]
            vec += torch.cat([p.detach().double().cpu().reshape(-1) for p in parts])
    dev = platform.device()
    vec = vec.to(dev)
    torch.distributed.all_reduce(vec, group=parallel_state.get_data_parallel_group())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        last = parallel_state.get_pipeline_model_parallel_last_rank()
        torch.distributed.broadcast(vec, src=last, group=parallel_state.get_pipeline_model_parallel_group())
    loss_sum, *counts = vec.tolist()
    return (loss_sum, *(int(round(c)) for c in counts))


def forward_backward(
    chunks: list[torch.nn.Module],
    forward_step: Callable,
    microbatches: list[dict[str, torch.Tensor]],
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
) -> list[dict[str, torch.Tensor]]:
    num_microbatches = len(microbatches)
    if len(chunks) > 1:  # interleaved schedule: one iterator per virtual stage
        data_iterator = [iter(microbatches) for _ in chunks]
    else:
        data_iterator = iter(microbatches)
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data_iterator,
        model=chunks if len(chunks) > 1 else chunks[0],
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


class NonFiniteLoss(FloatingPointError):
    pass


def train_step(
    chunks: list[DistributedDataParallel],
    optimizer,
    forward_step: Callable,
    microbatches: list[dict[str, torch.Tensor]],
    seq_length: int,
    micro_batch_size: int,
    skip_nonfinite: bool = False,
) -> StepResult:
    """Forward/backward over this rank's microbatches of one global batch, then the optimizer step.

    The loss is reduced *before* the update, so a NaN/Inf loss either stops
    the run (``NonFiniteLoss``, parameters untouched) or skips the update.
    """
    for c in chunks:
        c.zero_grad_buffer()
    optimizer.zero_grad()
    reports = forward_backward(chunks, forward_step, microbatches, seq_length, micro_batch_size)
    loss_sum, tokens, pauses, targets, _, _ = _reduce_reports(reports)
    if not math.isfinite(loss_sum):
        if not skip_nonfinite:
            raise NonFiniteLoss(
                f"the training loss is {loss_sum} (non-finite); stopping before the update. "
                "Lower --lr, check the data, or pass --skip-nonfinite-steps to skip such steps."
            )
        return StepResult(loss_sum, tokens, pauses, targets, None, False)
    update_successful, grad_norm, _ = optimizer.step()
    return StepResult(loss_sum, tokens, pauses, targets, grad_norm, bool(update_successful))


@torch.no_grad()
def eval_step(
    chunks: list[torch.nn.Module],
    forward_step: Callable,
    microbatches: list[dict],
    seq_length: int,
    micro_batch_size: int,
) -> StepResult:
    for c in chunks:
        c.eval()
    try:
        reports = forward_backward(
            chunks, forward_step, microbatches, seq_length, micro_batch_size, forward_only=True
        )
    finally:
        for c in chunks:
            c.train()
    loss_sum, tokens, pauses, targets, correct, scored = _reduce_reports(reports)
    return StepResult(loss_sum, tokens, pauses, targets, None, True, correct, scored)
