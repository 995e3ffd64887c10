"""The run graph of an experiment: prepare -> pretrain -> finetune -> evaluate, deduplicated.

Every stage has a folder under ``--out``, a command line, the files that show it finished, and a
fingerprint (its command line plus its dependencies' fingerprints). A stage is complete when its
marker file holds that fingerprint and its outputs exist; the launchers write the marker only
after the stage exited successfully, so a killed driver leaves unmarked stages that the next run
repeats, and an edited spec reruns exactly the stages whose command lines changed (and everything
downstream of them).

Sharing: both finetuning branches of a seed (StdFT, PauseFT) start from the same pretraining run;
a run requested by several groups (say the M scan at M=16 and the main grid) is one run; each
finetuned checkpoint is evaluated once, at every M_inf any group asks of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from megatron_pause.experiment import commands
from megatron_pause.experiment.spec import ExperimentSpec, variant_parts

MARKER = ".complete.json"
PYTHON = "{python}"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Stage:
    id: str  # e.g. "finetune/late_threshold_count/PausePT_PauseFT_M16_seed3"
    kind: str  # prepare | pretrain | finetune | evaluate
    argv: list[str]
    dir: str
    deps: list[str]
    outputs: list[str]
    # Pretraining resumes from its own checkpoint after a kill; the other stages restart clean.
    resumable: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def marker(self) -> str:
        return os.path.join(self.dir, MARKER)

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "log.txt")

    def command(self, python: str) -> list[str]:
        """The command line to execute, with the interpreter filled in."""
        return [a.replace(PYTHON, python) for a in self.argv]

    def is_complete(self) -> bool:
        try:
            with open(self.marker) as f:
                if json.load(f).get("fingerprint") != self.fingerprint:
                    return False
        except (OSError, ValueError):
            return False
        return all(os.path.exists(p) for p in self.outputs)

    def missing_outputs(self) -> list[str]:
        return [p for p in self.outputs if not os.path.exists(p)]

    def prepare_dir(self) -> None:
        """Make the folder ready for a (re)run: stale marker removed; non-resumable stages start
        from an empty folder so nothing of an interrupted attempt leaks into the result."""
        if os.path.exists(self.marker):
            os.remove(self.marker)
        if not self.resumable and self.kind != "prepare" and os.path.isdir(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir, exist_ok=True)

    def mark_complete(self, wall_s: float) -> None:
        tmp = f"{self.marker}.tmp"
        with open(tmp, "w") as f:
            json.dump({"fingerprint": self.fingerprint, "argv": self.argv, "wall_s": round(wall_s, 3)}, f)
        os.replace(tmp, self.marker)


@dataclass
class Plan:
    spec: ExperimentSpec
    out: str
    stages: dict[str, Stage]  # in dependency order

    def by_kind(self, kind: str) -> list[Stage]:
        return [s for s in self.stages.values() if s.kind == kind]

    def incomplete(self) -> list[Stage]:
        return [s for s in self.stages.values() if not s.is_complete()]


def _fill(template: str, out: str, seed: int | None = None) -> str:
    # {python} stays a placeholder until launch: the local launcher runs the driver's own
    # interpreter, a Slurm job the cluster's; the fingerprint must not depend on which.
    values = {"out": out, "repo": REPO, "python": PYTHON}
    if seed is not None:
        values["seed"] = str(seed)
    try:
        return template.format(**values)
    except KeyError as e:
        raise ValueError(f"unknown placeholder {{{e.args[0]}}} in {template!r}") from None
    except (IndexError, ValueError) as e:
        raise ValueError(f"bad placeholder in {template!r}: {e}") from None


def _fill_all(items: list[str], out: str) -> list[str]:
    return [_fill(x, out) for x in items]


def _fingerprint(argv: list[str], deps: list[Stage]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(argv).encode())
    for d in deps:
        h.update(d.fingerprint.encode())
    return h.hexdigest()[:16]


def _add(stages: dict[str, Stage], stage: Stage) -> Stage:
    stage.fingerprint = _fingerprint(stage.argv, [stages[d] for d in stage.deps])
    stages[stage.id] = stage
    return stage


def build_plan(spec: ExperimentSpec, out: str) -> Plan:
    out = os.path.abspath(out)
    stages: dict[str, Stage] = {}
    entry = {k: _fill_all(v, out) for k, v in spec.entry_points.items()}
    common = _fill_all(spec.common_args, out)

    prev: list[str] = []
    for step in spec.prepare:
        s = _add(
            stages,
            Stage(
                id=f"prepare/{step.name}",
                kind="prepare",
                argv=_fill_all(step.command, out),
                dir=os.path.join(out, "prepare", step.name),
                deps=list(prev),
                outputs=_fill_all(step.creates, out),
            ),
        )
        prev = [s.id]
    prepared = prev

    def pretrain_stage(pause: bool, seed: int) -> Stage:
        pt_seed = seed if spec.pretrain.per_seed else spec.pretrain.seed
        name = "PausePT" if pause else "StdPT"
        sid = f"pretrain/{name}_seed{pt_seed}"
        if sid not in stages:
            run = commands.PretrainRun(pause, pt_seed, os.path.join(out, sid))
            argv = commands.pretrain_argv(
                entry["pretrain"],
                common,
                _fill_all(spec.pretrain.args, out),
                spec.pretrain.pause_fraction,
                run,
            )
            _add(
                stages,
                Stage(sid, "pretrain", argv, run.dir, list(prepared), commands.pretrain_outputs(run.dir), True,
                      {"pretrain": name, "seed": pt_seed}),
            )  # fmt: skip
        return stages[sid]

    # Finetuning runs and, per finetuned checkpoint, the union of the M_inf asked for.
    evals: dict[str, tuple[Stage, set[int]]] = {}
    for group in spec.groups:
        for task_name in group.tasks:
            task = spec.tasks[task_name]
            for variant in group.variants:
                pause_pt, pause_ft = variant_parts(variant)
                for m in sorted(set(group.finetune_pauses if pause_ft else [0])):
                    for seed in spec.group_seeds(group):
                        pt = pretrain_stage(pause_pt, seed)
                        sid = f"finetune/{task_name}/{variant}_M{m}_seed{seed}"
                        if sid not in stages:
                            run = commands.FinetuneRun(
                                commands.checkpoint_of(pt.dir),
                                _fill(task.train, out, seed),
                                _fill(task.valid, out, seed),
                                m,
                                seed,
                                os.path.join(out, sid),
                            )
                            argv = commands.finetune_argv(
                                entry["finetune"], common, _fill_all(spec.finetune.args, out), run
                            )
                            info = {"variant": variant, "seed": seed, "task": task_name, "finetune_pauses": m}
                            _add(
                                stages,
                                Stage(sid, "finetune", argv, run.dir, [pt.id], commands.finetune_outputs(run.dir),
                                      False, info),
                            )  # fmt: skip
                        ft = stages[sid]
                        wanted = {m if x == "finetune" else int(x) for x in group.inference_pauses}
                        evals.setdefault(sid, (ft, set()))[1].update(wanted)

    for ft_id, (ft, m_inf) in evals.items():
        task = spec.tasks[ft.info["task"]]
        sid = "evaluate/" + ft_id.split("/", 1)[1]
        run = commands.EvaluateRun(
            commands.checkpoint_of(ft.dir),
            _fill(task.test, out, ft.info["seed"]),
            tuple(sorted(m_inf)),
            os.path.join(out, sid),
        )
        argv = commands.evaluate_argv(entry["evaluate"], _fill_all(spec.evaluate.args, out), run)
        info = {**ft.info, "inference_pauses": list(run.inference_pauses), "checkpoint": run.checkpoint,
                "finetune_stage": ft.id}  # fmt: skip
        _add(
            stages,
            Stage(sid, "evaluate", argv, run.dir, [ft.id], commands.evaluate_outputs(run.dir), False, info),
        )
    return Plan(spec, out, stages)
