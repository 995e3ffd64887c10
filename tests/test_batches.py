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


def test_trim_trailing_columns_cuts_after_the_last_target_of_the_global_batch():
    from megatron_pause.training.sparse_targets import trim_trailing_columns

    def mb(last_targets):
        mask = torch.zeros(len(last_targets), 12)
        for row, last in enumerate(last_targets):
            if last is not None:
                mask[row, last] = 1
        return {"tokens": torch.arange(12).repeat(len(last_targets), 1), "labels": torch.zeros(len(last_targets), 12),
                "loss_mask": mask, "position_ids": torch.arange(12).repeat(len(last_targets), 1)}  # fmt: skip

    batch = [mb([2, None]), mb([6, 3])]
    assert trim_trailing_columns(batch) == 7  # column 6 is the last target anywhere
    assert all(v.shape[1] == 7 for m in batch for v in m.values())
    assert batch[0]["tokens"][0].tolist() == list(range(7))
    batch = [mb([6])]
    assert trim_trailing_columns(batch, multiple=4) == 8  # sequence parallelism: divisible by TP
    batch = [mb([11])]
    assert trim_trailing_columns(batch, multiple=5) == 12  # never longer than the batch
    batch = [mb([None])]
    assert trim_trailing_columns(batch) == 1  # no target at all: one column stays
    packed = [{**mb([3]), "cu_seqlens": torch.tensor([[0, 12]])}]
    assert trim_trailing_columns(packed) == 12 and packed[0]["tokens"].shape[1] == 12
