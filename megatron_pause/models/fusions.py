"""Which of megatron-core's fused kernels this run uses: the one place that decides.

megatron-core 0.19.2 has a flag per fusion in ``TransformerConfig`` and leaves it to the caller
to know which kernels exist; a flag set where its kernel is missing fails deep inside a layer
(or, for a few, silently does nothing). What each one needs, read from megatron-core's source:

* ``bias_activation_fusion`` (``fusions/fused_bias_swiglu.py``, ``fused_bias_gelu.py``) and
  ``bias_dropout_fusion`` (``fused_bias_dropout.py``) and the native ``cross_entropy_loss_fusion``
  (``fused_cross_entropy.py``) are ``jit_fuser`` functions, i.e. ``torch.compile``: CUDA,
  Triton and a C compiler (Triton builds its launcher at run time). (They would compile on CPU too, but slowly and for no gain, and the CPU suite's
  parity tests compare against the eager path.) Bias + GELU is only fused together with a bias:
  ``TransformerConfig`` rejects it for GELU without ``--add-bias-linear``. The fused
  cross-entropy's backward returns a bf16 logits gradient whatever the dtype, so it is used in
  bf16 runs only (where it matches the unfused path exactly).
* ``apply_rope_fusion`` (``models/common/embeddings/rope_utils.py``) calls Transformer Engine's
  ``fused_apply_rotary_pos_emb`` (TE >= 1.4), under either layer spec.
* ``gradient_accumulation_fusion`` (``tensor_parallel/layers.py``) needs apex's
  ``fused_weight_gradient_mlp_cuda``: megatron's ``ColumnParallelLinear`` refuses to build
  without it, and the output layer is one under both layer specs (TE's linears fuse the wgrad
  themselves, the output layer does not). It accumulates into megatron DDP's ``main_grad``,
  which training always has.
* ``masked_softmax_fusion`` (``fusions/fused_softmax.py``) and ``persist_layer_norm``
  (``fusions/fused_layer_norm.py``) belong to megatron's own ``DotProductAttention`` and apex
  ``FusedLayerNorm``. Neither of our layer specs builds those (the local spec uses torch SDPA and
  torch norms, the TE spec TE's attention and norms), so they are reported as unused rather
  than claimed to be on.

:func:`detect` looks at the running machine (without importing Transformer Engine or apex);
:func:`decide` is pure, so tests stub the machine ("CUDA absent", "CUDA without TE/apex", "CUDA
with TE") instead of pretending a kernel ran. The same module answers the Slurm jobs' start-up
question -- can this job take the Transformer Engine + FP8 path? -- in :func:`te_fp8_job_flags`
(``python -m megatron_pause.models.fusions --job-preflight``), without importing torch.

Importing this module imports neither torch nor megatron.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

from megatron_pause.config import FusionConfig, ModelConfig, PrecisionConfig

# Transformer Engine versions, from megatron-core 0.19.2's own checks.
TE_MIN_ROPE_FUSION = (
    1,
    4,
)  # transformer_config.py: "apply_rope_fusion is not available. Please install TE >= 1.4"
TE_MIN_FP8_DPA = (1, 6)  # extensions/transformer_engine.py passes fp8_dpa to the recipe from 1.6.0.dev0 on
FP8_MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer
FP8_DPA_MIN_CAPABILITY = (9, 0)  # cuDNN's FP8 fused attention, which TE uses for FP8 DPA: Hopper+


@dataclasses.dataclass(frozen=True)
class KernelAvailability:
    """What the running machine offers. Built by :func:`detect`, or by hand in tests."""

    cuda: bool = False
    # torch.compile's GPU backend, behind megatron's jit_fuser: Triton, plus a C compiler that
    # Triton builds its kernel launcher with at run time.
    triton: bool = False
    transformer_engine: str | None = None  # TE version ("unknown" if unreadable); None = absent
    apex_gradient_accumulation: bool = False  # fused_weight_gradient_mlp_cuda

    def te_at_least(self, minimum: tuple[int, int]) -> bool:
        version = _version_tuple(self.transformer_engine)
        return version is not None and version >= minimum


@dataclasses.dataclass(frozen=True)
class FusionDecision:
    on: bool
    why: str  # what it uses when on, or why it is off


# TransformerConfig field -> the name the start-up log uses.
FUSIONS: dict[str, str] = {
    "bias_activation_fusion": "bias-activation",
    "bias_dropout_fusion": "bias-dropout-add",
    "apply_rope_fusion": "rope",
    "gradient_accumulation_fusion": "gradient-accumulation",
    "cross_entropy_loss_fusion": "cross-entropy",
    "masked_softmax_fusion": "masked-softmax",
    "persist_layer_norm": "persist-layer-norm",
}


def detect() -> KernelAvailability:
    """The running machine's kernels. Imports torch, never Transformer Engine or apex (importing
    TE initialises CUDA libraries; finding it is enough)."""
    import torch

    cuda = torch.cuda.is_available()
    return KernelAvailability(
        cuda=cuda,
        triton=cuda and _importable("triton") and _c_compiler_available(),
        transformer_engine=transformer_engine_version(),
        apex_gradient_accumulation=cuda and _importable("fused_weight_gradient_mlp_cuda"),
    )


def decide(
    wanted: FusionConfig, model: ModelConfig, precision: PrecisionConfig, available: KernelAvailability
) -> dict[str, FusionDecision]:
    """Each megatron-core fusion (TransformerConfig field name) -> on or off, and why."""
    compiled = _needs_compiled_kernel(available)
    # megatron-core's fused cross-entropy backward casts the logits gradient to bf16
    # unconditionally (fusions/fused_cross_entropy.py, calculate_gradients). Under bf16 the
    # unfused path rounds it to bf16 too, so the two agree exactly (tests/test_fusions.py);
    # under fp32 or fp16 the fused one would silently lose gradient precision.
    cross_entropy_missing = compiled or (
        None if precision.bf16 else "its backward rounds the logits gradient to bf16: --bf16 runs only"
    )

    def decision(forced_off_by: str | None, missing: str | None, uses: str) -> FusionDecision:
        if forced_off_by:
            return FusionDecision(False, f"forced off by {forced_off_by}")
        if missing:
            return FusionDecision(False, missing)
        return FusionDecision(True, uses)

    # Measured on one H200 (130M preset, local spec, bf16, no linear biases): with the bias +
    # SwiGLU and bias-dropout-add kernels 150k tokens/s, without them 221k (cross-entropy fused in
    # both). Without a bias they fuse only the activation and the residual add, and the compiled
    # versions lost; so they are used only when there is a bias to fuse.
    no_bias = None if model.add_bias_linear else "no linear biases: measured slower than unfused on H200"
    if model.swiglu:
        activation_flag = None if wanted.bias_swiglu_fusion else "--no-bias-swiglu-fusion"
        activation_missing = compiled or no_bias
    else:
        activation_flag = None if wanted.bias_gelu_fusion else "--no-bias-gelu-fusion"
        activation_missing = compiled or (
            None if model.add_bias_linear else "GELU without linear biases has no bias to fuse"
        )
    if model.position_embedding_type != "rope":
        rope_missing = "no rotary embeddings in this model"
    elif not available.cuda:
        rope_missing = "needs CUDA"
    elif available.transformer_engine is None:
        rope_missing = "needs Transformer Engine's fused RoPE kernel"
    elif not available.te_at_least(TE_MIN_ROPE_FUSION):
        rope_missing = f"needs Transformer Engine >= 1.4 (found {available.transformer_engine})"
    else:
        rope_missing = None
    if not available.cuda:
        accumulation_missing = "needs CUDA"
    elif not available.apex_gradient_accumulation:
        accumulation_missing = "needs apex's fused_weight_gradient_mlp_cuda"
    else:
        accumulation_missing = None

    return {
        "bias_activation_fusion": decision(
            activation_flag,
            activation_missing,
            "torch.compile (SwiGLU)" if model.swiglu else "torch.compile (GELU)",
        ),
        "bias_dropout_fusion": decision(
            None if wanted.bias_dropout_fusion else "--no-bias-dropout-fusion",
            compiled or no_bias,
            "torch.compile",
        ),
        "apply_rope_fusion": decision(
            None if wanted.apply_rope_fusion else "--no-rope-fusion", rope_missing, "Transformer Engine"
        ),
        "gradient_accumulation_fusion": decision(
            None if wanted.gradient_accumulation_fusion else "--no-gradient-accumulation-fusion",
            accumulation_missing,
            "apex",
        ),
        "cross_entropy_loss_fusion": decision(
            None if wanted.cross_entropy_loss_fusion else "--no-cross-entropy-loss-fusion",
            cross_entropy_missing,
            "torch.compile (native)",
        ),
        "masked_softmax_fusion": decision(
            None if wanted.masked_softmax_fusion else "--no-masked-softmax-fusion",
            "unused: neither layer spec builds megatron's softmax attention core",
            "",
        ),
        "persist_layer_norm": decision(
            None if wanted.persist_layer_norm else "--no-persist-layer-norm",
            "unused: neither layer spec builds megatron's apex FusedLayerNorm",
            "",
        ),
    }


def transformer_config_kwargs(decisions: dict[str, FusionDecision]) -> dict[str, object]:
    """The ``TransformerConfig`` fields for these decisions."""
    kwargs: dict[str, object] = {name: d.on for name, d in decisions.items()}
    # megatron-core's own kernel; its 'te' alternative warns of known stability issues.
    kwargs["cross_entropy_fusion_impl"] = "native"
    return kwargs


def describe(decisions: dict[str, FusionDecision]) -> str:
    """One start-up log line: which fusions are on, and why each other one is off."""
    on = [FUSIONS[n] for n, d in decisions.items() if d.on]
    off = [f"{FUSIONS[n]} ({d.why})" for n, d in decisions.items() if not d.on]
    return f"fusions on: {', '.join(on) or 'none'}; off: {', '.join(off) or 'none'}"


# ---------------------------------------------------------------------------------------------
# The Slurm jobs' start-up check (no torch: it runs in the batch shell before any srun step)
# ---------------------------------------------------------------------------------------------


class FastPathUnavailable(RuntimeError):
    pass


def transformer_engine_version() -> str | None:
    """TE's version without importing it; "unknown" if it is importable but has no metadata."""
    if not _importable("transformer_engine"):
        return None
    try:
        return importlib.metadata.version("transformer_engine")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def gpu_compute_capability() -> tuple[int, int] | None:
    """The first GPU's compute capability from ``nvidia-smi`` (no CUDA context, no torch); None
    where it cannot be read."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return _version_tuple(out.split()[0]) if out.split() else None
    except (OSError, subprocess.SubprocessError):
        return None


def te_fp8_job_flags(
    te_version: str | None, capability: tuple[int, int] | None, switch: str
) -> tuple[list[str], list[str]]:
    """The flags that put a job on the Transformer Engine + FP8 path, and notes for its log.

    Raises :class:`FastPathUnavailable`, naming ``switch`` (the job's way back to local layers
    in plain bf16), where TE is absent or the GPU has no FP8 tensor cores: better to stop in the
    batch shell than after every rank has started.
    """
    back = f"resubmit with {switch} to train with the local layer spec in plain bf16"
    if te_version is None:
        raise FastPathUnavailable(
            "this job defaults to the Transformer Engine layer spec with FP8, but transformer_engine is not "
            "importable in its environment (it ships in the NVIDIA PyTorch container: set CONTAINER_IMAGE to "
            f"an image built from the Dockerfile), or {back}"
        )
    if capability is not None and capability < FP8_MIN_CAPABILITY:
        raise FastPathUnavailable(
            f"this job defaults to FP8, but the GPU's compute capability is {capability[0]}.{capability[1]} "
            f"(FP8 needs 8.9 or newer: Ada, Hopper, Blackwell); {back}"
        )
    flags = ["--transformer-impl", "transformer_engine", "--fp8-format", "hybrid"]
    notes = [f"Transformer Engine {te_version}: TE layer spec, FP8 hybrid"]
    if not _version_tuple(te_version) or _version_tuple(te_version) < TE_MIN_FP8_DPA:
        notes.append(f"FP8 dot-product attention off: needs Transformer Engine >= 1.6 (found {te_version})")
    elif capability is None:
        notes.append(
            "FP8 dot-product attention off: the GPU's compute capability could not be read (nvidia-smi)"
        )
    elif capability < FP8_DPA_MIN_CAPABILITY:
        notes.append(
            f"FP8 dot-product attention off: needs compute capability 9.0+ (found {capability[0]}.{capability[1]})"
        )
    else:
        flags.append("--fp8-dot-product-attention")
        notes.append("FP8 dot-product attention on")
    return flags, notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m megatron_pause.models.fusions",
        description="Print the flags of the Transformer Engine + FP8 path for this machine, or fail "
        "with a message naming the switch back to local layers.",
    )
    parser.add_argument("--job-preflight", action="store_true", required=True)
    parser.add_argument("--switch", default="TE_FP8=0", help="how the job turns the fast path off")
    args = parser.parse_args(argv)
    try:
        flags, notes = te_fp8_job_flags(transformer_engine_version(), gpu_compute_capability(), args.switch)
    except FastPathUnavailable as e:
        print(f"megatron_pause: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"megatron_pause: {note}", file=sys.stderr)
    print(" ".join(flags))
    return 0


# ---------------------------------------------------------------------------------------------


def _needs_compiled_kernel(available: KernelAvailability) -> str | None:
    if not available.cuda:
        return "needs CUDA"
    if not available.triton:
        return "needs Triton and a C compiler for torch.compile"
    return None


def _c_compiler_available() -> bool:
    cc = os.environ.get("CC")
    return bool(cc and shutil.which(cc.split()[0])) or any(shutil.which(c) for c in ("cc", "gcc", "clang"))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _version_tuple(version: str | None) -> tuple[int, int] | None:
    if not version:
        return None
    parts = version.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) if len(parts) > 1 else 0)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
