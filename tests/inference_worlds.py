"""Shared by the generation/evaluation tests and benchmarks: a tiny checkpoint and a model opener.

The checkpoint is a freshly initialised tiny model with a large init std, saved with its run
configuration and the bundled sample tokenizer. Large weights make its next-token distributions
peaked, so greedy decoding has no near-ties that float summation order (tensor parallelism,
batch size) could flip: a layout that differs from TP1 does so because it computes something else.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

# Imported once here, in the parent: every forked world inherits them instead of paying seconds
# of imports per fork (megatron's GPTModel, matplotlib for the evaluation plot).
import megatron_pause.inference.engine  # noqa: F401
import megatron_pause.models.gpt  # noqa: F401
from megatron_pause.testing import run_distributed

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
except ImportError:
    pass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "examples", "data", "sample_tokenizer.model")
SEQ = 96


def tiny_config(seed: int = 7, **model):
    from megatron_pause.config import ModelConfig, PretrainConfig, TokenizerConfig, TrainingConfig

    kw = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, seq_length=SEQ,
              init_method_std=0.3)  # fmt: skip
    kw.update(model)
    return PretrainConfig(
        model=ModelConfig(**kw),
        tokenizer=TokenizerConfig(tokenizer_model=TOKENIZER),
        training=TrainingConfig(seed=seed),
    )


def _save(rank: int, world: int, path: str, seed: int, model: dict) -> None:
    from megatron_pause.distributed import destroy_distributed, init_distributed
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.models.pause_vocab import init_pause_rows
    from megatron_pause.tokenizer import build_tokenizer
    from megatron_pause.training.checkpoint import save_checkpoint

    cfg = tiny_config(seed, **model)
    init_distributed(cfg.parallel, cfg.model.num_layers, seed)
    tok = build_tokenizer(cfg.tokenizer.tokenizer_type, cfg.tokenizer.tokenizer_model)
    chunks = build_model_chunks(
        cfg.model, transformer_config(cfg.model, cfg.parallel), tok.padded_vocab_size()
    )
    init_pause_rows(chunks, tok.pause_id, tok.base_vocab_size, "normal", cfg.model.init_method_std, seed)
    save_checkpoint(path, 0, chunks, None, None, {}, cfg.to_dict())
    destroy_distributed()


@functools.cache
def tiny_checkpoint(seed: int = 7, **model) -> str:
    """Path of a saved tiny checkpoint (made once per process)."""
    root = tempfile.mkdtemp(prefix="mp_infer_ckpt_")
    atexit.register(shutil.rmtree, root, True)
    run_distributed(_save, 1, root, seed, model)
    return root


def open_model(ckpt: str, tp: int = 1, pp: int = 1, max_batch: int = 16, **overrides):
    """Process groups at TP x PP (x DP = world / TP / PP) and a PauseGenerator on ``ckpt``."""
    from megatron_pause.inference.session import DecodingConfig, open_generator

    overrides = {
        "parallel.tensor_model_parallel_size": tp,
        "parallel.pipeline_model_parallel_size": pp,
        **overrides,
    }
    return open_generator(ckpt, overrides, DecodingConfig(inference_max_requests=max_batch))


PROMPT_TEXTS = [
    "The cat",
    "Once upon a time there was a little house in the middle of a forest",
    "Q: What is the capital of France? A:",
    "a",
    "In 1999 the company announced",
    "She opened the door and saw",
    "Numbers: 1, 2, 3, 4,",
    "The history of the region begins with the arrival of settlers who built farms along the river",
]


def prompts(tokenizer, n: int) -> list[list[int]]:
    """``n`` prompts of mixed lengths (1 to ~25 tokens)."""
    base = [tokenizer.tokenize(t) for t in PROMPT_TEXTS]
    out = []
    for i in range(n):
        ids = base[i % len(base)]
        cut = 1 + (i * 7) % len(ids)
        out.append(ids[:cut] if i % 3 else ids)
    return out
