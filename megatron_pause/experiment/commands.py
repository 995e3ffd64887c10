"""Each stage's command line, and how a stage's outputs are read back.

This is the only module that knows the flags of ``megatron_pause.pretrain``,
``megatron_pause.finetune`` and ``megatron_pause.evaluate`` and the format of the evaluation
results file; if an entry point renames a flag, this file is the one place to follow it.

The spec's own args come first and the per-run flags last: with the project's parsers the last
occurrence of a flag wins, so a spec cannot accidentally override a run's seed, checkpoint or
output paths.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.jsonl"
TRACKER = "latest_checkpointed_iteration.txt"


@dataclass(frozen=True)
class PretrainRun:
    pause: bool
    seed: int
    dir: str


@dataclass(frozen=True)
class FinetuneRun:
    pretrain_checkpoint: str
    train: str
    valid: str
    finetune_pauses: int
    seed: int
    dir: str


@dataclass(frozen=True)
class EvaluateRun:
    checkpoint: str
    test: str
    inference_pauses: tuple[int, ...]
    dir: str


def checkpoint_of(stage_dir: str) -> str:
    return os.path.join(stage_dir, CHECKPOINT_DIR)


def pretrain_argv(
    entry: list[str], common: list[str], args: list[str], pause_fraction: float, run: PretrainRun
) -> list[str]:
    ckpt = checkpoint_of(run.dir)
    return [
        *entry, *common, *args,
        "--pause-fraction", str(pause_fraction if run.pause else 0.0),
        "--seed", str(run.seed),
        # --load = --save: a rerun after a kill resumes from the last checkpoint.
        "--save", ckpt, "--load", ckpt,
        "--metrics-file", os.path.join(run.dir, METRICS_FILE),
    ]  # fmt: skip


def finetune_argv(entry: list[str], common: list[str], args: list[str], run: FinetuneRun) -> list[str]:
    return [
        *entry, *common, *args,
        "--load", run.pretrain_checkpoint, "--finetune",
        "--train-data-path", run.train,
        "--valid-data-path", run.valid,
        "--finetune-pauses", str(run.finetune_pauses),
        "--seed", str(run.seed),
        "--save", checkpoint_of(run.dir),
        "--metrics-file", os.path.join(run.dir, METRICS_FILE),
    ]  # fmt: skip


def evaluate_argv(entry: list[str], args: list[str], run: EvaluateRun) -> list[str]:
    return [
        *entry, *args,
        "--load", run.checkpoint,
        "--task", run.test,
        "--inference-pauses", ",".join(str(m) for m in run.inference_pauses),
        "--results-file", os.path.join(run.dir, RESULTS_FILE),
        "--predictions-file", os.path.join(run.dir, PREDICTIONS_FILE),
    ]  # fmt: skip


def pretrain_outputs(stage_dir: str) -> list[str]:
    return [os.path.join(checkpoint_of(stage_dir), TRACKER)]


finetune_outputs = pretrain_outputs


def evaluate_outputs(stage_dir: str) -> list[str]:
    return [os.path.join(stage_dir, RESULTS_FILE)]


# ------------------------------------------------------------------------------------------------
# Reading outputs back
# ------------------------------------------------------------------------------------------------


class ResultsFormatError(ValueError):
    pass


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _metric_dicts(node: Any, found: dict[int, dict[str, Any]]) -> None:
    """Collect per-M metrics from an evaluation results file of another shape: records carrying
    ``"inference_pauses": M`` next to their metrics, or mappings from ``"M"`` to metrics, nested
    anywhere. The first record found for an M wins; mappings without numbers (aggregates of
    intervals) are skipped."""
    if isinstance(node, dict):
        m = node.get("inference_pauses")
        if isinstance(m, int) and not isinstance(m, bool):
            metrics = _numbers(node.get("metrics", node))
            metrics.pop("inference_pauses", None)
            if metrics:
                found.setdefault(m, metrics)
            return
        for key, value in node.items():
            if isinstance(key, str) and key.isdigit() and isinstance(value, dict) and _numbers(value):
                found.setdefault(int(key), _numbers(value))
            else:
                _metric_dicts(value, found)
    elif isinstance(node, list):
        for item in node:
            _metric_dicts(item, found)


def read_evaluation(path: str, metric: str) -> tuple[dict[int, dict[str, float]], str | None]:
    """``({M_inf: {metric: value, ...}}, unit)`` from one evaluation results file.

    ``megatron_pause.evaluate`` writes ``{"checkpoints": [{"load", "results": {"M": {metrics,
    "count"}}}], "metric_scale": "percent ...", "aggregate": ...}``; the driver passes it one
    checkpoint. ``unit`` is "percent" when the file says so, else None (unknown).
    """
    with open(path) as f:
        data = json.load(f)
    found: dict[int, dict[str, Any]] = {}
    checkpoints = data.get("checkpoints") if isinstance(data, dict) else None
    if isinstance(checkpoints, list) and checkpoints and isinstance(checkpoints[0], dict):
        for m, metrics in checkpoints[0].get("results", {}).items():
            if str(m).isdigit() and isinstance(metrics, dict):
                found[int(m)] = _numbers(metrics)
    else:
        _metric_dicts(data, found)
    if not found:
        raise ResultsFormatError(f"{path}: no per-inference-pauses metrics found")
    missing = sorted(m for m, metrics in found.items() if metric not in metrics)
    if missing:
        raise ResultsFormatError(f"{path}: metric {metric!r} missing for M_inf {missing}")
    scale = data.get("metric_scale", "") if isinstance(data, dict) else ""
    return found, "percent" if isinstance(scale, str) and scale.startswith("percent") else None


def checkpoint_metadata(root: str) -> dict[str, Any]:
    """The metadata of a checkpoint's latest iteration, read as plain JSON (the same file as
    ``training.checkpoint.checkpoint_config``, without importing torch into the driver)."""
    with open(os.path.join(root, TRACKER)) as f:
        iteration = int(f.read().strip())
    final = os.path.join(root, f"iter_{iteration:07d}")
    for path in (final, final + ".old"):  # .old: a re-save killed between its two renames
        meta = os.path.join(path, "megatron_pause.json")
        if os.path.isfile(meta):
            with open(meta) as f:
                return json.load(f)
    raise OSError(f"{root}: iteration {iteration} has no megatron_pause.json")


def padded_vocab_size(cfg: Any) -> int:
    """The run's padded vocabulary (base pieces, plus ``<pause>`` if the tokenizer lacks it),
    read from the tokenizer files alone: importing ``megatron_pause.tokenizer`` would pull torch
    into the driver (several seconds per invocation) for one integer of the FLOPs count."""
    path, pause = cfg.tokenizer.tokenizer_model, cfg.pause.pause_token
    if os.path.isdir(path):
        with open(os.path.join(path, "tokenizer.json")) as f:
            data = json.load(f)
        pieces = set(data["model"]["vocab"]) | {t["content"] for t in data.get("added_tokens", [])}
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=path)
        pieces = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    size = len(pieces) + (0 if pause in pieces else 1)
    multiple = cfg.model.make_vocab_size_divisible_by * cfg.parallel.tensor_model_parallel_size
    return -(-size // multiple) * multiple  # Megatron's rule, as tokenizer.padded_vocab_size


def train_flops(stage_dir: str) -> float | None:
    """Model FLOPs (matmuls, forward + backward) of one training stage: tokens consumed, from the
    checkpoint's train state, times FLOPs per token of its model at its sequence length. None
    when the checkpoint does not say (the report then prints "unknown")."""
    from megatron_pause.config import PretrainConfig
    from megatron_pause.training.flops import model_flops_per_token

    try:
        meta = checkpoint_metadata(checkpoint_of(stage_dir))
        tokens = int(meta["train_state"]["consumed_tokens"])
        cfg = PretrainConfig.from_dict(meta["config"])
        vocab = padded_vocab_size(cfg)
    except (OSError, KeyError, ValueError, TypeError, ImportError, RuntimeError):
        return None
    return float(tokens) * model_flops_per_token(cfg.model, vocab, cfg.model.seq_length)
