"""The Slurm job graph of an experiment, with stand-in ``sbatch``/``squeue``/``srun``/``scontrol``.

The stand-in ``sbatch`` records each submission (options, script) and answers a job id; ``squeue``
reports the jobs listed in FAKE_SQUEUE_ACTIVE. Stage scripts are then run with bash through the
stand-in ``srun`` of tests/test_examples.py, which records the command each task would run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_examples import FAKE_SCONTROL, FAKE_SRUN, _write_exe

from megatron_pause.experiment.__main__ import main
from megatron_pause.experiment.plan import MARKER, build_plan
from megatron_pause.experiment.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
PAPER = str(REPO / "examples" / "experiments" / "paper_130m.yaml")
TASKS = 9

# bash, not Python: the paper grid submits 111 jobs and an interpreter start per job adds up.
FAKE_SBATCH = r"""#!/bin/bash
log="$FAKE_SLURM_DIR/submissions.tsv"
n=$(( $( (cat "$log" 2>/dev/null || true) | wc -l) + 1000 ))
printf '%s' "$n" >> "$log"; printf '\t%s' "$@" >> "$log"; printf '\n' >> "$log"
echo "$n;cluster"
"""

FAKE_SQUEUE = r"""
import os, sys
args = sys.argv[1:]
wanted = set(args[args.index("-j") + 1].split(","))
for job in os.environ.get("FAKE_SQUEUE_ACTIVE", "").split():
    if job in wanted:
        print(f"{job}_3")
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    for name, source in (("squeue", FAKE_SQUEUE), ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        _write_exe(bin_dir / name, source)
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(record))

    def submissions() -> list[dict]:
        log = record / "submissions.tsv"
        lines = log.read_text().splitlines() if log.exists() else []
        subs = [{"id": x.split("\t")[0], "args": x.split("\t")[1:]} for x in lines]
        log.unlink(missing_ok=True)
        for s in subs:
            s["script"] = s["args"][-1]
            s["name"] = Path(s["script"]).stem
            s["opts"] = dict(a[2:].split("=", 1) for a in s["args"][:-1] if "=" in a)
        return subs

    return submissions, record


def _deps(sub: dict) -> tuple[str, set[str]]:
    kind, _, ids = sub["opts"].get("dependency", ":").partition(":")
    return kind, set(ids.split(":")) - {""}


def test_paper_grid_jobs_arrays_and_dependencies(tmp_path, fake_slurm):
    submissions, _ = fake_slurm
    out = tmp_path / "out"
    assert main(["run", PAPER, "--out", str(out)]) == 0
    subs = submissions()
    by_name = {s["name"]: s for s in subs}
    ids = {s["name"]: s["id"] for s in subs}
    # 2 pretraining jobs; per task 2 StdFT + 2 PauseFT x {10, 50} finetuning arrays and as many
    # evaluation arrays; one report job.
    assert len(subs) == 2 + 2 * TASKS * 6 + 1
    for pt in ("pretrain-StdPT_seed1234", "pretrain-PausePT_seed1234"):
        assert _deps(by_name[pt]) == ("", set()) and "array" not in by_name[pt]["opts"]
        header = Path(by_name[pt]["script"]).read_text()
        assert "#SBATCH --gpus-per-node=8" in header and "#SBATCH --ntasks-per-node=8" in header
        assert "#SBATCH --exclusive" in header and "ENTRY_MODULE=megatron_pause.pretrain" in header
    ft = by_name["finetune-squad-PausePT_PauseFT_M50_seedS"]
    assert ft["opts"]["array"] == "0-4" and ft["opts"]["kill-on-invalid-dep"] == "yes"
    assert _deps(ft) == ("afterok", {ids["pretrain-PausePT_seed1234"]})
    assert _deps(by_name["finetune-gsm8k-StdPT_PauseFT_M10_seedS"]) == (
        "afterok",
        {ids["pretrain-StdPT_seed1234"]},
    )
    ev = by_name["evaluate-squad-PausePT_PauseFT_M50_seedS"]
    assert ev["opts"]["array"] == "0-4" and _deps(ev) == ("afterok", {ft["id"]})
    report = by_name["report"]
    evals = {s["id"] for s in subs if s["name"].startswith("evaluate-")}
    assert len(evals) == 2 * TASKS * 3 and _deps(report) == ("afterany", evals)
    # Every job was submitted after the jobs it depends on.
    order = {s["id"]: i for i, s in enumerate(subs)}
    assert all(order[d] < order[s["id"]] for s in subs for d in _deps(s)[1])
    scripts = sorted({s["script"] for s in subs})
    assert subprocess.run(["bash", "-n", *scripts]).returncode == 0
    if shutil.which("shellcheck"):
        check = subprocess.run(
            ["shellcheck", "-x", "-S", "warning", *scripts[:3]], cwd=REPO, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert {j["job_id"] for j in jobs} == {s["id"] for s in subs}


# A stand-in interpreter for the job's training process: records its arguments, writes the
# checkpoint tracker under --save (as a finished run does) unless FAKE_TRAIN_EXIT is non-zero.
FAKE_PYTHON = r"""#!/bin/bash
save=""; prev=""
for a in "$@"; do if [[ "$prev" == "--save" ]]; then save="$a"; fi; prev="$a"; done
printf '%s\n' "$@" > "$FAKE_SLURM_DIR/python_args"
if [[ "${FAKE_TRAIN_EXIT:-0}" == 0 ]]; then mkdir -p "$save"; echo 1 > "$save/latest_checkpointed_iteration.txt"; fi
exit "${FAKE_TRAIN_EXIT:-0}"
"""


def _run_task(script: str, seed: int, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    python = tmp_path / "fake_python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB_ID="77", SLURM_ARRAY_TASK_ID=str(seed), SLURM_JOB_NODELIST="node001",
               SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1", SLURM_NTASKS="1", PYTHON=str(python),
               FAKE_HOSTNAMES="node001", FAKE_SRUN_MODE="run", **extra)  # fmt: skip
    return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)


