"""Parallel layouts compute what one process computes.

The same weights (the reference checkpoint, resharded by megatron) and the
same global batch give, within 1e-5 relative, the same loss at every step,
the same grad norm, and the same first-step gradient of every parameter,
under TP2, PP2, PP2 with virtual stages, DP2 (megatron DDP with and without
overlapped grad reduce, with and without the distributed optimizer), TP2 with
sequence parallelism, TP2xPP2 and TP2xDP2. See ``tests/parity_worlds.py``.

Also here: the global-batch loss is sum/count over all microbatches (checked
against a hand computation from the model's logits, loss and gradients), and
the CPU configuration keeps ``batch_p2p_comm`` off (with it on, gloo silently
swaps activations between virtual stages; the PP2-VPP2 parity case guards the
behaviour).
"""

from __future__ import annotations

import math

import parity_worlds as pw
import pytest
import torch
import torch.nn.functional as F

from megatron_pause.testing import run_distributed

TOL = 1e-5


@pytest.fixture(scope="module")
def reference(reference_checkpoint):
    return pw.run_layout(pw.REFERENCE, reference_checkpoint)


def test_reference_run_is_meaningful(reference):
    """Guards the parity tests against comparing trivial numbers."""
    losses, norms = reference["losses"], reference["grad_norms"]
    assert all(math.isfinite(x) for x in losses + norms)
    assert len(set(losses)) == len(losses), "loss does not change between steps: nothing is trained"
    assert min(norms) > 0.1
    # Every step masks pause targets, and each microbatch has its own share.
    assert all(p > 0 for p in reference["pause_targets"])
    n_targets = pw.NUM_MICROBATCHES * pw.MICRO_BATCH * pw.SEQ
    assert all(t + p < n_targets for t, p in zip(reference["tokens"], reference["pause_targets"]))
    # The fingerprint covers every parameter of the full model.
    model = pw.tiny_model()
    per_layer = 6  # input norm, qkv, proj, pre-mlp norm, fc1, fc2
    assert (
        len(reference["grads"]) == model.num_layers * per_layer + 3
    )  # + embedding, final norm, output layer
    assert all(sq > 0 for sq, _ in reference["grads"].values())


@pytest.mark.parametrize("layout", pw.LAYOUTS, ids=lambda layout: layout.name)
def test_layout_matches_single_process(layout, reference, reference_checkpoint):
    run = pw.run_layout(layout, reference_checkpoint)
    diff = pw.compare(run, reference)
    assert not diff.missing, f"{layout.name}: gradients missing or extra for {diff.missing}"
    assert run["tokens"] == reference["tokens"]
    assert run["pause_targets"] == reference["pause_targets"]
    assert diff.loss <= TOL, f"{layout.name}: loss {run['losses']} vs reference {reference['losses']}"
    assert diff.grad_norm <= TOL, f"{layout.name}: grad norm {run['grad_norms']} vs {reference['grad_norms']}"
    assert diff.grad <= TOL, (
        f"{layout.name}: first-step gradient of {diff.worst_param} differs by {diff.grad:.2e}"
    )
    if layout.layers_per_virtual_stage:
        assert run["batch_p2p"] is False


def test_batch_p2p_comm_is_off_on_cpu():
    """With virtual stages, gloo + batched p2p trains on swapped activations
    without an error (upstream megatron issue); the CPU config must keep it off."""
    from megatron_pause import platform
    from megatron_pause.models.gpt import transformer_config

    assert not platform.cuda_available()
    layout = pw.Layout("PP2-VPP2", 2, pp=2, layers_per_virtual_stage=1)
    cfg = transformer_config(pw.tiny_model(), layout.parallel())
    assert cfg.virtual_pipeline_model_parallel_size == 2
    assert cfg.batch_p2p_comm is False


def _hand_loss_body(rank: int, world: int, ckpt: str) -> dict:
    """Loss and gradients of one global batch two ways: megatron's schedule
    (train_step), and by hand from the model's logits."""
    from megatron_pause.distributed import destroy_distributed
    from megatron_pause.loss import PauseMaskedLoss
    from megatron_pause.training.checkpoint import load_checkpoint
    from megatron_pause.training.step import make_forward_step, train_step

    _, chunks, opt = pw.build(pw.REFERENCE)
    load_checkpoint(ckpt, chunks, load_rng=False)
    gpt = pw.unwrap(chunks[0])
    mbs = pw.global_batch(0)

    # By hand: CE from logits, pause targets and loss_mask zeros excluded.
    # Backward through the unwrapped model still lands in DDP's main_grad.
    chunks[0].zero_grad_buffer()
    total = torch.zeros((), dtype=torch.float64)
    count, means = 0.0, []
    for mb in mbs:
        logits = gpt(mb["tokens"], mb["position_ids"], None)  # [b, s, vocab]
        nll = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), mb["labels"].reshape(-1), reduction="none"
        )
        keep = ((mb["labels"] != pw.PAUSE_ID).float() * mb["loss_mask"]).reshape(-1)
        total = total + (nll * keep).sum().double()
        count += float(keep.sum())
        means.append(float((nll * keep).sum() / keep.sum()))
    hand = total / count
    hand.backward()
    hand_grads = {n: p.main_grad.detach().clone() for n, p in gpt.named_parameters()}

    schedule_grads = {}
    real_step = opt.step

    def capture():
        schedule_grads.update({n: p.main_grad.detach().clone() for n, p in gpt.named_parameters()})
        return real_step()

    opt.step = capture
    r = train_step(chunks, opt, make_forward_step(PauseMaskedLoss(pw.PAUSE_ID)), mbs, pw.SEQ, pw.MICRO_BATCH)
    n_pause = int(sum((mb["labels"] == pw.PAUSE_ID).sum() for mb in mbs))
    grad_rel = {n: float((schedule_grads[n] - g).norm() / g.norm()) for n, g in hand_grads.items()}
    destroy_distributed()
    return dict(
        hand=float(hand), count=count, mean_of_means=sum(means) / len(means), n_pause=n_pause,
        loss=r.lm_loss, tokens=r.num_tokens, pause_targets=r.pause_targets, targets=r.targets, grad_rel=grad_rel,
    )  # fmt: skip


def test_loss_is_sum_over_count_of_the_global_batch(reference_checkpoint):
    (res,) = run_distributed(_hand_loss_body, 1, reference_checkpoint)
    # The batch is built so that the wrong reduction (a mean of per-microbatch
    # means) would be far outside the tolerance (at initialisation every
    # token's loss is close to log(vocab), so the gap is small but not tiny).
    assert abs(res["mean_of_means"] - res["hand"]) / res["hand"] > 20 * TOL
    assert res["loss"] == pytest.approx(res["hand"], rel=TOL)
    assert res["tokens"] == res["count"]
    assert res["pause_targets"] == res["n_pause"] > 0
    assert res["targets"] == pw.NUM_MICROBATCHES * pw.MICRO_BATCH * pw.SEQ
    worst = max(res["grad_rel"], key=res["grad_rel"].get)
    assert res["grad_rel"][worst] <= TOL, f"gradient of {worst} differs from the hand-computed loss's"
