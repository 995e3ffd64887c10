"""Run a plan's incomplete stages as local processes, up to ``max_parallel`` at a time.

Each stage is one process of the project's own entry point (single process, gloo on CPU), with
its output in ``<stage>/log.txt``. A stage starts once its dependencies are complete; one that
fails blocks only what depends on it, and the rest of the grid goes on. The marker that makes a
stage "complete" is written only after a zero exit and with every expected output present.

Entry-point stages (``python -m <module>``) are forked from a server process that has
imported torch and megatron-core once (:mod:`megatron_pause.experiment.preloaded`; ``preload=False``
starts fresh interpreters instead); the prepare scripts always run as fresh processes.

Killing the driver: SIGINT/SIGTERM stop the running stages (SIGTERM, which the trainers answer by
saving) and exit; SIGKILL takes the children with it (they are started with PR_SET_PDEATHSIG), so
no orphan keeps writing into a folder that the next run will reuse.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from megatron_pause.experiment import preloaded
from megatron_pause.experiment.plan import Plan, Stage

_KIND_ORDER = {"prepare": 0, "pretrain": 1, "finetune": 2, "evaluate": 3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class _Running:
    stage: Stage
    proc: subprocess.Popen | preloaded.PreloadedProcess
    start: float
    log: object


@dataclass
class LocalOutcome:
    completed: list[str]
    failed: list[str]
    blocked: list[str]
    skipped: list[str]
    wall_s: float

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


class LocalLauncher:
    def __init__(
        self,
        plan: Plan,
        max_parallel: int,
        threads_per_run: int | None = None,
        print_fn: Callable[[str], None] = print,
        poll_s: float = 0.2,
        preload: bool = True,
    ):
        self.plan = plan
        self.max_parallel = max(1, max_parallel)
        self.threads = threads_per_run or max(1, (os.cpu_count() or 1) // self.max_parallel)
        self.print = print_fn
        self.poll_s = poll_s
        self.preload = preload and preloaded.available()
        self._stop = False

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Each stage is its own single-process world: inherited torchrun/Slurm variables would make
        # it wait for ranks that do not exist, and parallel stages need their own rendezvous port.
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
            env.pop(k, None)
        env["MASTER_ADDR"] = "127.0.0.1"
        env["MASTER_PORT"] = str(_free_port())
        env["OMP_NUM_THREADS"] = str(self.threads)
        env["PYTHONUNBUFFERED"] = "1"
        # The checkout the driver runs from comes first, as in the Slurm job body.
        from megatron_pause.experiment.plan import REPO

        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _start(self, stage: Stage) -> _Running:
        stage.prepare_dir()
        log = open(stage.log, "a")
        log.write(f"+ {' '.join(stage.argv)}\n")
        log.flush()
        command = stage.command(sys.executable)
        if self.preload and preloaded.entry_module(command):
            proc = preloaded.PreloadedProcess(command, self._env(), stage.log)
        else:
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                preexec_fn=preloaded.die_with_parent,
            )
        return _Running(stage, proc, time.monotonic(), log)

    def _eta(
        self, pending: list[Stage], running: dict[str, _Running], durations: dict[str, list[float]]
    ) -> str:
        every = [d for ds in durations.values() for d in ds]
        if not every:
            return "ETA n/a"

        def estimate(kind: str) -> float:
            ds = durations.get(kind) or every
            return sum(ds) / len(ds)

        now = time.monotonic()
        left = sum(estimate(s.kind) for s in pending)
        left += sum(max(0.0, estimate(r.stage.kind) - (now - r.start)) for r in running.values())
        return f"ETA {_format_duration(left / self.max_parallel)}"

    def _on_signal(self, signum, frame) -> None:
        self._stop = True

    def run(self) -> LocalOutcome:
        stages = self.plan.stages
        skipped = [s.id for s in stages.values() if s.is_complete()]
        done: set[str] = set(skipped)
        pending = [s for s in stages.values() if s.id not in done]
        failed: list[str] = []
        blocked: list[str] = []
        running: dict[str, _Running] = {}
        durations: dict[str, list[float]] = {}
        total = len(stages)
        t0 = time.monotonic()
        self.print(
            f"experiment {self.plan.spec.name}: {total} stages, {len(skipped)} already complete, "
            f"{len(pending)} to run, up to {self.max_parallel} at a time ({self.threads} threads each); "
            f"output in {self.plan.out}"
        )
        if self.preload and any(preloaded.entry_module(s.argv) for s in pending):
            preloaded.warm_up()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while (pending or running) and not self._stop:
                # Stages whose dependency failed can never run.
                bad = set(failed) | set(blocked)
                for s in [s for s in pending if any(d in bad for d in s.deps)]:
                    pending.remove(s)
                    blocked.append(s.id)
                # Later stages first: a finished finetuning is evaluated before the next one starts,
                # so results (and the report) fill in while the grid runs.
                ready = [s for s in pending if all(d in done for d in s.deps)]
                for s in sorted(ready, key=lambda s: -_KIND_ORDER.get(s.kind, 0)):
                    if len(running) >= self.max_parallel:
                        break
                    pending.remove(s)
                    running[s.id] = self._start(s)
                    self.print(f"  started  {s.id}")
                time.sleep(self.poll_s)
                for sid, r in list(running.items()):
                    code = r.proc.poll()
                    if code is None:
                        continue
                    del running[sid]
                    r.log.close()
                    wall = time.monotonic() - r.start
                    missing = r.stage.missing_outputs()
                    if code == 0 and not missing:
                        r.stage.mark_complete(wall)
                        done.add(sid)
                        durations.setdefault(r.stage.kind, []).append(wall)
                        status = f"finished {sid} in {_format_duration(wall)}"
                    else:
                        failed.append(sid)
                        why = f"exit status {code}" if code else f"no {', '.join(missing)}"
                        status = f"FAILED   {sid} ({why}); log: {r.stage.log}\n{_tail(r.stage.log)}"
                    n_done = len(done)
                    self.print(
                        f"[{n_done}/{total} done, {len(running)} running, {len(failed)} failed, "
                        f"{self._eta(pending, running, durations)}] {status}"
                    )
        finally:
            if running:
                self.print(f"stopping {len(running)} running stage(s)")
            for r in running.values():
                r.proc.terminate()
            deadline = time.monotonic() + 30
            for r in running.values():
                try:
                    r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    r.proc.wait()
                r.log.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self._stop:
            raise KeyboardInterrupt("experiment interrupted; rerun the same command to continue")
        completed = [s for s in done if s not in skipped]
        return LocalOutcome(completed, failed, blocked, skipped, time.monotonic() - t0)


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.readlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"    | {line}" for line in text).rstrip()
