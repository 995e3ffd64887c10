"""Tensor-parallel linears without megatron's autograd ``Function`` calls when no gradient is wanted.

megatron-core's ``ColumnParallelLinear`` and ``RowParallelLinear`` run their local matmul through
a custom ``torch.autograd.Function`` (it overlaps gradient communication in the backward pass),
and wrap it in the tensor-parallel mapping ``Function`` s (copy-to / reduce-from the TP region),
all of it even under ``torch.inference_mode`` and even at TP1, where the mappings are identities.
A decode step of a small model is a few hundred such calls on one-token inputs, where the
``Function`` machinery costs about as much as the matmul itself: profiled on the tiny preset,
3,360 ``Function.apply`` calls took 0.31 s of 1.14 s of decoding, and removing the TP1 mappings
alone moved tiny batch-1 generation from 0.90x to 1.08x Hugging Face's speed (paired runs with
the probe removed after commit 7e4a470; ``benchmarks/bench_generate.py`` measures the result).

:func:`install` gives each linear of a model two per-instance replacements, both active only
while autograd is off:

* ``forward`` -- at TP1 without sequence parallelism, the whole layer is ``F.linear`` plus
  megatron's bias handling (``skip_bias_add`` returns the bias instead of adding it; a column
  layer may be handed its weight, as the tied output layer is). This is exactly what megatron's
  forward computes there: every mapping is an identity and the gather of ``gather_output`` /
  ``runtime_gather_output`` is one too.
* ``_forward_impl`` (the hook megatron's forward calls for the local matmul) -- at TP > 1, where
  megatron's forward still runs for its communication, the matmul is ``F.linear`` instead of the
  ``Function``, which computes the same in its forward.

With gradients enabled both call megatron's own code, so a model that is also trained is
unaffected. Checked: ``tests/test_generate.py`` (identical logits and gradients with and without,
no ``Function`` calls from linears during generation) and the TP/PP parity tests, which run with
it installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.utils import get_pg_size


class _PlainImplWhenNoGrad:
    def __init__(self, megatron_impl) -> None:
        self.megatron_impl = megatron_impl

    def __call__(self, input, weight, bias=None, *args, **kwargs):
        if torch.is_grad_enabled() or kwargs.get("sequence_parallel"):
            return self.megatron_impl(input, weight, bias, *args, **kwargs)
        return F.linear(input, weight, bias)


class _PlainForwardWhenNoGradAtTP1:
    def __init__(self, module: torch.nn.Module, megatron_forward) -> None:
        self.module = module
        self.megatron_forward = megatron_forward

    def __call__(self, input_, weight=None, runtime_gather_output=None):
        m = self.module
        if torch.is_grad_enabled():
            if isinstance(m, ColumnParallelLinear):
                return self.megatron_forward(input_, weight, runtime_gather_output)
            return self.megatron_forward(input_)
        if weight is None:
            weight = m.weight
        if m.skip_bias_add:
            return F.linear(input_, weight), m.bias
        return F.linear(input_, weight, m.bias), None


def _plain_forward_applies(module: torch.nn.Module) -> bool:
    """TP1, no sequence parallelism, no expert communication: megatron's forward is one matmul."""
    return (
        get_pg_size(module.tp_group) == 1
        and not module.sequence_parallel
        and not getattr(module, "explicit_expert_comm", False)
        and (isinstance(module, ColumnParallelLinear) or module.input_is_parallel)
    )


def install(model: torch.nn.Module) -> int:
    """Give every megatron linear of ``model`` the plain no-grad paths; returns how many (idempotent)."""
    count = 0
    for module in model.modules():
        if not isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            continue
        if not isinstance(module.__dict__.get("_forward_impl"), _PlainImplWhenNoGrad):
            module._forward_impl = _PlainImplWhenNoGrad(module._forward_impl)
        if _plain_forward_applies(module) and not isinstance(
            module.__dict__.get("forward"), _PlainForwardWhenNoGradAtTP1
        ):
            module.forward = _PlainForwardWhenNoGradAtTP1(module, module.forward)
        count += 1
    return count


def uninstall(model: torch.nn.Module) -> None:
    for module in model.modules():
        for name, kind in (
            ("_forward_impl", _PlainImplWhenNoGrad),
            ("forward", _PlainForwardWhenNoGradAtTP1),
        ):
            if isinstance(module.__dict__.get(name), kind):
                delattr(module, name)
