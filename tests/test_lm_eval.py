"""lm-evaluation-harness with the ``pause-hf`` model on the exported tiny model, offline.

Runs the example tasks (examples/lm_eval: one generation, one multiple-choice
task over a local JSONL) with 0 and 10 pauses, and records what reaches the
model: the last M context ids of every log-likelihood and generation request
must be the pause id, and no generated id may be the pause.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("lm_eval.models.huggingface")

from megatron_pause.testing import run_distributed  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = os.path.join(REPO, "examples", "lm_eval")
PAUSE = 4  # <pause> of the sample tokenizer


def _save(rank, world, root):
    from megatron_pause.config import ModelConfig, ParallelConfig, PretrainConfig, TokenizerConfig
    from megatron_pause.distributed import destroy_distributed, init_distributed
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.training.checkpoint import save_checkpoint

    model = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                        num_query_groups=2, seq_length=128)  # fmt: skip
    tokenizer = os.path.join(REPO, "examples", "data", "sample_tokenizer.model")
    cfg = PretrainConfig(model=model, tokenizer=TokenizerConfig("SentencePieceTokenizer", tokenizer))
    init_distributed(ParallelConfig(), model.num_layers, seed=4)
    chunks = build_model_chunks(model, transformer_config(model, ParallelConfig()), 8064)
    save_checkpoint(root, 0, chunks, None, None, {"iteration": 0}, cfg.to_dict())
    destroy_distributed()


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from megatron_pause.conversion.export import export_checkpoint

    root = tmp_path_factory.mktemp("lm_eval")
    run_distributed(_save, 1, str(root / "ckpt"))
    export_checkpoint(str(root / "ckpt"), str(root / "hf"))
    return str(root / "hf")


@pytest.mark.parametrize("num_pauses", [0, 10])
def test_lm_eval_runs_example_tasks_with_pauses_at_the_end_of_every_context(
    hf_model, num_pauses, monkeypatch
):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from megatron_pause.hf.lm_eval_model import PauseHFLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(TASKS)  # the task's data_files path is relative
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    contexts: dict[str, list[list[int]]] = {"loglikelihood": [], "generate": []}
    generated: list[list[int]] = []
    real_ll, real_gen = PauseHFLM._loglikelihood_tokens, PauseHFLM._model_generate
    real_call = PauseHFLM._model_call
    model_inputs: list[list[int]] = []

    def spy_ll(self, requests, **kw):
        contexts["loglikelihood"] += [list(ctx) for _, ctx, _ in requests]
        return real_ll(self, requests, **kw)

    def spy_call(self, inps, attn_mask=None, labels=None):
        model_inputs.extend(inps.tolist())
        return real_call(self, inps, attn_mask, labels)

    def spy_gen(self, context, max_length, stop, **kw):
        contexts["generate"] += context.tolist()
        out = real_gen(self, context, max_length, stop, **kw)
        generated.extend(out[:, context.shape[1] :].tolist())
        return out

    monkeypatch.setattr(PauseHFLM, "_loglikelihood_tokens", spy_ll)
    monkeypatch.setattr(PauseHFLM, "_model_call", spy_call)
    monkeypatch.setattr(PauseHFLM, "_model_generate", spy_gen)
    try:
        results = lm_eval.simple_evaluate(
            model="pause-hf",
            model_args=f"pretrained={hf_model},num_pauses={num_pauses},add_bos_token=False,dtype=float32",
            tasks=["pause_toy_gen", "pause_toy_mc"],
            task_manager=TaskManager(
                include_path=TASKS, include_defaults=False
            ),  # skip indexing ~14k built-in YAMLs
            device="cpu",
            batch_size=4,
        )
    finally:
        torch.set_num_threads(threads)
    assert set(results["results"]) == {"pause_toy_gen", "pause_toy_mc"}
    assert 0.0 <= results["results"]["pause_toy_mc"]["acc,none"] <= 1.0
    assert len(contexts["loglikelihood"]) == 12 * 4 and len(contexts["generate"]) == 12
    for kind, rows in contexts.items():
        for ids in rows:
            tail = ids[len(ids) - num_pauses :] if num_pauses else []
            assert tail == [PAUSE] * num_pauses, f"{kind} context ends {ids[-12:]}"
            if num_pauses:
                assert ids[-num_pauses - 1] != PAUSE  # exactly M pauses: the real text comes before them
    # What reached the model for scoring: each context (pauses included) then its continuation.
    for ctx in contexts["loglikelihood"]:
        assert any(row[: len(ctx)] == ctx for row in model_inputs)
    assert generated and all(PAUSE not in row for row in generated)


def test_pause_hf_is_registered():
    from lm_eval.api.registry import get_model

    import megatron_pause.hf.lm_eval_model  # noqa: F401

    assert get_model("pause-hf").__name__ == "PauseHFLM"
