"""Shared by the GPU tests: megatron's process groups for one rank over NCCL."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def single_rank_nccl_group(num_layers: int, seed: int):
    """The body of the GPU modules' module-scoped ``process_group`` fixtures."""
    from megatron_pause.config import ParallelConfig
    from megatron_pause.distributed import LaunchEnv, destroy_distributed, init_distributed
    from megatron_pause.testing import free_port

    launch = LaunchEnv(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=free_port())
    init_distributed(ParallelConfig(), num_layers=num_layers, seed=seed, launch=launch)
    try:
        yield
    finally:
        destroy_distributed()
