"""Parameter names under the Transformer Engine layer spec vs. the local one.

The two specs hold the same tensors with the same shapes and layouts; only where the two
pre-norms live differs. Under megatron-core's TE spec
(``get_gpt_layer_with_transformer_engine_spec``) a layer has no ``input_layernorm`` /
``pre_mlp_layernorm`` module (both are ``IdentityOp``): the norm is fused into the following
linear, ``TELayerNormColumnParallelLinear``, whose parameters are ``layer_norm_weight`` (and
``layer_norm_bias`` for LayerNorm) next to ``weight``. The local spec has separate norm modules.
TE's attention core also carries FP8 scaling metadata as ``core_attention._extra_state``, which
local layers have no counterpart for (and need none: it is recomputed from the first FP8 steps).

In megatron-core's distributed checkpoints the two already agree: the local spec declares
``sharded_state_dict_keys_map`` ``{"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}``, so its norms are *stored* under the TE
names, and TE's attention core keeps its extra state out of the sharded state (TE drops it from
the missing keys when loading). So a checkpoint written under ``--transformer-impl
transformer_engine`` loads under ``local`` and back through
:func:`megatron_pause.training.checkpoint.load_checkpoint` unchanged -- no renaming on load;
``tests/test_te_names.py`` checks that on CPU. This module is the mapping for everything else
that sees module names: plain ``state_dict()`` files, conversion to and from Hugging Face, and
tools that compare the two.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Local-spec module path inside a layer -> TE-spec path (the norm's parameter name follows).
_LOCAL_TO_TE_PREFIX = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}
# TE-only state inside a layer: FP8 metadata of TE's attention core.
TE_ONLY_SUFFIXES = ("self_attention.core_attention._extra_state",)

_LAYER = r"((?:^|\.)layers\.\d+\.)"
_TO_TE = [
    (re.compile(_LAYER + re.escape(k) + r"(weight|bias)$"), rf"\1{v}\2")
    for k, v in _LOCAL_TO_TE_PREFIX.items()
]
_TO_LOCAL = [
    (re.compile(_LAYER + re.escape(v) + r"(weight|bias)$"), rf"\1{k}\2")
    for k, v in _LOCAL_TO_TE_PREFIX.items()
]


def local_to_te(name: str) -> str:
    """A local-spec parameter name as the TE spec names it (other names are unchanged)."""
    for pattern, replacement in _TO_TE:
        name, hits = pattern.subn(replacement, name)
        if hits:
            break
    return name


def te_to_local(name: str) -> str | None:
    """A TE-spec name as the local spec names it; None for TE-only state (no local counterpart)."""
    if any(name.endswith(suffix) for suffix in TE_ONLY_SUFFIXES):
        return None
    for pattern, replacement in _TO_LOCAL:
        name, hits = pattern.subn(replacement, name)
        if hits:
            break
    return name


def state_dict_to_te(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A local model's ``state_dict()`` under TE names (same values, same order)."""
    return {local_to_te(k): v for k, v in state_dict.items()}


def state_dict_to_local(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A TE model's ``state_dict()`` under local names, without TE-only state; loads strictly
    into the local model."""
    out = {}
    for k, v in state_dict.items():
        local = te_to_local(k)
        if local is not None:
            out[local] = v
    return out


def local_sharded_keys_map() -> dict[str, str]:
    """The renaming this module assumes megatron-core's local spec applies in checkpoints (what
    ``tests/test_te_names.py`` compares with the installed megatron-core)."""
    return dict(_LOCAL_TO_TE_PREFIX)
