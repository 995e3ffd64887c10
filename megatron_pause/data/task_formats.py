"""Readers for the official files of the paper's nine downstream tasks -> task examples.

Each reader turns one official file (one split, as distributed by the dataset's authors) into
examples in our task format (:mod:`megatron_pause.evaluation.tasks`), with the task types the
paper used: decoding + exact match / F1 for the QA tasks (SQuAD, CoQA, CommonsenseQA, GSM8k,
LAMBADA, WebQuestions, Natural Questions), log-likelihood ranking for HellaSwag and PIQA.

An example is ``{"id", "prompt", "answers"}`` (generation) or ``{"id", "prompt", "choices",
"label"}`` (multiple choice); :func:`train_record` turns either into a finetuning line
``{"id", "prompt", "answer"}``. Nothing is downloaded. Malformed input raises
:class:`TaskFormatError` naming the file and line (or entry); examples that cannot be scored
(a SQuAD 2.0 question without an answer, a CoQA turn answered "unknown") are skipped and counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


class TaskFormatError(ValueError):
    pass


@dataclass
class Converted:
    examples: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _json_file(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TaskFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    except OSError as e:
        raise TaskFormatError(f"cannot read {path}: {e.strerror}") from e


def iter_json_objects(path: str, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of a JSON-lines file; a line that is not
    a JSON object raises ``error`` naming ``path:line``. The one reader behind task preparation
    (official JSONL formats) and evaluation (our task files)."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from e
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(obj, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _json_lines(path: str) -> Iterator[tuple[str, dict]]:
    for lineno, obj in iter_json_objects(path, TaskFormatError):
        yield f"{path}:{lineno}", obj


def _get(obj: dict, key: str, where: str, kind: type | tuple = str) -> Any:
    if key not in obj:
        raise TaskFormatError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise TaskFormatError(f"{where}: {key!r} should be {getattr(kind, '__name__', kind)}")
    return value


def _qa_prompt(question: str, context: str | None = None) -> str:
    q = f"Question: {question.strip()}\nAnswer:"
    return f"Context: {context.strip()}\n{q}" if context else q


# ------------------------------------------------------------------ generation tasks


def squad(path: str, **_: Any) -> Converted:
    """SQuAD v1.1 (``train-v1.1.json``/``dev-v1.1.json``): every question with its gold answers."""
    out = Converted()
    data = _json_file(path)
    articles = _get(data, "data", path, list) if isinstance(data, dict) else None
    if articles is None:
        raise TaskFormatError(f"{path}: expected an object with 'data' (SQuAD format)")
    for a, article in enumerate(articles):
        for p, para in enumerate(_get(article, "paragraphs", f"{path}: data[{a}]", list)):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = _get(para, "context", where)
            for q, qa in enumerate(_get(para, "qas", where, list)):
                w = f"{where}.qas[{q}]"
                answers = [_get(x, "text", w) for x in _get(qa, "answers", w, list)]
                if not answers:
                    out.skip("question without an answer")
                    continue
                out.examples.append(
                    {
                        "id": str(qa.get("id", w)),
                        "prompt": _qa_prompt(_get(qa, "question", w), context),
                        "answers": answers,
                    }
                )
    return out


def coqa(path: str, **_: Any) -> Converted:
    """CoQA (``coqa-train-v1.0.json``/``coqa-dev-v1.0.json``): one example per turn, the story and
    the earlier turns (with their gold answers) in the prompt; golds = the answer plus the
    additional answers of that turn."""
    out = Converted()
    data = _json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise TaskFormatError(f"{path}: expected an object with 'data' (CoQA format)")
    for s, story in enumerate(data["data"]):
        where = f"{path}: data[{s}]"
        text = _get(story, "story", where)
        questions = _get(story, "questions", where, list)
        answers = _get(story, "answers", where, list)
        if len(questions) != len(answers):
            raise TaskFormatError(f"{where}: {len(questions)} questions but {len(answers)} answers")
        extra = story.get("additional_answers", {}) or {}
        history = ""
        for t, (q, a) in enumerate(zip(questions, answers)):
            w = f"{where}.questions[{t}]"
            question, answer = _get(q, "input_text", w), _get(a, "input_text", f"{where}.answers[{t}]")
            golds = [answer] + [
                alt[t]["input_text"] for alt in extra.values() if isinstance(alt, list) and len(alt) > t
            ]
            golds = [g for g in golds if g.strip().lower() != "unknown"]
            prompt = f"{text.strip()}\n\n{history}Q: {question.strip()}\nA:"
            history += f"Q: {question.strip()}\nA: {answer.strip()}\n\n"
            if not golds:
                out.skip("turn answered 'unknown'")
                continue
            out.examples.append(
                {"id": f"{story.get('id', s)}_{q.get('turn_id', t + 1)}", "prompt": prompt, "answers": golds}
            )
    return out


def gsm8k(path: str, **_: Any) -> Converted:
    """GSM8k (``train.jsonl``/``test.jsonl``): the gold is the full solution ending in ``#### N``
    (evaluate with ``--answer-format number``)."""
    out = Converted()
    for i, (where, obj) in enumerate(_json_lines(path)):
        answer = _get(obj, "answer", where)
        if "####" not in answer:
            raise TaskFormatError(f"{where}: the answer has no '#### <number>' line")
        out.examples.append(
            {"id": str(i), "prompt": _qa_prompt(_get(obj, "question", where)), "answers": [answer]}
        )
    return out


def lambada(path: str, **_: Any) -> Converted:
    """LAMBADA: ``lambada_test_plain_text.txt`` (one passage per line) or JSON lines with ``text``;
    the target is the passage's last word, decoded and scored by exact match."""
    out = Converted()
    if path.endswith(".txt"):
        try:
            with open(path, encoding="utf-8") as f:
                lines = [(f"{path}:{n}", {"text": line}) for n, line in enumerate(f, 1) if line.strip()]
        except OSError as e:
            raise TaskFormatError(f"cannot read {path}: {e.strerror}") from e
    else:
        lines = list(_json_lines(path))
    for i, (where, obj) in enumerate(lines):
        text = _get(obj, "text", where).strip()
        if " " not in text:
            raise TaskFormatError(f"{where}: a passage needs at least two words")
        context, word = text.rsplit(" ", 1)
        out.examples.append({"id": str(i), "prompt": context, "answers": [word]})
    return out


