"""Pause-token logic, in one place and free of process groups.

Goyal et al. ("Think before you speak", ICLR 2024) pretrain with a learnable
``<pause>`` token inserted at uniformly random positions: 10% of the sequence
length per sample, after which the sample is trimmed back to the context
length. The model is never trained to *predict* a pause, so every position
whose target is ``<pause>`` is masked out of the loss; a position whose *input*
is a pause still predicts the next real token. At finetuning and inference time
M pauses are appended after the prompt and the answer is read only after the
last one.

Everything here is plain numpy/torch (plus an optional compiled twin of the
random draw, ``_pause_kernels.c``, that gives identical results), so that the
preprocessing tool, the dataset, the loss and the tests all share one
definition:

* :func:`num_pauses` -- how many pauses a sequence of a given length receives;
* :func:`pause_slots` / :func:`insert_pauses` -- the insertion itself
  (uniform over positions);
* :func:`pause_key` -- the key that fixes one document's or sample's pauses,
  so results do not depend on worker counts or resume points;
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

try:  # the compiled twin of the keyed draw; see _pause_kernels.c
    from megatron_pause import _pause_kernels
except ImportError:  # built without a C compiler: the numpy twin below gives the same pauses
    _pause_kernels = None

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))
_MASK64 = (1 << 64) - 1
# Below this many missing slots the numpy twin draws one at a time in Python ints.
_SCALAR_DRAWS = 24
_32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
# The numpy twin builds the 128-bit product v * total from 32-bit halves of v, which is exact
# only for total < 2^32; the kernel enforces the same bound, so both accept the same inputs.
MAX_PAUSE_SLOTS = (1 << 32) - 1


def num_pauses(length: int, fraction: float) -> int:
    """Number of pauses for a sequence of ``length`` tokens: round(fraction x length).

    Python's round() is banker's rounding; we round half up so that counts do
    not flip between even and odd lengths.
    """
    if fraction < 0:
        raise ValueError(f"pause fraction must be >= 0, got {fraction}")
    return int(np.floor(fraction * length + 0.5))


def pause_key(seed: int, index: int, stream: int = OFFLINE_STREAM) -> int:
    """The 64-bit key of one document's or one sample's pauses.

    It depends on (seed, stream, index) only. So document i gets the same pauses whichever worker
    handles it and however many workers there are, and sample i gets the same pauses before and
    after a resume. The key is a BLAKE2b hash, so nearby indices give unrelated keys.
    """
    if index < 0 or stream < 0:
        raise ValueError(f"pause_key index and stream must be >= 0, got index {index}, stream {stream}")
    key = b"%d:%d:%d" % (seed & 0xFFFFFFFF, stream, index)
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"pause_key").digest(), "little")


def document_key(text: str) -> int:
    """A stable 64-bit key for a document, for when no global index is known."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


def kernel_in_use() -> bool:
    """Whether the compiled draw (``_pause_kernels``) is in use rather than its numpy twin."""
    return _pause_kernels is not None


def pause_slots(total: int, k: int, key: int) -> np.ndarray:
    """A boolean mask of ``total`` slots with exactly ``k`` True: a uniformly random k-subset,
    determined by ``key`` (from :func:`pause_key`).

    The draw: slots are drawn uniformly (with replacement) from a splitmix64 stream seeded by the
    key, until k distinct ones have been seen. Those k are the subset, which by symmetry is a
    uniformly random k-subset. When k > total/2 the total - k free slots are drawn instead.
    Each draw is exact (Lemire's multiply-and-reject bounded integers). The compiled kernel and
    :func:`_pause_slots_numpy` both implement this draw and give identical masks
    (tests/test_pause.py).
    """
    total, k = int(total), int(k)
    if not 0 <= k <= total:
        raise ValueError(f"cannot choose {k} pause slots among {total}")
    if total > MAX_PAUSE_SLOTS:
        raise ValueError(f"at most {MAX_PAUSE_SLOTS} pause slots, got {total}")
    if _pause_kernels is None:
        return _pause_slots_numpy(total, k, key)
    mask = np.empty(total, dtype=bool)
    _pause_kernels.fill_pause_mask(mask, k, key)
    return mask


def _splitmix64(key: int, first: int, count: int) -> np.ndarray:
    """Draws first..first+count-1 of the stream: splitmix64(key + (i + 1) * golden ratio)."""
    z = np.arange(first + 1, first + count + 1, dtype=np.uint64)
    z *= _GOLDEN
    z += np.uint64(key)
    z ^= z >> _SHIFTS[0]
    z *= _MIX1
    z ^= z >> _SHIFTS[1]
    z *= _MIX2
    z ^= z >> _SHIFTS[2]
    return z


