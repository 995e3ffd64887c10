"""KV-cached decoding on the GPU under both layer specs: the rotated-key cache
(``models/self_attention.py``) gives the logits of megatron's own ``SelfAttention``, and cached
decoding equals a full forward. Under the TE spec the keys take the path with Transformer
Engine's fused RoPE, which the CPU suite cannot run. fp32 with TF32 off. Skipped without CUDA.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch
from gpu_worlds import single_rank_nccl_group

from megatron_pause.config import ParallelConfig, model_preset

HAVE_TE = importlib.util.find_spec("transformer_engine") is not None
PADDED_VOCAB = 1024
PROMPT, STEPS = 12, 6


@pytest.fixture(scope="module")
def process_group():
    with single_rank_nccl_group(num_layers=model_preset("tiny").num_layers, seed=11):
        yield


@pytest.mark.parametrize(
    "impl",
    ["local", pytest.param("transformer_engine", marks=pytest.mark.skipif(not HAVE_TE, reason="no TE"))],
)
def test_cached_decoding_matches_megatrons_attention_and_a_full_forward(process_group, impl, monkeypatch):
    from megatron.core.inference.utils import InferenceMode
    from megatron.core.transformer.attention import SelfAttention

    from megatron_pause.inference.engine import _preallocated_context
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.models.self_attention import RotatedKeyCacheSelfAttention

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model_cfg = dataclasses.replace(model_preset("tiny"), transformer_impl=impl)
    (model,) = build_model_chunks(model_cfg, transformer_config(model_cfg, ParallelConfig()), PADDED_VOCAB)
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, RotatedKeyCacheSelfAttention)]
    assert len(layers) == model_cfg.num_layers
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(10, PADDED_VOCAB - 1, (2, PROMPT), generator=g).cuda()

    def forward(tokens, start, ctx):
        pos = torch.arange(start, start + tokens.shape[1], device="cuda")[None].expand(tokens.shape[0], -1)
        with torch.inference_mode(), InferenceMode.active():
            out = model(tokens, pos, None, inference_context=ctx, runtime_gather_output=True)
        ctx.sequence_len_offset += tokens.shape[1]
        return out[:, -1].float()

    def cached_steps():
        ctx = _preallocated_context(model, 2, PROMPT + STEPS + 2)
        out = [forward(x, 0, ctx)]
        for i in range(STEPS):
            out.append(forward(x[:, i : i + 1], PROMPT + i, ctx))
        return torch.stack(out, dim=1)

    ours = cached_steps()
    for m in layers:
        m.__class__ = SelfAttention  # megatron's own cache handling, same weights
    theirs = cached_steps()
    full = torch.cat([x, x[:, :STEPS]], dim=1)
    with torch.no_grad():
        pos = torch.arange(full.shape[1], device="cuda")[None]
        uncached = model(full, pos, None)[:, PROMPT - 1 :].float()
    scale = uncached.abs().max()
    assert (ours - theirs).abs().max() <= 1e-5 * scale
    assert (ours - uncached).abs().max() <= 1e-4 * scale