_DESCRIPTION = re.compile(r'\(description (?:"((?:[^"\\]|\\.)*)"|([^()\s]+))\)')


def webquestions(path: str, **_: Any) -> Converted:
    """WebQuestions (``webquestions.examples.{train,test}.json``): answers from ``targetValue``'s
    ``(description ...)`` entries."""
    out = Converted()
    data = _json_file(path)
    if not isinstance(data, list):
        raise TaskFormatError(f"{path}: expected a JSON list (WebQuestions format)")
    for i, obj in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(obj, dict):
            raise TaskFormatError(f"{where}: expected an object")
        target = _get(obj, "targetValue", where)
        answers = [a or b for a, b in _DESCRIPTION.findall(target)]
        if not answers:
            raise TaskFormatError(f"{where}: no (description ...) in targetValue {target!r}")
        out.examples.append(
            {"id": str(i), "prompt": _qa_prompt(_get(obj, "utterance", where)), "answers": answers}
        )
    return out


def natural_questions(path: str, **_: Any) -> Converted:
    """Natural Questions open (``NQ-open.{train,dev}.jsonl``): ``question`` and the list ``answer``."""
    out = Converted()
    for i, (where, obj) in enumerate(_json_lines(path)):
        answers = _get(obj, "answer", where, list)
        if not answers or not all(isinstance(a, str) for a in answers):
            raise TaskFormatError(f"{where}: 'answer' should be a non-empty list of strings")
        q = _get(obj, "question", where).strip()
        out.examples.append(
            {"id": str(i), "prompt": _qa_prompt(q if q.endswith("?") else q + "?"), "answers": answers}
        )
    return out


