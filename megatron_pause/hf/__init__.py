"""Pause tokens for Hugging Face models exported by ``tools/convert_checkpoint.py export``.

Importable without megatron-core (only torch and transformers): a served or
evaluated model needs no training stack.

* :func:`generate_with_pauses` -- append M pause ids after each prompt and
  generate greedily (or with any ``generate`` option) while never emitting a pause;
* :class:`ForbidTokensLogitsProcessor` -- the logits processor that does the latter;
* ``megatron_pause.hf.lm_eval_model`` -- lm-evaluation-harness model ``pause-hf``
  (optional extra ``lm_eval``); ``python -m megatron_pause.hf.lm_eval_cli`` runs it.
"""

from megatron_pause.hf.generation import (
    ForbidTokensLogitsProcessor,
    PauseGeneration,
    generate_with_pauses,
    pause_token_id,
)

__all__ = ["ForbidTokensLogitsProcessor", "PauseGeneration", "generate_with_pauses", "pause_token_id"]
