"""The fault matrix: every way a checkpoint can be unreadable gets one clear error, and
``--ckpt-step`` then resumes from the previous, intact checkpoint exactly.

Each case copies a good checkpoint directory (iterations 2 and 4 of a 4-iteration run), breaks
it the way storage, a partial copy or a hand edit would, and runs the real entry point
(``megatron_pause.pretrain.main``) against it. Expected: exit status 2, a message on stderr that
names the checkpoint directory and the failing file, lists the intact iteration 2 and suggests
``--ckpt-step``, and no Python traceback. Nothing falls back to iteration 2 on its own.

The run that saved the checkpoints is the uninterrupted reference: ``--ckpt-step 2`` from a
broken directory must reproduce its iterations 3 and 4 to the last bit (loss, grad norm, LR), at
TP1 (whose stderr also shows no stray warning fragment) and at TP2 x PP2 with one rank's shard
file truncated.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import pytest

from megatron_pause.testing import run_distributed
from megatron_pause.training.checkpoint import CONFIG_FILE, TRACKER, iteration_dir, verify_checkpoint

ARGS = [
    "--mock-data", "--num-layers", "4", "--hidden-size", "32", "--ffn-hidden-size", "64",
    "--num-attention-heads", "4", "--seq-length", "16", "--micro-batch-size", "2", "--global-batch-size", "4",
    "--lr", "3e-3", "--min-lr", "3e-4", "--lr-warmup-iters", "1", "--log-interval", "1",
    "--eval-iters", "0", "--seed", "5", "--train-iters", "4",
]  # fmt: skip
TP2PP2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]
# Source lines that Python printed for megatron-core's load warnings (see checkpoint._LOAD_WARNINGS).
STRAY_FRAGMENTS = ("checkpoint.load_state_dict(", "and md.size != obj.size()", "return func(*args, **kwargs)")


def _main(rank: int, world: int, argv: list[str]) -> int:
    from megatron_pause.pretrain import main

    return main(argv)


def _main_with_default_warnings(rank: int, world: int, argv: list[str]) -> int:
    """``main`` with Python's default warning handling, as in a fresh interpreter: each warning
    printed to stderr with its source line, once per location (the forked rank inherits pytest's
    recording of warnings, which would hide them)."""

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.resetwarnings()
    warnings.simplefilter("default")
    warnings.showwarning = show
    return _main(rank, world, argv)


def _metrics(path) -> dict[int, tuple]:
    with open(path) as f:
        records = [json.loads(line) for line in f]
    return {r["iteration"]: (r["lm_loss"], r["grad_norm"], r["lr"]) for r in records if r["split"] == "train"}


def _saved_run(tmp_path_factory, name: str, world: int, layout: list[str]) -> tuple[str, dict[int, tuple]]:
    """A 4-iteration run saving at 2 and 4: the pristine checkpoints and the reference metrics."""
    base = tmp_path_factory.mktemp(name)
    root, metrics = str(base / "ckpt"), base / "metrics.jsonl"
    argv = [*ARGS, *layout, "--save", root, "--save-interval", "2", "--metrics-file", str(metrics)]
    assert run_distributed(_main, world, argv, timeout=300) == [0] * world
    return root, _metrics(metrics)


@pytest.fixture(scope="module")
def tp1_run(tmp_path_factory):
    return _saved_run(tmp_path_factory, "tp1", 1, [])


def _broken_copy(pristine: str, dest) -> str:
    root = str(dest / "ckpt")
    shutil.copytree(pristine, root)
    return root


def _truncate(path: str) -> str:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


def _garbage(path: str) -> str:
    with open(path, "wb") as f:
        f.write(b"\x80\x04garbage\xff\x00 not what was written")
    return path


def _remove(path: str) -> str:
    os.remove(path)
    return path


def _edit_meta(path: str, **changes) -> str:
    with open(path) as f:
        meta = json.load(f)
    meta.update(changes)
    with open(path, "w") as f:
        json.dump(meta, f)
    return path


# name -> how to break a copy of the checkpoints (returns the path the message must name), extra argv,
# and the intact iterations the message lists (iteration 4 itself is intact when only the tracker or
# the requested step is wrong).
FAULTS = {
    "truncated shard": (lambda r: _truncate(os.path.join(iteration_dir(r, 4), "__0_0.distcp")), []),
    "missing shard": (lambda r: _remove(os.path.join(iteration_dir(r, 4), "__0_0.distcp")), []),
    "torch metadata does not parse": (lambda r: _garbage(os.path.join(iteration_dir(r, 4), ".metadata")), []),
    "megatron metadata does not parse": (
        lambda r: _garbage(os.path.join(iteration_dir(r, 4), "metadata.json")),
        [],
    ),
    "megatron_pause.json does not parse": (
        lambda r: _garbage(os.path.join(iteration_dir(r, 4), CONFIG_FILE)),
        [],
    ),
    "tracker is garbage": (lambda r: _garbage(os.path.join(r, TRACKER)), [], [2, 4]),
    "tracker names a missing directory": (
        lambda r: (shutil.rmtree(iteration_dir(r, 4)), iteration_dir(r, 4))[1],
        [],
    ),
    "tracker names an incomplete directory": (
        lambda r: _remove(os.path.join(iteration_dir(r, 4), CONFIG_FILE)),
        [],
    ),
    "written by a newer megatron-core": (
        lambda r: _edit_meta(os.path.join(iteration_dir(r, 4), CONFIG_FILE), megatron_core="99.0.0"),
        [],
    ),
    "--ckpt-step names a missing iteration": (lambda r: iteration_dir(r, 3), ["--ckpt-step", "3"], [2, 4]),
}


def _assert_clear_error(stderr: str, root: str, failing: str, intact: tuple[int, ...] = (2,)) -> None:
    assert "Traceback" not in stderr, stderr
    message = stderr[stderr.index("megatron_pause: ") :]
    assert failing in message, message  # the file (or directory) that failed, with its directory
    listed = ", ".join(map(str, intact))
    assert f"intact checkpoints under {root}: iteration {listed}." in message, message
    assert f"add --ckpt-step N (e.g. --ckpt-step {intact[-1]})" in message, message


@pytest.mark.parametrize("fault", list(FAULTS))
def test_unreadable_checkpoint_is_one_clear_error(tp1_run, tmp_path, capfd, fault):
    pristine, _ = tp1_run
    root = _broken_copy(pristine, tmp_path)
    breaks, extra, *intact = FAULTS[fault]
    failing = breaks(root)
    capfd.readouterr()
    assert run_distributed(_main, 1, [*ARGS, "--load", root, *extra], timeout=300) == [2]
    _assert_clear_error(capfd.readouterr().err, root, failing, *map(tuple, intact))


def test_ckpt_step_resumes_past_a_truncated_shard_bitwise(tp1_run, tmp_path, capfd):
    """Refused, then resumed with --ckpt-step 2 into the same directory: iterations 3 and 4 equal
    the uninterrupted run's and the re-saved iteration 4 is intact. The resumed run prints
    warnings as a fresh interpreter would, and none of megatron-core's stray load fragments."""
    pristine, reference = tp1_run
    root = _broken_copy(pristine, tmp_path)
    shard = _truncate(os.path.join(iteration_dir(root, 4), "__0_0.distcp"))
    metrics = tmp_path / "resumed.jsonl"
    argv = [*ARGS, "--load", root, "--save", root, "--save-interval", "2"]
    capfd.readouterr()
    assert run_distributed(_main, 1, argv, timeout=300) == [2]
    _assert_clear_error(capfd.readouterr().err, root, shard)

    argv += ["--ckpt-step", "2", "--metrics-file", str(metrics)]
    assert run_distributed(_main_with_default_warnings, 1, argv, timeout=300) == [0]
    out, err = capfd.readouterr()
    assert "loaded checkpoint iteration 2" in out
    assert "LR schedule" not in out  # same flags, same schedule: nothing to say
    assert "UserWarning" in err  # warnings do reach the console (megatron-core's model-building ones)
    for fragment in STRAY_FRAGMENTS:
        assert fragment not in err, err
    assert _metrics(metrics) == {it: reference[it] for it in (3, 4)}
    verify_checkpoint(root, 4)  # the re-save replaced the broken iteration
    with open(os.path.join(root, TRACKER)) as f:
        assert f.read() == "4"


