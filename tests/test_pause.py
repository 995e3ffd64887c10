"""The pure pause-token functions (megatron_pause/pause.py) every stage shares.

Preprocessing, the dataset, the loss and finetuning all call these, so their
exact semantics are pinned here: how many pauses a sequence gets, that
insertion keeps the real tokens in order at uniformly random positions, that
the draw depends only on (seed, stream, index) and is uniform over slot
subsets, that the compiled draw and its numpy twin agree bit for bit, and that
the loss mask drops exactly the pause targets.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

import megatron_pause.pause as pause
from megatron_pause.pause import (
    OFFLINE_STREAM,
    ONLINE_STREAM,
    append_pauses,
    count_pauses,
    document_key,
    insert_pauses,
    insert_pauses_and_trim,
    num_pauses,
    pause_key,
    pause_loss_mask,
    pause_loss_mask_np,
    pause_slots,
)

PAUSE = 99
HELLO_KEY = 9022087748821825191  # document_key("hello"), recorded once
PINNED_SLOTS = [16, 17, 23, 29, 33, 37]  # pause_slots(40, 6, pause_key(1, 2, ONLINE_STREAM))

needs_kernel = pytest.mark.skipif(
    not pause.kernel_in_use(), reason="megatron_pause._pause_kernels was not built (no C compiler?)"
)


@pytest.fixture(params=["kernel", "numpy"])
def draw_impl(request, monkeypatch):
    """Runs a test with the compiled draw and again with its numpy twin."""
    if request.param == "numpy":
        monkeypatch.setattr(pause, "_pause_kernels", None)
    elif not pause.kernel_in_use():
        pytest.skip("megatron_pause._pause_kernels was not built (no C compiler?)")
    return request.param


@pytest.mark.parametrize(
    "length,fraction,expected",
    [(0, 0.1, 0), (10, 0.1, 1), (15, 0.1, 2), (25, 0.1, 3), (2048, 0.1, 205), (128, 0.0, 0), (7, 1.0, 7)],
)
def test_num_pauses_rounds_half_up(length, fraction, expected):
    assert num_pauses(length, fraction) == expected


def test_num_pauses_rejects_negative_fraction():
    with pytest.raises(ValueError, match="fraction"):
        num_pauses(10, -0.1)


def test_insert_pauses_keeps_tokens_in_order(draw_impl):
    tokens = np.arange(20)
    out = insert_pauses(tokens, 5, PAUSE, pause_key(0, 3))
    assert out.shape == (25,) and out.dtype == tokens.dtype
    assert count_pauses(out, PAUSE) == 5
    assert np.array_equal(out[out != PAUSE], tokens)


def test_insert_zero_pauses_returns_a_copy():
    tokens = np.arange(5)
    out = insert_pauses(tokens, 0, PAUSE, pause_key(0, 0))
    assert np.array_equal(out, tokens) and out is not tokens


def test_insert_pauses_is_uniform_over_arrangements(draw_impl):
    """2 pauses among 3 tokens: all C(5, 2) = 10 slot sets equally likely."""
    counts = Counter()
    n = 5000
    for i in range(n):
        out = insert_pauses(np.array([1, 2, 3]), 2, PAUSE, pause_key(7, i), dtype=np.int64)
        counts[tuple(np.flatnonzero(out == PAUSE))] += 1
    assert set(counts) == set(itertools.combinations(range(5), 2))
    expected = n / 10
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 27.9  # p = 0.001 for 9 degrees of freedom


def test_pause_key_depends_only_on_seed_stream_index():
    assert pause_key(1, 5) == pause_key(1, 5) == pause_key(1, 5, OFFLINE_STREAM)
    assert len({pause_key(1, 5), pause_key(1, 6), pause_key(2, 5), pause_key(1, 5, ONLINE_STREAM)}) == 4
    assert 0 <= pause_key(1, 5) < 1 << 64
    # Seeds are folded into 32 bits rather than rejected.
    assert pause_key(1 << 40, 0) == pause_key(0, 0)
    with pytest.raises(ValueError, match="index and stream"):
        pause_key(1, -1)


def test_insert_and_trim_keeps_length_and_drops_overflowing_tokens():
    tokens = np.arange(1, 41)
    out = insert_pauses_and_trim(tokens, 0.1, PAUSE, pause_key(3, 1))
    assert out.shape == (40,)
    kept = out[out != PAUSE]
    assert np.array_equal(kept, tokens[: len(kept)])  # a prefix, in order
    assert count_pauses(out, PAUSE) + len(kept) == 40
    assert count_pauses(out, PAUSE) <= num_pauses(40, 0.1)


def test_insert_and_trim_to_an_explicit_length():
    out = insert_pauses_and_trim(np.arange(1, 31), 0.2, PAUSE, pause_key(0, 0), length=25)
    # round(0.2 x 25) = 5 pauses go into the 30 tokens, then 35 slots are cut to 25.
    assert np.array_equal(out, insert_pauses(np.arange(1, 31), 5, PAUSE, pause_key(0, 0))[:25])


def test_document_key_is_stable_and_content_addressed():
    assert document_key("hello") == document_key("hello")
    assert document_key("hello") != document_key("hello ")
    assert 0 <= document_key("\ud800 lone surrogate") < 1 << 64
    # Pinned: pause positions of preprocessed data derive from it, so it must
    # not change between runs, machines or versions.
    assert document_key("hello") == HELLO_KEY


def test_pause_loss_mask_drops_only_pause_targets():
    labels = torch.tensor([[1, PAUSE, 2], [PAUSE, PAUSE, 3]])
    assert pause_loss_mask(labels, PAUSE).tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    loss_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    mask = pause_loss_mask(labels, PAUSE, loss_mask)
    assert mask.dtype == torch.float32 and mask.tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    assert pause_loss_mask_np(labels.numpy(), PAUSE).tolist() == pause_loss_mask(labels, PAUSE).tolist()


def test_append_pauses_and_count():
    assert append_pauses([5, 6], 3, PAUSE) == [5, 6, PAUSE, PAUSE, PAUSE]
    assert append_pauses(np.array([5]), 0, PAUSE) == [5]
    assert count_pauses(torch.tensor([PAUSE, 1, PAUSE]), PAUSE) == 2
    assert count_pauses(np.array([1, 2]), PAUSE) == 0


def _subset_chi2(total: int, k: int, draws: int) -> tuple[float, int]:
    """Chi-square of the k-subsets pause_slots draws (one keyed stream per draw, as the dataset
    does) against the uniform law over all C(total, k) of them; returns (chi2, degrees)."""
    counts = Counter()
    for i in range(draws):
        mask = pause_slots(total, k, pause_key(5, i, ONLINE_STREAM))
        assert mask.dtype == np.bool_ and mask.shape == (total,) and int(mask.sum()) == k
        counts[tuple(np.flatnonzero(mask))] += 1
    subsets = list(itertools.combinations(range(total), k))
    assert set(counts) == set(subsets)
    expected = draws / len(subsets)
    return sum((counts[s] - expected) ** 2 / expected for s in subsets), len(subsets) - 1


@pytest.mark.parametrize(
    "total,k,bound",
    [
        (6, 2, 37.7),  # 15 subsets; repeats send the draw into further batches
        (6, 4, 37.7),  # over half the slots: the complement is drawn
        (8, 4, 111.1),  # 70 subsets, the densest case drawn directly: many repeats
    ],
)
def test_pause_slots_is_uniform_over_k_subsets(total, k, bound, draw_impl):
    chi2, dof = _subset_chi2(total, k, draws=100 * math.comb(total, k))
    assert chi2 < bound, (chi2, dof)  # bound: p = 0.001 for dof degrees of freedom


def test_pause_slots_marginals_at_the_dataset_size(draw_impl):
    """The paper's setting (2048 + 1 tokens, 205 pauses): every slot is a pause equally often."""
    total, k, draws = 2049 + 205, 205, 600
    hits = np.zeros(total)
    for i in range(draws):
        hits += pause_slots(total, k, pause_key(9, i, ONLINE_STREAM))
    p = k / total
    # Each slot's count is binomial(draws, p) (slots are only weakly dependent): the spread of the
    # standardised counts must be ~1 and the first/last halves must get their share.
    z = (hits - draws * p) / math.sqrt(draws * p * (1 - p))
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1
    assert abs(hits[: total // 2].sum() / (draws * k) - (total // 2) / total) < 0.01


def test_pause_slots_is_deterministic_per_key(draw_impl):
    a = pause_slots(300, 30, pause_key(1, 7, ONLINE_STREAM))
    assert np.array_equal(a, pause_slots(300, 30, pause_key(1, 7, ONLINE_STREAM)))
    assert not np.array_equal(a, pause_slots(300, 30, pause_key(1, 8, ONLINE_STREAM)))
    # Pinned: a resumed run must see the pauses the interrupted one saw, so the draw may not
    # change silently between versions (or between the kernel and its numpy twin).
    assert np.flatnonzero(pause_slots(40, 6, pause_key(1, 2, ONLINE_STREAM))).tolist() == PINNED_SLOTS


def test_pause_slots_edge_cases(draw_impl):
    key = pause_key(0, 0)
    assert not pause_slots(5, 0, key).any()
    assert pause_slots(5, 5, key).all()
    assert pause_slots(0, 0, key).shape == (0,)
    assert pause_slots(1, 1, key).tolist() == [True]
    for bad in (-1, 6):
        with pytest.raises(ValueError, match="pause slots"):
            pause_slots(5, bad, key)
    with pytest.raises(ValueError, match="pause slots"):
        pause_slots(1 << 32, 1, key)


def test_splitmix_stream_is_the_reference_splitmix64():
    # The well-known first output of splitmix64 from state 0, and a big-int reference for more.
    assert int(pause._splitmix64(0, 0, 1)[0]) == 0xE220A8397B1DCDAF

    def reference(key: int, i: int) -> int:
        z = (key + (i + 1) * 0x9E3779B97F4A7C15) % (1 << 64)
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
        return z ^ (z >> 31)

    key = pause_key(3, 4)
    assert pause._splitmix64(key, 5, 4).tolist() == [reference(key, i) for i in range(5, 9)]
    assert [pause._splitmix64_int(key, i) for i in range(5, 9)] == [reference(key, i) for i in range(5, 9)]


def test_numpy_twin_skips_exactly_the_draws_lemire_rejects(monkeypatch):
    # Rejections happen with probability ~total / 2^64, so script the draws. With total = 50 the
    # threshold is 2^64 mod 50 = 16: a draw whose product with 50 is below 16 mod 2^64 (here 0)
    # is skipped, and draw v picks slot (v * 50) >> 64, so ceil(j * 2^64 / 50) + 1 picks slot j
    # (the + 1 lifts the low half of the product to 50..99, clear of the threshold).
    total, k = 50, 25
    pick = lambda j: -(-(j << 64) // total) + 1  # noqa: E731
    batches = [[0] + [pick(j) for j in range(1, 25)]]  # 25 drawn at once: one skipped, 24 slots
    singles = [0, pick(3), 1]  # then one at a time: skipped, a repeat, slot 0
    calls = []

    def batch_draws(key, first, count):
        calls.append(("batch", first, count))
        return np.array(batches.pop(0), dtype=np.uint64)

    def single_draw(key, i):
        calls.append(("single", i))
        return singles.pop(0)

    monkeypatch.setattr(pause, "_splitmix64", batch_draws)
    monkeypatch.setattr(pause, "_splitmix64_int", single_draw)
    mask = pause._pause_slots_numpy(total, k, key=0)
    assert np.flatnonzero(mask).tolist() == list(range(25))
    assert calls == [("batch", 0, 25), ("single", 25), ("single", 26), ("single", 27)]


@needs_kernel
@pytest.mark.parametrize(
    "total,k", [(2049 + 205, 205), (300, 150), (300, 151), (1000, 999), (97, 3), (4096, 1)]
)
def test_kernel_and_numpy_twin_give_identical_pauses(total, k):
    for i in range(40):
        key = pause_key(11, i, ONLINE_STREAM)
        assert np.array_equal(pause_slots(total, k, key), pause._pause_slots_numpy(total, k, key))
    # The fused insert (int64 output, any integer token type) equals the numpy fill.
    key = pause_key(5, total, ONLINE_STREAM)
    is_pause = pause._pause_slots_numpy(total, k, key)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64):
        tokens = (np.arange(total - k) % 200).astype(dtype)
        reference = np.full(total, PAUSE, dtype=np.int64)
        reference[~is_pause] = tokens
        for length in (None, total - k, 1):
            fused = insert_pauses(tokens, k, PAUSE, key, length=length, dtype=np.int64)
            assert np.array_equal(fused, reference[:length]), (dtype, length)


def test_insert_pauses_edge_cases(draw_impl):
    key = pause_key(2, 2)
    # No tokens: only pauses. More pauses than tokens: tokens still in order.
    assert insert_pauses(np.array([], dtype=np.int32), 3, PAUSE, key).tolist() == [PAUSE] * 3
    out = insert_pauses(np.array([4, 5, 6]), 10, PAUSE, key)
    assert out.shape == (13,) and count_pauses(out, PAUSE) == 10 and out[out != PAUSE].tolist() == [4, 5, 6]
    with pytest.raises(ValueError, match="cannot insert"):
        insert_pauses(np.arange(3), -1, PAUSE, key)
    with pytest.raises(ValueError, match="1-d"):
        insert_pauses(np.zeros((2, 2)), 1, PAUSE, key)


@pytest.mark.parametrize("length", [0, 1, 17, 22, 25, 40])
def test_insert_pauses_with_length_is_the_trimmed_insertion(length, draw_impl):
    tokens = np.arange(1, 21, dtype=np.int16)
    full = insert_pauses(tokens, 5, PAUSE, pause_key(4, 4))
    trimmed = insert_pauses(tokens, 5, PAUSE, pause_key(4, 4), length=length)
    assert trimmed.dtype == tokens.dtype and np.array_equal(trimmed, full[:length])
