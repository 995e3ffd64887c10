"""Checkpoints: bitwise resume, resharding, a save killed midway, tracker handling, LR schedule.

Every distributed case runs in worlds forked by ``run_distributed``; a resumed run is a
*new* world (new processes) that builds a fresh model, optimizer and scheduler and loads
the checkpoint, as a resubmitted job would.

Bitwise resume on CPU: the same layout reduces in the same order, so "20 iterations straight"
and "10, save, new processes, load, 10" must agree to the last bit in loss and grad norm. The
model has dropout (so the RNG streams must be restored), AdamW with weight decay (so the per-
parameter ``step`` and bias correction must be right) and warmup + cosine decay (so the LR
scheduler state matters). Two negative controls show the comparison is sensitive: sharing one
``step`` tensor between parameters after the load (what megatron's distributed optimizer does
with torch AdamW) and skipping the RNG restore both break equality.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import signal
import time

import pytest
import torch

from megatron_pause.config import (
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
    PrecisionConfig,
    PretrainConfig,
)
from megatron_pause.testing import DistributedFailure, run_distributed
from megatron_pause.training import checkpoint as ckpt
from megatron_pause.training.checkpoint import CONFIG_FILE, TRACKER, CheckpointError, iteration_dir

VOCAB = 128
SEQ = 16
MICRO = 2
NUM_MICROBATCHES = 4  # per global batch, split round-robin over DP ranks
TRAIN_ITERS = 20
OPTIM = OptimizerConfig(
    lr=1e-2, min_lr=1e-3, weight_decay=0.1, lr_warmup_iters=3, lr_decay_style="cosine", clip_grad=1.0
)


def _model(dropout: float) -> ModelConfig:
    return ModelConfig(
        num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, seq_length=SEQ,
        hidden_dropout=dropout, attention_dropout=dropout,
    )  # fmt: skip


def _microbatches(iteration: int, eval_batch: bool = False) -> list[dict[str, torch.Tensor]]:
    """This DP rank's share of the global batch of ``iteration`` (same on every layout)."""
    from megatron.core import parallel_state

    g = torch.Generator().manual_seed(10_000 + iteration if not eval_batch else 999)
    tokens = torch.randint(0, 100, (NUM_MICROBATCHES, MICRO, SEQ + 1), generator=g)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    return [
        dict(
            tokens=tokens[i, :, :-1],
            labels=tokens[i, :, 1:],
            loss_mask=torch.ones(MICRO, SEQ),
            position_ids=torch.arange(SEQ).expand(MICRO, SEQ),
        )  # fmt: skip
        for i in range(dp_rank, NUM_MICROBATCHES, dp)
    ]


class _Run:
    """One rank's model, optimizer and scheduler, built from the seed like a fresh job."""

    def __init__(self, parallel: ParallelConfig, dropout: float, seed: int = 7) -> None:
        from megatron_pause.distributed import init_distributed
        from megatron_pause.loss import PauseMaskedLoss
        from megatron_pause.models.gpt import build_model_chunks, transformer_config
        from megatron_pause.training.scheduler import build_scheduler
        from megatron_pause.training.step import build_optimizer, make_forward_step, wrap_model

        # megatron's distributed-optimizer checkpoint code calls gc.collect(); in a rank forked from a
        # process holding all of torch and megatron that scan costs ~0.4 s a call. Nothing imported
        # so far is garbage: exempt it from collection.
        gc.freeze()
        model = _model(dropout)
        init_distributed(parallel, model.num_layers, seed=seed)
        tcfg = transformer_config(model, parallel)
        self.chunks = wrap_model(build_model_chunks(model, tcfg, VOCAB), tcfg, parallel)
        self.optimizer = build_optimizer(self.chunks, OPTIM, parallel, PrecisionConfig())
        self.scheduler = build_scheduler(self.optimizer, OPTIM, TRAIN_ITERS)
        self.forward_step = make_forward_step(PauseMaskedLoss(VOCAB - 1))

    def train(self, iterations: range) -> list[tuple[float, float]]:
        from megatron_pause.training.step import train_step

        out = []
        for it in iterations:
            r = train_step(self.chunks, self.optimizer, self.forward_step, _microbatches(it), SEQ, MICRO)
            self.scheduler.step(increment=1)
            out.append((r.lm_loss, float(r.grad_norm)))
        return out

    def eval_loss(self) -> float:
        from megatron_pause.training.step import eval_step

        return eval_step(
            self.chunks, self.forward_step, _microbatches(0, eval_batch=True), SEQ, MICRO
        ).lm_loss


