"""RMSNorm / LayerNorm for the local layer spec, with sequence-parallel support.

megatron-core's ``WrappedTorchNorm`` refuses ``sequence_parallel=True``. The
only thing sequence parallelism asks of a norm is that its weights be marked
``sequence_parallel`` so that megatron all-reduces their gradients across the
tensor-parallel group (each TP rank saw only its slice of the sequence). This
module does that and otherwise is torch's own norm.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class Norm:
    """Builds the norm that ``config.normalization`` names. A class whose
    ``__new__`` returns a torch module, because megatron's ``build_module``
    instantiates classes but passes plain functions through uncalled."""

    def __new__(
        cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **unused
    ) -> torch.nn.Module:
        if config.normalization == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        elif config.normalization == "LayerNorm":
            norm = torch.nn.LayerNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        else:
            raise ValueError(f"normalization must be RMSNorm or LayerNorm, got {config.normalization!r}")
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm
