"""Distributed checkpoints (megatron-core ``dist_checkpointing``, torch_dist format).

Layout of ``--save DIR``::

    DIR/latest_checkpointed_iteration.txt   # tracker: the newest *complete* checkpoint
    DIR/iter_0000100/                       # one dist_checkpointing directory per save
        (torch_dist shards + metadata)
        megatron_pause.json                 # resolved PretrainConfig + train state, human-readable

A save first writes ``iter_XXXXXXX.partial/``, waits for every rank, renames it
to its final name and only then rewrites the tracker (tmp file + rename). A
save killed at any point therefore leaves the previous checkpoint complete and
the tracker pointing at it; stale ``.partial`` directories are ignored.

All model chunks are saved under one ``model`` key. megatron's sharded
tensors name layers by their *global* number, so a checkpoint written at one
TP/PP/virtual-PP layout loads at any other (resharding); the optimizer state
is saved ``fully_reshardable`` by default (``dp_reshardable`` is smaller but
only reshards across DP).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_pause import platform

TRACKER = "latest_checkpointed_iteration.txt"
CONFIG_FILE = "megatron_pause.json"


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def latest_iteration(root: str | None) -> int | None:
    """The iteration named by the tracker, or None when there is no complete checkpoint."""
    if not root:
        return None
    path = os.path.join(root, TRACKER)
    if not os.path.exists(path):
        return None
    text = open(path).read().strip()
    try:
        iteration = int(text)
    except ValueError as e:
        raise ValueError(f"checkpoint tracker {path} is corrupt: {text!r}") from e
    if not os.path.isdir(iteration_dir(root, iteration)):
        raise FileNotFoundError(f"{path} names iteration {iteration} but {iteration_dir(root, iteration)} is missing")
    return iteration


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def model_sharded_state_dict(chunks: list[torch.nn.Module]) -> dict[str, Any]:
    """Sharded state of every chunk. The dict keys are local module names; what
    identifies a tensor on disk is each ShardedTensor's key, which megatron
    makes global (layer numbers offset by stage), so any layout can read it."""
    return {f"chunk{i}": _unwrap(c).sharded_state_dict() for i, c in enumerate(chunks)}


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    while hasattr(module, "module"):
        module = module.module
    return module


def _rng_sharded_state() -> ShardedObject:
    """Per-rank RNG streams (CPU, CUDA if present, megatron's tracker)."""
    from megatron.core import tensor_parallel

    state = {
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return ShardedObject("rng_state", state, (world,), (rank,), replica_id=0)


def _optimizer_metadata(sharding_type: str) -> dict[str, Any]:
    return {"distrib_optim_sharding_type": sharding_type, "chained_optim_avoid_prefix": True}


def save_checkpoint(
    root: str,
    iteration: int,
    chunks: list[torch.nn.Module],
    optimizer: Any | None,
    scheduler: Any | None,
    train_state: dict[str, Any],
    config_dict: dict[str, Any],
    sharding_type: str = "fully_reshardable",
) -> str:
    """Collective over all ranks. Returns the final checkpoint directory."""
    final = iteration_dir(root, iteration)
    partial = final + ".partial"
    rank = torch.distributed.get_rank()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
    torch.distributed.barrier()

    state: dict[str, Any] = {"model": model_sharded_state_dict(chunks)}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            state["model"], is_loading=False, metadata=_optimizer_metadata(sharding_type)
        )
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
    state["train_state"] = dict(train_state)
    state["rng_state"] = _rng_sharded_state()
    platform.use_in_process_checkpoint_queue()
    dist_checkpointing.save(state, partial)

    torch.distributed.barrier()
    if rank == 0:
        meta = {"iteration": iteration, "train_state": train_state, "config": config_dict}
        _write_atomic(os.path.join(partial, CONFIG_FILE), json.dumps(meta, indent=2, default=str))
        if os.path.exists(final):  # re-saving the same iteration (e.g. SIGTERM right after a save)
            shutil.rmtree(final)
        os.replace(partial, final)
        _write_atomic(os.path.join(root, TRACKER), str(iteration))
    torch.distributed.barrier()
    return final


def load_checkpoint(
    root: str,
    chunks: list[torch.nn.Module],
    optimizer: Any | None = None,
    scheduler: Any | None = None,
    sharding_type: str = "fully_reshardable",
    iteration: int | None = None,
    load_rng: bool = True,
) -> tuple[int, dict[str, Any]] | None:
    """Load the tracker's (or the given) iteration into the chunks, and
    optionally the optimizer/scheduler/RNG. Returns (iteration, train_state),
    or None when ``root`` holds no complete checkpoint."""
    if iteration is None:
        iteration = latest_iteration(root)
        if iteration is None:
            return None
    path = iteration_dir(root, iteration)
    state: dict[str, Any] = {"model": model_sharded_state_dict(chunks)}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            state["model"], is_loading=True, metadata=_optimizer_metadata(sharding_type)
        )
    if load_rng:
        state["rng_state"] = _rng_sharded_state()
    with torch.no_grad():  # dp_reshardable loads write into parameters in place
        loaded = dist_checkpointing.load(state, path)
    for i, chunk in enumerate(chunks):
        _unwrap(chunk).load_state_dict(loaded["model"][f"chunk{i}"], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None and "opt_param_scheduler" in loaded:
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if load_rng and "rng_state" in loaded:
        _restore_rng(loaded["rng_state"])
    train_state = dict(loaded.get("train_state", {}))
    return iteration, train_state


def _restore_rng(state: dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def checkpoint_config(root: str, iteration: int | None = None) -> dict[str, Any]:
    """The resolved configuration stored with a checkpoint."""
    iteration = latest_iteration(root) if iteration is None else iteration
    if iteration is None:
        raise FileNotFoundError(f"no complete checkpoint under {root}")
    with open(os.path.join(iteration_dir(root, iteration), CONFIG_FILE)) as f:
        return json.load(f)


def data_parallel_rank() -> int:
    return parallel_state.get_data_parallel_rank()
