"""Finetuning steps compute the same thing under every parallel layout as in one process.

The parity worlds of ``tests/parity_worlds.py`` (same reference weights, same global batch), fed
finetuning samples -- answer-only loss masks, M_ft pauses, right padding -- both padded (2 examples
per microbatch) and packed (megatron's ``thd`` rows, several examples each, micro-batch 1). Loss and
grad norm of every step agree within 1e-5 relative at TP2, PP2, PP2 with virtual stages, TP2xPP2 and
DP2 with the distributed optimizer; so do the validation loss and teacher-forced accuracy, whose
argmax is reduced over the vocabulary shards. The "sparse" mode is the finetuning entry point's
cheap path (batches cut after their last target column, logits only at targets): it matches the
padded run in one process and at every layout.
"""

from __future__ import annotations

import numpy as np
import parity_worlds as pw
import pytest

from megatron_pause.data.sft import Example, FinetuneDataset
from megatron_pause.testing import run_distributed

TOL = 1e-5
STEPS = 2
GLOBAL_BATCH = 8
LAYOUTS = [
    layout for layout in pw.LAYOUTS if layout.name in ("TP2", "PP2", "PP2-VPP2", "TP2xPP2", "DP2-distopt")
]


def _dataset(pack: bool) -> FinetuneDataset:
    rng = np.random.default_rng(11)
    examples = [
        Example(
            rng.integers(1, pw.BASE_VOCAB, rng.integers(1, 7)),
            rng.integers(1, pw.BASE_VOCAB, rng.integers(1, 5)),
        )
        for _ in range(40)
    ]
    return FinetuneDataset(
        [(None, examples)],
        seq_length=pw.SEQ,
        num_pauses=2,
        pause_id=pw.PAUSE_ID,
        eod=0,
        pad=0,
        pack=pack,
        seed=3,
    )


def _microbatches(ds: FinetuneDataset, step: int, mbs: int) -> list[dict]:
    """This data-parallel rank's microbatches of the step's global batch (round-robin)."""
    from megatron.core import parallel_state as ps

    from megatron_pause.training.batches import collate

    first = step * GLOBAL_BATCH
    samples = [ds[first + i] for i in range(GLOBAL_BATCH)]
    mbs_list = [collate(samples[i : i + mbs]) for i in range(0, GLOBAL_BATCH, mbs)]
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    return mbs_list[dp_rank::dp]


def _finetune_body(rank: int, world: int, layout: pw.Layout, ckpt: str) -> dict:
    from megatron_pause.config import OptimizerConfig, PrecisionConfig
    from megatron_pause.distributed import destroy_distributed, init_distributed
    from megatron_pause.loss import PauseMaskedLoss, PauseMaskedLossWithAccuracy
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.training.checkpoint import load_checkpoint
    from megatron_pause.training.sparse_targets import trim_multiple, trim_trailing_columns
    from megatron_pause.training.step import (
        build_optimizer,
        eval_step,
        make_forward_step,
        train_step,
        wrap_model,
    )

    model, par, prec = pw.tiny_model(), layout.parallel(), PrecisionConfig()
    init_distributed(par, model.num_layers, seed=pw.SEED)
    losses = (PauseMaskedLoss(pw.PAUSE_ID), PauseMaskedLossWithAccuracy(pw.PAUSE_ID))
    multiple = trim_multiple(par)
    out = {}
    for mode, pack, mbs in (("padded", False, 2), ("packed", True, 1), ("sparse", False, 2)):
        sparse = mode == "sparse"
        forward_step = make_forward_step(*losses, logits_at_targets_only=sparse)
        cfg = transformer_config(model, par, prec)
        chunks = wrap_model(build_model_chunks(model, cfg, pw.PADDED_VOCAB), cfg, par)
        opt = build_optimizer(chunks, OptimizerConfig(lr=pw.LR), par, prec)
        load_checkpoint(ckpt, chunks, load_rng=False)
        ds = _dataset(pack)
        run = {"losses": [], "grad_norms": [], "tokens": [], "seq": []}
        for step in range(STEPS + 1):
            batch = _microbatches(ds, step, mbs)
            seq = trim_trailing_columns(batch, multiple) if sparse else pw.SEQ
            run["seq"].append(seq)
            if step == STEPS:
                e = eval_step(chunks, forward_step, batch, seq, mbs)
                run["eval"] = (e.lm_loss, e.num_tokens, e.correct, e.scored)
                break
            r = train_step(chunks, opt, forward_step, batch, seq, mbs)
            run["losses"].append(r.lm_loss)
            run["grad_norms"].append(float(r.grad_norm))
            run["tokens"].append(r.num_tokens)
        out[mode] = run
    destroy_distributed()
    return out


@pytest.fixture(scope="module")
def finetune_reference(reference_checkpoint):
    (ref,) = run_distributed(_finetune_body, 1, pw.REFERENCE, reference_checkpoint)
    return ref


def test_reference_finetuning_run_is_meaningful(finetune_reference):
    for mode, run in finetune_reference.items():
        assert len(set(run["losses"])) == STEPS, f"{mode}: nothing trained"
        assert min(run["grad_norms"]) > 0.1
        loss, tokens, correct, scored = run["eval"]
        assert tokens == scored > 0 and 0 <= correct <= scored
    # Packed rows hold several examples each, so a packed global batch covers more of them.
    assert finetune_reference["packed"]["tokens"][0] > finetune_reference["padded"]["tokens"][0]


def test_sparse_targets_path_computes_the_padded_run(finetune_reference):
    """Cutting trailing columns and computing logits only at targets changes nothing but cost."""
    sparse, padded = finetune_reference["sparse"], finetune_reference["padded"]
    assert max(sparse["seq"]) < pw.SEQ, f"nothing was cut: {sparse['seq']}"
    assert sparse["tokens"] == padded["tokens"]
    for key in ("losses", "grad_norms"):
        worst = max(pw.rel(a, b) for a, b in zip(sparse[key], padded[key], strict=True))
        assert worst <= TOL, f"{key}: {sparse[key]} vs {padded[key]}"
    assert sparse["eval"][1:] == padded["eval"][1:]
    assert pw.rel(sparse["eval"][0], padded["eval"][0]) <= TOL


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
def test_finetuning_layout_matches_single_process(layout, finetune_reference, reference_checkpoint):
    results = run_distributed(_finetune_body, layout.world, layout, reference_checkpoint, timeout=240)
    for mode, ref in finetune_reference.items():
        for rank, res in enumerate(results):
            run = res[mode]
            assert run["tokens"] == ref["tokens"], f"{layout.name} {mode} rank {rank}"
            for key in ("losses", "grad_norms"):
                worst = max(pw.rel(a, b) for a, b in zip(run[key], ref[key], strict=True))
                assert worst <= TOL, f"{layout.name} {mode}: {key} {run[key]} vs {ref[key]}"
            loss, tokens, correct, scored = run["eval"]
            assert (tokens, correct, scored) == ref["eval"][1:], f"{layout.name} {mode} eval counts"
            assert pw.rel(loss, ref["eval"][0]) <= TOL, (
                f"{layout.name} {mode}: eval loss {loss} vs {ref['eval'][0]}"
            )
