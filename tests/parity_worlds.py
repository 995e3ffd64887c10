"""The parity matrix: one tiny model trained a few steps under every parallel layout.

Shared by ``tests/test_parity.py`` (which asserts) and
``benchmarks/parity_report.py`` (which prints the measured differences).

Every layout loads the same reference checkpoint and trains on the same
global batch (4 microbatches of 2 sequences, split round-robin over
data-parallel ranks), so any difference from the single-process run is a bug
in how the layout computes, not in what it was given. Besides the loss and
grad norm of every step, each run records a fingerprint of every parameter's
gradient after the first backward pass -- the squared L2 norm and the max
absolute value of ``main_grad``, keyed by the parameter's *global* name and
reduced over the ranks that hold pieces of it -- so a wrong gradient in a
single tensor is caught even when the total grad norm happens to agree.

The batches deliberately contain ``<pause>`` targets in very different
numbers per microbatch, so a mean of per-microbatch means would differ from
the correct global-batch mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megatron_pause.config import ModelConfig, OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_pause.testing import run_distributed

SEED = 1234
BASE_VOCAB = 100  # real tokens 0..99
PAUSE_ID = 100  # first id after the base vocabulary
PADDED_VOCAB = 128
SEQ = 16
MICRO_BATCH = 2
NUM_MICROBATCHES = 4
STEPS = 3
# Large enough that Adam moves the weights visibly in one step, so a layout
# that updates the wrong shard (or with the wrong grads) diverges by step 2.
# Adam also amplifies rounding: an element whose gradient is ~0 moves by
# ~lr * m / sqrt(v), whose sign float noise can flip. Under TP (a different
# summation order) the first-step grad norm agrees to ~1e-7 and later steps
# to ~3e-6 -- still inside the 1e-5 tolerance; a real bug is off by >1e-3.
LR = 1e-2
# Pause density per microbatch: from none to most of the sequence.
PAUSE_RATES = (0.0, 0.15, 0.4, 0.7)


def tiny_model(**overrides) -> ModelConfig:
    kw = dict(num_layers=4, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, seq_length=SEQ)
    kw.update(overrides)
    return ModelConfig(**kw)


@dataclass(frozen=True)
class Layout:
    name: str
    world: int
    tp: int = 1
    pp: int = 1
    layers_per_virtual_stage: int | None = None
    sequence_parallel: bool = False
    distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False

    def parallel(self) -> ParallelConfig:
        return ParallelConfig(
            tensor_model_parallel_size=self.tp,
            pipeline_model_parallel_size=self.pp,
            num_layers_per_virtual_pipeline_stage=self.layers_per_virtual_stage,
            sequence_parallel=self.sequence_parallel,
            use_distributed_optimizer=self.distributed_optimizer,
            overlap_grad_reduce=self.overlap_grad_reduce,
        )


REFERENCE = Layout("TP1", 1)
LAYOUTS = [
    Layout("TP2", 2, tp=2),
    Layout("PP2", 2, pp=2),
    # 4 layers / PP2 / 1 layer per virtual stage = 2 virtual stages per rank
    # (the interleaved schedule; needs batch_p2p_comm=False on gloo).
    Layout("PP2-VPP2", 2, pp=2, layers_per_virtual_stage=1),
    Layout("DP2", 2),
    Layout("DP2-overlap", 2, overlap_grad_reduce=True),
    Layout("DP2-distopt", 2, distributed_optimizer=True),
    Layout("DP2-distopt-overlap", 2, distributed_optimizer=True, overlap_grad_reduce=True),
    Layout("TP2-SP", 2, tp=2, sequence_parallel=True),
    Layout("TP2xPP2", 4, tp=2, pp=2),
    Layout("TP2xDP2", 4, tp=2),
]


def global_batch(step: int) -> list[dict[str, torch.Tensor]]:
    """The step's global batch: NUM_MICROBATCHES microbatches of [MICRO_BATCH, SEQ]."""
    g = torch.Generator().manual_seed(1000 + step)
    mbs = []
    for rate in PAUSE_RATES:
        seq = torch.randint(0, BASE_VOCAB, (MICRO_BATCH, SEQ + 1), generator=g)
        seq[torch.rand(seq.shape, generator=g) < rate] = PAUSE_ID
        loss_mask = torch.ones(MICRO_BATCH, SEQ)
        loss_mask[0, -1] = 0.0  # an ordinary (non-pause) masked position too
        mbs.append(
            dict(
                tokens=seq[:, :-1].contiguous(),
                labels=seq[:, 1:].contiguous(),
                loss_mask=loss_mask,
                position_ids=torch.arange(SEQ).expand(MICRO_BATCH, SEQ).contiguous(),
            )
        )
    return mbs


