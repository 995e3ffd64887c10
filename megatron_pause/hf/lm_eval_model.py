"""lm-evaluation-harness model ``pause-hf``: an HF causal LM that thinks for M pauses before answering.

Registered on import (lm-eval's CLI does not discover third-party models, so
run it through ``python -m megatron_pause.hf.lm_eval_cli`` or import this
module before ``lm_eval.simple_evaluate(model="pause-hf", ...)``).

``model_args``: everything lm-eval's ``hf`` model takes, plus ``num_pauses``
(M, default 0) and optionally ``pause_id`` (default: the exported
``config.pause_token_id`` or the tokenizer's ``<pause>``).

* log-likelihood requests: the context's ids are followed by M pause ids, then
  the continuation is scored -- the paper's pause-inference protocol;
* generation requests: M pause ids after every (left-padded) context, and the
  pause is forbidden while generating.

Caveat: lm-eval's left-truncation budget (``max_length - max_gen_toks``) does
not count the M pauses; keep contexts that long out of tiny-context models.
"""

from __future__ import annotations

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from transformers import LogitsProcessorList

from megatron_pause.hf.generation import ForbidTokensLogitsProcessor, pause_token_id

MODEL_NAME = "pause-hf"


@register_model(MODEL_NAME)
class PauseHFLM(HFLM):
    def __init__(self, *args, num_pauses: int | str = 0, pause_id: int | str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_pauses = int(num_pauses)
        if self.num_pauses < 0:
            raise ValueError(f"num_pauses must be >= 0, got {num_pauses}")
        given = None if pause_id is None else int(pause_id)
        self.pause_id = given if given is not None else pause_token_id(self.model, self.tokenizer)

    @property
    def pause_ids(self) -> list[int]:
        return [self.pause_id] * self.num_pauses

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        context_enc, continuation_enc = super()._encode_pair(context, continuation)
        return context_enc + self.pause_ids, continuation_enc

    def tok_batch_encode(self, strings, padding_side="left", left_truncate_len=None, truncation=False):
        ids, mask = super().tok_batch_encode(strings, padding_side, left_truncate_len, truncation)
        if self.num_pauses and padding_side == "left":
            pauses = torch.full((ids.shape[0], self.num_pauses), self.pause_id, dtype=ids.dtype)
            ids = torch.cat([ids, pauses], dim=1)
            mask = torch.cat([mask, torch.ones_like(pauses, dtype=mask.dtype)], dim=1)
        return ids, mask

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        processors = LogitsProcessorList([ForbidTokensLogitsProcessor([self.pause_id])])
        processors.extend(generation_kwargs.pop("logits_processor", None) or [])
        return super()._model_generate(
            context, max_length, stop, logits_processor=processors, **generation_kwargs
        )
