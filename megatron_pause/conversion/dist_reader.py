"""Read a ``torch_dist`` checkpoint's model tensors in one process, as global tensors.

megatron-core's ``dist_checkpointing`` writes through
``torch.distributed.checkpoint`` (DCP): every sharded tensor is stored under a
global key with its global shape, and each rank's piece as a chunk with
offsets. DCP can therefore assemble any tensor whole from the chunks of every
rank, whatever TP/PP/VPP/DP layout wrote them, without megatron and without a
process group (``no_dist=True``). Layers come back stacked on a leading axis
(``decoder.layers.<param>`` is ``[num_layers, ...]``), the vocabulary tables at
their padded size; ``_extra_state``, optimizer and RNG entries are not read.

One tensor is read per call, so a conversion holds at most one stacked
parameter (plus what it is converting) in memory.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

# Kept in step with megatron_pause.training.checkpoint (importing it pulls in megatron-core).
TRACKER = "latest_checkpointed_iteration.txt"
CONFIG_FILE = "megatron_pause.json"


class CheckpointReadError(RuntimeError):
    pass


def resolve_checkpoint_dir(root: str, iteration: int | None = None) -> str:
    """``root/iter_NNNNNNN`` of ``iteration`` (default: the tracker's), checked to be complete."""
    if os.path.isfile(os.path.join(root, CONFIG_FILE)):
        if iteration is not None:
            raise CheckpointReadError(f"{root} is a single checkpoint directory; do not pass --iteration")
        return root
    if iteration is None:
        tracker = os.path.join(root, TRACKER)
        if not os.path.isfile(tracker):
            raise CheckpointReadError(f"no checkpoint under {root} (no {TRACKER}); pass --iteration")
        text = open(tracker).read().strip()
        if not text.isdigit():
            raise CheckpointReadError(f"checkpoint tracker {tracker} is corrupt: {text[:80]!r}")
        iteration = int(text)
    final = os.path.join(root, f"iter_{iteration:07d}")
    for path in (final, final + ".old"):
        if os.path.isfile(os.path.join(path, CONFIG_FILE)):
            return path
    raise CheckpointReadError(f"{final} is missing or incomplete (no {CONFIG_FILE})")


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype


class DistCheckpointReader:
    """Global model tensors of one complete checkpoint directory."""

    def __init__(self, path: str):
        self.path = path
        with open(os.path.join(path, CONFIG_FILE)) as f:
            self.meta: dict[str, Any] = json.load(f)
        self._reader = dcp.FileSystemReader(path)
        metadata = self._reader.read_metadata()
        self.tensors: dict[str, TensorInfo] = {
            key: TensorInfo(tuple(md.size), md.properties.dtype)
            for key, md in metadata.state_dict_metadata.items()
            if isinstance(md, TensorStorageMetadata) and not key.startswith(("optimizer", "rng_state"))
        }

    @property
    def config(self) -> dict[str, Any]:
        """The resolved run configuration stored with the checkpoint (``PretrainConfig.to_dict()``)."""
        if "config" not in self.meta or not self.meta["config"].get("model"):
            raise CheckpointReadError(
                f"{self.path}/{CONFIG_FILE} holds no run configuration: cannot tell the model's shape"
            )
        return self.meta["config"]

    def read(self, key: str) -> torch.Tensor:
        """The whole tensor ``key``, assembled from every rank's chunks."""
        info = self.tensors.get(key)
        if info is None:
            raise CheckpointReadError(f"{self.path} has no tensor {key!r}")
        out = {key: torch.empty(info.shape, dtype=info.dtype)}
        # A fresh reader per call: FileSystemReader keeps per-load state.
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(out, storage_reader=dcp.FileSystemReader(self.path), no_dist=True)
        return out[key]
