"""``lm_eval`` with the ``pause-hf`` model registered: same flags as lm-eval's own CLI.

    cd examples/lm_eval   # the example tasks read pause_toy.jsonl relative to the working directory
    python -m megatron_pause.hf.lm_eval_cli run --model pause-hf \\
        --model_args pretrained=../../hf_model,num_pauses=10,add_bos_token=False \\
        --include_path . --tasks pause_toy_gen pause_toy_mc --device cpu
"""

from __future__ import annotations

import sys


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    import megatron_pause.hf.lm_eval_model  # noqa: F401  (registers "pause-hf")

    cli_evaluate()


if __name__ == "__main__":
    sys.exit(main())