def _capture_checkpoint_log() -> list[str]:
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log = logging.getLogger(ckpt.__name__)
    log.setLevel(logging.INFO)
    log.addHandler(_Keep())
    return records


def _tie_steps(optimizer) -> None:
    """Reproduce the shared-``step`` bug: one tensor for every parameter."""
    for opt in ckpt._torch_optimizers(optimizer):
        shared = None
        for state in opt.state.values():
            shared = state["step"] if shared is None else shared
            state["step"] = shared


def _resume_world(rank, world, parallel, root, phase, sharding="fully_reshardable", dropout=0.1, save_at=10):
    """phase: straight (TRAIN_ITERS iterations) | first (save at 0 and ``save_at``) |
    resume (load, train to TRAIN_ITERS) | resume0 (load iteration 0, train 3) |
    resume_tied / resume_no_rng (negative controls)."""
    from megatron_pause.distributed import destroy_distributed

    run = _Run(parallel, dropout)
    result: dict = {}
    if phase == "straight":
        result["steps"] = run.train(range(TRAIN_ITERS))
    elif phase == "first":
        # A save before the first step: AdamW has no state yet.
        ckpt.save_checkpoint(
            root, 0, run.chunks, run.optimizer, run.scheduler, {"iteration": 0}, {}, sharding
        )
        result["steps"] = run.train(range(save_at))
        config = PretrainConfig(optimizer=OPTIM)
        config.training.train_iters = TRAIN_ITERS
        train_state = {"iteration": save_at, "consumed_samples": save_at * NUM_MICROBATCHES * MICRO}
        ckpt.save_checkpoint(
            root, save_at, run.chunks, run.optimizer, run.scheduler, train_state, config.to_dict(), sharding
        )
    else:
        iteration = 0 if phase == "resume0" else None
        loaded = ckpt.load_checkpoint(
            root, run.chunks, run.optimizer, run.scheduler, sharding_type=sharding, iteration=iteration,
            load_rng=phase != "resume_no_rng",
        )  # fmt: skip
        result["loaded"] = loaded
        if phase == "resume_tied":
            _tie_steps(run.optimizer)
        start = loaded[0]
        result["steps"] = run.train(range(start, 3 if phase == "resume0" else TRAIN_ITERS))
    destroy_distributed()
    return result


def _bitwise_resume(tmp_path, world: int, parallel: ParallelConfig, sharding: str, controls: bool = False):
    root = str(tmp_path / "ckpt")
    straight = run_distributed(_resume_world, world, parallel, root, "straight", sharding)[0]["steps"]
    first = run_distributed(_resume_world, world, parallel, root, "first", sharding)[0]["steps"]
    assert first == straight[:10]
    assert ckpt.latest_iteration(root) == 10

    resumed = run_distributed(_resume_world, world, parallel, root, "resume", sharding)[0]
    assert resumed["loaded"] == (10, {"iteration": 10, "consumed_samples": 80})
    assert resumed["steps"] == straight[10:], "resumed training differs from the uninterrupted run"

    # The checkpoint saved before any optimizer step loads into a fresh optimizer and resumes too.
    from_zero = run_distributed(_resume_world, world, parallel, root, "resume0", sharding)[0]
    assert from_zero["loaded"][0] == 0
    assert from_zero["steps"] == straight[:3]

    if controls:
        tied = run_distributed(_resume_world, world, parallel, root, "resume_tied", sharding)[0]["steps"]
        assert tied[0] == straight[10]  # the first update after the load is the first to use the step
        assert tied[1:] != straight[11:], "a shared AdamW step tensor went unnoticed"
        no_rng = run_distributed(_resume_world, world, parallel, root, "resume_no_rng", sharding)[0]["steps"]
        assert no_rng != straight[10:], "dropout RNG streams are not exercised by the resume test"
    return root


