"""``python -m megatron_pause.experiment run SPEC`` (console script ``megatron-pause-experiment``).

run SPEC     run (or continue) every stage of the experiment, then write results.json,
             report.md and the plots; with the slurm launcher, submit the job graph instead
report SPEC  rebuild results.json / report.md from the stages completed so far
plan SPEC    list the stages and which are complete, without running anything
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from megatron_pause.experiment.spec import LAUNCHERS, ExperimentSpec, SpecError, load_spec, parse_seeds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m megatron_pause.experiment",
        description="The four-variant pause experiment ({StdPT, PausePT} x {StdFT, PauseFT}) as one command.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run or continue the experiment"),
        ("report", "rewrite results.json and report.md from completed stages"),
        ("plan", "list the stages and their state"),
    ):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("spec", help="experiment spec (.yaml or .toml)")
        s.add_argument("--out", help="output folder (default: experiments/<spec name>)")
        s.add_argument("--seeds", help="override the spec's seeds: 0-7 or 3,5")
        s.add_argument("--groups", help="run only these groups of the spec (comma-separated names)")
        if name == "run":
            s.add_argument("--max-parallel", type=int, help="local runs side by side (default: the spec's)")
            s.add_argument("--threads-per-run", type=int, help="torch threads per local run")
            s.add_argument("--launcher", choices=LAUNCHERS, help="override the spec's launcher")
            s.add_argument(
                "--no-preload", action="store_true",
                help="local: start every stage as a fresh python process (default: entry points are forked "
                "from a server that imported torch and megatron-core once, about 10 s less per stage)",
            )  # fmt: skip
            s.add_argument(
                "--dry-run", action="store_true", help="slurm: write the job scripts but do not submit them"
            )
    return p


def _load(args: argparse.Namespace) -> tuple[ExperimentSpec, str]:
    spec = load_spec(args.spec)
    if args.seeds:
        spec.seeds = parse_seeds(args.seeds)
    if args.groups:
        wanted = [g.strip() for g in args.groups.split(",") if g.strip()]
        names = [g.name for g in spec.groups]
        unknown = [g for g in wanted if g not in names]
        if unknown:
            raise ValueError(f"--groups: unknown group(s) {unknown}; the spec has {names}")
        spec.groups = [g for g in spec.groups if g.name in wanted]
    out = args.out or os.path.join("experiments", spec.name)
    return spec, out


def _summarize(plan) -> int:
    from megatron_pause.experiment.report import write_report
    from megatron_pause.experiment.results import write_results

    path, rows, missing, unit = write_results(plan)
    spec = plan.spec
    report = write_report(rows, spec.primary, spec.evaluate.metric, spec.name, plan.out, missing, unit)
    print(f"wrote {path} ({len(rows)} rows, {len(missing)} evaluations missing) and {report}")
    with open(report) as f:
        verdict = next((line for line in f if line.startswith("**Verdict")), "")
    if verdict:
        print(verdict.strip())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec, out = _load(args)
    except (SpecError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"megatron_pause.experiment: {e}", file=sys.stderr)
        return 2
    from megatron_pause.experiment.plan import build_plan

    try:
        plan = build_plan(spec, out)
    except ValueError as e:
        print(f"megatron_pause.experiment: {e}", file=sys.stderr)
        return 2
    if args.command == "plan":
        for s in plan.stages.values():
            print(f"{'done   ' if s.is_complete() else 'pending'} {s.id}")
        return 0
    if args.command == "report":
        return _summarize(plan)

    os.makedirs(plan.out, exist_ok=True)
    launcher = args.launcher or spec.launcher.kind
    if launcher == "slurm":
        from megatron_pause.experiment.slurm import SlurmError, submit_plan

        try:
            jobs = submit_plan(
                plan,
                args.spec,
                dry_run=args.dry_run,
                report_args=[
                    *(["--seeds", args.seeds] if args.seeds else []),
                    *(["--groups", args.groups] if args.groups else []),
                ],
            )
        except SlurmError as e:
            print(f"megatron_pause.experiment: {e}", file=sys.stderr)
            return 1
        print(f"{'wrote' if args.dry_run else 'submitted'} {len(jobs)} job(s); scripts in {plan.out}/slurm")
        return 0

    from megatron_pause.experiment.local import LocalLauncher

    local = LocalLauncher(
        plan,
        args.max_parallel or spec.launcher.max_parallel,
        args.threads_per_run or spec.launcher.threads_per_run,
        preload=not args.no_preload,
    )
    try:
        outcome = local.run()
    except KeyboardInterrupt as e:
        print(f"megatron_pause.experiment: {e}", file=sys.stderr)
        return 130
    print(
        f"{len(outcome.completed)} stage(s) run, {len(outcome.skipped)} already complete, "
        f"{len(outcome.failed)} failed, {len(outcome.blocked)} blocked, in {outcome.wall_s:.0f}s"
    )
    _summarize(plan)
    if not outcome.ok:
        print(f"failed: {', '.join(outcome.failed)}; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
