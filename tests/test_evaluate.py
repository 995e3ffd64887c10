"""``megatron_pause.evaluate`` end to end on tiny checkpoints: predictions, results, seeds, resume."""

from __future__ import annotations

import json

import pytest
from inference_worlds import tiny_checkpoint

from megatron_pause.testing import run_distributed

GEN_PROMPTS = ["The cat", "Q: capital of France? A:", "Once upon a time", "Numbers: 1, 2,", "She said", "a"]


def _main(rank, world, argv):
    from megatron_pause.evaluate import main

    return main(argv)


def _evaluate(argv: list[str], world: int = 1) -> int:
    codes = run_distributed(_main, world, argv, timeout=300)
    assert len(set(codes)) == 1
    return codes[0]


def _jsonl(path) -> list[dict]:
    return [json.loads(x) for x in open(path, encoding="utf-8")]


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def ckpts() -> list[str]:
    return [tiny_checkpoint(7), tiny_checkpoint(8)]


def _recompute(preds: list[dict], ckpt: str, m: int, key: str) -> float:
    rows = [p for p in preds if p["checkpoint"] == ckpt and p["inference_pauses"] == m]
    return 100 * sum(p[key] for p in rows) / len(rows)


def test_generation_task_with_seeds_and_resume(ckpts, tmp_path):
    from megatron_pause.evaluation.metrics import squad_scores

    task = tmp_path / "gen.jsonl"
    _write_jsonl(
        task, [{"id": f"g{i}", "prompt": p, "answers": ["zzz", "qqq"]} for i, p in enumerate(GEN_PROMPTS)]
    )
    res, pred = tmp_path / "R.json", tmp_path / "P.jsonl"
    common = ["--task", str(task), "--inference-pauses", "0,2", "--max-new-tokens", "5",
              "--results-file", str(res), "--predictions-file", str(pred), "--inference-max-requests", "4"]  # fmt: skip
    # First pass on one checkpoint: learn its M=0 predictions, make half of them the gold answers.
    assert _evaluate(["--load", ckpts[0], *common]) == 0
    first = {p["index"]: p["prediction"] for p in _jsonl(pred) if p["inference_pauses"] == 0}
    assert all(first.values())
    _write_jsonl(
        task,
        [
            {"id": f"g{i}", "prompt": p, "answers": ["zzz", first[i]] if i % 2 == 0 else ["zzz"]}
            for i, p in enumerate(GEN_PROMPTS)
        ],
    )
    pred.unlink()
    assert _evaluate(["--load", *ckpts, "--label", "seeds", *common]) == 0

    r = json.loads(res.read_text())
    preds = _jsonl(pred)
    assert len(preds) == len(GEN_PROMPTS) * 2 * 2
    assert {(p["checkpoint"], p["inference_pauses"], p["index"]) for p in preds} == {
        (c, m, i) for c in ckpts for m in (0, 2) for i in range(len(GEN_PROMPTS))
    }
    for p in preds:  # every score is recomputable from the line itself
        assert {k: p[k] for k in ("em", "f1")} == squad_scores(p["prediction"], p["answers"])
    assert r["metrics"] == ["em", "f1"] and r["inference_pauses"] == [0, 2]
    c0 = r["checkpoints"][0]["results"]
    assert c0["0"]["em"] == pytest.approx(50.0)  # the gold answers planted above
    for c in r["checkpoints"]:
        for m in (0, 2):
            got = c["results"][str(m)]
            assert got["count"] == len(GEN_PROMPTS) and got["skipped"] == 0
            assert got["em"] == pytest.approx(_recompute(preds, c["load"], m, "em"))
            assert got["f1"] == pytest.approx(_recompute(preds, c["load"], m, "f1"))
    agg = r["aggregate"]["0"]["em"]
    values = [c["results"]["0"]["em"] for c in r["checkpoints"]]
    assert agg["n"] == 2 and agg["ddof"] == 1 and agg["mean"] == pytest.approx(sum(values) / 2)
    table = (tmp_path / "R.md").read_text()
    assert "| M_inf | em | f1 | examples |" in table and "ddof=1" in table
    assert (tmp_path / "R.png").read_bytes()[:4] == b"\x89PNG"

    # Interrupted: only 7 lines survived, the 8th torn mid-write. A rerun completes the rest.
    lines = pred.read_text().splitlines(keepends=True)
    pred.write_text("".join(lines[:7]) + lines[7][:15])
    res.unlink()
    assert _evaluate(["--load", *ckpts, "--label", "seeds", *common]) == 0
    again = _jsonl(pred)
    assert len(again) == len(preds)
    key = lambda p: (p["checkpoint"], p["inference_pauses"], p["index"])  # noqa: E731
    assert sorted(again, key=key) == sorted(preds, key=key)
    assert json.loads(res.read_text()) == r