def test_bitwise_resume_one_process(tmp_path):
    root = _bitwise_resume(tmp_path, 1, ParallelConfig(), "fully_reshardable", controls=True)

    # The resolved configuration and the metadata travel with the checkpoint.
    meta = ckpt.checkpoint_config(root)
    assert meta["iteration"] == 10 and meta["train_state"]["consumed_samples"] == 80
    restored = PretrainConfig.from_dict(meta["config"])
    assert restored.optimizer == OPTIM and restored.training.train_iters == TRAIN_ITERS
    assert restored.to_dict() == meta["config"]
    assert meta["layout"]["world_size"] == 1 and meta["optimizer"]["step"] == 10.0
    assert ckpt.checkpoint_config(root, iteration=0)["optimizer"]["step"] == 0.0


@pytest.mark.parametrize("sharding", ["fully_reshardable", "dp_reshardable"])
def test_bitwise_resume_dp2_distributed_optimizer(tmp_path, sharding):
    _bitwise_resume(tmp_path, 2, ParallelConfig(use_distributed_optimizer=True), sharding)
    meta = ckpt.checkpoint_config(str(tmp_path / "ckpt"))
    assert (
        meta["optimizer"]["kind"] == ["DistributedOptimizer"]
        and meta["optimizer"]["sharding_type"] == sharding
    )


def test_bitwise_resume_pp2(tmp_path):
    _bitwise_resume(tmp_path, 2, ParallelConfig(pipeline_model_parallel_size=2), "fully_reshardable")


# ---------------------------------------------------------------------------
# Resharding: TP1 -> TP2 x PP2


def _reshard_world(rank, world, parallel, root, save):
    from megatron_pause.distributed import destroy_distributed

    logs = _capture_checkpoint_log()
    run = _Run(parallel, dropout=0.0)
    result: dict = {}
    if save:
        run.train(range(3))
        ckpt.save_checkpoint(
            root, 3, run.chunks, run.optimizer, run.scheduler, {"iteration": 3}, {}, "fully_reshardable"
        )
    else:
        result["loaded"] = ckpt.load_checkpoint(root, run.chunks, run.optimizer, run.scheduler)
    result["eval"] = run.eval_loss()
    result["lr"] = run.optimizer.param_groups[0]["lr"]
    result["steps"] = run.train(range(3, 6))
    result["logs"] = logs
    destroy_distributed()
    return result


def test_reshard_tp1_checkpoint_to_tp2_pp2(tmp_path):
    root = str(tmp_path / "ckpt")
    opt = dict(use_distributed_optimizer=True)
    ref = run_distributed(_reshard_world, 1, ParallelConfig(**opt), root, True)[0]
    tp2pp2 = ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2, **opt)
    results = run_distributed(_reshard_world, 4, tp2pp2, root, False)

    for r in results:
        assert r["loaded"] == (3, {"iteration": 3})
        assert r["eval"] == pytest.approx(ref["eval"], rel=1e-6, abs=1e-6)
        assert r["lr"] == ref["lr"]  # scheduler state
        for (loss, gnorm), (ref_loss, ref_gnorm) in zip(r["steps"], ref["steps"], strict=True):
            assert abs(loss - ref_loss) < 1e-5 and abs(gnorm - ref_gnorm) < 1e-5
    # Another layout: the RNG streams are skipped, with a note.
    assert any("RNG states not restored" in m for m in results[0]["logs"])
    assert not any("RNG" in m for m in ref["logs"])


