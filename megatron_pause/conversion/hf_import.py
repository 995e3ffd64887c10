"""Import a local Hugging Face Llama-architecture folder as a megatron_pause checkpoint.

The result is an ordinary ``--save`` directory (iteration 0, weights only,
with its resolved configuration), so ``--finetune --load DIR`` takes it at any
TP/PP layout -- the paper's standard-pretrained -> pause-finetuned path.

How: the weights are mapped to megatron's names and layouts on whole tensors
(:mod:`~megatron_pause.conversion.llama`), loaded into the project's own
model built at TP1/PP1 in a one-rank process group, and written with the
project's ``save_checkpoint`` -- the same code path as training, so the
files are exactly what ``load_checkpoint`` reads and reshards.

Vocabulary. The tokenizer is copied to ``DIR/tokenizer`` (the run's
``--tokenizer-type HuggingFaceTokenizer --tokenizer-model DIR/tokenizer``).
When it has no ``<pause>``, one is added as a special token at the next id,
and its embedding and output rows are initialised with the project's rule
(``pause_init``: mean of the real rows by default). Rows beyond the
tokenizer's ids (HF models often pad their embedding) are dropped; megatron's
own padding rows are zeros. Tied input/output embeddings are untied by copying.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import torch

from megatron_pause.config import CheckpointConfig, ModelConfig, PauseConfig, PretrainConfig, TokenizerConfig
from megatron_pause.conversion import llama
from megatron_pause.models.te_names import state_dict_to_local
from megatron_pause.tokenizer import HUGGINGFACE, build_tokenizer, padded_vocab_size

TOKENIZER_SUBDIR = "tokenizer"
DEFAULT_SEQ_LENGTH = 2048


class HFImportError(ValueError):
    pass


@dataclass
class ImportResult:
    save: str
    checkpoint_dir: str
    tokenizer_dir: str
    pause_id: int
    pause_added: bool
    vocab_size: int
    model: ModelConfig

    def model_flags(self) -> str:
        """The model and tokenizer flags a run must pass to load this checkpoint."""
        from megatron_pause.arguments import config_to_argv

        cfg = PretrainConfig(
            model=self.model,
            tokenizer=TokenizerConfig(tokenizer_type=HUGGINGFACE, tokenizer_model=self.tokenizer_dir),
        )
        return " ".join(config_to_argv(cfg))


def read_hf_weights(folder: str) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors`` or of the shards named by its index."""
    from safetensors.torch import load_file

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise HFImportError(f"{folder} has no model.safetensors or model.safetensors.index.json")
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        weights.update(load_file(os.path.join(folder, name)))
    return weights


def model_config_from_hf(hf_config, seq_length: int | None = None) -> ModelConfig:
    """Our ModelConfig for a ``LlamaConfig``; raises for what the project's model cannot express."""
    c = hf_config
    problems = []
    if getattr(c, "model_type", None) != "llama":
        problems.append(f"model_type {getattr(c, 'model_type', None)!r} (need 'llama')")
    if getattr(c, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {c.hidden_act} (need silu)")
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        problems.append("attention/MLP biases")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        problems.append(f"head_dim {head_dim} x {c.num_attention_heads} heads != hidden size {c.hidden_size}")
    rope = dict(getattr(c, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope scaling {rope.get('rope_type')!r} (only plain RoPE is supported)")
    theta = float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)))
    if theta != int(theta):
        problems.append(f"non-integer rope_theta {theta}")
    if problems:
        raise HFImportError("cannot import this model: " + "; ".join(problems))
    max_pos = int(c.max_position_embeddings)
    return ModelConfig(
        num_layers=c.num_hidden_layers,
        hidden_size=c.hidden_size,
        ffn_hidden_size=c.intermediate_size,
        num_attention_heads=c.num_attention_heads,
        num_query_groups=c.num_key_value_heads or c.num_attention_heads,
        # Recorded training length (a run may pass another); not the model's 128k context by default.
        seq_length=min(seq_length or DEFAULT_SEQ_LENGTH, max_pos),
        max_position_embeddings=max_pos,
        norm_epsilon=float(c.rms_norm_eps),
        rotary_base=int(theta),
        untie_embeddings_and_output_weights=True,
        init_method_std=float(getattr(c, "initializer_range", 0.02)),
    )


def _prepare_tokenizer(hf_dir: str, out_dir: str, pause_token: str) -> bool:
    """Copy the tokenizer to ``out_dir``, adding ``pause_token`` when absent. Returns whether it was added."""
    from transformers import AddedToken, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    added = pause_token not in tok.get_vocab()
    if added:
        tok.add_tokens([AddedToken(pause_token, special=True, normalized=False)])
    tmp = out_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return added


