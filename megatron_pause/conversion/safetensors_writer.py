"""Write a sharded safetensors model (``model-0000k-of-0000n.safetensors`` + index) tensor by tensor.

``safetensors.torch.save_file`` needs every tensor of a file in memory at
once; a 1B model exported in one piece would then hold the model twice (the
checkpoint being read, the file being built). The format is simple enough to
stream instead: an 8-byte little-endian header length, a JSON header with
each tensor's dtype, shape and byte range, then the raw bytes. Shapes and
dtypes are known before any weight is read, so every file's header is written
first and each tensor is written at its offset as soon as it is produced and
then dropped -- in whatever order the source yields them.

Files are written under temporary names and renamed when all are complete.
The layout (shard boundaries, offsets) depends only on names, shapes and
dtype, so the same weights always give byte-identical files.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field

import torch

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
_SIZE_UNITS = {
    "": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5e9 bytes (HF's decimal units; ``"5GiB"`` is binary)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"cannot read size {text!r}; use e.g. 5GB, 500MB or 2GiB")
    size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if size <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return size


@dataclass
class _Shard:
    filename: str
    entries: dict[str, tuple[tuple[int, ...], int, int]] = field(
        default_factory=dict
    )  # name -> shape, start, end
    data_start: int = 0
    written: set[str] = field(default_factory=set)


class ShardedSafetensorsWriter:
    """Plan shards for ``tensors`` (name, shape) in ``dtype``, then accept them by :meth:`write`.

    Use as a context manager; leaving without error checks that every tensor
    was written, adds the index (when there is more than one file) and renames
    the files into place."""

    def __init__(
        self,
        folder: str,
        tensors: list[tuple[str, tuple[int, ...]]],
        dtype: torch.dtype,
        max_shard_size: int,
        metadata: dict[str, str] | None = None,
    ):
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"unsupported dtype {dtype}")
        self.folder = folder
        self.dtype = dtype
        self.metadata = {"format": "pt", **(metadata or {})}
        itemsize = torch.empty((), dtype=dtype).element_size()
        groups: list[list[tuple[str, tuple[int, ...], int]]] = [[]]
        used = 0
        for name, shape in tensors:
            nbytes = itemsize * _numel(shape)
            # A tensor larger than the limit gets a file of its own (as transformers does).
            if groups[-1] and used + nbytes > max_shard_size:
                groups.append([])
                used = 0
            groups[-1].append((name, shape, nbytes))
            used += nbytes
        n = len(groups)
        self.shards: list[_Shard] = []
        self.shard_of: dict[str, _Shard] = {}
        self.total_size = 0
        for k, group in enumerate(groups, start=1):
            shard = _Shard(SINGLE_FILE if n == 1 else f"model-{k:05d}-of-{n:05d}.safetensors")
            offset = 0
            for name, shape, nbytes in group:
                shard.entries[name] = (tuple(shape), offset, offset + nbytes)
                offset += nbytes
                self.shard_of[name] = shard
            self.total_size += offset
            self.shards.append(shard)
        self._files: dict[str, object] = {}

    def _tmp(self, shard: _Shard) -> str:
        return os.path.join(self.folder, shard.filename + ".partial")

    def __enter__(self) -> ShardedSafetensorsWriter:
        os.makedirs(self.folder, exist_ok=True)
        for shard in self.shards:
            header = {"__metadata__": self.metadata}
            for name, (shape, start, end) in shard.entries.items():
                header[name] = {
                    "dtype": _DTYPE_NAMES[self.dtype],
                    "shape": list(shape),
                    "data_offsets": [start, end],
                }
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned
            f = open(self._tmp(shard), "wb")
            f.write(struct.pack("<Q", len(raw)) + raw)
            shard.data_start = 8 + len(raw)
            data_bytes = max((end for _, _, end in shard.entries.values()), default=0)
            f.truncate(shard.data_start + data_bytes)
            self._files[shard.filename] = f
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard = self.shard_of.get(name)
        if shard is None:
            raise KeyError(f"{name!r} is not one of the planned tensors")
        shape, start, end = shard.entries[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, planned {shape}")
        if name in shard.written:
            raise ValueError(f"{name} written twice")
        data = tensor.detach().to("cpu", self.dtype).contiguous()
        f = self._files[shard.filename]
        f.seek(shard.data_start + start)
        # Raw little-endian bytes without a copy through numpy (which has no bfloat16).
        f.write(memoryview(data.view(torch.uint8).reshape(-1).numpy()))
        assert f.tell() == shard.data_start + end
        shard.written.add(name)

    def __exit__(self, exc_type, exc, tb) -> None:
        for f in self._files.values():
            f.close()
        if exc_type is not None:
            for shard in self.shards:
                if os.path.exists(self._tmp(shard)):
                    os.remove(self._tmp(shard))
            return
        missing = [n for s in self.shards for n in s.entries if n not in s.written]
        if missing:
            raise RuntimeError(f"{len(missing)} planned tensors were never written, e.g. {missing[:3]}")
        for shard in self.shards:
            f = open(self._tmp(shard), "rb+")
            os.fsync(f.fileno())
            f.close()
            os.replace(self._tmp(shard), os.path.join(self.folder, shard.filename))
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {name: s.filename for s in self.shards for name in s.entries},
            }
            tmp = os.path.join(self.folder, INDEX_FILE + ".partial")
            with open(tmp, "w") as f:
                json.dump(index, f, indent=2)
                f.write("\n")
            os.replace(tmp, os.path.join(self.folder, INDEX_FILE))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
