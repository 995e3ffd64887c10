"""The paper's metrics, per example, so that every number can be recomputed from the predictions.

* **SQuAD v1.1 exact match and F1**, with the official script's normalisation (``evaluate-v1.1.py``):
  lowercase, drop ASCII punctuation (``string.punctuation``; Unicode punctuation is kept, as in
  the official script), drop the articles *a*, *an*, *the* as whole words, collapse whitespace.
  F1 is over the multiset of whitespace tokens and is 0 when no token overlaps (also when both
  sides are empty); both take the maximum over the gold answers.
* **GSM8k**: the number after the last ``####`` marker, else the last number in the text
  (commas, ``$`` and a trailing period are ignored; ``-`` is kept); correct when prediction and
  gold are the same number.
* **Multiple choice** (lm-evaluation-harness's definitions): ``acc`` picks the choice with the
  highest summed log-likelihood, ``acc_norm`` the highest log-likelihood per character of the
  choice text.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """``{"em", "f1"}`` in [0, 1]: the best over the gold answers."""
    if not answers:
        raise ValueError("no gold answers")
    return {
        "em": max(exact_match(prediction, a) for a in answers),
        "f1": max(f1(prediction, a) for a in answers),
    }


# A number: optional minus, optional $, digits with optional thousands commas, optional decimals.
_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?")


def _canonical(number: str) -> str | None:
    cleaned = number.replace("$", "").replace(",", "").replace(" ", "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_number(text: str) -> str | None:
    """The answer number of a GSM8k-style text, canonical (``"1,000.50"`` -> ``"1000.5"``), or None."""
    marker = text.rfind("####")
    if marker >= 0:
        found = _NUMBER.findall(text[marker + 4 :])
        if found:
            return _canonical(found[0])
    found = _NUMBER.findall(text)
    return _canonical(found[-1]) if found else None


def number_scores(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """``{"correct"}``: 1 when the prediction's number equals a gold answer's number."""
    predicted = extract_number(prediction)
    golds = {extract_number(a) for a in answers} - {None}
    if not golds:
        raise ValueError(f"no number in the gold answers {list(answers)!r}")
    return {"correct": float(predicted is not None and predicted in golds)}


def multiple_choice_scores(
    loglikelihoods: Sequence[float], choices: Sequence[str], label: int
) -> dict[str, float]:
    """``{"acc", "acc_norm"}`` for one example (ties go to the first choice, like ``argmax``)."""
    if len(loglikelihoods) != len(choices):
        raise ValueError("one log-likelihood per choice")

    def argmax(values: Sequence[float]) -> int:
        return max(range(len(values)), key=lambda i: (values[i], -i))

    per_char = [ll / max(len(c), 1) for ll, c in zip(loglikelihoods, choices)]
    return {
        "acc": float(argmax(loglikelihoods) == label),
        "acc_norm": float(argmax(per_char) == label),
    }
