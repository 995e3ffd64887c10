"""Pause-masked language-model loss over the whole global batch.

A position whose *target* is ``<pause>`` adds nothing to the loss or to the
token count; a position whose *input* is a pause still predicts the next real
token. The step loss is (sum of unmasked token losses) / (number of unmasked
tokens) over the global batch -- not a mean of per-microbatch means, which
would over-weight microbatches with many pauses. megatron-core implements that
reduction when ``calculate_per_token_loss`` is set: each microbatch returns its
*sum* and its token count, the schedule adds them up, and
``finalize_model_grads`` all-reduces the count over data-parallel ranks and
scales the gradients by its inverse. Under tensor parallelism the per-token
losses come from megatron's vocab-parallel cross-entropy; under pipeline
parallelism this runs on the last stage only.
"""

from __future__ import annotations

import torch

from megatron_pause.pause import pause_loss_mask


class PauseMaskedLoss:
    """Loss function for megatron's schedules: ``loss_fn(loss_mask, labels, per_token_loss)``."""

    def __init__(self, pause_id: int | None) -> None:
        self.pause_id = pause_id

    def __call__(
        self, loss_mask: torch.Tensor, labels: torch.Tensor, per_token_loss: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        mask = (
            loss_mask.float() if self.pause_id is None else pause_loss_mask(labels, self.pause_id, loss_mask)
        )
        mask = mask.reshape(-1)
        losses = per_token_loss.float().reshape(-1)
        loss_sum = torch.sum(losses * mask)
        num_tokens = mask.sum().to(torch.int)
        pause_targets = (
            (labels == self.pause_id).sum()
            if self.pause_id is not None
            else torch.zeros((), dtype=torch.long)
        )
        report = {
            # [loss sum, token count]: summed over microbatches and DP ranks,
            # their ratio is the global-batch loss.
            "lm loss": torch.stack([loss_sum.detach(), num_tokens.float()]),
            "pause targets": pause_targets.float().reshape(1),
            "targets": torch.tensor([float(labels.numel())], device=labels.device),
        }
        return loss_sum, num_tokens, report


class PauseMaskedLossWithAccuracy(PauseMaskedLoss):
    """The same loss computed from the model's (vocab-parallel) logits, plus teacher-forced accuracy.

    For evaluation: ``loss_fn(loss_mask, labels, logits)`` with logits ``[b, s, vocab / TP]``.
    A target counts as correct when its logit is the row's maximum over the whole vocabulary
    (max and target logit are reduced over the tensor-parallel group, so every TP size agrees).
    The report adds ``"accuracy": [correct, scored]`` over the unmasked targets.
    """

    def __call__(
        self, loss_mask: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        from megatron.core import parallel_state, tensor_parallel

        logits = logits.float()
        per_token_loss = tensor_parallel.vocab_parallel_cross_entropy(logits.clone(), labels)
        loss_sum, num_tokens, report = super().__call__(loss_mask, labels, per_token_loss)

        group = parallel_state.get_tensor_model_parallel_group()
        shard = logits.shape[-1]
        start = parallel_state.get_tensor_model_parallel_rank() * shard
        row_max = logits.max(dim=-1).values
        torch.distributed.all_reduce(row_max, op=torch.distributed.ReduceOp.MAX, group=group)
        local = (labels >= start) & (labels < start + shard)
        index = (labels - start).clamp(0, shard - 1).unsqueeze(-1)
        target_logit = torch.where(local, logits.gather(-1, index).squeeze(-1), torch.zeros_like(row_max))
        torch.distributed.all_reduce(target_logit, group=group)
        mask = (
            loss_mask.float() if self.pause_id is None else pause_loss_mask(labels, self.pause_id, loss_mask)
        )
        correct = ((target_logit >= row_max).float() * mask).sum()
        report["accuracy"] = torch.stack([correct.detach(), mask.sum().detach()])
        return loss_sum, num_tokens, report
