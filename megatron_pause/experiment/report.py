"""``report.md`` and the plots, from the rows of ``results.json``.

Per condition (task, variant, M_ft, M_inf): the mean over seeds with a 95% t-interval. Against the
StdPT_StdFT baseline of the same task: the seed-paired difference with its 95% t-interval and a
sign count. Training FLOPs per arm, because the paper's comparison is at equal *steps*: a pause
arm that wins there may still lose at equal compute. The first line of the report is the verdict
on the spec's primary comparison: "gain", "loss", or "null, bounded by [lo, hi]".
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from megatron_pause.experiment import stats
from megatron_pause.experiment.spec import BASELINE, VARIANTS, PrimarySpec

Condition = tuple[str, str, int, int]  # task, variant, M_ft, M_inf


def _condition(row: dict[str, Any]) -> Condition:
    return row["task"], row["variant"], row["finetune_pauses"], row["inference_pauses"]


def by_condition(rows: Sequence[dict[str, Any]], metric: str) -> dict[Condition, dict[int, float]]:
    """{condition: {seed: metric}}, in the order of VARIANTS then M."""
    table: dict[Condition, dict[int, float]] = defaultdict(dict)
    for r in rows:
        table[_condition(r)][r["seed"]] = float(r["metrics"][metric])
    order = {v: i for i, v in enumerate(VARIANTS)}
    return dict(sorted(table.items(), key=lambda kv: (kv[0][0], order[kv[0][1]], kv[0][2], kv[0][3])))


def metric_scale(rows: Sequence[dict[str, Any]], metric: str, unit: str | None = None) -> float:
    """Report fractions as percentages (differences then read as points). Values already in
    percent (the evaluation entry point's unit) stay; of unknown unit, values all within [0, 1]
    are taken as fractions."""
    if unit == "percent":
        return 1.0
    values = [float(r["metrics"][metric]) for r in rows]
    return 100.0 if values and all(0.0 <= v <= 1.0 for v in values) else 1.0


def baseline_of(task: str) -> Condition:
    return task, BASELINE, 0, 0


def primary_condition(primary: PrimarySpec) -> Condition:
    m_inf = primary.finetune_pauses if primary.inference_pauses is None else primary.inference_pauses
    return primary.task, primary.variant, primary.finetune_pauses, m_inf


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _ci(iv: stats.Interval, signed: bool = False) -> str:
    if iv.lo is None:
        return "n/a (1 seed)"
    return f"[{_fmt(iv.lo, signed)}, {_fmt(iv.hi, signed)}]"


def _label(c: Condition) -> str:
    return f"{c[1]} (M_ft={c[2]}, M_inf={c[3]})"


def _flops(x: float | None) -> str:
    return "unknown" if x is None else f"{x:.3g}"


def paired(table: dict[Condition, dict[int, float]], cond: Condition, scale: float) -> dict[str, Any] | None:
    base = table.get(baseline_of(cond[0]))
    if base is None or cond not in table:
        return None
    diffs = stats.paired_differences(table[cond], base)
    if not diffs:
        return None
    values = [scale * d for d in diffs.values()]
    iv = stats.mean_interval(values)
    return {
        "interval": iv,
        "signs": stats.sign_count(values),
        "verdict": stats.verdict(iv),
        "seeds": list(diffs),
    }


def verdict_line(
    table: dict[Condition, dict[int, float]], primary: PrimarySpec, metric: str, scale: float, percent: bool
) -> str:
    cond = primary_condition(primary)
    p = paired(table, cond, scale)
    subject = f"{_label(cond)} − {BASELINE} on {cond[0]}"
    if p is None:
        return f"**Verdict:** not available: no seed has both {_label(cond)} and {BASELINE} results on {cond[0]}."
    iv = p["interval"]
    unit = " points" if percent else ""
    return (
        f"**Verdict: {p['verdict']}.** {subject}: {iv.mean:+.2f} {metric}{unit}, 95% CI {_ci(iv, True)}, "
        f"{p['signs']} (paired by seed, n={iv.n})."
    )


def render(
    rows: Sequence[dict[str, Any]],
    primary: PrimarySpec,
    metric: str,
    name: str,
    missing: Sequence[str] = (),
    plots: Sequence[str] = (),
    metric_unit: str | None = None,
) -> str:
    if not rows:
        return f"# {name}\n\nNo evaluated runs yet ({len(missing)} evaluations missing).\n"
    scale = metric_scale(rows, metric, metric_unit)
    table = by_condition(rows, metric)
    percent = scale == 100.0 or metric_unit == "percent"
    unit = " (%)" if percent else ""
    lines = [f"# {name}", "", verdict_line(table, primary, metric, scale, percent), ""]
    if missing:
        lines += [f"*Incomplete: {len(missing)} evaluation(s) missing; statistics use the runs present.*", ""]
    for task in dict.fromkeys(c[0] for c in table):
        lines += [
            f"## {task}",
            "",
            f"| variant | M_ft | M_inf | seeds | mean {metric}{unit} | 95% CI |",
            "|---|---|---|---|---|---|",
        ]
        for c, per_seed in table.items():
            if c[0] != task:
                continue
            iv = stats.mean_interval([scale * v for v in per_seed.values()])
            lines.append(f"| {c[1]} | {c[2]} | {c[3]} | {iv.n} | {_fmt(iv.mean)} | {_ci(iv)} |")
        lines += [
            "",
            f"Seed-paired differences against {BASELINE} (M_ft=0, M_inf=0) on the same seeds:",
            "",
            "| condition | seeds | mean difference | 95% CI | signs | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for c in table:
            if c[0] != task or c == baseline_of(task):
                continue
            p = paired(table, c, scale)
            if p is None:
                lines.append(f"| {_label(c)} | 0 | n/a | n/a | n/a | no baseline seeds |")
                continue
            iv = p["interval"]
            lines.append(
                f"| {_label(c)} | {iv.n} | {_fmt(iv.mean, True)} | {_ci(iv, True)} | {p['signs']} | {p['verdict']} |"
            )
        lines.append("")

    lines += [
        "## Training FLOPs per arm",
        "",
        "Model FLOPs (matmuls, forward + backward) of pretraining plus finetuning, mean over seeds, "
        "from the tokens each run consumed. The comparison above is at equal steps: where a pause arm "
        "processes more tokens per step (finetuning batches end at their last answer token, so pauses "
        "lengthen them) the ratio shows it, and an equal-steps gain is then not an equal-compute gain.",
        "",
        "| task | variant | M_ft | pretraining | finetuning | total | × baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    arms: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        arms[(r["task"], r["variant"], r["finetune_pauses"])].append(r)

    def mean_of(rs: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in rs]
        return None if any(v is None for v in values) else sum(values) / len(values)

    order = {v: i for i, v in enumerate(VARIANTS)}
    for key in sorted(arms, key=lambda k: (k[0], order[k[1]], k[2])):
        rs = arms[key]
        total = mean_of(rs, "train_flops")
        base = (
            mean_of(arms.get((key[0], BASELINE, 0), []), "train_flops")
            if (key[0], BASELINE, 0) in arms
            else None
        )
        ratio = f"{total / base:.2f}" if total is not None and base else "n/a"
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {_flops(mean_of(rs, 'pretrain_flops'))} | "
            f"{_flops(mean_of(rs, 'finetune_flops'))} | {_flops(total)} | {ratio} |"
        )
    lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    if missing:
        lines += ["## Missing evaluations", ""] + [f"- {m}" for m in missing] + [""]
    return "\n".join(lines)


def plot(
    rows: Sequence[dict[str, Any]],
    primary: PrimarySpec,
    metric: str,
    out_dir: str,
    metric_unit: str | None = None,
) -> list[str]:
    """Two PNGs: metric per condition with 95% intervals (primary task), and metric vs M_inf."""
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = metric_scale(rows, metric, metric_unit)
    table = by_condition(rows, metric)
    task = primary.task if any(c[0] == primary.task for c in table) else next(iter(table))[0]
    conds = [c for c in table if c[0] == task]
    ylabel = f"{metric} (%)" if scale == 100.0 or metric_unit == "percent" else metric
    paths = []

    def interval(c: Condition) -> tuple[float, float]:
        iv = stats.mean_interval([scale * v for v in table[c].values()])
        return iv.mean, 0.0 if iv.half_width is None else iv.half_width

    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(conds) + 2), 4))
    means, errs = zip(*(interval(c) for c in conds))
    ax.errorbar(range(len(conds)), means, yerr=errs, fmt="o", capsize=4)
    ax.set_xticks(
        range(len(conds)), [f"{c[1]}\nM_ft={c[2]} M_inf={c[3]}" for c in conds], fontsize=7, rotation=30
    )
    ax.set_ylabel(ylabel)
    ax.set_title(f"{task}: mean over seeds, 95% t-interval")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "plot_variants.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[tuple[str, int], list[Condition]] = defaultdict(list)
    for c in conds:
        series[(c[1], c[2])].append(c)
    for (variant, m_ft), cs in series.items():
        xs = [c[3] for c in cs]
        ms, es = zip(*(interval(c) for c in cs))
        ax.errorbar(xs, ms, yerr=es, marker="o", capsize=3, label=f"{variant}, M_ft={m_ft}")
    ax.set_xlabel("M_inf (pauses at inference)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{task}: metric vs pauses at inference")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "plot_inference_pauses.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_report(
    rows: Sequence[dict[str, Any]],
    primary: PrimarySpec,
    metric: str,
    name: str,
    out_dir: str,
    missing: Sequence[str] = (),
    metric_unit: str | None = None,
) -> str:
    try:
        plots = plot(rows, primary, metric, out_dir, metric_unit)
    except ImportError:
        plots = []  # matplotlib is an optional extra; the report stands without plots
    text = render(rows, primary, metric, name, missing, plots, metric_unit)
    path = os.path.join(out_dir, "report.md")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
