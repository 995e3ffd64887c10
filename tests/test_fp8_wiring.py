"""FP8 / Transformer Engine wiring, checked on CPU (TE cannot be installed here).

What can be proven without a GPU: the flags reach megatron-core's
TransformerConfig (FP8 format, recipe, FP8 dot-product attention), the TE
implementation selects megatron-core's own TE layer spec, and without TE the
run stops early with a message that says what to do. The kernels themselves
are exercised by tests/gpu and benchmarks/bench_gpu.py on a GPU machine.
"""

from __future__ import annotations

import importlib.util

import pytest

from megatron_pause.arguments import ConfigError, parse_args, validate_config
from megatron_pause.models import gpt

FP8_ARGV = [
    "--mock-data", "--model-size", "tiny", "--ffn-hidden-size", "352", "--bf16",
    "--transformer-impl", "transformer_engine", "--fp8-format", "hybrid", "--fp8-dot-product-attention",
]  # fmt: skip


def test_fp8_flags_reach_megatron_transformer_config():
    cfg = parse_args(FP8_ARGV)
    tcfg = gpt.transformer_config(cfg.model, cfg.parallel, cfg.precision, cfg.training)
    assert tcfg.fp8 == "hybrid"
    assert tcfg.fp8_recipe == "delayed"
    assert tcfg.fp8_dot_product_attention is True
    assert tcfg.bf16 and str(tcfg.params_dtype) == "torch.bfloat16"


def test_without_fp8_flags_nothing_is_fp8():
    cfg = parse_args(["--mock-data", "--model-size", "tiny", "--bf16"])
    tcfg = gpt.transformer_config(cfg.model, cfg.parallel, cfg.precision, cfg.training)
    assert not tcfg.fp8 and not tcfg.fp8_dot_product_attention


def test_transformer_engine_impl_selects_megatrons_te_spec(monkeypatch):
    """The TE spec is megatron's own, with only its SelfAttention swapped for the rotated-key
    cache subclass (a stand-in spec plays TE's, which cannot be built without TE)."""
    import megatron.core.models.gpt.gpt_layer_specs as specs
    from megatron.core.transformer.attention import SelfAttention

    from megatron_pause.models.self_attention import RotatedKeyCacheSelfAttention

    stand_in = specs.get_gpt_layer_local_spec()
    assert stand_in.submodules.self_attention.module is SelfAttention
    monkeypatch.setattr(specs, "get_gpt_layer_with_transformer_engine_spec", lambda *a, **k: stand_in)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "transformer_engine" else real_find_spec(name, *a),
    )
    cfg = parse_args(FP8_ARGV)
    tcfg = gpt.transformer_config(cfg.model, cfg.parallel, cfg.precision, cfg.training)
    spec = gpt.layer_spec(cfg.model, tcfg)
    attn, orig = spec.submodules.self_attention, stand_in.submodules.self_attention
    assert attn.module is RotatedKeyCacheSelfAttention
    assert attn.submodules is orig.submodules and attn.params == orig.params
    for field in ("input_layernorm", "mlp", "pre_mlp_layernorm", "self_attn_bda", "mlp_bda"):
        assert getattr(spec.submodules, field) is getattr(stand_in.submodules, field), field
    assert spec.module is stand_in.module


@pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is not None, reason="TE is installed")
def test_fp8_without_transformer_engine_is_rejected_before_any_process_group():
    cfg = parse_args(FP8_ARGV)
    with pytest.raises(ConfigError, match="Transformer Engine"):
        validate_config(cfg, world_size=1)
    tcfg = gpt.transformer_config(cfg.model, cfg.parallel, cfg.precision, cfg.training)
    with pytest.raises(gpt.TransformerEngineMissing, match="NVIDIA PyTorch container"):
        gpt.layer_spec(cfg.model, tcfg)
