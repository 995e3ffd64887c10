"""Packed finetuning rows on the GPU: each example's per-token losses equal its padded ones (fp32),
through the local spec's SDPA core attention and through Transformer Engine's own ``thd`` path.

The CPU suite proves the local spec (tests/test_finetune_data.py); this checks the CUDA kernels
and the TE spec, which only a GPU with Transformer Engine can run. Skipped without CUDA.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from gpu_worlds import single_rank_nccl_group

from megatron_pause.config import ModelConfig, ParallelConfig

HAVE_TE = importlib.util.find_spec("transformer_engine") is not None


@pytest.fixture(scope="module")
def process_group():
    with single_rank_nccl_group(num_layers=2, seed=3):
        yield


@pytest.mark.parametrize(
    "impl",
    ["local", pytest.param("transformer_engine", marks=pytest.mark.skipif(not HAVE_TE, reason="no TE"))],
)
def test_packed_examples_have_their_padded_losses_on_cuda(process_group, impl):
    from megatron_pause.data.sft import Example, FinetuneDataset
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.training.batches import collate
    from megatron_pause.training.step import packed_seq_params

    model_cfg = ModelConfig(
        num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, seq_length=64,
        transformer_impl=impl,
    )  # fmt: skip
    (model,) = build_model_chunks(model_cfg, transformer_config(model_cfg, ParallelConfig()), 128)
    model.eval()
    rng = np.random.default_rng(5)
    examples = [
        Example(rng.integers(10, 100, rng.integers(1, 25)), rng.integers(10, 100, rng.integers(1, 9)))
        for _ in range(12)
    ]
    common = dict(seq_length=64, num_pauses=3, pause_id=5, eod=2, pad=3, seed=1)
    packed = FinetuneDataset([(None, examples)], pack=True, **common)
    padded = FinetuneDataset([(None, examples)], pack=False, **common)

    def cuda(batch):
        return {k: v.cuda() for k, v in batch.items()}

    worst = 0.0
    with torch.no_grad():
        for i in range(packed.samples_per_epoch(0)):
            batch = cuda(collate([packed[i]]))
            loss = model(
                batch["tokens"], batch["position_ids"], None, labels=batch["labels"],
                packed_seq_params=packed_seq_params(batch),
            )[0]  # fmt: skip
            cu = batch["cu_seqlens"][0].tolist()
            for k, idx in enumerate(packed.members(i)):
                alone = cuda(collate([padded[padded.epoch_plan(0).index([idx])]]))
                ref = model(alone["tokens"], alone["position_ids"], None, labels=alone["labels"])[0]
                n = cu[k + 1] - cu[k]
                mask = alone["loss_mask"][0, :n].bool()
                a, b = loss[cu[k] : cu[k + 1]][mask], ref[:n][mask]
                worst = max(worst, float(((a - b).abs() / b.abs()).max()))
    assert worst <= 1e-5
