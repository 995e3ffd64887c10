"""Typed configuration for every component, and the model presets.

Megatron-LM reads one global ``args`` namespace everywhere. We keep its flag
names at the command-line edge (``megatron_pause/arguments.py``) and pass each
component only the narrow, typed config it needs: the model builder sees a
:class:`ModelConfig`, the optimizer a :class:`OptimizerConfig`, and so on. The
whole :class:`PretrainConfig` is serialisable (``to_dict``/``from_dict``) so it
is stored with every checkpoint and a run can be inspected or reproduced.

Importing this module is free of torch and megatron imports on purpose: the
CLI validates a configuration before any heavy import or process group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelConfig:
    """Architecture of the GPT model. Defaults are Llama-style (RoPE, RMSNorm,
    SwiGLU, no linear biases, untied embeddings) so a checkpoint maps 1:1 onto
    Hugging Face ``LlamaForCausalLM``."""

    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 172
    num_attention_heads: int = 4
    num_query_groups: int | None = None  # grouped-query attention; None = multi-head
    seq_length: int = 128
    max_position_embeddings: int | None = None  # defaults to seq_length
    normalization: Literal["RMSNorm", "LayerNorm"] = "RMSNorm"
    norm_epsilon: float = 1e-5
    swiglu: bool = True
    add_bias_linear: bool = False
    position_embedding_type: Literal["rope", "learned_absolute"] = "rope"
    rotary_base: int = 10000
    untie_embeddings_and_output_weights: bool = True
    init_method_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    make_vocab_size_divisible_by: int = 128
    # "local" = megatron-core's local layers with a torch SDPA core attention
    # (runs anywhere); "transformer_engine" = megatron-core's TE spec (GPU).
    transformer_impl: Literal["local", "transformer_engine"] = "local"
    # How the <pause> embedding row is initialised when it is created; see
    # megatron_pause/models/pause_vocab.py for why "mean" is the default.
    pause_init: Literal["mean", "normal", "zeros"] = "mean"

    def __post_init__(self) -> None:
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.seq_length


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    num_layers_per_virtual_pipeline_stage: int | None = None
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False

    def virtual_pipeline_size(self, num_layers: int) -> int | None:
        if self.num_layers_per_virtual_pipeline_stage is None:
            return None
        per_stage = num_layers // self.pipeline_model_parallel_size
        return per_stage // self.num_layers_per_virtual_pipeline_stage

    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size


@dataclass
class PrecisionConfig:
    bf16: bool = False
    fp16: bool = False
    loss_scale: float | None = None  # None = dynamic loss scaling (fp16 only)
    initial_loss_scale: float = 2.0**32
    fp8_format: Literal["hybrid", "e4m3"] | None = None
    fp8_dot_product_attention: bool = False

    @property
    def params_dtype_name(self) -> str:
        return "bfloat16" if self.bf16 else "float16" if self.fp16 else "float32"


@dataclass
class PauseConfig:
    pause_token: str = "<pause>"
    # Share of the sequence length inserted as pauses into each training sample
    # (the paper uses 0.1). 0 turns online insertion off; shards preprocessed
    # with --insert-pauses are never paused twice.
    pause_fraction: float = 0.1


@dataclass
class TokenizerConfig:
    tokenizer_type: str = "SentencePieceTokenizer"
    tokenizer_model: str | None = None


@dataclass
class DataConfig:
    # Megatron's --data-path: prefixes, optionally weighted ("0.7 a 0.3 b").
    data_path: list[str] = field(default_factory=list)
    split: str = "969,30,1"
    data_cache_path: str | None = None
    eod_mask_loss: bool = False
    num_workers: int = 0
    # Synthetic random tokens instead of files (smoke tests, benchmarks).
    mock_data: bool = False


@dataclass
class OptimizerConfig:
    optimizer: Literal["adam"] = "adam"
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    lr_warmup_iters: int = 0
    lr_decay_iters: int | None = None  # defaults to train_iters
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"


@dataclass
class TrainingConfig:
    micro_batch_size: int = 2
    global_batch_size: int = 8
    train_iters: int = 20
    eval_interval: int = 10
    eval_iters: int = 2
    skip_train: bool = False
    seed: int = 1234
    recompute_granularity: Literal["full", "selective"] | None = None
    recompute_method: Literal["uniform", "block"] | None = None
    recompute_num_layers: int | None = None
    # On a NaN/Inf loss: stop with a clear error (default) or skip the step.
    skip_nonfinite_steps: bool = False
    exit_duration_in_mins: float | None = None
    # Stop (saving first, with --save) after an iteration divisible by this.
    exit_interval: int | None = None


@dataclass
class CheckpointConfig:
    save: str | None = None
    load: str | None = None
    save_interval: int | None = None
    # Save and exit on SIGTERM (Slurm sends it before the time limit).
    exit_signal_handler: bool = True
    # Optimizer-state sharding in checkpoints: "fully_reshardable" reshards
    # across TP/PP/DP; "dp_reshardable" only across DP (smaller, faster).
    dist_ckpt_optim_sharding: Literal["fully_reshardable", "dp_reshardable"] = "fully_reshardable"
    finetune: bool = False  # load weights only: no optimizer, scheduler or iteration
    # Load this iteration instead of the tracker's latest (Megatron-LM's --ckpt-step).
    ckpt_step: int | None = None
    # Take model, tokenizer and pause settings from the checkpoint's stored configuration.
    use_checkpoint_args: bool = False
    # On resume, follow the flags' LR schedule instead of the one stored in the checkpoint.
    override_opt_param_scheduler: bool = False


@dataclass
class LoggingConfig:
    log_interval: int = 1
    tensorboard_dir: str | None = None
    metrics_file: str | None = None
    # Peak FLOP/s per device for MFU; None = detected GPU (or no MFU on CPU).
    peak_flops: float | None = None


@dataclass
class FusionConfig:
    """Which of megatron-core's fused kernels a run may use. ``True`` means "on wherever its
    kernel is available on the running machine" (CUDA, plus Transformer Engine or apex where the
    fusion needs them); ``False`` forces it off. The decision itself is made in one place,
    :mod:`megatron_pause.models.fusions`, and logged at start-up. Field names are
    megatron-core's ``TransformerConfig`` names (bias-activation split into its SwiGLU and GELU
    halves, as Megatron-LM's flags are)."""

    bias_swiglu_fusion: bool = True
    bias_gelu_fusion: bool = True
    bias_dropout_fusion: bool = True
    masked_softmax_fusion: bool = True
    apply_rope_fusion: bool = True
    gradient_accumulation_fusion: bool = True
    persist_layer_norm: bool = True
    cross_entropy_loss_fusion: bool = True


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    pause: PauseConfig = field(default_factory=PauseConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        kwargs = {}
        for f in dataclasses.fields(cls):
            sub_cls = f.default_factory  # type: ignore[misc]
            known = {sf.name for sf in dataclasses.fields(sub_cls)}
            kwargs[f.name] = sub_cls(**{k: v for k, v in d.get(f.name, {}).items() if k in known})
        return cls(**kwargs)


# Presets. The paper (Goyal et al., 2024, Sec. 4) trains decoder-only models of
# 1B and 130M parameters on C4 but does not publish their layer shapes. We use
# standard shapes of those sizes with Llama-style blocks: 130M follows GPT-3
# Small (12 x 768, 12 heads), 1B follows the common 24 x 2048 / 16-head layout
# (e.g. TinyLlama/Pythia-1B class); the paper's context length of 2048 is kept
# for 1B, and 130M uses 1024 to stay cheap. Parameter counts below exclude the
# embeddings (vocab-dependent).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # A few seconds per step on a 2-core CPU.
    "tiny": dict(num_layers=4, hidden_size=128, ffn_hidden_size=344, num_attention_heads=4, seq_length=128),
    # ~85M non-embedding parameters + embeddings ~= 130M with a 32k vocab.
    "130m": dict(
        num_layers=12, hidden_size=768, ffn_hidden_size=2048, num_attention_heads=12, seq_length=1024
    ),
    # ~1.0B non-embedding + ~0.13B (untied) embeddings with a 32k vocab.
    "1b": dict(
        num_layers=24, hidden_size=2048, ffn_hidden_size=4096, num_attention_heads=16, seq_length=2048
    ),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return ModelConfig(**{**MODEL_PRESETS[name], **overrides})