def commonsense_qa(path: str, **_: Any) -> Converted:
    """CommonsenseQA (``train_rand_split.jsonl``/``dev_rand_split.jsonl``): decoded, as in the
    paper: the prompt lists the lettered choices, the gold is the correct choice's text."""
    out = Converted()
    for where, obj in _json_lines(path):
        q = _get(obj, "question", where, dict)
        choices = _get(q, "choices", where, list)
        key = _get(obj, "answerKey", where)
        by_label = {_get(c, "label", where): _get(c, "text", where) for c in choices}
        if key not in by_label:
            raise TaskFormatError(
                f"{where}: answerKey {key!r} is not one of the choice labels {sorted(by_label)}"
            )
        listed = "\n".join(f"{label}. {text}" for label, text in by_label.items())
        prompt = f"Question: {_get(q, 'stem', where).strip()}\n{listed}\nAnswer:"
        out.examples.append({"id": str(obj.get("id", where)), "prompt": prompt, "answers": [by_label[key]]})
    return out


# ------------------------------------------------------------------ scoring tasks


def piqa(path: str, labels: str | None = None, **_: Any) -> Converted:
    """PIQA (``train.jsonl`` + ``train-labels.lst``, ``valid.jsonl`` + ``valid-labels.lst``):
    ranked by log-likelihood of ``sol1``/``sol2`` after the goal."""
    if labels is None:
        raise TaskFormatError("PIQA needs --labels (the -labels.lst file beside the .jsonl)")
    try:
        with open(labels, encoding="utf-8") as f:
            gold = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise TaskFormatError(f"cannot read {labels}: {e.strerror}") from e
    rows = list(_json_lines(path))
    if len(rows) != len(gold):
        raise TaskFormatError(f"{path} has {len(rows)} examples but {labels} has {len(gold)} labels")
    out = Converted()
    for i, ((where, obj), label) in enumerate(zip(rows, gold)):
        if label not in ("0", "1"):
            raise TaskFormatError(f"{labels}:{i + 1}: label {label!r} is not 0 or 1")
        choices = [_get(obj, "sol1", where), _get(obj, "sol2", where)]
        prompt = f"Question: {_get(obj, 'goal', where).strip()}\nAnswer:"
        out.examples.append(
            {"id": str(obj.get("id", i)), "prompt": prompt, "choices": choices, "label": int(label)}
        )
    return out


def _hellaswag_clean(text: str) -> str:
    # WikiHow contexts carry markup such as "[title]" and "[step]"; a title ends a sentence.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return re.sub(r"\s{2,}", " ", text).strip()


def hellaswag(path: str, **_: Any) -> Converted:
    """HellaSwag (``hellaswag_{train,val}.jsonl``): ranked by log-likelihood of the four endings
    after ``activity_label: ctx``."""
    out = Converted()
    for where, obj in _json_lines(path):
        endings = _get(obj, "endings", where, list)
        label = obj.get("label")
        if not isinstance(label, int) or not 0 <= label < len(endings):
            raise TaskFormatError(f"{where}: 'label' should index 'endings' (the test split has no labels)")
        ctx = _get(obj, "ctx_a", where) + " " + _get(obj, "ctx_b", where).capitalize()
        prompt = _hellaswag_clean(_get(obj, "activity_label", where) + ": " + ctx)
        choices = [_hellaswag_clean(" " + e) for e in endings]
        out.examples.append(
            {"id": str(obj.get("ind", where)), "prompt": prompt, "choices": choices, "label": label}
        )
    return out


READERS: dict[str, Callable[..., Converted]] = {
    "squad": squad,
    "coqa": coqa,
    "commonsense_qa": commonsense_qa,
    "piqa": piqa,
    "hellaswag": hellaswag,
    "gsm8k": gsm8k,
    "lambada": lambada,
    "webquestions": webquestions,
    "natural_questions": natural_questions,
}
# --answer-format for evaluate.py
ANSWER_FORMAT = {"gsm8k": "number"}


def train_record(example: dict[str, Any]) -> dict[str, Any]:
    """The finetuning line for an example: its first gold answer, or its correct choice."""
    answer = example["choices"][example["label"]] if "choices" in example else example["answers"][0]
    return {"id": example["id"], "prompt": example["prompt"], "answer": answer}
