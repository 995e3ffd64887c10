"""A stand-in for the pretrain / finetune / evaluate entry points, for the driver's tests.

``python experiment_fake_stage.py KIND <the stage's flags>`` checks that the checkpoint it is
told to ``--load`` exists (so a stage that ran before its dependency fails, as the real one
would), then writes what the real entry point would: a checkpoint directory with the run's
metadata, or an evaluation results file. Scores are a deterministic function of the command line
(PauseFT arms a little higher, pauses removed at inference much lower), so a resumed grid must
reproduce an uninterrupted one exactly.

Environment: FAKE_STAGE_LOG (append "KIND OUTPUT_DIR" per invocation), FAKE_STAGE_SLEEP
(seconds before writing), FAKE_STAGE_FAIL (substring of the output path that makes it exit 1),
FAKE_STAGE_PARENTS (append the command line of the process that started it).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flag(argv: list[str], name: str, default: str | None = None) -> str | None:
    value = default
    for i, a in enumerate(argv[:-1]):
        if a == name:
            value = argv[i + 1]  # the last occurrence wins, as with the real parsers
    return value


def write_checkpoint(root: str, argv: list[str], tokens: int) -> None:
    it = os.path.join(root, "iter_0000001")
    os.makedirs(it, exist_ok=True)
    config = {
        "model": {"num_layers": 2, "hidden_size": 32, "ffn_hidden_size": 88, "num_attention_heads": 2,
                  "seq_length": int(flag(argv, "--seq-length", "64"))},
        "tokenizer": {"tokenizer_type": "SentencePieceTokenizer",
                      "tokenizer_model": os.path.join(REPO, "examples", "data", "sample_tokenizer.model")},
        "model_extra_argv": argv,
    }  # fmt: skip
    with open(os.path.join(it, "megatron_pause.json"), "w") as f:
        json.dump({"iteration": 1, "train_state": {"consumed_tokens": tokens}, "config": config}, f)
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("1")


def score(load: str, m_inf: int) -> float:
    name = os.path.basename(os.path.dirname(load))  # e.g. PausePT_PauseFT_M16_seed3
    noise = int(hashlib.sha256(f"{name}:{m_inf}".encode()).hexdigest()[:8], 16) / 2**32
    seed = int(name.rsplit("seed", 1)[1])
    base = 0.60 + 0.01 * seed + 0.01 * noise
    if "PauseFT" in name:
        return base + 0.02 if m_inf > 0 else 0.15 + 0.05 * noise
    return base


def main() -> int:
    kind, argv = sys.argv[1], sys.argv[2:]
    out = flag(argv, "--save") or os.path.dirname(flag(argv, "--results-file") or ".")
    if os.environ.get("FAKE_STAGE_LOG"):
        with open(os.environ["FAKE_STAGE_LOG"], "a") as f:
            f.write(f"{kind} {out}\n")
    if os.environ.get("FAKE_STAGE_PARENTS"):
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().replace(b"\0", b" ").decode()
        with open(os.environ["FAKE_STAGE_PARENTS"], "a") as f:
            f.write(parent.strip() + "\n")
    load = flag(argv, "--load")
    if kind != "pretrain" and not os.path.isfile(os.path.join(load, "latest_checkpointed_iteration.txt")):
        print(f"fake {kind}: no checkpoint under --load {load}", file=sys.stderr)
        return 1
    time.sleep(float(os.environ.get("FAKE_STAGE_SLEEP", "0")))
    if os.environ.get("FAKE_STAGE_FAIL") and os.environ["FAKE_STAGE_FAIL"] in out:
        print(f"fake {kind}: failing as asked", file=sys.stderr)
        return 1
    if kind == "pretrain":
        write_checkpoint(out, argv, tokens=1000 * (2 if float(flag(argv, "--pause-fraction", "0")) else 1))
    elif kind == "finetune":
        write_checkpoint(out, argv, tokens=100 * (1 + int(flag(argv, "--finetune-pauses", "0"))))
    else:
        ms = [int(m) for m in flag(argv, "--inference-pauses").split(",")]
        # megatron_pause.evaluate's shape: per checkpoint, per M, metrics in percent.
        per_m = {str(m): {"em": 100 * score(load, m), "f1": 100 * score(load, m), "count": 100} for m in ms}
        results = {"task": flag(argv, "--task"), "inference_pauses": ms, "metrics": ["em", "f1"],
                   "metric_scale": "percent (per-example scores in P are 0..1)",
                   "checkpoints": [{"load": load, "iteration": 1, "results": per_m}],
                   "aggregate": {str(m): {"em": {"mean": v["em"], "ci95": None}} for m, v in per_m.items()}}  # fmt: skip
        path = flag(argv, "--results-file")
        with open(path + ".tmp", "w") as f:
            json.dump(results, f)
        os.replace(path + ".tmp", path)
        with open(flag(argv, "--predictions-file"), "w") as f:
            f.write("{}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
