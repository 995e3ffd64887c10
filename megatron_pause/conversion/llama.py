"""The megatron-core GPT <-> Hugging Face ``LlamaForCausalLM`` weight map, on global tensors.

Conversion never sees tensor- or pipeline-parallel shards: the reader
(:mod:`megatron_pause.conversion.dist_reader`) returns whole tensors from a
``torch_dist`` checkpoint, and import builds a TP1/PP1 model whose
``save_checkpoint`` reshards for any later layout. So this module is plain
torch and only has to get two layouts right:

* **QKV.** megatron stores one ``linear_qkv`` weight whose rows are grouped
  per query group as ``[q_1 .. q_{NH/NG}, k, v]`` (``head_dim`` rows each).
  Splitting it into contiguous ``[Q | K | V]`` blocks is the classic
  conversion bug: with grouped-query attention it scrambles heads.
* **SwiGLU fc1.** ``linear_fc1`` is ``[gate; up]`` (the global tensor; each TP
  rank holds ``[gate_r; up_r]``, which the dist checkpoint reassembles).

Llama's RoPE needs no permutation (megatron's non-interleaved rotation is
HF's ``rotate_half``); norms, output projection and MLP down projection map
one to one.

Names. On disk, megatron stacks the layers of each parameter on a leading
axis (``decoder.layers.mlp.linear_fc2.weight`` is ``[L, H, F]``) and spells the
norms the Transformer Engine way (``...linear_qkv.layer_norm_weight``) for both
layer specs. :data:`LAYER_PARAMS` uses those per-layer suffixes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT_LAYER = "output_layer.weight"
LAYER_PREFIX = "decoder.layers."  # + suffix on disk (stacked); + "<i>." + suffix in memory

QKV = "self_attention.linear_qkv.weight"
INPUT_NORM = "self_attention.linear_qkv.layer_norm_weight"
PROJ = "self_attention.linear_proj.weight"
FC1 = "mlp.linear_fc1.weight"
PRE_MLP_NORM = "mlp.linear_fc1.layer_norm_weight"
FC2 = "mlp.linear_fc2.weight"
# Per-layer megatron parameters (disk spelling) in the order HF lists a layer's tensors.
LAYER_PARAMS = (INPUT_NORM, QKV, PROJ, PRE_MLP_NORM, FC1, FC2)

HF_EMBEDDING = "model.embed_tokens.weight"
HF_FINAL_NORM = "model.norm.weight"
HF_LM_HEAD = "lm_head.weight"


def hf_layer_prefix(i: int) -> str:
    return f"model.layers.{i}."


@dataclass(frozen=True)
class LlamaShape:
    """What the weight map needs to know about the model. ``vocab_size`` is the
    number of real rows (tokenizer ids including ``<pause>``), never megatron's
    padded size."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads"
            )
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"{self.num_attention_heads} attention heads do not split into {self.num_query_groups} "
                "query groups"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    def hf_tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every HF tensor of the exported model and its shape, in file order."""
        h, f, d = self.hidden_size, self.ffn_hidden_size, self.head_dim
        out: list[tuple[str, tuple[int, ...]]] = [(HF_EMBEDDING, (self.vocab_size, h))]
        for i in range(self.num_layers):
            p = hf_layer_prefix(i)
            out += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (self.num_attention_heads * d, h)),
                (p + "self_attn.k_proj.weight", (self.num_query_groups * d, h)),
                (p + "self_attn.v_proj.weight", (self.num_query_groups * d, h)),
                (p + "self_attn.o_proj.weight", (h, self.num_attention_heads * d)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (f, h)),
                (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f)),
            ]
        out += [(HF_FINAL_NORM, (h,)), (HF_LM_HEAD, (self.vocab_size, h))]
        return out


def split_qkv(qkv: torch.Tensor, shape: LlamaShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron's grouped ``[q.., k, v]`` rows -> HF ``q_proj``, ``k_proj``, ``v_proj``."""
    g, n, d = shape.num_query_groups, shape.heads_per_group, shape.head_dim
    expected = (g * (n + 2) * d, shape.hidden_size)
    if tuple(qkv.shape) != expected:
        raise ValueError(f"linear_qkv weight has shape {tuple(qkv.shape)}, expected {expected}")
    grouped = qkv.reshape(g, n + 2, d, shape.hidden_size)
    q = grouped[:, :n].reshape(g * n * d, shape.hidden_size)
    k = grouped[:, n].reshape(g * d, shape.hidden_size)
    v = grouped[:, n + 1].reshape(g * d, shape.hidden_size)
    return q.contiguous(), k.contiguous(), v.contiguous()


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: LlamaShape) -> torch.Tensor:
    """HF ``q_proj``, ``k_proj``, ``v_proj`` -> megatron's grouped ``linear_qkv`` rows."""
    g, n, d, h = shape.num_query_groups, shape.heads_per_group, shape.head_dim, shape.hidden_size
    grouped = torch.cat(
        [q.reshape(g, n, d, h), k.reshape(g, 1, d, h), v.reshape(g, 1, d, h)], dim=1
    )  # [g, n + 2, d, h]
    return grouped.reshape(g * (n + 2) * d, h).contiguous()


