"""Pause-token logic, in one place and free of process groups.

Goyal et al. ("Think before you speak", ICLR 2024) pretrain with a learnable
``<pause>`` token inserted at uniformly random positions: 10% of the sequence
length per sample, after which the sample is trimmed back to the context
length. The model is never trained to *predict* a pause, so every position
whose target is ``<pause>`` is masked out of the loss; a position whose *input*
is a pause still predicts the next real token. At finetuning and inference time
M pauses are appended after the prompt and the answer is read only after the
last one.

Everything here is plain numpy/torch so that the preprocessing tool, the
dataset, the loss and the tests all share one definition:

* :func:`num_pauses` -- how many pauses a sequence of a given length receives;
* :func:`pause_slots` / :func:`insert_pauses` -- the insertion itself
  (uniform over positions);
* :func:`pause_rng` -- the deterministic random stream for one document or
  sample, so results do not depend on worker counts or resume points;
* :func:`pause_loss_mask` -- the loss mask that ignores pause targets;
* :func:`append_pauses` -- the finetuning/inference layout (prompt + M pauses).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

DEFAULT_PAUSE_TOKEN = "<pause>"

# Separates the random streams of the two insertion sites so that the same
# (seed, index) never yields correlated positions across them.
OFFLINE_STREAM = 0
ONLINE_STREAM = 1

_MASK128 = (1 << 128) - 1


def num_pauses(length: int, fraction: float) -> int:
    """Number of pauses for a sequence of ``length`` tokens: round(fraction x length).

    Python's round() is banker's rounding; we round half up so that counts do
    not flip between even and odd lengths.
    """
    if fraction < 0:
        raise ValueError(f"pause fraction must be >= 0, got {fraction}")
    return int(np.floor(fraction * length + 0.5))


def pause_rng(
    seed: int, index: int, stream: int = OFFLINE_STREAM, reuse: np.random.Generator | None = None
) -> np.random.Generator:
    """Independent, reproducible generator for one document or sample.

    Keyed on (seed, stream, index) only, so document i gets the same pauses
    whichever worker handles it and however many workers there are, and sample
    i gets the same pauses before and after a resume. The key is hashed
    (BLAKE2b) into the full 128-bit state and odd increment of a PCG64
    generator, numpy's default: distinct keys give unrelated streams, as with
    SeedSequence, at a fraction of its cost.

    ``reuse``: a generator returned by an earlier call, re-keyed in place and
    returned. It then yields exactly the stream a fresh call would, without
    building a generator per sample (the online dataset's hot path: a few us
    in a hot loop, half of it numpy parsing the state dict).
    """
    index, stream = int(index), int(stream)
    if index < 0 or stream < 0:
        raise ValueError(f"pause_rng index and stream must be >= 0, got index {index}, stream {stream}")
    key = b"%d:%d:%d" % (int(seed) & 0xFFFFFFFF, stream, index)
    word = int.from_bytes(hashlib.blake2b(key, digest_size=32, person=b"pause_rng").digest(), "little")
    rng = np.random.Generator(np.random.PCG64(0)) if reuse is None else reuse
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": word & _MASK128, "inc": (word >> 128) | 1},
        "has_uint32": 0,
        "uinteger": 0,
    }
    return rng


def document_key(text: str) -> int:
    """A stable 64-bit key for a document, for when no global index is known."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


def pause_slots(total: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of ``total`` slots with exactly ``k`` True: a uniformly random k-subset.

    The slots where a uniformly random permutation holds a value below k are a
    uniformly random k-subset. Faster exact draws exist (rejection sampling on
    the raw bit stream saved ~14 us of ~270 us per 2048-token sample), but the
    cost of a sample is dominated by per-call overhead elsewhere; one shuffle
    in C keeps this obviously right.
    """
    total, k = int(total), int(k)
    if not 0 <= k <= total:
        raise ValueError(f"cannot choose {k} pause slots among {total}")
    return rng.permutation(total) < k


def insert_pauses(
    tokens: np.ndarray, k: int, pause_id: int, rng: np.random.Generator, length: int | None = None
) -> np.ndarray:
    """Return ``tokens`` with ``k`` pause ids inserted at uniformly random positions.

    The output has ``len(tokens) + k`` slots; the pause slots are a uniformly
    random k-subset of them (:func:`pause_slots`) and the original tokens fill
    the rest in order. This is exactly "insert k pauses at uniformly random
    locations" and makes every arrangement of pauses between tokens equally
    likely.

    ``length``: return only the first ``length`` slots (all if there are
    fewer), exactly ``insert_pauses(...)[:length]`` but without writing the
    slots that would be cut (the online dataset trims every window back to
    its length).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"insert_pauses takes a 1-d token array, got shape {tokens.shape}")
    k = int(k)
    if k < 0:
        raise ValueError(f"cannot insert {k} pauses")
    total = tokens.shape[0] + k
    keep = total if length is None else min(int(length), total)
    if keep < 0:
        raise ValueError(f"cannot keep {length} slots")
    if k == 0:
        return tokens[:keep].copy()
    is_pause = pause_slots(total, k, rng)[:keep]
    return fill_pause_slots(is_pause, tokens[: keep - np.count_nonzero(is_pause)], pause_id)


def fill_pause_slots(
    is_pause: np.ndarray, tokens: np.ndarray, pause_id: int, dtype: np.dtype | None = None
) -> np.ndarray:
    """The sequence whose ``is_pause`` slots hold ``pause_id`` and whose other slots hold
    ``tokens`` in order (``len(tokens)`` must equal the number of non-pause slots). The scatter
    behind :func:`insert_pauses`; callers that draw slots for many documents at once (the
    preprocessing tool) concatenate the masks and fill them in one call."""
    out = np.empty(is_pause.shape[0], dtype=tokens.dtype if dtype is None else dtype)
    out[is_pause] = pause_id
    out[~is_pause] = tokens
    return out


def insert_pauses_and_trim(
    tokens: np.ndarray, fraction: float, pause_id: int, rng: np.random.Generator, length: int | None = None
) -> np.ndarray:
    """The paper's pretraining recipe for one sample: insert round(fraction x L)
    pauses into the sample, then trim back to L tokens (L = ``length`` or the
    sample's own length). Real tokens pushed past the end are dropped."""
    tokens = np.asarray(tokens)
    length = tokens.shape[0] if length is None else length
    k = num_pauses(length, fraction)
    return insert_pauses(tokens, k, pause_id, rng, length=length)


def pause_loss_mask(
    labels: torch.Tensor, pause_id: int, loss_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Loss mask (float, same shape as ``labels``) that is zero wherever the
    target is ``<pause>``, combined with an existing mask if one is given."""
    keep = (labels != pause_id).to(torch.float32)
    if loss_mask is not None:
        keep = keep * loss_mask.to(torch.float32)
    return keep


def pause_loss_mask_np(labels: np.ndarray, pause_id: int) -> np.ndarray:
    """numpy twin of :func:`pause_loss_mask` for dataset code."""
    return (np.asarray(labels) != pause_id).astype(np.float32)


def append_pauses(prompt: list[int] | np.ndarray, num: int, pause_id: int) -> list[int]:
    """Finetuning/inference layout: the prompt followed by ``num`` pauses; the
    answer is read (or trained) only after the last pause."""
    return list(prompt) + [pause_id] * int(num)


def count_pauses(tokens: np.ndarray | torch.Tensor, pause_id: int) -> int:
    return int((tokens == pause_id).sum())
