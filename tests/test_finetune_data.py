"""Finetuning samples: answer-only targets, truncation, rejects, epoch order, packing.

Also the model-level guarantee behind ``--pack-sequences``: a packed row (megatron's ``thd``
format through :class:`~megatron_pause.models.attention.SDPAttention`) gives every example the
per-token losses it gets alone in a padded row, to 1e-5 in fp32.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from megatron_pause.data.sft import (
    TRUNCATED,
    Example,
    FinetuneDataset,
    RejectLog,
    example_arrays,
    pack_first_fit,
    read_examples,
    tokenize_examples,
)
from megatron_pause.testing import run_distributed

PAUSE, EOD, PAD = 5, 2, 3


class CharTokenizer:
    """One id per character (ids 10..), optional BOS=1: enough to test fitting exactly."""

    eod, pad, bos, pause_id = EOD, PAD, 1, PAUSE

    def __init__(self, add_bos: bool = False) -> None:
        self.add_bos = add_bos

    def tokenize_batch_arrays(self, texts, num_threads=1, add_bos=None):
        bos = self.add_bos if add_bos is None else add_bos
        return [
            np.array(([1] if bos else []) + [10 + (ord(c) % 90) for c in t], dtype=np.int32) for t in texts
        ]


@pytest.mark.parametrize("position", ["append", "prepend"])
def test_only_answer_and_eod_are_targets(position):
    ex = Example(prompt=np.array([11, 12, 13, 14]), answer=np.array([21, 22, 23]))
    tokens, labels, mask = example_arrays(ex, 3, PAUSE, EOD, position)
    assert len(tokens) == len(labels) == len(mask) == ex.length(3) == 4 + 3 + 3
    assert mask.sum() == len(ex.answer) + 1
    assert labels[mask == 1].tolist() == [21, 22, 23, EOD]
    # The position before the answer (the last pause, or the prompt's end when prepended) predicts answer[0].
    first = int(np.argmax(mask))
    assert tokens[first] == (PAUSE if position == "append" else 14)
    # No prompt token and no pause is ever a target.
    assert not set(labels[mask == 1].tolist()) & {11, 12, 13, 14, PAUSE}
    assert (tokens == PAUSE).sum() == 3
    if position == "prepend":
        assert tokens[:3].tolist() == [PAUSE] * 3
    # M = 0: the last prompt token predicts answer[0].
    tokens0, _, mask0 = example_arrays(ex, 0, PAUSE, EOD, position)
    assert tokens0[int(np.argmax(mask0))] == 14


def test_long_prompts_lose_their_start_and_oversized_answers_are_rejected():
    rejects = RejectLog()
    texts = [("abcdefghij", "xyz"), ("ab", "xy"), ("abc", "x" * 9), ("abc", "x" * 8)]
    out = tokenize_examples(CharTokenizer(add_bos=True), texts, 2, 12, rejects)
    # seq 12: room for the prompt = 12 - 2 pauses - answer; one prompt token (+ BOS) at least.
    first, second, fourth = out
    assert first.prompt.tolist() == [1] + [10 + ord(c) % 90 for c in "cdefghij"][-(12 - 2 - 3 - 1) :]
    assert len(first.prompt) + 2 + len(first.answer) == 12
    assert first.answer.tolist() == [10 + ord("x") % 90, 10 + ord("y") % 90, 10 + ord("z") % 90]
    assert second.prompt.tolist()[0] == 1 and len(second.prompt) == 3
    assert len(fourth.answer) == 8 and len(fourth.prompt) == 2  # BOS + the last prompt character
    assert rejects.counts == {TRUNCATED: 2, "too_long": 1}
    assert rejects.rejected == 1


def test_bad_lines_are_skipped_counted_and_listed(tmp_path):
    path = tmp_path / "mixed.jsonl.gz"
    lines = [
        b'{"prompt": "p1", "answer": "a1"}',
        b'{"prompt": "p2", "answer": ',  # malformed
        b'{"prompt": "p3"}',  # missing key
        b'{"prompt": 3, "answer": "a4"}',  # not a string
        b'{"prompt": "p5", "answer": "\xff"}',  # bad utf-8
        b'{"prompt": "p6", "answer": "  "}',  # empty answer
        b"[1, 2]",  # not an object
        b"",  # blank: not an example
        b'{"prompt": "p9", "answer": "a9", "extra": 1}',
    ]
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    rejects = RejectLog()
    examples = read_examples([str(path)], "prompt", "answer", rejects)
    assert examples == [("p1", "a1"), ("p9", "a9")]
    assert rejects.counts == {
        "malformed_json": 1, "missing_key": 1, "not_a_string": 1, "invalid_utf8": 1,
        "empty_answer": 1, "not_an_object": 1,
    }  # fmt: skip
    out = tmp_path / "rejects.jsonl"
    rejects.write(str(out))
    listed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["line"] for e in listed] == [2, 3, 4, 5, 6, 7]
    assert not list(tmp_path.glob("*.tmp.*"))


def _examples(n: int, seed: int = 0, max_prompt: int = 20, max_answer: int = 6) -> list[Example]:
    rng = np.random.default_rng(seed)
    return [
        Example(
            rng.integers(10, 100, rng.integers(1, max_prompt + 1)),
            rng.integers(10, 100, rng.integers(1, max_answer + 1)),
        )
        for _ in range(n)
    ]


def _dataset(examples, **kw):
    args = dict(seq_length=32, num_pauses=2, pause_id=PAUSE, eod=EOD, pad=PAD, seed=7)
    args.update(kw)
    return FinetuneDataset([(None, examples)], **args)


@pytest.mark.parametrize("pack", [False, True])
def test_epochs_reshuffle_deterministically_and_cover_every_example(pack):
    examples = _examples(40)
    a, b = _dataset(examples, pack=pack), _dataset(examples, pack=pack)
    for epoch in range(3):
        plan = a.epoch_plan(epoch)
        assert plan == b.epoch_plan(epoch)  # a function of (seed, epoch) only
        assert sorted(i for s in plan for i in s) == list(range(40))  # each example once per epoch
    assert a.epoch_plan(0) != a.epoch_plan(1)
    assert _dataset(examples, pack=pack, seed=8).epoch_plan(0) != a.epoch_plan(0)
    # Sample i of the run, found fresh (as after a resume), is the same sample.
    n0 = a.samples_per_epoch(0)
    for i in (0, n0 - 1, n0, n0 + 3):
        fresh = _dataset(examples, pack=pack)
        assert fresh.members(i) == a.members(i)
        for key, value in fresh[i].items():
            assert torch.equal(value, a[i][key])


def test_weighted_sources_take_their_share_per_epoch():
    small, large = _examples(10, seed=1), _examples(30, seed=2)
    ds = FinetuneDataset(
        [(3.0, small), (1.0, large)], seq_length=32, num_pauses=0, pause_id=PAUSE, eod=EOD, pad=PAD, seed=1
    )
    plan = ds.epoch_plan(0)
    from_small = sum(1 for s in plan for i in s if i < 10)
    assert len(plan) == 40 and from_small == 30  # 3/4 of 40, cycling the small file three times
    assert sorted({i for s in plan for i in s if i < 10}) == list(range(10))


def test_packing_fills_sequences_and_marks_each_example():
    lengths = [int(x) for x in np.random.default_rng(0).integers(150, 421, 500)]
    bins = pack_first_fit(list(range(500)), lengths, 1024)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    assert sum(lengths) / (1024 * len(bins)) > 0.9
    ds = _dataset(_examples(20), pack=True)
    sample = ds[0]
    members = ds.members(0)
    assert len(members) > 1
    cu = sample["cu_seqlens"].tolist()
    ends = np.cumsum([ds.lengths[i] for i in members]).tolist()
    assert cu[1 : len(members) + 1] == ends and cu[-1] == 32
    for start in cu[:-1]:
        assert sample["position_ids"][start] == 0  # positions restart per example
    assert sample["loss_mask"].sum() == sum(len(ds.examples[i].answer) + 1 for i in members)


def test_validation_set_is_read_once_then_padded_with_empty_samples():
    examples = _examples(10)
    ds = _dataset(examples, shuffle=False, num_samples=12)
    assert [ds.members(i) for i in range(10)] == [[i] for i in range(10)]
    assert ds.members(10) == ds.members(11) == []
    assert ds[11]["loss_mask"].sum() == 0


# ------------------------------------------------------------------ packed == padded in the model


def _packed_vs_padded(rank: int, world: int, position_embedding: str) -> float:
    from megatron.core import tensor_parallel

    from megatron_pause.config import ModelConfig, ParallelConfig
    from megatron_pause.distributed import destroy_distributed, init_distributed
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.training.batches import collate
    from megatron_pause.training.step import packed_seq_params

    model_cfg = ModelConfig(
        num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, seq_length=64,
        position_embedding_type=position_embedding,
    )  # fmt: skip
    par = ParallelConfig()
    init_distributed(par, model_cfg.num_layers, seed=3)
    tensor_parallel.model_parallel_cuda_manual_seed(3)
    (model,) = build_model_chunks(model_cfg, transformer_config(model_cfg, par), 128)
    model.eval()
    examples = _examples(12, seed=5, max_prompt=24, max_answer=8)
    common = dict(seq_length=64, num_pauses=3, pause_id=PAUSE, eod=EOD, pad=PAD, seed=1)
    packed = FinetuneDataset([(None, examples)], pack=True, **common)
    padded = FinetuneDataset([(None, examples)], pack=False, **common)
    worst = 0.0
    with torch.no_grad():
        for i in range(packed.samples_per_epoch(0)):
            batch = collate([packed[i]])
            loss = model(
                batch["tokens"], batch["position_ids"], None, labels=batch["labels"],
                packed_seq_params=packed_seq_params(batch),
            )[0]  # fmt: skip
            cu = batch["cu_seqlens"][0].tolist()
            for k, idx in enumerate(packed.members(i)):
                alone = collate([padded[padded.epoch_plan(0).index([idx])]])
                ref = model(alone["tokens"], alone["position_ids"], None, labels=alone["labels"])[0]
                n = cu[k + 1] - cu[k]
                mask = alone["loss_mask"][0, :n].bool()
                a, b = loss[cu[k] : cu[k + 1]][mask], ref[:n][mask]
                worst = max(worst, float(((a - b).abs() / b.abs()).max()))
    destroy_distributed()
    return worst


@pytest.mark.parametrize("position_embedding", ["rope", "learned_absolute"])
def test_packed_examples_have_their_padded_losses(position_embedding):
    (worst,) = run_distributed(_packed_vs_padded, 1, position_embedding)
    assert worst <= 1e-5


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("position", ["append", "prepend"])
def test_whole_batches_equal_collated_samples(pack, position):
    """The loader's fast path (``batch``) builds exactly what collating the samples one by one does,
    across an epoch boundary and in the validation set's padding samples."""
    from megatron_pause.training.batches import collate

    train = _dataset(_examples(40), pack=pack, position=position)
    valid = FinetuneDataset([(None, _examples(7, max_prompt=10))], seq_length=24, num_pauses=3, pause_id=PAUSE, eod=EOD,
                            pad=PAD, position=position, pack=pack, shuffle=False, num_samples=12)  # fmt: skip
    cases = [(train, [0, 5, 39, 40, 41, 77]), (valid, list(range(12)))]
    if pack:  # packed rows go one per microbatch (megatron's thd format)
        cases = [(ds, [i]) for ds, indices in cases for i in indices]
    for ds, indices in cases:
        fast, slow = ds.batch(indices), collate([ds[i] for i in indices])
        assert fast.keys() == slow.keys()
        for key in slow:
            assert fast[key].dtype == slow[key].dtype and torch.equal(fast[key], slow[key]), key
