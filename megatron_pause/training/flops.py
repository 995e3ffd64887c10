"""Model FLOPs and peak FLOP/s, for MFU.

MFU = achieved model FLOP/s / peak FLOP/s. Model FLOPs count the matmuls of
one forward+backward pass (backward = 2x forward) and ignore recomputation,
as in the PaLM paper's definition, so MFU is comparable across recompute
settings. Per token, a dense decoder costs 6 * N_matmul (weights: QKV,
attention projection, MLP, output layer) plus 6 * L * s * h for the attention
score and context matmuls under a causal mask (half of the 12 * L * s * h of
full attention).
"""

from __future__ import annotations

from megatron_pause.config import ModelConfig

# Dense (no sparsity) peak tensor-core FLOP/s per GPU, from the vendors' data sheets.
_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is lower (756e12): pass --peak-flops
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
}


def matmul_params(model: ModelConfig, vocab_size: int) -> int:
    h, f, L = model.hidden_size, model.ffn_hidden_size, model.num_layers
    heads = model.num_attention_heads
    groups = model.num_query_groups or heads
    head_dim = h // heads
    qkv = h * (h + 2 * groups * head_dim)
    proj = h * h
    mlp = (3 if model.swiglu else 2) * h * f
    return L * (qkv + proj + mlp) + vocab_size * h  # output layer (the embedding lookup is not a matmul)


def model_flops_per_token(model: ModelConfig, vocab_size: int, seq_length: int) -> float:
    attention = 6 * model.num_layers * seq_length * model.hidden_size
    return 6.0 * matmul_params(model, vocab_size) + attention


def detect_peak_flops(dtype: str = "bfloat16") -> float | None:
    """Peak FLOP/s of the local GPU for bf16/fp16 (fp8 doubles it), or None (CPU / unknown)."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peak in _PEAK_BF16.items():
        if key in name:
            if dtype == "float32":
                return peak / 2  # TF32 tensor cores
            return peak
    return None
