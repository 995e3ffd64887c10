"""Task files: JSON lines, one example each, checked line by line.

Two task types, recognised by their keys:

* generation: ``{"prompt": str, "answer": str}`` or ``{"prompt": str, "answers": [str, ...]}``
  (scored by exact match / F1 over the gold answers, or by the final number);
* multiple choice: ``{"prompt": str, "choices": [str, ...], "label": int}``
  (scored by the log-likelihood of each choice).

An optional ``"id"`` is carried into the predictions. Any malformed line is an error naming
the file and line: a silently skipped example would change the metric.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from megatron_pause.data.task_formats import iter_json_objects

GENERATION = "generation"
MULTIPLE_CHOICE = "multiple_choice"


class TaskFileError(ValueError):
    pass


@dataclass
class Example:
    index: int  # 0-based position in the file (blank lines excluded)
    id: str
    prompt: str
    answers: list[str] = field(default_factory=list)  # gold answers (generation)
    choices: list[str] = field(default_factory=list)  # multiple choice
    label: int | None = None

    @property
    def kind(self) -> Literal["generation", "multiple_choice"]:
        return MULTIPLE_CHOICE if self.choices else GENERATION


def iter_json_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line; a line that is not a JSON object is an
    error naming ``path:line``."""
    yield from iter_json_objects(path, TaskFileError)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def parse_example(obj: dict[str, Any], index: int, where: str) -> Example:
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
        raise TaskFileError(f"{where}: 'prompt' must be a string")
    ex_id = str(obj.get("id", index))
    if "choices" in obj:
        choices, label = obj["choices"], obj.get("label")
        if not _strings(choices) or len(choices) < 2 or not all(choices):
            raise TaskFileError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise TaskFileError(
                f"{where}: 'label' must be an integer index into 'choices' (0..{len(choices) - 1})"
            )
        return Example(index, ex_id, prompt, choices=list(choices), label=label)
    if "answers" in obj:
        answers = obj["answers"]
        if not _strings(answers) or not answers:
            raise TaskFileError(f"{where}: 'answers' must be a non-empty list of strings")
    elif "answer" in obj:
        if not isinstance(obj["answer"], str):
            raise TaskFileError(f"{where}: 'answer' must be a string")
        answers = [obj["answer"]]
    else:
        raise TaskFileError(
            f"{where}: an example needs 'answer'/'answers' (generation) or 'choices' + 'label' (multiple choice)"
        )
    return Example(index, ex_id, prompt, answers=list(answers))


def read_task(path: str) -> list[Example]:
    """All examples of a task file, which must hold a single task type."""
    examples: list[Example] = []
    for lineno, obj in iter_json_lines(path):
        ex = parse_example(obj, len(examples), f"{path}:{lineno}")
        if examples and ex.kind != examples[0].kind:
            raise TaskFileError(
                f"{path}:{lineno}: a {ex.kind} example in a {examples[0].kind} task (one task type per file)"
            )
        examples.append(ex)
    if not examples:
        raise TaskFileError(f"{path}: no examples")
    return examples
