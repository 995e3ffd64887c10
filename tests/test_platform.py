"""The CPU compatibility layer (megatron_pause/platform.py).

Three kinds of checks: the layer's contract (idempotent, CPU-only, scoped to
the patched modules), an **upgrade guard** that fails loudly when a new
megatron-core changes any function we patch or starts using a ``torch.cuda``
name our stand-in lacks, and the one behaviour that can go wrong silently:
megatron's RNG tracker must really switch the generator (if it does not, TP
ranks draw different dropout masks and nothing errors).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import pathlib
import subprocess
import sys

import pytest
import torch

from megatron_pause import platform
from megatron_pause.testing import run_distributed

REPO = pathlib.Path(__file__).resolve().parents[1]

# sha256 of inspect.getsource() of every patched megatron-core 0.19.2 function.
# When one changes, re-read the new source against the patch's reason in
# megatron_pause/platform.py before updating the hash here.
PATCHED_SOURCE_SHA256 = {
    "megatron.core.tensor_parallel.random._get_cuda_rng_state": (
        "aa26caaa069c5c4feff0f9f4e69f0f2ab6d6fc7940f71c3a6d0fe9303447d3dc"
    ),
    "megatron.core.tensor_parallel.random._set_cuda_rng_state": (
        "b179c9d95438b61c1d9b58e8e13cc6534f2ae2f870d991c42438de53829ed398"
    ),
    "megatron.core.optimizer.optimizer.Float16OptimizerWithFloat16Params.__init__": (
        "de5b6824092210272b4cb5ca5a5fc957377012431ce5a1e18003da875545cda9"
    ),
    "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer._build_model_and_main_param_groups": (
        "3fce9be2b6d1d143559761811d30afc63d63c6405dbead686f30996997096951"
    ),
    "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer.get_parameter_state_dp_zero": (
        "14d11a75ad9ccd8bed9b8df6a27f8d8340ee3e387da8257c58a6b027fff84608"
    ),
    "megatron.core.optimizer.clip_grads.clip_grad_by_total_norm_fp32": (
        "cf07b488fb76a8ae90ba0809d1fbd36e05dcccf24b4644af1621a8b616c01784"
    ),
    "megatron.core.dist_checkpointing.exchange_utils.exchange_loaded_tensors_gather_rounds": (
        "aa1113c5e4f9dd6e7bee9283c7d738aefb131efe4d3cc19c89b16c634a97edb6"
    ),
    "megatron.core.dist_checkpointing.exchange_utils.exchange_loaded_tensors_broadcast": (
        "f407cf439a0a7f6b75e3afcc679a0a337779dc5a6717f59924505cbf91ebd8fd"
    ),
}

# torch.cuda names that the stand-in deliberately lacks: megatron.core.utils
# reads GPU telemetry (utilization, clocks, power, temperature) only for
# straggler/energy logging, which never runs on CPU; an AttributeError there
# would be the right failure if it ever did.
UNCOVERED_CUDA_NAMES_ALLOWED = {
    "megatron.core.utils": {"utilization", "clock_rate", "power_draw", "temperature"},
}


def test_install_is_idempotent():
    before = platform.patched_functions()
    module_torch = {m: importlib.import_module(m).torch for m in platform.PATCHED_MODULES}
    platform.install()
    platform.install()
    assert platform.patched_functions() == before
    assert all(importlib.import_module(m).torch is t for m, t in module_torch.items())
    for name in platform.PATCHED_FUNCTIONS:
        # Wrapped once: the original behind the patch is megatron's own function.
        assert not hasattr(platform.original(name), "__megatron_pause_original__")


def test_install_patches_on_cpu():
    assert not torch.cuda.is_available()
    patched = platform.patched_functions()
    assert patched
    assert set(platform.PATCHED_FUNCTIONS) <= set(patched)
    assert {f"{m}.torch" for m in platform.PATCHED_MODULES} <= set(patched)


def test_megatron_core_version_is_pinned():
    import megatron.core

    assert platform.megatron_core_version() == "0.19.2"
    assert megatron.core.__version__.split("+")[0] == "0.19.2"
    assert importlib.metadata.version("megatron-core") == "0.19.2"


def test_install_refuses_other_megatron_versions(monkeypatch):
    import megatron.core

    monkeypatch.setattr(platform, "_installed", False)
    monkeypatch.setattr(megatron.core, "__shortversion__", "0.20.0")
    with pytest.raises(RuntimeError, match=r"0\.19\.2.*found 0\.20\.0"):
        platform.install()


def test_install_is_a_noop_with_cuda():
    """On a GPU machine nothing is patched (and megatron is not even imported)."""
    code = (
        "import sys, torch\n"
        "torch.cuda.is_available = lambda: True\n"
        "from megatron_pause import platform\n"
        "platform.install()\n"
        "assert platform.patched_functions() == [], platform.patched_functions()\n"
        "assert 'megatron.core' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("name", sorted(platform.PATCHED_FUNCTIONS))
def test_patched_function_source_unchanged(name):
    assert name in PATCHED_SOURCE_SHA256, (
        f"{name} is patched but its source hash is not recorded in tests/test_platform.py; record it"
    )
    digest = hashlib.sha256(inspect.getsource(platform.original(name)).encode()).hexdigest()
    assert digest == PATCHED_SOURCE_SHA256[name], (
        f"megatron-core changed {name}; review megatron_pause/platform.py"
    )


@pytest.mark.parametrize("modname", sorted(platform.PATCHED_MODULES))
def test_cuda_standin_covers_patched_module(modname):
    missing = platform.cuda_names_in_module(modname) - platform.standin_names()
    missing -= UNCOVERED_CUDA_NAMES_ALLOWED.get(modname, set())
    assert not missing, (
        f"megatron-core changed {modname}: it uses torch.cuda.{sorted(missing)} which the CPU stand-in "
        "lacks; review megatron_pause/platform.py"
    )


def test_cuda_factories_are_redirected_only_inside_patched_modules():
    from megatron.core.pipeline_parallel import schedules

    t = schedules.torch.zeros(2, device="cuda")
    assert t.device.type == "cpu"
    assert schedules.torch.tensor([1.0], device=schedules.torch.cuda.current_device()).device.type == "cpu"
    # The real torch is untouched.
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(2, device="cuda")
    assert torch.zeros(1).type() == "torch.FloatTensor"


def _rng_body(rank: int, world: int) -> dict:
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from megatron_pause.config import ParallelConfig
    from megatron_pause.distributed import destroy_distributed, init_distributed, seed_everything

    init_distributed(ParallelConfig(tensor_model_parallel_size=2), num_layers=2, seed=42)

    seed_everything(42)
    no_fork = torch.rand(8)

    # Re-seeding installs a new tracker object: always fetch the current one.
    seed_everything(42)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    before = torch.rand(4)
    with tracker.fork():
        inside = torch.rand(4)
    after = torch.rand(4)
    with tracker.fork():
        inside_again = torch.rand(4)  # the tracker's stream continues where it left off

    seed_everything(42)
    torch.rand(4)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        inside_reseeded = torch.rand(4)
    out = dict(
        tp_rank=ps.get_tensor_model_parallel_rank(), dp_rank=ps.get_data_parallel_rank(),
        no_fork=no_fork, before=before, inside=inside, after=after, inside_again=inside_again,
        inside_reseeded=inside_reseeded,
    )  # fmt: skip
    destroy_distributed()
    return out


def test_rng_tracker_really_switches_the_generator():
    results = run_distributed(_rng_body, 4)  # TP2 x DP2
    for r in results:
        # The default stream continues as if the fork never happened ...
        assert torch.equal(torch.cat([r["before"], r["after"]]), r["no_fork"])
        # ... while inside the fork the draws come from another stream ...
        assert not torch.equal(r["inside"], r["no_fork"][4:])
        assert not torch.equal(r["inside"], r["inside_again"])
        # ... which re-seeding reproduces.
        assert torch.equal(r["inside"], r["inside_reseeded"])
    by = {(r["tp_rank"], r["dp_rank"]): r["inside"] for r in results}
    assert set(by) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # Per-TP-rank streams (different dropout masks per tensor shard) ...
    assert not torch.equal(by[0, 0], by[1, 0])
    # ... identical across data-parallel replicas.
    assert torch.equal(by[0, 0], by[0, 1])
    assert torch.equal(by[1, 0], by[1, 1])
    # The default stream is the same on every rank (same-seeded init).
    assert all(torch.equal(r["no_fork"], results[0]["no_fork"]) for r in results)


def test_importing_the_package_is_side_effect_free():
    code = (
        "import json, sys\n"
        "import megatron_pause, megatron_pause.config\n"
        "t = sys.modules.get('torch')\n"
        "print(json.dumps(dict(\n"
        "    heavy=sorted(m for m in sys.modules if m.startswith(('megatron.core', 'transformer_engine', 'apex'))),\n"
        "    torch=t is not None,\n"
        "    cuda_init=bool(t and t.cuda.is_initialized()),\n"
        "    pg=bool(t and t.distributed.is_available() and t.distributed.is_initialized()),\n"
        ")))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True)
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state == dict(heavy=[], torch=False, cuda_init=False, pg=False)


def _imported_modules(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def test_nothing_imports_megatron_training():
    files = [p for d in ("megatron_pause", "tools", "benchmarks", "tests") for p in (REPO / d).rglob("*.py")]
    assert any(p.parts[-2:] == ("megatron_pause", "platform.py") for p in files)
    offenders = {
        str(p.relative_to(REPO)): sorted(
            m for m in _imported_modules(p) if m.split(".")[:2] == ["megatron", "training"]
        )
        for p in files
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"megatron.training must never be imported: {offenders}"
