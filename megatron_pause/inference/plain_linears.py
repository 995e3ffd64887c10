"""Tensor-parallel linears without megatron's autograd ``Function`` when no gradient is wanted.

megatron-core's ``ColumnParallelLinear`` and ``RowParallelLinear`` run their local matmul through
a custom ``torch.autograd.Function`` (it overlaps gradient communication in the backward pass),
and they do so even under ``torch.inference_mode``. A decode step of a small model is a few
hundred such calls on one-token inputs, where the ``Function`` machinery costs about as much as
the matmul itself: profiled on the tiny preset, 3,360 ``Function.apply`` calls took 0.31 s of
1.14 s of decoding (one of several per-layer costs that keep it behind Hugging Face's
``generate``; see ``benchmarks/decode_overhead_probe.py``).

:func:`install` gives each linear of a model a ``_forward_impl`` (the per-module hook megatron's
``forward`` calls for the local matmul) that is ``F.linear`` whenever autograd is off and the
layer is not sequence-parallel -- exactly the computation the ``Function``'s forward performs then
(the tensor-parallel gather/reduce stays in megatron's ``forward``, around the hook). With
gradients enabled it calls megatron's own implementation, so a model that is also trained is
unaffected. Checked: ``tests/test_generate.py`` (identical completions and logits with and without)
and the TP/PP parity tests, which run with it installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear


class _PlainWhenNoGrad:
    def __init__(self, megatron_impl) -> None:
        self.megatron_impl = megatron_impl

    def __call__(self, input, weight, bias=None, *args, **kwargs):
        if torch.is_grad_enabled() or kwargs.get("sequence_parallel"):
            return self.megatron_impl(input, weight, bias, *args, **kwargs)
        return F.linear(input, weight, bias)


def install(model: torch.nn.Module) -> int:
    """Give every megatron linear of ``model`` the plain no-grad path; returns how many (idempotent)."""
    count = 0
    for module in model.modules():
        if not isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            continue
        if not isinstance(module.__dict__.get("_forward_impl"), _PlainWhenNoGrad):
            module._forward_impl = _PlainWhenNoGrad(module._forward_impl)
        count += 1
    return count


def uninstall(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module.__dict__.get("_forward_impl"), _PlainWhenNoGrad):
            del module._forward_impl
