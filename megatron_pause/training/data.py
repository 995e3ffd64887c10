"""Data for a pretraining run: the tokenizer and the train/validation datasets.

Real data comes from indexed shards through the pause-pretraining dataset
(:mod:`megatron_pause.data.dataset`); ``--mock-data`` gives random tokens with
the same pause insertion and masking, for smoke tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from megatron_pause.config import PretrainConfig
from megatron_pause.pause import ONLINE_STREAM, insert_pauses, num_pauses, pause_key, pause_loss_mask_np


@dataclass
class MockTokenizer:
    """Stands in for a tokenizer with --mock-data: ids 1..999 are 'text', 0 is eod."""

    base_vocab_size: int = 1000
    tokenizer_type: str = "MockTokenizer"
    identity: str = "MockTokenizer:1000"
    eod: int = 0
    pad: int = 0
    bos: int | None = None

    @property
    def pause_id(self) -> int:
        return self.base_vocab_size

    @property
    def vocab_size(self) -> int:
        return self.base_vocab_size + 1

    def padded_vocab_size(
        self, make_vocab_size_divisible_by: int = 128, tensor_model_parallel_size: int = 1
    ) -> int:
        from megatron_pause.tokenizer import padded_vocab_size

        return padded_vocab_size(self.vocab_size, make_vocab_size_divisible_by, tensor_model_parallel_size)


class MockPauseDataset(torch.utils.data.Dataset):
    """Random token windows, deterministic in (seed, index), with online pauses."""

    def __init__(
        self, num_samples: int, seq_length: int, tokenizer: MockTokenizer, pause_fraction: float, seed: int
    ):
        self.num_samples = num_samples
        self.seq_length = seq_length
        self.tok = tokenizer
        self.pause_fraction = pause_fraction
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, 7, index])
        window = rng.integers(1, self.tok.base_vocab_size, size=self.seq_length + 1, dtype=np.int64)
        # The dataset's recipe: num_pauses(seq_length) pauses into the
        # (seq_length + 1)-token window, trimmed back to the window.
        k = num_pauses(self.seq_length, self.pause_fraction)
        key = pause_key(self.seed, index, ONLINE_STREAM)
        window = insert_pauses(window, k, self.tok.pause_id, key, length=self.seq_length + 1)
        tokens, labels = window[:-1], window[1:]
        return {
            "tokens": torch.from_numpy(tokens.copy()),
            "labels": torch.from_numpy(labels.copy()),
            "loss_mask": torch.from_numpy(pause_loss_mask_np(labels, self.tok.pause_id)),
            "position_ids": torch.arange(self.seq_length, dtype=torch.long),
        }


def build_run_tokenizer(cfg: PretrainConfig):
    if cfg.data.mock_data and not cfg.tokenizer.tokenizer_model:
        return MockTokenizer()
    from megatron_pause.tokenizer import build_tokenizer

    return build_tokenizer(cfg.tokenizer.tokenizer_type, cfg.tokenizer.tokenizer_model, cfg.pause.pause_token)


def num_samples_needed(cfg: PretrainConfig) -> tuple[int, int, int]:
    """Samples each split must provide for this run (megatron sizes its sample index to it)."""
    t = cfg.training
    train = t.train_iters * t.global_batch_size
    evals = (t.train_iters // t.eval_interval + 1) if t.eval_interval else 1
    # Every evaluation reads the same first eval_iters global batches.
    valid = t.eval_iters * t.global_batch_size if evals else 0
    return train, valid, t.eval_iters * t.global_batch_size


def build_datasets(cfg: PretrainConfig, tokenizer: Any, log: Any):
    """(train, valid) map-style datasets; either may be None when its split is empty."""
    n_train, n_valid, n_test = num_samples_needed(cfg)
    if cfg.data.mock_data:
        seed, seq, frac = cfg.training.seed, cfg.model.seq_length, cfg.pause.pause_fraction
        train = MockPauseDataset(max(n_train, 1), seq, tokenizer, frac, seed)
        return train, MockPauseDataset(max(n_valid, 1), seq, tokenizer, frac, seed + 1)
    from megatron_pause.data.dataset import PretrainDataConfig, build_pretraining_datasets

    data_cfg = PretrainDataConfig(
        data_path=list(cfg.data.data_path),
        split=cfg.data.split,
        seed=cfg.training.seed,
        pause_fraction=cfg.pause.pause_fraction,
        eod_mask_loss=cfg.data.eod_mask_loss,
        data_cache_path=cfg.data.data_cache_path,
        # The model builds its causal mask itself; a dense [1, s, s] mask per
        # sample would only cost time (torch.tril) and memory.
        create_attention_mask=False,
    )
    train, valid, _ = build_pretraining_datasets(
        data_cfg, tokenizer, cfg.model.seq_length, (n_train, n_valid, n_test)
    )
    return train, valid
