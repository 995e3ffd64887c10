"""End-to-end tests of ``megatron_pause.finetune`` on CPU: the loss against a hand computation,
validation, bitwise resume mid-epoch, bad input, and the paper's four variants.

Each run is the real entry point (``main(argv)``) in forked gloo ranks; losses are read back from
the metrics file, whose floats round-trip exactly.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_pause.testing import run_distributed
from megatron_pause.training.checkpoint import latest_iteration

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = str(REPO / "examples" / "data" / "sample_tokenizer.model")
SFT_TRAIN = REPO / "examples" / "data" / "sample_sft_train.jsonl.gz"
MODEL = [
    "--num-layers", "2", "--hidden-size", "32", "--ffn-hidden-size", "64", "--num-attention-heads", "4",
    "--seq-length", "64", "--tokenizer-model", TOKENIZER, "--log-interval", "1", "--seed", "5",
]  # fmt: skip
M_FT = 3


def _main(rank: int, world: int, module: str, argv: list[str]) -> int:
    import importlib

    return importlib.import_module(f"megatron_pause.{module}").main(argv)


def _run(argv: list[str], world: int = 1, module: str = "finetune") -> None:
    assert run_distributed(_main, world, module, argv, timeout=300) == [0] * world


def _metrics(path: Path, split: str = "train") -> dict[int, dict]:
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == split:
            out[rec["iteration"]] = rec
    return out


def _write_examples(path: Path, examples: list[dict]) -> str:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return str(path)


def _bundled_examples(n: int) -> list[dict]:
    """The first n bundled examples with prompts cut short (so nothing is truncated at seq 64)."""
    with gzip.open(SFT_TRAIN, "rt") as f:
        rows = [json.loads(next(f)) for _ in range(n)]
    return [{"prompt": r["prompt"][-60:], "answer": r["answer"]} for r in rows]


# ------------------------------------------------------------------ the loss, by hand


def _hand_loss(rank: int, world: int, ckpt: str, examples: list[dict]) -> dict:
    """Load the checkpoint into a fresh model and compute the finetuning loss with plain torch:
    cross-entropy of each answer token and the eod, given prompt + pauses + the answer so far."""
    import torch.nn.functional as F

    from megatron_pause.config import PretrainConfig
    from megatron_pause.distributed import destroy_distributed, init_distributed
    from megatron_pause.loss import PauseMaskedLoss
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.tokenizer import build_tokenizer
    from megatron_pause.training.checkpoint import checkpoint_config, load_checkpoint

    cfg = PretrainConfig.from_dict(checkpoint_config(ckpt)["config"])
    init_distributed(cfg.parallel, cfg.model.num_layers, seed=1)
    tok = build_tokenizer("SentencePieceTokenizer", TOKENIZER, "<pause>")
    (model,) = build_model_chunks(cfg.model, transformer_config(cfg.model, cfg.parallel), 8064)
    load_checkpoint(ckpt, [model], load_rng=False)
    model.eval()
    total, count, correct, poisoned_total = 0.0, 0, 0, 0.0
    with torch.no_grad():
        for ex in examples:
            prompt, answer = tok.tokenize(ex["prompt"]), tok.tokenize(ex["answer"])
            seq = torch.tensor(prompt + [tok.pause_id] * M_FT + answer + [tok.eod])
            inputs, n = seq[:-1].unsqueeze(0), len(seq) - 1
            logits = model(inputs, torch.arange(n).unsqueeze(0), None)[0].float()  # [n, vocab]
            first = len(prompt) + M_FT - 1  # this position predicts answer[0]
            targets = seq[first + 1 :]
            total += float(F.cross_entropy(logits[first:], targets, reduction="sum"))
            count += len(targets)
            correct += int((logits[first:].argmax(-1) == targets).sum())
            # Prompt and pause targets add nothing: poison their per-token losses.
            per_token = F.cross_entropy(logits, seq[1:], reduction="none")
            poisoned = per_token.clone()
            poisoned[:first] = 1e6
            mask = torch.zeros(n)
            mask[first:] = 1
            loss_sum, tokens, _ = PauseMaskedLoss(tok.pause_id)(mask[None], seq[1:][None], poisoned[None])
            poisoned_total += float(loss_sum)
            assert int(tokens) == len(targets)
    destroy_distributed()
    return dict(loss=total / count, tokens=count, accuracy=correct / count, poisoned=poisoned_total / count)


def test_loss_is_the_answer_only_cross_entropy_and_validation_reads_the_set_once(tmp_path):
    examples = _bundled_examples(6)
    data = _write_examples(tmp_path / "train.jsonl", examples)
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    # One step over all six examples at lr 0: the saved weights are the ones the loss was computed with.
    common = [*MODEL, "--finetune-pauses", str(M_FT), "--micro-batch-size", "2", "--metrics-file", str(metrics),
              "--lr", "0", "--min-lr", "0"]  # fmt: skip
    _run(
        [
            *common,
            "--train-data-path",
            data,
            "--global-batch-size",
            "6",
            "--train-iters",
            "1",
            "--save",
            str(ckpt),
        ]
    )
    # Evaluation only, global batch 4: 6 examples = two batches, the second half padding.
    _run(
        [*common, "--valid-data-path", data, "--global-batch-size", "4", "--load", str(ckpt), "--skip-train"]
    )
    (hand,) = run_distributed(_hand_loss, 1, str(ckpt), examples)
    train, (valid,) = _metrics(metrics)[1], _metrics(metrics, "valid").values()
    assert train["tokens"] == valid["tokens"] == hand["tokens"]
    assert train["lm_loss"] == pytest.approx(hand["loss"], rel=1e-6, abs=0)
    assert valid["lm_loss"] == pytest.approx(hand["loss"], rel=1e-6, abs=0)
    assert valid["accuracy"] == pytest.approx(hand["accuracy"], abs=1e-12)
    assert hand["poisoned"] == pytest.approx(hand["loss"], rel=1e-6)


# ------------------------------------------------------------------ resume


def test_resume_mid_epoch_is_bitwise_identical(tmp_path):
    data = _write_examples(tmp_path / "train.jsonl", _bundled_examples(11))
    straight, resumed, ckpt = tmp_path / "straight.jsonl", tmp_path / "resumed.jsonl", str(tmp_path / "ckpt")
    # 11 examples, 4 per step: iteration 10 ends at sample 40, 7 samples into the fourth epoch.
    common = [*MODEL, "--train-data-path", data, "--finetune-pauses", "2", "--micro-batch-size", "2",
              "--global-batch-size", "4", "--train-iters", "20", "--lr", "3e-3", "--min-lr", "3e-4",
              "--lr-warmup-iters", "2"]  # fmt: skip
    _run([*common, "--metrics-file", str(straight)])
    resumable = [*common, "--metrics-file", str(resumed), "--save", ckpt]
    _run([*resumable, "--exit-interval", "10"])
    assert latest_iteration(ckpt) == 10 and (10 * 4) % 11 != 0
    _run([*resumable, "--load", ckpt])
    a, b = _metrics(straight), _metrics(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for it in range(1, 21):
        assert (a[it]["lm_loss"], a[it]["grad_norm"], a[it]["lr"], a[it]["tokens"]) == (
            b[it]["lm_loss"], b[it]["grad_norm"], b[it]["lr"], b[it]["tokens"],
        ), f"iteration {it}"  # fmt: skip
    assert len({r["lm_loss"] for r in a.values()}) > 15


# ------------------------------------------------------------------ bad input


def test_bad_examples_are_listed_and_too_many_stop_the_run(tmp_path, capfd):
    good = _bundled_examples(4)
    lines = [json.dumps(e) for e in good] + ['{"prompt": "x"}', "not json", '{"prompt": "p", "answer": 7}']
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    argv = [*MODEL, "--train-data-path", str(data), "--micro-batch-size", "1", "--global-batch-size", "2",
            "--train-iters", "1", "--rejects-file", str(rejects)]  # fmt: skip
    _run(argv)
    out = capfd.readouterr().out
    assert "4 used, 3 rejected" in out and str(rejects) in out
    listed = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert sorted(e["reason"] for e in listed) == ["malformed_json", "missing_key", "not_a_string"]
    rejects.unlink()
    assert run_distributed(_main, 1, "finetune", [*argv, "--max-bad-fraction", "0.25"], timeout=300) == [2]
    assert "--max-bad-fraction 0.25" in capfd.readouterr().err
    assert len(rejects.read_text().splitlines()) == 3  # listed before the run stops


def test_contradictory_finetuning_flags_are_rejected_before_any_process_group(tmp_path):
    from megatron_pause.finetune import main

    argv = [*MODEL, "--train-data-path", str(tmp_path / "missing.jsonl"), "--pack-sequences",
            "--micro-batch-size", "2", "--global-batch-size", "4", "--finetune-pauses", "-1"]  # fmt: skip
    assert main(argv) == 2
    with pytest.raises(SystemExit):
        main([*MODEL, "--train-data-path", "x.jsonl", "--pause-fraction", "0.1"])


# ------------------------------------------------------------------ the paper's four variants


def _shard(prefix: str) -> str:
    """A small indexed dataset of real text (the sample corpus, tokenized): no <pause> in it."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_pause.tokenizer import build_tokenizer

    tok = build_tokenizer("SentencePieceTokenizer", TOKENIZER, "<pause>")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    with gzip.open(REPO / "examples" / "data" / "sample_corpus.jsonl.gz", "rt") as f:
        for _ in range(40):
            ids = tok.tokenize(json.loads(next(f))["text"])[:400] + [tok.eod]
            builder.add_item(torch.tensor(ids, dtype=torch.int64))
            builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix


def test_four_variants_run_end_to_end(tmp_path, capfd):
    prefix = _shard(str(tmp_path / "corpus"))
    train = _write_examples(tmp_path / "train.jsonl", _bundled_examples(8))
    valid = _write_examples(tmp_path / "valid.jsonl", _bundled_examples(12)[8:])
    pretrain = [*MODEL, "--data-path", prefix, "--split", "90,10,0", "--micro-batch-size", "2",
                "--global-batch-size", "4", "--train-iters", "3", "--eval-iters", "0", "--lr", "3e-3",
                "--min-lr", "3e-4"]  # fmt: skip
    for name, fraction in (("StdPT", "0"), ("PausePT", "0.1")):
        _run([*pretrain, "--pause-fraction", fraction, "--save", str(tmp_path / name)], module="pretrain")
    capfd.readouterr()
    results = {}
    for pt in ("StdPT", "PausePT"):
        for ft, m in (("StdFT", 0), ("PauseFT", 4)):
            metrics = tmp_path / f"{pt}_{ft}.jsonl"
            _run([*MODEL, "--load", str(tmp_path / pt), "--finetune", "--finetune-pauses", str(m),
                  "--train-data-path", train, "--valid-data-path", valid, "--micro-batch-size", "1",
                  "--global-batch-size", "2", "--train-epochs", "1", "--eval-interval", "4", "--lr", "1e-3",
                  "--min-lr", "1e-4", "--metrics-file", str(metrics)])  # fmt: skip
            out = capfd.readouterr().out
            # A pause-free checkpoint's <pause> rows are initialised, a pause-pretrained one's kept.
            assert ("initialised the <pause> rows" in out) == (pt == "StdPT")
            train_lines, valid_lines = _metrics(metrics), _metrics(metrics, "valid")
            assert len(train_lines) == 4  # one epoch of 8 examples, 2 per step
            assert all(math.isfinite(r["lm_loss"]) for r in train_lines.values())
            assert list(valid_lines) == [4]
            results[(pt, ft)] = valid_lines[4]
    # Each valid set's answer tokens are the same whatever the variant; the models differ.
    assert len({r["tokens"] for r in results.values()}) == 1
    assert len({r["lm_loss"] for r in results.values()}) == 4


