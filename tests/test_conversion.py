"""Checkpoint <-> Hugging Face Llama conversion, proven in fp32 against the megatron model.

One tiny random model (2 layers, 8 heads in 2 key/value groups, untied, the
sample tokenizer's 8,000 ids padded to 8,064 rows, ``<pause>`` = id 4, init std
large enough for O(1-10) logits, norm weights perturbed so a norm mix-up shows)
is saved by a TP1 run; a TP2xPP2 world loads and re-saves the same weights.
Both are exported with the real tool. The gate (max |logit difference| <= 1e-4
over two 256-token sequences containing pauses, identical argmax everywhere)
is shown to be sensitive by four deliberately wrong mappings that must fail it.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from megatron_pause.config import ModelConfig, ParallelConfig, PretrainConfig, TokenizerConfig  # noqa: E402
from megatron_pause.testing import run_distributed  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "examples", "data", "sample_tokenizer.model")
VOCAB = 8000  # sample tokenizer; <pause> is its piece 4
PAUSE = 4
EOD = 2
SEQ = 256
TOL = 1e-4
MODEL = ModelConfig(
    num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=8, num_query_groups=2,
    seq_length=SEQ, init_method_std=0.25, rotary_base=10000, norm_epsilon=1e-5,
)  # fmt: skip
PROMPTS = ["The capital of France is", "Once upon a time, in a land far away", "1 + 1 ="]
GEN_TOKENS = 10


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: on a loaded 2-core machine a second intra-op thread mostly spins (10-40x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config() -> PretrainConfig:
    return PretrainConfig(model=MODEL, tokenizer=TokenizerConfig("SentencePieceTokenizer", TOKENIZER))


def _tokens() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(5, VOCAB, (2, SEQ), generator=g)
    tokens[torch.rand(tokens.shape, generator=g) < 0.1] = PAUSE
    return tokens


def _build(tp: int, pp: int):
    from megatron_pause.distributed import init_distributed
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.tokenizer import padded_vocab_size

    par = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    init_distributed(par, MODEL.num_layers, seed=21)
    return build_model_chunks(MODEL, transformer_config(MODEL, par), padded_vocab_size(VOCAB + 0, 128, tp))


@torch.no_grad()
def _greedy(model, prompt: list[int], num_pauses: int) -> list[int]:
    """Full-forward greedy decoding on the megatron model, the pause forbidden."""
    ids, out = [*prompt, *[PAUSE] * num_pauses], []
    for _ in range(GEN_TOKENS):
        logits = model(torch.tensor([ids]), torch.arange(len(ids))[None], None)[0, -1, :VOCAB].clone()
        logits[PAUSE] = float("-inf")
        nxt = int(logits.argmax())
        out.append(nxt)
        if nxt == EOD:
            break
        ids.append(nxt)
    return out


def _save_tp1(rank, world, root, prompts):
    from megatron_pause.distributed import destroy_distributed
    from megatron_pause.training.checkpoint import save_checkpoint

    chunks = _build(1, 1)
    model = chunks[0]
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name:  # ones at init: a swapped norm would not show
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    save_checkpoint(
        root, 0, chunks, None, None, {"iteration": 0, "pause_targets_seen": 123}, _config().to_dict()
    )
    model.eval()
    with torch.no_grad():
        tokens = _tokens()
        logits = model(tokens, torch.arange(SEQ).expand(2, SEQ), None)
    greedy = {m: [_greedy(model, p, m) for p in prompts] for m in (0, 10)}
    destroy_distributed()
    return logits, greedy


def _resave(rank, world, tp, pp, src, dst):
    from megatron_pause.distributed import destroy_distributed
    from megatron_pause.training.checkpoint import load_checkpoint, save_checkpoint

    chunks = _build(tp, pp)
    load_checkpoint(src, chunks, load_rng=False)
    save_checkpoint(
        dst, 0, chunks, None, None, {"iteration": 0, "pause_targets_seen": 123}, _config().to_dict()
    )
    destroy_distributed()


def _cli():
    """tools/convert_checkpoint.py as a module (the tool is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint", os.path.join(REPO, "tools", "convert_checkpoint.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _export(load: str, output: str, *extra: str) -> None:
    assert _cli().main(["export", "--load", load, "--output", output, *extra]) == 0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from megatron_pause.tokenizer import build_tokenizer

    tok = build_tokenizer("SentencePieceTokenizer", TOKENIZER)
    prompts = [tok.tokenize(p) for p in PROMPTS]
    root = tmp_path_factory.mktemp("conversion")
    tp1, tp2pp2 = str(root / "ckpt_tp1"), str(root / "ckpt_tp2pp2")
    [(logits, greedy)] = run_distributed(_save_tp1, 1, tp1, prompts)
    run_distributed(_resave, 4, 2, 2, tp1, tp2pp2)
    out = {"root": root, "ckpt_tp1": tp1, "logits": logits, "greedy": greedy, "prompt_ids": prompts}
    for name, ckpt in (("hf_tp1", tp1), ("hf_tp2pp2", tp2pp2)):
        out[name] = str(root / name)
        _export(ckpt, out[name], "--max-shard-size", "400KB")
    return out


def _hf_model(folder: str, **config_changes):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    for key, value in config_changes.items():
        if key == "rope_theta":
            config.rope_parameters["rope_theta"] = value
        else:
            setattr(config, key, value)
    return AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()


@torch.no_grad()
def _max_diff(model, reference: torch.Tensor) -> tuple[float, bool]:
    logits = model(_tokens()).logits
    ref = reference[..., :VOCAB]
    assert logits.shape == ref.shape
    return float((logits - ref).abs().max()), bool(torch.equal(logits.argmax(-1), ref.argmax(-1)))


@pytest.mark.parametrize("export", ["hf_tp1", "hf_tp2pp2"])
def test_exported_logits_match_megatron_in_fp32(exported, export):
    reference = exported["logits"]
    scale = float(reference[..., :VOCAB].abs().max())
    assert 1 < scale < 50, f"logits should be O(1-10), got max |logit| {scale}"
    model = _hf_model(exported[export])
    assert type(model).__name__ == "LlamaForCausalLM"
    diff, same_argmax = _max_diff(model, reference)
    print(f"{export}: max |logit diff| {diff:.2e} at logit scale {scale:.1f}")
    assert diff <= TOL
    assert same_argmax


def _contiguous_qkv_split(model, ckpt: str) -> None:
    """The classic bug: cut megatron's grouped QKV rows into [Q | K | V] blocks."""
    from megatron_pause.conversion.dist_reader import DistCheckpointReader, resolve_checkpoint_dir

    qkv = DistCheckpointReader(resolve_checkpoint_dir(ckpt)).read(
        "decoder.layers.self_attention.linear_qkv.weight"
    )
    q_rows = MODEL.hidden_size
    kv_rows = MODEL.num_query_groups * MODEL.hidden_size // MODEL.num_attention_heads
    for i, layer in enumerate(model.model.layers):
        q, k, v = qkv[i].split([q_rows, kv_rows, kv_rows])
        layer.self_attn.q_proj.weight.data.copy_(q)
        layer.self_attn.k_proj.weight.data.copy_(k)
        layer.self_attn.v_proj.weight.data.copy_(v)


def _swap_gate_up(model, ckpt: str) -> None:
    for layer in model.model.layers:
        gate, up = layer.mlp.gate_proj.weight.data.clone(), layer.mlp.up_proj.weight.data.clone()
        layer.mlp.gate_proj.weight.data.copy_(up)
        layer.mlp.up_proj.weight.data.copy_(gate)


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"edit": _contiguous_qkv_split}, id="contiguous-qkv-split"),
        pytest.param({"edit": _swap_gate_up}, id="gate-up-swapped"),
        pytest.param({"config": {"rope_theta": 10000.0 * 50}}, id="rope-base-x50"),
        pytest.param({"config": {"rms_norm_eps": 1e-4}}, id="norm-epsilon-x10"),
    ],
)
def test_wrong_mappings_fail_the_fp32_gate(exported, broken):
    model = _hf_model(exported["hf_tp1"], **broken.get("config", {}))
    if "edit" in broken:
        with torch.no_grad():
            broken["edit"](model, exported["ckpt_tp1"])
    diff, _ = _max_diff(model, exported["logits"])
    print(f"broken mapping: max |logit diff| {diff:.2e}")
    assert diff > 10 * TOL


