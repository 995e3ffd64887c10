"""Distributed checkpoints (megatron-core ``dist_checkpointing``, torch_dist format).

Layout of ``--save DIR``::

    DIR/latest_checkpointed_iteration.txt   # tracker: the newest *complete* checkpoint
    DIR/iter_0000100/                       # one dist_checkpointing directory per save
        (torch_dist shards + metadata)
        megatron_pause.json                 # iteration, train state, layout, resolved config

**Atomicity.** A save writes ``iter_XXXXXXX.partial/``, waits for every rank,
writes ``megatron_pause.json`` into it, renames it to its final name and only
then rewrites the tracker (tmp file + fsync + rename). A save killed at any
point therefore leaves the previous checkpoint complete and the tracker
pointing at it; a stale ``.partial`` directory is never read and is replaced
by the next save of that iteration. Re-saving an iteration that already exists
(SIGTERM right after a periodic save) moves the old directory to ``.old``
before the new one takes its name, and :func:`latest_iteration` falls back to
``.old`` if a kill lands between those two renames.

**What is saved.** All model chunks under one ``model`` key (megatron's
sharded tensors name layers by their *global* number, so a checkpoint written
at one TP/PP/virtual-PP layout loads at any other); the optimizer
(``distrib_optim_sharding_type`` passed explicitly: 0.16.1's default for the
distributed optimizer, ``fully_sharded_model_space``, fails to save with
"ShardedTensor.flattened_range is not supported"; ``fully_reshardable``
reshards across TP/PP/DP, ``dp_reshardable`` only across DP); the LR
scheduler; the caller's train state (iteration, consumed samples, data
position); per-rank RNG streams.

**Optimizer traps with torch's AdamW** (megatron-core 0.16.1 without apex/TE):

- AdamW has no state before its first step, and the distributed optimizer's
  ``state_dict()`` asserts on exactly one common ``step`` -- so a save at
  iteration 0, or building the load template on a fresh optimizer, fails. We
  first give every parameter the state AdamW's first step would create
  (zero moments, ``step`` = 0), which changes nothing numerically.
- megatron's non-distributed optimizers save the step only if it is truthy,
  so a checkpoint saved at step 0 has none and torch's ``load_state_dict``
  raises ``KeyError('step')``; we put the step recorded in
  ``megatron_pause.json`` back. The distributed optimizer's per-parameter copy
  expects a ``step`` among the loaded tensors, which the ``fully_reshardable``
  format never has (``KeyError('step')`` again) and which in
  ``dp_reshardable`` is the *template's* stale value; we hide the step from
  that copy (it is restored from the parameter groups).
- After ``load_state_dict`` the distributed optimizer hands every parameter
  the *same* ``step`` tensor; AdamW increments it once per parameter, so bias
  correction is silently wrong after a resume. We give each parameter its own
  copy (the bitwise-resume test in ``tests/test_checkpoint.py`` catches this).

RNG streams are restored only when world size, TP and PP match the saved
layout: at another layout rank *r*'s stream means something else, and the
resharded run is not expected to be bitwise anyway.

Saves are synchronous (the in-process result queue of
:func:`megatron_pause.platform.use_in_process_checkpoint_queue` replaces
megatron's spawned Manager).

**Loading fails early and says where.** Before any tensor is read,
:func:`verify_checkpoint` parses the three metadata files (ours, megatron's
``metadata.json``, torch's ``.metadata``) and checks that every shard file the
metadata names exists and is long enough for the byte ranges it claims. Every
rank runs the same checks on the same files, so a broken checkpoint raises the
same :class:`CheckpointError` everywhere instead of one rank failing inside a
collective while the others wait. The error names the checkpoint directory and
the file, lists the intact checkpoints under the same root and suggests
``--ckpt-step``; nothing ever falls back to an older checkpoint on its own
(that would silently redo work and change results). A checkpoint written by a
newer megatron-core, or a newer ``megatron_pause.json`` format, is refused:
0.17+ writes files that 0.16 cannot read, and the failure would be obscure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.utils import unwrap_model

from megatron_pause import platform

logger = logging.getLogger(__name__)

TRACKER = "latest_checkpointed_iteration.txt"
CONFIG_FILE = "megatron_pause.json"
SHARDING_TYPES = ("fully_reshardable", "dp_reshardable")
FORMAT_VERSION = 1
# Keys save_checkpoint writes into megatron_pause.json itself.
_META_KEYS = frozenset(
    (
        "format_version",
        "megatron_core",
        "iteration",
        "train_state",
        "layout",
        "optimizer",
        "has_scheduler",
        "config",
    )
)


MEGATRON_METADATA = "metadata.json"  # megatron dist_checkpointing's backend record
TORCH_METADATA = ".metadata"  # torch.distributed.checkpoint's index of every shard's byte range


class CheckpointError(RuntimeError):
    """A checkpoint directory is unusable (corrupt tracker, missing or incompatible checkpoint).

    The message is complete for a user (which directory, which file, what to do); entry points
    print it without a traceback and exit with status 2."""


# ---------------------------------------------------------------------------
# Directory layout and tracker

_ITERATION_DIR = re.compile(r"iter_(\d{7,})(\.old)?")


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def _is_complete(path: str) -> bool:
    # megatron_pause.json is written after every rank finished writing, before the rename.
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def complete_iterations(root: str | None) -> list[int]:
    """Iterations under ``root`` whose save completed (under the final name, or the ``.old``
    copy a killed re-save leaves), oldest first. Says nothing about whether their files are
    intact: see :func:`intact_iterations`."""
    if not root or not os.path.isdir(root):
        return []
    found = set()
    for name in os.listdir(root):
        match = _ITERATION_DIR.fullmatch(name)
        if match and _is_complete(os.path.join(root, name)):
            found.add(int(match.group(1)))
    return sorted(found)


def intact_iterations(root: str | None, exclude: int | None = None) -> list[int]:
    """Complete iterations under ``root`` that also pass :func:`verify_checkpoint`'s checks."""
    intact = []
    for iteration in complete_iterations(root):
        if iteration == exclude:
            continue
        try:
            _check_files(_complete_dir(root, iteration))
        except (_Unreadable, CheckpointError):
            continue
        intact.append(iteration)
    return intact


