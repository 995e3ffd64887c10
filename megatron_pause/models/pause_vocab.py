"""The ``<pause>`` row of the input embedding and of the output layer.

Megatron pads the vocabulary to a multiple of ``make_vocab_size_divisible_by
x TP`` and shards both the ``VocabParallelEmbedding`` and the output layer
over tensor-parallel ranks by contiguous id ranges. The pause id (an existing
``<pause>`` piece, or the first id after the base vocabulary) therefore lives
on exactly one TP rank, which may be the last rank or sit right at a shard
boundary; this module finds it wherever it is.

Initialisation. The paper does not say how the pause embedding starts. We
default to the **mean of the real token rows** (ids below the base
vocabulary size, excluding the pause itself): a pause then starts as an
"average token" in the same region of embedding space as real inputs, with a
typical norm, and as an output row it starts with a logit close to the
average -- neither a dead row (zeros give a constant logit of 0 that softmax
still has to learn to suppress) nor an outlier drawn at random. "normal"
(the model's init std) and "zeros" are available for ablations.

:func:`init_pause_rows` is used both for fresh models and for models loaded
from a standard (pause-free) checkpoint, e.g. standard-pretrained then
pause-finetuned runs: the checkpoint's row at the pause id was never trained
as a pause (it was padding or an unused id), so it is re-initialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from megatron.core.utils import unwrap_model


@dataclass(frozen=True)
class VocabShard:
    start: int  # first global id held by this rank
    end: int  # one past the last

    def owns(self, token_id: int) -> bool:
        return self.start <= token_id < self.end


def vocab_shard(padded_vocab_size: int, tp_rank: int, tp_size: int) -> VocabShard:
    per = padded_vocab_size // tp_size
    return VocabShard(tp_rank * per, (tp_rank + 1) * per)


def pause_weight_tables(chunks: list[torch.nn.Module]) -> list[torch.Tensor]:
    """The vocab-sharded weight matrices on this rank: the input embedding
    (first stage) and the output layer (last stage), each once."""
    tables: list[torch.Tensor] = []
    for chunk in chunks:
        gpt = unwrap_model(chunk)
        if getattr(gpt, "pre_process", False):
            tables.append(gpt.embedding.word_embeddings.weight)
        if getattr(gpt, "post_process", False) and gpt.output_layer is not None:
            w = gpt.output_layer.weight
            if w is not None and all(w is not t for t in tables):
                tables.append(w)
    return tables


@torch.no_grad()
def init_pause_rows(
    chunks: list[torch.nn.Module],
    pause_id: int,
    base_vocab_size: int,
    method: str = "mean",
    std: float = 0.02,
    seed: int = 0,
) -> int:
    """Set the pause row of every vocab table on this rank. Collective over the
    tensor-parallel group (the mean needs all shards). Returns the number of
    rows written on this rank (0 where another rank owns the id)."""
    tp_group = parallel_state.get_tensor_model_parallel_group()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    written = 0
    for weight in pause_weight_tables(chunks):
        padded = weight.shape[0] * tp_size
        if not 0 <= pause_id < padded:
            raise ValueError(f"pause id {pause_id} is outside the padded vocabulary of {padded} rows")
        shard = vocab_shard(padded, tp_rank, tp_size)
        if method == "mean":
            real = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
            lo, hi = shard.start, min(shard.end, base_vocab_size)
            if hi > lo:
                real[: hi - lo] = True
            if shard.owns(pause_id) and pause_id < base_vocab_size:
                real[pause_id - shard.start] = False
            stats = torch.cat([weight[real].float().sum(0), real.sum().float().reshape(1)])
            torch.distributed.all_reduce(stats, group=tp_group)
            row = stats[:-1] / stats[-1].clamp(min=1)
        elif method == "normal":
            gen = torch.Generator().manual_seed(seed + pause_id)
            row = torch.randn(weight.shape[1], generator=gen) * std
        elif method == "zeros":
            row = torch.zeros(weight.shape[1])
        else:
            raise ValueError(f"unknown pause init {method!r}; use mean, normal or zeros")
        if shard.owns(pause_id):
            weight[pause_id - shard.start].copy_(row.to(weight.dtype))
            written += 1
    return written


def gather_pause_rows(chunks: list[torch.nn.Module], pause_id: int) -> list[torch.Tensor]:
    """The pause row of each vocab table on this rank, gathered from its owner
    over the TP group (for tests and inspection)."""
    tp_group = parallel_state.get_tensor_model_parallel_group()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    rows = []
    for weight in pause_weight_tables(chunks):
        shard = vocab_shard(weight.shape[0] * tp_size, tp_rank, tp_size)
        row = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)
        if shard.owns(pause_id):
            row += weight[pause_id - shard.start].float()
        torch.distributed.all_reduce(row, group=tp_group)
        rows.append(row)
    return rows
