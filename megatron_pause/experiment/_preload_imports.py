"""Imported once by the experiment's fork server (:mod:`megatron_pause.experiment.preloaded`):
the heavy libraries and the modules the entry points import lazily, so that every forked stage
starts with them in memory. Importing has no side effect beyond import-time warnings (missing
Transformer Engine/apex), which are silenced here rather than repeated in the driver's output."""

import importlib
import warnings

MODULES = (
    "torch",
    "megatron.core",
    "megatron.core.models.gpt",
    "megatron.core.optimizer",
    "megatron.core.distributed",
    "megatron.core.dist_checkpointing",
    "megatron.core.pipeline_parallel",
    "megatron.core.inference.contexts",
    "transformers",
    "megatron_pause.pretrain",
    "megatron_pause.finetune",
    "megatron_pause.evaluate",
    "megatron_pause.distributed",
    "megatron_pause.loss",
    "megatron_pause.models.gpt",
    "megatron_pause.models.from_checkpoint",
    "megatron_pause.models.pause_vocab",
    "megatron_pause.training.checkpoint",
    "megatron_pause.training.data",
    "megatron_pause.training.step",
    "megatron_pause.training.trainer",
    "megatron_pause.data.sft",
    "megatron_pause.inference.engine",
    "megatron_pause.evaluation.runner",
    "megatron_pause.evaluation.report",
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional piece missing: the stage imports (and reports) it itself
            pass
    try:  # transformers imports its tokenizer classes lazily
        from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401
    except ImportError:
        pass
