"""The experiment description (YAML or TOML) as typed, validated configs.

A spec names the stages' shared flags, the tasks, the variant groups, the seeds and the launcher;
:mod:`megatron_pause.experiment.plan` turns it into a graph of runs. Everything a user may get
wrong is checked here, before any run starts, and reported together (one fix, one resubmission),
each problem naming the key to change.

Strings in ``args``, ``command``, ``creates`` and task paths may use ``{out}`` (the output
folder), ``{repo}`` (this checkout), ``{python}`` (the interpreter running the driver) and, in
task paths only, ``{seed}``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Literal

VARIANTS = ("StdPT_StdFT", "StdPT_PauseFT", "PausePT_StdFT", "PausePT_PauseFT")
BASELINE = "StdPT_StdFT"
LAUNCHERS = ("local", "slurm")
STAGE_KINDS = ("prepare", "pretrain", "finetune", "evaluate")
# The project's entry points, one per stage; a spec may replace them (tests use a stand-in).
DEFAULT_ENTRY_POINTS: dict[str, list[str]] = {
    "pretrain": ["{python}", "-m", "megatron_pause.pretrain"],
    "finetune": ["{python}", "-m", "megatron_pause.finetune"],
    "evaluate": ["{python}", "-m", "megatron_pause.evaluate"],
}


class SpecError(ValueError):
    """An invalid spec; ``problems`` lists each one, each naming the key involved."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid experiment spec {source}:\n" + "\n".join(f"  - {p}" for p in problems))


def variant_parts(variant: str) -> tuple[bool, bool]:
    """(pause-pretrained, pause-finetuned) of a variant name."""
    pt, ft = variant.split("_")
    return pt == "PausePT", ft == "PauseFT"


def parse_seeds(value: Any) -> list[int]:
    """``0-7``, ``"3,5"``, ``[0, 1, 2]`` or one int -> sorted unique seeds."""
    if isinstance(value, bool):
        raise ValueError(f"seeds must be integers, got {value!r}")
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError(f"seeds must be like 0-7, 3,5 or a list; got {value!r}")
    seeds: list[int] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            seeds.append(item)
            continue
        lo, sep, hi = str(item).partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ValueError(f"seeds must be like 0-7, 3,5 or a list; got {value!r}")
        seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must be non-negative and at least one; got {value!r}")
    return sorted(set(seeds))


@dataclass
class PrepareStep:
    """A data-preparation command run once before any training (e.g. the synthetic generator)."""

    name: str
    command: list[str]
    creates: list[str]


@dataclass
class PretrainSpec:
    args: list[str] = field(default_factory=list)
    # PausePT's --pause-fraction; StdPT runs with 0.
    pause_fraction: float = 0.1
    # One pretraining per seed (small experiments), or one per variant shared by all seeds (the
    # paper: one pretrained model, several finetuning seeds), run with ``seed``.
    per_seed: bool = True
    seed: int = 1234


@dataclass
class FinetuneSpec:
    args: list[str] = field(default_factory=list)


@dataclass
class EvaluateSpec:
    args: list[str] = field(default_factory=list)
    metric: str = "em"


@dataclass
class TaskSpec:
    name: str
    train: str
    valid: str
    test: str


@dataclass
class GroupSpec:
    """One block of the grid: variants x finetuning pause counts x tasks x seeds.

    ``finetune_pauses`` are the M_ft of the PauseFT variants (StdFT variants always finetune with
    0). ``inference_pauses`` lists M_inf values; ``"finetune"`` means "the run's own M_ft" (0 for
    StdFT). ``seeds`` limits the group to the first N seeds of the experiment.
    """

    name: str
    tasks: list[str]
    variants: list[str]
    finetune_pauses: list[int]
    inference_pauses: list[int | Literal["finetune"]] = field(default_factory=lambda: ["finetune"])
    seeds: int | None = None


@dataclass
class PrimarySpec:
    """The comparison the verdict line is about: a condition minus the StdPT_StdFT baseline."""

    task: str
    variant: str = "PausePT_PauseFT"
    finetune_pauses: int = 0
    inference_pauses: int | None = None  # None = finetune_pauses


@dataclass
class SlurmStageResources:
    nodes: int = 1
    ntasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 4
    time: str = "01:00:00"
    sbatch_args: list[str] = field(default_factory=list)


@dataclass
class SlurmSpec:
    partition: str | None = None
    account: str | None = None
    container_image: str = ""
    container_mounts: str = ""
    python: str = "python"
    stages: dict[str, SlurmStageResources] = field(default_factory=dict)

    def resources(self, kind: str) -> SlurmStageResources:
        return self.stages.get(kind, SlurmStageResources())


@dataclass
class LauncherSpec:
    kind: Literal["local", "slurm"] = "local"
    max_parallel: int = 1
    # torch threads per local run; None = the machine's cores divided among the parallel runs.
    threads_per_run: int | None = None
    slurm: SlurmSpec = field(default_factory=SlurmSpec)


