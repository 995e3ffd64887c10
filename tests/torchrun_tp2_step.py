"""A real multi-process run for tests/test_torchrun_smoke.py: under
``torchrun --nproc-per-node 2`` this trains the parity model with tensor
parallelism 2 and writes each rank's per-step losses, grad norms and gradient
fingerprint to ``OUT_DIR/rank<r>.json``.

It exercises what the forked harness skips: launching from torchrun's
environment (RANK/WORLD_SIZE/MASTER_PORT), a fresh interpreter per rank that
imports megatron-core and installs the CPU layer itself, and process-group
start-up through ``megatron_pause.distributed.init_distributed``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

STEPS = 2


def main(out_dir: str) -> None:
    warnings.simplefilter("ignore")  # megatron's optional-dependency warnings
    import torch

    torch.set_num_threads(1)
    import parity_worlds as pw

    from megatron_pause.distributed import launch_env

    env = launch_env()
    layout = pw.Layout(f"TP{env.world_size}", env.world_size, tp=env.world_size)
    result = pw.train_body(env.rank, env.world_size, layout, None, STEPS)
    with open(os.path.join(out_dir, f"rank{env.rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
