#!/usr/bin/env python
"""Training throughput and MFU of the 130M preset on one GPU, through the real entry point.

Why through ``python -m megatron_pause.pretrain``: a benchmark that builds the model itself
measures a path users never run. This one launches the same command a Slurm job does (mock data,
so no dataset is needed), reads the per-iteration ``--metrics-file`` the trainer writes, drops
the warm-up iterations (CUDA context, allocator growth, kernel autotuning) and reports the median
tokens/s, step time and MFU of the rest.

Configurations (``--configs``, default ``auto``):

* ``local-bf16`` -- megatron-core's local layers with torch SDPA attention, bf16. Always run.
* ``te-bf16`` -- megatron-core's Transformer Engine layer spec, bf16 (when TE is importable).
* ``te-fp8`` -- the same with ``--fp8-format hybrid`` (TE importable and an FP8-capable GPU:
  compute capability 8.9 or newer, e.g. H100/H200/L40S).

MFU is the trainer's: model FLOPs per token x tokens/s over the device's peak (detected from the
GPU name, or ``--peak-flops``). For FP8 the trainer doubles the bf16 peak, so FP8 MFU is measured
against the FP8 peak.

Peak memory is what ``nvidia-smi`` reports in use on the GPU during the run, above what was in
use before it started: the training process's CUDA context plus everything its allocator held
(what decides whether a configuration fits), sampled every 0.2 s. The fusions each run used are
read from its start-up log line.

``--model-size 1b`` measures the 1B preset (2048-token context); its defaults are sized for one
80 GB+ GPU without recomputation.

Works offline: if ``megatron.core`` is not importable, megatron-core==0.19.2 is installed from a
wheel in ``wheels/`` at the repository root (``pip install --no-index --find-links wheels
--no-deps``, so the machine's CUDA torch is never touched), falling back to unpacking the wheel
onto PYTHONPATH where site-packages is read-only.

Usage:
    python benchmarks/bench_gpu.py                       # 50 iterations per configuration
    python benchmarks/bench_gpu.py --iters 100 --configs local-bf16,te-fp8 --output bench.json
    python benchmarks/bench_gpu.py --model-size 1b --micro-batch-size 4 --global-batch-size 32
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / "wheels"
MEGATRON_CORE = "megatron-core==0.19.2"
ALL_CONFIGS = ("local-bf16", "te-bf16", "te-fp8")


# ------------------------------------------------------------------------------------------
# Offline dependency bootstrap
# ------------------------------------------------------------------------------------------


def _wheel_for_this_python(name: str) -> Path | None:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    candidates = sorted(WHEELS.glob(f"{name.replace('-', '_')}-*.whl"))
    matching = [w for w in candidates if f"-{tag}-" in w.name or "-py3-none-any" in w.name]
    return matching[0] if matching else None


def ensure_megatron_core(extra_pythonpath: list[str]) -> str:
    """Make megatron.core 0.19.2 importable (here and in the child run); returns how."""
    # megatron-core warns at import about optional packages; the run's own log reports what matters.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex).*")
    try:
        import megatron.core as mc

        how = "already installed"
    except ImportError:
        if not WHEELS.is_dir():
            raise SystemExit(
                "megatron.core is not importable and there is no wheels/ folder to install it from offline; "
                f"run `pip download --no-deps --only-binary=:all: {MEGATRON_CORE} -d wheels` on a connected machine"
            ) from None
        pip = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            str(WHEELS),
            "--no-deps",
            MEGATRON_CORE,
        ]
        proc = subprocess.run(pip, capture_output=True, text=True)
        if proc.returncode == 0:
            how = f"installed from {WHEELS}"
        else:
            # Read-only site-packages: unpack the wheel and put it on the path instead.
            wheel = _wheel_for_this_python("megatron_core")
            if wheel is None:
                raise SystemExit(
                    f"pip could not install {MEGATRON_CORE} from {WHEELS} and no wheel there matches "
                    f"Python {sys.version_info.major}.{sys.version_info.minor}:\n{proc.stdout}{proc.stderr}"
                ) from None
            target = Path(tempfile.gettempdir()) / f"megatron_pause_bench_deps_{wheel.stem}"
            if not target.is_dir():
                with zipfile.ZipFile(wheel) as zf:
                    zf.extractall(target)
            sys.path.insert(0, str(target))
            extra_pythonpath.append(str(target))
            how = f"unpacked {wheel.name} onto PYTHONPATH"
        importlib.invalidate_caches()
        import megatron.core as mc
    version = getattr(mc, "__shortversion__", None) or getattr(mc, "__version__", "unknown").split("+")[0]
    if version != MEGATRON_CORE.split("==")[1]:
        raise SystemExit(f"megatron.core {version} is importable, but this project pins {MEGATRON_CORE}")
    return how


# ------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------


@dataclass
class Result:
    config: str
    ok: bool
    iterations: int = 0
    measured_iterations: int = 0
    tokens_per_sec: float | None = None
    step_time_s: float | None = None
    mfu: float | None = None
    final_lm_loss: float | None = None
    peak_memory_gib: float | None = None
    fusions: str | None = None
    wall_s: float = 0.0
    log: str = ""
    error: str | None = None
    argv: list[str] = field(default_factory=list)


def config_flags(name: str) -> list[str]:
    impl, precision = name.split("-")
    flags = ["--bf16"]
    if impl == "te":
        flags += ["--transformer-impl", "transformer_engine"]
    if precision == "fp8":
        flags += ["--fp8-format", "hybrid"]
    return flags


def summarize(metrics: list[dict], warmup: int) -> dict:
    """Medians over the train lines after ``warmup`` iterations (all lines if too few remain)."""
    train = [m for m in metrics if m.get("split") == "train"]
    if not train:
        raise ValueError("the run logged no training iterations")
    steady = [m for m in train if m["iteration"] > warmup] or train
    mfus = [m["mfu"] for m in steady if m.get("mfu") is not None]
    return dict(
        iterations=train[-1]["iteration"],
        measured_iterations=len(steady),
        tokens_per_sec=statistics.median(m["tokens_per_sec"] for m in steady),
        step_time_s=statistics.median(m["step_time_s"] for m in steady),
        mfu=statistics.median(mfus) if mfus else None,
        final_lm_loss=train[-1]["lm_loss"],
    )


class PeakMemory:
    """GPU memory in use above the level before the run, sampled from ``nvidia-smi`` in a thread
    (the child's own allocator statistics are not visible from here). None without nvidia-smi."""

    def __init__(self, interval_s: float = 0.2):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
        self.index = visible if visible.isdigit() else "0"
        self.interval_s = interval_s
        self.baseline = self._used_mib()
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _used_mib(self) -> float | None:
        if shutil.which("nvidia-smi") is None:
            return None
        try:
            out = subprocess.run(
                ["nvidia-smi", "-i", self.index, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10,
            ).stdout  # fmt: skip
            return float(out.split()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def _poll(self) -> None:
        while not self._stop.is_set():
            used = self._used_mib()
            if used is not None:
                self.peak = used if self.peak is None else max(self.peak, used)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self.baseline is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def gib(self) -> float | None:
        if self.peak is None or self.baseline is None:
            return None
        return round((self.peak - self.baseline) / 1024, 2)


def fusions_line(log_text: str) -> str | None:
    """The run's start-up line naming the fusions that were on (see megatron_pause/models/fusions.py)."""
    for line in log_text.splitlines():
        if "fusions on:" in line:
            return line.split("fusions on:", 1)[1].split(";", 1)[0].strip()
    return None


def run_config(name: str, args: argparse.Namespace, workdir: Path, extra_pythonpath: list[str]) -> Result:
    from megatron_pause.testing import free_port  # importable once main() has put REPO on sys.path

    metrics_file = workdir / f"{name}.jsonl"
    log_file = workdir / f"{name}.log"
    argv = [
        "--model-size", args.model_size,
        "--mock-data",
        "--micro-batch-size", str(args.micro_batch_size),
        "--global-batch-size", str(args.global_batch_size),
        "--train-iters", str(args.iters),
        "--lr-warmup-iters", "0",
        "--log-interval", "1",
        "--eval-interval", str(args.iters + 1),
        "--eval-iters", "0",
        "--metrics-file", str(metrics_file),
        *config_flags(name),
    ]  # fmt: skip
    if args.peak_flops:
        argv += ["--peak-flops", str(args.peak_flops)]
    if args.tokenizer_model:
        argv += ["--tokenizer-model", args.tokenizer_model]
    argv += args.extra.split()
    env = dict(
        os.environ,
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        CUDA_DEVICE_MAX_CONNECTIONS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), *extra_pythonpath, os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        PYTHONUNBUFFERED="1",
    )
    command = [sys.executable, "-m", "megatron_pause.pretrain", *argv]
    print(f"[{name}] {' '.join(command)}", flush=True)
    start = time.monotonic()
    with open(log_file, "w") as log, PeakMemory() as memory:
        try:
            proc = subprocess.run(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout
            )
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    wall = time.monotonic() - start
    text = log_file.read_text(errors="replace")
    tail = text[-3000:]
    result = Result(
        config=name,
        ok=False,
        wall_s=round(wall, 1),
        log=str(log_file),
        argv=command,
        peak_memory_gib=memory.gib(),
        fusions=fusions_line(text),
    )
    if returncode != 0:
        result.error = (
            f"timed out after {args.timeout}s" if returncode is None else f"exit status {returncode}"
        )
        print(f"[{name}] FAILED ({result.error}); last output:\n{tail}", flush=True)
        return result
    try:
        metrics = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        for key, value in summarize(metrics, args.warmup).items():
            setattr(result, key, value)
        result.ok = True
    except (OSError, ValueError, KeyError) as e:
        result.error = f"unreadable metrics file {metrics_file}: {e}"
        print(f"[{name}] FAILED ({result.error})", flush=True)
    return result


def choose_configs(requested: str, te_available: bool, fp8_capable: bool) -> tuple[list[str], dict[str, str]]:
    """The configurations to run and, for each one left out, why."""
    skipped: dict[str, str] = {}
    if requested == "auto":
        wanted = list(ALL_CONFIGS)
    else:
        wanted = [c.strip() for c in requested.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in ALL_CONFIGS]
        if unknown:
            raise SystemExit(f"unknown --configs {unknown}; choose from {', '.join(ALL_CONFIGS)} or auto")
    chosen = []
    for c in wanted:
        if c.startswith("te-") and not te_available:
            skipped[c] = "Transformer Engine is not importable"
        elif c.endswith("-fp8") and not fp8_capable:
            skipped[c] = "the GPU has no FP8 tensor cores (needs compute capability >= 8.9)"
        else:
            chosen.append(c)
    return chosen, skipped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-size", default="130m", help="model preset (default: 130m)")
    parser.add_argument("--iters", type=int, default=50, help="training iterations per configuration")
    parser.add_argument("--warmup", type=int, default=10, help="leading iterations left out of the medians")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--global-batch-size", type=int, default=64)
    parser.add_argument(
        "--configs", default="auto", help=f"comma-separated subset of {', '.join(ALL_CONFIGS)}, or auto"
    )
    parser.add_argument(
        "--peak-flops", type=float, default=None, help="per-device peak FLOP/s (default: detected)"
    )
    parser.add_argument(
        "--tokenizer-model", default=None, help="real tokenizer for a realistic vocab (default: mock, 1k ids)"
    )
    parser.add_argument("--extra", default="", help="more pretrain flags, appended last")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where metrics and logs go (default: a temp dir)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # run as a script: make the checkout importable
    if args.iters <= args.warmup:
        parser.error(f"--iters ({args.iters}) must exceed --warmup ({args.warmup})")

    extra_pythonpath: list[str] = []
    how = ensure_megatron_core(extra_pythonpath)
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; this benchmark measures GPU training only", file=sys.stderr)
        return 2
    capability = torch.cuda.get_device_capability()
    te_available = importlib.util.find_spec("transformer_engine") is not None
    configs, skipped = choose_configs(args.configs, te_available, capability >= (8, 9))
    environment = dict(
        device=torch.cuda.get_device_name(),
        compute_capability=f"{capability[0]}.{capability[1]}",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=sys.version.split()[0],
        megatron_core=how,
        transformer_engine=te_available,
    )
    print(json.dumps(environment), flush=True)
    for name, why in skipped.items():
        print(f"[{name}] skipped: {why}", flush=True)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = [run_config(name, args, workdir, extra_pythonpath) for name in configs]

    tokens_per_step = args.global_batch_size * _seq_length(args.model_size, args.extra)
    print(
        f"\n{args.model_size}, {tokens_per_step:,d} tokens/step, medians over iterations {args.warmup + 1}..{args.iters}"
    )
    print(f"{'config':<12} {'tokens/s':>12} {'step (ms)':>10} {'MFU':>7} {'peak GiB':>9} {'final loss':>11}")
    for r in results:
        if r.ok:
            mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "n/a"
            mem = f"{r.peak_memory_gib:.1f}" if r.peak_memory_gib is not None else "n/a"
            print(
                f"{r.config:<12} {r.tokens_per_sec:>12,.0f} {1000 * r.step_time_s:>10.1f} {mfu:>7} {mem:>9} {r.final_lm_loss:>11.4f}"
            )
            print(f"{'':<12} fusions on: {r.fusions or 'n/a'}")
        else:
            print(f"{r.config:<12} FAILED: {r.error} (log: {r.log})")
    base = next((r for r in results if r.config == "te-bf16" and r.ok), None)
    fp8 = next((r for r in results if r.config == "te-fp8" and r.ok), None)
    if base and fp8:
        print(f"FP8 speed-up over TE bf16: {fp8.tokens_per_sec / base.tokens_per_sec:.2f}x")

    report = dict(environment=environment, settings=vars(args) | {"output": str(args.output), "workdir": str(workdir)},
                  skipped=skipped, results=[asdict(r) for r in results])  # fmt: skip
    if args.output:
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if results and all(r.ok for r in results) else 1


def _seq_length(model_size: str, extra: str) -> int:
    tokens = extra.split()
    if "--seq-length" in tokens:
        return int(tokens[tokens.index("--seq-length") + 1])
    from megatron_pause.config import MODEL_PRESETS

    return MODEL_PRESETS[model_size]["seq_length"]


if __name__ == "__main__":
    sys.exit(main())