@dataclass
class ExperimentSpec:
    name: str
    seeds: list[int]
    tasks: dict[str, TaskSpec]
    groups: list[GroupSpec]
    primary: PrimarySpec
    common_args: list[str] = field(default_factory=list)
    prepare: list[PrepareStep] = field(default_factory=list)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    launcher: LauncherSpec = field(default_factory=LauncherSpec)
    entry_points: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_ENTRY_POINTS))
    source: str = "<dict>"

    def group_seeds(self, group: GroupSpec) -> list[int]:
        return self.seeds if group.seeds is None else self.seeds[: group.seeds]


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def read_spec_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"experiment spec not found: {path}")
    if path.endswith(".toml"):
        with open(path, "rb") as f:
            return tomllib.load(f)
    try:
        import yaml
    except ImportError as exc:
        raise ImportError("YAML specs need pyyaml: pip install 'megatron_pause[experiment]'") from exc
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise SpecError(path, ["the file must hold a mapping at the top level"])
    return data


def load_spec(path: str) -> ExperimentSpec:
    return spec_from_dict(read_spec_file(path), source=path)


class _Reader:
    """Typed access to one mapping of the spec that records every problem instead of raising."""

    def __init__(self, data: Any, where: str, problems: list[str]):
        self.where, self.problems = where, problems
        if not isinstance(data, dict):
            problems.append(f"{where or 'the spec'} must be a mapping, got {type(data).__name__}")
            data = {}
        self.data = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(
        self, name: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False
    ) -> Any:
        self.used.add(name)
        if name not in self.data:
            if required:
                self.problems.append(f"{self.key(name)} is required")
            return default
        value = self.data[name]
        if value is None and default is None and not required:
            return None  # an optional key written as null
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.problems.append(f"{self.key(name)} must be {names}, got {value!r}")
            return default
        return value

    def args(self, name: str) -> list[str]:
        """A list of command-line tokens; numbers and booleans become strings."""
        value = self.get(name, list, [])
        out = []
        for v in value:
            if isinstance(v, dict | list) or v is None:
                self.problems.append(f"{self.key(name)} must hold flags and values, got {v!r}")
            else:
                out.append(str(v).lower() if isinstance(v, bool) else str(v))
        return out

    def sub(self, name: str) -> _Reader:
        return _Reader(self.get(name, dict, {}), self.key(name), self.problems)

    def finish(self) -> None:
        for extra in sorted(set(self.data) - self.used):
            self.problems.append(f"{self.key(extra)}: unknown key")


def _int_list(r: _Reader, name: str, default: list[int]) -> list[int]:
    value = r.get(name, (int, list), default)
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        r.problems.append(f"{r.key(name)} must be non-negative integers, got {value!r}")
        return default
    return values