def test_warmup_longer_than_the_epochs_run_is_refused_once_its_length_is_known(tmp_path, capfd):
    """--train-epochs fixes --train-iters only after the examples are read; the warmup rule of
    validate_config (warmup_problem) is applied then, naming how the length came about."""
    data = _write_examples(tmp_path / "train.jsonl", _bundled_examples(8))
    argv = [*MODEL, "--train-data-path", data, "--micro-batch-size", "1", "--global-batch-size", "2",
            "--train-epochs", "1", "--lr-warmup-iters", "4"]  # fmt: skip
    capfd.readouterr()
    # A forked rank: the refusal comes after the model is built, and torch must not run in the
    # parent of the later tests' forks.
    assert run_distributed(_main, 1, "finetune", argv, timeout=300) == [2]  # 8 examples / 2 = 4 iterations
    err = capfd.readouterr().err
    assert "--lr-warmup-iters (4) must be below the 4 iterations of --train-epochs 1" in err, err


def test_flags_that_contradict_the_checkpoint_are_refused_before_loading(tmp_path, capfd):
    """The pretraining entry point's check (checkpoint_args) guards finetuning's --load too."""
    from megatron_pause.finetune import main

    data = _write_examples(tmp_path / "train.jsonl", _bundled_examples(4))
    ckpt = str(tmp_path / "ckpt")
    base = [*MODEL, "--train-data-path", data, "--micro-batch-size", "2", "--global-batch-size", "2",
            "--train-iters", "1", "--lr-warmup-iters", "0"]  # fmt: skip
    _run([*base, "--save", ckpt])
    other = list(base)
    other[other.index("--num-layers") + 1] = "3"
    capfd.readouterr()
    assert main([*other, "--load", ckpt, "--finetune", "--train-iters", "2"]) == 2
    err = capfd.readouterr().err
    assert "these flags differ from checkpoint" in err and "--num-layers" in err
    assert "--use-checkpoint-args" in err and "Traceback" not in err
