"""MicrobatchLoader: which samples each data-parallel rank gets, with and without workers."""

from __future__ import annotations

import pytest
import torch

from megatron_pause.training.batches import MicrobatchLoader


class _IndexDataset(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"tokens": torch.full((4,), i), "loss_mask": torch.ones(4), "attention_mask": None}


def _samples(loader: MicrobatchLoader, steps: int) -> list[list[int]]:
    return [[int(t) for mb in loader.next_global_batch() for t in mb["tokens"][:, 0]] for _ in range(steps)]


def test_global_batch_is_split_across_dp_ranks_exactly():
    ds = _IndexDataset(1000)
    per_rank = [_samples(MicrobatchLoader(ds, 2, 12, r, 3), 3) for r in range(3)]
    for step in range(3):
        union = sorted(s for rank in per_rank for s in rank[step])
        assert union == list(range(12 * step, 12 * (step + 1)))


def test_resume_position_and_wraparound():
    ds = _IndexDataset(10)
    loader = MicrobatchLoader(ds, 2, 4, 0, 1, consumed_samples=8)
    assert _samples(loader, 1) == [[8, 9, 0, 1]]
    assert loader.consumed_samples == 12


def test_workers_give_the_same_batches_in_the_same_order():
    ds = _IndexDataset(500)
    inline = _samples(MicrobatchLoader(ds, 4, 16, 1, 2, consumed_samples=32), 5)
    workers = _samples(MicrobatchLoader(ds, 4, 16, 1, 2, consumed_samples=32, num_workers=2), 5)
    assert workers == inline


def test_indivisible_global_batch_is_rejected():
    with pytest.raises(ValueError, match="--global-batch-size 10"):
        MicrobatchLoader(_IndexDataset(10), 4, 10, 0, 1)