def spec_from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentSpec:
    problems: list[str] = []
    r = _Reader(data, "", problems)
    name = r.get("name", str, "experiment")
    seeds: list[int] = []
    try:
        seeds = parse_seeds(r.get("seeds", (int, str, list), [0]))
    except ValueError as e:
        problems.append(f"seeds: {e}")

    common_args = r.args("common_args")

    prepare = []
    for i, step in enumerate(r.get("prepare", list, [])):
        s = _Reader(step, f"prepare[{i}]", problems)
        prepare.append(
            PrepareStep(
                s.get("name", str, f"step{i}"),
                s.args("command"),
                [str(c) for c in s.get("creates", list, [])],
            )
        )
        if not prepare[-1].command:
            problems.append(f"prepare[{i}].command is required")
        if not prepare[-1].creates:
            problems.append(f"prepare[{i}].creates must name the files that show the step is complete")
        s.finish()
    if len({p.name for p in prepare}) != len(prepare):
        problems.append("prepare: step names must be unique")

    p = r.sub("pretrain")
    pretrain = PretrainSpec(
        args=p.args("args"),
        pause_fraction=p.get("pause_fraction", float, 0.1),
        per_seed=p.get("per_seed", bool, True),
        seed=p.get("seed", int, 1234),
    )
    p.finish()
    if not 0 < pretrain.pause_fraction < 1:
        problems.append(f"pretrain.pause_fraction must be in (0, 1), got {pretrain.pause_fraction}")
    f = r.sub("finetune")
    finetune = FinetuneSpec(args=f.args("args"))
    f.finish()
    e = r.sub("evaluate")
    evaluate = EvaluateSpec(args=e.args("args"), metric=e.get("metric", str, "em"))
    e.finish()

    tasks: dict[str, TaskSpec] = {}
    t = r.sub("tasks")
    t.used |= set(t.data)
    for task_name, task in t.data.items():
        tr = _Reader(task, f"tasks.{task_name}", problems)
        tasks[task_name] = TaskSpec(
            task_name,
            tr.get("train", str, "", required=True),
            tr.get("valid", str, "", required=True),
            tr.get("test", str, "", required=True),
        )
        tr.finish()
    if not tasks:
        problems.append("tasks: at least one task is required")

    groups: list[GroupSpec] = []
    for i, group in enumerate(r.get("groups", list, [])):
        g = _Reader(group, f"groups[{i}]", problems)
        gname = g.get("name", str, f"group{i}")
        gtasks = g.get("tasks", list, list(tasks)[:1])
        variants = g.get("variants", list, list(VARIANTS))
        m_ft = _int_list(g, "finetune_pauses", [0])
        m_inf = g.get("inference_pauses", (list, int, str), ["finetune"])
        m_inf = m_inf if isinstance(m_inf, list) else [m_inf]
        gseeds = g.get("seeds", int, None)
        g.finish()
        for task in gtasks:
            if task not in tasks:
                problems.append(f"groups[{i}].tasks: unknown task {task!r}; defined: {sorted(tasks)}")
        for v in variants:
            if v not in VARIANTS:
                problems.append(f"groups[{i}].variants: unknown variant {v!r}; choose from {list(VARIANTS)}")
        for m in m_inf:
            if m != "finetune" and not (isinstance(m, int) and not isinstance(m, bool) and m >= 0):
                problems.append(f"groups[{i}].inference_pauses: {m!r} is neither 'finetune' nor a count >= 0")
        if any(variant_parts(v)[1] for v in variants if v in VARIANTS) and 0 in m_ft:
            problems.append(f"groups[{i}].finetune_pauses: a PauseFT variant needs M_ft >= 1, got {m_ft}")
        if gseeds is not None and gseeds < 1:
            problems.append(f"groups[{i}].seeds must be at least 1, got {gseeds}")
        groups.append(GroupSpec(gname, gtasks, variants, m_ft, m_inf, gseeds))
    if not groups:
        problems.append("groups: at least one group of variants is required")

    pr = r.sub("primary")
    primary = PrimarySpec(
        task=pr.get("task", str, next(iter(tasks), "")),
        variant=pr.get("variant", str, "PausePT_PauseFT"),
        finetune_pauses=pr.get("finetune_pauses", int, 0),
        inference_pauses=pr.get("inference_pauses", int, None),
    )
    pr.finish()
    if primary.task not in tasks:
        problems.append(f"primary.task: unknown task {primary.task!r}")
    if primary.variant not in VARIANTS or primary.variant == BASELINE:
        problems.append(f"primary.variant must be one of {list(VARIANTS[1:])}, got {primary.variant!r}")
    elif variant_parts(primary.variant)[1] != (primary.finetune_pauses > 0):
        problems.append(
            f"primary.finetune_pauses={primary.finetune_pauses} does not fit {primary.variant} "
            "(PauseFT variants finetune with M >= 1 pauses, StdFT variants with 0)"
        )

    la = r.sub("launcher")
    launcher = LauncherSpec(
        kind=la.get("kind", str, "local"),
        max_parallel=la.get("max_parallel", int, 1),
        threads_per_run=la.get("threads_per_run", int, None),
    )
    if launcher.kind not in LAUNCHERS:
        problems.append(f"launcher.kind must be one of {list(LAUNCHERS)}, got {launcher.kind!r}")
    if launcher.max_parallel < 1:
        problems.append(f"launcher.max_parallel must be at least 1, got {launcher.max_parallel}")
    sl = la.sub("slurm")
    launcher.slurm = SlurmSpec(
        partition=sl.get("partition", str, None),
        account=sl.get("account", str, None),
        container_image=sl.get("container_image", str, ""),
        container_mounts=sl.get("container_mounts", str, ""),
        python=sl.get("python", str, "python"),
    )
    st = sl.sub("stages")
    st.used |= set(st.data)
    for kind, res in st.data.items():
        if kind not in STAGE_KINDS:
            problems.append(f"launcher.slurm.stages.{kind}: unknown stage; choose from {list(STAGE_KINDS)}")
            continue
        rr = _Reader(res, f"launcher.slurm.stages.{kind}", problems)
        launcher.slurm.stages[kind] = SlurmStageResources(
            nodes=rr.get("nodes", int, 1),
            ntasks_per_node=rr.get("ntasks_per_node", int, 1),
            gpus_per_node=rr.get("gpus_per_node", int, 0),
            cpus_per_task=rr.get("cpus_per_task", int, 4),
            time=rr.get("time", str, "01:00:00"),
            sbatch_args=rr.args("sbatch_args"),
        )
        rr.finish()
    sl.finish()
    la.finish()

    entry_points = dict(DEFAULT_ENTRY_POINTS)
    ep = r.sub("entry_points")
    ep.used |= set(ep.data)
    for kind, argv in ep.data.items():
        if kind not in DEFAULT_ENTRY_POINTS:
            problems.append(f"entry_points.{kind}: unknown stage; choose from {list(DEFAULT_ENTRY_POINTS)}")
        elif not isinstance(argv, list) or not argv:
            problems.append(f"entry_points.{kind} must be a non-empty command list")
        else:
            entry_points[kind] = [str(a) for a in argv]
    r.finish()
    if problems:
        raise SpecError(source, problems)
    return ExperimentSpec(
        name=name,
        seeds=seeds,
        tasks=tasks,
        groups=groups,
        primary=primary,
        common_args=common_args,
        prepare=prepare,
        pretrain=pretrain,
        finetune=finetune,
        evaluate=evaluate,
        launcher=launcher,
        entry_points=entry_points,
        source=source,
    )
