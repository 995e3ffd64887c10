"""Turn a map-style sample dataset into this rank's microbatches, resumably.

Iteration ``i`` consumes the global batch of samples
``[consumed, consumed + global_batch_size)``. Microbatch ``j`` of data-parallel
rank ``r`` holds samples ``consumed + (j * dp + r) * mbs`` onwards, so the union
over ranks is exactly the global batch at any DP size -- a resumed run and a
run at another DP size see the same samples. The position is one integer
(``consumed_samples``), saved with every checkpoint.
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


class MicrobatchLoader:
    def __init__(
        self,
        dataset: Any,
        micro_batch_size: int,
        global_batch_size: int,
        dp_rank: int,
        dp_size: int,
        consumed_samples: int = 0,
    ) -> None:
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(
                f"--global-batch-size {global_batch_size} is not divisible by --micro-batch-size {micro_batch_size} "
                f"x data-parallel size {dp_size}"
            )
        self.dataset = dataset
        self.mbs = micro_batch_size
        self.gbs = global_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.num_microbatches = global_batch_size // (micro_batch_size * dp_size)
        self.consumed_samples = consumed_samples

    def _sample(self, index: int) -> dict[str, Any]:
        # Wrap around a finite dataset (megatron sizes datasets to the run, so
        # this only triggers for short evaluation sets).
        return self.dataset[index % len(self.dataset)]

    def next_global_batch(self) -> list[dict[str, torch.Tensor]]:
        start = self.consumed_samples
        microbatches = []
        for j in range(self.num_microbatches):
            first = start + (j * self.dp_size + self.dp_rank) * self.mbs
            microbatches.append(collate([self._sample(first + k) for k in range(self.mbs)]))
        self.consumed_samples += self.gbs
        return microbatches
