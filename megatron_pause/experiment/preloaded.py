"""Start entry-point stages from a process that has already imported torch and megatron-core.

Importing torch, megatron-core and transformers costs about 11 s of CPU per process on the
2-core reference machine; the synthetic experiment runs over a hundred short stages, so imports
alone would be a quarter of its wall time. Python's ``forkserver`` start method pays them once:
a clean server process (started fresh, never running a tensor op or a thread) imports the
modules below and forks one child per stage. Each child is exactly what ``python -m module
argv...`` would be -- the entry point's module runs as ``__main__`` with the stage's argv and
environment, output to its log -- except that its imports are already done.

Only ``python -m <module>`` stages take this path (scripts run as subprocesses) and only on
Linux, where fork is safe for this server: it has run no OpenMP region, so children do not
inherit a broken thread pool.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PRELOAD = "megatron_pause.experiment._preload_imports"
_PR_SET_PDEATHSIG = 1


def entry_module(argv: list[str]) -> str | None:
    """The module of ``[python, -m, module, ...]``; None for any other command."""
    if len(argv) >= 3 and argv[1] == "-m":
        return argv[2]
    return None


def available() -> bool:
    return sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods()


_context = None


def _ctx():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([PRELOAD])
    return _context


def warm_up() -> None:
    """Start the server now, so its imports overlap with stages that do not need it."""
    from multiprocessing import forkserver

    _ctx()
    forkserver.ensure_running()


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a killed driver leaves no stage
    writing into a folder the next run reuses); elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: a killed driver may leave its children running


def _run_stage(module: str, args: list[str], env: dict[str, str], log_path: str) -> None:
    """The child: the stage's environment and log, then ``python -m module args``."""
    import runpy

    die_with_parent()  # the server's child; the server dies with the driver
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    import torch

    # OMP_NUM_THREADS is read when torch starts, which was before this fork.
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


class PreloadedProcess:
    """A stage started by the fork server, with the part of ``subprocess.Popen`` the launcher uses."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: str) -> None:
        module = entry_module(argv)
        if module is None:
            raise ValueError(f"not an entry-point command: {argv[:3]}")
        self._proc = _ctx().Process(target=_run_stage, args=(module, argv[3:], env, log_path), daemon=False)
        self._proc.start()
        self.pid = self._proc.pid

    def poll(self) -> int | None:
        if self._proc.is_alive():
            return None
        self._proc.join()
        return self._proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired("stage", timeout)
        return self._proc.exitcode

    def terminate(self) -> None:
        self._proc.terminate()

    def kill(self) -> None:
        self._proc.kill()
