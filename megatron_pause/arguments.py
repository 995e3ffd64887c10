"""Megatron-LM's command line, mapped onto our typed configs, and the checks that need no GPU.

Why this shape:

* **Megatron-LM's flag names.** Users bring launch scripts written for Megatron-LM's
  ``pretrain_gpt.py``; the flags they already pass (``--tensor-model-parallel-size``,
  ``--micro-batch-size``, ``--data-path``, ...) mean the same here. Our additions are few:
  ``--model-size`` (a preset), the pause flags, ``--metrics-file``, ``--peak-flops`` and
  ``--skip-nonfinite-steps``.
* **One table, three uses.** Every option's argparse ``dest`` is ``"<section>.<field>"`` of
  :class:`~megatron_pause.config.PretrainConfig`, so parsing, preset merging and
  :func:`config_to_argv` all read the same parser; nothing lists the fields twice.
* **Defaults live in the dataclasses, not in argparse.** The parser is built with
  ``argument_default=SUPPRESS``: an option absent from the command line is absent from the
  namespace. That is what lets ``--model-size 1b --num-layers 12`` mean "the 1B preset with 12
  layers": only flags that were actually given override the preset, and nothing here has to
  repeat a default value (the help text shows the dataclass defaults).
* **Validation before any process group.** :func:`validate_config` needs only the world size, so
  ``main`` can reject a bad layout on every rank at once, in a second, with a message that names
  the flags to change, instead of a shape error deep in megatron-core minutes into a Slurm job.
  All problems are reported together so one resubmission fixes them all.

Boolean architecture flags come in pairs because our defaults are Llama-style (SwiGLU, no
biases, untied embeddings) while Megatron-LM's flags only switch those on:
``--swiglu``/``--no-swiglu``, ``--disable-bias-linear``/``--add-bias-linear`` and
``--untie-embeddings-and-output-weights``/``--tie-embeddings-and-output-weights``. The Megatron-LM
spellings are accepted (and match our defaults); the other half switches back to GPT-2 style.
For every value option and for these pairs the last occurrence wins, so a script's ``EXTRA_ARGS``
appended at the end overrides what the script set.

This module imports neither torch nor megatron: ``--help`` and validation stay instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from megatron_pause.config import (
    MODEL_PRESETS,
    ModelConfig,
    PretrainConfig,
    model_preset,
)
from megatron_pause.data.blend import check_prefix_files, check_split
from megatron_pause.data.blend import parse_data_path as parse_blend

# Tokenizer types megatron_pause.tokenizer understands (Megatron-LM's names). Kept as a literal so
# that parsing does not import the tokenizer (and with it numpy/torch); tests/test_arguments.py
# checks it equals megatron_pause.tokenizer.SUPPORTED_TOKENIZER_TYPES.
TOKENIZER_TYPES: tuple[str, ...] = (
    "GPTSentencePieceTokenizer",
    "HuggingFaceTokenizer",
    "Llama2Tokenizer",
    "SentencePieceTokenizer",
)
_HF_TOKENIZER_TYPES = {"HuggingFaceTokenizer"}

# Namespace keys that are not config fields.
_MODEL_SIZE = "_model_size"
_GQA = "_group_query_attention"

_SECTION_CLASSES: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(PretrainConfig)
}


class ConfigError(ValueError):
    """An invalid configuration; ``problems`` lists each one, each naming the flags involved."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"invalid configuration: {self.problems[0]}"
        else:
            message = "invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def _field_default(dest: str) -> Any:
    section, name = dest.split(".", 1)
    return getattr(_SECTION_CLASSES[section](), name)


