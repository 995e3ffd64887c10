"""Core attention on ``torch.nn.functional.scaled_dot_product_attention``.

megatron-core's local ``DotProductAttention`` materialises the full score
matrix in a CUDA-only global memory buffer. This module is the drop-in
replacement we plug into the local layer spec as the ``core_attention``
``ModuleSpec`` submodule (megatron's sanctioned extension point, no patching):
it takes the same arguments, runs anywhere torch runs, and lets torch pick a
fused kernel (flash / memory-efficient on GPU, a blocked kernel on CPU).

Shapes follow megatron: query ``[sq, b, np, hn]``, key/value ``[sk, b, ng, hn]``
(``ng`` query groups for GQA), output ``[sq, b, np * hn]``.

Packed sequences (several finetuning examples in one row) arrive the way
megatron-core hands them to Transformer Engine: ``packed_seq_params`` in the
``thd`` format, query ``[t, np, hn]`` and ``cu_seqlens`` marking where each
example starts. megatron already restarts the rotary positions per example
(``apply_rotary_pos_emb(cu_seqlens=...)``); here attention is confined to each
example with a block-diagonal causal mask, so a packed example computes what it
would compute alone. Local and TE specs thus share one packed-batch format.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide


class SDPAttention(MegatronModule):
    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError(
                "SDPAttention does not support context parallelism; use the Transformer Engine spec"
            )
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.padding, AttnMaskType.no_mask):
            raise ValueError(f"SDPAttention supports causal/padding/no_mask attention, got {attn_mask_type}")
        tp_size = pg_collection.tp.size() if pg_collection is not None else _tp_world_size()
        self.attn_mask_type = attn_mask_type
        self.heads_per_partition = divide(config.num_attention_heads, tp_size)
        self.groups_per_partition = divide(config.num_query_groups, tp_size)
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("SDPAttention does not support an attention bias")
        if packed_seq_params is not None:
            return self._packed(query, key, value, packed_seq_params)
        mask_type = attn_mask_type or self.attn_mask_type
        sq, b = query.shape[0], query.shape[1]
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        causal = mask_type == AttnMaskType.causal
        mask = None
        if not causal and attention_mask is not None:
            # megatron masks are True where attention is *forbidden*.
            mask = ~attention_mask
        gqa = self.heads_per_partition != self.groups_per_partition
        dropout_p, ctx = self._dropout()
        with ctx:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal and sq > 1,
                scale=self.softmax_scale, enable_gqa=gqa,
            )  # fmt: skip
        # [b, h, s, d] -> [s, b, h * d]
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)

    def _dropout(self):
        """This step's dropout probability and the RNG context to draw it in: dropout must draw
        from the model-parallel RNG stream so that each TP rank drops different heads, as
        megatron's own attention does."""
        dropout_p = self.dropout_p if self.training else 0.0
        if dropout_p > 0 and not self.config.sequence_parallel:
            return dropout_p, tensor_parallel.get_cuda_rng_tracker().fork()
        return dropout_p, _null()

    def _packed(self, query, key, value, packed_seq_params) -> torch.Tensor:
        """``thd`` inputs ``[t, h, d]``: causal attention within each ``cu_seqlens`` segment only."""
        if packed_seq_params.qkv_format != "thd":
            raise ValueError(f"SDPAttention packs only the thd format, got {packed_seq_params.qkv_format!r}")
        cu_q, cu_kv = packed_seq_params.cu_seqlens_q, packed_seq_params.cu_seqlens_kv
        if cu_kv is not None and not torch.equal(cu_q, cu_kv):
            raise ValueError("SDPAttention packs self-attention only (cu_seqlens_q == cu_seqlens_kv)")
        t = query.shape[0]
        if int(cu_q[-1]) != t:
            raise ValueError(f"cu_seqlens ends at {int(cu_q[-1])} but the packed row has {t} tokens")
        lengths = (cu_q[1:] - cu_q[:-1]).to(torch.long)
        segment = torch.repeat_interleave(
            torch.arange(len(lengths), device=query.device), lengths.to(query.device)
        )
        pos = torch.arange(t, device=query.device)
        allowed = (segment[:, None] == segment[None, :]) & (pos[None, :] <= pos[:, None])
        # [t, h, d] -> [1, h, t, d]
        q, k, v = (x.permute(1, 0, 2).unsqueeze(0) for x in (query, key, value))
        dropout_p, ctx = self._dropout()
        with ctx:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=self.softmax_scale,
                enable_gqa=self.heads_per_partition != self.groups_per_partition,
            )  # fmt: skip
        # [1, h, t, d] -> [t, h * d]; megatron reshapes it to [t, 1, h * d]
        return out.squeeze(0).permute(1, 0, 2).reshape(t, -1)


def _tp_world_size() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_world_size()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
