"""``results.json``: one row per evaluated (finetuned run, M_inf), read from the stages' outputs.

The rows depend only on the runs' outputs (never on timing or the order runs finished in), so an
interrupted-and-resumed grid writes the same file as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from typing import Any

from megatron_pause.experiment import commands
from megatron_pause.experiment.plan import Plan

ROW_ORDER = ("task", "variant", "finetune_pauses", "inference_pauses", "seed")


def collect_rows(plan: Plan) -> tuple[list[dict[str, Any]], list[str], str | None]:
    """Rows of every complete evaluation, the evaluations not (yet) complete or readable, and
    the metrics' unit ("percent" when every results file says so, else None)."""
    metric = plan.spec.evaluate.metric
    flops_cache: dict[str, float | None] = {}

    def flops(stage_id: str) -> float | None:
        if stage_id not in flops_cache:
            flops_cache[stage_id] = commands.train_flops(plan.stages[stage_id].dir)
        return flops_cache[stage_id]

    rows, missing, units = [], [], set()
    for ev in plan.by_kind("evaluate"):
        if not ev.is_complete():
            missing.append(ev.id)
            continue
        try:
            per_m, unit = commands.read_evaluation(ev.outputs[0], metric)
        except (commands.ResultsFormatError, ValueError, OSError) as e:
            # Reported, not fatal: the other runs still make a report.
            missing.append(f"{ev.id} (unreadable results: {e})")
            continue
        units.add(unit)
        ft = plan.stages[ev.info["finetune_stage"]]
        pt_flops, ft_flops = flops(ft.deps[0]), flops(ft.id)
        total = None if pt_flops is None or ft_flops is None else pt_flops + ft_flops
        for m in ev.info["inference_pauses"]:
            if m not in per_m:
                missing.append(f"{ev.id} (no results for M_inf={m} in {ev.outputs[0]})")
                continue
            rows.append(
                {
                    "variant": ev.info["variant"],
                    "seed": ev.info["seed"],
                    "task": ev.info["task"],
                    "finetune_pauses": ev.info["finetune_pauses"],
                    "inference_pauses": m,
                    "metrics": dict(sorted(per_m[m].items())),
                    "checkpoint": ev.info["checkpoint"],
                    "train_flops": total,
                    "pretrain_flops": pt_flops,
                    "finetune_flops": ft_flops,
                }
            )
    rows.sort(key=lambda r: tuple(r[k] for k in ROW_ORDER))
    return rows, missing, units.pop() if len(units) == 1 else None


def write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def write_results(plan: Plan) -> tuple[str, list[dict[str, Any]], list[str], str | None]:
    rows, missing, unit = collect_rows(plan)
    path = os.path.join(plan.out, "results.json")
    data = {"experiment": plan.spec.name, "metric": plan.spec.evaluate.metric, "metric_unit": unit}
    write_json(path, {**data, "runs": rows, "missing": missing})
    return path, rows, missing, unit