def _choices(dest: str) -> tuple[str, ...]:
    """The values of a ``Literal[...]`` (optionally ``| None``) field, so choices cannot drift
    from config.py."""
    section, name = dest.split(".", 1)
    hint = typing.get_type_hints(_SECTION_CLASSES[section])[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is not typing.Literal:
        raise TypeError(f"{dest} is not a Literal field")
    return tuple(typing.get_args(hint))


def _help(text: str, dest: str, show_default: bool = True) -> str:
    default = _field_default(dest)
    if show_default and default is not None and default is not False and default != []:
        text = f"{text} (default: {default})"
    # argparse %-formats help strings.
    return text.replace("%", "%%")


class _Builder:
    """Thin helper so each flag is one line: dest, type and help, with the default shown."""

    def __init__(self, group: argparse._ArgumentGroup):
        self.group = group

    def value(self, flag: str, dest: str, type: Any, help: str, show_default: bool = True, **kw: Any) -> None:
        if kw.get("choices") == "literal":
            kw["choices"] = _choices(dest)
        if "choices" not in kw:
            kw["metavar"] = dest.split(".", 1)[1].upper()
        self.group.add_argument(flag, dest=dest, type=type, help=_help(help, dest, show_default), **kw)

    def true(self, flag: str, dest: str, help: str) -> None:
        self.group.add_argument(flag, dest=dest, action="store_true", help=_help(help, dest, False))

    def false(self, flag: str, dest: str, help: str) -> None:
        """A Megatron-LM style ``--no-...`` switch: stores False into a field that defaults to True."""
        self.group.add_argument(flag, dest=dest, action="store_const", const=False, help=help)

    def pair(self, true_flag: str, false_flag: str, dest: str, help_true: str, help_false: str) -> None:
        """Two flags storing True / False into one boolean field; the last one given wins."""
        default = _field_default(dest)
        mark = " (default)"
        self.group.add_argument(
            true_flag, dest=dest, action="store_const", const=True, help=help_true + (mark if default else "")
        )
        self.group.add_argument(
            false_flag,
            dest=dest,
            action="store_const",
            const=False,
            help=help_false + ("" if default else mark),
        )


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    g = _Builder(parser.add_argument_group("model"))
    presets = "; ".join(
        f"{name}: {p['num_layers']}x{p['hidden_size']}, {p['num_attention_heads']} heads, seq {p['seq_length']}"
        for name, p in MODEL_PRESETS.items()
    )
    g.group.add_argument(
        "--model-size",
        dest=_MODEL_SIZE,
        choices=tuple(MODEL_PRESETS),
        help=(
            f"Architecture preset ({presets}). Architecture flags given explicitly override it; "
            "without a preset the defaults shown below apply."
        ),
    )
    g.value("--num-layers", "model.num_layers", int, "Transformer layers.")
    g.value("--hidden-size", "model.hidden_size", int, "Hidden size.")
    g.value("--ffn-hidden-size", "model.ffn_hidden_size", int, "MLP inner size (per gate half with SwiGLU).")
    g.value("--num-attention-heads", "model.num_attention_heads", int, "Attention heads.")
    g.group.add_argument(
        "--group-query-attention",
        dest=_GQA,
        action="store_true",
        help="Use grouped-query attention with --num-query-groups groups (1 = multi-query).",
    )
    g.value(
        "--num-query-groups",
        "model.num_query_groups",
        int,
        "Key/value head groups; needs --group-query-attention, as in Megatron-LM.",
    )
    g.value("--seq-length", "model.seq_length", int, "Training sequence length (after pause insertion).")
    g.value(
        "--max-position-embeddings",
        "model.max_position_embeddings",
        int,
        "Maximum positions (default: --seq-length).",
        show_default=False,
    )
    g.value("--normalization", "model.normalization", str, "Norm layer.", choices="literal")
    g.value("--norm-epsilon", "model.norm_epsilon", float, "Norm epsilon.")
    g.pair(
        "--swiglu",
        "--no-swiglu",
        "model.swiglu",
        "SwiGLU MLP (Megatron-LM flag).",
        "GELU MLP (GPT-2 style).",
    )
    g.pair(
        "--add-bias-linear",
        "--disable-bias-linear",
        "model.add_bias_linear",
        "Biases in linear layers (GPT-2 style).",
        "No biases in linear layers (Megatron-LM flag).",
    )
    g.value(
        "--position-embedding-type", "model.position_embedding_type", str, "Positions.", choices="literal"
    )
    g.value("--rotary-base", "model.rotary_base", int, "RoPE base.")
    g.pair(
        "--untie-embeddings-and-output-weights",
        "--tie-embeddings-and-output-weights",
        "model.untie_embeddings_and_output_weights",
        "Separate input embedding and output layer (Megatron-LM flag; Llama layout).",
        "Share the input embedding with the output layer (GPT-2 layout).",
    )
    g.value("--init-method-std", "model.init_method_std", float, "Std of the normal weight init.")
    g.value("--hidden-dropout", "model.hidden_dropout", float, "Dropout after attention and MLP.")
    g.value("--attention-dropout", "model.attention_dropout", float, "Dropout on attention probabilities.")
    g.value(
        "--make-vocab-size-divisible-by",
        "model.make_vocab_size_divisible_by",
        int,
        "Pad the vocab (including <pause>) to a multiple of this x TP.",
    )
    g.value(
        "--transformer-impl",
        "model.transformer_impl",
        str,
        "Layer implementation: 'local' runs anywhere; 'transformer_engine' needs NVIDIA TE (GPU, FP8).",
        choices="literal",
    )
    g.value("--pause-init", "model.pause_init", str, "Initial <pause> embedding row.", choices="literal")


def _add_parallel_flags(parser: argparse.ArgumentParser) -> None:
    g = _Builder(parser.add_argument_group("parallelism"))
    g.value(
        "--tensor-model-parallel-size",
        "parallel.tensor_model_parallel_size",
        int,
        "Tensor parallel size (TP).",
    )
    g.value(
        "--pipeline-model-parallel-size",
        "parallel.pipeline_model_parallel_size",
        int,
        "Pipeline parallel size (PP).",
    )
    g.value(
        "--num-layers-per-virtual-pipeline-stage",
        "parallel.num_layers_per_virtual_pipeline_stage",
        int,
        "Interleaved pipeline schedule: layers per virtual stage.",
    )
    g.true("--sequence-parallel", "parallel.sequence_parallel", "Sequence parallelism (needs TP > 1).")
    g.true(
        "--use-distributed-optimizer",
        "parallel.use_distributed_optimizer",
        "Shard optimizer state across data-parallel ranks (ZeRO-1).",
    )
    g.true(
        "--overlap-grad-reduce", "parallel.overlap_grad_reduce", "Overlap the gradient reduce with backward."
    )
    g.true(
        "--overlap-param-gather",
        "parallel.overlap_param_gather",
        "Overlap the parameter all-gather with forward (needs --use-distributed-optimizer).",
    )


def _add_precision_flags(parser: argparse.ArgumentParser) -> None:
    g = _Builder(parser.add_argument_group("mixed precision"))
    g.true("--bf16", "precision.bf16", "bfloat16 parameters and compute, fp32 main weights.")
    g.true("--fp16", "precision.fp16", "float16 with loss scaling.")
    g.value("--loss-scale", "precision.loss_scale", float, "Static loss scale for --fp16 (default: dynamic).")
    g.value("--initial-loss-scale", "precision.initial_loss_scale", float, "Initial dynamic loss scale.")
    g.value(
        "--fp8-format",
        "precision.fp8_format",
        str,
        "FP8 GEMMs via Transformer Engine (needs --transformer-impl transformer_engine and --bf16/--fp16).",
        choices="literal",
    )
    g.true(
        "--fp8-dot-product-attention",
        "precision.fp8_dot_product_attention",
        "Also run attention in FP8 (needs --fp8-format).",
    )


def _add_pause_flags(parser: argparse.ArgumentParser) -> None:
    g = _Builder(parser.add_argument_group("pause tokens"))
    g.value(
        "--pause-fraction",
        "pause.pause_fraction",
        float,
        "Pauses inserted per sample as a share of the sequence length; 0 disables online insertion.",
    )
    g.value("--pause-token", "pause.pause_token", str, "The pause token's text in the tokenizer.")


def _add_tokenizer_flags(parser: argparse.ArgumentParser) -> None:
    g = _Builder(parser.add_argument_group("tokenizer"))
    g.value("--tokenizer-type", "tokenizer.tokenizer_type", str, "Tokenizer.", choices=TOKENIZER_TYPES)
    g.value(
        "--tokenizer-model",
        "tokenizer.tokenizer_model",
        str,
        "SentencePiece .model file, or a local Hugging Face tokenizer folder.",
    )


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    g = _Builder(parser.add_argument_group("data"))
    g.group.add_argument(
        "--data-path",
        dest="data.data_path",
        nargs="+",
        metavar="DATA_PATH",
        help=(
            "Dataset prefixes (files <prefix>.bin/.idx from preprocessing), optionally weighted: "
            "'PREFIX' or 'W1 PREFIX1 W2 PREFIX2 ...'."
        ),
    )
    g.value("--split", "data.split", str, "Train,valid,test weights, e.g. 969,30,1 (or 969/30/1).")
    g.value("--data-cache-path", "data.data_cache_path", str, "Where dataset index caches are written.")
    g.true(
        "--mock-data",
        "data.mock_data",
        "Synthetic random tokens instead of --data-path (smoke tests, benchmarks).",
    )
    g.true("--eod-mask-loss", "data.eod_mask_loss", "Exclude end-of-document targets from the loss.")
    g.value("--num-workers", "data.num_workers", int, "Data loader worker processes.")


def _add_optimizer_flags(parser: argparse.ArgumentParser) -> None:
    g = _Builder(parser.add_argument_group("optimizer and schedule"))
    g.value("--optimizer", "optimizer.optimizer", str, "Optimizer.", choices="literal")
    g.value("--lr", "optimizer.lr", float, "Peak learning rate.")
    g.value("--min-lr", "optimizer.min_lr", float, "Final learning rate of the decay.")
    g.value("--lr-warmup-iters", "optimizer.lr_warmup_iters", int, "Linear warmup iterations.")
    g.value("--lr-decay-iters", "optimizer.lr_decay_iters", int, "Decay iterations (default: --train-iters).")
    g.value("--lr-decay-style", "optimizer.lr_decay_style", str, "Decay shape.", choices="literal")
    g.value("--weight-decay", "optimizer.weight_decay", float, "Decoupled weight decay.")
    g.value("--adam-beta1", "optimizer.adam_beta1", float, "Adam beta1.")
    g.value("--adam-beta2", "optimizer.adam_beta2", float, "Adam beta2.")
    g.value("--adam-eps", "optimizer.adam_eps", float, "Adam epsilon.")
    g.value("--clip-grad", "optimizer.clip_grad", float, "Global gradient-norm clip (0 disables).")


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    g = _Builder(parser.add_argument_group("training"))
    g.value("--micro-batch-size", "training.micro_batch_size", int, "Samples per device per forward pass.")
    g.value(
        "--global-batch-size",
        "training.global_batch_size",
        int,
        "Samples per optimizer step across all data-parallel ranks.",
    )
    g.value("--train-iters", "training.train_iters", int, "Optimizer steps to train for.")
    g.value("--eval-interval", "training.eval_interval", int, "Evaluate every this many steps.")
    g.value("--eval-iters", "training.eval_iters", int, "Batches per evaluation (0 disables evaluation).")
    g.true("--skip-train", "training.skip_train", "Only evaluate (typically with --load).")
    g.value("--seed", "training.seed", int, "Random seed.")
    g.value(
        "--recompute-granularity",
        "training.recompute_granularity",
        str,
        "Activation recomputation.",
        choices="literal",
    )
    g.value(
        "--recompute-method",
        "training.recompute_method",
        str,
        "How full recompute picks layers.",
        choices="literal",
    )
    g.value("--recompute-num-layers", "training.recompute_num_layers", int, "Layers per full-recompute unit.")
    g.true(
        "--skip-nonfinite-steps",
        "training.skip_nonfinite_steps",
        "Skip a step whose loss is NaN/Inf instead of stopping with an error.",
    )
    g.value(
        "--exit-duration-in-mins",
        "training.exit_duration_in_mins",
        float,
        "Save and exit after this many minutes of training.",
    )
    g.value(
        "--exit-interval",
        "training.exit_interval",
        int,
        "Save and exit after an iteration divisible by this.",
    )


def _add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    g = _Builder(parser.add_argument_group("checkpointing"))
    g.value("--save", "checkpoint.save", str, "Checkpoint directory to write.")
    g.value("--load", "checkpoint.load", str, "Checkpoint directory to resume from (may equal --save).")
    g.value("--save-interval", "checkpoint.save_interval", int, "Save every this many steps (needs --save).")
    g.true(
        "--finetune",
        "checkpoint.finetune",
        "Load weights only: fresh optimizer, scheduler and iteration count.",
    )
    g.value(
        "--dist-ckpt-optim-sharding",
        "checkpoint.dist_ckpt_optim_sharding",
        str,
        "Optimizer-state layout in checkpoints: reshardable across TP/PP/DP, or across DP only (faster).",
        choices="literal",
    )
    g.pair(
        "--exit-signal-handler",
        "--no-exit-signal-handler",
        "checkpoint.exit_signal_handler",
        "On SIGTERM (Slurm's pre-timeout signal), save a checkpoint and exit.",
        "Ignore SIGTERM's save-and-exit.",
    )
    g.value(
        "--ckpt-step",
        "checkpoint.ckpt_step",
        int,
        "Load this iteration from --load instead of the latest one the tracker names.",
    )
    g.true(
        "--use-checkpoint-args",
        "checkpoint.use_checkpoint_args",
        "Take the model, tokenizer and pause settings from the configuration stored with the --load "
        "checkpoint (flags given for them must agree with it).",
    )
    g.true(
        "--override-opt-param-scheduler",
        "checkpoint.override_opt_param_scheduler",
        "On resume, follow the LR schedule of the flags instead of the one stored in the checkpoint.",
    )


def _add_logging_flags(parser: argparse.ArgumentParser) -> None:
    g = _Builder(parser.add_argument_group("logging"))
    g.value("--log-interval", "logging.log_interval", int, "Log every this many steps.")
    g.value("--tensorboard-dir", "logging.tensorboard_dir", str, "TensorBoard event directory.")
    g.value(
        "--metrics-file",
        "logging.metrics_file",
        str,
        "JSON-lines file: one object per logged train step and per evaluation.",
    )
    g.value(
        "--peak-flops",
        "logging.peak_flops",
        float,
        "Peak FLOP/s of one device for MFU, e.g. 989e12 (default: detected GPU; none on CPU).",
    )


def _add_fusion_flags(parser: argparse.ArgumentParser) -> None:
    g = _Builder(
        parser.add_argument_group(
            "kernel fusions",
            "Each of megatron-core's fusions is on wherever its kernel is available (CUDA, plus "
            "Transformer Engine or apex where it needs them) and off elsewhere; the start-up log lists "
            "which are on. These flags (Megatron-LM's names) force one off.",
        )
    )
    g.false("--no-bias-swiglu-fusion", "fusion.bias_swiglu_fusion", "Unfused bias + SwiGLU in the MLP.")
    g.false("--no-bias-gelu-fusion", "fusion.bias_gelu_fusion", "Unfused bias + GELU in the MLP.")
    g.false(
        "--no-bias-dropout-fusion", "fusion.bias_dropout_fusion", "Unfused bias + dropout + residual add."
    )
    g.false(
        "--no-masked-softmax-fusion",
        "fusion.masked_softmax_fusion",
        "No fused scale-mask-softmax (megatron's own attention core only).",
    )
    g.false("--no-rope-fusion", "fusion.apply_rope_fusion", "Unfused rotary position embedding (TE kernel).")
    g.false(
        "--no-gradient-accumulation-fusion",
        "fusion.gradient_accumulation_fusion",
        "Weight gradients not accumulated inside the GEMM (apex fused_weight_gradient_mlp_cuda).",
    )
    g.false(
        "--no-persist-layer-norm",
        "fusion.persist_layer_norm",
        "No persistent apex LayerNorm kernel (megatron's FusedLayerNorm only).",
    )
    g.pair(
        "--cross-entropy-loss-fusion",
        "--no-cross-entropy-loss-fusion",
        "fusion.cross_entropy_loss_fusion",
        "Fused vocab-parallel cross-entropy where CUDA is present (Megatron-LM flag).",
        "Unfused cross-entropy.",
    )


# Flag groups by config section, in --help order.# Flag groups by config section, in --help order. Entry points compose the groups they need
# (finetuning, generation and evaluation reuse these) instead of redefining flags.
FLAG_GROUPS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "model": _add_model_flags,
    "parallel": _add_parallel_flags,
    "precision": _add_precision_flags,
    "pause": _add_pause_flags,
    "tokenizer": _add_tokenizer_flags,
    "data": _add_data_flags,
    "optimizer": _add_optimizer_flags,
    "training": _add_training_flags,
    "checkpoint": _add_checkpoint_flags,
    "logging": _add_logging_flags,
    "fusion": _add_fusion_flags,
}


