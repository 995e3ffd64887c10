"""The experiment driver's run graph, skip-completed and resume-after-kill semantics.

The stages run ``tests/experiment_fake_stage.py`` instead of the real entry points (set through the
spec's ``entry_points``), so the graph logic is tested in seconds and without the finetuning and
evaluation entry points; the stand-in checks that every checkpoint it loads exists.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from megatron_pause.experiment.__main__ import main
from megatron_pause.experiment.plan import build_plan
from megatron_pause.experiment.spec import SpecError, load_spec, spec_from_dict

FAKE = str(Path(__file__).resolve().parent / "experiment_fake_stage.py")


def spec_dict(seeds: str = "0-2", controls: bool = True) -> dict:
    data = {
        "name": "fake_grid",
        "seeds": seeds,
        "common_args": ["--seq-length", 64],
        "pretrain": {"args": ["--train-iters", 5], "pause_fraction": 0.1},
        "finetune": {"args": ["--train-iters", 5]},
        "evaluate": {"args": []},
        "tasks": {
            name: {"train": f"{{out}}/data/{name}/train_seed{{seed}}.jsonl", "valid": "v.jsonl", "test": "t.jsonl"}
            for name in ("ltc", "ltc_qfirst")
        },
        "groups": [
            {"name": "main", "tasks": ["ltc"], "finetune_pauses": 16, "inference_pauses": ["finetune", 0]},
            {"name": "qfirst", "tasks": ["ltc_qfirst"], "variants": ["StdPT_StdFT", "PausePT_PauseFT"],
             "finetune_pauses": 16, "seeds": 2},
            {"name": "m_scan", "tasks": ["ltc"], "variants": ["PausePT_PauseFT"], "finetune_pauses": [4, 16],
             "seeds": 2},
        ],
        "primary": {"task": "ltc", "variant": "PausePT_PauseFT", "finetune_pauses": 16},
        "launcher": {"kind": "local", "max_parallel": 2, "threads_per_run": 1},
        "entry_points": {k: [sys.executable, FAKE, k] for k in ("pretrain", "finetune", "evaluate")},
    }  # fmt: skip
    if not controls:
        data["groups"] = data["groups"][:1]
    return data


def write_spec(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def invocations(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_plan_shares_pretraining_and_deduplicates_runs(tmp_path):
    plan = build_plan(spec_from_dict(spec_dict()), str(tmp_path / "out"))
    kinds = {k: plan.by_kind(k) for k in ("pretrain", "finetune", "evaluate")}
    # 3 seeds x {StdPT, PausePT}; 4 variants x 3 seeds + 2 x 2 (qfirst) + 2 (M=4; M=16 is the main run's)
    assert len(kinds["pretrain"]) == 6
    assert len(kinds["finetune"]) == 12 + 4 + 2
    assert len(kinds["evaluate"]) == len(kinds["finetune"])
    ft = {s.id: s for s in kinds["finetune"]}
    # Both finetuning branches of a seed load the same pretrained checkpoint.
    assert ft["finetune/ltc/PausePT_StdFT_M0_seed1"].deps == ft["finetune/ltc/PausePT_PauseFT_M16_seed1"].deps
    assert ft["finetune/ltc/PausePT_PauseFT_M16_seed1"].deps == ["pretrain/PausePT_seed1"]
    assert ft["finetune/ltc/StdPT_PauseFT_M16_seed1"].deps == ["pretrain/StdPT_seed1"]
    argv = ft["finetune/ltc/StdPT_PauseFT_M16_seed1"].argv
    assert argv[argv.index("--load") + 1] == plan.stages["pretrain/StdPT_seed1"].dir + "/checkpoint"
    assert argv[argv.index("--finetune-pauses") + 1] == "16" and "--finetune" in argv
    assert argv[argv.index("--train-data-path") + 1].endswith("/data/ltc/train_seed1.jsonl")
    pt = plan.stages["pretrain/StdPT_seed2"].argv
    assert pt[pt.index("--pause-fraction") + 1] == "0.0" and pt[pt.index("--seed") + 1] == "2"
    evals = {s.id: s.info["inference_pauses"] for s in kinds["evaluate"]}
    assert evals["evaluate/ltc/PausePT_PauseFT_M16_seed0"] == [0, 16]  # main asks 16 and 0
    assert evals["evaluate/ltc/PausePT_PauseFT_M4_seed0"] == [4]
    assert evals["evaluate/ltc/StdPT_StdFT_M0_seed0"] == [0]
    assert "finetune/ltc_qfirst/PausePT_PauseFT_M16_seed2" not in ft  # the control has 2 seeds


def test_one_pretraining_per_variant_when_not_per_seed(tmp_path):
    data = spec_dict()
    data["pretrain"]["per_seed"] = False
    data["pretrain"]["seed"] = 7
    plan = build_plan(spec_from_dict(data), str(tmp_path))
    assert [s.id for s in plan.by_kind("pretrain")] == ["pretrain/StdPT_seed7", "pretrain/PausePT_seed7"]


def test_spec_problems_are_reported_together(tmp_path):
    data = spec_dict()
    data["groups"][0]["variants"] = ["PausePT_PauseFT", "Bogus"]
    data["groups"][1]["tasks"] = ["nope"]
    data["groups"][2]["finetune_pauses"] = [0]
    data["launcher"]["max_parallel"] = 0
    data["seeds"] = "x-3"
    data["typo_key"] = 1
    with pytest.raises(SpecError) as e:
        spec_from_dict(data)
    text = str(e.value)
    for needle in (
        "Bogus",
        "unknown task 'nope'",
        "M_ft >= 1",
        "max_parallel",
        "seeds",
        "typo_key: unknown key",
    ):
        assert needle in text, needle
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just a list\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2


def test_seeds_override_and_toml(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(
        'name = "t"\nseeds = "0-7"\n[tasks.a]\ntrain = "x"\nvalid = "y"\ntest = "z"\n'
        '[[groups]]\ntasks = ["a"]\nfinetune_pauses = 4\n[primary]\ntask = "a"\nfinetune_pauses = 4\n'
    )
    spec = load_spec(str(toml))
    assert spec.seeds == list(range(8)) and spec.groups[0].variants[0] == "StdPT_StdFT"


def _run(spec: str, out: Path, log: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "megatron_pause.experiment", "run", spec, "--out", str(out), *extra],
        env={**os.environ, "FAKE_STAGE_LOG": str(log), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("start", ["subprocess", "preloaded"])
def test_grid_runs_skips_completed_and_resumes_after_kill_with_identical_results(
    tmp_path, start, monkeypatch
):
    data = spec_dict(seeds="0-1")
    if start == "preloaded":  # `python -m module` stages are forked from the preloaded server
        data["entry_points"] = {
            k: [sys.executable, "-m", "experiment_fake_stage", k] for k in data["entry_points"]
        }
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join([os.path.dirname(FAKE), os.environ.get("PYTHONPATH", "")])
        )
    spec = write_spec(tmp_path / "spec.yaml", data)
    out, log, parents = tmp_path / "out", tmp_path / "calls.log", tmp_path / "parents.log"
    first = _run(spec, out, log, FAKE_STAGE_PARENTS=str(parents))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "done," in first.stdout and "ETA" in first.stdout
    starters = set(parents.read_text().splitlines())
    if start == "preloaded":
        assert len(starters) == 1 and "forkserver" in starters.pop()
    else:
        assert all("megatron_pause.experiment run" in s for s in starters)
    n_stages = len(build_plan(load_spec(spec), str(out)).stages)
    assert len(invocations(log)) == n_stages == 4 + 14 + 14
    reference = (out / "results.json").read_bytes()
    results = json.loads(reference)
    assert len(results["runs"]) == 14 + 4  # + M_inf=0 for the main grid's PauseFT runs (2 variants x 2 seeds)
    row = next(
        r for r in results["runs"] if r["variant"] == "PausePT_PauseFT" and r["inference_pauses"] == 16
    )
    assert set(row) >= {"variant", "seed", "task", "finetune_pauses", "inference_pauses", "metrics", "checkpoint",
                        "train_flops"}  # fmt: skip
    assert row["train_flops"] > 0 and row["checkpoint"].endswith("PausePT_PauseFT_M16_seed0/checkpoint")
    report = (out / "report.md").read_text()
    verdict = next(line for line in report.splitlines() if line.startswith("**Verdict: "))
    assert (
        "PausePT_PauseFT (M_ft=16, M_inf=16) − StdPT_StdFT on ltc" in verdict
        and "2/2 seeds positive" in verdict
    )
    assert (out / "plot_variants.png").stat().st_size > 1000 and (out / "plot_inference_pauses.png").exists()

    # A rerun finds everything complete and runs nothing.
    log.unlink()
    again = _run(spec, out, log)
    assert again.returncode == 0 and invocations(log) == []
    assert (out / "results.json").read_bytes() == reference

    # Killed mid-grid (SIGKILL: no chance to clean up), then rerun: same bytes, nothing redone.
    shutil.rmtree(out)
    log.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "megatron_pause.experiment", "run", spec, "--out", str(out)],
        env={**os.environ, "FAKE_STAGE_LOG": str(log), "FAKE_STAGE_SLEEP": "0.4"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(invocations(log)) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    plan = build_plan(load_spec(spec), str(out))
    done_before = {s.dir for s in plan.stages.values() if s.is_complete()}
    assert 0 < len(done_before) < n_stages
    time.sleep(0.6)  # children die with the driver: nothing may complete after the kill
    assert {s.dir for s in plan.stages.values() if s.is_complete()} == done_before
    log.unlink()
    resumed = _run(spec, out, log)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rerun_dirs = {line.split(" ", 1)[1] for line in invocations(log)}
    rerun_stage_dirs = {d[: -len("/checkpoint")] if d.endswith("/checkpoint") else d for d in rerun_dirs}
    assert not rerun_stage_dirs & done_before
    assert len(rerun_stage_dirs) == n_stages - len(done_before)
    assert (out / "results.json").read_bytes() == reference


def test_failed_stage_blocks_only_its_dependents_and_a_rerun_finishes(tmp_path):
    data = spec_dict(seeds="0-1", controls=False)
    data["groups"][0]["variants"] = ["StdPT_StdFT", "PausePT_PauseFT"]
    spec = write_spec(tmp_path / "spec.yaml", data)
    out, log = tmp_path / "out", tmp_path / "calls.log"
    failed = _run(spec, out, log, FAKE_STAGE_FAIL="PausePT_seed1")
    assert failed.returncode == 1
    assert "FAILED   pretrain/PausePT_seed1" in failed.stdout and "failing as asked" in failed.stdout
    assert "rerun the same command" in failed.stderr
    partial = json.loads((out / "results.json").read_text())
    assert partial["missing"] and all(not (r["variant"].startswith("PausePT") and r["seed"] == 1)
                                      for r in partial["runs"])  # fmt: skip
    assert any(r["variant"].startswith("PausePT") and r["seed"] == 0 for r in partial["runs"])
    log.unlink()
    ok = _run(spec, out, log)
    assert ok.returncode == 0
    redone = invocations(log)
    # Only PausePT_seed1's pretraining, finetuning and evaluation.
    assert len(redone) == 3 and all("PausePT" in line and "seed1" in line for line in redone)
    assert json.loads((out / "results.json").read_text())["missing"] == []


def test_a_changed_stage_reruns_with_everything_downstream(tmp_path):
    data = spec_dict(seeds="0", controls=False)
    spec = write_spec(tmp_path / "spec.yaml", data)
    out, log = tmp_path / "out", tmp_path / "calls.log"
    assert _run(spec, out, log).returncode == 0
    data["finetune"]["args"] = ["--train-iters", 6]
    write_spec(tmp_path / "spec.yaml", data)
    log.unlink()
    assert _run(spec, out, log).returncode == 0
    kinds = [line.split()[0] for line in invocations(log)]
    assert "pretrain" not in kinds and kinds.count("finetune") == kinds.count("evaluate") == 4


def test_unreadable_evaluation_results_are_reported_not_fatal(tmp_path):
    from megatron_pause.experiment.results import collect_rows

    plan = build_plan(spec_from_dict(spec_dict(seeds="0", controls=False)), str(tmp_path))
    stages = list(plan.stages.values())
    for s in stages:
        os.makedirs(os.path.dirname(s.outputs[0]), exist_ok=True)
        Path(s.outputs[0]).write_text(
            json.dumps({"results": [{"inference_pauses": m, "em": 0.5} for m in (0, 16)]})
        )
        s.mark_complete(0.0)
    bad = plan.stages["evaluate/ltc/StdPT_StdFT_M0_seed0"]
    Path(bad.outputs[0]).write_text("{not json")
    partial = plan.stages["evaluate/ltc/PausePT_PauseFT_M16_seed0"]
    Path(partial.outputs[0]).write_text(json.dumps({"16": {"em": 0.7}}))  # M_inf=0 absent
    rows, missing, unit = collect_rows(plan)
    assert unit is None  # these files do not say
    assert len(rows) == 2 + 1 + 1  # StdPT_PauseFT at M_inf 0 and 16, PausePT_StdFT, PausePT_PauseFT at 16
    assert any(m.startswith("evaluate/ltc/StdPT_StdFT_M0_seed0 (unreadable results") for m in missing)
    assert any("no results for M_inf=0" in m for m in missing)
    assert {(r["variant"], r["inference_pauses"], r["metrics"]["em"]) for r in rows} >= {
        ("PausePT_PauseFT", 16, 0.7)
    }
    assert all(r["train_flops"] is None for r in rows)  # the outputs are not checkpoints: FLOPs unknown


def test_groups_option_selects_groups(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", spec_dict(seeds="0"))
    assert main(["plan", spec, "--out", str(tmp_path / "o"), "--groups", "main"]) == 0
    listed = capsys.readouterr().out
    assert "ltc_qfirst" not in listed and "M4_" not in listed and "PausePT_PauseFT_M16_seed0" in listed
    assert main(["plan", spec, "--out", str(tmp_path / "o"), "--groups", "main,nope"]) == 2
    assert "unknown group(s) ['nope']" in capsys.readouterr().err