def _splitmix64_int(key: int, i: int) -> int:
    """Draw i of the stream as a Python int (the scalar form of :func:`_splitmix64`)."""
    z = (key + (i + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _pause_slots_numpy(total: int, k: int, key: int) -> np.ndarray:
    """The numpy twin of the compiled draw (see :func:`pause_slots`).

    Draws come in batches of exactly the number of distinct slots still missing. A batch can
    then complete the subset only at its last draw, so the batches stop at the same draw as the
    one-at-a-time loop in C and pick the same subset. The last few missing slots are drawn one at
    a time in Python ints, which is cheaper than a numpy batch of a handful of draws.
    """
    complement = 2 * k > total
    wanted = total - k if complement else k
    mask = np.zeros(total, dtype=bool)
    # Lemire's exact bounded draw: slot = high 64 bits of v * total, skipped when the low 64 bits
    # fall below (2^64 - total) mod total.
    threshold = (1 << 64) % total if total else 0  # == (2^64 - total) mod total
    n, low_threshold = np.uint64(total), np.uint64(threshold)
    seen = drawn = 0
    while seen < wanted:
        need = wanted - seen
        if need <= _SCALAR_DRAWS:
            product = _splitmix64_int(key, drawn) * total
            drawn += 1
            slot = product >> 64
            if product & _MASK64 >= threshold and not mask[slot]:
                mask[slot] = True
                seen += 1
            continue
        v = _splitmix64(key, drawn, need)
        drawn += need
        # numpy has no 128-bit product: the high half comes from 32-bit halves of v (exact for
        # total < 2^32), the low half from the wrapping 64-bit product.
        usable = v * n >= low_threshold
        high = ((v >> _32) * n + (((v & _LOW32) * n) >> _32)) >> _32
        mask[high[usable]] = True
        seen = int(np.count_nonzero(mask))
    if complement:
        np.logical_not(mask, out=mask)
    return mask


def insert_pauses(
    tokens: np.ndarray,
    k: int,
    pause_id: int,
    key: int,
    length: int | None = None,
    dtype: np.dtype | None = None,
) -> np.ndarray:
    """Return ``tokens`` with ``k`` pause ids inserted at uniformly random positions.

    The output has ``len(tokens) + k`` slots; the pause slots are the uniformly
    random k-subset :func:`pause_slots` draws for ``key``, and the original
    tokens fill the rest in order. This is exactly "insert k pauses at
    uniformly random locations" and makes every arrangement of pauses between
    tokens equally likely.

    ``length``: return only the first ``length`` slots (all if there are
    fewer), exactly ``insert_pauses(...)[:length]`` but without writing the
    slots that would be cut (the online dataset trims every window back to
    its length). ``dtype``: of the result (default: that of ``tokens``).
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
    dtype = tokens.dtype if dtype is None else np.dtype(dtype)
    if k == 0:
        return tokens[:keep].astype(dtype)
    if _pause_kernels is not None and dtype == np.int64 and tokens.dtype.kind in "iu":
        # The online dataset's path: draw and fill in one call.
        out = np.empty(keep, dtype=np.int64)
        _pause_kernels.insert_pauses(out, np.ascontiguousarray(tokens), k, pause_id, key)
        return out
    is_token = ~pause_slots(total, k, key)[:keep]
    out = np.full(keep, pause_id, dtype=dtype)
    # place() fills the True slots in order from the front of ``tokens`` and ignores the rest:
    # the tokens pushed past ``keep`` are never copied.
    np.place(out, is_token, tokens.astype(dtype, copy=False))
    return out


def fill_pause_slots(
    is_pause: np.ndarray, tokens: np.ndarray, pause_id: int, dtype: np.dtype | None = None
) -> np.ndarray:
    """The sequence whose ``is_pause`` slots hold ``pause_id`` and whose other slots hold
    ``tokens`` in order (``len(tokens)`` must equal the number of non-pause slots). The scatter
    behind the preprocessing tool, which draws slots for many documents, concatenates the masks
    and fills them in one call."""
    out = np.empty(is_pause.shape[0], dtype=tokens.dtype if dtype is None else dtype)
    out[is_pause] = pause_id
    out[~is_pause] = tokens
    return out


def insert_pauses_and_trim(
    tokens: np.ndarray, fraction: float, pause_id: int, key: int, length: int | None = None
) -> np.ndarray:
    """The paper's pretraining recipe for one sample: insert round(fraction x L)
    pauses into the sample, then trim back to L tokens (L = ``length`` or the
    sample's own length). Real tokens pushed past the end are dropped."""
    tokens = np.asarray(tokens)
    length = tokens.shape[0] if length is None else length
    k = num_pauses(length, fraction)
    return insert_pauses(tokens, k, pause_id, key, length=length)


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
