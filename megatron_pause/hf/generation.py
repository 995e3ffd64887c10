"""Pause-aware generation for Hugging Face causal LMs.

The paper's inference recipe: after the prompt come M ``<pause>`` ids; the
model's outputs at the prompt and pause positions are ignored and the answer
starts after the last pause. The model is never trained to *predict* a pause
(pause targets are masked out of the loss), so its pause logit is untrained
and must be forbidden while decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

DEFAULT_PAUSE_TOKEN = "<pause>"  # same as megatron_pause.pause.DEFAULT_PAUSE_TOKEN (not imported: torch-only)


class ForbidTokensLogitsProcessor(LogitsProcessor):
    """Set the scores of ``token_ids`` to -inf at every decoding step."""

    def __init__(self, token_ids: Sequence[int]):
        self.token_ids = sorted({int(t) for t in token_ids})

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[:, self.token_ids] = float("-inf")
        return scores


def pause_token_id(model=None, tokenizer=None, pause_token: str = DEFAULT_PAUSE_TOKEN) -> int:
    """The pause id: ``config.pause_token_id`` of an exported model, else the tokenizer's ``<pause>``."""
    config_id = getattr(getattr(model, "config", None), "pause_token_id", None)
    tok_id = None
    if tokenizer is not None:
        got = tokenizer.convert_tokens_to_ids(pause_token)
        if got is not None and got != tokenizer.unk_token_id:
            tok_id = int(got)
    if config_id is not None and tok_id is not None and int(config_id) != tok_id:
        raise ValueError(
            f"config.pause_token_id is {config_id} but the tokenizer has {pause_token} = {tok_id}"
        )
    found = config_id if config_id is not None else tok_id
    if found is None:
        raise ValueError(
            f"neither the model config (pause_token_id) nor the tokenizer knows {pause_token!r}; "
            "pass pause_id= explicitly"
        )
    return int(found)


@dataclass
class PauseGeneration:
    text: str  # the completion only (no prompt, no pauses)
    token_ids: list[int]  # the completion's ids (the eos id, if generated, included)
    prompt_ids: list[int]  # prompt ids with the pauses that were fed


@torch.no_grad()
def generate_with_pauses(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    num_pauses: int,
    max_new_tokens: int = 32,
    pause_id: int | None = None,
    batch_size: int = 8,
    **generate_kwargs,
) -> list[PauseGeneration]:
    """Append ``num_pauses`` pause ids to each prompt and generate (greedy by
    default) without ever emitting a pause.

    Prompts are strings (tokenized without special tokens, as in training) or
    lists of ids. Batches are left-padded, so every prompt's pauses sit right
    before its first generated token. Extra keyword arguments go to
    ``model.generate`` (e.g. ``do_sample=True, top_p=0.9``)."""
    if num_pauses < 0:
        raise ValueError(f"num_pauses must be >= 0, got {num_pauses}")
    pid = pause_token_id(model, tokenizer) if pause_id is None else int(pause_id)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    processors = LogitsProcessorList([ForbidTokensLogitsProcessor([pid])])
    processors.extend(generate_kwargs.pop("logits_processor", []) or [])
    generate_kwargs.setdefault("do_sample", False)

    encoded = [
        list(tokenizer(p, add_special_tokens=False)["input_ids"])
        if isinstance(p, str)
        else [int(i) for i in p]
        for p in prompts
    ]
    results: list[PauseGeneration] = []
    for start in range(0, len(encoded), batch_size):
        batch = [ids + [pid] * num_pauses for ids in encoded[start : start + batch_size]]
        if any(not ids for ids in batch):
            raise ValueError("empty prompt with no pauses: nothing to condition on")
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), max_new_tokens=max_new_tokens,
            logits_processor=processors, pad_token_id=pad, eos_token_id=eos, **generate_kwargs,
        )  # fmt: skip
        for row, ids in enumerate(batch):
            new = out[row, width:].tolist()
            if eos is not None and eos in new:
                new = new[: new.index(eos) + 1]
            text_ids = [i for i in new if i != eos]
            results.append(PauseGeneration(tokenizer.decode(text_ids), new, ids))
    return results
