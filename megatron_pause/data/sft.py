"""Prompt/answer examples for pause-finetuning (the paper's Algorithm 2), padded or packed.

One example becomes the token sequence

    append:   prompt  <pause> x M  answer  eod
    prepend:  <pause> x M  prompt  answer  eod

fed as ``tokens = seq[:-1]``, ``labels = seq[1:]``. The loss mask is 1 exactly where the label is
an answer token or the final eod: the last position before the answer (the last pause, or the
last prompt token when M = 0) predicts ``answer[0]``. No prompt token and no pause is ever a
target. Prompt and answer are tokenized separately, so the answer's targets are exactly the
tokenizer's ids of the answer string.

Too long for ``--seq-length``: the prompt loses tokens from the left (the question usually ends a
prompt) and the pauses, answer and eod stay whole; an example whose pauses and answer leave no
room for a single prompt token is rejected. Both are counted.

Samples. Unpacked, a sample is one example right-padded to the sequence length (padding is
masked; a causal model needs no padding mask). Packed, a sample holds several examples back to
back, with ``cu_seqlens`` marking where each starts: the model confines attention to each example
and restarts positions (megatron's ``thd`` packing), so every example's loss is what it is
alone. Examples are packed first-fit in the epoch's order, which fills sequences almost fully.

Order. Epoch ``e`` visits the examples in a permutation drawn from ``(seed, e)``; sample ``i`` of
the run is found by walking the epochs' sample counts, so a run resumed at any
``consumed_samples`` (mid-epoch included) continues exactly. Weighted files (``0.7 a 0.3 b``)
contribute ``round(weight x total)`` examples per epoch, each file cycling through its own
permutation.

Bad input never stops a run by surprise: unreadable lines, malformed JSON, a missing key, a
non-string value and an empty prompt or answer are skipped, counted by reason and written to a
rejects file (:class:`RejectLog`); ``--max-bad-fraction`` turns too many into a clear error.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from megatron_pause.data.jsonl_reader import JsonlFile, resolve_inputs

# Reasons an example is skipped; "prompt_truncated" is counted but the example is kept.
REJECT_REASONS = (
    "invalid_utf8",
    "malformed_json",
    "not_an_object",
    "missing_key",
    "not_a_string",
    "empty_prompt",
    "empty_answer",
    "too_long",
    "line_too_long",
    "corrupt_input",
)
TRUNCATED = "prompt_truncated"


class TooManyRejects(ValueError):
    pass


class RejectLog:
    """Counts skipped examples by reason and keeps one JSON line per skip (file, line, reason)
    for :meth:`write`, which publishes them atomically (temporary name, then rename)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.entries: list[dict[str, Any]] = []

    def add(self, file: str, line: int, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        entry: dict[str, Any] = {"file": file, "line": line, "reason": reason}
        if detail:
            entry["detail"] = detail[:300]
        self.entries.append(entry)

    @property
    def rejected(self) -> int:
        return sum(n for r, n in self.counts.items() if r != TRUNCATED)

    def summary(self) -> str:
        if not self.counts:
            return "none"
        return ", ".join(f"{reason} {n}" for reason, n in sorted(self.counts.items()))

    def write(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            for entry in self.entries:
                f.write(json.dumps(entry, ensure_ascii=True) + "\n")
        os.replace(tmp, path)


def parse_weighted_paths(tokens: Sequence[str], flag: str) -> list[tuple[float | None, list[str]]]:
    """``["a.jsonl"]`` or ``["0.7", "a*.jsonl", "0.3", "b.jsonl"]`` -> [(weight, files)];
    each entry may be a file, folder or glob. Raises ValueError (naming ``flag``) on a bad list
    or a path that matches nothing."""
    from megatron_pause.data.blend import parse_data_path

    try:
        blend = parse_data_path(list(tokens))
    except ValueError as e:
        raise ValueError(str(e).replace("--data-path", flag)) from None
    weights = blend.weights or (None,) * len(blend.prefixes)
    out = []
    for weight, spec in zip(weights, blend.prefixes):
        try:
            out.append((weight, resolve_inputs(spec)))
        except FileNotFoundError as e:
            raise ValueError(f"{flag}: {str(e).replace('--input', '').strip()}") from None
    return out


def read_examples(
    files: Sequence[str],
    prompt_key: str,
    answer_key: str,
    rejects: RejectLog,
    origins: list[tuple[str, int]] | None = None,
) -> list[tuple[str, str]]:
    """(prompt, answer) strings of every valid JSON line of ``files``; the rest goes to ``rejects``.
    ``origins``, if given, receives each returned example's (file, line number)."""
    examples = []
    for path in files:
        with JsonlFile(path) as f:
            for raw in f:
                if raw.data is None:
                    rejects.add(path, raw.line_number, raw.problem or "corrupt_input", raw.detail)
                    continue
                try:
                    text = raw.data.decode("utf-8")
                except UnicodeDecodeError as e:
                    rejects.add(path, raw.line_number, "invalid_utf8", str(e))
                    continue
                if not text.strip():
                    continue  # blank lines are not examples
                try:
                    record = json.loads(text)
                except (ValueError, RecursionError) as e:
                    rejects.add(path, raw.line_number, "malformed_json", str(e))
                    continue
                if not isinstance(record, dict):
                    rejects.add(path, raw.line_number, "not_an_object", type(record).__name__)
                    continue
                problem = None
                for key in (prompt_key, answer_key):
                    if key not in record:
                        problem = ("missing_key", key)
                    elif not isinstance(record[key], str):
                        problem = ("not_a_string", f"{key}: {type(record[key]).__name__}")
                    if problem:
                        break
                if problem is None and not record[answer_key].strip():
                    problem = ("empty_answer", answer_key)
                if problem is None and not record[prompt_key].strip():
                    problem = ("empty_prompt", prompt_key)
                if problem:
                    rejects.add(path, raw.line_number, *problem)
                    continue
                examples.append((record[prompt_key], record[answer_key]))
                if origins is not None:
                    origins.append((path, raw.line_number))
    return examples


@dataclass(frozen=True)
class Example:
    """One tokenized example, already fitted to the sequence length."""

    prompt: np.ndarray  # int64, possibly left-truncated
    answer: np.ndarray  # int64

    def length(self, num_pauses: int) -> int:
        """Sequence positions the example occupies: prompt + pauses + answer (the eod is only a target)."""
        return len(self.prompt) + num_pauses + len(self.answer)


def tokenize_examples(
    tokenizer: Any,
    texts: Sequence[tuple[str, str]],
    num_pauses: int,
    seq_length: int,
    rejects: RejectLog,
    origins: Sequence[tuple[str, int]] | None = None,
) -> list[Example]:
    """Tokenize prompts (with the tokenizer's BOS, if any) and answers (without) separately, and fit
    each example into ``seq_length`` positions: prompts lose tokens from the left (a BOS stays),
    pauses and answer never; an example whose pauses and answer leave no room for one prompt token
    is rejected ("too_long"). ``origins`` names each text's (file, line) in the rejects."""
    prompts = tokenizer.tokenize_batch_arrays([p for p, _ in texts])
    answers = tokenizer.tokenize_batch_arrays([a for _, a in texts], add_bos=False)
    keep_first = 1 if getattr(tokenizer, "add_bos", False) else 0
    out = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        source, line = origins[i] if origins is not None else ("", i + 1)
        prompt, answer = prompt.astype(np.int64), answer.astype(np.int64)
        if len(answer) == 0:
            rejects.add(source, line, "empty_answer", "no tokens")
            continue
        if len(prompt) <= keep_first:
            rejects.add(source, line, "empty_prompt", "no tokens")
            continue
        room = seq_length - num_pauses - len(answer)  # positions left for the prompt
        if room < 1 + keep_first:
            rejects.add(
                source,
                i,
                "too_long",
                f"{num_pauses} pauses + {len(answer)} answer tokens > {seq_length - 1 - keep_first}",
            )
            continue
        if len(prompt) > room:
            rejects.add(source, line, TRUNCATED, f"prompt {len(prompt)} -> {room} tokens")
            prompt = np.concatenate([prompt[:keep_first], prompt[len(prompt) - room + keep_first :]])
        out.append(Example(prompt, answer))
    return out


def example_arrays(
    ex: Example, num_pauses: int, pause_id: int, eod: int, position: str = "append"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, labels, loss_mask) of one example, each ``ex.length(num_pauses)`` long."""
    pauses = np.full(num_pauses, pause_id, dtype=np.int64)
    head = [ex.prompt, pauses] if position == "append" else [pauses, ex.prompt]
    seq = np.concatenate([*head, ex.answer, np.array([eod], dtype=np.int64)])
    tokens, labels = seq[:-1], seq[1:]
    loss_mask = np.zeros(len(labels), dtype=np.float32)
    loss_mask[len(labels) - len(ex.answer) - 1 :] = 1.0  # the answer tokens and the eod
    return tokens, labels, loss_mask


def pack_first_fit(
    order: Sequence[int], lengths: Sequence[int], capacity: int, open_limit: int = 64
) -> list[list[int]]:
    """Group examples (visited in ``order``) into sequences of at most ``capacity`` positions:
    each goes to the first open sequence with room; with more than ``open_limit`` open, the oldest
    is closed. Deterministic in ``order``; sequences come out in the order they were opened."""
    closed: list[tuple[int, list[int]]] = []  # (opening number, members)
    open_bins: list[list] = []  # [opening number, free positions, members]
    for idx in order:
        n = lengths[idx]
        for b in open_bins:
            if n <= b[1]:
                b[1] -= n
                b[2].append(idx)
                break
        else:
            open_bins.append([len(closed) + len(open_bins), capacity - n, [idx]])
            if len(open_bins) > open_limit:
                num, _, members = open_bins.pop(0)
                closed.append((num, members))
        if open_bins and min(b[1] for b in open_bins) == 0:
            closed.extend((b[0], b[2]) for b in open_bins if b[1] == 0)
            open_bins = [b for b in open_bins if b[1] > 0]
    closed.extend((num, members) for num, _, members in open_bins)
    closed.sort(key=lambda c: c[0])
    return [members for _, members in closed]


class FinetuneDataset:
    """Map-style dataset of finetuning samples (see the module docstring).

    ``sources``: one (weight or None, examples) per input entry. ``num_samples``: the length the
    sampler may ask for; with ``shuffle`` the run's samples continue across epochs, without it
    (validation) the dataset is the examples once, in order, followed by empty padding samples
    (no loss) up to ``num_samples``.
    """

    def __init__(
        self,
        sources: Sequence[tuple[float | None, list[Example]]],
        *,
        seq_length: int,
        num_pauses: int,
        pause_id: int,
        eod: int,
        pad: int,
        position: str = "append",
        pack: bool = False,
        shuffle: bool = True,
        seed: int = 1234,
        num_samples: int | None = None,
    ) -> None:
        self.examples: list[Example] = [ex for _, exs in sources for ex in exs]
        if not self.examples:
            raise ValueError("no usable examples")
        self.seq_length, self.num_pauses, self.pause_id = seq_length, num_pauses, pause_id
        self.eod, self.pad, self.position = eod, pad, position
        self.pack, self.shuffle, self.seed = pack, shuffle, seed
        self.lengths = [ex.length(num_pauses) for ex in self.examples]
        # Per source: its slice of self.examples and its examples per epoch.
        self._sources = []
        start, total = 0, len(self.examples)
        weights = [w for w, _ in sources]
        wsum = sum(w for w in weights if w is not None) if all(w is not None for w in weights) else None
        for w, exs in sources:
            per_epoch = len(exs) if wsum is None else max(1, round(w / wsum * total))
            self._sources.append((start, len(exs), per_epoch))
            start += len(exs)
        self._epochs: dict[int, list[list[int]]] = {}
        self._starts = [0]  # first sample index of each epoch planned so far
        self.num_samples = num_samples if num_samples is not None else self.samples_per_epoch(0)

    # ----------------------------------------------------------------- order
    def _rng(self, epoch: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 8, epoch, stream])

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """The epoch's samples, each a list of example indices (one unless packed)."""
        if epoch not in self._epochs:
            if not self.shuffle:
                order = np.arange(len(self.examples))
            else:
                picks = []
                for s, (start, size, per_epoch) in enumerate(self._sources):
                    # Cycle through this source's own permutations for as many as its weight asks.
                    reps = math.ceil(per_epoch / size)
                    draws = [self._rng(epoch * 1000 + r, s + 1).permutation(size) for r in range(reps)]
                    picks.append(start + np.concatenate(draws)[:per_epoch])
                merged = np.concatenate(picks)
                order = merged[self._rng(epoch, 0).permutation(len(merged))]
            order = [int(i) for i in order]
            if self.pack:
                plan = pack_first_fit(order, self.lengths, self.seq_length)
            else:
                plan = [[i] for i in order]
            self._epochs[epoch] = plan
        return self._epochs[epoch]

    def samples_per_epoch(self, epoch: int) -> int:
        return len(self.epoch_plan(epoch))

    def locate(self, index: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of the run's sample ``index``."""
        epoch = 0
        while True:
            if epoch + 1 >= len(self._starts):
                self._starts.append(self._starts[-1] + self.samples_per_epoch(epoch))
            if index < self._starts[epoch + 1]:
                return epoch, index - self._starts[epoch]
            epoch += 1

    def samples_in_epochs(self, epochs: int) -> int:
        self.locate(0)
        while len(self._starts) <= epochs:
            self._starts.append(self._starts[-1] + self.samples_per_epoch(len(self._starts) - 1))
        return self._starts[epochs]

    # ------------------------------------------------------------- samples
    def __len__(self) -> int:
        return self.num_samples

    def members(self, index: int) -> list[int]:
        """Example indices in sample ``index`` (empty for a validation padding sample)."""
        if not self.shuffle:
            plan = self.epoch_plan(0)
            return plan[index] if index < len(plan) else []
        epoch, i = self.locate(index)
        return self.epoch_plan(epoch)[i]

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        s = self.seq_length
        tokens = np.full(s, self.pad, dtype=np.int64)
        labels = np.full(s, self.pad, dtype=np.int64)
        loss_mask = np.zeros(s, dtype=np.float32)
        position_ids = np.zeros(s, dtype=np.int64)
        cu = self._fill(index, tokens, labels, loss_mask, position_ids)
        sample = {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.from_numpy(position_ids if self.pack else np.arange(s, dtype=np.int64)),
        }
        if self.pack:
            sample["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32)
        return sample

    def _fill(self, index: int, tokens, labels, loss_mask, position_ids) -> list[int]:
        """Write sample ``index`` into the given rows; return its example boundaries."""
        s = self.seq_length
        cu = [0]
        for idx in self.members(index):
            t, lab, m = example_arrays(
                self.examples[idx], self.num_pauses, self.pause_id, self.eod, self.position
            )
            a, b = cu[-1], cu[-1] + len(t)
            tokens[a:b], labels[a:b], loss_mask[a:b] = t, lab, m
            position_ids[a:b] = np.arange(len(t))
            cu.append(b)
        if cu[-1] < s:  # padding: its own segment when packed
            position_ids[cu[-1] :] = np.arange(s - cu[-1])
            cu.append(s)
        return cu

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """The collated microbatch of ``indices`` -- what ``collate([self[i] for i in indices])``
        gives, written straight into batch arrays (a tenth of a 2-layer model's step otherwise)."""
        import torch

        from megatron_pause.training.batches import collate

        if self.pack:  # rows carry their own cu_seqlens
            return collate([self[i] for i in indices])
        n, s = len(indices), self.seq_length
        tokens = np.full((n, s), self.pad, dtype=np.int64)
        labels = np.full((n, s), self.pad, dtype=np.int64)
        loss_mask = np.zeros((n, s), dtype=np.float32)
        scratch = np.zeros(s, dtype=np.int64)  # unpacked samples use plain positions
        for row, index in enumerate(indices):
            self._fill(index, tokens[row], labels[row], loss_mask[row], scratch)
        return {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.from_numpy(np.tile(np.arange(s, dtype=np.int64), (n, 1))),
        }


def check_reject_fraction(
    rejects: RejectLog, accepted: int, max_bad_fraction: float | None, what: str
) -> None:
    total = accepted + rejects.rejected
    fraction = rejects.rejected / total if total else 0.0
    if max_bad_fraction is not None and fraction > max_bad_fraction:
        raise TooManyRejects(
            f"{what}: {rejects.rejected} of {total} examples rejected ({100 * fraction:.3g}%, limit "
            f"--max-bad-fraction {max_bad_fraction}): {rejects.summary()}"
        )
