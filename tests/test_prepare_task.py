"""tools/prepare_task.py on hand-written fixtures in each task's official format."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from megatron_pause.data import task_formats as T
from megatron_pause.evaluation.tasks import read_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures", "tasks")
TOOL = os.path.join(REPO, "tools", "prepare_task.py")


def _tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_task", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fix(name: str) -> str:
    return os.path.join(FIX, name)


def test_squad_keeps_every_gold_answer_and_counts_unanswerable():
    out = T.squad(_fix("squad-dev-v1.1.json"))
    assert [e["id"] for e in out.examples] == ["q1", "q2"]
    assert out.examples[0]["answers"] == ["Denver Broncos", "The Denver Broncos"]
    assert out.examples[0]["prompt"].startswith("Context: Super Bowl 50")
    assert out.examples[0]["prompt"].endswith("Question: Which team won Super Bowl 50?\nAnswer:")
    assert out.skipped == {"question without an answer": 1}


def test_coqa_turns_carry_history_and_additional_answers():
    out = T.coqa(_fix("coqa-dev-v1.0.json"))
    assert [e["id"] for e in out.examples] == ["s1_1", "s1_2"]
    first, second = out.examples
    assert first["answers"] == ["white", "white cat", "White"]
    assert first["prompt"].endswith("Q: What color was Cotton?\nA:")
    assert "Q: What color was Cotton?\nA: white\n\nQ: Where did she live?\nA:" in second["prompt"]
    assert second["answers"] == ["in a barn", "a barn", "barn"]
    assert out.skipped == {"turn answered 'unknown'": 1}


def test_commonsense_qa_is_decoded_with_the_choice_text_as_gold():
    out = T.commonsense_qa(_fix("csqa-dev_rand_split.jsonl"))
    assert [e["answers"] for e in out.examples] == [["enforce"], ["race track"]]
    assert (
        "\nA. ignore\nB. enforce\nC. authoritarian\nD. yell at\nE. avoid\nAnswer:"
        in out.examples[0]["prompt"]
    )


def test_piqa_and_hellaswag_are_scoring_tasks():
    piqa = T.piqa(_fix("piqa-valid.jsonl"), labels=_fix("piqa-valid-labels.lst"))
    assert [(e["label"], len(e["choices"])) for e in piqa.examples] == [(0, 2), (0, 2)]
    assert piqa.examples[1]["choices"] == ["use a sharp knife.", "use a sharp spoon."]
    hs = T.hellaswag(_fix("hellaswag_val.jsonl"))
    assert hs.examples[0]["prompt"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert (
        hs.examples[0]["label"] == 3
        and hs.examples[0]["choices"][3] == "starts pulling up roofing on a roof."
    )
    # WikiHow markup: [title] ends a sentence, other [tags] are removed.
    assert hs.examples[1]["prompt"] == "Personal Care and Style: How to dye your hair. Choose a color."
    assert hs.examples[1]["choices"][:2] == ["Pick a shade close to your own.", "Paint the wall."]


def test_gsm8k_lambada_webquestions_nq():
    gsm = T.gsm8k(_fix("gsm8k-test.jsonl"))
    assert gsm.examples[0]["answers"][0].endswith("#### 72")
    lam = T.lambada(_fix("lambada_test_plain_text.txt"))
    assert [e["answers"] for e in lam.examples] == [["sign"], ["dock"]]
    assert lam.examples[0]["prompt"].endswith("like this is some sort of")
    wq = T.webquestions(_fix("webquestions.examples.test.json"))
    assert [e["answers"] for e in wq.examples] == [
        ["Jazmine Bieber", "Jaxon Bieber"],
        ["Padm\u00e9 Amidala"],
        ["1974"],
    ]
    nq = T.natural_questions(_fix("NQ-open.dev.jsonl"))
    assert nq.examples[0]["prompt"] == "Question: when was the last time anyone was on the moon?\nAnswer:"
    assert nq.examples[1]["answers"] == ["Bobby Scott", "Bob Russell"]


@pytest.mark.parametrize(
    "task,name,labels,kind",
    [
        ("squad", "squad-dev-v1.1.json", None, "generation"),
        ("coqa", "coqa-dev-v1.0.json", None, "generation"),
        ("commonsense_qa", "csqa-dev_rand_split.jsonl", None, "generation"),
        ("piqa", "piqa-valid.jsonl", "piqa-valid-labels.lst", "multiple_choice"),
        ("hellaswag", "hellaswag_val.jsonl", None, "multiple_choice"),
        ("gsm8k", "gsm8k-test.jsonl", None, "generation"),
        ("lambada", "lambada_test_plain_text.txt", None, "generation"),
        ("webquestions", "webquestions.examples.test.json", None, "generation"),
        ("natural_questions", "NQ-open.dev.jsonl", None, "generation"),
    ],
)
def test_every_task_converts_to_a_readable_eval_file_and_a_train_file(tmp_path, task, name, labels, kind):
    ev, tr = tmp_path / "eval.jsonl", tmp_path / "train.jsonl"
    extra = ["--labels", _fix(labels)] if labels else []
    tool = _tool()
    for split, out in (("eval", ev), ("train", tr)):
        argv = ["--task", task, "--input", _fix(name), *extra, "--split", split, "--output", str(out)]
        assert tool.main(argv) == 0
        assert not os.path.exists(f"{out}.tmp")
    examples = read_task(str(ev))  # what evaluate reads
    assert examples and all(e.kind == kind for e in examples)
    train = [json.loads(x) for x in tr.read_text().splitlines()]
    assert len(train) == len(examples)
    for t, e in zip(train, examples):
        assert set(t) == {"id", "prompt", "answer"} and t["prompt"] == e.prompt
        assert t["answer"] == (e.choices[e.label] if e.choices else e.answers[0])


def test_bad_official_files_name_file_and_line(tmp_path):
    bad = tmp_path / "gsm.jsonl"
    bad.write_text('{"question": "q", "answer": "1 #### 1"}\n{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(T.TaskFormatError, match=rf"{bad}:2: the answer has no '####"):
        T.gsm8k(str(bad))
    hs = tmp_path / "hs.jsonl"
    hs.write_text('{"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x", "y"]}\n')
    with pytest.raises(T.TaskFormatError, match=rf"{hs}:1: 'label'"):
        T.hellaswag(str(hs))
    sq = tmp_path / "squad.json"
    sq.write_text('{"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q"}]}]}]}')
    with pytest.raises(T.TaskFormatError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing 'answers'"):
        T.squad(str(sq))
    with pytest.raises(T.TaskFormatError, match="needs --labels"):
        T.piqa(_fix("piqa-valid.jsonl"))
    short = tmp_path / "labels.lst"
    short.write_text("0\n")
    with pytest.raises(T.TaskFormatError, match="2 examples but"):
        T.piqa(_fix("piqa-valid.jsonl"), labels=str(short))
    res = subprocess.run(
        [sys.executable, TOOL, "--task", "gsm8k", "--input", str(bad), "--split", "eval", "--output", str(tmp_path / "o.jsonl")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and f"{bad}:2:" in res.stderr and not (tmp_path / "o.jsonl").exists()