def test_multiple_choice_task(ckpts, tmp_path):
    task = tmp_path / "mc.jsonl"
    rows = [
        {
            "prompt": "The sky is",
            "choices": ["blue", "a very long sentence about cheese", "green"],
            "label": 0,
        },
        {"prompt": "Two plus two is", "choices": ["four", "five"], "label": 1},
        {"prompt": "Cats like", "choices": ["fish", "to sleep all day", "dogs"], "label": 2},
    ]
    _write_jsonl(task, rows)
    res, pred = tmp_path / "R.json", tmp_path / "P.jsonl"
    argv = ["--load", ckpts[0], "--task", str(task), "--inference-pauses", "0,3", "--results-file", str(res),
            "--predictions-file", str(pred)]  # fmt: skip
    assert _evaluate(argv, world=2) == 0  # two data-parallel ranks share the requests
    r = json.loads(res.read_text())
    preds = _jsonl(pred)
    assert r["metrics"] == ["acc", "acc_norm"] and len(preds) == 6
    for p in preds:
        lls, choices = p["loglikelihoods"], p["choices"]
        best = max(range(len(lls)), key=lambda i: lls[i])
        best_norm = max(range(len(lls)), key=lambda i: lls[i] / len(choices[i]))
        assert p["acc"] == float(best == p["label"]) and p["acc_norm"] == float(best_norm == p["label"])
        assert p["prediction"] == choices[best] and p["answers"] == [choices[p["label"]]]
        assert all(ll < 0 for ll in lls)
    m0 = [p for p in preds if p["inference_pauses"] == 0]
    m3 = [p for p in preds if p["inference_pauses"] == 3]
    assert [p["loglikelihoods"] for p in m0] != [p["loglikelihoods"] for p in m3]  # pauses are there
    for m in ("0", "3"):
        assert r["checkpoints"][0]["results"][m]["acc"] == pytest.approx(
            _recompute(preds, ckpts[0], int(m), "acc")
        )


def test_bad_task_file_exits_with_file_and_line(ckpts, tmp_path, capfd):
    task = tmp_path / "bad.jsonl"
    task.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a", "choices": ["x"], "label": 0}\n')
    argv = ["--load", ckpts[0], "--task", str(task), "--results-file", str(tmp_path / "R.json")]
    assert _evaluate(argv) == 2
    assert f"{task}:2: 'choices' must be" in capfd.readouterr().err
    assert not (tmp_path / "R.json").exists()


def test_number_format_needs_numbers_in_the_answers(ckpts, tmp_path, capfd):
    task = tmp_path / "gsm.jsonl"
    _write_jsonl(task, [{"prompt": "1+1=", "answer": "#### 2"}, {"prompt": "2+2=", "answer": "four"}])
    argv = ["--load", ckpts[0], "--task", str(task), "--answer-format", "number", "--results-file", str(tmp_path / "R.json")]  # fmt: skip
    assert _evaluate(argv) == 2
    assert "example #1 has no number" in capfd.readouterr().err
