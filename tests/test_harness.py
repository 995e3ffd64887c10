"""The forked gloo harness (megatron_pause/testing.py) fails loudly and never hangs.

A parallel test whose rank 1 raises while rank 0 waits in a collective would,
with a naive harness, block until the gloo timeout (minutes) and then report
the wrong rank. These tests pin the behaviour the whole suite relies on.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from megatron_pause.testing import DistributedFailure, run_distributed


def _fail_on_rank_1(rank: int, world: int, pid_dir: str) -> int:
    tmp = os.path.join(pid_dir, f".{rank}")
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, os.path.join(pid_dir, str(rank)))  # rank 1 must never see a half-written file
    if rank == 1:
        # Fail only once the others are in the fn (their pid files written), so
        # the test can check that the harness killed them.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
            os.path.exists(os.path.join(pid_dir, str(r))) for r in range(world)
        ):
            time.sleep(0.01)
        raise ValueError("boom on rank 1")
    torch.distributed.barrier()  # would wait forever for rank 1
    return rank


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_failing_rank_is_reported_and_others_are_killed(tmp_path):
    start = time.monotonic()
    with pytest.raises(DistributedFailure) as err:
        run_distributed(_fail_on_rank_1, 3, str(tmp_path), timeout=60)
    assert time.monotonic() - start < 30, "the harness waited for the blocked ranks"
    msg = str(err.value)
    assert "rank 1 of 3 failed" in msg
    assert "Traceback" in msg and "ValueError: boom on rank 1" in msg and "_fail_on_rank_1" in msg
    pids = [int((tmp_path / str(r)).read_text()) for r in range(3)]
    assert not any(_alive(pid) for pid in pids), "a rank process survived"


def _hang_on_rank_1(rank: int, world: int) -> int:
    # Both ranks finish joining the group first: a rank 0 that returned (and exited) while rank 1
    # was still in gloo's connect made rank 1 fail with "Connection reset by peer" instead of hang.
    torch.distributed.barrier()
    if rank == 1:
        time.sleep(600)
    return rank


def test_hanging_rank_hits_the_timeout():
    start = time.monotonic()
    with pytest.raises(DistributedFailure, match=r"ranks \[1\] of 2 did not finish within 5 s"):
        run_distributed(_hang_on_rank_1, 2, timeout=5)
    assert time.monotonic() - start < 20


def _slow_low_ranks(rank: int, world: int, scale: float) -> dict:
    time.sleep((world - rank) * scale)  # rank 0 finishes last
    value = torch.tensor([float(rank)])
    torch.distributed.all_reduce(value)
    return dict(rank=rank, world=world, total=value.item(), env_rank=int(os.environ["RANK"]))


def test_results_come_back_in_rank_order():
    results = run_distributed(_slow_low_ranks, 3, 0.2)
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert [r["env_rank"] for r in results] == [0, 1, 2]
    assert all(r["world"] == 3 and r["total"] == 3.0 for r in results)


def _exit_silently(rank: int, world: int) -> None:
    if rank == 0:
        os._exit(3)


def test_rank_that_dies_without_reporting_is_a_failure():
    with pytest.raises(DistributedFailure, match="(?s)rank 0 of 2 failed.*died without reporting"):
        run_distributed(_exit_silently, 2, timeout=30)


def _unpicklable(rank: int, world: int):
    return lambda: rank


def test_unpicklable_result_is_reported():
    with pytest.raises(DistributedFailure, match="not picklable"):
        run_distributed(_unpicklable, 1, timeout=30)


def test_kwargs_and_args_reach_the_body():
    def body(rank, world, a, b=0):
        return (rank, a, b)

    assert run_distributed(body, 2, "x", b=5) == [(0, "x", 5), (1, "x", 5)]
