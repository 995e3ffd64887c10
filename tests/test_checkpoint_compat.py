"""Checkpoints written by older megatron-core releases keep loading.

``tests/fixtures/ckpt_mcore_0_16_1`` was written once by megatron-core 0.16.1 (see its README): a
1-process run with the distributed optimizer, saved at iteration 4 of 6. Resuming it here must give
the loss and grad norm that 0.16.1 itself logged for iterations 5 and 6 -- bitwise, as measured
when we moved to 0.19.2 (model, optimizer moments, step count, LR schedule and data position all
come back). 0.19 reads 0.16's ``common.pt`` but no longer writes it, so the format is forward-only;
the version each checkpoint was written with is recorded in ``megatron_pause.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from megatron_pause.testing import run_distributed

FIXTURE = Path(__file__).parent / "fixtures" / "ckpt_mcore_0_16_1"
ARGS = (
    "--num-layers 2 --hidden-size 16 --ffn-hidden-size 32 --num-attention-heads 2 --seq-length 32 --mock-data "
    "--micro-batch-size 2 --global-batch-size 4 --lr 1e-3 --lr-warmup-iters 1 --train-iters 6 --log-interval 1 "
    "--eval-interval 100 --eval-iters 0 --use-distributed-optimizer --seed 7"
).split()


def _main(rank: int, world: int, argv: list[str]) -> int:
    from megatron_pause.pretrain import main

    return main(argv)


def test_checkpoint_written_by_megatron_core_0_16_1_resumes_bitwise(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, ckpt)  # the resumed run saves into it
    assert (ckpt / "iter_0000004" / "common.pt").exists()  # the 0.16 layout, which 0.19 no longer writes
    assert "megatron_core" not in json.loads((ckpt / "iter_0000004" / "megatron_pause.json").read_text())
    metrics = tmp_path / "metrics.jsonl"
    argv = [*ARGS, "--load", str(ckpt), "--save", str(ckpt), "--save-interval", "100"]
    assert run_distributed(_main, 1, [*argv, "--metrics-file", str(metrics)], timeout=300) == [0]

    logged = {}
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "train":
            logged[rec["iteration"]] = rec
    assert sorted(logged) == [5, 6]  # resumed at 4: the data position and iteration came back
    expected = json.loads((FIXTURE / "expected_after_resume.json").read_text())
    for it, ref in expected.items():
        assert logged[int(it)]["lm_loss"] == ref["lm_loss"], f"iteration {it}"
        assert logged[int(it)]["grad_norm"] == ref["grad_norm"], f"iteration {it}"
    # The final save is in 0.19's format and says which megatron-core wrote it.
    meta = json.loads((ckpt / "iter_0000006" / "megatron_pause.json").read_text())
    from megatron_pause import platform

    assert meta["megatron_core"] == platform.megatron_core_version()