def _alternatives(root: str, exclude: int | None) -> str:
    """The part of a load error that says what can be loaded instead. Never chosen for the user:
    resuming from an older iteration silently would redo work and change results."""
    others = intact_iterations(root, exclude)
    if not others:
        return f"\n  there is no other intact checkpoint under {root} to load instead."
    shown = ", ".join(str(i) for i in others[-8:])
    more = f" (and {len(others) - 8} older)" if len(others) > 8 else ""
    return (
        f"\n  intact checkpoints under {root}: iteration {shown}{more}."
        f"\n  to load one of them instead, add --ckpt-step N (e.g. --ckpt-step {others[-1]})."
    )


class _Unreadable(Exception):
    """A file of one checkpoint directory is missing, truncated or does not parse."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


def _unreadable_error(root: str, iteration: int, path: str, problem: _Unreadable) -> CheckpointError:
    return CheckpointError(
        f"cannot load checkpoint {path} (iteration {iteration}): {problem.file} {problem.reason}"
        + _alternatives(root, iteration)
    )


def _complete_dir(root: str, iteration: int, named_by: str | None = None) -> str:
    """The complete directory of ``iteration``: its final name, or ``.old`` if a
    re-save of the same iteration was killed between its two renames.

    ``named_by`` says who asked for the iteration (the tracker, ``--ckpt-step``) for the error."""
    final = iteration_dir(root, iteration)
    for path in (final, final + ".old"):
        if _is_complete(path):
            return path
    named_by = named_by or f"the tracker {os.path.join(root, TRACKER)}"
    raise CheckpointError(
        f"cannot load checkpoint iteration {iteration}: {named_by} names it but {final} is missing or "
        f"incomplete: {os.path.join(final, CONFIG_FILE)} does not exist (its save never finished, or the "
        "directory was changed outside training)" + _alternatives(root, iteration)
    )


def latest_iteration(root: str | None) -> int | None:
    """The iteration named by the tracker; None when ``root`` holds no checkpoint at all.

    Raises :class:`CheckpointError` for a corrupt tracker, a tracker naming a
    missing checkpoint, or checkpoint directories without a tracker.
    """
    if not root or not os.path.isdir(root):
        return None
    path = os.path.join(root, TRACKER)
    if not os.path.exists(path):
        if _is_complete(root):
            raise CheckpointError(
                f"{root} is a single checkpoint directory; pass its parent directory "
                f"({os.path.dirname(os.path.abspath(root))}) to --load"
            )
        complete = complete_iterations(root)
        if complete:
            listed = ", ".join(iteration_dir(root, i) for i in complete[-8:])
            raise CheckpointError(
                f"{root} has checkpoints ({listed}) but no {TRACKER}; the tracker was deleted "
                f"or a save was killed right before writing it. Load one with --ckpt-step N, or write "
                f"the iteration to load into {path} (e.g. `echo {complete[-1]} > {path}`)"
            )
        return None
    with open(path, "rb") as f:
        text = f.read(4096).decode("utf-8", errors="replace").strip()
    try:
        iteration = int(text)
    except ValueError:
        raise CheckpointError(
            f"checkpoint tracker {path} is corrupt: {text[:80]!r} is not an iteration number"
            + _alternatives(root, None)
        ) from None
    if iteration < 0:
        raise CheckpointError(
            f"checkpoint tracker {path} is corrupt: negative iteration {iteration}"
            + _alternatives(root, None)
        )
    _complete_dir(root, iteration)
    return iteration


# ---------------------------------------------------------------------------
# Checks before loading


def _newer(saved: str, running: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(saved) > Version(running)
    except InvalidVersion:
        return False  # an unparseable record is reported by the caller's own check


def _read_json(file: str, missing: str) -> Any:
    """``file`` parsed as JSON, or :class:`_Unreadable` naming it (``missing`` says why when absent)."""
    try:
        with open(file, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise _Unreadable(file, missing) from None
    except (OSError, ValueError) as e:
        raise _Unreadable(file, f"does not parse ({type(e).__name__}: {e})") from None


def _check_files(path: str) -> dict[str, Any]:
    """Parse the metadata of checkpoint directory ``path`` and check every shard file it names.

    Reads no tensor: ``.metadata`` records the file and byte range of every item, so a missing or
    truncated shard file (a storage fault, a partial copy) is found from its size alone. Returns
    the parsed ``megatron_pause.json``; raises :class:`_Unreadable` naming the file."""
    meta_file = os.path.join(path, CONFIG_FILE)
    meta = _read_json(meta_file, "is missing: the save never finished")
    if not isinstance(meta, dict) or not isinstance(meta.get("iteration"), int):
        raise _Unreadable(meta_file, "is not a megatron_pause checkpoint record (no iteration)")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise _Unreadable(
            meta_file,
            f"has format version {version!r}; this megatron_pause reads version {FORMAT_VERSION} and older: "
            "update megatron_pause",
        )
    saved_core, running_core = meta.get("megatron_core"), platform.megatron_core_version()
    if saved_core is not None and _newer(str(saved_core), running_core):
        raise _Unreadable(
            meta_file,
            f"says the checkpoint was written by megatron-core {saved_core}, newer than the installed "
            f"{running_core}, which may not read its files correctly: install megatron-core=={saved_core}",
        )

    backend_file = os.path.join(path, MEGATRON_METADATA)
    backend = _read_json(backend_file, "is missing")
    if not isinstance(backend, dict) or backend.get("sharded_backend") != "torch_dist":
        raise _Unreadable(backend_file, f"does not describe a torch_dist checkpoint: {str(backend)[:80]!r}")

    index_file = os.path.join(path, TORCH_METADATA)
    if not os.path.isfile(index_file):
        raise _Unreadable(index_file, "is missing")
    try:
        from torch.distributed.checkpoint import FileSystemReader

        index = FileSystemReader(path).read_metadata()
        needed: dict[str, int] = {}
        for info in index.storage_data.values():
            end = int(info.offset) + int(info.length)
            needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    except Exception as e:  # a pickle of arbitrary garbage can raise almost anything
        raise _Unreadable(index_file, f"does not parse ({type(e).__name__}: {e})") from None
    for name, size in sorted(needed.items()):
        shard = os.path.join(path, name)
        try:
            actual = os.path.getsize(shard)
        except OSError:
            raise _Unreadable(shard, f"is missing ({TORCH_METADATA} lists it)") from None
        if actual < size:
            raise _Unreadable(shard, f"is truncated: {actual:,d} bytes, {TORCH_METADATA} needs {size:,d}")
    return meta


def verify_checkpoint(root: str, iteration: int, named_by: str | None = None) -> tuple[str, dict[str, Any]]:
    """The directory and ``megatron_pause.json`` of checkpoint ``iteration`` under ``root``,
    after checking that it can be read (see :func:`_check_files`). Reads no tensor, needs no
    process group. Raises :class:`CheckpointError` naming the directory and the failing file,
    listing the intact checkpoints under ``root`` and suggesting ``--ckpt-step``."""
    path = _complete_dir(root, iteration, named_by)
    try:
        return path, _check_files(path)
    except _Unreadable as problem:
        raise _unreadable_error(root, iteration, path, problem) from None


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _fsync_dir(path: str) -> None:
    """Make a rename durable (the directory entry), not just the file's bytes."""
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# State pieces


