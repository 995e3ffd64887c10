"""Flags against the checkpoint's stored configuration: the mismatch report, --use-checkpoint-args,
settings that may change, the tokenizer check, the megatron-core version check and the LR
schedule note (``megatron_pause/checkpoint_args.py``, ``training/scheduler.py``).

One real checkpoint (the tiny preset, 2 iterations, mock data) is written once by the entry
point; the end-to-end cases run ``megatron_pause.pretrain.main`` against it in a forked rank and
read its exit status, stdout and stderr.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from megatron_pause.arguments import ConfigError, parse_args_and_given
from megatron_pause.checkpoint_args import check_tokenizer, resolve_checkpoint_config
from megatron_pause.config import MODEL_PRESETS, OptimizerConfig, PretrainConfig
from megatron_pause.testing import run_distributed
from megatron_pause.training.checkpoint import CONFIG_FILE, TRACKER, CheckpointError, iteration_dir

TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "sample_tokenizer.model")
RUN = [
    "--mock-data", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "2",
    "--log-interval", "1", "--eval-iters", "1", "--eval-interval", "100", "--lr-warmup-iters", "1",
]  # fmt: skip
TRAIN_ITERS = 2


def _main(rank: int, world: int, argv: list[str]) -> int:
    from megatron_pause.pretrain import main

    return main(argv)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    """Iteration 2 of the tiny preset (4 layers x 128), the quickstart's model."""
    root = str(tmp_path_factory.mktemp("tiny") / "ckpt")
    argv = [*RUN, "--model-size", "tiny", "--train-iters", str(TRAIN_ITERS), "--save", root]
    assert run_distributed(_main, 1, argv, timeout=300) == [0]
    return root


def _resolve(argv: list[str]) -> PretrainConfig:
    cfg, given = parse_args_and_given(argv)
    ck = cfg.checkpoint
    return resolve_checkpoint_config(
        cfg, given, ck.load, ck.ckpt_step, ck.use_checkpoint_args, weights_only=ck.finetune
    )


def _entry_point(argv: list[str], capfd) -> tuple[int, str, str]:
    capfd.readouterr()
    (code,) = run_distributed(_main, 1, argv, timeout=300)
    out, err = capfd.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def test_given_dests_count_the_preset_and_gqa():
    _, given = parse_args_and_given(["--model-size", "tiny", "--lr", "1e-3", "--group-query-attention"])
    assert {f"model.{k}" for k in MODEL_PRESETS["tiny"]} <= given
    assert {"optimizer.lr", "model.num_query_groups"} <= given
    assert "model.rotary_base" not in given and "optimizer.min_lr" not in given
    _, given = parse_args_and_given(["--num-layers", "3"])
    assert given == {"model.num_layers"}


def test_shape_mismatch_is_one_message_before_any_tensor_is_read(tiny_checkpoint, capfd):
    """The issue's case: the quickstart's flags for another model against the tiny checkpoint."""
    argv = [*RUN, "--num-layers", "2", "--hidden-size", "64", "--load", tiny_checkpoint, "--train-iters", "3"]
    code, _, err = _entry_point(argv, capfd)
    assert code == 2
    assert "Global shape mismatch" not in err
    rows = {line.split()[0]: line.split()[1:] for line in err.splitlines() if line.startswith("    --")}
    assert rows == {
        "--num-layers": ["4", "2"],
        "--hidden-size": ["128", "64"],
        "--ffn-hidden-size": ["344", "172", "(default)"],
    }, err
    assert f"these flags differ from checkpoint {iteration_dir(tiny_checkpoint, TRAIN_ITERS)}" in err
    assert "add --use-checkpoint-args" in err

    # The same flags with --use-checkpoint-args: the model comes from the checkpoint, except that the
    # two given shape flags contradict it -- an error, never silently overridden.
    code, _, err = _entry_point([*argv, "--use-checkpoint-args"], capfd)
    assert code == 2
    assert "--use-checkpoint-args: these flags contradict" in err and "drop these flags" in err
    assert "--ffn-hidden-size" not in err  # not given: taken from the checkpoint
    code, out, _ = _entry_point(
        [*RUN, "--load", tiny_checkpoint, "--use-checkpoint-args", "--skip-train"], capfd
    )
    assert code == 0
    assert f"loaded checkpoint iteration {TRAIN_ITERS}" in out


def test_use_checkpoint_args_fills_what_is_not_given(tiny_checkpoint):
    stored = PretrainConfig.from_dict(
        json.load(open(os.path.join(iteration_dir(tiny_checkpoint, TRAIN_ITERS), CONFIG_FILE)))["config"]
    )
    cfg = _resolve(["--mock-data", "--load", tiny_checkpoint, "--use-checkpoint-args"])
    assert cfg.model == stored.model and cfg.pause == stored.pause and cfg.tokenizer == stored.tokenizer
    # A given setting that may change keeps its value; the RoPE-only position limit follows it.
    cfg = _resolve(["--mock-data", "--load", tiny_checkpoint, "--use-checkpoint-args", "--seq-length", "64"])
    assert (cfg.model.seq_length, cfg.model.max_position_embeddings) == (64, 64)
    assert cfg.model.hidden_size == stored.model.hidden_size == 128