def test_exports_of_tp1_and_tp2xpp2_saves_are_bit_identical(exported):
    a, b = exported["hf_tp1"], exported["hf_tp2pp2"]
    files = sorted(os.listdir(a))
    assert files == sorted(os.listdir(b))
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    for name in files:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), f"{name} differs between the TP1 and TP2xPP2 exports"


def test_export_folder_contents(exported):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    folder = exported["hf_tp1"]
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["vocab_size"], config["pause_token_id"], config["num_key_value_heads"]) == (
        VOCAB,
        PAUSE,
        2,
    )
    assert config["rope_parameters"]["rope_theta"] == 10000.0 and config["rms_norm_eps"] == 1e-5
    assert config["tie_word_embeddings"] is False
    assert config["megatron_pause"]["pause_targets_seen"] == 123
    gen = json.load(open(os.path.join(folder, "generation_config.json")))
    assert gen["eos_token_id"] == EOD and gen.get("do_sample", False) is False
    assert "pause" in open(os.path.join(folder, "README.md")).read().lower()
    index = json.load(open(os.path.join(folder, "model.safetensors.index.json")))
    assert len(index["weight_map"]) == 2 + 9 * MODEL.num_layers + 1
    with safe_open(os.path.join(folder, index["weight_map"]["lm_head.weight"]), "pt") as f:
        assert f.get_tensor("lm_head.weight").shape == (VOCAB, MODEL.hidden_size)  # padding rows dropped
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == VOCAB and tok.convert_tokens_to_ids("<pause>") == PAUSE