def model_sharded_state_dict(chunks: list[torch.nn.Module]) -> dict[str, Any]:
    """Sharded state of every chunk. The dict keys are local module names; what
    identifies a tensor on disk is each ShardedTensor's key, which megatron
    makes global (layer numbers offset by stage), so any layout can read it."""
    return {f"chunk{i}": unwrap_model(c).sharded_state_dict() for i, c in enumerate(chunks)}


def _layout() -> dict[str, int | None]:
    return {
        "world_size": torch.distributed.get_world_size(),
        "tensor_model_parallel_size": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline_model_parallel_size": parallel_state.get_pipeline_model_parallel_world_size(),
        "virtual_pipeline_model_parallel_size": parallel_state.get_virtual_pipeline_model_parallel_world_size(),
        "data_parallel_size": parallel_state.get_data_parallel_world_size(),
    }


_RNG_LAYOUT_KEYS = ("world_size", "tensor_model_parallel_size", "pipeline_model_parallel_size")


def _rng_sharded_state() -> ShardedObject:
    """This rank's RNG streams: Python, NumPy, torch CPU, CUDA if present, and
    megatron's model-parallel tracker. One shard per global rank."""
    from megatron.core import tensor_parallel

    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return ShardedObject("rng_state", state, (world,), (rank,), replica_id=0)


