"""Submit a plan's incomplete stages to Slurm: one ``sbatch`` job per stage, arrays over seeds.

Stages that differ only in their seed (``pretrain/PausePT_seed0..7``,
``finetune/<task>/PausePT_PauseFT_M16_seed0..7``) become one array job whose task ids are the
seeds; each job waits for the jobs of its dependencies with ``--dependency=afterok:...`` (and
``--kill-on-invalid-dep=yes``, so a failed stage cancels what depends on it instead of leaving it
pending forever). A last job, after all evaluations whatever their outcome (``afterany``), writes
``results.json`` and ``report.md``.

Training and evaluation stages run through the shared job body ``examples/slurm_pause_job.sh``
(environment, rendezvous, container, srun launch, requeue on the time limit) with the stage's
command line in ``STAGE_ARGS_FILE`` and its entry point in ``ENTRY_MODULE``. A stage's
completion marker is written by its job only after a zero exit that was not a time-limit
requeue, with the same fingerprint the driver computes, so resubmitting the same command after a
failure submits exactly the stages (and array elements) that did not finish.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field

from megatron_pause.experiment.plan import MARKER, PYTHON, REPO, Plan, Stage

_SEED = re.compile(r"_seed(\d+)$")


class SlurmError(RuntimeError):
    pass


@dataclass
class Job:
    name: str
    kind: str
    stages: dict[int, Stage]  # array task id (the seed) -> stage; key -1 = not an array
    deps: list[str] = field(default_factory=list)  # names of the jobs this one waits for
    script: str = ""
    job_id: str | None = None

    @property
    def is_array(self) -> bool:
        return -1 not in self.stages


def group_jobs(stages: list[Stage]) -> list[Job]:
    """Stages that differ only in their trailing ``_seed<N>`` share one array job."""
    groups: dict[str, dict[int, Stage]] = defaultdict(dict)
    for s in stages:
        m = _SEED.search(s.id)
        key = _SEED.sub("_seed%a", s.id) if m else s.id
        groups[key][int(m[1]) if m else -1] = s
    jobs = []
    for key, members in groups.items():
        if len(members) == 1 and -1 not in members:
            ((seed, stage),) = members.items()
            members, key = {-1: stage}, stage.id  # one seed left: a plain job
        kind = next(iter(members.values())).kind
        jobs.append(Job(key.replace("/", "-").replace("%a", "S"), kind, dict(sorted(members.items()))))
    return jobs


def _array_spec(seeds: list[int]) -> str:
    """Compact ranges: [0,1,2,5] -> "0-2,5"."""
    parts, start = [], seeds[0]
    for prev, cur in zip(seeds, [*seeds[1:], None]):
        if cur != prev + 1:
            parts.append(f"{start}-{prev}" if prev > start else str(start))
            start = cur
    return ",".join(parts)


def _q(x: str) -> str:
    return shlex.quote(x)


def _write_argv_file(stage: Stage, args: list[str]) -> str:
    path = os.path.join(os.path.dirname(stage.dir), f".{os.path.basename(stage.dir)}.argv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for a in args:
        if "\n" in a:
            raise SlurmError(f"{stage.id}: an argument contains a newline: {a!r}")
    with open(path, "w") as f:
        f.write("".join(f"{a}\n" for a in args))
    return path


def _entry(stage: Stage) -> tuple[str, list[str]]:
    """(module, args) of a training/evaluation stage run as ``{python} -m module args``."""
    if stage.argv[:2] != [PYTHON, "-m"] or len(stage.argv) < 3:
        raise SlurmError(
            f"{stage.id}: on Slurm an entry point must be '{{python}} -m MODULE', got {stage.argv[:3]}"
        )
    return stage.argv[2], stage.argv[3:]


def render_script(plan: Plan, job: Job, spec_path: str, report_args: list[str]) -> str:
    sl = plan.spec.launcher.slurm
    res = sl.resources("evaluate" if job.kind == "report" else job.kind)
    logs = os.path.join(plan.out, "slurm", "logs")
    header = [
        "#!/bin/bash",
        f"# {plan.spec.name}: {job.kind} job written by megatron_pause.experiment; submit with sbatch.",
        f"#SBATCH --job-name={plan.spec.name}-{job.name}"[:200],
        f"#SBATCH --nodes={res.nodes}",
        f"#SBATCH --ntasks-per-node={res.ntasks_per_node if job.kind in ('pretrain', 'finetune', 'evaluate') else 1}",
        f"#SBATCH --cpus-per-task={res.cpus_per_task}",
        f"#SBATCH --time={res.time}",
        f"#SBATCH --output={logs}/%x-{'%A_%a' if job.is_array else '%j'}.out",
        f"#SBATCH --error={logs}/%x-{'%A_%a' if job.is_array else '%j'}.err",
        "#SBATCH --open-mode=append",
    ]
    if res.gpus_per_node and job.kind in ("pretrain", "finetune", "evaluate"):
        header.append(f"#SBATCH --gpus-per-node={res.gpus_per_node}")
    if sl.partition:
        header.append(f"#SBATCH --partition={sl.partition}")
    if sl.account:
        header.append(f"#SBATCH --account={sl.account}")
    if job.kind in ("pretrain", "finetune", "evaluate"):
        header += ["#SBATCH --requeue", "#SBATCH --signal=B:USR1@180"]
    header += [f"#SBATCH {a}" for a in res.sbatch_args]
    lines = [
        *header,
        "",
        "set -euo pipefail",
        f"MEGATRON_PAUSE_DIR={_q(REPO)}",
        f': "${{PYTHON:={sl.python}}}"',
    ]

    if job.kind == "report":
        cmd = [
            "$PYTHON",
            "-m",
            "megatron_pause.experiment",
            "report",
            spec_path,
            "--out",
            plan.out,
            *report_args,
        ]
        lines += [
            'cd "$MEGATRON_PAUSE_DIR"',
            'export PYTHONPATH="$MEGATRON_PAUSE_DIR${PYTHONPATH:+:$PYTHONPATH}"',
            " ".join(c if c == "$PYTHON" else _q(c) for c in cmd),
        ]
        return "\n".join(lines) + "\n"

    # Which stage this task runs: the array task id is the seed.
    lines.append(
        "declare -A STAGE_DIRS=(" + " ".join(f"[{k}]={_q(s.dir)}" for k, s in job.stages.items()) + ")"
    )
    lines.append(
        "declare -A FINGERPRINTS=(" + " ".join(f"[{k}]={s.fingerprint}" for k, s in job.stages.items()) + ")"
    )
    for s in job.stages.values():
        if any(c.isspace() for p in [s.dir, *s.outputs] for c in p):
            raise SlurmError(f"{s.id}: paths with whitespace are not supported in job scripts: {s.outputs}")
    lines.append(
        "declare -A OUTPUTS=("
        + " ".join(f"[{k}]={_q(' '.join(s.outputs))}" for k, s in job.stages.items())
        + ")"
    )
    key = '"${SLURM_ARRAY_TASK_ID}"' if job.is_array else "-1"
    resumable = next(iter(job.stages.values())).resumable
    lines += [
        f"TASK={key}",
        'STAGE_DIR="${STAGE_DIRS[$TASK]}"',
        f'rm -f "$STAGE_DIR/{MARKER}"',
        # Training resumes from its own checkpoint; other stages restart from an empty folder.
        "" if resumable or job.kind == "prepare" else 'rm -rf "$STAGE_DIR"',
        'mkdir -p "$STAGE_DIR"',
        "REQUEUE=0",
        "# The marker says 'complete' only after a zero exit that was not a time-limit requeue",
        "# and with every expected output present; the driver skips such stages on resubmission.",
        "write_marker() {",
        "    local status=$?",
        '    if [[ $status -ne 0 || "$REQUEUE" -ne 0 ]]; then return; fi',
        "    local outputs",
        '    read -r -a outputs <<< "${OUTPUTS[$TASK]}"',
        '    for f in "${outputs[@]}"; do [[ -e "$f" ]] || { echo "missing output $f" >&2; return; }; done',
        f'    printf \'{{"fingerprint": "%s", "slurm_job": "%s"}}\\n\' "${{FINGERPRINTS[$TASK]}}" "${{SLURM_JOB_ID:-}}" > "$STAGE_DIR/{MARKER}.tmp"',
        f'    mv "$STAGE_DIR/{MARKER}.tmp" "$STAGE_DIR/{MARKER}"',
        "}",
        "trap write_marker EXIT",
    ]
    if job.kind == "prepare":
        (stage,) = job.stages.values()
        cmd = " ".join("$PYTHON" if a == PYTHON else _q(a) for a in stage.argv)
        lines += [
            'cd "$MEGATRON_PAUSE_DIR"',
            'export PYTHONPATH="$MEGATRON_PAUSE_DIR${PYTHONPATH:+:$PYTHONPATH}"',
            cmd,
        ]
        return "\n".join(lines) + "\n"

    argv_files = {}
    module = None
    for k, stage in job.stages.items():
        module, args = _entry(stage)
        argv_files[k] = _write_argv_file(stage, [a.replace(PYTHON, sl.python) for a in args])
    mounts = ",".join(x for x in (f"{plan.out}:{plan.out}", sl.container_mounts) if x)
    lines += [
        "declare -A ARGV_FILES=(" + " ".join(f"[{k}]={_q(v)}" for k, v in argv_files.items()) + ")",
        'STAGE_ARGS_FILE="${ARGV_FILES[$TASK]}"',
        f"ENTRY_MODULE={_q(module)}",
        # The job body's own defaults are for pretraining scripts; a stage brings its full command
        # line, so everything else is neutral here. EXTRA_ARGS from the environment still applies.
        'CHECKPOINT_DIR="$STAGE_DIR"',
        'DATA_PATH=""; TOKENIZER_MODEL=""; TENSORBOARD_DIR=""; METRICS_FILE=""',
        f"CONTAINER_IMAGE={_q(sl.container_image)}",
        f"CONTAINER_MOUNTS={_q(mounts)}",
        ': "${EXTRA_ARGS=}"',
        "TP=1; PP=1; MICRO_BATCH_SIZE=1; GLOBAL_BATCH_SIZE=1; TRAIN_ITERS=1",
        'PRECISION_ARGS=""; OPTIMIZER_SHARDING_ARGS=""',
        ': "${MASTER_PORT:=$((6000 + ${SLURM_ARRAY_TASK_ID:-0} % 1000))}"',
        "SIGNAL_LEAD=180",
        # The job body's TE/FP8 fast path (TE_FP8=1 on main) would add flags to every stage; a
        # stage's precision is the spec's to choose (common_args), so it is off unless exported.
        ': "${TE_FP8:=0}"',
        "export TE_FP8",
        ': "${MAX_REQUEUES:=50}"',
        "MODEL_ARGS=()",
        "export STAGE_ARGS_FILE ENTRY_MODULE",
        "# shellcheck source=examples/slurm_pause_job.sh",
        'source "$MEGATRON_PAUSE_DIR/examples/slurm_pause_job.sh"',
    ]
    return "\n".join(lines) + "\n"


def _active_jobs(job_ids: list[str]) -> list[str]:
    if not job_ids or shutil.which("squeue") is None:
        return []
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True, check=False
    )
    return [line.split("_")[0] for line in out.stdout.split() if line.strip()]


def submit_plan(
    plan: Plan, spec_path: str, dry_run: bool = False, report_args: list[str] | None = None
) -> list[Job]:
    """Write (and unless ``dry_run`` submit) one job per group of incomplete stages."""
    slurm_dir = os.path.join(plan.out, "slurm")
    os.makedirs(os.path.join(slurm_dir, "logs"), exist_ok=True)
    record = os.path.join(slurm_dir, "jobs.json")
    if not dry_run and os.path.exists(record):
        with open(record) as f:
            previous = [j["job_id"] for j in json.load(f) if j.get("job_id")]
        active = _active_jobs(previous)
        if active:
            raise SlurmError(
                f"jobs {', '.join(sorted(set(active)))} of the previous submission are still queued or running; "
                "wait for them (resubmitting then runs only what did not finish) or scancel them"
            )
    incomplete = plan.incomplete()
    jobs = group_jobs(incomplete)
    owner = {s.id: j for j in jobs for s in j.stages.values()}
    for j in jobs:
        deps = {owner[d].name for s in j.stages.values() for d in s.deps if d in owner}
        j.deps = sorted(deps)
    evals = [j.name for j in jobs if j.kind == "evaluate"]
    report = Job("report", "report", {}, evals)
    for j in [*jobs, report]:
        j.script = os.path.join(slurm_dir, f"{j.name}.sbatch")
        text = render_script(plan, j, os.path.abspath(spec_path), report_args or [])
        with open(j.script + ".tmp", "w") as f:
            f.write(text)
        os.replace(j.script + ".tmp", j.script)
    all_jobs = [*jobs, report]
    if not dry_run:
        ids: dict[str, str] = {}
        for j in all_jobs:  # dependency order: the plan lists dependencies first
            cmd = ["sbatch", "--parsable"]
            if j.is_array and j.kind != "report":
                cmd.append(f"--array={_array_spec(list(j.stages))}")
            if j.deps:
                kind = "afterany" if j.kind == "report" else "afterok"
                cmd += [
                    f"--dependency={kind}:" + ":".join(ids[d] for d in j.deps),
                    "--kill-on-invalid-dep=yes",
                ]
            cmd.append(j.script)
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            except FileNotFoundError as e:
                raise SlurmError("sbatch not found: run this on a Slurm login node, or use --dry-run") from e
            except subprocess.CalledProcessError as e:
                raise SlurmError(f"sbatch failed for {j.script}: {e.stderr.strip()}") from e
            j.job_id = out.stdout.strip().split(";")[0]
            ids[j.name] = j.job_id
            after = ", ".join(j.deps) if len(j.deps) <= 3 else f"{len(j.deps)} jobs"
            print(f"  {j.job_id}  {j.name}" + (f"  after {after}" if j.deps else ""))
    data = [
        {"name": j.name, "kind": j.kind, "job_id": j.job_id, "script": j.script, "deps": j.deps,
         "stages": {str(k): s.id for k, s in j.stages.items()}}
        for j in all_jobs
    ]  # fmt: skip
    with open(record + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(record + ".tmp", record)
    return all_jobs
