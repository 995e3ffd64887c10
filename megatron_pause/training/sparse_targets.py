"""Cheap training when few positions are targets (finetuning: the answer and its eod).

A finetuning example of prompt + M pauses + a short answer has a loss at two or three of its
positions, and a batch padded to ``--seq-length`` ends in columns that no loss reaches. Two
savings follow, neither of which changes what is learned:

- **Trailing columns.** In a causal model no position sees a later one, so columns after the
  last target of the global batch change nothing: :func:`trim_trailing_columns` drops them. All
  ranks agree on the length (one all-reduce), so pipeline stages exchange equal shapes.
- **Logits at targets only.** The output layer and the cross-entropy over the vocabulary cost as
  much as a transformer layer at small widths; a loss needs them only where the loss mask is
  set. :func:`loss_at_targets` is megatron-core's ``output_processor`` hook (``GPTModel``'s
  post-process): it gathers those hidden states, runs the output layer and megatron's loss on
  them, and scatters the per-token losses back into the ``[b, s]`` tensor the loss function
  expects (zeros elsewhere, where the mask is zero anyway).

Numerics: the same per-token losses and gradients up to float summation order. Packed batches
(``cu_seqlens``) are already dense and are left alone; under sequence parallelism the hidden
states are split along the sequence, so the hook falls back to the full output layer.
"""

from __future__ import annotations

import torch


def trim_multiple(parallel) -> int:
    """What a trimmed length must stay divisible by: sequence parallelism splits the sequence
    over the tensor-parallel ranks (``parallel``: a :class:`~megatron_pause.config.ParallelConfig`)."""
    return parallel.tensor_model_parallel_size if parallel.sequence_parallel else 1


def trim_trailing_columns(microbatches: list[dict], multiple: int = 1) -> int:
    """Cut every microbatch after the global batch's last target column (in place); return the
    new sequence length. ``multiple``: keep the length divisible by it (sequence parallelism)."""
    full = microbatches[0]["tokens"].shape[1]
    if any("cu_seqlens" in mb for mb in microbatches):
        return full
    last = 0
    for mb in microbatches:
        cols = torch.nonzero(mb["loss_mask"].any(dim=0))
        if cols.numel():
            last = max(last, int(cols[-1]) + 1)
    length = torch.tensor([max(last, 1)], dtype=torch.long)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        from megatron_pause import platform

        length = length.to(platform.device())
        torch.distributed.all_reduce(length, op=torch.distributed.ReduceOp.MAX)
    length = min(full, -(-int(length.item()) // multiple) * multiple)
    if length < full:
        for mb in microbatches:
            for key, value in mb.items():
                if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == full:
                    mb[key] = value[:, :length]
    return length


def loss_at_targets(
    *,
    hidden_states: torch.Tensor,
    output_layer,
    output_weight,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    runtime_gather_output,
    compute_language_model_loss,
    scale_logits,
    **_,
) -> torch.Tensor:
    """megatron-core ``output_processor``: per-token losses ``[b, s]``, computed only where
    ``loss_mask`` is set (hidden states ``[s, b, h]``)."""
    if output_layer.sequence_parallel:
        logits, _ = output_layer(
            hidden_states, weight=output_weight, runtime_gather_output=runtime_gather_output
        )
        return compute_language_model_loss(labels, scale_logits(logits))
    seq_idx, batch_idx = torch.nonzero(loss_mask.transpose(0, 1) != 0, as_tuple=True)
    if seq_idx.numel() == 0:  # no target here: one position keeps the graph whole, masked later
        seq_idx = batch_idx = torch.zeros(1, dtype=torch.long, device=hidden_states.device)
    picked = hidden_states[seq_idx, batch_idx].unsqueeze(1)  # [n, 1, h]
    logits, _ = output_layer(picked, weight=output_weight, runtime_gather_output=runtime_gather_output)
    losses = compute_language_model_loss(labels[batch_idx, seq_idx].unsqueeze(0), scale_logits(logits))
    out = torch.zeros(labels.shape, dtype=losses.dtype, device=losses.device)
    return out.index_put((batch_idx, seq_idx), losses.reshape(-1))