def local_microbatches(step: int) -> list[dict[str, torch.Tensor]]:
    """This data-parallel rank's share of the global batch (round-robin)."""
    from megatron.core import parallel_state as ps

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    return global_batch(step)[dp_rank::dp]


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    while hasattr(module, "module"):
        module = module.module
    return module


def global_param_names(chunk: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(global name, param) of a model chunk. Under PP/VPP a chunk's
    ``decoder.layers.<i>`` is local; mcore's ``layer_number`` is the global
    1-based index, so ``decoder.layers.<layer_number - 1>`` names it globally."""
    gpt = unwrap(chunk)
    local_to_global = {i: layer.layer_number - 1 for i, layer in enumerate(gpt.decoder.layers)}
    out = []
    for name, param in gpt.named_parameters():
        parts = name.split(".")
        if parts[:2] == ["decoder", "layers"]:
            parts[2] = str(local_to_global[int(parts[2])])
        out.append((".".join(parts), param))
    return out


def _owned_grad(param: torch.nn.Parameter, optimizers) -> torch.Tensor:
    """The part of ``param.main_grad`` whose value is final on this rank. With
    the distributed optimizer only this DP rank's shard was reduce-scattered;
    the rest of the buffer still holds the local, unreduced gradient."""
    grad = param.main_grad.detach().float().reshape(-1)
    dist_opts = [o for o in optimizers if hasattr(o, "model_param_gbuf_map")]
    if not dist_opts:
        return grad
    for opt in dist_opts:
        # The map lists only params with elements in this rank's shard.
        if param in opt.model_param_gbuf_map:
            rng = opt._get_model_param_range_map(param)["param"]
            return grad[rng.start : rng.end]
    return grad[:0]


def grad_fingerprint(chunks, optimizer) -> dict[str, tuple[float, float]]:
    """{global param name: (squared L2 norm, max |g|)} of the final gradients,
    reduced over the TP group (shards) and, with the distributed optimizer,
    over the DP group (optimizer shards). Collective over all ranks."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    optimizers = getattr(optimizer, "chained_optimizers", [optimizer])
    distributed = any(hasattr(o, "model_param_gbuf_map") for o in optimizers)
    names, sq, mx = [], [], []
    for chunk in chunks:
        for name, param in global_param_names(chunk):
            g = _owned_grad(param, optimizers)
            names.append(name)
            # Replicated params (norms, under TP) count once, from TP rank 0.
            keep = param_is_not_tensor_parallel_duplicate(param)
            sq.append(g.double().square().sum() if keep else torch.zeros((), dtype=torch.float64))
            mx.append(g.abs().max().double() if g.numel() else torch.zeros((), dtype=torch.float64))
    sq_t, mx_t = torch.stack(sq), torch.stack(mx)
    torch.distributed.all_reduce(sq_t, group=ps.get_tensor_model_parallel_group())
    torch.distributed.all_reduce(
        mx_t, op=torch.distributed.ReduceOp.MAX, group=ps.get_tensor_model_parallel_group()
    )
    if distributed:
        dp_group = ps.get_data_parallel_group(with_context_parallel=True)
        torch.distributed.all_reduce(sq_t, group=dp_group)
        torch.distributed.all_reduce(mx_t, op=torch.distributed.ReduceOp.MAX, group=dp_group)
    return {n: (float(s), float(m)) for n, s, m in zip(names, sq_t, mx_t)}


def build(layout: Layout, model=None, precision=None, lr: float = LR, padded_vocab: int = PADDED_VOCAB):
    """Process groups, model chunks (DDP-wrapped) and optimizer for ``layout``."""
    from megatron_pause.distributed import init_distributed
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.training.step import build_optimizer, wrap_model

    model = model or tiny_model()
    precision = precision or PrecisionConfig()
    par = layout.parallel()
    init_distributed(par, model.num_layers, seed=SEED)
    cfg = transformer_config(model, par, precision)
    chunks = wrap_model(build_model_chunks(model, cfg, padded_vocab), cfg, par)
    opt = build_optimizer(chunks, OptimizerConfig(lr=lr), par, precision)
    return cfg, chunks, opt


def _save_body(rank: int, world: int, path: str) -> None:
    from megatron_pause.distributed import destroy_distributed
    from megatron_pause.training.checkpoint import save_checkpoint

    _, chunks, _ = build(REFERENCE)
    save_checkpoint(path, 0, chunks, None, None, {}, {})
    destroy_distributed()


def save_reference_checkpoint(path: str) -> None:
    run_distributed(_save_body, 1, path)


def train_body(
    rank: int, world: int, layout: Layout, ckpt: str | None, steps: int = STEPS, model=None
) -> dict:
    """Load the reference weights (unless ``ckpt`` is None: TP/DP-only layouts
    start from identical weights anyway), train ``steps`` steps; return per-step
    loss, grad norm and token counts, and the first step's gradient fingerprint."""
    from megatron_pause.distributed import destroy_distributed
    from megatron_pause.loss import PauseMaskedLoss
    from megatron_pause.training.checkpoint import load_checkpoint
    from megatron_pause.training.step import make_forward_step, train_step

    cfg, chunks, opt = build(layout, model=model)
    if ckpt is not None:
        load_checkpoint(ckpt, chunks, load_rng=False)
    forward_step = make_forward_step(PauseMaskedLoss(PAUSE_ID))

    fingerprint: dict = {}
    real_step = opt.step

    def step_capturing_grads():
        # The grads are final here (finalize_model_grads has reduced and
        # scaled them) and not yet clipped or consumed by the update.
        if not fingerprint:
            fingerprint.update(grad_fingerprint(chunks, opt))
        return real_step()

    opt.step = step_capturing_grads
    losses, norms, tokens, pauses = [], [], [], []
    for step in range(steps):
        r = train_step(chunks, opt, forward_step, local_microbatches(step), SEQ, MICRO_BATCH)
        losses.append(r.lm_loss)
        norms.append(float(r.grad_norm))
        tokens.append(r.num_tokens)
        pauses.append(r.pause_targets)
    destroy_distributed()
    return dict(
        losses=losses, grad_norms=norms, tokens=tokens, pause_targets=pauses, grads=fingerprint,
        batch_p2p=cfg.batch_p2p_comm, num_query_groups=cfg.num_query_groups,
    )  # fmt: skip


def merge_ranks(results: list[dict]) -> dict:
    """One run's view from the per-rank results: scalars must agree on every
    rank; gradient fingerprints are the union over ranks (a name reported by
    several ranks must carry the same value everywhere)."""
    first = results[0]
    grads: dict[str, tuple[float, float]] = {}
    for rank, r in enumerate(results):
        for key in ("losses", "grad_norms", "tokens", "pause_targets"):
            for a, b in zip(r[key], first[key]):
                assert math.isclose(a, b, rel_tol=1e-12, abs_tol=0), (
                    f"rank {rank} reports {key} {r[key]} vs {first[key]}"
                )
        for name, value in r["grads"].items():
            if name in grads:
                assert grads[name] == value, f"rank {rank} disagrees on the gradient of {name}"
            grads[name] = value
    return {**first, "grads": grads}


def run_layout(layout: Layout, ckpt: str, steps: int = STEPS, timeout: float = 180) -> dict:
    return merge_ranks(run_distributed(train_body, layout.world, layout, ckpt, steps, timeout=timeout))


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


@dataclass
class Diff:
    loss: float  # max relative difference of the per-step loss
    grad_norm: float  # ... of the per-step grad norm
    grad: float  # ... of any parameter's first-step gradient norm or max |g|
    worst_param: str
    missing: list[str]  # params in the reference but not in the layout (or vice versa)


def compare(run: dict, ref: dict) -> Diff:
    loss = max(rel(a, b) for a, b in zip(run["losses"], ref["losses"], strict=True))
    norm = max(rel(a, b) for a, b in zip(run["grad_norms"], ref["grad_norms"], strict=True))
    missing = sorted(set(ref["grads"]) ^ set(run["grads"]))
    worst, worst_name = 0.0, ""
    for name in sorted(set(ref["grads"]) & set(run["grads"])):
        (sq, mx), (rsq, rmx) = run["grads"][name], ref["grads"][name]
        d = max(rel(math.sqrt(sq), math.sqrt(rsq)), rel(mx, rmx))
        if d >= worst:
            worst, worst_name = d, name
    return Diff(loss, norm, worst, worst_name, missing)