def test_a_stage_job_runs_its_command_through_the_shared_job_body_and_marks_completion(tmp_path, fake_slurm):
    submissions, record = fake_slurm
    out = tmp_path / "out"
    assert main(["run", PAPER, "--out", str(out), "--dry-run"]) == 0
    assert submissions() == []  # a dry run submits nothing
    plan = build_plan(load_spec(PAPER), str(out))
    stage = plan.stages["finetune/squad/PausePT_PauseFT_M50_seed3"]
    script = str(out / "slurm" / "finetune-squad-PausePT_PauseFT_M50_seedS.sbatch")

    # The training process fails: no marker.
    failed = _run_task(script, 3, tmp_path, FAKE_TRAIN_EXIT="4")
    assert failed.returncode == 4 and "training exited with status 4" in failed.stdout
    assert not stage.is_complete()
    srun = json.loads((record / "srun.json").read_text())
    assert srun["command"][1:3] == ["-m", "megatron_pause.finetune"] and srun["command"][3:] == stage.argv[3:]
    assert srun["options"]["--kill-on-bad-exit"] == "1"
    args = (record / "python_args").read_text().splitlines()
    assert args[args.index("--seed") + 1] == "3" and args[args.index("--finetune-pauses") + 1] == "50"
    assert args[args.index("--load") + 1] == str(out / "pretrain" / "PausePT_seed1234" / "checkpoint")

    # It succeeds: the job marks the stage complete with the driver's own fingerprint.
    ok = _run_task(script, 3, tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert stage.is_complete()
    assert json.loads(Path(stage.dir, MARKER).read_text())["slurm_job"] == "77"
    # Another seed of the same array job runs its own stage.
    assert not plan.stages["finetune/squad/PausePT_PauseFT_M50_seed1"].is_complete()
    assert _run_task(script, 1, tmp_path).returncode == 0
    assert plan.stages["finetune/squad/PausePT_PauseFT_M50_seed1"].is_complete()


def _complete(stage) -> None:
    os.makedirs(stage.dir, exist_ok=True)
    for path in stage.outputs:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_text("1")
    stage.mark_complete(1.0)


def test_resubmission_after_a_failed_stage_submits_only_what_did_not_finish(tmp_path, fake_slurm):
    submissions, _ = fake_slurm
    out = tmp_path / "out"
    assert main(["run", PAPER, "--out", str(out)]) == 0
    first = {s["name"]: s["id"] for s in submissions()}
    plan = build_plan(load_spec(PAPER), str(out))
    failed = {"finetune/squad/PausePT_PauseFT_M10_seed2", "finetune/squad/PausePT_PauseFT_M10_seed4"}
    for s in plan.stages.values():
        if s.id not in failed and s.id.replace("evaluate/", "finetune/") not in failed:
            _complete(s)

    # Still queued from the first submission: refuse rather than submit duplicates.
    os.environ["FAKE_SQUEUE_ACTIVE"] = first["evaluate-squad-PausePT_PauseFT_M10_seedS"]
    try:
        assert main(["run", PAPER, "--out", str(out)]) == 1
    finally:
        del os.environ["FAKE_SQUEUE_ACTIVE"]
    assert submissions() == []

    assert main(["run", PAPER, "--out", str(out)]) == 0
    subs = submissions()
    assert [s["name"] for s in subs] == [
        "finetune-squad-PausePT_PauseFT_M10_seedS", "evaluate-squad-PausePT_PauseFT_M10_seedS", "report",
    ]  # fmt: skip
    ft, ev, report = subs
    assert ft["opts"]["array"] == "2,4" and "dependency" not in ft["opts"]  # its pretraining is done
    assert ev["opts"]["array"] == "2,4" and _deps(ev) == ("afterok", {ft["id"]})
    assert _deps(report) == ("afterany", {ev["id"]})
