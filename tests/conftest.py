"""Shared test setup: the CPU layer, quiet megatron imports, reference weights.

``platform.install()`` runs once here, in the pytest process, so that every
world forked by :func:`megatron_pause.testing.run_distributed` inherits an
already-imported, already-patched megatron-core (forking is what makes a
world cost ~1 s instead of a ``torchrun`` start of 5-10 s).
"""

from __future__ import annotations

import os
import sys
import warnings

import pytest

# The parity helpers (tests/parity_worlds.py) are imported as a plain module
# by the tests and by benchmarks/parity_report.py.
sys.path.insert(0, os.path.dirname(__file__))

with warnings.catch_warnings():
    # megatron-core warns at import about optional packages (apex, TE, nvidia
    # modelopt, ...) that a CPU machine never has.
    warnings.simplefilter("ignore")
    from megatron_pause import platform

    platform.install()


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory) -> str:
    """Weights of the tiny parity model, saved once by a 1-process TP1 run.

    Pipeline layouts build their layers in a different order than one process
    does, so they start from different random weights; loading this
    checkpoint (megatron resharding it to any TP/PP/VPP layout) gives every
    layout the same starting point.
    """
    import parity_worlds

    path = str(tmp_path_factory.mktemp("reference_ckpt"))
    parity_worlds.save_reference_checkpoint(path)
    return path
