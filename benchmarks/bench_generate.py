"""Generation throughput on CPU: our KV-cached engine, its uncached reference, and Hugging Face
``generate`` on the same weights.

For each model preset the script builds our GPTModel (random weights, the bundled sample
tokenizer's vocabulary), copies the weights into a ``transformers`` ``LlamaForCausalLM`` (the
Llama-style default architecture maps 1:1), checks that both give the same logits, then times
greedy decoding of fixed-length prompts followed by M pauses, ``--new-tokens`` tokens each
(eod ignored, ``<pause>`` and the padded vocabulary suppressed on both sides), at each batch
size. Reported: generated tokens/s (new tokens x batch / wall time, prefill included; the best of
``--repeats`` runs after a warm-up), ``ours/HF``: the geometric mean over the repeats of HF's
time / ours with the two run back to back in each repeat, and its 95% confidence interval (this
machine's speed drifts by 10-20% between blocks of runs; adjacent runs see the same), and whether
the token ids agree with HF. The uncached reference (full recomputation per token) is timed once.

    python benchmarks/bench_generate.py [--presets tiny,130m] [--batches 1,16] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "examples/data/sample_tokenizer.model")


def to_hf_llama(model, cfg, padded_vocab: int):
    """A ``LlamaForCausalLM`` holding the weights of a TP1/PP1 megatron GPTModel, mapped by the
    conversion's weight map (proven by logits in tests/test_conversion.py), which works on the
    on-disk (TE) parameter names."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_pause.conversion import llama
    from megatron_pause.conversion.export import llama_shape
    from megatron_pause.models.te_names import state_dict_to_te

    m = cfg.model
    shape = llama_shape(m, padded_vocab)
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=padded_vocab,
            hidden_size=m.hidden_size,
            intermediate_size=m.ffn_hidden_size,
            num_hidden_layers=m.num_layers,
            num_attention_heads=shape.num_attention_heads,
            num_key_value_heads=shape.num_query_groups,
            head_dim=shape.head_dim,
            max_position_embeddings=m.max_position_embeddings,
            rms_norm_eps=m.norm_epsilon,
            rope_theta=float(m.rotary_base),
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
        )  # fmt: skip
    ).eval()
    sd = state_dict_to_te({k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")})
    out = {
        llama.HF_EMBEDDING: sd[llama.EMBEDDING],
        llama.HF_FINAL_NORM: sd[llama.FINAL_NORM],
        llama.HF_LM_HEAD: sd[llama.OUTPUT_LAYER],
    }
    for i in range(m.num_layers):
        layer = {suffix: sd[f"{llama.LAYER_PREFIX}{i}.{suffix}"] for suffix in llama.LAYER_PARAMS}
        out.update(llama.hf_layer_from_megatron(layer, i, shape))
    missing, unexpected = hf.load_state_dict({k: v.clone() for k, v in out.items()}, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    return hf


def build_pair(model_cfg, tok):
    """Process groups (one rank), our GPTModel in eval mode with random weights, and the HF copy
    of it: ``(model, hf, padded_vocab)``."""
    from megatron_pause.config import PretrainConfig, TokenizerConfig
    from megatron_pause.distributed import init_distributed
    from megatron_pause.models.gpt import build_model_chunks, transformer_config

    cfg = PretrainConfig(model=model_cfg, tokenizer=TokenizerConfig(tokenizer_model=TOKENIZER))
    init_distributed(cfg.parallel, cfg.model.num_layers, 1234)
    padded = tok.padded_vocab_size()
    (model,) = build_model_chunks(cfg.model, transformer_config(cfg.model, cfg.parallel), padded)
    model.eval()
    return model, to_hf_llama(model, cfg, padded), padded


def _paired(ours, theirs, repeats: int):
    """Both after a warm-up, then ``repeats`` rounds of one run each, back to back (the order
    alternating): ``(best ours, best theirs, (theirs/ours, 95% CI), ours' result, theirs' result)``."""
    r_ours, r_theirs = ours(), theirs()
    t_ours, t_theirs, ratios = [], [], []
    for i in range(repeats):
        for fn, times in ((ours, t_ours), (theirs, t_theirs))[:: 1 if i % 2 == 0 else -1]:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        ratios.append(t_theirs[-1] / t_ours[-1])
    return min(t_ours), min(t_theirs), _ratio_ci(ratios), r_ours, r_theirs


def _ratio_ci(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of the paired ratios and its 95% t-interval (on the log ratios)."""
    from megatron_pause.evaluation.report import t_quantile_975

    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    half = (
        t_quantile_975(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        if len(logs) > 1
        else 0.0
    )
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def _bench(rank: int, world: int, args) -> list[dict]:
    import torch

    from megatron_pause.config import ModelConfig, model_preset
    from megatron_pause.inference.engine import PauseGenerator
    from megatron_pause.tokenizer import build_tokenizer

    torch.set_num_threads(args.threads)
    tok = build_tokenizer("SentencePieceTokenizer", TOKENIZER)
    rows = []
    for preset in args.presets:
        model_cfg = model_preset(preset) if preset != "58m" else ModelConfig(
            num_layers=8, hidden_size=512, ffn_hidden_size=1408, num_attention_heads=8, seq_length=1024
        )  # fmt: skip
        model, hf, padded = build_pair(model_cfg, tok)
        gen = PauseGenerator(model, tok, padded, max_batch_size=max(args.batches), stop_at_eod=False)
        params = sum(p.numel() for p in model.parameters())
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(10, tok.base_vocab_size, (max(args.batches), args.prompt_len), generator=g)
        with torch.no_grad():  # the same weights give the same logits
            x = ids[:1, :16]
            ours = model(x, torch.arange(16)[None], None)
            theirs = hf(x).logits
        logit_diff = float((ours - theirs).abs().max())
        suppress = [tok.pause_id, *range(tok.vocab_size, padded)]
        for batch in args.batches:
            prompts = [row.tolist() for row in ids[:batch]]
            n = args.new_tokens
            hf_in = torch.tensor([p + [tok.pause_id] * args.pauses for p in prompts])

            def run_hf(hf_in=hf_in, n=n, hf=hf, suppress=suppress):
                with torch.no_grad():
                    out = hf.generate(
                        hf_in, attention_mask=torch.ones_like(hf_in), do_sample=False, max_new_tokens=n,
                        min_new_tokens=n, eos_token_id=None, pad_token_id=0, suppress_tokens=suppress,
                        use_cache=True,
                    )  # fmt: skip
                return out[:, hf_in.shape[1] :].tolist()

            def run_ours(prompts=prompts, n=n, gen=gen, cache=True):
                return [c.tokens for c in gen.generate(prompts, args.pauses, n, use_cache=cache)]

            t, t_hf, ratio, ours_tokens, hf_tokens = _paired(run_ours, run_hf, args.repeats)
            timings = [("cached", t, ratio, ours_tokens)]
            # The uncached reference recomputes every position each step: at 130M x batch 16 that
            # is minutes per run on one thread, so it is timed where it stays cheap.
            if not args.skip_uncached and (batch == 1 or params < 20e6):
                t0 = time.perf_counter()
                uncached_tokens = run_ours(cache=False)
                t_unc = time.perf_counter() - t0
                timings.append(("uncached", t_unc, (t_hf / t_unc,) * 3, uncached_tokens))
            for name, t, ratio, ours_tokens in timings:
                rows.append(dict(
                    preset=preset, params_m=params / 1e6, batch=batch, variant=name,
                    ours_tok_s=batch * n / t, hf_tok_s=batch * n / t_hf, ratio=ratio[0],
                    ratio_ci95=ratio[1:],
                    same_tokens=ours_tokens == hf_tokens, logit_diff=logit_diff,
                ))  # fmt: skip
                r = rows[-1]
                print(
                    f"{preset:>5} ({r['params_m']:.1f}M) batch {batch:>2} {name:>8}: ours {r['ours_tok_s']:7.1f} tok/s, "
                    f"HF {r['hf_tok_s']:7.1f} tok/s, ours/HF {r['ratio']:.2f} [{ratio[1]:.2f}, {ratio[2]:.2f}], "
                    f"same tokens {r['same_tokens']}, "
                    f"max |logit diff| {logit_diff:.1e}",
                    flush=True,
                )
        from megatron_pause.distributed import destroy_distributed

        destroy_distributed()
    return rows


def main() -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="tiny,130m", type=lambda s: s.split(","))
    p.add_argument("--batches", default="1,16", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--pauses", type=int, default=10)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-uncached", action="store_true")
    args = p.parse_args()
    sys.path.insert(0, REPO)
    from megatron_pause import platform
    from megatron_pause.testing import run_distributed

    platform.install()
    run_distributed(_bench, 1, args, timeout=24 * 3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
