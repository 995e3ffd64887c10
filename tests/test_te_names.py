"""TE <-> local parameter names, and checkpoints crossing between the two layer specs, on CPU.

Transformer Engine cannot be imported here, so a TE-written checkpoint is made the way TE would
write it -- the local model's weights under the TE spec's module names, TE-style FP8 metadata in
the linears' extra state, ``transformer_impl: transformer_engine`` in the stored config -- and
the way back is checked with the request a TE model makes (its module names, the same on-disk
keys). The names themselves are checked against megatron-core's own specs.
"""

from __future__ import annotations

import io
from functools import partial

import parity_worlds as pw
import pytest
import torch

from megatron_pause.models import te_names
from megatron_pause.testing import run_distributed


def test_mapping_on_layer_names():
    assert (
        te_names.local_to_te("decoder.layers.3.input_layernorm.weight")
        == "decoder.layers.3.self_attention.linear_qkv.layer_norm_weight"
    )
    assert (
        te_names.local_to_te("module.decoder.layers.11.pre_mlp_layernorm.bias")
        == "module.decoder.layers.11.mlp.linear_fc1.layer_norm_bias"
    )
    # Not a layer's pre-norm: unchanged.
    for name in ("decoder.final_layernorm.weight", "decoder.layers.0.self_attention.linear_qkv.weight"):
        assert te_names.local_to_te(name) == name and te_names.te_to_local(name) == name
    assert te_names.te_to_local("decoder.layers.0.self_attention.core_attention._extra_state") is None


def test_names_match_megatron_core_specs(monkeypatch):
    """The local spec stores its norms under exactly our TE names; the TE spec has no separate
    norm modules and fuses them into linear_qkv / linear_fc1 (built with a stand-in backend,
    since the TE classes cannot be imported here)."""
    import megatron.core.models.gpt.gpt_layer_specs as specs
    from megatron.core.models.backends import LocalSpecProvider
    from megatron.core.transformer.identity_op import IdentityOp

    local = specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    assert local.submodules.sharded_state_dict_keys_map == te_names.local_sharded_keys_map()

    class FusedNormLinear:  # where TE's TELayerNormColumnParallelLinear would be
        pass

    class TEShapedBackend(LocalSpecProvider):
        def fuse_layernorm_and_linear(self) -> bool:
            return True

        def column_parallel_layer_norm_linear(self):
            return FusedNormLinear

    monkeypatch.setattr(specs, "TESpecProvider", TEShapedBackend)
    te = specs.get_gpt_layer_with_transformer_engine_spec().submodules
    assert te.input_layernorm is IdentityOp and te.pre_mlp_layernorm is IdentityOp
    assert te.self_attention.submodules.linear_qkv is FusedNormLinear
    assert "FusedNormLinear" in repr(te.mlp)  # linear_fc1 of the MLP builder
    # TE's own renaming only maps its op-fuser MLP's names onto these same fused-norm names.
    te_map = te.sharded_state_dict_keys_map
    assert te_map["mlp.0.weight"] == "mlp.linear_fc1.layer_norm_weight"
    assert not any(k.startswith(("input_layernorm", "pre_mlp_layernorm")) for k in te_map)


# ------------------------------------------------------------------------------------------
# Checkpoints across the two specs
# ------------------------------------------------------------------------------------------


def _te_extra_state() -> io.BytesIO:
    """What a TE linear's ``_extra_state`` holds: serialized FP8 scaling metadata."""
    blob = io.BytesIO()
    torch.save({"scale_fwd": torch.ones(3), "amax_history_fwd": torch.zeros(1, 3)}, blob)
    blob.seek(0)
    return blob


