"""Run megatron-core 0.19.2 on CPU (gloo): the one place that knows about CUDA workarounds.

megatron-core assumes CUDA in a handful of places that the training path
reaches even when nothing needs a GPU: pipeline schedules allocate counters
with ``device="cuda"``, p2p communication allocates receive buffers on
``torch.cuda.current_device()``, DDP creates communication streams, the
optimizer and grad clipping allocate scalars on CUDA and compare
``param.type()`` against ``'torch.cuda.FloatTensor'``, the RNG tracker swaps
CUDA generator states, and the checkpoint exchange moves tensors with
``.cuda()``.

We make those paths run on CPU with two narrow mechanisms, applied only when
CUDA is unavailable (:func:`install` is a no-op on a GPU machine, and
idempotent everywhere):

1. **Module-level torch redirection.** Each module in :data:`PATCHED_MODULES`
   gets its global name ``torch`` replaced by :class:`_CpuTorch`, a proxy that
   forwards every attribute to the real torch except ``torch.cuda`` (a small
   CPU stand-in: ``current_device()`` is the CPU, streams and events are
   no-ops, RNG state calls go to the CPU generator) and the tensor factories
   (``zeros``, ``empty``, ``tensor``, ...), whose ``device="cuda"`` becomes
   the CPU. Nothing outside those modules sees a change, and the proxy caches
   attributes so the hot path costs one dict lookup. (A global
   ``TorchFunctionMode`` doing the same was measured 8-24% slower and is
   order-sensitive.)

2. **Targeted function patches** (:data:`PATCHED_FUNCTIONS`), for CUDA uses
   that no module global can reach:

   - ``tensor_parallel.random._get_cuda_rng_state`` / ``_set_cuda_rng_state``:
     the originals index ``torch.cuda.default_generators`` and queue the set
     through ``torch.cuda._lazy_call``, which on CPU silently never runs -- the
     RNG tracker would then not change the generator and TP ranks would draw
     different dropout masks. Ours read/write the CPU generator.
   - ``optimizer.optimizer.Float16OptimizerWithFloat16Params.__init__``,
     ``optimizer.distrib_optimizer.DistributedOptimizer._build_model_and_main_param_groups``
     and ``optimizer.clip_grads.clip_grad_by_total_norm_fp32``:
     they accept only ``param.type()`` strings of CUDA tensors; while they run,
     CPU tensors report the CUDA type name.
   - ``dist_checkpointing.exchange_utils.exchange_loaded_tensors_gather_rounds``
     / ``..._broadcast`` and ``DistributedOptimizer`` resharding helpers call
     ``tensor.cuda()``; while they run, ``.cuda()`` returns the tensor itself.

Known traps handled elsewhere (they are configuration, not patches): virtual
pipeline stages need ``batch_p2p_comm=False`` on gloo (batched isend/irecv
pairs up wrongly and trains on swapped activations, silently); the local
attention is replaced through a ``ModuleSpec`` submodule
(:mod:`megatron_pause.models.attention`), not patched.

``tests/test_platform.py`` fails loudly if a megatron-core upgrade changes
any patched function's source or adds CUDA calls that the stand-in lacks.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

import torch

SUPPORTED_MEGATRON_CORE = "0.19.2"

# Megatron modules whose global ``torch`` is redirected, with the CUDA uses found in each (0.19.2).
PATCHED_MODULES: dict[str, str] = {
    "megatron.core.pipeline_parallel.schedules": 'num-token counters on device="cuda"',
    "megatron.core.pipeline_parallel.p2p_communication": "recv buffers on torch.cuda.current_device(); cuda.synchronize",
    "megatron.core.distributed.distributed_data_parallel": "torch.cuda.Stream for overlapped grad reduce",
    "megatron.core.distributed.param_and_grad_buffer": "buffers on current_device; stream waits",
    "megatron.core.optimizer.optimizer": "found-inf and scale tensors on 'cuda'",
    "megatron.core.optimizer.distrib_optimizer": "buffers on current_device",
    "megatron.core.optimizer.clip_grads": "norm accumulators on 'cuda'",
    "megatron.core.optimizer.grad_scaler": "loss-scale tensors on 'cuda'",
    "megatron.core.utils": 'local_multi_tensor_l2_norm result on device="cuda"',
    "megatron.core.tensor_parallel.random": "RNG tracker: torch.cuda.get/set_rng_state, manual_seed",
    "megatron.core.tensor_parallel.layers": "weights on current_device without use_cpu_initialization",
    "megatron.core.tensor_parallel.mappings": "sequence-parallel gather/scatter buffers on current_device",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver": "sync tensors on current_device",
    "megatron.core.dist_checkpointing.exchange_utils": 'exchange buffers on device="cuda"',
    "megatron.core.dist_checkpointing.strategies.filesystem_async": "torch.cuda.synchronize before writing",
    "megatron.core.parallel_state": "torch.cuda.is_available / device counts",
    "megatron.core.models.common.embeddings.rotary_pos_embedding": "inv_freq moved to current_device",
}

# Functions replaced or wrapped, with the reason (details in the module docstring), as read in
# 0.19.2's source. 0.19.2 dropped two patches 0.16.1 needed: ``clip_grads.get_grad_norm_fp32`` no
# longer compares ``grad.type()`` (its ``device='cuda'`` scalars go through the redirected module
# ``torch``), and ``exchange_utils.exchange_loaded_tensors_gather_object`` no longer calls ``.cuda()``.
PATCHED_FUNCTIONS: dict[str, str] = {
    "megatron.core.tensor_parallel.random._get_cuda_rng_state": (
        "indexes torch.cuda.default_generators: read the CPU generator instead"
    ),
    "megatron.core.tensor_parallel.random._set_cuda_rng_state": (
        "queues the set through torch.cuda._lazy_call, which never runs on CPU: set the CPU generator"
    ),
    "megatron.core.optimizer.optimizer.Float16OptimizerWithFloat16Params.__init__": (
        "accepts only param.type() in torch.cuda.{Half,BFloat16,Float}Tensor"
    ),
    "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer._build_model_and_main_param_groups": (
        "accepts only param.type() in torch.cuda.{Half,BFloat16,Float}Tensor"
    ),
    "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer.get_parameter_state_dp_zero": (
        "send_tensor.cuda() when gathering optimizer state for a checkpoint"
    ),
    "megatron.core.optimizer.clip_grads.clip_grad_by_total_norm_fp32": (
        "asserts grad.type() == 'torch.cuda.FloatTensor'"
    ),
    "megatron.core.dist_checkpointing.exchange_utils.exchange_loaded_tensors_gather_rounds": (
        "tensor.cuda() and device='cuda' receive buffers"
    ),
    "megatron.core.dist_checkpointing.exchange_utils.exchange_loaded_tensors_broadcast": "tensor.cuda()",
}

_installed = False
_patched: list[str] = []

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}


def cuda_available() -> bool:
    return torch.cuda.is_available()


def device() -> torch.device:
    """The device this process computes on: its local GPU, or the CPU."""
    if cuda_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _cpu_device(dev: Any) -> Any:
    if dev is None:
        return None
    if isinstance(dev, int):
        return torch.device("cpu")
    if isinstance(dev, str) and dev.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(dev, torch.device) and dev.type == "cuda":
        return torch.device("cpu")
    return dev


class _NullStream:
    """Stand-in for torch.cuda.Stream / Event: on CPU every op is synchronous."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any) -> None:
        pass

    def wait_event(self, *args: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record(self, *args: Any) -> None:
        pass

    def record_event(self, *args: Any) -> _NullStream:
        return _NullStream()

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _make_cuda_standin() -> types.SimpleNamespace:
    real = torch.cuda

    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    ns = types.SimpleNamespace(
        current_device=lambda: torch.device("cpu"),
        device_count=lambda: 0,
        is_available=lambda: False,
        synchronize=_noop,
        empty_cache=_noop,
        Stream=_NullStream,
        Event=_NullStream,
        stream=lambda *a, **k: contextlib.nullcontext(),
        default_stream=lambda *a, **k: _NullStream(),
        current_stream=lambda *a, **k: _NullStream(),
        get_rng_state=get_rng_state,
        set_rng_state=set_rng_state,
        manual_seed=lambda seed: torch.manual_seed(seed),
        manual_seed_all=lambda seed: torch.manual_seed(seed),
        default_generators=(torch.default_generator,),
        random=types.SimpleNamespace(get_rng_state=get_rng_state, set_rng_state=set_rng_state),
        nvtx=types.SimpleNamespace(
            range_push=_noop, range_pop=_noop, range=lambda *a, **k: contextlib.nullcontext()
        ),
        memory_allocated=lambda *a, **k: 0,
        max_memory_allocated=lambda *a, **k: 0,
        memory_reserved=lambda *a, **k: 0,
        # Type objects and decorators are evaluated at import time or only
        # compared against; the real ones are harmless.
        FloatTensor=real.FloatTensor,
        HalfTensor=real.HalfTensor,
        BFloat16Tensor=real.BFloat16Tensor,
        amp=real.amp,
        CUDAGraph=getattr(real, "CUDAGraph", None),
    )
    return ns


# Factories whose ``device=`` argument is redirected from CUDA to the CPU.
_FACTORIES = (
    "zeros", "ones", "empty", "full", "tensor", "arange", "as_tensor", "rand", "randn", "randint",
    "zeros_like", "ones_like", "empty_like", "full_like", "empty_strided", "linspace",
)  # fmt: skip


def _redirect_device(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        dev = kwargs.get("device")
        if dev is not None:
            kwargs["device"] = _cpu_device(dev)
            if kwargs.get("pin_memory"):
                kwargs["pin_memory"] = False
        return fn(*args, **kwargs)

    return wrapper


class _CpuTorch(types.ModuleType):
    """``torch`` as seen by a patched megatron module: real torch, CPU CUDA."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.__dict__["cuda"] = _make_cuda_standin()
        for name in _FACTORIES:
            self.__dict__[name] = _redirect_device(getattr(torch, name))
        self.__dict__["autocast"] = lambda device_type, *a, **k: torch.autocast("cpu", *a, **k)

    def __getattr__(self, name: str) -> Any:
        value = getattr(torch, name)
        self.__dict__[name] = value  # cache: later lookups never reach __getattr__
        return value


_CPU_TORCH: _CpuTorch | None = None


@contextlib.contextmanager
def _cuda_tensor_names() -> Any:
    """While active, CPU tensors report CUDA type names and ``.cuda()`` is the identity."""
    orig_type, orig_cuda = torch.Tensor.type, torch.Tensor.cuda

    def type_(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return orig_type(self, *args, **kwargs)
        return _CUDA_TYPE_NAMES.get(self.dtype, orig_type(self))

    def cuda_(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    torch.Tensor.type, torch.Tensor.cuda = type_, cuda_
    try:
        yield
    finally:
        torch.Tensor.type, torch.Tensor.cuda = orig_type, orig_cuda


def _with_cuda_tensor_names(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _cuda_tensor_names():
            return fn(*args, **kwargs)

    return wrapper


def _get_cpu_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _set_cpu_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _resolve(qualname: str) -> tuple[Any, str]:
    """Split 'pkg.module.Class.attr' into (owner object, attribute name)."""
    parts = qualname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for p in parts[i:-1]:
            owner = getattr(owner, p)
        return owner, parts[-1]
    raise ImportError(qualname)


def original(qualname: str) -> Callable[..., Any]:
    """The unpatched function behind ``qualname`` (for the upgrade-guard test)."""
    owner, attr = _resolve(qualname)
    fn = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
    fn = getattr(fn, "__func__", fn)
    return getattr(fn, "__megatron_pause_original__", fn)


def _replace(qualname: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    owner, attr = _resolve(qualname)
    raw = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
    # Keep classmethod/staticmethod descriptors: wrap the function inside them.
    kind = type(raw) if isinstance(raw, (classmethod, staticmethod)) else None
    fn = raw.__func__ if kind else raw
    if hasattr(fn, "__megatron_pause_original__"):
        return
    new = make(fn)
    new.__megatron_pause_original__ = fn  # type: ignore[attr-defined]
    setattr(owner, attr, kind(new) if kind else new)
    # ``from .clip_grads import clip_grad_by_total_norm_fp32`` elsewhere bound
    # the original at import time: rebind those names too. Modules imported
    # after this point pick up the replacement from the owner.
    if not isinstance(owner, type):
        for name, mod in list(sys.modules.items()):
            if name.startswith("megatron.core") and mod is not owner and getattr(mod, attr, None) is fn:
                setattr(mod, attr, new)
    _patched.append(qualname)


def megatron_core_version() -> str:
    """The installed megatron-core release, e.g. ``"0.19.2"``.

    Not ``megatron.core.__version__``: from 0.19 its package_info appends ``+<sha>`` of whatever
    git checkout the installed files sit in (a venv inside this repository gets our commit hash).
    """
    import megatron.core

    return getattr(megatron.core, "__shortversion__", None) or megatron.core.__version__.split("+")[0]


def install() -> None:
    """Make megatron-core's training path run on CPU. No-op with CUDA; idempotent."""
    global _installed, _CPU_TORCH
    if _installed or cuda_available():
        return
    version = megatron_core_version()
    if version != SUPPORTED_MEGATRON_CORE:
        raise RuntimeError(
            f"megatron_pause's CPU layer is written for megatron-core {SUPPORTED_MEGATRON_CORE}, found {version}; "
            "review megatron_pause/platform.py against the new release (tests/test_platform.py shows what changed)."
        )
    _CPU_TORCH = _CpuTorch()
    for modname in PATCHED_MODULES:
        mod = importlib.import_module(modname)
        if mod.__dict__.get("torch") is not _CPU_TORCH:
            mod.torch = _CPU_TORCH  # type: ignore[attr-defined]
            _patched.append(f"{modname}.torch")

    for qualname in PATCHED_FUNCTIONS:
        if qualname.endswith("._get_cuda_rng_state"):
            _replace(qualname, lambda fn: _get_cpu_rng_state)
        elif qualname.endswith("._set_cuda_rng_state"):
            _replace(qualname, lambda fn: _set_cpu_rng_state)
        else:
            _replace(qualname, _with_cuda_tensor_names)
    _installed = True


def use_in_process_checkpoint_queue() -> None:
    """Not a CUDA workaround, but a megatron one, so it lives here too (on any device).

    ``dist_checkpointing.strategies.filesystem_async.get_write_results_queue``
    (``_get_write_results_queue`` before 0.17) starts a *spawn*-context
    ``multiprocessing.Manager`` the first time a rank saves: ~3 s per process on
    a small machine, a process that re-imports the launcher's ``__main__``, and
    an orphan when a rank exits abruptly. We only save synchronously, where that
    queue is written and read by the saving process itself (0.19 writes shards
    from threads of that process), so a plain in-process queue is exact.
    """
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    name = next(
        n for n in ("get_write_results_queue", "_get_write_results_queue") if hasattr(filesystem_async, n)
    )
    original_fn = getattr(filesystem_async, name)
    if getattr(original_fn, "__megatron_pause_original__", None):
        return
    local_queue: queue.Queue = queue.Queue()

    def _in_process_queue(*args: Any, **kwargs: Any) -> queue.Queue:
        return local_queue  # mp_mode and the like only choose a multiprocessing context

    _in_process_queue.__megatron_pause_original__ = original_fn  # type: ignore[attr-defined]
    setattr(filesystem_async, name, _in_process_queue)


def patched_functions() -> list[str]:
    """What :func:`install` changed in this process (empty on GPU machines)."""
    return list(_patched)


def cuda_names_in_module(modname: str) -> set[str]:
    """Every ``torch.cuda.<name>`` a module's source refers to (upgrade guard)."""
    import inspect
    import re

    src = inspect.getsource(importlib.import_module(modname))
    return set(re.findall(r"torch\.cuda\.([A-Za-z_]\w*)", src))


def standin_names() -> set[str]:
    return set(vars(_make_cuda_standin()))