def split_fc1(fc1: torch.Tensor, shape: LlamaShape) -> tuple[torch.Tensor, torch.Tensor]:
    """Global ``linear_fc1`` ``[gate; up]`` -> HF ``gate_proj``, ``up_proj``."""
    if tuple(fc1.shape) != (2 * shape.ffn_hidden_size, shape.hidden_size):
        raise ValueError(
            f"linear_fc1 weight has shape {tuple(fc1.shape)}, expected "
            f"{(2 * shape.ffn_hidden_size, shape.hidden_size)} (SwiGLU)"
        )
    gate, up = fc1.chunk(2, dim=0)
    return gate.contiguous(), up.contiguous()


def merge_fc1(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.cat([gate, up], dim=0).contiguous()


def hf_layer_from_megatron(
    layer: Mapping[str, torch.Tensor], i: int, shape: LlamaShape
) -> dict[str, torch.Tensor]:
    """One layer: megatron per-layer tensors (keys from :data:`LAYER_PARAMS`) -> HF tensors of layer ``i``."""
    p = hf_layer_prefix(i)
    q, k, v = split_qkv(layer[QKV], shape)
    gate, up = split_fc1(layer[FC1], shape)
    return {
        p + "input_layernorm.weight": layer[INPUT_NORM],
        p + "self_attn.q_proj.weight": q,
        p + "self_attn.k_proj.weight": k,
        p + "self_attn.v_proj.weight": v,
        p + "self_attn.o_proj.weight": layer[PROJ],
        p + "post_attention_layernorm.weight": layer[PRE_MLP_NORM],
        p + "mlp.gate_proj.weight": gate,
        p + "mlp.up_proj.weight": up,
        p + "mlp.down_proj.weight": layer[FC2],
    }


def megatron_layer_from_hf(
    hf: Mapping[str, torch.Tensor], i: int, shape: LlamaShape
) -> dict[str, torch.Tensor]:
    """One layer: HF tensors of layer ``i`` -> megatron per-layer tensors (disk-spelling suffixes)."""
    p = hf_layer_prefix(i)
    return {
        INPUT_NORM: hf[p + "input_layernorm.weight"],
        QKV: merge_qkv(
            hf[p + "self_attn.q_proj.weight"],
            hf[p + "self_attn.k_proj.weight"],
            hf[p + "self_attn.v_proj.weight"],
            shape,
        ),  # fmt: skip
        PROJ: hf[p + "self_attn.o_proj.weight"],
        PRE_MLP_NORM: hf[p + "post_attention_layernorm.weight"],
        FC1: merge_fc1(hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]),
        FC2: hf[p + "mlp.down_proj.weight"],
    }


def hf_tensors_from_stacked(
    name: str, tensor: torch.Tensor, shape: LlamaShape
) -> Iterator[tuple[str, torch.Tensor]]:
    """HF tensors made from one on-disk megatron tensor. Stacked layer tensors
    (``decoder.layers.<suffix>``, ``[L, ...]``) give one or more HF tensors per
    layer; the vocabulary tables are trimmed to ``shape.vocab_size`` rows (the
    padding rows megatron adds are not part of the model)."""
    if name in (EMBEDDING, OUTPUT_LAYER):
        if tensor.shape[0] < shape.vocab_size:
            raise ValueError(
                f"{name} has {tensor.shape[0]} rows but the tokenizer has {shape.vocab_size} ids "
                "(including <pause>): the checkpoint was made with another tokenizer"
            )
        yield (HF_EMBEDDING if name == EMBEDDING else HF_LM_HEAD), tensor[: shape.vocab_size]
        return
    if name == FINAL_NORM:
        yield HF_FINAL_NORM, tensor
        return
    suffix = name.removeprefix(LAYER_PREFIX)
    if suffix not in LAYER_PARAMS:
        raise ValueError(f"no Hugging Face Llama tensor for megatron parameter {name!r}")
    if tensor.shape[0] != shape.num_layers:
        raise ValueError(f"{name} stacks {tensor.shape[0]} layers, the config says {shape.num_layers}")
    for i in range(shape.num_layers):
        p = hf_layer_prefix(i)
        t = tensor[i]
        if suffix == QKV:
            q, k, v = split_qkv(t, shape)
            yield from ((p + "self_attn.q_proj.weight", q), (p + "self_attn.k_proj.weight", k),
                        (p + "self_attn.v_proj.weight", v))  # fmt: skip
        elif suffix == FC1:
            gate, up = split_fc1(t, shape)
            yield from ((p + "mlp.gate_proj.weight", gate), (p + "mlp.up_proj.weight", up))
        else:
            hf_suffix = {
                INPUT_NORM: "input_layernorm.weight",
                PROJ: "self_attn.o_proj.weight",
                PRE_MLP_NORM: "post_attention_layernorm.weight",
                FC2: "mlp.down_proj.weight",
            }[suffix]
            yield p + hf_suffix, t


def megatron_stacked_names() -> list[str]:
    """The on-disk megatron tensors a Llama-style export reads."""
    return [EMBEDDING] + [LAYER_PREFIX + s for s in LAYER_PARAMS] + [FINAL_NORM, OUTPUT_LAYER]
