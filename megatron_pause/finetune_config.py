"""Typed configuration of a pause-finetuning run.

A finetuning run is a pretraining run (same model, parallel, precision, optimizer, training,
checkpoint and logging sections, same flags) whose data section is replaced by prompt/answer
examples: :class:`FinetuneConfig` is :class:`~megatron_pause.config.PretrainConfig` plus a
``finetune`` section. It round-trips through ``to_dict``/``from_dict`` like its parent, and its
dict is what the checkpoints of a finetuning run store; ``PretrainConfig.from_dict`` still reads
such a dict (it ignores the extra section).

Torch-free on purpose, like :mod:`megatron_pause.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_pause.config import PretrainConfig


@dataclass
class FinetuneDataConfig:
    # JSONL / JSONL.gz files, optionally weighted like --data-path ("0.7 a.jsonl 0.3 b.jsonl").
    train_data_path: list[str] = field(default_factory=list)
    valid_data_path: list[str] = field(default_factory=list)
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    # M_ft: <pause> tokens between prompt and answer (0 = standard finetuning).
    finetune_pauses: int = 0
    # "append": prompt, pauses, answer (the paper's PauseFT); "prepend": pauses, prompt, answer.
    pause_position: Literal["append", "prepend"] = "append"
    # Several examples per sequence, attention confined to each (needs --micro-batch-size 1).
    pack_sequences: bool = False
    # Train for this many passes over the training set instead of --train-iters.
    train_epochs: int | None = None
    # Stop with an error when more than this share of the examples is rejected.
    max_bad_fraction: float | None = None
    # Where rejected examples are written (default: <--save>/finetune_rejects.jsonl, else ./).
    rejects_file: str | None = None


@dataclass
class FinetuneConfig(PretrainConfig):
    finetune: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
