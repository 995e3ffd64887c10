"""Build megatron-core's ``GPTModel`` from our typed configs.

Two layer specs:

* ``local`` -- megatron-core's local spec with two submodules swapped through
  ``ModuleSpec`` (no patching): the core attention becomes
  :class:`~megatron_pause.models.attention.SDPAttention` and the norms become
  :class:`~megatron_pause.models.norm.Norm` (sequence-parallel capable). Runs
  on CPU and GPU.
* ``transformer_engine`` -- megatron-core's own TE spec (GPU; required for
  FP8). Transformer Engine ships in the NVIDIA PyTorch container; without it
  we fail with a clear message before building anything.

In both, megatron's ``SelfAttention`` becomes
:class:`~megatron_pause.models.self_attention.RotatedKeyCacheSelfAttention`, which differs only
in KV-cached inference: it caches keys already rotated instead of re-rotating the whole cached
prefix at every decode step (same parameters, same results).

The default architecture is Llama-style (RoPE, RMSNorm, SwiGLU, no biases,
untied embeddings) so checkpoints map 1:1 onto Hugging Face ``LlamaForCausalLM``.

**Why GPTModel, though megatron-core 0.19 deprecates it for HybridModel.** HybridModel builds its
stack from a layer-pattern string through the hybrid (Mamba) stack, not from a per-layer
``ModuleSpec``, so our two spec substitutions (SDPA core attention, SP-capable norms) would have to
be redone there, and its parameter names differ: every checkpoint written so far, the 0.16-era
fixture, the TE<->local name mapping and the Hugging Face conversion would all need a key
translation. GPTModel still receives critical fixes, trains bitwise-identically to 0.16.1, and is
what megatron-core's static inference engine and dist-checkpointing are tested with. We stay on it
and drop exactly one log line, its deprecation notice (:class:`_DropGPTModelDeprecation`);
``tests/test_model.py`` hashes ``GPTModel.__init__``'s source, so a release that changes how
GPTModel is built (or removes it) fails loudly and this decision is revisited.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_pause import platform
from megatron_pause.config import FusionConfig, ModelConfig, ParallelConfig, PrecisionConfig, TrainingConfig
from megatron_pause.models import fusions
from megatron_pause.models.attention import SDPAttention
from megatron_pause.models.norm import Norm
from megatron_pause.models.self_attention import RotatedKeyCacheSelfAttention

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformerEngineMissing(RuntimeError):
    pass


def require_transformer_engine() -> None:
    if importlib.util.find_spec("transformer_engine") is None:
        raise TransformerEngineMissing(
            "--transformer-impl transformer_engine (and FP8) needs NVIDIA Transformer Engine, which is not "
            "importable here. It ships in the NVIDIA PyTorch container (see the Dockerfile); it cannot be "
            "installed on CPU-only machines. Use --transformer-impl local instead."
        )


def transformer_config(
    model: ModelConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig | None = None,
    training: TrainingConfig | None = None,
    fusion: FusionConfig | None = None,
    available: fusions.KernelAvailability | None = None,
) -> TransformerConfig:
    """Map our configs onto megatron-core's TransformerConfig (the only place that does).

    ``available`` (default: this machine, :func:`fusions.detect`) decides which fusions are on."""
    precision = precision or PrecisionConfig()
    training = training or TrainingConfig()
    available = available or fusions.detect()
    on_cpu = not platform.cuda_available()
    dtype = _DTYPES[precision.params_dtype_name]
    vpp = parallel.virtual_pipeline_size(model.num_layers)
    fp8 = {}
    if precision.fp8_format is not None:
        fp8 = dict(
            fp8=precision.fp8_format,
            fp8_recipe="delayed",
            fp8_dot_product_attention=precision.fp8_dot_product_attention,
        )
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        normalization=model.normalization,
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=model.swiglu,
        activation_func=F.silu if model.swiglu else F.gelu,
        add_bias_linear=model.add_bias_linear,
        init_method_std=model.init_method_std,
        # Each fusion is on where its kernel exists here (models/fusions.py decides).
        **fusions.transformer_config_kwargs(
            fusions.decide(fusion or FusionConfig(), model, precision, available)
        ),
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=vpp,
        sequence_parallel=parallel.sequence_parallel,
        # On CPU, initialise the full weight once and scatter it: identical
        # weights at every TP size (what parity tests rely on).
        use_cpu_initialization=on_cpu,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=precision.bf16,
        fp16=precision.fp16,
        # The loss is (sum of token losses) / (tokens) over the whole global
        # batch: megatron sums per microbatch and scales grads by 1/tokens.
        calculate_per_token_loss=True,
        # gloo pairs batched isend/irecv wrongly with virtual pipeline stages
        # (silently swapped activations); per-op p2p is exact.
        batch_p2p_comm=not on_cpu,
        recompute_granularity=training.recompute_granularity,
        recompute_method=training.recompute_method,
        recompute_num_layers=training.recompute_num_layers,
        **fp8,
    )


def layer_spec(model: ModelConfig, config: TransformerConfig, vp_stage: int | None = None) -> ModuleSpec:
    """The transformer block spec for this stage (local+SDPA, or Transformer Engine)."""
    if model.transformer_impl == "transformer_engine":
        require_transformer_engine()
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return _with_rotated_key_cache(get_gpt_layer_with_transformer_engine_spec())
    layer = get_gpt_layer_local_spec(normalization=model.normalization)
    subs = dataclasses.replace(layer.submodules, input_layernorm=Norm, pre_mlp_layernorm=Norm)
    attn = layer.submodules.self_attention
    subs.self_attention = dataclasses.replace(
        attn, submodules=dataclasses.replace(attn.submodules, core_attention=SDPAttention)
    )
    layer = _with_rotated_key_cache(dataclasses.replace(layer, submodules=subs))
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(
        module=TransformerBlock,
        submodules=TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=Norm),
    )


def _with_rotated_key_cache(layer: ModuleSpec) -> ModuleSpec:
    """``layer`` with megatron's ``SelfAttention`` swapped for the subclass whose KV cache holds
    rotated keys (same values, no per-step re-rotation; see ``models/self_attention.py``)."""
    attn = layer.submodules.self_attention
    if attn.module is not SelfAttention:
        raise RuntimeError(f"expected megatron's SelfAttention in the layer spec, found {attn.module}")
    subs = dataclasses.replace(
        layer.submodules, self_attention=dataclasses.replace(attn, module=RotatedKeyCacheSelfAttention)
    )
    return dataclasses.replace(layer, submodules=subs)


class _DropGPTModelDeprecation(logging.Filter):
    """Drops megatron-core 0.19's per-construction "GPTModel IS DEPRECATED" warning, nothing else
    (see the module docstring for why we stay on GPTModel)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("GPTModel IS DEPRECATED")


