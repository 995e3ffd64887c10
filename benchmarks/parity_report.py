"""Print the parity matrix: how far each parallel layout is from one process.

Runs the same matrix as tests/test_parity.py (tiny 4-layer model, reference
weights from a 1-process checkpoint, 4 microbatches of 2 x 16 tokens with
pause targets, 3 Adam steps at lr 1e-2) and prints, per layout, the maximum
relative difference from the single-process run of the per-step loss, the
per-step grad norm and the first-step per-parameter gradient (L2 norm and
max |g| of every parameter, keyed by global name), plus the wall time of the
layout's world (forked gloo ranks, see megatron_pause/testing.py).

    python benchmarks/parity_report.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def main() -> int:
    warnings.simplefilter("ignore")  # megatron's optional-dependency warnings
    from megatron_pause import platform

    platform.install()
    import parity_worlds as pw

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as ckpt:
        pw.save_reference_checkpoint(ckpt)
        t = time.perf_counter()
        ref = pw.run_layout(pw.REFERENCE, ckpt)
        rows = [(pw.REFERENCE, None, time.perf_counter() - t)]
        for layout in pw.LAYOUTS:
            t = time.perf_counter()
            run = pw.run_layout(layout, ckpt)
            rows.append((layout, pw.compare(run, ref), time.perf_counter() - t))
    total = time.perf_counter() - t0

    print(f"reference (TP1, 1 process): losses {[round(x, 6) for x in ref['losses']]}, "
          f"grad norms {[round(x, 6) for x in ref['grad_norms']]}, {len(ref['grads'])} parameters")  # fmt: skip
    header = f"{'layout':<22}{'procs':>6}{'loss':>12}{'grad norm':>12}{'param grads':>13}  {'wall s':>7}  worst param"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for layout, diff, wall in rows:
        if diff is None:
            print(f"{layout.name:<22}{layout.world:>6}{'-':>12}{'-':>12}{'-':>13}  {wall:7.2f}")
            continue
        assert not diff.missing, f"{layout.name}: parameters missing {diff.missing}"
        worst = max(worst, diff.loss, diff.grad_norm, diff.grad)
        print(
            f"{layout.name:<22}{layout.world:>6}{diff.loss:12.1e}{diff.grad_norm:12.1e}{diff.grad:13.1e}  "
            f"{wall:7.2f}  {diff.worst_param}"
        )
    print(f"max relative difference over all layouts: {worst:.1e} (tolerance 1e-5); total wall {total:.1f} s")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