def test_greedy_generation_with_pauses_matches_megatron(exported):
    from transformers import AutoTokenizer

    from megatron_pause.hf import generate_with_pauses

    model = _hf_model(exported["hf_tp1"])
    tok = AutoTokenizer.from_pretrained(exported["hf_tp1"])
    for num_pauses in (0, 10):
        # Batched with left padding (prompts of different lengths) and given as text.
        got = generate_with_pauses(model, tok, PROMPTS, num_pauses=num_pauses, max_new_tokens=GEN_TOKENS)
        for g, prompt_ids, want in zip(got, exported["prompt_ids"], exported["greedy"][num_pauses]):
            assert g.prompt_ids == prompt_ids + [PAUSE] * num_pauses
            assert g.token_ids == want, f"{num_pauses} pauses"
            assert PAUSE not in g.token_ids
    assert exported["greedy"][0] != exported["greedy"][10]  # the pauses change what the model says


def test_bf16_export_is_the_rounded_fp32_export(exported, tmp_path):
    from safetensors.torch import load_file

    out = str(tmp_path / "bf16")
    _export(exported["ckpt_tp1"], out, "--dtype", "bf16")
    bf16 = load_file(os.path.join(out, "model.safetensors"))
    fp32 = {}
    for f in os.listdir(exported["hf_tp1"]):
        if f.endswith(".safetensors"):
            fp32.update(load_file(os.path.join(exported["hf_tp1"], f)))
    assert bf16.keys() == fp32.keys()
    for k in fp32:
        assert bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], fp32[k].to(torch.bfloat16)), k
    assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "bfloat16"