# ---------------------------------------------------------------------------
# A save killed midway


def _kill_world(rank, world, root, kill_rank, kill_at, marker):
    """Save iteration 2, train, save iteration 3 -- killing ``kill_rank`` while
    shards are written (``kill_at="shards"``) or right before the tracker is
    rewritten (``kill_at="tracker"``)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    run = _Run(ParallelConfig(), dropout=0.0)
    run.train(range(2))
    ckpt.save_checkpoint(
        root, 2, run.chunks, run.optimizer, run.scheduler, {"iteration": 2}, {}, "fully_reshardable"
    )
    run.train(range(2, 3))
    writer_cls = filesystem_async.FileSystemWriterAsync
    if rank != kill_rank and kill_at == "shards":
        # megatron-core 0.19 writes shards from threads of each rank (0.16 forked processes). The
        # harness kills the surviving ranks when one dies; a write of theirs still running then
        # would be cut short. So the other ranks finish writing first and say so.
        write_all = writer_cls.write_preloaded_data_multithread

        def write_and_report(*args, **kwargs):
            write_all(*args, **kwargs)
            open(f"{marker}.{rank}", "w").close()

        writer_cls.write_preloaded_data_multithread = staticmethod(write_and_report)
    if rank == kill_rank:
        rank_pid = os.getpid()
        if kill_at == "shards":
            original = filesystem_async._write_item

            @functools.wraps(original)  # megatron inspects its signature
            def write_then_die(*args, **kwargs):
                # Runs in a writer thread of this rank: once the other ranks have written, write
                # one item, then the rank dies as if the node went down.
                deadline = time.monotonic() + 60
                others = [f"{marker}.{r}" for r in range(world) if r != kill_rank]
                while not all(os.path.exists(m) for m in others) and time.monotonic() < deadline:
                    time.sleep(0.01)
                result = original(*args, **kwargs)
                os.kill(rank_pid, signal.SIGKILL)
                return result

            filesystem_async._write_item = write_then_die
        else:
            original_write = ckpt._write_atomic

            def die_before_tracker(path, text):
                if path.endswith(TRACKER):
                    os.kill(rank_pid, signal.SIGKILL)
                original_write(path, text)

            ckpt._write_atomic = die_before_tracker
    ckpt.save_checkpoint(
        root, 3, run.chunks, run.optimizer, run.scheduler, {"iteration": 3}, {}, "fully_reshardable"
    )
    return "survived"


def _reload_world(rank, world, root, save_again):
    from megatron_pause.distributed import destroy_distributed

    run = _Run(ParallelConfig(), dropout=0.0)
    loaded = ckpt.load_checkpoint(root, run.chunks, run.optimizer, run.scheduler)
    weights = [p.detach().clone() for p in run.chunks[0].parameters()]
    result = {"loaded": loaded, "weights": weights, "steps": run.train(range(loaded[0], loaded[0] + 1))}
    if save_again:
        ckpt.save_checkpoint(
            root, 3, run.chunks, run.optimizer, run.scheduler, {"iteration": 3}, {}, "fully_reshardable"
        )
        lr = run.optimizer.param_groups[0]["lr"]
        run.train(range(3, 4))
        # Loading into a scheduler that has stepped since: megatron's load_state_dict adds the saved
        # count to the current one unless load_checkpoint resets it.
        result["reloaded"] = ckpt.load_checkpoint(root, run.chunks, run.optimizer, run.scheduler)
        result["reloaded_schedule"] = (run.scheduler.num_steps, run.optimizer.param_groups[0]["lr"] == lr)
    destroy_distributed()
    return result


def _weights_at_iteration_2(rank, world):
    from megatron_pause.distributed import destroy_distributed

    run = _Run(ParallelConfig(), dropout=0.0)
    run.train(range(2))
    out = {
        "weights": [p.detach().clone() for p in run.chunks[0].parameters()],
        "next": run.train(range(2, 3)),
    }
    destroy_distributed()
    return out


@pytest.mark.parametrize(("world", "kill_rank", "kill_at"), [(2, 1, "shards"), (1, 0, "tracker")])
def test_killed_save_leaves_previous_checkpoint(tmp_path, world, kill_rank, kill_at):
    root = str(tmp_path / "ckpt")
    with pytest.raises(
        DistributedFailure, match=f"(?s)rank {kill_rank} of {world} failed.*died without reporting"
    ):
        run_distributed(_kill_world, world, root, kill_rank, kill_at, str(tmp_path / "written"), timeout=120)

    assert ckpt.latest_iteration(root) == 2
    with open(os.path.join(root, TRACKER)) as f:
        assert f.read() == "2"
    if kill_at == "shards":
        partial = iteration_dir(root, 3) + ".partial"
        assert os.path.isdir(partial) and not os.path.exists(iteration_dir(root, 3))
        written = os.listdir(partial)
        assert any(n.startswith(f"__{kill_rank}_") for n in written), f"killed before writing: {written}"
    else:
        # Complete and renamed, but never named by the tracker.
        assert os.path.isfile(os.path.join(iteration_dir(root, 3), CONFIG_FILE))

    expected = run_distributed(_weights_at_iteration_2, world)[0]
    # The previous checkpoint loads (the stale partial / unreferenced iteration is ignored), and
    # a new save of iteration 3 replaces the leftovers and moves the tracker.
    after = run_distributed(_reload_world, world, root, True)[0]
    assert after["loaded"] == (2, {"iteration": 2})
    assert all(torch.equal(a, b) for a, b in zip(after["weights"], expected["weights"], strict=True))
    assert after["steps"] == expected["next"]
    assert after["reloaded"] == (3, {"iteration": 3})
    assert after["reloaded_schedule"] == (3, True)
    assert ckpt.latest_iteration(root) == 3
    assert sorted(os.listdir(root)) == sorted([TRACKER, "iter_0000002", "iter_0000003"])


# ---------------------------------------------------------------------------
# Tracker and directory handling (no process group needed)


def _fake_checkpoint(root, iteration: int, suffix: str = "") -> str:
    path = iteration_dir(str(root), iteration) + suffix
    os.makedirs(path)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump({"iteration": iteration, "config": {"x": iteration}}, f)
    return path


def _write_tracker(root, text: str) -> None:
    with open(os.path.join(str(root), TRACKER), "w") as f:
        f.write(text)


def test_no_checkpoint_means_fresh_start(tmp_path):
    assert ckpt.latest_iteration(None) is None
    assert ckpt.latest_iteration(str(tmp_path / "does-not-exist")) is None
    assert ckpt.latest_iteration(str(tmp_path)) is None
    os.makedirs(iteration_dir(str(tmp_path), 5) + ".partial")  # a killed first save
    assert ckpt.latest_iteration(str(tmp_path)) is None
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ckpt.checkpoint_config(str(tmp_path))


def test_tracker_names_the_checkpoint(tmp_path):
    _fake_checkpoint(tmp_path, 4)
    _fake_checkpoint(tmp_path, 8)
    _write_tracker(tmp_path, "4\n")
    assert ckpt.latest_iteration(str(tmp_path)) == 4  # the tracker, not the newest directory
    assert ckpt.checkpoint_config(str(tmp_path))["config"] == {"x": 4}
    assert ckpt.checkpoint_config(str(tmp_path), iteration=8)["config"] == {"x": 8}


@pytest.mark.parametrize(
    ("text", "message"), [("", "corrupt"), ("4x", "corrupt"), ("-1", "negative"), ("9", "missing")]
)
def test_bad_tracker_is_a_clear_error(tmp_path, text, message):
    _fake_checkpoint(tmp_path, 4)
    _write_tracker(tmp_path, text)
    with pytest.raises(CheckpointError, match=message):
        ckpt.latest_iteration(str(tmp_path))


def test_incomplete_named_checkpoint_is_an_error(tmp_path):
    os.makedirs(iteration_dir(str(tmp_path), 4))  # no megatron_pause.json: never completed
    _write_tracker(tmp_path, "4")
    with pytest.raises(CheckpointError, match="missing or incomplete"):
        ckpt.latest_iteration(str(tmp_path))


def test_checkpoints_without_tracker_and_checkpoint_dir_as_root(tmp_path):
    _fake_checkpoint(tmp_path, 3)
    _fake_checkpoint(tmp_path, 6)
    with pytest.raises(CheckpointError, match=r"no latest_checkpointed_iteration.txt.*echo 6"):
        ckpt.latest_iteration(str(tmp_path))
    with pytest.raises(CheckpointError, match="pass its parent"):
        ckpt.latest_iteration(iteration_dir(str(tmp_path), 3))


def test_resave_killed_between_renames_falls_back_to_old(tmp_path):
    _fake_checkpoint(tmp_path, 7, ".old")  # iteration 7 moved aside, new one not yet renamed in
    _write_tracker(tmp_path, "7")
    assert ckpt.latest_iteration(str(tmp_path)) == 7
    assert ckpt.checkpoint_config(str(tmp_path))["iteration"] == 7


def test_tracker_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / TRACKER)
    ckpt._write_atomic(path, "1")
    real_replace = os.replace

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ckpt._write_atomic(path, "2")
    monkeypatch.setattr(os, "replace", real_replace)
    with open(path) as f:
        assert f.read() == "1"  # the old content survives a failed write


# ---------------------------------------------------------------------------
# LR schedule


class _Groups:
    def __init__(self) -> None:
        self.param_groups = [{"params": [], "wd_mult": 1.0}, {"params": [], "wd_mult": 0.0}]


def _lrs(scheduler, iterations: int) -> list[float]:
    out = [scheduler.optimizer.param_groups[0]["lr"]]
    for _ in range(iterations):
        scheduler.step(increment=1)
        out.append(scheduler.optimizer.param_groups[0]["lr"])
    return out


def test_scheduler_warmup_then_decay_in_iterations():
    from megatron_pause.training.scheduler import build_scheduler

    cfg = OptimizerConfig(lr=1.0, min_lr=0.1, weight_decay=0.05, lr_warmup_iters=4, lr_decay_style="cosine")
    sched = build_scheduler(_Groups(), cfg, train_iters=14)
    lrs = _lrs(sched, 16)
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])  # linear warmup, iteration by iteration
    assert lrs[9] == pytest.approx(0.55)  # half way through the cosine: (lr + min_lr) / 2
    assert lrs[14] == pytest.approx(0.1) and lrs[16] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    groups = sched.optimizer.param_groups
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0  # constant, wd_mult

    linear = build_scheduler(
        _Groups(), OptimizerConfig(lr=1.0, min_lr=0.0, lr_decay_style="linear", lr_decay_iters=10), 99
    )
    assert _lrs(linear, 10)[5] == pytest.approx(0.5)
    constant = build_scheduler(
        _Groups(), OptimizerConfig(lr=0.3, lr_warmup_iters=2, lr_decay_style="constant"), 10
    )
    assert _lrs(constant, 6)[2:] == pytest.approx([0.3] * 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(lr_warmup_iters=10), "--lr-warmup-iters"),
        (dict(min_lr=1.0, lr=0.5), "--min-lr"),
        (dict(lr_decay_style="exp"), "--lr-decay-style"),
        (dict(lr_decay_iters=0), "--lr-decay-iters"),
    ],
)
def test_scheduler_rejects_bad_settings(kwargs, message):
    from megatron_pause.training.scheduler import build_scheduler

    with pytest.raises(ValueError, match=message):
        build_scheduler(_Groups(), OptimizerConfig(**kwargs), train_iters=10)
