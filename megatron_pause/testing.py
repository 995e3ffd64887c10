"""Run a function in N gloo processes, forked from the current one.

A ``torchrun`` world costs 5-10 s on a 2-core machine, most of it importing
megatron.core in every rank. Forking ranks from a process that has already
imported everything costs milliseconds, so the parity suite can afford a
world per test. Each world gets a fresh TCP port; each child leaves with
``os._exit`` (no atexit/pytest teardown in children); a failure or timeout on
any rank is reported with that rank's traceback, and the other ranks -- which
would otherwise block forever in a collective -- are killed.

The same function runs unchanged under ``torchrun`` (see
``tests/test_torchrun_smoke.py``); on GPUs the backend is NCCL.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any


class DistributedFailure(AssertionError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn: Callable[..., Any], rank: int, world_size: int, port: int, wfd: int, args, kwargs) -> None:
    import torch

    from megatron_pause import platform

    status, payload = "ok", None
    try:
        torch.set_num_threads(1)
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        platform.install()
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
            timeout=timedelta(seconds=120),
        )  # fmt: skip
        payload = fn(rank, world_size, *args, **kwargs)
    except BaseException:
        status, payload = "error", traceback.format_exc()
    try:
        data = pickle.dumps((status, payload))
    except Exception:
        data = pickle.dumps(("error", f"result of rank {rank} is not picklable:\n{traceback.format_exc()}"))
    with os.fdopen(wfd, "wb") as w:
        w.write(data)
    os._exit(0)


def run_distributed(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 180, **kwargs: Any
) -> list[Any]:
    """Call ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` forked
    gloo ranks; return the per-rank results (picklable) in rank order."""
    port = free_port()
    procs: dict[int, tuple[int, int]] = {}  # rank -> (pid, read fd)
    for rank in range(world_size):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            # Own process group, so that killing a rank also kills what it
            # forked (megatron's checkpoint writer processes).
            os.setpgid(0, 0)
            _child(fn, rank, world_size, port, w, args, kwargs)
        try:
            os.setpgid(pid, pid)  # also from the parent: no race with the child's own call
        except (PermissionError, ProcessLookupError):
            pass
        os.close(w)
        procs[rank] = (pid, r)

    buffers = {rank: b"" for rank in procs}
    open_fds = {r: rank for rank, (_, r) in procs.items()}
    deadline = time.monotonic() + timeout
    failed: dict[int, str] = {}
    while open_fds and not failed:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(list(open_fds), [], [], min(left, 1.0))
        for fd in ready:
            chunk = os.read(fd, 1 << 20)
            rank = open_fds[fd]
            if chunk:
                buffers[rank] += chunk
                continue
            del open_fds[fd]
            os.close(fd)
            try:
                status, payload = pickle.loads(buffers[rank])
            except Exception:
                status, payload = "error", "rank died without reporting (crash or os._exit before the result)"
            if status != "ok":
                failed[rank] = payload
            else:
                buffers[rank] = payload
    timed_out = sorted(open_fds.values())
    for rank, (pid, _) in procs.items():
        if rank in failed or rank in timed_out or failed:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        os.waitpid(pid, 0)
    for fd in open_fds:
        os.close(fd)
    if failed:
        first = min(failed)
        others = ", ".join(str(r) for r in sorted(failed) if r != first)
        raise DistributedFailure(
            f"rank {first} of {world_size} failed"
            + (f" (also ranks {others})" if others else "")
            + f":\n{failed[first]}"
        )
    if timed_out:
        raise DistributedFailure(
            f"ranks {timed_out} of {world_size} did not finish within {timeout:.0f} s (killed)"
        )
    return [buffers[rank] for rank in range(world_size)]