_GPT_MODEL_LOGGER = logging.getLogger(GPTModel.__module__)
if not any(isinstance(f, _DropGPTModelDeprecation) for f in _GPT_MODEL_LOGGER.filters):
    _GPT_MODEL_LOGGER.addFilter(_DropGPTModelDeprecation())


def build_gpt_model(
    model: ModelConfig,
    config: TransformerConfig,
    padded_vocab_size: int,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: int | None = None,
) -> GPTModel:
    """One model chunk (one pipeline stage, or one virtual stage)."""
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model, config, vp_stage),
        vocab_size=padded_vocab_size,
        max_sequence_length=model.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=not model.untie_embeddings_and_output_weights,
        position_embedding_type=model.position_embedding_type,
        rotary_base=model.rotary_base,
        vp_stage=vp_stage,
    )
    return gpt.to(platform.device())


def build_model_chunks(
    model: ModelConfig, config: TransformerConfig, padded_vocab_size: int
) -> list[GPTModel]:
    """All chunks this rank holds: one per virtual pipeline stage (or just one)."""
    vpp = config.virtual_pipeline_model_parallel_size
    stages = range(vpp) if vpp else [None]
    chunks = []
    for vp_stage in stages:
        chunks.append(
            build_gpt_model(
                model,
                config,
                padded_vocab_size,
                pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
                vp_stage=vp_stage,
            )
        )
    return chunks
