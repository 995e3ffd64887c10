"""The pure pause-token functions (megatron_pause/pause.py) every stage shares.

Preprocessing, the dataset, the loss and finetuning all call these, so their
exact semantics are pinned here: how many pauses a sequence gets, that
insertion keeps the real tokens in order at uniformly random positions, that
the random stream depends only on (seed, stream, index), and that the loss
mask drops exactly the pause targets.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from megatron_pause.pause import (
    OFFLINE_STREAM,
    ONLINE_STREAM,
    append_pauses,
    count_pauses,
    document_key,
    insert_pauses,
    insert_pauses_and_trim,
    num_pauses,
    pause_loss_mask,
    pause_loss_mask_np,
    pause_rng,
)

PAUSE = 99
HELLO_KEY = 9022087748821825191  # document_key("hello"), recorded once


@pytest.mark.parametrize(
    "length,fraction,expected",
    [(0, 0.1, 0), (10, 0.1, 1), (15, 0.1, 2), (25, 0.1, 3), (2048, 0.1, 205), (128, 0.0, 0), (7, 1.0, 7)],
)
def test_num_pauses_rounds_half_up(length, fraction, expected):
    assert num_pauses(length, fraction) == expected


def test_num_pauses_rejects_negative_fraction():
    with pytest.raises(ValueError, match="fraction"):
        num_pauses(10, -0.1)


def test_insert_pauses_keeps_tokens_in_order():
    tokens = np.arange(20)
    out = insert_pauses(tokens, 5, PAUSE, pause_rng(0, 3))
    assert out.shape == (25,) and out.dtype == tokens.dtype
    assert count_pauses(out, PAUSE) == 5
    assert np.array_equal(out[out != PAUSE], tokens)


def test_insert_zero_pauses_returns_a_copy():
    tokens = np.arange(5)
    out = insert_pauses(tokens, 0, PAUSE, pause_rng(0, 0))
    assert np.array_equal(out, tokens) and out is not tokens


def test_insert_pauses_is_uniform_over_arrangements():
    """2 pauses among 3 tokens: all C(5, 2) = 10 slot sets equally likely."""
    counts = Counter()
    n = 5000
    for i in range(n):
        out = insert_pauses(np.array([1, 2, 3]), 2, PAUSE, pause_rng(7, i))
        counts[tuple(np.flatnonzero(out == PAUSE))] += 1
    assert set(counts) == set(itertools.combinations(range(5), 2))
    expected = n / 10
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 27.9  # p = 0.001 for 9 degrees of freedom


def test_pause_rng_depends_only_on_seed_stream_index():
    draw = lambda *key: pause_rng(*key).integers(0, 1 << 30, 4).tolist()  # noqa: E731
    assert draw(1, 5) == draw(1, 5) == draw(1, 5, OFFLINE_STREAM)
    assert draw(1, 5) != draw(1, 6)
    assert draw(1, 5) != draw(2, 5)
    assert draw(1, 5, OFFLINE_STREAM) != draw(1, 5, ONLINE_STREAM)
    # Seeds are folded into 32 bits rather than rejected.
    assert draw(1 << 40, 0) == draw(0, 0)


def test_insert_and_trim_keeps_length_and_drops_overflowing_tokens():
    tokens = np.arange(1, 41)
    out = insert_pauses_and_trim(tokens, 0.1, PAUSE, pause_rng(3, 1))
    assert out.shape == (40,)
    kept = out[out != PAUSE]
    assert np.array_equal(kept, tokens[: len(kept)])  # a prefix, in order
    assert count_pauses(out, PAUSE) + len(kept) == 40
    assert count_pauses(out, PAUSE) <= num_pauses(40, 0.1)


def test_insert_and_trim_to_an_explicit_length():
    out = insert_pauses_and_trim(np.arange(1, 31), 0.2, PAUSE, pause_rng(0, 0), length=25)
    # round(0.2 x 25) = 5 pauses go into the 30 tokens, then 35 slots are cut to 25.
    assert np.array_equal(out, insert_pauses(np.arange(1, 31), 5, PAUSE, pause_rng(0, 0))[:25])


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
