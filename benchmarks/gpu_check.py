#!/usr/bin/env python
"""The first-GPU check: ``tests/gpu``, then training throughput of the 130M and 1B presets in
local-bf16, TE-bf16 and TE-FP8, printed as one table. One command, under 10 minutes on one H200:

    python benchmarks/gpu_check.py --output gpu_check.json

Why one script: a lent GPU session is short and may not come twice. Everything it needs beyond
torch is carried as ``examples/README.md`` describes (``wheels/`` holds megatron-core, installed
offline by ``bench_gpu.ensure_megatron_core``; pytest's wheels too, where the machine lacks it).
It never stops half-way: a failing test or configuration is reported in the table and the rest
still runs, and every run gets a share of a fixed time budget (``--budget-s``), so the table is
printed in time even if something is slow.

Where Transformer Engine cannot be imported (e.g. a machine it could not be carried to: its cu13
wheel is larger than what can be carried, and its torch extension would need compiling there),
the script says so and runs the local-bf16 rows; TE rows show why they are missing. Same for
FP8 on a GPU without FP8 tensor cores.

Each row: tokens/s and MFU (medians after warm-up, from the trainer's metrics file), peak GPU
memory (nvidia-smi, above the level before the run), the LM loss after the last step (mock
data: the same batches and initialisation in every configuration, so the losses should agree
closely -- a cheap correctness check on the fast kernels), wall time, and the fusions that were
on. Then the issue's targets: 1B TE-bf16 MFU >= 45%, TE-FP8 tokens/s >= 1.3x TE-bf16.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import bench_gpu  # noqa: E402

# Per preset: batch shape and steps, sized so that all six runs and tests/gpu fit the budget on
# one H200 and the measured steps are past torch.compile's and the allocator's warm-up.
PLAN: dict[str, list[str]] = {
    "130m": ["--micro-batch-size", "8", "--global-batch-size", "64", "--iters", "30", "--warmup", "10"],
    "1b": ["--micro-batch-size", "4", "--global-batch-size", "32", "--iters", "20", "--warmup", "8"],
}
MFU_TARGET_1B_TE_BF16 = 0.45
FP8_SPEEDUP_TARGET = 1.3
MIN_RUN_S = 60  # a run with less time than this left is not started


def ensure_pytest(extra_pythonpath: list[str]) -> str | None:
    """pytest importable (installing it offline from wheels/ if needed); None, or why not."""
    if importlib.util.find_spec("pytest") is not None:
        return None
    if not bench_gpu.WHEELS.is_dir():
        return "pytest is not importable and there is no wheels/ folder to install it from"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            str(bench_gpu.WHEELS),
            "pytest",
        ],
        capture_output=True,
        text=True,
    )
    importlib.invalidate_caches()
    if proc.returncode != 0 or importlib.util.find_spec("pytest") is None:
        return f"pytest is not importable and could not be installed from {bench_gpu.WHEELS}: {proc.stderr.strip()[-300:]}"
    return None


def run_gpu_tests(extra_pythonpath: list[str], timeout: float) -> dict:
    why_not = ensure_pytest(extra_pythonpath)
    if why_not:
        return dict(ok=False, summary=f"not run: {why_not}", wall_s=0.0)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), *extra_pythonpath, os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    )
    command = [sys.executable, "-m", "pytest", "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    print(f"[tests/gpu] {' '.join(command)}", flush=True)
    start = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(out[-3000:], flush=True)
        return dict(
            ok=False, summary=f"timed out after {timeout:.0f}s", wall_s=round(time.monotonic() - start, 1)
        )
    wall = round(time.monotonic() - start, 1)
    print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n", flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return dict(
        ok=proc.returncode == 0, summary=lines[-1] if lines else f"exit {proc.returncode}", wall_s=wall
    )


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'preset':<6} {'config':<11} {'tokens/s':>11} {'MFU':>6} {'peak GiB':>9} {'loss@N':>13} "
        f"{'wall s':>7}  fusions on / why not run"
    )
    out = [header, "-" * len(header)]
    for r in rows:
        if r.get("skipped"):
            out.append(
                f"{r['preset']:<6} {r['config']:<11} {'-':>11} {'-':>6} {'-':>9} {'-':>13} {'-':>7}  {r['skipped']}"
            )
        elif not r["ok"]:
            out.append(
                f"{r['preset']:<6} {r['config']:<11} {'FAILED':>11} {'-':>6} {'-':>9} {'-':>13} {r['wall_s']:>7.0f}  "
                f"{r['error']} (log: {r['log']})"
            )
        else:
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
            loss = f"{r['final_lm_loss']:.4f}@{r['iterations']}"
            out.append(
                f"{r['preset']:<6} {r['config']:<11} {r['tokens_per_sec']:>11,.0f} {mfu:>6} {mem:>9} {loss:>13} "
                f"{r['wall_s']:>7.0f}  {r['fusions'] or 'n/a'}"
            )
    return "\n".join(out)


def check_targets(rows: list[dict]) -> list[str]:
    """The issue's speed targets, each PASS / FAIL / not measured (and why)."""
    ok = {(r["preset"], r["config"]): r for r in rows if r.get("ok")}
    lines = []
    te_bf16 = ok.get(("1b", "te-bf16"))
    if te_bf16 is None or te_bf16["mfu"] is None:
        lines.append(
            f"1B TE-bf16 MFU >= {MFU_TARGET_1B_TE_BF16:.0%}: not measured (no successful 1B te-bf16 run with a known peak)"
        )
    else:
        verdict = "PASS" if te_bf16["mfu"] >= MFU_TARGET_1B_TE_BF16 else "FAIL"
        lines.append(
            f"1B TE-bf16 MFU >= {MFU_TARGET_1B_TE_BF16:.0%}: {verdict} ({100 * te_bf16['mfu']:.1f}%)"
        )
    for preset in PLAN:
        base, fp8 = ok.get((preset, "te-bf16")), ok.get((preset, "te-fp8"))
        if base and fp8:
            speedup = fp8["tokens_per_sec"] / base["tokens_per_sec"]
            verdict = "PASS" if speedup >= FP8_SPEEDUP_TARGET else "FAIL"
            lines.append(
                f"{preset} TE-FP8 >= {FP8_SPEEDUP_TARGET}x TE-bf16 tokens/s: {verdict} ({speedup:.2f}x)"
            )
        else:
            lines.append(
                f"{preset} TE-FP8 >= {FP8_SPEEDUP_TARGET}x TE-bf16 tokens/s: not measured (needs both TE runs)"
            )
    for preset in PLAN:
        losses = [r["final_lm_loss"] for r in rows if r.get("ok") and r["preset"] == preset]
        if len(losses) > 1:
            lines.append(
                f"{preset} loss after the last step, spread across configurations: {max(losses) - min(losses):.4f} "
                f"({min(losses):.4f}..{max(losses):.4f})"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=540, help="total seconds for tests and runs")
    parser.add_argument("--tests-timeout", type=float, default=200, help="seconds for tests/gpu")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmark table")
    parser.add_argument("--presets", default="130m,1b", help="comma-separated subset of 130m,1b")
    parser.add_argument("--configs", default="auto", help="as bench_gpu.py's --configs")
    parser.add_argument("--output", type=Path, default=None, help="write everything as JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and metrics (default: a temp dir)")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PLAN]
    if unknown:
        parser.error(f"unknown --presets {unknown}; choose from {', '.join(PLAN)}")

    extra_pythonpath: list[str] = []
    try:
        how = bench_gpu.ensure_megatron_core(extra_pythonpath)
    except ImportError as e:  # e.g. a dependency of megatron-core (numpy, packaging) is missing
        print(f"gpu_check: megatron.core cannot be imported here: {e}", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; this check needs one GPU", file=sys.stderr)
        return 2
    from megatron_pause.models import fusions

    capability = torch.cuda.get_device_capability()
    te_version = fusions.transformer_engine_version()
    environment = dict(
        device=torch.cuda.get_device_name(),
        compute_capability=f"{capability[0]}.{capability[1]}",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=sys.version.split()[0],
        megatron_core=how,
        transformer_engine=te_version,
        triton=importlib.util.find_spec("triton") is not None,
        apex_gradient_accumulation=importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None,
    )
    print(json.dumps(environment), flush=True)
    if te_version is None:
        print(
            "gpu_check: Transformer Engine is not importable here, so the TE-bf16 and TE-FP8 rows are left out "
            "(its wheel is larger than what can be carried to this machine, and its torch extension would need "
            "compiling); running tests/gpu and local-bf16",
            flush=True,
        )

    tests = None
    if not args.skip_tests:
        tests = run_gpu_tests(extra_pythonpath, min(args.tests_timeout, max(deadline - time.monotonic(), 1)))
        print(f"[tests/gpu] {tests['summary']}", flush=True)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    rows: list[dict] = []
    for preset in presets:
        configs, skipped = bench_gpu.choose_configs(
            args.configs, te_version is not None, capability >= (8, 9)
        )
        for config in configs:
            left = deadline - time.monotonic()
            if left < MIN_RUN_S:
                rows.append(
                    dict(preset=preset, config=config, skipped=f"not run: {left:.0f}s of the budget left")
                )
                continue
            bench_args = bench_gpu.build_parser().parse_args(
                ["--model-size", preset, *PLAN[preset], "--timeout", str(int(left))]
            )
            (workdir / preset).mkdir(parents=True, exist_ok=True)
            result = bench_gpu.run_config(config, bench_args, workdir / preset, extra_pythonpath)
            rows.append(dict(preset=preset, **asdict(result)))
        rows += [dict(preset=preset, config=c, skipped=f"not run: {why}") for c, why in skipped.items()]

    print(
        f"\n{environment['device']} (compute {environment['compute_capability']}), torch {environment['torch']}"
    )
    if tests is not None:
        print(f"tests/gpu: {tests['summary']} ({tests['wall_s']:.0f}s)")
    print(format_table(rows))
    for line in check_targets(rows):
        print(line)
    print(f"total {args.budget_s - (deadline - time.monotonic()):.0f}s; logs in {workdir}")
    if args.output:
        report = dict(environment=environment, tests=tests, rows=rows, targets=check_targets(rows))
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    ran = [r for r in rows if not r.get("skipped")]
    return 0 if (tests is None or tests["ok"]) and ran and all(r["ok"] for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