def build_parser(
    groups: Sequence[str] | None = None,
    prog: str = "megatron-pause-pretrain",
    description: str = (
        "Pretrain a GPT model with pause tokens (Goyal et al., ICLR 2024) on megatron-core. "
        "Flags follow Megatron-LM's pretrain_gpt.py. Launch one process per device with torchrun or srun."
    ),
) -> argparse.ArgumentParser:
    """The command line made of ``groups`` (default: all of :data:`FLAG_GROUPS`). Options absent
    from argv are absent from the parsed namespace."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,  # a typo must not silently match a longer flag
    )
    for name in FLAG_GROUPS if groups is None else groups:
        FLAG_GROUPS[name](parser)
    return parser


# --------------------------------------------------------------------------------------------
# argv -> PretrainConfig -> argv
# --------------------------------------------------------------------------------------------


def parse_args(
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    config_cls: type[PretrainConfig] = PretrainConfig,
) -> PretrainConfig:
    """Parse a Megatron-style command line into a :class:`PretrainConfig`.

    ``parser`` defaults to the full pretraining command line; other entry points pass one built
    from the flag groups they use (sections they leave out keep their defaults). Argparse errors
    (unknown flags, bad values) exit with status 2 and a usage message, as Megatron-LM does.
    Layout checks are separate: see :func:`validate_config`. ``config_cls`` is a
    :class:`PretrainConfig` subclass with extra sections (e.g. finetuning's), whose flags the
    caller's parser defines with dests ``"<section>.<field>"``.
    """
    return parse_args_and_given(argv, parser, config_cls)[0]


def given_dests(namespace: dict[str, Any]) -> frozenset[str]:
    """The ``"<section>.<field>"`` dests the command line set, from a parsed namespace: those
    present (absent flags are absent, see the module docstring), the preset's model fields for
    ``--model-size``, and ``model.num_query_groups`` for ``--group-query-attention``."""
    given = {dest for dest in namespace if not dest.startswith("_")}
    if namespace.get(_MODEL_SIZE):
        given |= {f"model.{name}" for name in MODEL_PRESETS[namespace[_MODEL_SIZE]]}
    if namespace.get(_GQA):
        given.add("model.num_query_groups")
    return frozenset(given)


def parse_args_and_given(
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    config_cls: type[PretrainConfig] = PretrainConfig,
) -> tuple[PretrainConfig, frozenset[str]]:
    """:func:`parse_args`, plus the dests the command line set (:func:`given_dests`): what a
    checkpoint's stored configuration may fill in and what it must agree with
    (:mod:`megatron_pause.checkpoint_args`)."""
    parser = parser or build_parser()
    given = vars(parser.parse_args(argv))
    section_classes = {
        f.name: f.default_factory  # type: ignore[misc]
        for f in dataclasses.fields(config_cls)
    }

    sections: dict[str, dict[str, Any]] = {name: {} for name in section_classes}
    for dest, value in given.items():
        if not dest.startswith("_"):
            section, name = dest.split(".", 1)
            sections[section][name] = value

    model_kw = sections.pop("model")
    if given.get(_GQA):
        # Megatron-LM's default for --num-query-groups is 1: multi-query attention.
        model_kw.setdefault("num_query_groups", 1)
    elif "num_query_groups" in model_kw:
        # Megatron-LM silently ignores it here; ignoring a memory-relevant flag is worse than asking.
        parser.error("--num-query-groups has no effect without --group-query-attention; pass both")

    preset = given.get(_MODEL_SIZE)
    model = model_preset(preset, **model_kw) if preset else ModelConfig(**model_kw)
    cfg = config_cls(model=model, **{s: section_classes[s](**kw) for s, kw in sections.items()})
    return cfg, given_dests(given)


def _format(value: Any) -> str:
    # repr() of a float is its shortest round-tripping form; str() of ints and strings is exact.
    return repr(value) if isinstance(value, float) else str(value)


def config_to_argv(cfg: PretrainConfig) -> list[str]:
    """A command line that :func:`parse_args` turns back into ``cfg`` (fields equal to their
    default are left out). Used to print a reproducible launch line and by the round-trip test."""
    parser = build_parser()
    defaults = PretrainConfig()
    argv: list[str] = []
    done: set[str] = set()
    for action in parser._actions:
        dest = action.dest
        if dest.startswith("_") or dest == "help" or dest in done:
            continue
        section, name = dest.split(".", 1)
        value = getattr(getattr(cfg, section), name)
        if value == getattr(getattr(defaults, section), name):
            continue
        done.add(dest)
        if isinstance(action, argparse._StoreConstAction) and not isinstance(
            action, argparse._StoreTrueAction
        ):
            flag = next(
                a.option_strings[0]
                for a in parser._actions
                if a.dest == dest and getattr(a, "const", None) == value
            )
            argv.append(flag)
        elif isinstance(action, argparse._StoreTrueAction):
            if value is not True:
                raise ValueError(f"{action.option_strings[0]} cannot express {dest}={value!r}")
            argv.append(action.option_strings[0])
        elif value is None:
            raise ValueError(
                f"{action.option_strings[0]} cannot express {dest}=None (its default is not None)"
            )
        elif action.nargs == "+":
            argv += [action.option_strings[0], *map(_format, value)]
        else:
            argv += [action.option_strings[0], _format(value)]
    if cfg.model.num_query_groups is not None:
        argv.append("--group-query-attention")
    return argv


def parse_data_path(tokens: Sequence[str]) -> list[tuple[float, str]]:
    """``--data-path`` tokens as (weight, prefix) pairs: ``["a"]`` -> ``[(1.0, "a")]``,
    ``["0.3", "a", "0.7", "b"]`` -> ``[(0.3, "a"), (0.7, "b")]``. Weights are not normalised.
    The rules (all weighted or none, positive weights) are the dataset's own
    (:func:`megatron_pause.data.blend.parse_data_path`), reported here as a ConfigError."""
    tokens = list(tokens)
    if not tokens:
        return []
    try:
        blend = parse_blend(tokens)
    except ValueError as e:
        raise ConfigError([str(e)]) from None
    weights = blend.weights or (1.0,) * len(blend.prefixes)
    return list(zip(weights, blend.prefixes))


def parse_split(split: str) -> tuple[float, float, float]:
    """``--split`` ("969,30,1" or "969/30/1"; missing trailing parts are 0) as three weights."""
    try:
        return check_split(split)
    except ValueError as e:
        raise ConfigError([str(e)]) from None


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def transformer_engine_available() -> bool:
    """Whether Transformer Engine can be imported, without importing it (importing TE initialises
    CUDA libraries, which must not happen before the process group picks a device)."""
    return importlib.util.find_spec("transformer_engine") is not None


def _data_file_problems(prefix: str) -> list[str]:
    try:
        check_prefix_files(prefix)
    except FileNotFoundError as e:
        return [str(e)]
    return []


def warmup_problem(cfg: PretrainConfig, run_length: str) -> str | None:
    """The LR schedule needs at least one iteration after warmup: the problem, or None.
    ``run_length`` names ``--train-iters`` (however it was set) for the message."""
    o = cfg.optimizer
    if o.lr_decay_iters is not None:
        decay, what = o.lr_decay_iters, f"--lr-decay-iters ({o.lr_decay_iters})"
    else:
        decay, what = cfg.training.train_iters, run_length
    if o.lr_warmup_iters >= decay:
        return f"--lr-warmup-iters ({o.lr_warmup_iters}) must be below {what}"
    return None


def validate_config(cfg: PretrainConfig, world_size: int, needs_data_path: bool = True) -> None:
    """Reject configurations that cannot run on ``world_size`` processes, or are contradictory.

    Needs no GPU and no process group. Raises :class:`ConfigError` listing every problem found;
    each message names the command-line flags involved. ``needs_data_path=False`` is for entry
    points that read their data from their own flags (finetuning).
    """
    problems: list[str] = []
    add = problems.append
    m, par, prec, tr = cfg.model, cfg.parallel, cfg.precision, cfg.training

    # --- sizes that must be positive (checked first: the divisibility checks divide by them) ---
    positive = {
        "--num-layers": m.num_layers,
        "--hidden-size": m.hidden_size,
        "--ffn-hidden-size": m.ffn_hidden_size,
        "--num-attention-heads": m.num_attention_heads,
        "--seq-length": m.seq_length,
        "--max-position-embeddings": m.max_position_embeddings,
        "--make-vocab-size-divisible-by": m.make_vocab_size_divisible_by,
        "--tensor-model-parallel-size": par.tensor_model_parallel_size,
        "--pipeline-model-parallel-size": par.pipeline_model_parallel_size,
        "--micro-batch-size": tr.micro_batch_size,
        "--global-batch-size": tr.global_batch_size,
        "--eval-interval": tr.eval_interval,
        "--log-interval": cfg.logging.log_interval,
    }
    optional_positive = {
        "--num-query-groups": m.num_query_groups,
        "--num-layers-per-virtual-pipeline-stage": par.num_layers_per_virtual_pipeline_stage,
        "--recompute-num-layers": tr.recompute_num_layers,
        "--save-interval": cfg.checkpoint.save_interval,
        "--lr-decay-iters": cfg.optimizer.lr_decay_iters,
        "--exit-duration-in-mins": tr.exit_duration_in_mins,
        "--exit-interval": tr.exit_interval,
        "--peak-flops": cfg.logging.peak_flops,
        "--loss-scale": prec.loss_scale,
    }
    non_negative = {
        "--train-iters": tr.train_iters,
        "--eval-iters": tr.eval_iters,
        "--lr-warmup-iters": cfg.optimizer.lr_warmup_iters,
        "--num-workers": cfg.data.num_workers,
        "--lr": cfg.optimizer.lr,
        "--min-lr": cfg.optimizer.min_lr,
        "--weight-decay": cfg.optimizer.weight_decay,
        "--clip-grad": cfg.optimizer.clip_grad,
        "--init-method-std": m.init_method_std,
    }
    bad_sizes = False
    for flag, v in positive.items():
        if v is None or v <= 0:
            add(f"{flag} must be positive, got {v}")
            bad_sizes = True
    for flag, v in optional_positive.items():
        if v is not None and v <= 0:
            add(f"{flag} must be positive, got {v}")
            bad_sizes = True
    for flag, v in non_negative.items():
        if v < 0:
            add(f"{flag} must be >= 0, got {v}")
    if world_size <= 0:
        add(f"WORLD_SIZE must be positive, got {world_size}")
        bad_sizes = True
    for flag, v in {
        "--hidden-dropout": m.hidden_dropout,
        "--attention-dropout": m.attention_dropout,
    }.items():
        if not 0 <= v < 1:
            add(f"{flag} must be in [0, 1), got {v}")
    for flag, v in {
        "--adam-beta1": cfg.optimizer.adam_beta1,
        "--adam-beta2": cfg.optimizer.adam_beta2,
    }.items():
        if not 0 <= v < 1:
            add(f"{flag} must be in [0, 1), got {v}")
    if cfg.optimizer.adam_eps <= 0:
        add(f"--adam-eps must be positive, got {cfg.optimizer.adam_eps}")
    if prec.initial_loss_scale <= 0:
        add(f"--initial-loss-scale must be positive, got {prec.initial_loss_scale}")
    if bad_sizes:
        raise ConfigError(problems)

    # --- parallel layout ---
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    dp = None
    if world_size % (tp * pp):
        add(
            f"WORLD_SIZE={world_size} is not divisible by --tensor-model-parallel-size ({tp}) x "
            f"--pipeline-model-parallel-size ({pp}) = {tp * pp}; the data-parallel size is WORLD_SIZE / (TP x PP)"
        )
    else:
        dp = world_size // (tp * pp)
        if tr.global_batch_size % (tr.micro_batch_size * dp):
            add(
                f"--global-batch-size ({tr.global_batch_size}) must be divisible by --micro-batch-size "
                f"({tr.micro_batch_size}) x data-parallel size ({dp} = WORLD_SIZE {world_size} / "
                f"(TP {tp} x PP {pp})) = {tr.micro_batch_size * dp}"
            )
            dp = None  # microbatch count below is meaningless

    if m.num_layers % pp:
        add(f"--num-layers ({m.num_layers}) must be divisible by --pipeline-model-parallel-size ({pp})")
    elif par.num_layers_per_virtual_pipeline_stage is not None:
        per_stage = m.num_layers // pp
        vps = par.num_layers_per_virtual_pipeline_stage
        if pp == 1:
            add("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 1")
        elif per_stage % vps:
            add(
                f"--num-layers-per-virtual-pipeline-stage ({vps}) must divide the layers per pipeline stage: "
                f"--num-layers ({m.num_layers}) / --pipeline-model-parallel-size ({pp}) = {per_stage}"
            )
        elif per_stage == vps:
            add(
                f"--num-layers-per-virtual-pipeline-stage ({vps}) equals the layers per pipeline stage "
                f"({per_stage}): one virtual stage is not interleaving; drop the flag or lower it"
            )
        elif dp is not None:
            microbatches = tr.global_batch_size // (tr.micro_batch_size * dp)
            # megatron-core's interleaved schedule runs microbatches in groups of PP.
            if microbatches % pp:
                add(
                    f"the interleaved pipeline schedule (--num-layers-per-virtual-pipeline-stage) needs the "
                    f"number of microbatches ({microbatches} = --global-batch-size / (--micro-batch-size x DP)) "
                    f"to be a multiple of --pipeline-model-parallel-size ({pp})"
                )

    # --- attention shapes ---
    if m.num_attention_heads % tp:
        add(
            f"--num-attention-heads ({m.num_attention_heads}) must be divisible by "
            f"--tensor-model-parallel-size ({tp})"
        )
    if m.hidden_size % m.num_attention_heads:
        add(
            f"--hidden-size ({m.hidden_size}) must be divisible by --num-attention-heads ({m.num_attention_heads})"
        )
    if m.num_query_groups is not None:
        if m.num_attention_heads % m.num_query_groups:
            add(
                f"--num-attention-heads ({m.num_attention_heads}) must be divisible by "
                f"--num-query-groups ({m.num_query_groups})"
            )
        if m.num_query_groups % tp:
            add(
                f"--num-query-groups ({m.num_query_groups}) must be divisible by "
                f"--tensor-model-parallel-size ({tp})"
            )
    if m.ffn_hidden_size % tp:
        add(
            f"--ffn-hidden-size ({m.ffn_hidden_size}) must be divisible by --tensor-model-parallel-size ({tp})"
        )
    if m.max_position_embeddings < m.seq_length:
        add(
            f"--max-position-embeddings ({m.max_position_embeddings}) must be >= --seq-length ({m.seq_length})"
        )

    if par.sequence_parallel:
        if tp == 1:
            add("--sequence-parallel needs --tensor-model-parallel-size > 1")
        elif m.seq_length % tp:
            add(
                f"--sequence-parallel needs --seq-length ({m.seq_length}) divisible by --tensor-model-parallel-size ({tp})"
            )
    if par.overlap_param_gather and not par.use_distributed_optimizer:
        add("--overlap-param-gather needs --use-distributed-optimizer")
    if par.overlap_param_gather and not par.overlap_grad_reduce:
        add("--overlap-param-gather needs --overlap-grad-reduce")

    # --- precision ---
    if prec.bf16 and prec.fp16:
        add("--bf16 and --fp16 contradict each other; pick one")
    if prec.loss_scale is not None and not prec.fp16:
        add("--loss-scale only applies to --fp16")
    te_needed_by = []
    if prec.fp8_format is not None:
        if m.transformer_impl != "transformer_engine":
            add("--fp8-format needs --transformer-impl transformer_engine")
        if not (prec.bf16 or prec.fp16):
            add("--fp8-format needs --bf16 or --fp16 for the non-FP8 parts")
        te_needed_by.append("--fp8-format")
        # Transformer Engine's FP8 GEMMs need every input matrix's width divisible by 16 and its
        # height (tokens on this rank) by 8; checking here beats an assertion inside TE.
        widths = {"--hidden-size": m.hidden_size, "--ffn-hidden-size / TP": m.ffn_hidden_size // tp}
        for flag, width in widths.items():
            if width % 16:
                add(f"--fp8-format needs {flag} ({width}) divisible by 16")
        rows = tr.micro_batch_size * m.seq_length // (tp if par.sequence_parallel else 1)
        if rows % 8:
            add(
                f"--fp8-format needs --micro-batch-size x --seq-length (/ TP with --sequence-parallel) = {rows} divisible by 8"
            )
    if m.transformer_impl == "transformer_engine":
        te_needed_by.append("--transformer-impl transformer_engine")
    if te_needed_by and not transformer_engine_available():
        add(
            f"{' and '.join(te_needed_by)} need{'s' if len(te_needed_by) == 1 else ''} NVIDIA Transformer Engine, "
            "which is not importable here (it ships in the NVIDIA PyTorch container and cannot be installed on "
            "CPU); use --transformer-impl local without --fp8-format"
        )
    if prec.fp8_dot_product_attention and prec.fp8_format is None:
        add("--fp8-dot-product-attention needs --fp8-format")

    # --- recomputation (megatron-core's own rules, reported with our flag names) ---
    if tr.recompute_granularity is None:
        if tr.recompute_method is not None or tr.recompute_num_layers is not None:
            add("--recompute-method/--recompute-num-layers need --recompute-granularity full")
    elif tr.recompute_granularity == "full":
        if tr.recompute_method is None:
            add("--recompute-granularity full needs --recompute-method uniform or block")
        per_rank = m.num_layers // pp
        if tr.recompute_num_layers is None:
            add("--recompute-granularity full needs --recompute-num-layers")
        elif tr.recompute_method == "block" and tr.recompute_num_layers > per_rank:
            add(
                f"--recompute-num-layers ({tr.recompute_num_layers}) with --recompute-method block must be at most "
                f"the layers per pipeline stage ({per_rank})"
            )
    else:  # selective
        if tr.recompute_method is not None or tr.recompute_num_layers is not None:
            add("--recompute-granularity selective takes no --recompute-method/--recompute-num-layers")

    # --- pause ---
    if not 0 <= cfg.pause.pause_fraction < 1:
        add(f"--pause-fraction must be in [0, 1), got {cfg.pause.pause_fraction}")
    if not cfg.pause.pause_token.strip():
        add("--pause-token must be a non-empty string")

    # --- data and tokenizer ---
    d = cfg.data
    evaluates = tr.eval_iters > 0
    if d.mock_data and d.data_path:
        add("--mock-data and --data-path are mutually exclusive")
    elif (
        needs_data_path
        and not d.mock_data
        and not d.data_path
        and not (tr.skip_train and cfg.checkpoint.load)
    ):
        add("no training data: pass --data-path PREFIX (or --mock-data for synthetic tokens)")
    if d.data_path and not d.mock_data:
        try:
            for _, prefix in parse_data_path(d.data_path):
                problems.extend(_data_file_problems(prefix))
        except ConfigError as e:
            problems.extend(e.problems)
    try:
        _, valid_weight, _ = parse_split(d.split)
        if d.data_path and not d.mock_data and evaluates and valid_weight == 0:
            add(
                f"--eval-iters ({tr.eval_iters}) > 0 but --split {d.split!r} leaves no validation data; use --eval-iters 0 or give the split a validation share"
            )
    except ConfigError as e:
        problems.extend(e.problems)

    tok = cfg.tokenizer
    if tok.tokenizer_type not in TOKENIZER_TYPES:
        add(
            f"--tokenizer-type {tok.tokenizer_type!r} is not supported; choose one of {', '.join(TOKENIZER_TYPES)}"
        )
    if not tok.tokenizer_model:
        if not d.mock_data:
            add("--tokenizer-model is required (unless --mock-data)")
    elif tok.tokenizer_type in _HF_TOKENIZER_TYPES:
        if not os.path.isdir(tok.tokenizer_model):
            add(
                f"--tokenizer-model {tok.tokenizer_model!r}: no such folder (HuggingFaceTokenizer reads a local folder)"
            )
    elif not os.path.isfile(tok.tokenizer_model):
        add(f"--tokenizer-model {tok.tokenizer_model!r}: no such file")

    # --- optimizer schedule ---
    o = cfg.optimizer
    if o.lr < o.min_lr:
        add(f"--lr ({o.lr}) must be >= --min-lr ({o.min_lr})")
    if not tr.skip_train:
        problem = warmup_problem(cfg, f"--train-iters ({tr.train_iters})")
        if problem:
            add(problem)

    # --- checkpointing ---
    ck = cfg.checkpoint
    if ck.save_interval is not None and not ck.save:
        add("--save-interval needs --save")
    if ck.finetune and not ck.load:
        add("--finetune needs --load (the checkpoint whose weights to start from)")
    elif ck.finetune and not os.path.isdir(ck.load):
        add(f"--finetune --load {ck.load!r}: no such directory to take weights from")
    if ck.ckpt_step is not None and (not ck.load or ck.ckpt_step < 0):
        add(f"--ckpt-step ({ck.ckpt_step}) needs --load and an iteration >= 0")
    if ck.use_checkpoint_args and not ck.load:
        add("--use-checkpoint-args needs --load (the checkpoint whose settings to take)")

    if problems:
        raise ConfigError(problems)


def validate_vocab(cfg: PretrainConfig, pause_id: int, padded_vocab_size: int) -> None:
    """Check the tokenizer's pause id against the embedding that will be built.

    Separate from :func:`validate_config` because it needs the loaded tokenizer; it takes plain
    ints so callers and tests need no tokenizer object.
    """
    problems = []
    multiple = cfg.model.make_vocab_size_divisible_by * cfg.parallel.tensor_model_parallel_size
    if padded_vocab_size <= 0 or padded_vocab_size % multiple:
        problems.append(
            f"padded vocab size {padded_vocab_size} is not a positive multiple of --make-vocab-size-divisible-by "
            f"({cfg.model.make_vocab_size_divisible_by}) x --tensor-model-parallel-size "
            f"({cfg.parallel.tensor_model_parallel_size}) = {multiple}"
        )
    if not 0 <= pause_id < max(padded_vocab_size, 0):
        problems.append(
            f"pause id {pause_id} (--pause-token {cfg.pause.pause_token!r}) is outside the padded vocab "
            f"[0, {padded_vocab_size}); check --tokenizer-model and --make-vocab-size-divisible-by"
        )
    if problems:
        raise ConfigError(problems)
