"""The fusion decision (megatron_pause/models/fusions.py), its flags, and the fused cross-entropy.

No GPU here: the machine is stubbed ("CUDA absent", "CUDA without TE/apex", "CUDA with TE") and
the decision, the flag mapping and the TransformerConfig it produces are checked -- never a
claim that a kernel ran. The one fused kernel whose *math* can run on CPU is the native fused
cross-entropy (a torch.compile function run eagerly here): the pause-masked loss and every
gradient must match the unfused path, at TP 1 and with the vocabulary split over TP 2.
"""

from __future__ import annotations

import dataclasses

import parity_worlds as pw
import pytest

from megatron_pause.arguments import build_parser, config_to_argv, parse_args
from megatron_pause.config import FusionConfig, ModelConfig, ParallelConfig, PrecisionConfig
from megatron_pause.models import fusions
from megatron_pause.testing import run_distributed

CPU = fusions.KernelAvailability()
CUDA_ONLY = fusions.KernelAvailability(cuda=True, triton=True)
CUDA_TE = fusions.KernelAvailability(cuda=True, triton=True, transformer_engine="2.8.0")
CUDA_TE_APEX = dataclasses.replace(CUDA_TE, apex_gradient_accumulation=True)
COMPILED = ("bias_activation_fusion", "bias_dropout_fusion", "cross_entropy_loss_fusion")
UNUSED = ("masked_softmax_fusion", "persist_layer_norm")
BF16 = PrecisionConfig(bf16=True)


def decide(wanted, model, available, precision=BF16):
    return fusions.decide(wanted, model, precision, available)


def _on(decisions) -> set[str]:
    return {name for name, d in decisions.items() if d.on}


def test_every_megatron_fusion_is_decided():
    decisions = decide(FusionConfig(), ModelConfig(), CPU)
    assert set(decisions) == set(fusions.FUSIONS)
    kwargs = fusions.transformer_config_kwargs(decisions)
    assert kwargs["cross_entropy_fusion_impl"] == "native"
    from megatron.core.transformer.transformer_config import TransformerConfig

    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    assert set(kwargs) <= fields  # names megatron-core knows


def test_cuda_absent_turns_everything_off():
    decisions = decide(FusionConfig(), ModelConfig(), CPU)
    assert _on(decisions) == set()
    for name in (*COMPILED, "apply_rope_fusion", "gradient_accumulation_fusion"):
        assert decisions[name].why == "needs CUDA", name
    for name in UNUSED:
        assert decisions[name].why.startswith("unused")


BIASED = ModelConfig(add_bias_linear=True)


def test_bias_fusions_only_with_a_bias():
    # Without linear biases the two "bias" kernels were measured slower than unfused on an H200.
    for available in (CUDA_ONLY, CUDA_TE):
        decisions = decide(FusionConfig(), ModelConfig(), available)
        for name in ("bias_activation_fusion", "bias_dropout_fusion"):
            assert not decisions[name].on and "no linear biases" in decisions[name].why
            assert decide(FusionConfig(), BIASED, available)[name].on
        assert decisions["cross_entropy_loss_fusion"].on


def test_cuda_without_te_or_apex():
    decisions = decide(FusionConfig(), BIASED, CUDA_ONLY)
    assert _on(decisions) == set(COMPILED)
    assert "Transformer Engine" in decisions["apply_rope_fusion"].why
    assert "fused_weight_gradient_mlp_cuda" in decisions["gradient_accumulation_fusion"].why
    # CUDA without Triton: torch.compile has no GPU backend.
    no_triton = decide(FusionConfig(), BIASED, dataclasses.replace(CUDA_ONLY, triton=False))
    assert _on(no_triton) == set() and "Triton" in no_triton["bias_dropout_fusion"].why


def test_cuda_with_te():
    decisions = decide(FusionConfig(), BIASED, CUDA_TE)
    assert _on(decisions) == {*COMPILED, "apply_rope_fusion"}
    assert not decisions["gradient_accumulation_fusion"].on  # the output layer still needs apex
    assert _on(decide(FusionConfig(), BIASED, CUDA_TE_APEX)) == {
        *COMPILED,
        "apply_rope_fusion",
        "gradient_accumulation_fusion",
    }
    old_te = decide(FusionConfig(), ModelConfig(), dataclasses.replace(CUDA_TE, transformer_engine="1.3.0"))
    assert not old_te["apply_rope_fusion"].on and ">= 1.4" in old_te["apply_rope_fusion"].why
    for name in UNUSED:  # never claimed on: neither layer spec builds those modules
        assert not decisions[name].on


