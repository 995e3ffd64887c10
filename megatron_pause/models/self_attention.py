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
``None``, exactly as megatron's own dynamic-batching path does after rotating its keys. Queries
are rotated by megatron as before. Everything else (no cache, training, flash decode, dynamic
batching, layers without RoPE) is megatron's code unchanged. Checked bitwise against the
unrotated cache in ``tests/test_generate.py``.
"""

from __future__ import annotations

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
        key = apply_rotary_pos_emb(
            key,
            k_pos_emb[start : start + key.size(0)],
            config=self.config,
            mscale=self._yarn_concentration_factor,
            cp_group=self.pg_collection.cp,
        )
        query, key, value, (q_pos_emb, _), mask_type, block_table = super()._adjust_key_value_for_inference(
            inference_context, query, key, value, (q_pos_emb, k_pos_emb), *args, **kwargs
        )
        return query, key, value, (q_pos_emb, None), mask_type, block_table