def _as_written_by_te(real_model_sharded_state_dict, chunks):
    """The local model's sharded state under TE module names and with TE-style extra state."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    state = real_model_sharded_state_dict(chunks)
    out = {}
    for chunk, entries in state.items():
        renamed = {}
        for name, entry in entries.items():
            if isinstance(entry, ShardedObject) and name.endswith("._extra_state"):
                entry.data = _te_extra_state()
            renamed[te_names.local_to_te(name)] = entry
        out[chunk] = renamed
    return out


def _cross_spec_body(rank: int, world: int, root: str) -> dict:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    from megatron_pause.config import PretrainConfig
    from megatron_pause.distributed import destroy_distributed
    from megatron_pause.training import checkpoint as ckpt

    _, chunks, _ = pw.build(pw.REFERENCE)
    gpt = pw.unwrap(chunks[0])
    trained = {k: v.detach().clone() for k, v in gpt.state_dict().items() if isinstance(v, torch.Tensor)}
    te_config = PretrainConfig(model=pw.tiny_model(transformer_impl="transformer_engine")).to_dict()

    # 1. TE -> local: a checkpoint written under TE names loads into the local model.
    real = ckpt.model_sharded_state_dict
    ckpt.model_sharded_state_dict = partial(_as_written_by_te, real)
    try:
        ckpt.save_checkpoint(f"{root}/te", 1, chunks, None, None, {"consumed_samples": 0}, te_config)
    finally:
        ckpt.model_sharded_state_dict = real
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(torch.randn_like(p))  # the weights the load must replace
    changed = any(not torch.equal(gpt.state_dict()[k], v) for k, v in trained.items())
    iteration, _ = ckpt.load_checkpoint(f"{root}/te", chunks, load_rng=False)
    te_to_local = {k: torch.equal(gpt.state_dict()[k], v) for k, v in trained.items()}
    stored_impl = ckpt.checkpoint_config(f"{root}/te")["config"]["model"]["transformer_impl"]

    # 2. local -> TE: the local checkpoint serves the request a TE model makes (its module
    # names; megatron's on-disk keys), tensors zeroed first so the load must fill them.
    ckpt.save_checkpoint(
        f"{root}/local", 1, chunks, None, None, {"consumed_samples": 0}, PretrainConfig().to_dict()
    )
    request = {}
    for name, entry in real(chunks)["chunk0"].items():
        if isinstance(entry, (ShardedTensor, ShardedTensorFactory)):  # SwiGLU's fc1 is a factory
            entry.data = torch.zeros_like(entry.data)
            request[te_names.local_to_te(name)] = entry
    loaded = dist_checkpointing.load({"model": request}, ckpt.iteration_dir(f"{root}/local", 1))["model"]
    te_names_requested = sorted(n for n in request if "layer_norm_" in n)
    local_to_te = {
        k: torch.equal(loaded[te_names.local_to_te(k)], v)
        for k, v in trained.items()
        if not k.endswith("_extra_state")
    }
    # ... and what a TE model holds maps back onto the local model, strictly.
    back = te_names.state_dict_to_local(loaded)
    missing, unexpected = gpt.load_state_dict({**gpt.state_dict(), **back}, strict=True)
    destroy_distributed()
    return dict(
        iteration=iteration,
        changed=changed,
        te_to_local=te_to_local,
        stored_impl=stored_impl,
        local_to_te=local_to_te,
        te_names_requested=te_names_requested,
        back_keys=sorted(back),
        strict_ok=not missing and not unexpected,
    )


def test_checkpoint_crosses_between_te_and_local_specs(tmp_path):
    (r,) = run_distributed(_cross_spec_body, 1, str(tmp_path))
    assert r["iteration"] == 1 and r["stored_impl"] == "transformer_engine"
    assert r["changed"]  # the perturbation was real...
    assert r["te_to_local"] and all(r["te_to_local"].values()), r["te_to_local"]  # ...and the load undid it
    assert r["local_to_te"] and all(r["local_to_te"].values()), r["local_to_te"]
    layers = pw.tiny_model().num_layers
    assert len(r["te_names_requested"]) == 2 * layers  # one fused norm per linear_qkv and linear_fc1
    assert all(
        ".linear_qkv.layer_norm_" in n or ".linear_fc1.layer_norm_" in n for n in r["te_names_requested"]
    )
    assert not any("layernorm" in n and "final" not in n for n in r["te_names_requested"])
    assert any(n.endswith("input_layernorm.weight") for n in r["back_keys"]) and r["strict_ok"]


@pytest.mark.parametrize("normalization", ["RMSNorm", "LayerNorm"])
def test_state_dict_round_trip(normalization):
    names = [
        f"decoder.layers.{i}.{part}.{p}"
        for i in range(2)
        for part in ("input_layernorm", "pre_mlp_layernorm")
        for p in (("weight",) if normalization == "RMSNorm" else ("weight", "bias"))
    ] + ["embedding.word_embeddings.weight", "decoder.final_layernorm.weight", "output_layer.weight"]
    sd = {n: i for i, n in enumerate(names)}
    te = te_names.state_dict_to_te(sd)
    assert not any("input_layernorm" in n or "pre_mlp_layernorm" in n for n in te)
    te["decoder.layers.0.self_attention.core_attention._extra_state"] = "fp8 meta"
    assert te_names.state_dict_to_local(te) == sd