def test_fused_cross_entropy_only_in_bf16():
    for precision in (PrecisionConfig(), PrecisionConfig(fp16=True)):
        decision = decide(FusionConfig(), ModelConfig(), CUDA_TE, precision)["cross_entropy_loss_fusion"]
        assert not decision.on and "--bf16 runs only" in decision.why
    assert decide(FusionConfig(), ModelConfig(), CUDA_TE, BF16)["cross_entropy_loss_fusion"].on


def test_model_shape_rules():
    learned = decide(FusionConfig(), ModelConfig(position_embedding_type="learned_absolute"), CUDA_TE)
    assert not learned["apply_rope_fusion"].on and "rotary" in learned["apply_rope_fusion"].why
    gelu = ModelConfig(swiglu=False)
    assert not decide(FusionConfig(), gelu, CUDA_TE)["bias_activation_fusion"].on  # megatron rejects it
    assert decide(FusionConfig(), dataclasses.replace(gelu, add_bias_linear=True), CUDA_TE)[
        "bias_activation_fusion"
    ].on


@pytest.mark.parametrize(
    "flag, field, swiglu",
    [
        ("--no-bias-swiglu-fusion", "bias_activation_fusion", True),
        ("--no-bias-gelu-fusion", "bias_activation_fusion", False),
        ("--no-bias-dropout-fusion", "bias_dropout_fusion", True),
        ("--no-rope-fusion", "apply_rope_fusion", True),
        ("--no-gradient-accumulation-fusion", "gradient_accumulation_fusion", True),
        ("--no-cross-entropy-loss-fusion", "cross_entropy_loss_fusion", True),
        ("--no-masked-softmax-fusion", "masked_softmax_fusion", True),
        ("--no-persist-layer-norm", "persist_layer_norm", True),
    ],
)
def test_flag_forces_its_fusion_off(flag, field, swiglu):
    shape = [] if swiglu else ["--no-swiglu", "--add-bias-linear"]
    default = parse_args(["--mock-data", *shape])
    cfg = parse_args(["--mock-data", *shape, flag])
    assert cfg.fusion != default.fusion
    assert parse_args(config_to_argv(cfg)) == cfg  # the flag round-trips
    with_flag = decide(cfg.fusion, cfg.model, CUDA_TE_APEX)
    without = decide(default.fusion, default.model, CUDA_TE_APEX)
    assert with_flag[field] == fusions.FusionDecision(False, f"forced off by {flag}")
    # Only that one changes.
    assert {n for n in with_flag if with_flag[n] != without[n]} == {field}


def test_cross_entropy_flag_pair_and_help():
    assert parse_args(["--mock-data", "--cross-entropy-loss-fusion"]).fusion.cross_entropy_loss_fusion
    assert not parse_args(["--mock-data", "--no-cross-entropy-loss-fusion"]).fusion.cross_entropy_loss_fusion
    # The swiglu flag leaves the GELU field alone (and the other way round), as in Megatron-LM.
    assert parse_args(["--mock-data", "--no-bias-swiglu-fusion"]).fusion.bias_gelu_fusion
    helptext = build_parser().format_help()
    assert "kernel fusions" in helptext and "--no-rope-fusion" in helptext


def test_transformer_config_follows_the_decision(monkeypatch):
    from megatron.core.models.common.embeddings import rope_utils

    from megatron_pause.models.gpt import transformer_config

    model = pw.tiny_model(add_bias_linear=True)
    cpu = transformer_config(model, ParallelConfig(), BF16, available=CPU)
    assert not any(getattr(cpu, name) for name in fusions.FUSIONS)
    # TransformerConfig checks that TE's fused RoPE function exists: stub it as present.
    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", lambda *a, **k: None)
    gpu = transformer_config(model, ParallelConfig(), PrecisionConfig(bf16=True), available=CUDA_TE_APEX)
    assert {name for name in fusions.FUSIONS if getattr(gpu, name)} == {
        *COMPILED,
        "apply_rope_fusion",
        "gradient_accumulation_fusion",
    }
    forced = transformer_config(
        model,
        ParallelConfig(),
        BF16,
        fusion=parse_args(["--mock-data", "--no-rope-fusion", "--no-cross-entropy-loss-fusion"]).fusion,
        available=CUDA_TE_APEX,
    )
    assert (
        not forced.apply_rope_fusion and not forced.cross_entropy_loss_fusion and forced.bias_dropout_fusion
    )


def test_default_transformer_config_detects_this_machine():
    from megatron_pause.models.gpt import transformer_config

    tcfg = transformer_config(pw.tiny_model(), ParallelConfig())
    expected = decide(FusionConfig(), pw.tiny_model(), fusions.detect(), PrecisionConfig())
    assert {n: getattr(tcfg, n) for n in fusions.FUSIONS} == {n: d.on for n, d in expected.items()}


