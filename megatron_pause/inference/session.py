"""What ``generate`` and ``evaluate`` share: the decoding flags, and opening a checkpoint for inference.

Both entry points compose the model/parallel/precision/pause/tokenizer flag groups of
:mod:`megatron_pause.arguments` (given flags override the checkpoint's stored configuration)
and add :func:`add_decoding_flags`. Their dests are ``decoding.<field>`` of
:class:`DecodingConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Flag groups of megatron_pause.arguments that describe the model to load.
MODEL_FLAG_GROUPS = ("model", "parallel", "precision", "pause", "tokenizer")


@dataclass
class DecodingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 1234
    stop: list[str] = field(default_factory=list)
    inference_max_requests: int = 16  # prompts per batch (Megatron-LM's name)
    no_kv_cache: bool = False  # recompute every position each step (a reference, slow)


def add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    d = DecodingConfig()
    g = parser.add_argument_group("decoding")
    g.add_argument(
        "--max-new-tokens",
        dest="decoding.max_new_tokens",
        type=int,
        metavar="N",
        help=f"Tokens to generate at most per prompt (default: {d.max_new_tokens}).",
    )
    g.add_argument(
        "--temperature",
        dest="decoding.temperature",
        type=float,
        help="Sampling temperature; 0 is greedy (default).",
    )
    g.add_argument(
        "--top-k",
        "--top_k",
        dest="decoding.top_k",
        type=int,
        help="Sample among the k most likely tokens (0: no limit, default).",
    )
    g.add_argument(
        "--top-p",
        "--top_p",
        dest="decoding.top_p",
        type=float,
        help="Nucleus sampling: the smallest set with this probability (default: 1, off).",
    )
    g.add_argument("--seed", dest="decoding.seed", type=int, help=f"Sampling seed (default: {d.seed}).")
    g.add_argument(
        "--stop",
        dest="decoding.stop",
        action="append",
        metavar="TEXT",
        help="Stop a completion at this text (cut before it); repeatable. Eod always stops.",
    )
    g.add_argument(
        "--inference-max-requests",
        dest="decoding.inference_max_requests",
        type=int,
        metavar="B",
        help=f"Prompts per batch (default: {d.inference_max_requests}).",
    )
    g.add_argument("--no-kv-cache", dest="decoding.no_kv_cache", action="store_true",
                   help="Recompute all positions at every step instead of using the KV cache (a slow reference).")  # fmt: skip


def split_namespace(given: dict[str, Any], own_sections: tuple[str, ...]) -> tuple[dict, dict]:
    """``(overrides for the checkpoint's config, {section: {field: value}} for own sections)``."""
    overrides, own = {}, {s: {} for s in own_sections}
    for dest, value in given.items():
        section = dest.split(".", 1)[0]
        if section in own:
            own[section][dest.split(".", 1)[1]] = value
        else:
            overrides[dest] = value
    return overrides, own


def decoding_config(values: dict[str, Any]) -> DecodingConfig:
    cfg = DecodingConfig(**values)
    problems = []
    if cfg.max_new_tokens < 1:
        problems.append(f"--max-new-tokens must be >= 1, got {cfg.max_new_tokens}")
    if cfg.inference_max_requests < 1:
        problems.append(f"--inference-max-requests must be >= 1, got {cfg.inference_max_requests}")
    if any(not s for s in cfg.stop):
        problems.append("--stop must not be empty")
    if problems:
        raise ValueError("; ".join(problems))
    return cfg


def sampling_config(cfg: DecodingConfig):
    from megatron_pause.inference.sampling import SamplingConfig

    return SamplingConfig(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed)


def open_generator(load: str, overrides: dict[str, Any], decoding: DecodingConfig):
    """Process groups (once), the checkpoint's model at this launch's layout, and a generator.
    Returns ``(LoadedModel, PauseGenerator)``."""
    from megatron.core import parallel_state

    from megatron_pause.distributed import init_distributed
    from megatron_pause.inference.engine import PauseGenerator
    from megatron_pause.models.from_checkpoint import build_model_from_checkpoint, resolve_config

    cfg = resolve_config(load, overrides)
    # Inference is deterministic; dropout (if the run trained with it) is off in eval mode.
    cfg.model = dataclasses.replace(cfg.model, hidden_dropout=0.0, attention_dropout=0.0)
    if not parallel_state.model_parallel_is_initialized():
        init_distributed(cfg.parallel, cfg.model.num_layers, decoding.seed)
    loaded = build_model_from_checkpoint(cfg)
    generator = PauseGenerator(
        loaded.model,
        loaded.tokenizer,
        loaded.padded_vocab_size,
        max_batch_size=decoding.inference_max_requests,
        max_sequence_length=cfg.model.max_position_embeddings,
    )
    return loaded, generator


def is_output_rank() -> bool:
    import torch

    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
