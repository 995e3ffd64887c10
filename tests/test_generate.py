"""Pause-inference on one process: KV cache, batching by length, pauses in and never out, stops.

Every test runs in a forked 1-rank gloo world on a tiny checkpoint (tests/inference_worlds.py).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from inference_worlds import open_model, prompts, tiny_checkpoint

from megatron_pause.testing import run_distributed

N_NEW = 10


@pytest.fixture(scope="module")
def ckpt() -> str:
    return tiny_checkpoint()


def _reference_greedy(model, tok, padded_vocab, prompt: list[int], n: int) -> list[int]:
    """Plain greedy decoding written independently of the engine: a full forward of the whole
    sequence per token, argmax over the real vocabulary without <pause>."""
    ids = list(prompt)
    out = []
    allowed = torch.ones(padded_vocab, dtype=torch.bool)
    allowed[tok.vocab_size :] = False
    allowed[tok.pause_id] = False
    for _ in range(n):
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x, torch.arange(len(ids))[None], None)[0, -1]
        t = int(logits.masked_fill(~allowed, float("-inf")).argmax())
        if t == tok.eod:
            break
        out.append(t)
        ids.append(t)
    return out


def _boost(model, token_id: int) -> None:
    """Make ``token_id`` the most likely next token at every position (a wrapped forward)."""
    real_forward = model.forward

    def forward(*args, **kwargs):
        logits = real_forward(*args, **kwargs)
        logits[..., token_id] += 1e4
        return logits

    model.forward = forward


def _cache_batch_body(rank, world, ckpt):
    loaded, g = open_model(ckpt, max_batch=5)
    ps = prompts(loaded.tokenizer, 11)
    res = {}
    for m in (0, 3):
        cached = [c.tokens for c in g.generate(ps, m, N_NEW)]
        uncached = [c.tokens for c in g.generate(ps, m, N_NEW, use_cache=False)]
        single = [g.generate([p], m, N_NEW)[0].tokens for p in ps]
        res[m] = (cached, uncached, single)
    from megatron_pause.inference import plain_linears

    plain_linears.uninstall(loaded.model)  # the reference runs megatron's own linears
    res["reference"] = [
        _reference_greedy(loaded.model, loaded.tokenizer, loaded.padded_vocab_size, p, N_NEW) for p in ps
    ]
    res["lengths"] = [len(p) for p in ps]
    return res


def test_cached_equals_uncached_and_batched_equals_single(ckpt):
    res = run_distributed(_cache_batch_body, 1, ckpt)[0]
    assert len(set(res["lengths"])) > 5  # really mixed lengths in one batch
    for m in (0, 3):
        cached, uncached, single = res[m]
        assert cached == uncached
        assert cached == single
        assert all(len(c) > 0 for c in cached)
    assert res[0][0] == res["reference"]  # M = 0 is plain greedy generation
    assert res[3][0] != res[0][0]  # the pauses change what the model computes


def _logits_and_grads(model, x, pos):
    """No-grad logits, then the gradients of a loss on a forward with autograd on."""
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits = model(x, pos, None)
    for p in model.parameters():
        p.requires_grad_(True)
    model(x, pos, None).float().square().mean().backward()
    return logits, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _plain_linears_body(rank, world, ckpt):
    """Logits and gradients with and without the plain no-grad linears, and how many autograd
    Function calls a generation makes."""
    from megatron_pause.inference import plain_linears

    loaded, g = open_model(ckpt, max_batch=4)
    model = loaded.model
    x = torch.tensor([prompts(loaded.tokenizer, 1)[0]])
    pos = torch.arange(x.shape[1])[None]

    with_plain = _logits_and_grads(model, x, pos)
    plain_linears.uninstall(model)
    megatron = _logits_and_grads(model, x, pos)
    installed = plain_linears.install(model)

    calls = []
    real_apply = torch.autograd.Function.apply.__func__

    def counting_apply(cls, *args, **kwargs):
        calls.append(cls.__name__)
        return real_apply(cls, *args, **kwargs)

    torch.autograd.Function.apply = classmethod(counting_apply)
    forwards = g.forward_calls
    try:
        g.generate(prompts(loaded.tokenizer, 3), 2, 4)
    finally:
        torch.autograd.Function.apply = classmethod(real_apply)
    return {
        "forwards": g.forward_calls - forwards,
        "mapping_calls": sum("ModelParallelRegion" in name for name in calls),
        "installed": installed,
        "logits_max_diff": float((with_plain[0] - megatron[0]).abs().max()),
        "grads_equal": len(with_plain[1]) == len(megatron[1]) > 0
        and all(torch.equal(a, b) for a, b in zip(with_plain[1], megatron[1])),
        "function_calls": sorted(set(calls)),
    }


def test_plain_linears_compute_megatrons_forward_without_autograd_functions(ckpt):
    res = run_distributed(_plain_linears_body, 1, ckpt)[0]
    assert res["installed"] > 0
    assert res["logits_max_diff"] <= 1e-6
    assert res["grads_equal"]  # with gradients on, megatron's own path runs: training is unaffected
    assert not any("Linear" in name for name in res["function_calls"]), res["function_calls"]
    # At TP1 the linears' copy-to / reduce-from mappings (identities) are gone too.
    assert res["forwards"] > 0 and res["mapping_calls"] == 0, res


def _spy_body(rank, world, ckpt):
    loaded, g = open_model(ckpt)
    seen = []
    real_forward = loaded.model.forward

    def spy(input_ids, *args, **kwargs):
        seen.append(input_ids.detach().clone())
        return real_forward(input_ids, *args, **kwargs)

    loaded.model.forward = spy
    out = {}
    p = loaded.tokenizer.tokenize("Q: Where is the river? A:")
    for m in (0, 10):
        seen.clear()
        g.generate([p], m, 4)
        out[m] = ([t.tolist() for t in seen], p)
        seen.clear()
        g.loglikelihoods([(p, loaded.tokenizer.tokenize("here"))], m)
        out[("score", m)] = [t.tolist() for t in seen]
    return out, loaded.tokenizer.pause_id


def test_ids_reaching_the_model_end_in_exactly_m_pauses(ckpt):
    out, pause = run_distributed(_spy_body, 1, ckpt)[0]
    for m in (0, 10):
        calls, prompt = out[m]
        prefill = calls[0][0]
        assert prefill == prompt + [pause] * m  # the prompt ids, then exactly M pauses
        # every later step feeds one generated token, never a pause
        assert all(len(c[0]) == 1 and c[0][0] != pause for c in calls[1:])
        scored = out[("score", m)][0][0]
        assert scored[: len(prompt) + m] == prompt + [pause] * m
        assert pause not in scored[len(prompt) + m :]


def _suppress_body(rank, world, ckpt):
    from megatron_pause.inference.engine import PauseGenerator

    loaded, g = open_model(ckpt)
    tok = loaded.tokenizer
    _boost(loaded.model, tok.pause_id)  # <pause> is now the most likely output everywhere
    ps = prompts(tok, 4)
    suppressed = [c.tokens for c in g.generate(ps, 2, 6)]
    free = PauseGenerator(loaded.model, tok, loaded.padded_vocab_size, suppress_pause=False)
    emitted = [c.tokens for c in free.generate(ps, 2, 6)]
    return suppressed, emitted, tok.pause_id


def test_pause_is_never_emitted(ckpt):
    suppressed, emitted, pause = run_distributed(_suppress_body, 1, ckpt)[0]
    assert all(pause not in c and len(c) == 6 for c in suppressed)
    # Without the mask the same model does emit pauses: the mask is what keeps them out.
    assert all(c == [pause] * 6 for c in emitted)


def _stop_body(rank, world, ckpt):
    loaded, g = open_model(ckpt)
    tok = loaded.tokenizer
    p = tok.tokenize("The history of the region")
    free = g.generate([p], 1, 8)[0]
    # A stop string: the text of the 4th generated token.
    stop = tok.detokenize(free.tokens[:4])[len(tok.detokenize(free.tokens[:3])) :].strip()
    stopped = g.generate([p], 1, 8, stop=[stop])[0]
    # eod as the most likely token from the start: an empty completion ending with "eod".
    _boost(loaded.model, tok.eod)
    eod = g.generate([p, p[:2]], 1, 8)
    return free, stop, stopped, eod


def test_stops_at_stop_strings_and_eod(ckpt):
    free, stop, stopped, eod = run_distributed(_stop_body, 1, ckpt)[0]
    assert free.finish_reason == "length" and len(free.tokens) == 8
    assert stop and stopped.finish_reason == "stop"
    assert stop not in stopped.text and free.text.startswith(stopped.text)
    assert len(stopped.tokens) == 4 and stopped.tokens == free.tokens[:4]
    assert [(c.tokens, c.text, c.finish_reason) for c in eod] == [([], "", "eod")] * 2


def _sampling_body(rank, world, ckpt):
    from megatron_pause.inference.sampling import SamplingConfig

    loaded, g = open_model(ckpt)
    ps = prompts(loaded.tokenizer, 6)

    def run(**kw):
        return [c.tokens for c in g.generate(ps, 2, 8, SamplingConfig(**kw))]

    return {
        "greedy": run(),
        "top_k1": run(temperature=1.0, top_k=1),
        "a": run(temperature=1.5, seed=1),
        "a_again": run(temperature=1.5, seed=1),
        "b": run(temperature=1.5, seed=2),
        "nucleus": run(temperature=1.5, top_p=1e-6, seed=3),
        "a_uncached": [
            c.tokens for c in g.generate(ps, 2, 8, SamplingConfig(temperature=1.5, seed=1), use_cache=False)
        ],
        "pause": loaded.tokenizer.pause_id,
    }


def test_sampling_is_seeded_and_top_k_top_p_restrict(ckpt):
    r = run_distributed(_sampling_body, 1, ckpt)[0]
    assert r["top_k1"] == r["greedy"]  # top-k 1 is argmax
    assert r["nucleus"] == r["greedy"]  # a tiny top-p keeps only the most likely token
    assert r["a"] == r["a_again"] == r["a_uncached"]
    assert r["a"] != r["b"] and r["a"] != r["greedy"]
    assert all(r["pause"] not in c for c in r["a"] + r["b"])


def _score_body(rank, world, ckpt):
    from megatron_pause.inference.engine import _preallocated_context

    loaded, g = open_model(ckpt, max_batch=3)
    tok, model = loaded.tokenizer, loaded.model
    ctx_ids = tok.tokenize("The cat sat on the")
    conts = [tok.tokenize(t) for t in ("mat", "roof of the old house", "a")]
    m = 2
    got = g.loglikelihoods([(ctx_ids, c) for c in conts], m)
    # Independent reference: one full forward per request, log-softmax without pause/padding.
    ref = []
    for c in conts:
        ids = ctx_ids + [tok.pause_id] * m + c
        with torch.no_grad():
            logits = model(torch.tensor([ids]), torch.arange(len(ids))[None], None)[0].double()
        logits[:, tok.vocab_size :] = float("-inf")
        logits[:, tok.pause_id] = float("-inf")
        lp = logits.log_softmax(-1)
        start = len(ids) - len(c)
        ref.append(sum(float(lp[start - 1 + i, t]) for i, t in enumerate(c)))
        ref_greedy = all(int(lp[start - 1 + i].argmax()) == t for i, t in enumerate(c))
        ref[-1] = (ref[-1], ref_greedy)
    # The trap scoring avoids: a multi-token forward on top of megatron's static KV cache runs
    # without a causal mask, so its logits differ from a full forward.
    ids = ctx_ids + [tok.pause_id] * m + conts[1]
    split = len(ctx_ids) + m
    with torch.no_grad():
        full = model(torch.tensor([ids]), torch.arange(len(ids))[None], None)[0]
        cache = _preallocated_context(model, 1, len(ids))
        model(torch.tensor([ids[:split]]), torch.arange(split)[None], None, inference_context=cache)
        cache.sequence_len_offset = split
        cont = model(
            torch.tensor([ids[split:]]), torch.arange(split, len(ids))[None], None, inference_context=cache
        )[0]
    trap = float((cont[:-1] - full[split:-1]).abs().max())
    return got, ref, trap


def test_loglikelihoods_equal_a_full_forward_and_avoid_the_cache_trap(ckpt):
    got, ref, trap = run_distributed(_score_body, 1, ckpt)[0]
    for (ll, greedy), (ref_ll, ref_greedy) in zip(got, ref):
        assert ll == pytest.approx(ref_ll, abs=1e-4)
        assert greedy == ref_greedy
    assert trap > 1e-2  # megatron's cached multi-token forward is not causal: why scoring never uses it


def test_sequence_parallel_and_virtual_stages_are_refused(ckpt):
    from megatron_pause.models.from_checkpoint import InferenceConfigError, resolve_config

    with pytest.raises(InferenceConfigError, match="--sequence-parallel"):
        resolve_config(ckpt, {"parallel.tensor_model_parallel_size": 2, "parallel.sequence_parallel": True})
    with pytest.raises(InferenceConfigError, match="virtual"):
        resolve_config(ckpt, {"parallel.num_layers_per_virtual_pipeline_stage": 1})
    cfg = resolve_config(ckpt, {"tokenizer.tokenizer_model": "/moved/tok.model"})
    assert cfg.tokenizer.tokenizer_model == "/moved/tok.model"  # a flag overrides the stored value
    assert cfg.model.hidden_size == 64 and cfg.parallel.tensor_model_parallel_size == 1


def _too_long_body(rank, world, ckpt):
    from megatron_pause.inference.engine import PromptTooLong

    loaded, g = open_model(ckpt)
    try:
        g.generate([[5] * 90], 4, 8)
    except PromptTooLong as e:
        return str(e)
    return None


def test_a_prompt_that_does_not_fit_is_a_clear_error(ckpt):
    msg = run_distributed(_too_long_body, 1, ckpt)[0]
    assert msg and "#0" in msg and "96 positions" in msg


def _cli_body(rank, world, argv):
    from megatron_pause.generate import main

    return main(argv)


def test_generate_cli_writes_one_line_per_prompt_in_order(ckpt, tmp_path, capsys):
    texts = ["The cat", "Once upon a time there was", "a", "Numbers: 1, 2,"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out.jsonl"
    argv = ["--load", ckpt, "--prompts-file", str(src), "--inference-pauses", "3", "--max-new-tokens", "6",
            "--inference-max-requests", "3", "--output-file", str(out)]  # fmt: skip
    assert run_distributed(_cli_body, 1, argv) == [0]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["q0", "q1", "q2", "q3"]
    assert [x["prompt"] for x in lines] == texts
    assert all(x["inference_pauses"] == 3 and x["finish_reason"] in ("eod", "stop", "length") for x in lines)
    assert all(isinstance(x["completion"], str) for x in lines) and any(x["completion"] for x in lines)
    assert not os.path.exists(f"{out}.tmp")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    argv_bad = ["--load", ckpt, "--prompts-file", str(bad), "--output-file", str(tmp_path / "o2.jsonl")]
    assert run_distributed(_cli_body, 1, argv_bad) == [2]
    assert not (tmp_path / "o2.jsonl").exists()


def _interactive_body(rank, world, argv):
    import builtins

    from megatron_pause.generate import main

    lines = iter(["The cat", "", "Once upon a time"])

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    builtins.input = fake_input
    return main(argv)


def test_interactive_prompts_from_stdin(ckpt, capfd, tmp_path):
    common = ["--load", ckpt, "--max-new-tokens", "4", "--inference-pauses", "2"]
    assert run_distributed(_interactive_body, 1, [*common, "--interactive"]) == [0]
    printed = capfd.readouterr().out
    out = tmp_path / "o.jsonl"
    argv = [*common, "--prompt", "The cat", "--prompt", "Once upon a time", "--output-file", str(out)]
    assert run_distributed(_cli_body, 1, argv) == [0]
    expected = [json.loads(x)["completion"] for x in out.read_text().splitlines()]
    assert printed == "".join(c + "\n" for c in expected)  # one completion per non-empty line typed


def test_a_tokenizer_that_does_not_fit_the_checkpoint_is_refused(ckpt, tmp_path, capfd):
    """The checkpoint records its tokenizer's vocabulary size and pause id; generating with another
    tokenizer (a wrong --tokenizer-model) would read the wrong embedding rows, so it is refused."""
    import shutil

    from megatron_pause.training.checkpoint import CONFIG_FILE, iteration_dir, latest_iteration

    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    meta_path = os.path.join(iteration_dir(str(copy), latest_iteration(str(copy))), CONFIG_FILE)
    meta = json.loads(open(meta_path).read())
    meta["vocab"] = {"vocab_size": 123, "padded_vocab_size": 128, "pause_id": 122, "tokenizer": "other"}
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    argv = ["--load", str(copy), "--prompt", "The cat", "--max-new-tokens", "2",
            "--output-file", str(tmp_path / "out.jsonl")]  # fmt: skip
    assert run_distributed(_cli_body, 1, argv) == [2]
    err = capfd.readouterr().err
    assert "the tokenizer does not fit" in err and "pause id: checkpoint 122" in err
    assert not (tmp_path / "out.jsonl").exists()


def _split_swiglu_body(rank, world, ckpt):
    """Logits and gradients with and without the split no-grad SwiGLU."""
    from megatron_pause.inference import split_swiglu

    loaded, g = open_model(ckpt, max_batch=4)
    model = loaded.model
    x = torch.tensor([prompts(loaded.tokenizer, 1)[0]] * 3)
    pos = torch.arange(x.shape[1])[None]
    mlps = [
        m
        for m in model.modules()
        if isinstance(m.__dict__.get("forward"), split_swiglu._SplitSwiGLUWhenNoGrad)
    ]
    calls = []  # grad mode of every call of the split path (this forked world's class only)
    real_call = split_swiglu._SplitSwiGLUWhenNoGrad.__call__

    def counted(self, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return real_call(self, *args, **kwargs)

    split_swiglu._SplitSwiGLUWhenNoGrad.__call__ = counted

    split = _logits_and_grads(model, x, pos)
    no_grad_calls = calls.count(False)
    split_swiglu.uninstall(model)
    megatron = _logits_and_grads(model, x, pos)
    return {
        "installed": len(mlps),
        "no_grad_calls": no_grad_calls,
        "logits_max_diff": float((split[0] - megatron[0]).abs().max()),
        "logits_scale": float(megatron[0].abs().max()),
        "grads_equal": len(split[1]) == len(megatron[1]) > 0
        and all(torch.equal(a, b) for a, b in zip(split[1], megatron[1])),
    }


def test_split_swiglu_computes_megatrons_mlp_when_no_grad(ckpt):
    res = run_distributed(_split_swiglu_body, 1, ckpt)[0]
    assert res["installed"] == 2 and res["no_grad_calls"] == 2, res  # both layers took the split path
    assert res["logits_max_diff"] <= 1e-5 * res["logits_scale"], res  # fp32 rounding only
    assert res["grads_equal"]  # with gradients on, megatron's own MLP runs: training is unaffected


def _rotated_cache_body(rank, world, ckpt, interleaved):
    """Prefill + decode logits with keys rotated before caching vs megatron's SelfAttention
    (which caches unrotated keys and rotates the cached prefix every step), and what RoPE is
    applied to during decoding. ``interleaved`` RoPE takes the path that leaves the queries and
    the RoPE arithmetic to megatron."""
    from megatron.core.transformer.attention import SelfAttention

    import megatron_pause.models.self_attention as rotated
    from megatron_pause.inference.engine import _preallocated_context

    loaded, g = open_model(ckpt, max_batch=4)
    model = loaded.model
    model.config.rotary_interleaved = interleaved
    layers = [m for m in model.modules() if isinstance(m, rotated.RotatedKeyCacheSelfAttention)]
    x = torch.randint(
        10, loaded.tokenizer.base_vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)
    )

    def steps():
        ctx = _preallocated_context(model, 2, 20)
        out = [g._forward(x, 0, ctx)]
        for i in range(6):
            out.append(g._forward(x[:, i : i + 1], 12 + i, ctx))
        return torch.stack(out)

    rotated_lengths, cos_tensors = [], []
    real_rotate, real_rope = rotated._rotate, rotated.apply_rotary_pos_emb

    def spy_rotate(t, cos, sin):
        rotated_lengths.append(t.shape[0])
        cos_tensors.append(cos)  # kept alive: identity is meaningful
        return real_rotate(t, cos, sin)

    def spy_rope(t, freqs, **kw):
        rotated_lengths.append(t.shape[0])
        return real_rope(t, freqs, **kw)

    rotated._rotate, rotated.apply_rotary_pos_emb = spy_rotate, spy_rope
    try:
        ours = steps()
    finally:
        rotated._rotate, rotated.apply_rotary_pos_emb = real_rotate, real_rope
    for m in layers:
        m.__class__ = SelfAttention  # megatron's own cache handling, same weights
    theirs = steps()
    full = torch.cat([x, x[:, :6]], dim=1)
    with torch.no_grad():
        uncached = model(full, torch.arange(full.shape[1])[None], None)[:, 11:].float()
    distinct_cos = []
    for c in cos_tensors:
        if not any(c is d for d in distinct_cos):
            distinct_cos.append(c)
    return {
        "layers": len(layers),
        "max_diff": float((ours - theirs).abs().max()),
        "uncached_diff": float((ours.transpose(0, 1) - uncached).abs().max()),
        "rotated_lengths": rotated_lengths,
        "cos_computed": len(distinct_cos),
    }


@pytest.mark.parametrize("interleaved", [False, True], ids=["plain-rope", "interleaved-rope"])
def test_kv_cache_holds_rotated_keys_with_megatrons_results(ckpt, interleaved):
    res = run_distributed(_rotated_cache_body, 1, ckpt, interleaved)[0]
    assert res["layers"] == 2
    assert res["max_diff"] == 0.0  # megatron's arithmetic, bitwise
    assert res["uncached_diff"] <= 1e-4
    # RoPE is applied to each new key once: the 12-token prefill, then one key per decode step
    # per layer (megatron re-rotates the whole cached prefix: 13, 14, ... keys).
    if interleaved:  # keys only; megatron rotates the queries
        assert res["rotated_lengths"] == [12] * 2 + [1] * 2 * 6, res
    else:  # queries and keys, with cos/sin computed once per forward for all layers
        assert res["rotated_lengths"] == [12] * 4 + [1] * 4 * 6, res
        assert res["cos_computed"] == 7, res
