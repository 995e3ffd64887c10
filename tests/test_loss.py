"""PauseMaskedLoss on its own: what it sums, what it counts, what it reports.

Its contract with megatron's schedules (``calculate_per_token_loss=True``):
return the *sum* of the kept token losses and the number of kept tokens, so
the schedule can form sum/count over the whole global batch. How that
reduction behaves across microbatches and ranks is tested end to end in
tests/test_parity.py; here we pin down the per-microbatch arithmetic.
"""

from __future__ import annotations

import pytest
import torch

from megatron_pause.loss import PauseMaskedLoss

PAUSE = 7


def _case():
    labels = torch.tensor([[1, PAUSE, 3, PAUSE], [PAUSE, 2, 2, 5]])
    per_token = torch.tensor([[0.5, 9.0, 1.5, 9.0], [9.0, 2.0, 3.0, 4.0]])
    return labels, per_token


def test_pause_targets_add_nothing_to_sum_or_count():
    labels, per_token = _case()
    loss_sum, count, report = PauseMaskedLoss(PAUSE)(torch.ones(2, 4), labels, per_token)
    assert loss_sum.item() == pytest.approx(0.5 + 1.5 + 2.0 + 3.0 + 4.0)
    assert count.item() == 5
    assert report["pause targets"].tolist() == [3.0]
    assert report["targets"].tolist() == [8.0]
    assert report["lm loss"].tolist() == pytest.approx([11.0, 5.0])


def test_pause_mask_combines_with_the_loss_mask():
    labels, per_token = _case()
    loss_mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    loss_sum, count, _ = PauseMaskedLoss(PAUSE)(loss_mask, labels, per_token)
    assert loss_sum.item() == pytest.approx(0.5 + 2.0 + 3.0)
    assert count.item() == 3


def test_without_a_pause_id_only_the_loss_mask_applies():
    labels, per_token = _case()
    loss_mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    loss_sum, count, report = PauseMaskedLoss(None)(loss_mask, labels, per_token)
    assert loss_sum.item() == pytest.approx(per_token.sum().item() - 1.5)
    assert count.item() == 7
    assert report["pause targets"].tolist() == [0.0]


def test_count_is_an_integer_tensor_and_sum_is_float32_for_bf16_losses():
    """megatron's schedule divides by / all-reduces the count; the sum must
    not lose precision when the model runs in bf16."""
    labels, per_token = _case()
    loss_sum, count, _ = PauseMaskedLoss(PAUSE)(torch.ones(2, 4), labels, per_token.to(torch.bfloat16))
    assert count.dtype == torch.int32 and count.dim() == 0
    assert loss_sum.dtype == torch.float32 and loss_sum.dim() == 0


def test_gradient_flows_only_to_kept_positions():
    labels, per_token = _case()
    per_token = per_token.clone().requires_grad_(True)
    loss_sum, _, _ = PauseMaskedLoss(PAUSE)(torch.ones(2, 4), labels, per_token)
    loss_sum.backward()
    assert per_token.grad.tolist() == [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]]


def test_report_is_detached():
    labels, per_token = _case()
    per_token = per_token.clone().requires_grad_(True)
    _, _, report = PauseMaskedLoss(PAUSE)(torch.ones(2, 4), labels, per_token)
    assert not report["lm loss"].requires_grad


def test_global_batch_loss_is_sum_over_count_not_mean_of_means():
    """Summing the (sum, count) pairs the loss returns gives the token-weighted
    mean; the per-microbatch means would weight a pause-heavy microbatch as
    much as a full one."""
    loss = PauseMaskedLoss(PAUSE)
    full = loss(torch.ones(1, 4), torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1.0, 1.0, 1.0, 1.0]]))
    paused = loss(
        torch.ones(1, 4), torch.tensor([[PAUSE, PAUSE, PAUSE, 4]]), torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    )
    total = full[2]["lm loss"] + paused[2]["lm loss"]
    assert (total[0] / total[1]).item() == pytest.approx((4 * 1.0 + 5.0) / 5)
    mean_of_means = (full[0] / full[1] + paused[0] / paused[1]).item() / 2
    assert mean_of_means == pytest.approx(3.0)


def test_a_microbatch_of_only_pauses_contributes_zero():
    labels = torch.full((2, 3), PAUSE)
    loss_sum, count, _ = PauseMaskedLoss(PAUSE)(torch.ones(2, 3), labels, torch.rand(2, 3))
    assert loss_sum.item() == 0.0 and count.item() == 0
