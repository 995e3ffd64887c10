"""Build a model for inference from a checkpoint's stored configuration.

Every checkpoint carries the resolved run configuration (``iter_N/megatron_pause.json``), so
a user needs only ``--load DIR``: the model shape, tokenizer and pause token come from there.
Flags given on the command line override the stored values (a tokenizer file that moved, say).
The parallel layout is the one thing never taken from the checkpoint: inference runs at the
layout it is launched with, and megatron's distributed checkpoint reshards to it.

Megatron pads the vocabulary to a multiple of ``make_vocab_size_divisible_by * TP``, so a
checkpoint saved at TP1 (e.g. padded to 8064) has fewer padding rows than the same model at TP2
(8192); the distributed checkpoint loads the rows it has. Padding rows are never fed and are
masked out of every output distribution (:mod:`megatron_pause.inference.sampling`), so this
does not change a completion or a score (the TP2 parity tests load exactly such a checkpoint).

Used by ``generate``, ``evaluate`` and any other entry point that needs a trained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron_pause.config import ParallelConfig, PretrainConfig, model_preset


class InferenceConfigError(ValueError):
    """A checkpoint/flag combination that inference cannot run (reported before any heavy work)."""


def resolve_config(load: str, overrides: dict[str, Any], iteration: int | None = None) -> PretrainConfig:
    """The checkpoint's stored configuration with ``overrides`` (``{"section.field": value}``,
    as parsed from the command line) applied. The parallel section is taken from the overrides
    only (default TP1/PP1): the checkpoint's training layout says nothing about inference."""
    from megatron_pause.training.checkpoint import checkpoint_config

    stored = checkpoint_config(load, iteration).get("config")
    if not stored:
        raise InferenceConfigError(
            f"{load} stores no run configuration (megatron_pause.json has no 'config'); "
            "give the model and tokenizer flags on the command line"
        )
    stored = {k: dict(v) for k, v in stored.items()}
    stored["parallel"] = {}
    preset = overrides.get("_model_size")
    if preset:
        stored["model"] = {**stored.get("model", {}), **vars(model_preset(preset))}
    for dest, value in overrides.items():
        if dest.startswith("_"):
            continue
        section, name = dest.split(".", 1)
        stored.setdefault(section, {})[name] = value
    cfg = PretrainConfig.from_dict(stored)
    check_inference_layout(cfg.parallel)
    cfg.checkpoint.load = load
    return cfg


def check_inference_layout(parallel: ParallelConfig) -> None:
    """Inference runs without sequence parallelism and virtual pipeline stages (the KV-cached
    decode feeds one token per step, which sequence parallelism cannot split; megatron's
    inference code rejects virtual stages). Say so instead of failing deep inside megatron."""
    if parallel.sequence_parallel:
        raise InferenceConfigError(
            "--sequence-parallel is not supported for generation/evaluation (a one-token decode step "
            "cannot be split over tensor-parallel ranks); drop the flag, the checkpoint loads without it"
        )
    if parallel.num_layers_per_virtual_pipeline_stage is not None:
        raise InferenceConfigError(
            "--num-layers-per-virtual-pipeline-stage is not supported for generation/evaluation; "
            "drop the flag, the checkpoint loads at any plain pipeline layout"
        )


@dataclass
class LoadedModel:
    cfg: PretrainConfig
    tokenizer: Any  # PauseTokenizer
    model: Any  # this rank's GPTModel (one pipeline stage)
    iteration: int
    padded_vocab_size: int


def build_model_from_checkpoint(cfg: PretrainConfig, iteration: int | None = None) -> LoadedModel:
    """Tokenizer and this rank's model stage with the weights of ``cfg.checkpoint.load``, in eval
    mode. Process groups must exist (:func:`megatron_pause.distributed.init_distributed`)."""
    from megatron_pause.checkpoint_args import check_tokenizer, vocab_record
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.tokenizer import build_tokenizer
    from megatron_pause.training.checkpoint import CheckpointError, load_checkpoint

    tokenizer = build_tokenizer(
        cfg.tokenizer.tokenizer_type, cfg.tokenizer.tokenizer_model, cfg.pause.pause_token
    )
    padded = tokenizer.padded_vocab_size(
        cfg.model.make_vocab_size_divisible_by, cfg.parallel.tensor_model_parallel_size
    )
    # A tokenizer given on the command line (a moved file) must still be the one the checkpoint was
    # trained with: another vocabulary or pause id would read the wrong embedding rows (ConfigError).
    check_tokenizer(cfg.checkpoint.load, iteration, vocab_record(tokenizer, padded))
    tcfg = transformer_config(cfg.model, cfg.parallel, cfg.precision, cfg.training)
    (model,) = build_model_chunks(cfg.model, tcfg, padded)
    loaded = load_checkpoint(cfg.checkpoint.load, [model], load_rng=False, iteration=iteration)
    if loaded is None:
        raise CheckpointError(f"no checkpoint under {cfg.checkpoint.load}")
    model.eval()
    return LoadedModel(cfg, tokenizer, model, loaded[0], padded)
