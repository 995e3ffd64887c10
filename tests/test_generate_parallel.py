"""Greedy completions and choice scores at TP2, PP2, TP2 x PP2 and DP2 equal one process's.

50 prompts of mixed lengths, with and without pauses, in fp32; the checkpoint is saved once at
TP1 and resharded by megatron's distributed checkpoint on load.
"""

from __future__ import annotations

import pytest
from inference_worlds import open_model, prompts, tiny_checkpoint

from megatron_pause.testing import run_distributed

N_PROMPTS = 50
N_NEW = 8
PAUSES = (0, 4)


def _body(rank, world, ckpt, tp, pp):
    loaded, g = open_model(ckpt, tp=tp, pp=pp, max_batch=8)
    tok = loaded.tokenizer
    ps = prompts(tok, N_PROMPTS)
    out = {m: [c.tokens for c in g.generate(ps, m, N_NEW)] for m in PAUSES}
    out["uncached"] = [c.tokens for c in g.generate(ps[:10], 4, N_NEW, use_cache=False)]
    choices = [tok.tokenize(t) for t in ("yes", "no, not at all", "maybe")]
    out["scores"] = g.loglikelihoods([(p, c) for p in ps[:6] for c in choices], 3)
    return out


@pytest.fixture(scope="module")
def reference():
    ckpt = tiny_checkpoint()
    return ckpt, run_distributed(_body, 1, ckpt, 1, 1)[0]


@pytest.mark.parametrize(
    "tp,pp,world", [(2, 1, 2), (1, 2, 2), (2, 2, 4), (1, 1, 2)], ids=["TP2", "PP2", "TP2xPP2", "DP2"]
)
def test_layout_matches_one_process(reference, tp, pp, world):
    ckpt, ref = reference
    assert ref["uncached"] == ref[4][:10]
    results = run_distributed(_body, world, ckpt, tp, pp, timeout=300)
    for rank, got in enumerate(results):  # every rank returns the full, identical result
        for m in PAUSES:
            assert got[m] == ref[m], f"rank {rank}, M={m}"
        assert got["uncached"] == ref["uncached"]
        for (ll, greedy), (ref_ll, ref_greedy) in zip(got["scores"], ref["scores"]):
            assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