def test_tp2_pp2_checkpoint_with_one_rank_file_truncated(tmp_path_factory, capfd):
    pristine, reference = _saved_run(tmp_path_factory, "tp2pp2", 4, TP2PP2)
    shards = sorted(n for n in os.listdir(iteration_dir(pristine, 4)) if n.endswith(".distcp"))
    assert len(shards) == 4, shards  # one file per rank
    root = _broken_copy(pristine, tmp_path_factory.mktemp("broken"))
    shard = _truncate(os.path.join(iteration_dir(root, 4), shards[3]))
    capfd.readouterr()
    assert run_distributed(_main, 4, [*ARGS, *TP2PP2, "--load", root], timeout=300) == [2] * 4
    _assert_clear_error(capfd.readouterr().err, root, shard)

    metrics = tmp_path_factory.mktemp("resumed") / "m.jsonl"
    argv = [*ARGS, *TP2PP2, "--load", root, "--ckpt-step", "2", "--metrics-file", str(metrics)]
    assert run_distributed(_main, 4, argv, timeout=300) == [0] * 4
    assert _metrics(metrics) == {it: reference[it] for it in (3, 4)}


def test_load_warning_filter_is_exactly_megatron_cores_three():
    from megatron_pause.training import checkpoint

    others = [
        ("The argument order of save has been changed", UserWarning),
        ("Please use DTensor instead and we are deprecating ShardedTensor.", UserWarning),  # other category
        ("anything else", FutureWarning),
    ]
    outside = ("torch.distributed is disabled, unavailable or uninitialized", UserWarning)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with checkpoint._quiet_load_warnings():
            for message, category in [*checkpoint._LOAD_WARNINGS, *others]:
                warnings.warn(message, category, stacklevel=1)
        warnings.warn(*outside, stacklevel=1)  # the filter ends with the load
    assert [(str(w.message), w.category) for w in seen] == [*others, outside]
