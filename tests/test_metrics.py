"""The metrics against hand-worked expectations, seed aggregation, and task-file checking."""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction

import pytest

from megatron_pause.evaluation import metrics as M
from megatron_pause.evaluation.report import aggregate, t_quantile_975
from megatron_pause.evaluation.tasks import TaskFileError, read_task

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _squad_pairs():
    with open(os.path.join(FIXTURES, "metrics", "squad_v1_pairs.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_squad_v1_em_and_f1_equal_the_official_rules_on_the_fixture():
    pairs = _squad_pairs()
    assert len(pairs) >= 30
    for p in pairs:
        got = M.squad_scores(p["prediction"], p["answers"])
        assert got["em"] == p["em"], p["why"]
        assert got["f1"] == pytest.approx(float(Fraction(p["f1"])), abs=1e-12), p["why"]
    # The official aggregate: the mean over questions, times 100.
    em = 100 * sum(M.squad_scores(p["prediction"], p["answers"])["em"] for p in pairs) / len(pairs)
    assert em == pytest.approx(100 * sum(p["em"] for p in pairs) / len(pairs))


def test_normalisation_details():
    assert M.normalize_answer("The  Cat's   HAT!") == "cats hat"
    assert M.normalize_answer("an\u00a0apple") == "apple"  # NBSP splits like any whitespace
    assert M.normalize_answer("\u201cquoted\u201d") == "\u201cquoted\u201d"  # Unicode quotes stay
    with pytest.raises(ValueError):
        M.squad_scores("x", [])


@pytest.mark.parametrize(
    "text,number",
    [
        ("Natalia sold 48/2 = 24 clips in May.\nAltogether 48+24 = 72 clips.\n#### 72", "72"),
        ("#### 1,000", "1000"),
        ("The answer is $18.", "18"),
        ("#### -5", "-5"),
        ("In the end he owes -$3", "-3"),
        ("The total is $1,234.50", "1234.5"),
        ("#### 10.00", "10"),
        ("first 3 then 7, so the answer is 12", "12"),
        ("#### 5 apples (not 6)", "5"),
        ("There are 3 apples. #### ", "3"),
        ("The year 2,023.", "2023"),
        ("0.5", "0.5"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_gsm8k_number_extraction(text, number):
    assert M.extract_number(text) == number


def test_gsm8k_scores():
    gold = ["She has 5 + 67 = 72 marbles.\n#### 72"]
    assert M.number_scores("so the answer is 72.0", gold) == {"correct": 1.0}
    assert M.number_scores("#### 72", gold) == {"correct": 1.0}
    assert M.number_scores("I think 71", gold) == {"correct": 0.0}
    assert M.number_scores("I don't know", gold) == {"correct": 0.0}
    with pytest.raises(ValueError, match="no number"):
        M.number_scores("72", ["seventy-two"])


def test_multiple_choice_acc_and_acc_norm():
    # acc: highest total log-likelihood; acc_norm: highest per character of the choice.
    assert M.multiple_choice_scores([-4.0, -5.0], ["a", "b" * 10], 1) == {"acc": 0.0, "acc_norm": 1.0}
    assert M.multiple_choice_scores([-1.0, -2.0, -3.0], ["a", "bb", "ccc"], 0) == {
        "acc": 1.0,
        "acc_norm": 1.0,
    }
    assert M.multiple_choice_scores([-2.0, -2.0], ["x", "y"], 1) == {
        "acc": 0.0,
        "acc_norm": 0.0,
    }  # ties: first


def test_seed_aggregate_mean_std_ci():
    a = aggregate([1.0, 2.0, 3.0, 4.0])
    assert a["mean"] == 2.5 and a["ddof"] == 1 and a["n"] == 4
    assert a["std"] == pytest.approx(math.sqrt(5 / 3))
    half = 3.182 * math.sqrt(5 / 3) / 2
    assert a["ci95"] == pytest.approx([2.5 - half, 2.5 + half])
    one = aggregate([7.0])
    assert one["mean"] == 7.0 and one["std"] is None and one["ci95"] is None


def test_t_quantiles_match_published_tables():
    # t(0.975, df) from standard tables; df > 30 comes from the expansion, not the table.
    for df, t in (
        (1, 12.706),
        (4, 2.776),
        (30, 2.042),
        (40, 2.021),
        (60, 2.000),
        (120, 1.980),
        (10**6, 1.960),
    ):
        assert t_quantile_975(df) == pytest.approx(t, abs=1.5e-3)


@pytest.mark.parametrize(
    "content,line,message",
    [
        ('{"prompt": "a", "answer": "b"}\n{"prompt": "c", "answer": "d"\n', 2, "not valid JSON"),
        ('{"prompt": "a", "answer": "b"}\n\n["x"]\n', 3, "expected a JSON object"),
        ('{"prompt": "a"}\n', 1, "needs 'answer'"),
        ('{"prompt": 1, "answer": "b"}\n', 1, "'prompt' must be a string"),
        ('{"prompt": "a", "choices": ["x", "y"], "label": 2}\n', 1, "'label' must be an integer"),
        ('{"prompt": "a", "choices": ["x"], "label": 0}\n', 1, "at least two"),
        ('{"prompt": "a", "answers": []}\n', 1, "non-empty list"),
        (
            '{"prompt": "a", "answer": "b"}\n{"prompt": "a", "choices": ["x", "y"], "label": 0}\n',
            2,
            "one task type",
        ),
    ],
)
def test_bad_task_files_name_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "task.jsonl"
    path.write_text(content)
    with pytest.raises(TaskFileError, match=message) as err:
        read_task(str(path))
    assert f"{path}:{line}:" in str(err.value)


def test_task_file_reading(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "q1", "prompt": "p", "answer": "a"}\n\n{"prompt": "p2", "answers": ["x", "y"]}\n')
    ex = read_task(str(path))
    assert [(e.index, e.id, e.answers, e.kind) for e in ex] == [
        (0, "q1", ["a"], "generation"),
        (1, "1", ["x", "y"], "generation"),
    ]
    with pytest.raises(TaskFileError, match="no examples"):
        (tmp_path / "empty.jsonl").write_text("\n")
        read_task(str(tmp_path / "empty.jsonl"))
    with pytest.raises(TaskFileError, match="cannot read"):
        read_task(str(tmp_path / "missing.jsonl"))
