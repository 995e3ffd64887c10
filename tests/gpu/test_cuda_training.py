"""The CUDA path: no CPU workaround active, a tiny GPT trains a step on the GPU (local layers,
Transformer Engine, FP8 where the hardware has it), and the entry point runs end to end with the
Slurm scripts' bf16 + distributed-optimizer flags over NCCL.

Skipped without CUDA (see conftest.py). The model-level tests share one single-rank NCCL process
group, built once per module.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gpu_worlds import single_rank_nccl_group

from megatron_pause.config import FusionConfig, ParallelConfig, PrecisionConfig, model_preset
from megatron_pause.testing import free_port

REPO = Path(__file__).resolve().parents[2]
HAVE_TE = importlib.util.find_spec("transformer_engine") is not None
PADDED_VOCAB = 1024


@pytest.fixture(scope="module")
def process_group():
    with single_rank_nccl_group(num_layers=model_preset("tiny").num_layers, seed=1234):
        assert torch.distributed.get_backend() == "nccl"
        yield


def forward_backward(model_cfg, precision: PrecisionConfig, batch: int = 2) -> tuple[torch.Tensor, list]:
    """One forward and backward of a freshly built model; returns the per-token loss and params."""
    from megatron_pause.models.gpt import build_model_chunks, transformer_config

    # Every fusion this machine has, except gradient-accumulation: it writes into megatron DDP's
    # main_grad, and this bare model is not DDP-wrapped (training always is).
    tcfg = transformer_config(
        model_cfg, ParallelConfig(), precision, fusion=FusionConfig(gradient_accumulation_fusion=False)
    )
    (model,) = build_model_chunks(model_cfg, tcfg, PADDED_VOCAB)
    seq = model_cfg.seq_length
    generator = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, PADDED_VOCAB - 1, (batch, seq + 1), generator=generator).cuda()
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    positions = torch.arange(seq, device="cuda").unsqueeze(0).expand(batch, -1)
    loss = model(inputs, positions, None, labels=labels)
    loss.float().mean().backward()
    torch.cuda.synchronize()
    return loss, list(model.named_parameters())


def check_trained_a_step(loss: torch.Tensor, params: list, dtype: torch.dtype) -> None:
    assert loss.shape == (2, model_preset("tiny").seq_length)
    assert torch.isfinite(loss).all()
    # Random init over a 1k vocab: the loss starts near ln(1024) ~ 6.9.
    assert 5.0 < loss.float().mean().item() < 9.0
    for name, p in params:
        assert p.is_cuda, f"{name} is on {p.device}"
        assert p.dtype == dtype or p.dim() == 1 or "extra_state" in name, f"{name} is {p.dtype}"
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    assert sum(p.grad.float().norm() for _, p in params) > 0


def test_cpu_compatibility_layer_is_inactive_on_cuda():
    from megatron_pause import platform

    platform.install()
    assert platform.cuda_available()
    assert platform.patched_functions() == []
    for modname in platform.PATCHED_MODULES:
        assert importlib.import_module(modname).torch is torch, f"{modname}.torch was redirected"
    assert platform.device().type == "cuda"


def test_local_layers_forward_backward_bf16(process_group):
    from megatron_pause import platform

    loss, params = forward_backward(model_preset("tiny"), PrecisionConfig(bf16=True))
    check_trained_a_step(loss, params, torch.bfloat16)
    assert platform.patched_functions() == []  # building and running the model patched nothing


@pytest.mark.skipif(not HAVE_TE, reason="Transformer Engine is not installed")
@pytest.mark.parametrize("fp8_format", [None, "hybrid"])
def test_transformer_engine_forward_backward(process_group, fp8_format):
    if fp8_format and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9 (Ada/Hopper or newer)")
    # FP8 GEMMs need widths divisible by 16: the tiny preset's FFN (344) is not.
    model_cfg = model_preset("tiny", transformer_impl="transformer_engine", ffn_hidden_size=352)
    loss, params = forward_backward(model_cfg, PrecisionConfig(bf16=True, fp8_format=fp8_format))
    check_trained_a_step(loss, params, torch.bfloat16)


def test_fusions_follow_this_machine():
    """On CUDA the torch.compile fusions are on exactly where Triton is importable, RoPE where TE
    is, and the TransformerConfig carries the decision."""
    from megatron_pause.config import ModelConfig
    from megatron_pause.models import fusions
    from megatron_pause.models.gpt import transformer_config

    available = fusions.detect()
    assert available.cuda
    bf16 = PrecisionConfig(bf16=True)
    decisions = fusions.decide(FusionConfig(), ModelConfig(), bf16, available)
    biased = fusions.decide(FusionConfig(), ModelConfig(add_bias_linear=True), bf16, available)
    compiled = importlib.util.find_spec("triton") is not None
    assert decisions["cross_entropy_loss_fusion"].on == compiled
    for name in ("bias_activation_fusion", "bias_dropout_fusion"):
        assert biased[name].on == compiled, (name, biased[name])
        assert not decisions[name].on  # no linear biases: measured slower fused
    assert decisions["apply_rope_fusion"].on == HAVE_TE
    tcfg = transformer_config(model_preset("tiny"), ParallelConfig(), bf16)
    assert {n: getattr(tcfg, n) for n in fusions.FUSIONS} == {n: d.on for n, d in decisions.items()}
    print(fusions.describe(decisions))


def test_fused_cross_entropy_matches_unfused_on_cuda(process_group):
    """The compiled fused cross-entropy against the unfused one, through the pause-masked loss."""
    from megatron_pause.loss import PauseMaskedLoss
    from megatron_pause.models.gpt import build_model_chunks, transformer_config

    model_cfg = model_preset("tiny")
    tcfg = transformer_config(
        model_cfg,
        ParallelConfig(),
        PrecisionConfig(bf16=True),
        fusion=FusionConfig(gradient_accumulation_fusion=False),
    )
    if not tcfg.cross_entropy_loss_fusion:
        pytest.skip("no Triton or no C compiler here: the torch.compile fusions are off")
    (model,) = build_model_chunks(model_cfg, tcfg, PADDED_VOCAB)
    generator = torch.Generator(device="cpu").manual_seed(0)
    seq, pause_id = model_cfg.seq_length, PADDED_VOCAB - 1
    tokens = torch.randint(0, PADDED_VOCAB - 1, (2, seq + 1), generator=generator)
    tokens[torch.rand(tokens.shape, generator=generator) < 0.3] = pause_id  # 30% pauses
    tokens = tokens.cuda()
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    positions = torch.arange(seq, device="cuda").unsqueeze(0).expand(2, -1)
    loss_fn = PauseMaskedLoss(pause_id)
    out = {}
    for fused in (True, False):
        model.config.cross_entropy_loss_fusion = fused
        model.zero_grad(set_to_none=True)
        per_token = model(inputs, positions, None, labels=labels)
        loss_sum, num_tokens, _ = loss_fn(torch.ones_like(labels, dtype=torch.float), labels, per_token)
        loss_sum.backward()
        out[fused] = (
            loss_sum.item(),
            int(num_tokens),
            {n: p.grad.float().clone() for n, p in model.named_parameters()},
        )
    model.config.cross_entropy_loss_fusion = True
    (fused_sum, fused_n, fused_grads), (plain_sum, plain_n, plain_grads) = out[True], out[False]
    assert fused_n == plain_n < labels.numel()  # pause targets were masked out
    assert fused_sum == pytest.approx(plain_sum, rel=1e-5)
    for name, grad in plain_grads.items():
        scale = grad.abs().max().item()
        # Both paths round the logits gradient to bf16; compiled kernels may flip the last bit.
        assert (fused_grads[name] - grad).abs().max().item() <= 2e-2 * scale + 1e-8, name


@pytest.mark.skipif(not HAVE_TE, reason="Transformer Engine is not installed")
def test_pause_rows_and_masked_loss_under_the_te_spec(process_group):
    """The pause row lives in the same two tables under the TE spec (embedding, output layer),
    and the pause-masked loss drops pause targets there as under the local spec."""
    from megatron_pause.loss import PauseMaskedLoss
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.models.pause_vocab import gather_pause_rows, init_pause_rows, pause_weight_tables

    model_cfg = model_preset("tiny", transformer_impl="transformer_engine", ffn_hidden_size=352)
    tcfg = transformer_config(
        model_cfg,
        ParallelConfig(),
        PrecisionConfig(bf16=True),
        fusion=FusionConfig(gradient_accumulation_fusion=False),
    )
    chunks = build_model_chunks(model_cfg, tcfg, PADDED_VOCAB)
    base_vocab, pause_id = 1000, 1000
    assert init_pause_rows(chunks, pause_id, base_vocab) == 2  # embedding and output layer
    for table, row in zip(pause_weight_tables(chunks), gather_pause_rows(chunks, pause_id)):
        expected = table[:base_vocab].float().mean(0)
        # bf16 rows (~6e-4 here): a random row (std 0.02) would be far outside this.
        torch.testing.assert_close(row, expected, rtol=1e-2, atol=1e-4)
    (model,) = chunks
    generator = torch.Generator(device="cpu").manual_seed(0)
    seq = model_cfg.seq_length
    tokens = torch.randint(0, base_vocab, (2, seq + 1), generator=generator)
    tokens[torch.rand(tokens.shape, generator=generator) < 0.2] = pause_id
    tokens = tokens.cuda()
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    positions = torch.arange(seq, device="cuda").unsqueeze(0).expand(2, -1)
    per_token = model(inputs, positions, None, labels=labels)
    loss_sum, num_tokens, report = PauseMaskedLoss(pause_id)(
        torch.ones_like(labels, dtype=torch.float), labels, per_token
    )
    loss_sum.backward()
    assert int(num_tokens) == int((labels != pause_id).sum()) < labels.numel()
    assert torch.isfinite(loss_sum) and report["pause targets"].item() == (labels == pause_id).sum().item()


def test_pretrain_entry_point_on_one_gpu(tmp_path):
    """The Slurm scripts' precision and optimizer flags over NCCL, through the real entry point."""
    metrics = tmp_path / "metrics.jsonl"
    argv = [
        sys.executable, "-m", "megatron_pause.pretrain",
        "--model-size", "tiny", "--mock-data", "--bf16",
        "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "4", "--lr-warmup-iters", "0",
        "--log-interval", "1", "--eval-interval", "4", "--eval-iters", "1",
        "--save", str(tmp_path / "ckpt"), "--save-interval", "4", "--metrics-file", str(metrics),
    ]  # fmt: skip
    env = dict(
        os.environ,
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        CUDA_DEVICE_MAX_CONNECTIONS="1",
        PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "fusions on:" in proc.stdout  # the start-up line (megatron_pause/models/fusions.py)
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert [m["iteration"] for m in train] == [1, 2, 3, 4]
    assert all(m["tokens_per_sec"] > 0 and m["grad_norm"] is not None for m in train)
    from megatron_pause.training.flops import detect_peak_flops

    if detect_peak_flops("bfloat16") is not None:  # a GPU whose peak we know: MFU is reported
        assert all(m["mfu"] is not None and 0 < m["mfu"] < 1 for m in train)
    assert any(m["split"] == "valid" for m in lines)
    assert any((tmp_path / "ckpt").iterdir())