def test_export_refuses_bad_input(exported, tmp_path, capsys):
    convert_checkpoint = _cli()
    assert (
        convert_checkpoint.main(["export", "--load", str(tmp_path / "none"), "--output", str(tmp_path / "o")])
        == 2
    )
    assert "no checkpoint" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep")
    assert convert_checkpoint.main(["export", "--load", exported["ckpt_tp1"], "--output", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err and (busy / "x").read_text() == "keep"


# ---------------------------------------------------------------------------
# Import (HF -> checkpoint) and round trips


def _import(rank, world, hf_dir, save):
    from megatron_pause.conversion.hf_import import import_hf

    r = import_hf(hf_dir, save)
    return r.pause_id, r.pause_added, r.vocab_size, r.model, r.model_flags()


def _safetensors(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out


def test_export_import_export_reproduces_every_tensor(exported, tmp_path):
    ckpt, again = str(tmp_path / "imported"), str(tmp_path / "again")
    [(pause_id, added, vocab, model, _)] = run_distributed(_import, 1, exported["hf_tp1"], ckpt)
    assert (pause_id, added, vocab) == (PAUSE, False, VOCAB)
    assert (model.num_query_groups, model.rotary_base, model.norm_epsilon) == (2, 10000, 1e-5)
    _export(ckpt, again)
    a, b = _safetensors(exported["hf_tp1"]), _safetensors(again)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The pause row was trained (123 pause targets): it must survive, not be re-initialised.
    assert json.load(open(os.path.join(again, "config.json")))["megatron_pause"]["pause_targets_seen"] == 123


def _foreign_hf_model(folder: str) -> int:
    """A random Llama with a byte-level BPE tokenizer that has no <pause>: GQA, tied
    embeddings, RoPE base 50000, eps 1e-6. Returns its vocabulary size."""
    import gzip

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    with gzip.open(os.path.join(REPO, "examples", "data", "sample_corpus.jsonl.gz"), "rt") as f:
        lines = [json.loads(line)["text"] for _, line in zip(range(200), f)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        lines,
        trainers.BpeTrainer(
            vocab_size=500,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0}, tie_word_embeddings=True,
        initializer_range=0.25, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(3)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape))
    model.save_pretrained(folder)
    return len(tok)


def _imported_logits(rank, world, ckpt, tokens):
    """Load an imported checkpoint at TP2 (weights only, as --finetune does) and return full logits."""
    from megatron.core import parallel_state

    from megatron_pause.config import PretrainConfig
    from megatron_pause.distributed import destroy_distributed, init_distributed
    from megatron_pause.models.gpt import build_model_chunks, transformer_config
    from megatron_pause.tokenizer import padded_vocab_size
    from megatron_pause.training.checkpoint import checkpoint_config, load_checkpoint

    cfg = PretrainConfig.from_dict(checkpoint_config(ckpt)["config"])
    par = ParallelConfig(tensor_model_parallel_size=2)
    init_distributed(par, cfg.model.num_layers, seed=1)
    chunks = build_model_chunks(cfg.model, transformer_config(cfg.model, par), padded_vocab_size(501, 128, 2))
    load_checkpoint(ckpt, chunks, load_rng=False, load_optimizer_state=False)
    with torch.no_grad():
        local = chunks[0](tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)
        parts = [torch.empty_like(local) for _ in range(2)]
        torch.distributed.all_gather(
            parts, local.contiguous(), group=parallel_state.get_tensor_model_parallel_group()
        )
    destroy_distributed()
    return torch.cat(parts, dim=-1)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A foreign HF Llama (tokenizer without <pause>, tied embeddings), imported."""
    root = tmp_path_factory.mktemp("foreign")
    hf_dir, ckpt = str(root / "hf"), str(root / "ckpt")
    vocab = _foreign_hf_model(hf_dir)
    [imported] = run_distributed(_import, 1, hf_dir, ckpt)
    return dict(root=root, hf_dir=hf_dir, ckpt=ckpt, vocab=vocab, imported=imported)


def test_hf_model_imports_and_round_trips(foreign, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir, ckpt, out, vocab = foreign["hf_dir"], foreign["ckpt"], str(tmp_path / "out"), foreign["vocab"]
    pause_id, added, new_vocab, model, flags = foreign["imported"]
    assert (pause_id, added, new_vocab) == (vocab, True, vocab + 1)
    assert (model.rotary_base, model.norm_epsilon, model.num_query_groups) == (50000, 1e-6, 2)
    assert "--num-query-groups 2" in flags and "--tokenizer-type HuggingFaceTokenizer" in flags

    # The imported weights, loaded at TP2, compute what the HF model computes (fp32).
    original = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokens = torch.randint(3, vocab, (2, 96), generator=torch.Generator().manual_seed(2))
    logits = run_distributed(_imported_logits, 2, ckpt, tokens)[0]
    with torch.no_grad():
        want = original(tokens).logits
    assert float((logits[..., :vocab] - want).abs().max()) <= TOL

    # HF -> import -> export reproduces every original tensor; the tied head is untied by copying.
    _export(ckpt, out)
    src, back = _safetensors(hf_dir), _safetensors(out)
    for name, t in src.items():
        rows = slice(None) if t.dim() < 2 or "embed" not in name else slice(0, vocab)
        assert torch.equal(back[name][rows], t), name
    assert torch.equal(back["lm_head.weight"][:vocab], src["model.embed_tokens.weight"])
    # The added <pause> rows follow the project's rule: the mean of the real rows.
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert back[name].shape[0] == vocab + 1
        torch.testing.assert_close(back[name][vocab], src["model.embed_tokens.weight"].mean(0))
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == vocab + 1 and tok.convert_tokens_to_ids("<pause>") == vocab
    assert json.load(open(os.path.join(out, "config.json")))["megatron_pause"]["pause_targets_seen"] == 0


def _pretrain(rank, world, argv):
    from megatron_pause.pretrain import main

    return main(argv)


def test_imported_model_pause_finetunes_at_tp2_with_its_hf_tokenizer(foreign, tmp_path):
    """The paper's StdPT -> PauseFT path end to end: data preprocessed with the imported HF tokenizer
    (with online pauses), then `--finetune --load` of the imported checkpoint at TP2."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "preprocess_cli", os.path.join(REPO, "tools", "preprocess_data.py")
    )
    preprocess = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preprocess)
    tok_dir = os.path.join(foreign["ckpt"], "tokenizer")
    corpus, prefix = tmp_path / "docs.jsonl", str(tmp_path / "data")
    with open(corpus, "w") as f:
        for i in range(60):
            f.write(
                json.dumps({"text": f"Document {i}: the quick brown fox jumps over the lazy dog. " * 4})
                + "\n"
            )
    assert preprocess.main([
        "--input", str(corpus), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tok_dir,
        "--append-eod", "--output-prefix", prefix, "--workers", "1",
    ]) == 0  # fmt: skip
    _, _, _, _, flags = foreign["imported"]
    metrics = tmp_path / "metrics.jsonl"
    argv = [
        *flags.split(), "--seq-length", "64", "--finetune", "--load", foreign["ckpt"],
        "--data-path", prefix + "_text_document", "--split", "100,0,0", "--tensor-model-parallel-size", "2",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "2", "--eval-iters", "0",
        "--lr", "1e-4", "--pause-fraction", "0.1", "--metrics-file", str(metrics),
    ]  # fmt: skip
    assert run_distributed(_pretrain, 2, argv, timeout=300) == [0, 0]
    lines = [json.loads(line) for line in open(metrics)]
    train = [r for r in lines if r["split"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2]
    assert all(r["pause_tokens"] > 0 and 0 < r["lm_loss"] < 20 for r in train)


def test_import_refuses_what_the_model_cannot_express(foreign, tmp_path, capsys):
    import shutil

    cli = _cli()
    assert cli.main(["import", "--hf", str(tmp_path / "missing"), "--save", str(tmp_path / "c")]) == 2
    assert "no config.json" in capsys.readouterr().err
    # Refuses to overwrite an existing checkpoint.
    assert cli.main(["import", "--hf", foreign["hf_dir"], "--save", foreign["ckpt"]]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    for change, message in (({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
                              "rope scaling"), ({"hidden_act": "gelu"}, "hidden_act"),
                            ({"attention_bias": True}, "biases")):  # fmt: skip
        hf = tmp_path / f"hf_{message.split()[0]}"
        shutil.copytree(foreign["hf_dir"], hf)
        config = json.load(open(hf / "config.json"))
        config.update(change)
        json.dump(config, open(hf / "config.json", "w"))
        assert cli.main(["import", "--hf", str(hf), "--save", str(tmp_path / "c")]) == 2
        assert message in capsys.readouterr().err
