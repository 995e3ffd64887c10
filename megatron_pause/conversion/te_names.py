"""Parameter names of the local layer spec <-> the Transformer Engine layer spec.

The two specs build the same Llama block but name two tensors differently in
``model.state_dict()``: TE fuses each pre-norm into the linear that follows it,
so the norm weight becomes ``layer_norm_weight`` of that linear. Everything
else (QKV, projections, MLP, embeddings, output layer) has the same name and
layout in both. On disk (``torch_dist``) the names are already the TE ones for
both specs (megatron-core's local spec maps them when it builds its sharded
state dict), which is why a local checkpoint loads into a TE model: only
in-memory state dicts (``state_dict()``/``load_state_dict``) need this map.

This module is the one place that knows the correspondence; conversion code
and anything else that moves weights between the specs calls
:func:`rename_for_spec`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

Spec = Literal["local", "transformer_engine"]

# (local suffix, TE suffix) inside ``decoder.layers.<i>.``
_LAYER_SUFFIXES = (
    ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),
    ("input_layernorm.bias", "self_attention.linear_qkv.layer_norm_bias"),
    ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),
    ("pre_mlp_layernorm.bias", "mlp.linear_fc1.layer_norm_bias"),
)
_LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?decoder\.layers\.\d+\.)(?P<suffix>.+)$")


def rename_for_spec[V](state: Mapping[str, V], target: Spec) -> dict[str, V]:
    """``state`` with its keys renamed to ``target``'s spelling ("local" or
    "transformer_engine"); keys already in that spelling, and keys the specs
    share, are kept. Accepts a state dict or any name -> value mapping, with or
    without a wrapper prefix (``module.``); TE ``_extra_state`` entries pass
    through unchanged (callers that move only tensors drop them)."""
    if target not in ("local", "transformer_engine"):
        raise ValueError(f"unknown layer spec {target!r}; use 'local' or 'transformer_engine'")
    pairs = _LAYER_SUFFIXES if target == "transformer_engine" else [(te, lo) for lo, te in _LAYER_SUFFIXES]
    mapping = dict(pairs)
    out: dict[str, V] = {}
    for name, value in state.items():
        new = name
        m = _LAYER.match(name)
        if m and m.group("suffix") in mapping:
            new = m.group("prefix") + mapping[m.group("suffix")]
        if new in out:
            raise ValueError(f"both {name!r} and another key map to {new!r}: mixed local and TE names")
        out[new] = value
    return out
