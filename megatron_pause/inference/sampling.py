"""Next-token choice from full-vocabulary logits: greedy, or temperature / top-k / top-p sampling.

Ids the model must never emit are removed before the choice: ``<pause>`` (a pause carries no
text; the paper ignores outputs *at* pause positions, and a pause in the answer would only
postpone it) and the padded-vocabulary rows past the tokenizer (untrained, no text).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingConfig:
    """``temperature == 0`` is greedy (argmax); otherwise sample, optionally restricted to the
    ``top_k`` most likely tokens and/or the smallest set with probability >= ``top_p``. ``seed``
    makes sampling reproducible (the same on every rank, so tensor-parallel ranks agree)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def banned_mask(padded_vocab_size: int, vocab_size: int, banned_ids: list[int]) -> torch.Tensor:
    """Bool ``[padded_vocab_size]``: True where an id may never be chosen."""
    mask = torch.zeros(padded_vocab_size, dtype=torch.bool)
    mask[vocab_size:] = True
    for i in banned_ids:
        mask[i] = True
    return mask


def choose_next(
    logits: torch.Tensor, cfg: SamplingConfig, banned: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``logits`` ``[b, V]`` (fp32) -> next ids ``[b]``."""
    logits = logits.float().masked_fill(banned.to(logits.device), float("-inf"))
    if cfg.greedy:
        return logits.argmax(dim=-1)
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= cfg.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
