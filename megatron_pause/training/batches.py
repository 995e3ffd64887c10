"""Turn a map-style sample dataset into this rank's microbatches, resumably.

Iteration ``i`` consumes the global batch of samples
``[consumed, consumed + global_batch_size)``. Microbatch ``j`` of data-parallel
rank ``r`` holds samples ``consumed + (j * dp + r) * mbs`` onwards, so the union
over ranks is exactly the global batch at any DP size -- a resumed run and a
run at another DP size see the same samples. The position is one integer
(``consumed_samples``), saved with every checkpoint.

With ``num_workers > 0`` samples are fetched (pauses inserted, masks built)
by a torch DataLoader's worker processes ahead of the step; the order and
content are the same as in-process fetching.

With ``trim_multiple`` set, each global batch loses its trailing columns that no target reaches
(:func:`~megatron_pause.training.sparse_targets.trim_trailing_columns`), keeping the length a
multiple of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if values[0] is None:
            continue
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = torch.from_numpy(np.stack(values))
    if "loss_mask" in out:
        out["loss_mask"] = out["loss_mask"].float()
    # megatron builds the causal mask itself; a dense [b,1,s,s] mask would
    # only cost memory (and SDPA is told is_causal instead).
    out.pop("attention_mask", None)
    return out


class _MicrobatchIndices:
    """Infinite stream of sample-index lists, one per microbatch of this rank."""

    def __init__(self, start: int, mbs: int, gbs: int, dp_rank: int, dp_size: int, length: int) -> None:
        self.start, self.mbs, self.gbs, self.dp_rank, self.dp_size, self.length = (
            start,
            mbs,
            gbs,
            dp_rank,
            dp_size,
            length,
        )

    def __iter__(self):
        consumed = self.start
        per_rank = self.gbs // (self.mbs * self.dp_size)
        while True:
            for j in range(per_rank):
                first = consumed + (j * self.dp_size + self.dp_rank) * self.mbs
                # Wrap around a finite dataset (megatron sizes datasets to the
                # run, so this only triggers for short evaluation sets).
                yield [(first + k) % self.length for k in range(self.mbs)]
            consumed += self.gbs


class MicrobatchLoader:
    def __init__(
        self,
        dataset: Any,
        micro_batch_size: int,
        global_batch_size: int,
        dp_rank: int,
        dp_size: int,
        consumed_samples: int = 0,
        num_workers: int = 0,
        trim_multiple: int | None = None,
    ) -> None:
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(
                f"--global-batch-size {global_batch_size} is not divisible by --micro-batch-size {micro_batch_size} "
                f"x data-parallel size {dp_size}"
            )
        self.mbs = micro_batch_size
        self.gbs = global_batch_size
        self.num_microbatches = global_batch_size // (micro_batch_size * dp_size)
        self.consumed_samples = consumed_samples
        self.trim_multiple = trim_multiple
        indices = _MicrobatchIndices(
            consumed_samples, micro_batch_size, global_batch_size, dp_rank, dp_size, len(dataset)
        )
        if num_workers > 0:
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=indices, num_workers=num_workers, collate_fn=collate,
                persistent_workers=True, prefetch_factor=2,
            )  # fmt: skip
            self._batches = iter(loader)
        else:
            # A dataset may build a whole microbatch at once (``batch``), equal to collating its samples.
            batch = getattr(dataset, "batch", None) or (lambda idx: collate([dataset[i] for i in idx]))
            self._batches = (batch(idx) for idx in indices)

    def next_global_batch(self) -> list[dict[str, torch.Tensor]]:
        microbatches = [next(self._batches) for _ in range(self.num_microbatches)]
        if self.trim_multiple is not None:
            from megatron_pause.training.sparse_targets import trim_trailing_columns

            trim_trailing_columns(microbatches, self.trim_multiple)
        self.consumed_samples += self.gbs
        return microbatches