def _restore_rng(state: dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _optimizer_metadata(sharding_type: str) -> dict[str, Any]:
    return {"distrib_optim_sharding_type": sharding_type, "chained_optim_avoid_prefix": True}


def _megatron_optimizers(optimizer: Any) -> list[Any]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _optimizer_kind(optimizer: Any) -> list[str]:
    """Class names of the megatron optimizers: their checkpoint formats differ
    (FP32Optimizer / Float16Optimizer... / DistributedOptimizer)."""
    return [type(o).__name__ for o in _megatron_optimizers(optimizer)]


def _torch_optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    # Stub optimizers (a rank without parameters in a group) have optimizer None.
    return [o.optimizer for o in _megatron_optimizers(optimizer) if getattr(o, "optimizer", None) is not None]


def _complete_adam_state(optimizer: Any) -> float | None:
    """Give every parameter the state AdamW's first step would create, keeping
    whatever exists; every ``step`` becomes its own tensor with the common value.

    Called before building a save/load state dict (the distributed optimizer's
    ``state_dict()`` needs a step on every parameter) and after loading (a
    checkpoint saved at step 0 carries no step; the distributed optimizer's
    load hands all parameters one shared step tensor). Returns the step
    (None on a rank without parameters)."""
    all_steps = set()
    for opt in _torch_optimizers(optimizer):
        if not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
            raise TypeError(
                f"checkpointing supports torch Adam/AdamW inner optimizers, got {type(opt).__name__}"
            )
        steps = {float(s["step"]) for s in opt.state.values() if "step" in s}
        if len(steps) > 1:
            raise CheckpointError(
                f"optimizer parameters are at different steps {sorted(steps)}; expected one"
            )
        step = steps.pop() if steps else 0.0
        all_steps.add(step)
        for group in opt.param_groups:
            on_param = group.get("capturable") or group.get("fused")
            for p in group["params"]:
                state = opt.state[p]
                # Same tensors as torch.optim.AdamW._init_group creates on the first step.
                state["step"] = torch.tensor(step, dtype=torch.float32, device=p.device if on_param else None)
                for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group.get("amsgrad") else ()):
                    if key not in state:
                        state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if len(all_steps) > 1:
        raise CheckpointError(f"chained optimizers are at different steps {sorted(all_steps)}; expected one")
    return all_steps.pop() if all_steps else None


