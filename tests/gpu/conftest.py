"""Everything under tests/gpu/ needs a CUDA device: skip it (visibly) where there is none.

These tests check the path the CPU suite cannot: megatron-core on real CUDA and NCCL with the
CPU compatibility layer inactive, Transformer Engine and FP8 where available, and the training
entry point end to end on one GPU. Run them with ``pytest tests/gpu`` on a GPU machine (the
NVIDIA PyTorch container built from the Dockerfile has everything they need).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (tests/gpu)")
    for item in items:
        # This hook sees the whole session's items: only mark ours.
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
