"""Self-attention whose static KV cache holds keys already rotated.

megatron-core's ``SelfAttention`` stores *unrotated* keys in the static-batching KV cache
(``StaticInferenceContext``) and applies RoPE to the whole cached prefix ``[0, t)`` in every
layer at every decode step, so each generated token re-rotates every earlier key: work that
grows with the context (a multiply, a negate, a concatenation and an add over
``[t, b, groups, head_dim]`` per layer) and that Hugging Face's cache does not do. Profiled on
the 130M preset at batch 16, these ops took ~15% of a decode step. Only megatron's CUDA
flash-decode path rotates keys before caching, and it needs the flash-attn kernel.

RoPE is position-wise: rotating a key when it is written (at its own position) gives the same
values as rotating it later with the same frequencies. :class:`RotatedKeyCacheSelfAttention`
therefore rotates the new keys in ``_adjust_key_value_for_inference`` -- the hook megatron calls
just before it writes them to the cache -- and hands the attention forward a key embedding of
``None``, exactly as megatron's own dynamic-batching path does after rotating its keys.

With plain RoPE (unfused, not interleaved, no context parallelism) it rotates the queries there
too, with the cos/sin of the step's positions computed once per forward and shared by every
layer (held on the inference context), where megatron computes them again in each layer for the
query and for the key. The arithmetic is megatron's own (``_apply_rotary_pos_emb_bshd``), so the
results are bitwise the same. Everything else (no cache, training, flash decode, dynamic batching,
layers without RoPE) is megatron's code unchanged. Checked against megatron's ``SelfAttention`` in
``tests/test_generate.py``.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.transformer.attention import SelfAttention


class RotatedKeyCacheSelfAttention(SelfAttention):
    def _adjust_key_value_for_inference(
        self, inference_context, query, key, value, rotary_pos_emb, *args, **kwargs
    ):
        if (
            inference_context is None
            or not inference_context.is_static_batching()
            or rotary_pos_emb is None
            or rotary_pos_emb[1] is None
            or self.config.flash_decode
        ):
            return super()._adjust_key_value_for_inference(
                inference_context, query, key, value, rotary_pos_emb, *args, **kwargs
            )
        q_pos_emb, k_pos_emb = rotary_pos_emb
        start = inference_context.sequence_len_offset
        end = start + key.size(0)
        if q_pos_emb is k_pos_emb and self._plain_rope():
            cos, sin = _step_cos_sin(
                inference_context, k_pos_emb, start, end, self._yarn_concentration_factor, key.dtype
            )
            query, key = _rotate(query, cos, sin), _rotate(key, cos, sin)
            query, key, value, _, mask_type, block_table = super()._adjust_key_value_for_inference(
                inference_context, query, key, value, None, *args, **kwargs
            )
            return query, key, value, None, mask_type, block_table
        key = apply_rotary_pos_emb(
            key,
            k_pos_emb[start:end],
            config=self.config,
            mscale=self._yarn_concentration_factor,
            cp_group=self.pg_collection.cp,
        )
        query, key, value, (q_pos_emb, _), mask_type, block_table = super()._adjust_key_value_for_inference(
            inference_context, query, key, value, (q_pos_emb, k_pos_emb), *args, **kwargs
        )
        return query, key, value, (q_pos_emb, None), mask_type, block_table

    def _plain_rope(self) -> bool:
        """RoPE that megatron computes with ``_apply_rotary_pos_emb_bshd`` and nothing else."""
        c = self.config
        return not (
            c.apply_rope_fusion
            or c.rotary_interleaved
            or c.multi_latent_attention
            or getattr(c, "mrope_section", None)
            or self.pg_collection.cp.size() > 1
        )


def _step_cos_sin(ctx, freqs: torch.Tensor, start: int, end: int, mscale: float, dtype: torch.dtype):
    """cos/sin of positions ``[start, end)``, computed by the first layer of a forward and reused by
    the others. The entry holds ``freqs`` itself, so an identity check cannot be fooled by a
    recycled id; every layer of a stage gets the same ``freqs`` object in one forward."""
    cached = getattr(ctx, "_rotated_key_cache_cos_sin", None)
    if (
        cached is not None
        and cached[0] is freqs
        and cached[1:4] == (start, end, dtype)
        and cached[4] == mscale
    ):
        return cached[5], cached[6]
    f = freqs[start:end]
    cos = (torch.cos(f) * mscale).to(dtype)
    sin = (torch.sin(f) * mscale).to(dtype)
    ctx._rotated_key_cache_cos_sin = (freqs, start, end, dtype, mscale, cos, sin)
    return cos, sin


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """megatron's unfused, non-interleaved RoPE given its cos/sin (``rotary_percent`` < 1 leaves
    the tail of each head unrotated)."""
    rot_dim = cos.shape[-1]
    t, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    x1, x2 = torch.chunk(t, 2, dim=-1)
    t = (t * cos) + (torch.cat((-x2, x1), dim=-1) * sin)
    return torch.cat((t, t_pass), dim=-1) if t_pass.shape[-1] else t