def _add_missing_common_step(tree: Any, step: float) -> None:
    """megatron's non-distributed optimizers save AdamW's step once, as
    ``state['common_step']`` -- but only if it is truthy, so a checkpoint saved
    before the first update has none and torch's ``load_state_dict`` fails with
    ``KeyError('step')``. Put the saved step back for megatron to distribute."""
    if not isinstance(tree, dict):
        return
    state = tree.get("state")
    if isinstance(state, dict) and "param_groups" in tree:
        if "common_step" not in state and any(
            isinstance(v, dict) and "step" not in v for v in state.values()
        ):
            state["common_step"] = torch.tensor(float(step), dtype=torch.float32)
        return
    for value in tree.values():
        _add_missing_common_step(value, step)


@contextlib.contextmanager
def _distributed_optimizer_loads_without_step(optimizer: Any) -> Iterator[None]:
    """While loading, hide AdamW's ``step`` from the distributed optimizer's
    per-parameter state copy.

    ``DistributedOptimizer._set_main_param_and_optimizer_states`` copies every
    key of the live state from the loaded tensors. The step is not among the
    loaded tensors in the ``fully_reshardable`` format (``KeyError('step')``),
    and in ``dp_reshardable`` it is the *template's* step (the value before the
    load), which would overwrite the step just restored from the checkpoint's
    parameter groups. The step is restored from the parameter groups either way.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    patched = []
    for opt in _megatron_optimizers(optimizer):
        if not isinstance(opt, DistributedOptimizer):
            continue
        original = opt._set_main_param_and_optimizer_states

        def without_step(model_param, tensors, _opt=opt, _original=original):
            group_index, group_order = _opt.model_param_group_index_map[model_param]
            state = _opt.optimizer.state[_opt.optimizer.param_groups[group_index]["params"][group_order]]
            step = state.pop("step", None)
            try:
                _original(model_param, {k: v for k, v in tensors.items() if k != "step"})
            finally:
                if step is not None:
                    state["step"] = step

        opt._set_main_param_and_optimizer_states = without_step  # this instance only
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states


# ---------------------------------------------------------------------------
# Save


def save_checkpoint(
    root: str,
    iteration: int,
    chunks: list[torch.nn.Module],
    optimizer: Any | None,
    scheduler: Any | None,
    train_state: dict[str, Any],
    config_dict: dict[str, Any],
    sharding_type: str = "fully_reshardable",
    metadata: dict[str, Any] | None = None,
) -> str:
    """Save a complete checkpoint of ``iteration`` under ``root`` and point the
    tracker at it. Collective over all ranks; synchronous. Returns the final
    checkpoint directory.

    ``train_state`` (picklable; JSON-friendly values are also written to
    ``megatron_pause.json``) is returned by :func:`load_checkpoint`;
    ``config_dict`` is the resolved run configuration, stored for
    :func:`checkpoint_config`. ``metadata`` adds JSON entries to
    ``megatron_pause.json`` (pretraining records the tokenizer's ``vocab``, which
    :mod:`megatron_pause.checkpoint_args` checks on load).
    """
    if sharding_type not in SHARDING_TYPES:
        raise ValueError(f"optimizer sharding type must be one of {SHARDING_TYPES}, got {sharding_type!r}")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    reserved = set(metadata or {}) & _META_KEYS
    if reserved:
        raise ValueError(f"metadata keys {sorted(reserved)} are reserved")
    final = iteration_dir(root, iteration)
    partial = final + ".partial"
    rank = torch.distributed.get_rank()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # a stale one from a killed save
        os.makedirs(partial)
    torch.distributed.barrier()

    state: dict[str, Any] = {"model": model_sharded_state_dict(chunks)}
    optimizer_step = None
    if optimizer is not None:
        optimizer_step = _complete_adam_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(
            state["model"], is_loading=False, metadata=_optimizer_metadata(sharding_type)
        )
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
    state["train_state"] = dict(train_state)
    state["rng_state"] = _rng_sharded_state()
    platform.use_in_process_checkpoint_queue()
    dist_checkpointing.save(state, partial)
    torch.distributed.barrier()  # every rank's shards are on disk

    if rank == 0:
        meta = {
            "format_version": FORMAT_VERSION,
            # 0.17+ writes a format 0.16 cannot read (no common.pt): loaders compare against this.
            "megatron_core": platform.megatron_core_version(),
            "iteration": iteration,
            "train_state": train_state,
            "layout": _layout(),
            "optimizer": None if optimizer is None else {
                "kind": _optimizer_kind(optimizer), "sharding_type": sharding_type, "step": optimizer_step,
            },
            "has_scheduler": scheduler is not None,
            "config": config_dict,
        }  # fmt: skip
        meta.update(metadata or {})
        _write_atomic(os.path.join(partial, CONFIG_FILE), json.dumps(meta, indent=2, default=str))
        old = final + ".old"
        if os.path.exists(final):
            # Re-saving an iteration (e.g. SIGTERM right after a periodic save). The tracker may
            # name it: keep it complete under ``.old`` until the new one is in place. (Without
            # ``final``, an ``.old`` left by a killed re-save is the complete copy: keep it too.)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(partial, final)
        _fsync_dir(root)
        _write_atomic(os.path.join(root, TRACKER), str(iteration))
        shutil.rmtree(old, ignore_errors=True)
    torch.distributed.barrier()
    return final


# ---------------------------------------------------------------------------
# Load


def load_checkpoint(
    root: str,
    chunks: list[torch.nn.Module],
    optimizer: Any | None = None,
    scheduler: Any | None = None,
    sharding_type: str | None = None,
    iteration: int | None = None,
    load_rng: bool = True,
    load_optimizer_state: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[int, dict[str, Any]] | None:
    """Load the tracker's (or the given) iteration into ``chunks`` and, if
    given, the optimizer, scheduler and RNG streams. Collective over all ranks.

    Returns ``(iteration, train_state)``, or None when ``root`` holds no
    checkpoint (no tracker and no checkpoint directories; training then starts
    fresh). The optimizer state is read in the sharding type it was saved
    with; a different ``sharding_type`` (the one new saves will use) is noted.
    With ``load_optimizer_state=False`` (fine-tuning) only the weights load
    and the optimizer's main parameters are refreshed from them. Raises
    :class:`CheckpointError` for a corrupt or incompatible checkpoint, before
    reading any tensor where the metadata shows it (:func:`verify_checkpoint`).
    ``log`` receives notes for the user (default: this module's logger on rank 0),
    e.g. which LR schedule a resumed run follows.
    """
    if log is None:
        log = logger.info if torch.distributed.get_rank() == 0 else (lambda message: None)
    named_by = None
    if iteration is None:
        iteration = latest_iteration(root)
        if iteration is None:
            if torch.distributed.get_rank() == 0:
                logger.info("no checkpoint under %s: starting from scratch", root)
            return None
    else:
        named_by = f"--ckpt-step {iteration}"
    path, meta = verify_checkpoint(root, iteration, named_by)

    with_optimizer = optimizer is not None and load_optimizer_state
    if with_optimizer:
        saved = meta.get("optimizer")
        if saved is None:
            raise CheckpointError(
                f"{path} has no optimizer state; load weights only (--finetune) to start a new optimizer"
            )
        if saved["kind"] != _optimizer_kind(optimizer):
            raise CheckpointError(
                f"{path} holds a {saved['kind']} state but this run uses {_optimizer_kind(optimizer)}: "
                "--use-distributed-optimizer and --bf16/--fp16 must match the run that saved it "
                "(or load weights only with --finetune)"
            )
        # A checkpoint can only be read in the format it was written in.
        if (
            sharding_type is not None
            and sharding_type != saved["sharding_type"]
            and torch.distributed.get_rank() == 0
        ):
            logger.info(
                "%s holds optimizer state sharded %r: loading it as such (new saves use %r)",
                path, saved["sharding_type"], sharding_type,
            )  # fmt: skip
        sharding_type = saved["sharding_type"]

    saved_layout = meta.get("layout", {})
    layout = _layout()
    same_layout = all(saved_layout.get(k) == layout[k] for k in _RNG_LAYOUT_KEYS)
    restore_rng = load_rng and same_layout
    if load_rng and not same_layout and torch.distributed.get_rank() == 0:
        logger.info(
            "checkpoint %s was saved at layout %s, this run is %s: RNG states not restored",
            path, {k: saved_layout.get(k) for k in _RNG_LAYOUT_KEYS}, {k: layout[k] for k in _RNG_LAYOUT_KEYS},
        )  # fmt: skip

    state: dict[str, Any] = {"model": model_sharded_state_dict(chunks)}
    if with_optimizer:
        _complete_adam_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(
            state["model"], is_loading=True, metadata=_optimizer_metadata(sharding_type)
        )
    if restore_rng:
        state["rng_state"] = _rng_sharded_state()
    with torch.no_grad():  # dp_reshardable loads write into (main) parameters in place
        try:
            with _quiet_load_warnings():
                loaded = dist_checkpointing.load(state, path)
        except Exception as e:
            # The metadata checks passed, so either a shard's bytes are damaged or the model built
            # here does not fit the checkpoint (a setting the stored configuration does not record).
            first_line = (str(e).strip().splitlines() or [""])[0][:300]
            raise CheckpointError(
                f"cannot load checkpoint {path} (iteration {iteration}): reading it failed with "
                f"{type(e).__name__}: {first_line}\n  if its files are intact, the model built from these "
                "flags does not fit it: --use-checkpoint-args takes the model settings from the checkpoint"
                + _alternatives(root, iteration)
            ) from e
        for i, chunk in enumerate(chunks):
            unwrap_model(chunk).load_state_dict(loaded["model"][f"chunk{i}"], strict=True)
        if with_optimizer:
            _add_missing_common_step(loaded["optimizer"], meta["optimizer"].get("step") or 0.0)
            with _distributed_optimizer_loads_without_step(optimizer):
                optimizer.load_state_dict(loaded["optimizer"])
            step = _complete_adam_state(optimizer)
            if step is not None and meta["optimizer"].get("step") not in (None, step):
                raise CheckpointError(
                    f"optimizer step after loading {path} is {step}, the checkpoint says {meta['optimizer']['step']}"
                )
        elif optimizer is not None:
            optimizer.reload_model_params()  # main (fp32) params from the loaded weights
    if scheduler is not None and load_optimizer_state:
        if "opt_param_scheduler" not in loaded:
            raise CheckpointError(f"{path} has no LR scheduler state")
        from megatron_pause.training.scheduler import schedule_note

        saved_schedule = loaded["opt_param_scheduler"]
        note = schedule_note(scheduler, saved_schedule)
        # OptimizerParamScheduler.load_state_dict *adds* the saved step count.
        scheduler.num_steps = 0
        scheduler.load_state_dict(saved_schedule)
        if note:
            log(note)
    if restore_rng:
        _restore_rng(loaded["rng_state"])
    if torch.distributed.get_rank() == 0:
        logger.info("loaded checkpoint %s (iteration %d)", path, iteration)
    return iteration, dict(loaded.get("train_state", {}))


def checkpoint_config(root: str, iteration: int | None = None) -> dict[str, Any]:
    """The metadata stored with a checkpoint: ``iteration``, ``train_state``,
    ``layout``, ``optimizer``, ``megatron_core``, ``vocab`` (when the saver recorded
    it) and the resolved run ``config``. Only ``megatron_pause.json`` is read; use
    :func:`verify_checkpoint` to check the rest."""
    named_by = None if iteration is None else f"--ckpt-step {iteration}"
    iteration = latest_iteration(root) if iteration is None else iteration
    if iteration is None:
        raise CheckpointError(f"no checkpoint under {root}")
    path = _complete_dir(root, iteration, named_by)
    file = os.path.join(path, CONFIG_FILE)
    try:
        with open(file, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError) as e:
        problem = _Unreadable(file, f"does not parse ({type(e).__name__}: {e})")
        raise _unreadable_error(root, iteration, path, problem) from None


# megatron-core's torch_dist loading emits three warnings on every load that say nothing about the
# checkpoint. Python prints the source line at each warning's stacklevel, and these point into the
# middle of multi-line calls and conditions, so the console showed bare fragments such as
# ``checkpoint.load_state_dict(`` (0.16's call of the deprecated loader) and
# ``and md.size != obj.size()`` (torch's DCP planner touching a ShardedTensor). Exactly these
# three are silenced, and only around the load.
_LOAD_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # megatron exchanges the load plan itself and calls torch's loader with no_dist=True.
    (
        "torch.distributed is disabled, unavailable or uninitialized, assuming the intent is to load "
        "in a single process.",
        UserWarning,
    ),
    # megatron passes the storage reader positionally (torch's _api_bc_check).
    ("The argument order of load has been changed", UserWarning),
    # megatron's torch_dist format is built on torch's ShardedTensor.
    ("Please use DTensor instead and we are deprecating ShardedTensor.", FutureWarning),
)


@contextlib.contextmanager
def _quiet_load_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        for message, category in _LOAD_WARNINGS:
            warnings.filterwarnings("ignore", message=re.escape(message), category=category)
        yield


def data_parallel_rank() -> int:
    return parallel_state.get_data_parallel_rank()
