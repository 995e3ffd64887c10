"""Export a checkpoint to a Hugging Face ``LlamaForCausalLM`` folder (one CPU process, any saved layout).

What is written (into ``OUTPUT.partial``, renamed to ``OUTPUT`` when complete):

* ``model.safetensors`` or ``model-0000k-of-0000n.safetensors`` + index, the
  vocabulary trimmed to the tokenizer's ids (real tokens and ``<pause>``;
  megatron's padding rows are dropped);
* ``config.json`` -- shape from the configuration stored with the checkpoint,
  never from flags -- with ``pause_token_id`` and a ``megatron_pause`` block
  (source iteration, how many pause targets training saw);
* ``generation_config.json`` (greedy, eos = end-of-document);
* the tokenizer (:mod:`~megatron_pause.conversion.hf_tokenizer`) and a model
  card saying how to use pauses at inference.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

import torch

from megatron_pause.config import ModelConfig, PretrainConfig
from megatron_pause.conversion import llama
from megatron_pause.conversion.dist_reader import DistCheckpointReader, resolve_checkpoint_dir
from megatron_pause.conversion.hf_tokenizer import load_hf_tokenizer
from megatron_pause.conversion.safetensors_writer import ShardedSafetensorsWriter, parse_size

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class ExportError(ValueError):
    pass


@dataclass
class ExportResult:
    output: str
    iteration: int
    num_files: int
    total_bytes: int
    seconds: float


def check_llama_compatible(model: ModelConfig) -> None:
    """Raise :class:`ExportError` when the architecture is not the Llama block HF implements."""
    problems = []
    if model.normalization != "RMSNorm":
        problems.append(f"normalization {model.normalization} (Llama uses RMSNorm)")
    if not model.swiglu:
        problems.append("no SwiGLU (--swiglu)")
    if model.add_bias_linear:
        problems.append("linear biases (--disable-bias-linear)")
    if model.position_embedding_type != "rope":
        problems.append(f"{model.position_embedding_type} position embeddings (Llama uses RoPE)")
    if problems:
        raise ExportError("the checkpoint is not a Llama-architecture model: " + "; ".join(problems))


def llama_shape(model: ModelConfig, vocab_size: int) -> llama.LlamaShape:
    return llama.LlamaShape(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups or model.num_attention_heads,
        vocab_size=vocab_size,
    )


def hf_config_dict(model: ModelConfig, shape: llama.LlamaShape, hf_tok, pause_id: int, dtype: torch.dtype,
                   provenance: dict) -> dict:  # fmt: skip
    """``LlamaConfig`` keyword arguments for this model."""
    return dict(
        architectures=["LlamaForCausalLM"],
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.ffn_hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_query_groups,
        head_dim=shape.head_dim,
        hidden_act="silu",
        max_position_embeddings=model.max_position_embeddings,
        rms_norm_eps=model.norm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": float(model.rotary_base)},
        initializer_range=model.init_method_std,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        dtype=_HF_DTYPE_NAMES[dtype],
        pause_token_id=pause_id,
        pause_token=hf_tok.convert_ids_to_tokens(pause_id),
        megatron_pause=provenance,
    )


def export_checkpoint(
    load: str,
    output: str,
    iteration: int | None = None,
    dtype: str = "fp32",
    max_shard_size: str | int = "5GB",
    tokenizer_model: str | None = None,
    overwrite: bool = False,
    log=lambda message: None,
) -> ExportResult:
    """Export ``load`` (a ``--save`` directory, or one ``iter_N`` directory) to ``output``.

    ``tokenizer_model`` overrides the tokenizer path stored in the checkpoint's
    configuration (when the checkpoint was moved to another machine)."""
    from transformers import GenerationConfig, LlamaConfig

    start = time.perf_counter()
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    shard_bytes = parse_size(max_shard_size)
    if os.path.exists(output) and os.listdir(output) and not overwrite:
        raise ExportError(f"{output} exists and is not empty (pass --overwrite to replace it)")

    reader = DistCheckpointReader(resolve_checkpoint_dir(load, iteration))
    cfg = PretrainConfig.from_dict(reader.config)
    check_llama_compatible(cfg.model)
    tok_path = tokenizer_model or cfg.tokenizer.tokenizer_model
    if not tok_path or not os.path.exists(tok_path):
        raise ExportError(
            f"the checkpoint's tokenizer {tok_path!r} is not here; pass --tokenizer-model with its local path"
        )
    hf_tok, project_tok = load_hf_tokenizer(cfg.tokenizer.tokenizer_type, tok_path, cfg.pause.pause_token)
    shape = llama_shape(cfg.model, project_tok.vocab_size)
    sources = llama.megatron_stacked_names()
    tied = llama.OUTPUT_LAYER not in reader.tensors
    if tied and cfg.model.untie_embeddings_and_output_weights:
        raise ExportError(f"{reader.path} has no {llama.OUTPUT_LAYER} but its config says untied embeddings")
    missing = [s for s in sources if s not in reader.tensors and not (tied and s == llama.OUTPUT_LAYER)]
    if missing:
        raise ExportError(f"{reader.path} lacks {missing}: not a GPT checkpoint of this project")

    it = int(reader.meta.get("iteration", -1))
    provenance = {
        "iteration": it,
        "pause_targets_seen": int(reader.meta.get("train_state", {}).get("pause_targets_seen", 0) or 0),
        "megatron_core": reader.meta.get("megatron_core"),
        "tokenizer_type": cfg.tokenizer.tokenizer_type,
    }
    tmp = output.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with ShardedSafetensorsWriter(tmp, shape.hf_tensor_shapes(), torch_dtype, shard_bytes) as writer:
        for name in sources:
            read_as = llama.EMBEDDING if (tied and name == llama.OUTPUT_LAYER) else name
            tensor = reader.read(read_as)
            for hf_name, hf_tensor in llama.hf_tensors_from_stacked(name, tensor, shape):
                writer.write(hf_name, hf_tensor)
            del tensor
            log(f"  converted {name}")
    LlamaConfig(**hf_config_dict(cfg.model, shape, hf_tok, project_tok.pause_id, torch_dtype, provenance)
                ).save_pretrained(tmp)  # fmt: skip
    GenerationConfig(
        bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
        do_sample=False,
    ).save_pretrained(tmp)  # fmt: skip
    hf_tok.save_pretrained(tmp)
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(model_card(cfg, shape, project_tok.pause_id, hf_tok.convert_ids_to_tokens(project_tok.pause_id),
                           it, dtype))  # fmt: skip
    if os.path.exists(output):
        shutil.rmtree(output)
    os.replace(tmp, output)
    return ExportResult(output, it, len(writer.shards), writer.total_size, time.perf_counter() - start)


def model_card(cfg: PretrainConfig, shape: llama.LlamaShape, pause_id: int, pause_token: str, iteration: int,
               dtype: str) -> str:  # fmt: skip
    m = cfg.model
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [llama, pause-tokens, megatron]
---

# Pause-token Llama model

Exported from a megatron_pause checkpoint (iteration {iteration}) with `tools/convert_checkpoint.py export`.
Architecture: `LlamaForCausalLM`, {shape.num_layers} layers, hidden size {shape.hidden_size}, \
{shape.num_attention_heads} attention heads in {shape.num_query_groups} key/value groups, SwiGLU width \
{shape.ffn_hidden_size}, RoPE base {m.rotary_base}, RMSNorm epsilon {m.norm_epsilon}, untied embeddings, \
vocabulary {shape.vocab_size}, weights in {dtype}.

## Pauses at inference

The model was trained with a learnable pause token `{pause_token}` (id {pause_id}, also
`config.pause_token_id`), following Goyal et al., *Think before you speak* (ICLR 2024). A pause-finetuned
model expects **M pause ids appended after the prompt** (the M it was finetuned with, typically 10); the
answer is read after the last pause, and the model must never emit a pause itself.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from megatron_pause.hf import generate_with_pauses

model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")
tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")
print(generate_with_pauses(model, tokenizer, ["Q: What is the capital of France?\\nA:"], num_pauses=10,
                           max_new_tokens=16))
```

Without megatron_pause: tokenize the prompt with `add_special_tokens=False`, append `[{pause_id}] * M`, and
generate with a logits processor that sets the logit of id {pause_id} to `-inf`.

Tokenization: the tokenizer gives exactly the ids used in training. A literal `{pause_token}` in text
encodes to the pause id. No BOS is added; documents end with the end-of-sequence id.
"""
