"""Process groups: one entry point for torchrun, srun and the test harness.

Reads the launcher's environment (torchrun's RANK/WORLD_SIZE/LOCAL_RANK, or
Slurm's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID), picks NCCL on GPUs and gloo
on CPU, builds megatron-core's tensor/pipeline/data-parallel groups and seeds
the RNGs the way megatron expects (same seed on all ranks for the default
generator, per-TP-rank seeds for the model-parallel dropout stream).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from megatron_pause import platform
from megatron_pause.config import ParallelConfig


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def launch_env() -> LaunchEnv:
    """Rank and rendezvous from torchrun's variables, else Slurm's, else a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world, local = (
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
        )
    else:
        rank, world, local = 0, 1, 0
    return LaunchEnv(
        rank, world, local, env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", "29500"))
    )


def init_distributed(
    parallel: ParallelConfig,
    num_layers: int,
    seed: int,
    launch: LaunchEnv | None = None,
    timeout_s: float = 600,
) -> LaunchEnv:
    """Start the default process group and megatron's parallel groups; seed RNGs."""
    from megatron.core import parallel_state

    platform.install()
    launch = launch or launch_env()
    if not torch.distributed.is_initialized():
        if platform.cuda_available():
            torch.cuda.set_device(launch.local_rank)
        torch.distributed.init_process_group(
            backend="nccl" if platform.cuda_available() else "gloo",
            init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_size(num_layers),
    )
    seed_everything(seed)
    return launch


def seed_everything(seed: int) -> None:
    """Same default-generator seed on every rank (so use_cpu_initialization gives
    identical weights at any layout); megatron's tracker derives per-TP-rank
    streams for dropout inside tensor-parallel regions."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
    # On CPU the tracker's streams share the one CPU generator; start the
    # default stream from our seed on every rank whatever the tracker did.
    torch.manual_seed(seed)


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