def test_use_checkpoint_args_takes_the_pause_fraction_only_when_resuming(tiny_checkpoint, tmp_path):
    root = str(tmp_path / "plain")
    shutil.copytree(tiny_checkpoint, root)
    path = os.path.join(iteration_dir(root, TRAIN_ITERS), CONFIG_FILE)
    with open(path) as f:
        meta = json.load(f)
    meta["config"]["pause"]["pause_fraction"] = 0.0  # as if pretrained without pauses
    with open(path, "w") as f:
        json.dump(meta, f)
    argv = ["--mock-data", "--load", root, "--use-checkpoint-args"]
    assert _resolve(argv).pause.pause_fraction == 0.0
    assert _resolve([*argv, "--finetune"]).pause.pause_fraction == PretrainConfig().pause.pause_fraction


def test_settings_that_may_change_are_allowed(tiny_checkpoint, tmp_path):
    changed = [
        "--model-size", "tiny", "--seq-length", "64", "--load", tiny_checkpoint,
        "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", "--use-distributed-optimizer",
        "--micro-batch-size", "1", "--global-batch-size", "16", "--bf16", "--lr", "1e-3", "--min-lr", "0",
        "--lr-decay-style", "linear", "--train-iters", "50", "--hidden-dropout", "0.1",
        "--data-path", str(tmp_path / "other_corpus"),
    ]  # fmt: skip
    cfg, _ = parse_args_and_given(changed)
    assert _resolve(changed) == cfg


def test_pause_fraction_must_match_on_resume_but_not_for_weights_only(tiny_checkpoint):
    argv = ["--model-size", "tiny", "--mock-data", "--load", tiny_checkpoint, "--pause-fraction", "0"]
    with pytest.raises(ConfigError, match=r"(?s)--pause-fraction +0\.1 +0\.0.*with --finetune"):
        _resolve(argv)
    assert _resolve([*argv, "--finetune"]).pause.pause_fraction == 0.0
    with pytest.raises(ConfigError, match=r"--pause-token +<pause> +<unk>"):
        _resolve([*argv, "--finetune", "--pause-token", "<unk>"])


def test_no_checkpoint_and_missing_stored_config(tiny_checkpoint, tmp_path):
    empty = str(tmp_path / "empty")
    cfg, _ = parse_args_and_given(["--load", empty, "--mock-data"])
    assert _resolve(["--load", empty, "--mock-data"]) == cfg  # a fresh start
    with pytest.raises(CheckpointError, match="no checkpoint under --load"):
        _resolve(["--load", empty, "--mock-data", "--use-checkpoint-args"])
    with pytest.raises(CheckpointError, match=r"--ckpt-step 7 names it but .*iter_0000007 is missing"):
        _resolve(["--load", tiny_checkpoint, "--mock-data", "--model-size", "tiny", "--ckpt-step", "7"])


def _copy_with_meta(src: str, dest: str, **changes) -> str:
    shutil.copytree(src, dest)
    path = os.path.join(iteration_dir(dest, TRAIN_ITERS), CONFIG_FILE)
    with open(path) as f:
        meta = json.load(f)
    meta.update(changes)
    with open(path, "w") as f:
        json.dump(meta, f)
    return dest


def test_megatron_core_version_check(tiny_checkpoint, tmp_path):
    from megatron_pause.platform import megatron_core_version

    with open(os.path.join(iteration_dir(tiny_checkpoint, TRAIN_ITERS), CONFIG_FILE)) as f:
        assert json.load(f)["megatron_core"] == megatron_core_version()
    argv = ["--model-size", "tiny", "--mock-data", "--load"]
    older = _copy_with_meta(tiny_checkpoint, str(tmp_path / "older"), megatron_core="0.16.1")
    _resolve([*argv, older])
    newer = _copy_with_meta(tiny_checkpoint, str(tmp_path / "newer"), megatron_core="0.20.0rc1")
    with pytest.raises(CheckpointError, match=r"megatron-core 0\.20\.0rc1, newer than the installed"):
        _resolve([*argv, newer])
    future = _copy_with_meta(tiny_checkpoint, str(tmp_path / "future"), format_version=2)
    with pytest.raises(CheckpointError, match=r"format version 2"):
        _resolve([*argv, future])


