"""The ``<pause>`` row under tensor parallelism.

Megatron shards the (padded) vocabulary of the input embedding and of the
output layer over TP ranks in contiguous id ranges, so the pause id can land
on any rank: the last one, or right at a shard boundary (the last id of rank
0, the first id of rank 1). For each placement, in real TP worlds: the row
exists in both tables on the rank that owns it, ``init_pause_rows("mean")``
writes the mean of the real rows of the *full* (gathered) table, a pause
input receives gradient, and a pause target changes neither the loss nor the
token count. Finally, a checkpoint trained without pauses gets exactly one
row re-initialised per table when pause training starts from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import parity_worlds as pw
import pytest
import torch

from megatron_pause.testing import run_distributed
from megatron_pause.tokenizer import padded_vocab_size


def _multiple_at_least(n: int, multiple: int) -> int:
    m = multiple
    while m < n:
        m += multiple
    return m


@pytest.mark.parametrize("vocab", [1, 100, 127, 128, 129, 32000, 32001, 50257])
@pytest.mark.parametrize("divisible_by", [1, 64, 128])
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_padded_vocab_size(vocab, divisible_by, tp):
    padded = padded_vocab_size(vocab, divisible_by, tp)
    assert padded == _multiple_at_least(vocab, divisible_by * tp)
    assert padded % tp == 0 and padded >= vocab


def test_padded_vocab_size_leaves_room_for_an_appended_pause():
    # A 32000-piece tokenizer plus <pause> needs one more row than fits in 32000.
    assert padded_vocab_size(32000 + 1, 128, 1) == 32128
    assert padded_vocab_size(32000 + 1, 128, 8) == 32768  # 32 x 1024
    assert padded_vocab_size(32768 + 1, 128, 8) == 33792


@pytest.mark.parametrize("bad", [(0, 128, 1), (-5, 128, 1), (100, 0, 1), (100, 128, 0)])
def test_padded_vocab_size_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        padded_vocab_size(*bad)


@dataclass(frozen=True)
class Placement:
    name: str
    tp: int
    base_vocab: int  # real tokens are 0 .. base_vocab - 1
    pause_id: int  # == base_vocab: appended; < base_vocab: an existing <pause> piece
    divisible_by: int
    owner: int  # the TP rank expected to hold the pause row

    @property
    def padded(self) -> int:
        return padded_vocab_size(max(self.base_vocab, self.pause_id + 1), self.divisible_by, self.tp)


PLACEMENTS = [
    Placement("tp2-rank0-inside", 2, base_vocab=20, pause_id=20, divisible_by=32, owner=0),
    Placement("tp2-last-id-of-rank0", 2, base_vocab=31, pause_id=31, divisible_by=32, owner=0),
    Placement("tp2-first-id-of-rank1", 2, base_vocab=32, pause_id=32, divisible_by=32, owner=1),
    Placement(
        "tp2-last-rank-last-row-existing-piece", 2, base_vocab=64, pause_id=63, divisible_by=32, owner=1
    ),
    Placement("tp4-first-id-of-last-rank", 4, base_vocab=48, pause_id=48, divisible_by=16, owner=3),
]


def _gather_full(weight: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    parts = [torch.empty_like(weight) for _ in range(ps.get_tensor_model_parallel_world_size())]
    torch.distributed.all_gather(
        parts, weight.detach().contiguous(), group=ps.get_tensor_model_parallel_group()
    )
    return torch.cat(parts).float()


def _batch(p: Placement, seed: int) -> list[dict[str, torch.Tensor]]:
    """Two microbatches with <pause> both as inputs and as targets. Token
    ``p.base_vocab - 1`` (or -2 if that is the pause) never occurs."""
    unused = p.base_vocab - 1 if p.base_vocab - 1 != p.pause_id else p.base_vocab - 2
    g = torch.Generator().manual_seed(seed)
    mbs = []
    for _ in range(2):
        seq = torch.randint(0, unused, (pw.MICRO_BATCH, pw.SEQ + 1), generator=g)
        seq[seq == p.pause_id] = 0
        seq[:, 3::4] = p.pause_id
        mbs.append(
            dict(
                tokens=seq[:, :-1].contiguous(), labels=seq[:, 1:].contiguous(),
                loss_mask=torch.ones(pw.MICRO_BATCH, pw.SEQ),
                position_ids=torch.arange(pw.SEQ).expand(pw.MICRO_BATCH, pw.SEQ).contiguous(),
            )
        )  # fmt: skip
    return mbs, unused


def _placement_body(rank: int, world: int, p: Placement) -> dict:
    from megatron.core import parallel_state as ps

    from megatron_pause.distributed import destroy_distributed
    from megatron_pause.loss import PauseMaskedLoss
    from megatron_pause.models.pause_vocab import (
        gather_pause_rows,
        init_pause_rows,
        pause_weight_tables,
        vocab_shard,
    )
    from megatron_pause.training.step import eval_step, forward_backward, make_forward_step

    model = pw.tiny_model(num_layers=2)
    _, chunks, _ = pw.build(pw.Layout(p.name, world, tp=p.tp), model=model, padded_vocab=p.padded)
    gpt = pw.unwrap(chunks[0])
    tp_rank = ps.get_tensor_model_parallel_rank()
    emb = gpt.embedding.word_embeddings
    shard = vocab_shard(p.padded, tp_rank, p.tp)
    out: dict = dict(
        tp_rank=tp_rank, shard=(shard.start, shard.end), megatron_shard=(emb.vocab_start_index, emb.vocab_end_index),
        owns=shard.owns(p.pause_id), rows=[tuple(w.shape) for w in pause_weight_tables(chunks)],
    )  # fmt: skip

    out["written"] = init_pause_rows(chunks, p.pause_id, p.base_vocab, "mean")
    real = [i for i in range(p.base_vocab) if i != p.pause_id]
    for label, weight in (("embedding", emb.weight), ("output", gpt.output_layer.weight)):
        full = _gather_full(weight)
        out[f"{label}_mean_err"] = float((full[p.pause_id] - full[real].mean(0)).abs().max())
        out[f"{label}_row_norm"] = float(full[p.pause_id].norm())
    gathered = gather_pause_rows(chunks, p.pause_id)
    out["gather_err"] = max(
        float((gathered[0] - _gather_full(emb.weight)[p.pause_id]).abs().max()),
        float((gathered[1] - _gather_full(gpt.output_layer.weight)[p.pause_id]).abs().max()),
    )

    mbs, unused = _batch(p, seed=5)
    # Gradient of a batch with <pause> inputs, on the row that owns it.
    chunks[0].zero_grad_buffer()
    forward_backward(chunks, make_forward_step(PauseMaskedLoss(p.pause_id)), mbs, pw.SEQ, pw.MICRO_BATCH)
    grad = emb.weight.main_grad
    if shard.owns(p.pause_id):
        out["pause_row_grad"] = float(grad[p.pause_id - shard.start].norm())
    if shard.owns(unused):
        out["unused_row_grad"] = float(grad[unused - shard.start].norm())
    grad_pause_masked = grad.clone()

    # The same batch with the pause targets masked explicitly by loss_mask,
    # and a loss that knows nothing about pauses.
    explicit = [dict(mb, loss_mask=mb["loss_mask"] * (mb["labels"] != p.pause_id)) for mb in mbs]
    chunks[0].zero_grad_buffer()
    forward_backward(chunks, make_forward_step(PauseMaskedLoss(None)), explicit, pw.SEQ, pw.MICRO_BATCH)
    out["grad_diff_vs_explicit"] = float((grad_pause_masked - emb.weight.main_grad).abs().max())

    fs_pause, fs_plain = (
        make_forward_step(PauseMaskedLoss(p.pause_id)),
        make_forward_step(PauseMaskedLoss(None)),
    )
    for key, fs, batch in (
        ("pause", fs_pause, mbs),
        ("explicit", fs_plain, explicit),
        ("unmasked", fs_plain, mbs),
    ):
        r = eval_step(chunks, fs, batch, pw.SEQ, pw.MICRO_BATCH)
        out[key] = (r.loss_sum, r.num_tokens, r.pause_targets)
    out["n_pause_targets"] = int(sum((mb["labels"] == p.pause_id).sum() for mb in mbs))
    out["n_pause_inputs"] = int(sum((mb["tokens"] == p.pause_id).sum() for mb in mbs))
    destroy_distributed()
    return out


@pytest.mark.parametrize("p", PLACEMENTS, ids=lambda p: p.name)
def test_pause_row_under_tensor_parallelism(p):
    results = run_distributed(_placement_body, p.tp, p)
    # Shards as megatron cuts them, and exactly one owner.
    assert [r["shard"] for r in results] == [r["megatron_shard"] for r in results]
    assert [r["owns"] for r in results] == [rank == p.owner for rank in range(p.tp)]
    for r in results:
        # Both tables (untied embedding and output layer) on every rank.
        assert r["rows"] == [(p.padded // p.tp, 32), (p.padded // p.tp, 32)]
        assert r["written"] == (2 if r["owns"] else 0)
    r0 = results[0]
    # The row is the mean of the real rows of the full table, in both tables.
    for label in ("embedding", "output"):
        assert r0[f"{label}_row_norm"] > 0
        assert r0[f"{label}_mean_err"] < 1e-7
    assert r0["gather_err"] == 0.0
    owner = results[p.owner]
    assert r0["n_pause_inputs"] > 0
    assert owner["pause_row_grad"] > 0, "no gradient reached the pause embedding row"
    unused_owner = [r for r in results if "unused_row_grad" in r]
    assert len(unused_owner) == 1 and unused_owner[0]["unused_row_grad"] == 0.0
    # A pause target adds nothing to the loss or the count: identical to
    # masking those positions explicitly (values and gradients) ...
    for r in results:
        assert r["pause"][:2] == r["explicit"][:2]  # (loss sum, token count)
        assert r["grad_diff_vs_explicit"] == 0.0
    loss_sum, tokens, pauses = r0["pause"]
    assert pauses == r0["n_pause_targets"] > 0
    assert tokens == 2 * pw.MICRO_BATCH * pw.SEQ - pauses
    # ... while counting them would have changed both.
    unmasked_sum, unmasked_tokens, _ = r0["unmasked"]
    assert unmasked_tokens == tokens + pauses
    assert unmasked_sum > loss_sum


def _reinit_body(rank: int, world: int, ckpt: str) -> dict:
    from megatron_pause.distributed import destroy_distributed
    from megatron_pause.models.pause_vocab import init_pause_rows
    from megatron_pause.training.checkpoint import load_checkpoint

    _, chunks, _ = pw.build(pw.Layout("TP2", 2, tp=2))
    load_checkpoint(ckpt, chunks, load_rng=False)
    gpt = pw.unwrap(chunks[0])
    tables = (gpt.embedding.word_embeddings.weight, gpt.output_layer.weight)
    before = [_gather_full(w) for w in tables]
    init_pause_rows(chunks, pw.PAUSE_ID, pw.BASE_VOCAB, "mean")
    after = [_gather_full(w) for w in tables]
    destroy_distributed()
    return dict(before=before, after=after)


def test_pause_row_of_a_pause_free_checkpoint_is_reinitialised(reference_checkpoint):
    """Standard-pretrained -> pause-finetuned: load a TP1 checkpoint at TP2,
    initialise the pause rows; only row PAUSE_ID of each table changes."""
    r = run_distributed(_reinit_body, 2, reference_checkpoint)[0]
    for before, after in zip(r["before"], r["after"]):
        changed = (before != after).any(dim=1).nonzero().flatten().tolist()
        assert changed == [pw.PAUSE_ID]
        torch.testing.assert_close(after[pw.PAUSE_ID], before[: pw.BASE_VOCAB].mean(0), rtol=0, atol=1e-7)
