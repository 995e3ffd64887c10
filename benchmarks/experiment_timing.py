#!/usr/bin/env python
"""Where an experiment's time went: per stage kind, wall time from the completion markers and
median training step time from the metrics files, set against the plain-PyTorch probe's budget.

    python benchmarks/experiment_timing.py runs/ltc            # the --out of an experiment run

The probe of the late-threshold count (pause-science note) took about 45 s for a standard
pretraining + finetuning pair and about 70 s for a pause pair (1 thread, shared 2-core machine),
which the note puts at about 3 minutes per seed for all four variants (2 pretrainings, 4
finetunings). The "overhead" line divides the framework's
pretrain + finetune wall time per seed by that budget; process start, data indexing and
checkpointing are included, as they are in any real run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
from collections import defaultdict

# The note's estimate for one seed of the four variants (2 pretrainings, 4 finetunings).
PROBE_SECONDS_PER_SEED = 180


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="an experiment's output folder")
    a = p.parse_args(argv)
    walls: dict[str, list[float]] = defaultdict(list)
    steps: dict[str, list[float]] = defaultdict(list)
    for marker in glob.glob(os.path.join(a.out, "*", "**", ".complete.json"), recursive=True):
        kind = os.path.relpath(marker, a.out).split(os.sep)[0]
        with open(marker) as f:
            wall = json.load(f).get("wall_s")
        if wall is not None:
            walls[kind].append(float(wall))
        metrics = os.path.join(os.path.dirname(marker), "metrics.jsonl")
        if os.path.exists(metrics):
            with open(metrics) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            steps[kind] += [
                r["step_time_s"] for r in rows if r.get("split") == "train" and "step_time_s" in r
            ]
    if not walls:
        print(f"no completed stages under {a.out}", file=sys.stderr)
        return 1
    print(f"{'stage':<10} {'runs':>5} {'total s':>9} {'mean s':>8} {'median step ms':>15}")
    for kind in ("prepare", "pretrain", "finetune", "evaluate"):
        if kind in walls:
            ws = walls[kind]
            step = f"{1000 * statistics.median(steps[kind]):.1f}" if steps.get(kind) else "n/a"
            print(f"{kind:<10} {len(ws):>5} {sum(ws):>9.0f} {sum(ws) / len(ws):>8.1f} {step:>15}")
    seeds = {
        os.path.basename(m).rsplit("seed", 1)[-1]
        for m in glob.glob(os.path.join(a.out, "pretrain", "*_seed*"))
    }
    train = sum(walls.get("pretrain", [])) + sum(walls.get("finetune", []))
    if seeds:
        per_seed = train / len(seeds)
        print(f"pretrain + finetune per seed: {per_seed:.0f} s over {len(seeds)} seed(s) "
              f"(all finetuning runs included); probe budget {PROBE_SECONDS_PER_SEED} s "
              f"-> overhead x{per_seed / PROBE_SECONDS_PER_SEED:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