def test_tokenizer_that_does_not_fit_is_refused(tiny_checkpoint, capfd):
    argv = [*RUN, "--model-size", "tiny", "--load", tiny_checkpoint, "--tokenizer-model", TOKENIZER]
    code, _, err = _entry_point([*argv, "--train-iters", "3"], capfd)
    assert code == 2
    assert f"the tokenizer does not fit checkpoint {iteration_dir(tiny_checkpoint, TRAIN_ITERS)}" in err
    assert "vocabulary size (with <pause>): checkpoint 1001, this tokenizer 8000" in err
    assert "pause id: checkpoint 1000, this tokenizer 4" in err
    assert "padded vocabulary size" not in err  # it changes with TP, legitimately


def _fake_checkpoint(root, vocab: dict | None) -> str:
    os.makedirs(iteration_dir(str(root), 5))
    meta = {"iteration": 5, "config": {}, **({"vocab": vocab} if vocab else {})}
    with open(os.path.join(iteration_dir(str(root), 5), CONFIG_FILE), "w") as f:
        json.dump(meta, f)
    with open(os.path.join(str(root), TRACKER), "w") as f:
        f.write("5")
    return str(root)


def test_check_tokenizer_fields(tmp_path):
    ours = {
        "vocab_size": 8000,
        "padded_vocab_size": 8064,
        "pause_id": 4,
        "tokenizer": "SentencePiece:sha256:a",
    }
    root = _fake_checkpoint(tmp_path / "a", {**ours, "pause_id": 7})
    with pytest.raises(ConfigError, match="pause id: checkpoint 7, this tokenizer 4") as e:
        check_tokenizer(root, None, ours)
    assert "vocabulary size" not in str(e.value)
    root = _fake_checkpoint(tmp_path / "b", {**ours, "tokenizer": "SentencePiece:sha256:b"})
    (note,) = check_tokenizer(root, 5, ours)
    assert "tokenizer files differ" in note and "sha256:b vs SentencePiece:sha256:a" in note
    assert check_tokenizer(_fake_checkpoint(tmp_path / "c", None), None, ours) == []  # nothing recorded
    # Resharding to another TP pads the vocabulary differently: not a mismatch.
    assert (
        check_tokenizer(_fake_checkpoint(tmp_path / "d", {**ours, "padded_vocab_size": 8192}), 5, ours) == []
    )
    assert check_tokenizer(str(tmp_path / "none"), None, ours) == []


# ---------------------------------------------------------------------------
# LR schedule on resume


class _Groups:
    def __init__(self) -> None:
        self.param_groups = [{"params": [], "wd_mult": 1.0}]


def _scheduler(train_iters: int, override: bool = False, steps: int = 0):
    from megatron_pause.training.scheduler import build_scheduler

    sched = build_scheduler(
        _Groups(), OptimizerConfig(lr=1.0, min_lr=0.1, lr_warmup_iters=2), train_iters, override
    )
    for _ in range(steps):
        sched.step(increment=1)
    return sched


def test_schedule_note_and_override():
    from megatron_pause.training.scheduler import schedule_note

    saved = _scheduler(10, steps=5).state_dict()  # a run of 10 iterations, checkpointed at 5
    assert schedule_note(_scheduler(10), saved) is None

    kept = _scheduler(20)  # resumed with --train-iters 20
    note = schedule_note(kept, saved)
    assert "continuing the checkpoint's schedule" in note
    assert "--lr-decay-iters (default: --train-iters): checkpoint 10, flags 20" in note
    assert "add --override-opt-param-scheduler" in note
    kept.load_state_dict(saved)
    assert kept.lr_decay_steps == 10 and kept.num_steps == 5

    overridden = _scheduler(20, override=True)
    note = schedule_note(overridden, saved)
    assert "using the flags' schedule" in note and "(iteration 5) comes from the checkpoint" in note
    overridden.load_state_dict(saved)
    fresh = _scheduler(20, steps=5)
    assert overridden.lr_decay_steps == 20 and overridden.num_steps == 5
    assert overridden.optimizer.param_groups[0]["lr"] == fresh.optimizer.param_groups[0]["lr"]
    assert kept.optimizer.param_groups[0]["lr"] != fresh.optimizer.param_groups[0]["lr"]


def test_resume_with_changed_train_iters_says_which_schedule(tiny_checkpoint, capfd):
    # A real resume (three more iterations, nothing saved): --skip-train takes weights only.
    argv = [*RUN, "--model-size", "tiny", "--load", tiny_checkpoint, "--train-iters", "5"]
    code, out, _ = _entry_point(argv, capfd)
    assert code == 0
    assert "LR schedule: continuing the checkpoint's schedule" in out
    assert f"--lr-decay-iters (default: --train-iters): checkpoint {TRAIN_ITERS}, flags 5" in out
    code, out, _ = _entry_point([*argv, "--override-opt-param-scheduler"], capfd)
    assert code == 0
    assert "LR schedule: using the flags' schedule, not the checkpoint's" in out
