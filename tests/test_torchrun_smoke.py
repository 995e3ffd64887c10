"""A few real ``torchrun`` worlds (5-10 s each on 2 cores, so only a few).

The forked harness used everywhere else shares the parent's imports and
patches; here every rank is a fresh interpreter started by torchrun, as in
production. The TP2 run must reproduce the single-process run.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import parity_worlds as pw

from megatron_pause.testing import free_port, run_distributed

HERE = pathlib.Path(__file__).resolve().parent


def test_torchrun_tp2_matches_single_process(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        str(HERE / "torchrun_tp2_step.py"), str(tmp_path),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    run = pw.merge_ranks(ranks)

    import torchrun_tp2_step

    ref = pw.merge_ranks(run_distributed(pw.train_body, 1, pw.REFERENCE, None, torchrun_tp2_step.STEPS))
    diff = pw.compare(run, ref)
    assert not diff.missing
    assert run["tokens"] == ref["tokens"]
    assert max(diff.loss, diff.grad_norm, diff.grad) <= 1e-5, diff
