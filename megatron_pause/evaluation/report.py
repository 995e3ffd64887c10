"""Results across finetuning seeds: mean, standard deviation, 95% confidence interval, a markdown
table and a plot of each metric against the number of inference pauses.

The standard deviation is the sample one (``ddof=1``, stated in the results); the interval is
Student's t: ``mean +- t(0.975, n-1) * std / sqrt(n)``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

# Student's t quantile t(0.975, df) for df = 1..30 (standard tables).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    # Cornish-Fisher expansion around the normal quantile: within 1e-3 of the exact value for df > 30.
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def aggregate(values: Sequence[float]) -> dict[str, Any]:
    """Mean, std (ddof=1) and 95% CI of one metric over checkpoints (seeds)."""
    n = len(values)
    if n == 0:
        raise ValueError("nothing to aggregate")
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "std": None, "ddof": 1, "n": 1, "ci95": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ddof": 1, "n": n, "ci95": [mean - half, mean + half]}


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def add_aggregate(results: dict[str, Any]) -> None:
    """``results["aggregate"][M][metric]`` over the checkpoints that finished that M."""
    agg: dict[str, Any] = {}
    for m in results["inference_pauses"]:
        per_ckpt = [c["results"][str(m)] for c in results["checkpoints"] if str(m) in c["results"]]
        if per_ckpt:
            agg[str(m)] = {k: aggregate([r[k] for r in per_ckpt]) for k in results["metrics"]}
    results["aggregate"] = agg


def markdown_table(results: dict[str, Any]) -> str:
    metrics = results["metrics"]
    lines = [
        f"{results['task']} ({results['task_type']}, {len(results['checkpoints'])} checkpoint(s); "
        "mean ± std over checkpoints, ddof=1, [95% CI])",
        "",
        "| M_inf | " + " | ".join(metrics) + " | examples |",
        "|---:|" + "---:|" * len(metrics) + "---:|",
    ]
    for m in results["inference_pauses"]:
        agg = results["aggregate"].get(str(m))
        if agg is None:
            continue
        cells = []
        for k in metrics:
            a = agg[k]
            if a["n"] == 1:
                cells.append(f"{a['mean']:.2f}")
            else:
                lo, hi = a["ci95"]
                cells.append(f"{a['mean']:.2f} ± {a['std']:.2f} [{lo:.2f}, {hi:.2f}]")
        counts = {c["results"][str(m)]["count"] for c in results["checkpoints"] if str(m) in c["results"]}
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {'/'.join(str(c) for c in sorted(counts))} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    """One panel per metric: each checkpoint thin, the group mean with its 95% CI bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = results["metrics"]
    ms = [m for m in results["inference_pauses"] if str(m) in results["aggregate"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
    label = results.get("label") or "checkpoints"
    for ax, k in zip(axes[0], metrics):
        for c in results["checkpoints"]:
            xs = [m for m in ms if str(m) in c["results"]]
            ax.plot(xs, [c["results"][str(m)][k] for m in xs], color="0.7", linewidth=0.8)
        means = [results["aggregate"][str(m)][k]["mean"] for m in ms]
        cis = [results["aggregate"][str(m)][k]["ci95"] for m in ms]
        ax.plot(ms, means, marker="o", linewidth=2, label=f"{label} (n={len(results['checkpoints'])})")
        if all(ci is not None for ci in cis) and cis:
            ax.fill_between(ms, [c[0] for c in cis], [c[1] for c in cis], alpha=0.2)
        ax.set_xlabel("inference pauses (M_inf)")
        ax.set_ylabel(k)
        ax.set_title(os.path.basename(results["task"]))
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def write_reports(
    results: dict[str, Any], results_file: str, with_plot: bool = True
) -> tuple[str, str | None]:
    """``R.json`` plus ``R.md`` (table) and, ``with_plot``, ``R.png`` beside it. The plot is
    skipped, with a note in the table, when matplotlib is missing (``pip install
    'megatron_pause[eval]'``)."""
    add_aggregate(results)
    write_json_atomic(results_file, results)
    stem = os.path.splitext(results_file)[0]
    table = markdown_table(results)
    png: str | None = stem + ".png" if with_plot else None
    if png is not None:
        try:
            plot(results, png)
        except ImportError:
            png = None
            table += "\n(no plot: matplotlib is not installed; pip install 'megatron_pause[eval]')\n"
    tmp = stem + ".md.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(table)
    os.replace(tmp, stem + ".md")
    return stem + ".md", png