def test_start_up_line_lists_what_is_on():
    line = fusions.describe(decide(FusionConfig(), BIASED, CUDA_TE))
    on, off = line.split("; off: ")
    assert on == "fusions on: bias-activation, bias-dropout-add, rope, cross-entropy"
    assert "gradient-accumulation (needs apex's fused_weight_gradient_mlp_cuda)" in off
    assert fusions.describe(decide(FusionConfig(), ModelConfig(), CPU)).startswith("fusions on: none; off:")


# ------------------------------------------------------------------------------------------
# The pause-masked loss with megatron's fused cross-entropy
# ------------------------------------------------------------------------------------------


def _fused_cross_entropy_body(rank: int, world: int, bf16: bool) -> dict:
    import torch
    from megatron.core.models.common.language_module import language_module

    from megatron_pause.distributed import destroy_distributed, init_distributed
    from megatron_pause.loss import PauseMaskedLoss
    from megatron_pause.models.gpt import build_model_chunks, transformer_config

    model = pw.tiny_model()
    par = ParallelConfig(tensor_model_parallel_size=world)
    init_distributed(par, model.num_layers, seed=pw.SEED)
    tcfg = transformer_config(model, par, PrecisionConfig(bf16=bf16), available=CPU)
    (gpt,) = build_model_chunks(model, tcfg, pw.PADDED_VOCAB)
    calls = []
    real_fused = language_module.fused_vocab_parallel_cross_entropy

    def counting(*args, **kwargs):
        calls.append(1)
        return real_fused(*args, **kwargs)

    language_module.fused_vocab_parallel_cross_entropy = counting
    loss_fn = PauseMaskedLoss(pw.PAUSE_ID)
    out = {}
    for fused in (False, True):
        gpt.config.cross_entropy_loss_fusion = fused
        gpt.zero_grad(set_to_none=True)
        sums, counts = [], []
        # megatron's jit_fuser is torch.compile: run its functions eagerly on CPU (same math).
        with torch.compiler.set_stance("force_eager"):
            for mb in pw.global_batch(0):  # 0% to 70% pause targets
                per_token = gpt(mb["tokens"], mb["position_ids"], None, labels=mb["labels"])
                loss_sum, num_tokens, _ = loss_fn(mb["loss_mask"], mb["labels"], per_token)
                loss_sum.backward()
                sums.append(loss_sum.detach())
                counts.append(int(num_tokens))
        out[fused] = dict(
            sums=torch.stack(sums),
            counts=counts,
            grads={n: p.grad.detach().clone() for n, p in gpt.named_parameters()},
        )
    gpt.config.cross_entropy_loss_fusion = False
    destroy_distributed()
    unfused, fused = out[False], out[True]
    return dict(
        fused_calls=len(calls),
        counts_equal=unfused["counts"] == fused["counts"],
        sum_diff=float((unfused["sums"] - fused["sums"]).abs().max()),
        sum_scale=float(unfused["sums"].abs().max()),
        grad_diff=max(float((unfused["grads"][n] - g).abs().max()) for n, g in fused["grads"].items()),
        grad_scale=max(float(g.abs().max()) for g in unfused["grads"].values()),
        pause_targets_present=any(bool((mb["labels"] == pw.PAUSE_ID).any()) for mb in pw.global_batch(0)),
    )


@pytest.mark.parametrize("tp", [1, 2])
def test_pause_masked_loss_is_exact_with_fused_cross_entropy(tp):
    """bf16, where the decision turns the fusion on: the same loss and the same gradients, bit for bit."""
    for r in run_distributed(_fused_cross_entropy_body, tp, True):
        assert r["fused_calls"] == len(pw.global_batch(0))  # the fused kernel really computed the loss
        assert r["pause_targets_present"] and r["counts_equal"]
        assert r["sum_diff"] == 0.0 and r["grad_diff"] == 0.0, r


def test_fused_cross_entropy_rounds_fp32_gradients_to_bf16():
    """Why the decision keeps the fusion out of fp32 runs (megatron-core 0.19.2's
    calculate_gradients casts to bf16). If an upgrade fixes that, this fails: relax decide()."""
    (r,) = run_distributed(_fused_cross_entropy_body, 1, False)
    assert r["fused_calls"] == len(pw.global_batch(0)) and r["counts_equal"]
    assert r["sum_diff"] <= 1e-6 * r["sum_scale"]  # the forward agrees
    assert r["grad_diff"] > 1e-4 * r["grad_scale"], r  # the gradient lost fp32 precision