def megatron_state_dict(
    hf: dict[str, torch.Tensor], shape: llama.LlamaShape, padded_rows: int
) -> dict[str, torch.Tensor]:
    """In-memory (local-spec) state dict of a TP1 model from HF tensors, the vocabulary
    tables cut or zero-padded to ``padded_rows`` (rows >= the HF table stay zero)."""
    embed = hf[llama.HF_EMBEDDING]
    head = hf.get(llama.HF_LM_HEAD, embed)  # tied models store only the embedding

    def table(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(padded_rows, t.shape[1], dtype=torch.float32)
        n = min(shape.vocab_size, t.shape[0])
        out[:n] = t[:n].float()
        return out

    sd = {llama.EMBEDDING: table(embed), llama.OUTPUT_LAYER: table(head),
          llama.FINAL_NORM: hf[llama.HF_FINAL_NORM].float()}  # fmt: skip
    for i in range(shape.num_layers):
        for suffix, t in llama.megatron_layer_from_hf(hf, i, shape).items():
            sd[f"{llama.LAYER_PREFIX}{i}.{suffix}"] = t.float()
    return state_dict_to_local(sd)


def import_hf(
    hf_dir: str,
    save: str,
    pause_token: str = "<pause>",
    pause_init: str = "mean",
    make_vocab_size_divisible_by: int = 128,
    seq_length: int | None = None,
    log=print,
) -> ImportResult:
    """Convert ``hf_dir`` into the checkpoint directory ``save`` (must not hold a checkpoint yet)."""
    from transformers import AutoConfig

    from megatron_pause.training.checkpoint import latest_iteration

    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise HFImportError(f"{hf_dir} is not a Hugging Face model folder (no config.json)")
    if latest_iteration(save) is not None:
        raise HFImportError(f"{save} already holds a checkpoint; import into a new directory")
    hf_config = AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    model = model_config_from_hf(hf_config, seq_length)
    model.pause_init = pause_init
    model.make_vocab_size_divisible_by = make_vocab_size_divisible_by

    os.makedirs(save, exist_ok=True)
    tok_dir = os.path.abspath(os.path.join(save, TOKENIZER_SUBDIR))
    pause_added = _prepare_tokenizer(hf_dir, tok_dir, pause_token)
    tokenizer = build_tokenizer(HUGGINGFACE, tok_dir, pause_token)
    weights = read_hf_weights(hf_dir)
    hf_rows = weights[llama.HF_EMBEDDING].shape[0]
    # An added pause gets a fresh row; so does an existing piece whose row the HF table lacks.
    init_pause = pause_added or tokenizer.pause_id >= hf_rows
    provenance = getattr(hf_config, "megatron_pause", None) or {}
    pause_seen = 0 if init_pause else int(provenance.get("pause_targets_seen", 0) or 0)
    real_ids = tokenizer.vocab_size - (1 if pause_added else 0)
    if real_ids > hf_rows:
        raise HFImportError(
            f"the tokenizer has {real_ids} ids but the model's embedding only {hf_rows} rows: "
            "tokenizer and weights do not belong together"
        )
    if tokenizer.vocab_size < hf_rows:
        log(
            f"dropping {hf_rows - tokenizer.vocab_size} embedding rows beyond the tokenizer's {tokenizer.vocab_size} ids"
        )

    shape = llama.LlamaShape(
        model.num_layers, model.hidden_size, model.ffn_hidden_size, model.num_attention_heads,
        model.num_query_groups, tokenizer.vocab_size,
    )  # fmt: skip
    padded = padded_vocab_size(tokenizer.vocab_size, make_vocab_size_divisible_by, 1)
    state = megatron_state_dict(weights, shape, padded)
    del weights
    cfg = PretrainConfig(
        model=model,
        pause=PauseConfig(pause_token=pause_token),
        tokenizer=TokenizerConfig(tokenizer_type=HUGGINGFACE, tokenizer_model=tok_dir),
        checkpoint=CheckpointConfig(save=os.path.abspath(save)),
    )
    ckpt_dir = _save_as_checkpoint(cfg, state, padded, tokenizer, init_pause, pause_seen)
    return ImportResult(save, ckpt_dir, tok_dir, tokenizer.pause_id, pause_added, tokenizer.vocab_size, model)


def _save_as_checkpoint(
    cfg: PretrainConfig, state, padded: int, tokenizer, init_pause: bool, pause_seen: int
) -> str:
    """Load ``state`` into a TP1/PP1 model and save it (joining, or else creating, a one-rank group)."""
    from megatron.core import parallel_state

    from megatron_pause import platform
    from megatron_pause.config import ParallelConfig
    from megatron_pause.distributed import LaunchEnv, destroy_distributed, init_distributed
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.models.pause_vocab import init_pause_rows
    from megatron_pause.testing import free_port
    from megatron_pause.training.checkpoint import save_checkpoint

    own_group = not torch.distributed.is_initialized()
    if not own_group and (
        torch.distributed.get_world_size() != 1 or parallel_state.model_parallel_is_initialized()
    ):
        raise HFImportError("import runs in a single process; call it outside a multi-rank job")
    platform.install()
    init_distributed(ParallelConfig(), cfg.model.num_layers, seed=0,
                     launch=LaunchEnv(0, 1, 0, "127.0.0.1", free_port()))  # fmt: skip
    try:
        chunks = build_model_chunks(cfg.model, transformer_config(cfg.model, ParallelConfig()), padded)
        model = chunks[0]
        current = model.state_dict()
        tensors = {k for k in current if not k.endswith("_extra_state")}
        if set(state) != tensors:
            raise HFImportError(
                f"weight map mismatch: missing {sorted(tensors - set(state))[:4]}, "
                f"unexpected {sorted(set(state) - tensors)[:4]}"
            )
        with torch.no_grad():
            for name, value in state.items():
                target = current[name]
                if target.shape != value.shape:
                    raise HFImportError(
                        f"{name}: HF gives {tuple(value.shape)}, the model has {tuple(target.shape)}"
                    )
                target.copy_(value)
        if init_pause:
            init_pause_rows(chunks, tokenizer.pause_id, tokenizer.base_vocab_size, cfg.model.pause_init,
                            cfg.model.init_method_std, cfg.training.seed)  # fmt: skip
        train_state = {"iteration": 0, "consumed_samples": 0, "consumed_tokens": 0, "skipped_steps": 0,
                       "pause_targets_seen": pause_seen}  # fmt: skip
        return save_checkpoint(cfg.checkpoint.save, 0, chunks, None, None, train_state, cfg.to_dict())
    finally:
        if own_group:
            destroy_distributed()
        else:
            parallel_state.destroy_model_parallel()
