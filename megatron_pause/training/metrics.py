"""Progress output: a human line per log interval, TensorBoard, and a JSONL metrics file.

The metrics file (``--metrics-file PATH``) has one JSON object per line for
every logged training iteration and every evaluation. Every line carries
``{"iteration": int, "split": "train" | "valid", "lm_loss": float}``; train
lines add ``consumed_tokens``, ``lr``, ``grad_norm``, ``tokens_per_sec``,
``step_time_s``, ``mfu`` (null without a known peak), ``pause_fraction``
(share of pause targets in the batch) and ``tokens`` / ``pause_tokens``;
valid lines add ``ppl`` (and, when finetuning, ``accuracy``). Only the first rank writes; lines are appended and
flushed, so a resumed run continues the same file.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any


class MetricsLogger:
    def __init__(self, metrics_file: str | None, tensorboard_dir: str | None, enabled: bool) -> None:
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        if metrics_file:
            os.makedirs(os.path.dirname(os.path.abspath(metrics_file)), exist_ok=True)
            self._file = open(metrics_file, "a", buffering=1)
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError(
                    "--tensorboard-dir needs the tensorboard package: pip install tensorboard"
                ) from e
            self._tb = SummaryWriter(log_dir=tensorboard_dir)

    def _emit(self, record: dict[str, Any], line: str) -> None:
        if not self.enabled:
            return
        print(line, flush=True)
        if self._file:
            self._file.write(json.dumps(record) + "\n")
        if self._tb:
            it = record["iteration"]
            for key, value in record.items():
                if (
                    key not in ("iteration", "split")
                    and isinstance(value, (int, float))
                    and math.isfinite(value)
                ):
                    self._tb.add_scalar(f"{record['split']}/{key}", value, it)
            self._tb.flush()

    def train(self, record: dict[str, Any]) -> None:
        r = record
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        grad = f"{r['grad_norm']:.3f}" if r.get("grad_norm") is not None else "n/a"
        line = (
            f"iteration {r['iteration']:>7d}/{r['train_iters']} | consumed tokens {r['consumed_tokens']:>12,d} | "
            f"lm loss {r['lm_loss']:.4f} | lr {r['lr']:.3e} | grad norm {grad} | "
            f"tokens/s {r['tokens_per_sec']:,.0f} | step {1000 * r['step_time_s']:.0f} ms | MFU {mfu} | "
            f"pauses {100 * r['pause_fraction']:.1f}%"
        )
        if r.get("skipped"):
            line += " | step skipped (non-finite)"
        self._emit({k: v for k, v in r.items() if k != "train_iters"}, line)

    def valid(self, iteration: int, lm_loss: float, tokens: int, accuracy: float | None = None) -> None:
        ppl = math.exp(min(lm_loss, 50.0))
        line = f"validation at iteration {iteration} | lm loss {lm_loss:.4f} | ppl {ppl:.2f} | tokens {tokens:,d}"
        record = {"iteration": iteration, "split": "valid", "lm_loss": lm_loss, "ppl": ppl, "tokens": tokens}
        if accuracy is not None:  # finetuning: teacher-forced accuracy of the answer tokens
            line += f" | accuracy {accuracy:.4f}"
            record["accuracy"] = accuracy
        self._emit(record, line)

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()
