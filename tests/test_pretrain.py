"""End-to-end tests of ``megatron_pause.pretrain`` on CPU: resume, resharding, signals, NaNs.

Each run is the real entry point (``main(argv)``) in forked gloo ranks; losses
are read back from the metrics file, whose floats round-trip exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from megatron_pause.testing import run_distributed
from megatron_pause.training.checkpoint import latest_iteration

TINY = [
    "--mock-data", "--num-layers", "4", "--hidden-size", "32", "--ffn-hidden-size", "64",
    "--num-attention-heads", "4", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "8",
    "--lr", "3e-3", "--min-lr", "3e-4", "--lr-warmup-iters", "3", "--weight-decay", "0.1",
    "--log-interval", "1", "--eval-iters", "2", "--seed", "11",
]  # fmt: skip


def _main(rank: int, world: int, argv: list[str]) -> int:
    from megatron_pause.pretrain import main

    return main(argv)


def _pretrain(world: int, argv: list[str]) -> None:
    codes = run_distributed(_main, world, argv, timeout=300)
    assert codes == [0] * world


def _metrics(path: str, split: str = "train") -> dict[int, dict]:
    out = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["split"] == split:
                out[rec["iteration"]] = rec
    return out


def test_resume_is_bitwise_identical(tmp_path):
    straight, resumed = tmp_path / "straight.jsonl", tmp_path / "resumed.jsonl"
    ckpt = str(tmp_path / "ckpt")
    common = [*TINY, "--train-iters", "20", "--eval-interval", "100", "--use-distributed-optimizer"]
    _pretrain(2, [*common, "--metrics-file", str(straight)])
    # The same run, stopped at iteration 10 and resumed from its checkpoint into the same metrics file.
    resumable = [*common, "--metrics-file", str(resumed), "--save", ckpt]
    _pretrain(2, [*resumable, "--exit-interval", "10"])
    assert latest_iteration(ckpt) == 10
    _pretrain(2, [*resumable, "--load", ckpt])
    a, b = _metrics(str(straight)), _metrics(str(resumed))
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for it in range(1, 21):
        assert a[it]["lm_loss"] == b[it]["lm_loss"], (
            f"iteration {it}: {a[it]['lm_loss']} != {b[it]['lm_loss']}"
        )
        assert a[it]["grad_norm"] == b[it]["grad_norm"]
        assert a[it]["lr"] == b[it]["lr"]
    # Mock tokens are uniform noise (nothing to learn), but the losses move from
    # step to step, so the comparison above is not between constants.
    assert len({r["lm_loss"] for r in a.values()}) > 15


def test_tp1_checkpoint_evaluates_identically_at_tp2_pp2(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    m1, m4 = tmp_path / "tp1.jsonl", tmp_path / "tp2pp2.jsonl"
    common = [*TINY, "--train-iters", "4", "--eval-interval", "100"]
    _pretrain(1, [*common, "--save", ckpt])
    _pretrain(1, [*common, "--load", ckpt, "--skip-train", "--metrics-file", str(m1)])
    # Evaluation only: optimizer flags that differ from the saved run's do not matter.
    m_lr = tmp_path / "other_lr.jsonl"
    _pretrain(1, [*common, "--load", ckpt, "--skip-train", "--lr", "1e-2", "--min-lr", "1e-3",
                  "--metrics-file", str(m_lr)])  # fmt: skip
    _pretrain(
        4,
        [*common, "--load", ckpt, "--skip-train", "--metrics-file", str(m4),
         "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"],
    )  # fmt: skip
    (v1,), (v4,) = _metrics(str(m1), "valid").values(), _metrics(str(m4), "valid").values()
    (v_lr,) = _metrics(str(m_lr), "valid").values()
    assert v_lr["lm_loss"] == v1["lm_loss"] and v_lr["iteration"] == 4
    assert v1["iteration"] == v4["iteration"] == 4
    assert v1["tokens"] == v4["tokens"] > 0
    assert v4["lm_loss"] == pytest.approx(v1["lm_loss"], rel=1e-5)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    ckpt = tmp_path / "ckpt"
    metrics = tmp_path / "m.jsonl"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        [sys.executable, "-m", "megatron_pause.pretrain", *TINY, "--train-iters", "100000", "--eval-interval", "100000",
         "--save", str(ckpt), "--metrics-file", str(metrics)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stop signal" in out
    last_logged = max(_metrics(str(metrics)))
    assert latest_iteration(str(ckpt)) == last_logged >= 3


def test_nonfinite_loss_stops_with_clear_error(tmp_path):
    argv = [
        *TINY,
        "--train-iters",
        "30",
        "--eval-interval",
        "100",
        "--lr",
        "1e30",
        "--min-lr",
        "1e29",
        "--clip-grad",
        "0",
    ]
    assert run_distributed(_main, 1, argv, timeout=300) == [3]  # NonFiniteLoss: message on stderr, exit 3
    metrics = tmp_path / "m.jsonl"
    _pretrain(1, [*argv, "--skip-nonfinite-steps", "--metrics-file", str(metrics)])
    recs = _metrics(str(metrics))
    assert len(recs) == 30
    assert any(r["skipped"] for r in recs.values())


def test_contradictory_layout_is_rejected_before_any_process_group():
    env = dict(os.environ, WORLD_SIZE="3", RANK="0", PYTHONWARNINGS="ignore")
    out = subprocess.run(
        [sys.executable, "-m", "megatron_pause.pretrain", *TINY, "--train-iters", "2", "--eval-interval", "1",
         "--tensor-model-parallel-size", "2"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--tensor-model-parallel-size" in out.stderr


def test_finetune_from_a_pause_free_checkpoint_initialises_the_pause_rows(tmp_path, capfd):
    plain, paused = str(tmp_path / "plain"), str(tmp_path / "paused")
    common = [*TINY, "--train-iters", "4", "--eval-interval", "100"]
    _pretrain(1, [*common, "--pause-fraction", "0", "--save", plain])
    _pretrain(1, [*common, "--save", paused])
    capfd.readouterr()
    finetune = [*TINY, "--train-iters", "4", "--eval-interval", "100", "--finetune"]
    _pretrain(1, [*finetune, "--load", plain])
    assert "saw no pause tokens: initialised the <pause> rows" in capfd.readouterr().out
    _pretrain(1, [*finetune, "--load", paused])
    assert "initialised the <pause> rows" not in capfd.readouterr().out
