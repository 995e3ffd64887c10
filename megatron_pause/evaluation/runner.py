"""The M_inf sweep: every checkpoint x every number of inference pauses x every example.

Predictions are appended to ``P.jsonl`` a chunk at a time (one line per example and M, with the
gold answers and the example's scores), so an interrupted evaluation keeps what it finished and
a rerun with the same arguments continues from there: lines already present for a
(checkpoint, M, example) are reused, a torn last line is dropped. ``R.json`` is rewritten after
every (checkpoint, M).

Generation tasks decode greedily (or as the decoding flags say) after ``prompt + M pauses``;
multiple-choice tasks score ``prompt + M pauses + choice`` for every choice. Examples that do not
fit the model's positions are skipped and counted (``skipped`` in R.json), never truncated.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from megatron_pause.evaluation import metrics as M
from megatron_pause.evaluation.tasks import GENERATION, Example

METRICS = {("generation", "text"): ["em", "f1"], ("generation", "number"): ["correct"]}
MC_METRICS = ["acc", "acc_norm"]


def metric_names(task_type: str, answer_format: str) -> list[str]:
    return MC_METRICS if task_type != GENERATION else METRICS[(task_type, answer_format)]


@dataclass
class Progress:
    """Examples done, examples/s and ETA on standard error, at most every ``interval_s``."""

    total: int
    enabled: bool
    interval_s: float = 10.0
    done: int = 0

    def __post_init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.start_done = 0

    def add(self, n: int, label: str, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.interval_s):
            return
        self.last = now
        rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        print(
            f"evaluate: {label}: {self.done}/{self.total} examples, {rate:.2f} examples/s, ETA {eta:.0f} s",
            file=sys.stderr,
            flush=True,
        )


def read_predictions(path: str) -> dict[tuple[str, int, int], dict]:
    """Existing prediction lines keyed by (checkpoint, M, example index); a torn last line (an
    interrupted write) is cut off the file."""
    done: dict[tuple[str, int, int], dict] = {}
    if not os.path.exists(path):
        return done
    good_bytes = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
                key = (rec["checkpoint"], int(rec["inference_pauses"]), int(rec["index"]))
            except (ValueError, KeyError, TypeError):
                if raw.endswith(b"\n"):
                    raise ValueError(
                        f"{path}: a malformed line that is not the last; remove the file to restart"
                    ) from None
                break
            done[key] = rec
            good_bytes += len(raw)
    if good_bytes != os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return done


class Evaluator:
    def __init__(
        self,
        generator,
        tokenizer,
        examples: list[Example],
        checkpoint: str,
        answer_format: str,
        decoding,
        sampling,
        write: Callable[[list[dict]], None],
        progress: Progress,
        chunk: int = 64,
    ):
        self.g, self.tok, self.examples = generator, tokenizer, examples
        self.checkpoint, self.answer_format = checkpoint, answer_format
        self.decoding, self.sampling = decoding, sampling
        self.write, self.progress, self.chunk = write, progress, chunk
        self.limit = generator.max_sequence_length
        self.prompt_ids = [tokenizer.tokenize(e.prompt) for e in examples]

    def _scores(self, prediction: str, answers: list[str]) -> dict[str, float]:
        if self.answer_format == "number":
            return M.number_scores(prediction, answers)
        return M.squad_scores(prediction, answers)

    def _fits(self, n_tokens: int) -> bool:
        return self.limit is None or n_tokens <= self.limit

    def run(self, m: int, done: dict[tuple[str, int, int], dict]) -> dict[str, Any]:
        """Scores of every example at ``m`` pauses (new ones computed, the rest from ``done``)."""
        kind = self.examples[0].kind
        records: dict[int, dict] = {}
        skipped = 0
        pending: list[Example] = []
        for e in self.examples:
            prev = done.get((self.checkpoint, m, e.index))
            if prev is not None:
                records[e.index] = prev
            elif kind == GENERATION and not self._fits(
                len(self.prompt_ids[e.index]) + m + self.decoding.max_new_tokens
            ):
                skipped += 1
            else:
                pending.append(e)
        self.progress.add(len(records) + skipped, f"{self.checkpoint} M={m}")
        pending.sort(key=lambda e: (len(self.prompt_ids[e.index]), e.index))
        run_chunk = self._generation_chunk if kind == GENERATION else self._choice_chunk
        for i in range(0, len(pending), self.chunk):
            part = pending[i : i + self.chunk]
            new, n_skipped = run_chunk(part, m)
            skipped += n_skipped
            self.write(new)
            records.update((r["index"], r) for r in new)
            self.progress.add(len(part), f"{self.checkpoint} M={m}")
        names = metric_names(kind, self.answer_format)
        count = len(records)
        out: dict[str, Any] = {k: 100.0 * sum(r[k] for r in records.values()) / max(count, 1) for k in names}
        out.update(count=count, skipped=skipped)
        return out

    def _line(self, e: Example, m: int, prediction: str, answers: list[str], scores: dict, **extra) -> dict:
        return {
            "checkpoint": self.checkpoint, "inference_pauses": m, "index": e.index, "id": e.id,
            "prediction": prediction, "answers": answers, **scores, **extra,
        }  # fmt: skip

    def _generation_chunk(self, part: list[Example], m: int) -> tuple[list[dict], int]:
        outs = self.g.generate(
            [self.prompt_ids[e.index] for e in part], m, self.decoding.max_new_tokens, self.sampling,
            stop=self.decoding.stop, use_cache=not self.decoding.no_kv_cache,
        )  # fmt: skip
        return [
            self._line(
                e, m, o.text, e.answers, self._scores(o.text, e.answers), finish_reason=o.finish_reason
            )
            for e, o in zip(part, outs)
        ], 0

    def _choice_chunk(self, part: list[Example], m: int) -> tuple[list[dict], int]:
        kept, requests = [], []
        for e in part:
            ctx = self.prompt_ids[e.index]
            conts = [list(x) for x in self.tok.tokenize_batch_arrays(e.choices, add_bos=False)]
            if not all(conts) or not self._fits(len(ctx) + m + max(len(c) for c in conts)):
                continue
            kept.append(e)
            requests.extend((ctx, c) for c in conts)
        results = self.g.loglikelihoods(requests, m) if requests else []
        lines, pos = [], 0
        for e in kept:
            lls = [r[0] for r in results[pos : pos + len(e.choices)]]
            greedy = [r[1] for r in results[pos : pos + len(e.choices)]]
            pos += len(e.choices)
            scores = M.multiple_choice_scores(lls, e.choices, e.label)
            best = max(range(len(lls)), key=lambda i: (lls[i], -i))
            lines.append(
                self._line(
                    e,
                    m,
                    e.choices[best],
                    [e.choices[e.label]],
                    scores,
                    choices=e.choices,
                    label=e.label,
                    loglikelihoods=lls,
                    is_greedy=greedy[e.label],
                )  # fmt: skip
            )
        return lines, len(part) - len(kept)
