"""Checkpoints written by older megatron-core releases keep loading.

``tests/fixtures/ckpt_mcore_0_16_1`` was written once by megatron-core 0.16.1 (see its README): a
1-process run with the distributed optimizer, saved at iteration 4 of 6. Resuming it here must give
the loss and grad norm that 0.16.1 itself logged for iterations 5 and 6 (model, optimizer moments,
step count, LR schedule and data position all come back). On the CPU that wrote the fixture that
is bitwise; on another x86 CPU torch's fp32 kernels reduce in another order (on an AVX-512/AMX
Xeon, ``MKL_CBWR`` alone changes which of the four numbers match exactly), measured at <= 8.4e-8
relative. So the check is to 1e-6 relative: resuming without the Adam moments moves iteration 6 by
2.1e-5 (loss) and 7.1e-3 (grad norm), 21x and 7000x past it. 0.19 reads 0.16's ``common.pt`` but
no longer writes it, so the format is forward-only; the version each checkpoint was written with
is recorded in ``megatron_pause.json``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from megatron_pause.testing import run_distributed

FIXTURE = Path(__file__).parent / "fixtures" / "ckpt_mcore_0_16_1"
ARGS = (
    "--num-layers 2 --hidden-size 16 --ffn-hidden-size 32 --num-attention-heads 2 --seq-length 32 --mock-data "
    "--micro-batch-size 2 --global-batch-size 4 --lr 1e-3 --lr-warmup-iters 1 --train-iters 6 --log-interval 1 "
    "--eval-interval 100 --eval-iters 0 --use-distributed-optimizer --seed 7"
).split()


RTOL = 1e-6  # see the module docstring: CPU-kernel noise is <= 8.4e-8, a lost optimizer state >= 2.1e-5


def _main(rank: int, world: int, argv: list[str], drop_moments: bool) -> int:
    from megatron_pause.pretrain import main
    from megatron_pause.training import checkpoint

    if drop_moments:  # the deliberately broken resume: weights and schedule, fresh Adam moments
        load = checkpoint.load_checkpoint
        checkpoint.load_checkpoint = lambda *a, **k: load(*a, **{**k, "load_optimizer_state": False})
    return main(argv)


def _resume(tmp_path: Path, drop_moments: bool = False) -> tuple[Path, dict[int, dict]]:
    """Resume a copy of the fixture to iteration 6: ``(checkpoint dir, {iteration: metrics})``."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, ckpt)  # the resumed run saves into it
    metrics = tmp_path / "metrics.jsonl"
    argv = [*ARGS, "--load", str(ckpt), "--save", str(ckpt), "--save-interval", "100"]
    argv += ["--metrics-file", str(metrics)]
    assert run_distributed(_main, 1, argv, drop_moments, timeout=300) == [0]
    logged = {}
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "train":
            logged[rec["iteration"]] = rec
    return ckpt, logged


def _mismatches(logged: dict[int, dict]) -> list[str]:
    expected = json.loads((FIXTURE / "expected_after_resume.json").read_text())
    return [
        f"iteration {it} {key}: {logged[int(it)][key]!r} != {ref[key]!r}"
        for it, ref in expected.items()
        for key in ("lm_loss", "grad_norm")
        if not math.isclose(logged[int(it)][key], ref[key], rel_tol=RTOL, abs_tol=0.0)
    ]


def test_checkpoint_written_by_megatron_core_0_16_1_resumes(tmp_path):
    assert (FIXTURE / "iter_0000004" / "common.pt").exists()  # the 0.16 layout, which 0.19 no longer writes
    assert "megatron_core" not in json.loads((FIXTURE / "iter_0000004" / "megatron_pause.json").read_text())
    ckpt, logged = _resume(tmp_path)
    assert sorted(logged) == [5, 6]  # resumed at 4: the data position and iteration came back
    assert _mismatches(logged) == []
    # The final save is in 0.19's format and says which megatron-core wrote it.
    meta = json.loads((ckpt / "iter_0000006" / "megatron_pause.json").read_text())
    from megatron_pause import platform

    assert meta["megatron_core"] == platform.megatron_core_version()


def test_the_tolerance_catches_a_resume_that_loses_the_optimizer_state(tmp_path):
    _, logged = _resume(tmp_path, drop_moments=True)
    assert sorted(logged) == [5, 6]
    # Iteration 5 runs on the restored weights; the lost moments show from its update on.
    assert [m.split(":")[0] for m in _mismatches(logged)] == ["iteration 6 lm_loss", "iteration 6 grad_norm"]
