"""The command line: Megatron-LM flag names, preset merging, round trips, and every rejection
naming the flags a user has to change."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from megatron_pause import arguments
from megatron_pause.arguments import (
    ConfigError,
    build_parser,
    config_to_argv,
    parse_args,
    parse_data_path,
    parse_split,
    validate_config,
    validate_vocab,
)
from megatron_pause.config import MODEL_PRESETS, ModelConfig, PretrainConfig

# A configuration that validates on 8 ranks without any files: tiny model, synthetic data.
BASE = ["--model-size", "tiny", "--mock-data", "--micro-batch-size", "2", "--global-batch-size", "16"]


def problems_of(argv: list[str], world_size: int = 8) -> str:
    with pytest.raises(ConfigError) as exc:
        validate_config(parse_args(BASE + argv), world_size)
    return str(exc.value)


# ------------------------------------------------------------------------------------------
# Parsing and merging
# ------------------------------------------------------------------------------------------


def test_defaults_come_from_the_dataclasses():
    assert parse_args([]).to_dict() == PretrainConfig().to_dict()


def test_preset_values_and_explicit_overrides_merge():
    cfg = parse_args(["--model-size", "1b", "--num-layers", "12", "--seq-length", "4096"])
    preset = MODEL_PRESETS["1b"]
    assert cfg.model.num_layers == 12
    assert cfg.model.hidden_size == preset["hidden_size"]
    assert cfg.model.ffn_hidden_size == preset["ffn_hidden_size"]
    assert cfg.model.num_attention_heads == preset["num_attention_heads"]
    assert cfg.model.seq_length == 4096
    # Positions follow the overridden sequence length unless given explicitly.
    assert cfg.model.max_position_embeddings == 4096
    cfg = parse_args(["--model-size", "1b", "--max-position-embeddings", "8192"])
    assert (cfg.model.seq_length, cfg.model.max_position_embeddings) == (preset["seq_length"], 8192)


def test_override_order_does_not_matter_for_the_preset():
    a = parse_args(["--num-layers", "6", "--model-size", "130m"])
    b = parse_args(["--model-size", "130m", "--num-layers", "6"])
    assert a.model == b.model
    assert a.model.num_layers == 6 and a.model.hidden_size == MODEL_PRESETS["130m"]["hidden_size"]


def test_without_preset_model_defaults_apply():
    assert parse_args(["--hidden-size", "96"]).model == ModelConfig(hidden_size=96)


def test_every_section_is_reached():
    cfg = parse_args(
        [
            "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "4",
            "--num-layers-per-virtual-pipeline-stage", "2", "--sequence-parallel",
            "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather",
            "--bf16", "--initial-loss-scale", "65536", "--fp8-format", "hybrid", "--fp8-dot-product-attention",
            "--pause-fraction", "0.2", "--pause-token", "<think>",
            "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "/tok",
            "--data-path", "0.3", "a", "0.7", "b", "--split", "98,2,0", "--data-cache-path", "/cache",
            "--eod-mask-loss", "--num-workers", "3",
            "--lr", "0.001", "--min-lr", "1e-05", "--lr-warmup-iters", "7", "--lr-decay-iters", "70",
            "--lr-decay-style", "linear", "--weight-decay", "0.01", "--adam-beta1", "0.8",
            "--adam-beta2", "0.99", "--adam-eps", "1e-06", "--clip-grad", "0.5",
            "--micro-batch-size", "3", "--global-batch-size", "96", "--train-iters", "100",
            "--eval-interval", "5", "--eval-iters", "4", "--seed", "7",
            "--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", "1",
            "--skip-nonfinite-steps", "--exit-duration-in-mins", "230", "--exit-interval", "40",
            "--save", "/ck", "--load", "/ck", "--save-interval", "50", "--finetune",
            "--dist-ckpt-optim-sharding", "dp_reshardable", "--no-exit-signal-handler",
            "--log-interval", "2", "--tensorboard-dir", "/tb", "--metrics-file", "/m.jsonl",
            "--peak-flops", "989e12",
        ]
    )  # fmt: skip
    assert cfg.parallel.tensor_model_parallel_size == 2 and cfg.parallel.pipeline_model_parallel_size == 4
    assert cfg.parallel.num_layers_per_virtual_pipeline_stage == 2
    assert cfg.parallel.sequence_parallel and cfg.parallel.use_distributed_optimizer
    assert cfg.parallel.overlap_grad_reduce and cfg.parallel.overlap_param_gather
    assert cfg.precision.bf16 and not cfg.precision.fp16 and cfg.precision.initial_loss_scale == 65536.0
    assert cfg.precision.fp8_format == "hybrid" and cfg.precision.fp8_dot_product_attention
    assert cfg.pause.pause_fraction == 0.2 and cfg.pause.pause_token == "<think>"
    assert cfg.tokenizer.tokenizer_type == "HuggingFaceTokenizer" and cfg.tokenizer.tokenizer_model == "/tok"
    assert cfg.data.data_path == ["0.3", "a", "0.7", "b"] and cfg.data.split == "98,2,0"
    assert cfg.data.data_cache_path == "/cache" and cfg.data.eod_mask_loss and cfg.data.num_workers == 3
    o = cfg.optimizer
    assert (o.lr, o.min_lr, o.lr_warmup_iters, o.lr_decay_iters, o.lr_decay_style) == (
        1e-3,
        1e-5,
        7,
        70,
        "linear",
    )
    assert (o.weight_decay, o.adam_beta1, o.adam_beta2, o.adam_eps, o.clip_grad) == (
        0.01,
        0.8,
        0.99,
        1e-6,
        0.5,
    )
    t = cfg.training
    assert (t.micro_batch_size, t.global_batch_size, t.train_iters, t.eval_interval, t.eval_iters) == (
        3,
        96,
        100,
        5,
        4,
    )
    assert (t.seed, t.recompute_granularity, t.recompute_method, t.recompute_num_layers) == (
        7,
        "full",
        "block",
        1,
    )
    assert t.skip_nonfinite_steps and t.exit_duration_in_mins == 230.0 and t.exit_interval == 40
    c = cfg.checkpoint
    assert (c.save, c.load, c.save_interval, c.finetune) == ("/ck", "/ck", 50, True)
    assert c.dist_ckpt_optim_sharding == "dp_reshardable" and c.exit_signal_handler is False
    lg = cfg.logging
    assert (lg.log_interval, lg.tensorboard_dir, lg.metrics_file, lg.peak_flops) == (
        2,
        "/tb",
        "/m.jsonl",
        989e12,
    )


def test_megatron_spellings_match_our_llama_defaults_and_opposites_switch_back():
    megatron = parse_args(["--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights"])
    assert megatron.model == ModelConfig()
    gpt2 = parse_args(["--no-swiglu", "--add-bias-linear", "--tie-embeddings-and-output-weights"])
    assert (
        gpt2.model.swiglu,
        gpt2.model.add_bias_linear,
        gpt2.model.untie_embeddings_and_output_weights,
    ) == (
        False,
        True,
        False,
    )


def test_last_occurrence_wins_so_extra_args_override_a_script():
    cfg = parse_args(
        [
            "--lr",
            "0.1",
            "--tie-embeddings-and-output-weights",
            "--lr",
            "0.2",
            "--untie-embeddings-and-output-weights",
        ]
    )
    assert cfg.optimizer.lr == 0.2 and cfg.model.untie_embeddings_and_output_weights is True
    cfg = parse_args(["--data-path", "a", "--data-path", "b", "c"])
    assert cfg.data.data_path == ["b", "c"]


def test_group_query_attention():
    assert parse_args(["--group-query-attention"]).model.num_query_groups == 1  # Megatron's default: MQA
    assert parse_args(["--group-query-attention", "--num-query-groups", "2"]).model.num_query_groups == 2
    assert parse_args([]).model.num_query_groups is None


def test_num_query_groups_without_group_query_attention_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--num-query-groups", "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--num-query-groups" in err and "--group-query-attention" in err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--no-such-flag", "1"], "--no-such-flag"),
        (["--num-layer", "3"], "--num-layer"),  # abbreviations are not accepted
        (["--model-size", "7b"], "--model-size"),
        (["--num-layers", "two"], "--num-layers"),
        (["--transformer-impl", "te"], "--transformer-impl"),
        (["--fp8-format", "e5m2"], "--fp8-format"),
        (["--tokenizer-type", "GPT2BPETokenizer"], "--tokenizer-type"),
    ],
)
def test_bad_flags_exit_with_usage_naming_them(argv, named, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert named in capsys.readouterr().err


def test_help_lists_megatron_flags_and_presets(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in [
        "--tensor-model-parallel-size",
        "--data-path",
        "--pause-fraction",
        "--peak-flops",
        "1b: 24x2048",
    ]:
        assert flag in out
    assert "(default: 0.1)" in out  # dataclass defaults are shown


def test_every_config_field_has_a_flag():
    dests = {a.dest for a in build_parser()._actions}
    for section in dataclasses.fields(PretrainConfig):
        for f in dataclasses.fields(section.default_factory):  # type: ignore[arg-type]
            assert f"{section.name}.{f.name}" in dests, f"no command-line flag for {section.name}.{f.name}"


def test_tokenizer_types_match_the_tokenizer_module():
    from megatron_pause.tokenizer import SUPPORTED_TOKENIZER_TYPES

    assert set(arguments.TOKENIZER_TYPES) == set(SUPPORTED_TOKENIZER_TYPES)


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, megatron_pause.arguments; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------


def _nondefault_config() -> PretrainConfig:
    cfg = parse_args(
        ["--model-size", "130m", "--group-query-attention", "--num-query-groups", "4", "--no-swiglu",
         "--add-bias-linear", "--tie-embeddings-and-output-weights", "--normalization", "LayerNorm",
         "--position-embedding-type", "learned_absolute", "--hidden-dropout", "0.1", "--pause-init", "zeros",
         "--rotary-base", "500000", "--norm-epsilon", "1e-06", "--init-method-std", "0.006"]
    )  # fmt: skip
    cfg.parallel.tensor_model_parallel_size = 2
    cfg.parallel.use_distributed_optimizer = True
    cfg.precision.fp16 = True
    cfg.precision.loss_scale = 128.0
    cfg.pause.pause_fraction = 0.25
    cfg.data.data_path = ["0.5", "x", "0.5", "y"]
    cfg.optimizer.lr = 3.3e-4
    cfg.training.recompute_granularity = "selective"
    cfg.checkpoint.save = cfg.checkpoint.load = "/ckpt"
    cfg.checkpoint.exit_signal_handler = False
    cfg.logging.peak_flops = 1.979e15
    return cfg


@pytest.mark.parametrize(
    "make", [PretrainConfig, _nondefault_config, lambda: parse_args(["--model-size", "1b"])]
)
def test_config_to_argv_round_trips(make):
    cfg = make()
    argv = config_to_argv(cfg)
    assert parse_args(argv).to_dict() == cfg.to_dict()
    # Only non-defaults are written.
    if make is PretrainConfig:
        assert argv == []


def test_parsed_config_round_trips_through_to_dict():
    cfg = _nondefault_config()
    d = cfg.to_dict()
    assert d["model"]["num_query_groups"] == 4 and d["pause"]["pause_fraction"] == 0.25
    assert PretrainConfig.from_dict(d) == cfg


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def test_parse_data_path():
    assert parse_data_path(["a"]) == [(1.0, "a")]
    assert parse_data_path(["a", "b"]) == [(1.0, "a"), (1.0, "b")]
    assert parse_data_path(["0.3", "a", "0.7", "b"]) == [(0.3, "a"), (0.7, "b")]
    for bad, named in [
        (["0.3", "a", "b"], "odd"),
        (["a", "0.5", "b"], "mixes"),
        (["1", "2"], "another number"),
        (["0", "a"], "positive"),
        (["-1", "a"], "positive"),
        (["nan", "a"], "positive"),
    ]:
        with pytest.raises(ConfigError, match=named) as exc:
            parse_data_path(bad)
        assert "--data-path" in str(exc.value)


def test_parse_split():
    assert parse_split("969,30,1") == (969.0, 30.0, 1.0)
    assert parse_split("98/2/0") == (98.0, 2.0, 0.0)
    assert parse_split("100") == (100.0, 0.0, 0.0)
    for bad in ["a,b,c", "1,2,3,4", "0,0,0", "1,-1,0"]:
        with pytest.raises(ConfigError, match="--split"):
            parse_split(bad)


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


def test_base_configuration_is_valid():
    validate_config(parse_args(BASE), 8)


@pytest.mark.parametrize(
    "argv, world_size, named",
    [
        # TP x PP must divide the world.
        (["--tensor-model-parallel-size", "4"], 6, ["WORLD_SIZE=6", "--tensor-model-parallel-size (4)", "--pipeline-model-parallel-size (1)"]),
        (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 6, ["WORLD_SIZE=6", "= 4"]),
        # Global batch = micro batch x DP x accumulation.
        (["--global-batch-size", "20"], 8, ["--global-batch-size (20)", "--micro-batch-size (2)", "data-parallel size (8"]),
        (["--tensor-model-parallel-size", "2", "--global-batch-size", "12"], 8, ["--global-batch-size (12)", "data-parallel size (4"]),
        # Layers across pipeline stages.
        (["--pipeline-model-parallel-size", "8", "--global-batch-size", "16", "--micro-batch-size", "1", "--num-layers", "6"], 8,
         ["--num-layers (6)", "--pipeline-model-parallel-size (8)"]),
        (["--num-layers-per-virtual-pipeline-stage", "1"], 8, ["--num-layers-per-virtual-pipeline-stage", "--pipeline-model-parallel-size > 1"]),
        (["--num-layers", "8", "--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "3"], 8,
         ["--num-layers-per-virtual-pipeline-stage (3)", "--num-layers (8)", "= 4"]),
        (["--num-layers", "8", "--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "4"], 8,
         ["--num-layers-per-virtual-pipeline-stage (4)", "not interleaving"]),
        (["--num-layers", "8", "--pipeline-model-parallel-size", "4", "--num-layers-per-virtual-pipeline-stage", "1",
          "--micro-batch-size", "1", "--global-batch-size", "6"], 8, ["number of microbatches (3", "--pipeline-model-parallel-size (4)"]),
        # Attention shapes.
        (["--num-attention-heads", "6", "--hidden-size", "132", "--tensor-model-parallel-size", "4"], 8,
         ["--num-attention-heads (6)", "--tensor-model-parallel-size (4)"]),
        (["--hidden-size", "130"], 8, ["--hidden-size (130)", "--num-attention-heads (4)"]),
        (["--group-query-attention", "--num-query-groups", "3"], 8, ["--num-attention-heads (4)", "--num-query-groups (3)"]),
        (["--group-query-attention", "--num-query-groups", "1", "--tensor-model-parallel-size", "2"], 8,
         ["--num-query-groups (1)", "--tensor-model-parallel-size (2)"]),
        (["--ffn-hidden-size", "345", "--tensor-model-parallel-size", "2"], 8, ["--ffn-hidden-size (345)"]),
        (["--max-position-embeddings", "64"], 8, ["--max-position-embeddings (64)", "--seq-length (128)"]),
        # Parallel features.
        (["--sequence-parallel"], 8, ["--sequence-parallel", "--tensor-model-parallel-size > 1"]),
        (["--sequence-parallel", "--tensor-model-parallel-size", "4", "--seq-length", "130"], 8, ["--seq-length (130)"]),
        (["--overlap-param-gather", "--overlap-grad-reduce"], 8, ["--overlap-param-gather needs --use-distributed-optimizer"]),
        (["--overlap-param-gather", "--use-distributed-optimizer"], 8, ["--overlap-param-gather needs --overlap-grad-reduce"]),
        # Precision.
        (["--bf16", "--fp16"], 8, ["--bf16 and --fp16"]),
        (["--loss-scale", "1024"], 8, ["--loss-scale", "--fp16"]),
        (["--fp8-dot-product-attention"], 8, ["--fp8-dot-product-attention needs --fp8-format"]),
        # Recompute.
        (["--recompute-method", "uniform"], 8, ["--recompute-method", "--recompute-granularity full"]),
        (["--recompute-granularity", "full", "--recompute-num-layers", "1"], 8, ["--recompute-method uniform or block"]),
        (["--recompute-granularity", "full", "--recompute-method", "uniform"], 8, ["needs --recompute-num-layers"]),
        (["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", "5"], 8,
         ["--recompute-num-layers (5)", "(4)"]),
        (["--recompute-granularity", "selective", "--recompute-num-layers", "1"], 8, ["selective takes no"]),
        # Pause.
        (["--pause-fraction", "1.0"], 8, ["--pause-fraction", "[0, 1)"]),
        (["--pause-fraction", "-0.1"], 8, ["--pause-fraction"]),
        (["--pause-token", " "], 8, ["--pause-token"]),
        # Schedule and checkpoints.
        (["--lr", "1e-5", "--min-lr", "1e-4"], 8, ["--lr (1e-05)", "--min-lr (0.0001)"]),
        (["--lr-warmup-iters", "50", "--train-iters", "20"], 8, ["--lr-warmup-iters (50)", "--train-iters (20)"]),
        # Warmup as long as the run: the LR schedule itself refuses it, so validation must too.
        (["--lr-warmup-iters", "20", "--train-iters", "20"], 8, ["--lr-warmup-iters (20)", "below --train-iters (20)"]),
        (["--lr-warmup-iters", "50", "--lr-decay-iters", "40", "--train-iters", "100"], 8, ["--lr-decay-iters (40)"]),
        (["--save-interval", "10"], 8, ["--save-interval needs --save"]),
        (["--finetune"], 8, ["--finetune needs --load"]),
        (["--finetune", "--load", "/definitely/not/here"], 8, ["--finetune --load", "no such directory"]),
        # Ranges.
        (["--micro-batch-size", "0"], 8, ["--micro-batch-size must be positive"]),
        (["--tensor-model-parallel-size", "0"], 8, ["--tensor-model-parallel-size must be positive"]),
        (["--train-iters", "-1"], 8, ["--train-iters must be >= 0"]),
        (["--hidden-dropout", "1.5"], 8, ["--hidden-dropout"]),
        (["--adam-beta2", "1.0"], 8, ["--adam-beta2"]),
        (["--peak-flops", "0"], 8, ["--peak-flops must be positive"]),
        (["--exit-interval", "0"], 8, ["--exit-interval must be positive"]),
        ([], 0, ["WORLD_SIZE must be positive"]),
    ],
)  # fmt: skip
def test_rejections_name_the_flags(argv, world_size, named):
    message = problems_of(argv, world_size)
    for text in named:
        assert text in message, f"{text!r} not in:\n{message}"


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as exc:
        validate_config(
            parse_args(BASE + ["--bf16", "--fp16", "--sequence-parallel", "--pause-fraction", "2"]), 8
        )
    assert len(exc.value.problems) == 3
    assert isinstance(exc.value, ValueError)


def test_a_valid_parallel_layout_passes():
    argv = BASE + [
        "--num-layers", "8", "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
        "--num-layers-per-virtual-pipeline-stage", "2", "--sequence-parallel", "--use-distributed-optimizer",
        "--overlap-grad-reduce", "--overlap-param-gather", "--micro-batch-size", "1", "--global-batch-size", "8",
        "--group-query-attention", "--num-query-groups", "2", "--bf16",
        "--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1",
    ]  # fmt: skip
    validate_config(parse_args(argv), 16)


# --- Transformer Engine and FP8 (TE is detected, never imported) ---


def test_transformer_engine_is_looked_up_not_imported(monkeypatch):
    looked_up = []
    monkeypatch.setattr(arguments.importlib.util, "find_spec", lambda name: looked_up.append(name))
    assert arguments.transformer_engine_available() is False
    assert looked_up == ["transformer_engine"]


def test_fp8_requirements(monkeypatch):
    monkeypatch.setattr(arguments, "transformer_engine_available", lambda: True)
    message = problems_of(["--fp8-format", "hybrid"])
    assert "--fp8-format needs --transformer-impl transformer_engine" in message
    assert "--fp8-format needs --bf16 or --fp16" in message
    te_fp8 = [
        "--fp8-format",
        "hybrid",
        "--bf16",
        "--transformer-impl",
        "transformer_engine",
        "--ffn-hidden-size",
        "352",
    ]
    validate_config(parse_args(BASE + te_fp8), 8)


def test_fp8_shapes(monkeypatch):
    monkeypatch.setattr(arguments, "transformer_engine_available", lambda: True)
    fp8 = ["--fp8-format", "hybrid", "--bf16", "--transformer-impl", "transformer_engine"]
    message = problems_of(fp8)  # the tiny preset's FFN (344) is not a multiple of 16
    assert "--fp8-format needs --ffn-hidden-size / TP (344) divisible by 16" in message
    message = problems_of(
        fp8
        + [
            "--ffn-hidden-size",
            "352",
            "--hidden-size",
            "136",
            "--seq-length",
            "3",
            "--max-position-embeddings",
            "8",
        ]
    )
    assert "--hidden-size (136) divisible by 16" in message
    assert "--seq-length (/ TP with --sequence-parallel) = 6 divisible by 8" in message
    validate_config(parse_args(BASE + fp8 + ["--ffn-hidden-size", "352"]), 8)


def test_transformer_engine_must_be_importable(monkeypatch):
    monkeypatch.setattr(arguments, "transformer_engine_available", lambda: False)
    message = problems_of(["--fp8-format", "e4m3", "--fp16", "--transformer-impl", "transformer_engine"])
    assert "--fp8-format and --transformer-impl transformer_engine need NVIDIA Transformer Engine" in message
    message = problems_of(["--transformer-impl", "transformer_engine"])
    assert "--transformer-impl transformer_engine needs NVIDIA Transformer Engine" in message


# --- data and tokenizer ---


@pytest.fixture
def dataset(tmp_path):
    prefix = tmp_path / "corpus_text_document"
    for ext in (".bin", ".idx"):
        (tmp_path / f"corpus_text_document{ext}").write_bytes(b"")
    tok = tmp_path / "tok.model"
    tok.write_bytes(b"")
    return str(prefix), str(tok)


def data_argv(prefix: str, tok: str) -> list[str]:
    return [
        "--data-path",
        prefix,
        "--tokenizer-model",
        tok,
        "--micro-batch-size",
        "1",
        "--global-batch-size",
        "8",
    ]


def test_real_data_configuration_is_valid(dataset):
    prefix, tok = dataset
    validate_config(parse_args(data_argv(prefix, tok)), 8)
    validate_config(parse_args(data_argv(prefix, tok)[2:] + ["--data-path", "0.2", prefix, "0.8", prefix]), 8)


def test_data_is_required():
    with pytest.raises(ConfigError, match="no training data: pass --data-path"):
        validate_config(parse_args(["--micro-batch-size", "1", "--global-batch-size", "1"]), 1)


def test_eval_only_from_a_checkpoint_needs_no_data(tmp_path):
    argv = [
        "--skip-train",
        "--load",
        str(tmp_path),
        "--tokenizer-model",
        __file__,
        "--micro-batch-size",
        "1",
        "--global-batch-size",
        "1",
    ]
    validate_config(parse_args(argv), 1)


def test_data_problems_name_the_flag_and_hint(dataset):
    prefix, tok = dataset
    stem = prefix[: -len("_text_document")]
    cases = {
        stem: "did you mean " + prefix,  # forgot the _text_document suffix
        prefix + ".bin": "without the extension",
        prefix + "_missing": "not found",
    }
    for bad, hint in cases.items():
        with pytest.raises(ConfigError) as exc:
            validate_config(
                parse_args(["--data-path", bad, "--tokenizer-model", tok, "--global-batch-size", "16"]), 8
            )
        assert "--data-path prefix" in str(exc.value) and hint in str(exc.value)
    with pytest.raises(ConfigError, match="--data-path mixes weights"):
        validate_config(
            parse_args(
                ["--data-path", prefix, "0.5", prefix, "--tokenizer-model", tok, "--global-batch-size", "16"]
            ),
            8,
        )


def test_mock_data_and_data_path_contradict(dataset):
    prefix, _ = dataset
    assert "--mock-data and --data-path" in problems_of(["--data-path", prefix])


def test_tokenizer_model_checks(dataset, tmp_path):
    prefix, _ = dataset
    base = ["--data-path", prefix, "--global-batch-size", "16"]
    with pytest.raises(ConfigError, match="--tokenizer-model is required"):
        validate_config(parse_args(base), 8)
    with pytest.raises(ConfigError, match="--tokenizer-model '/no/such.model': no such file"):
        validate_config(parse_args(base + ["--tokenizer-model", "/no/such.model"]), 8)
    with pytest.raises(ConfigError, match="no such folder"):
        validate_config(
            parse_args(base + ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "/no/dir"]), 8
        )
    validate_config(
        parse_args(base + ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tmp_path)]), 8
    )


def test_evaluation_needs_a_validation_split(dataset):
    prefix, tok = dataset
    with pytest.raises(ConfigError, match="--split '100,0,0' leaves no validation data"):
        validate_config(parse_args(data_argv(prefix, tok) + ["--split", "100,0,0"]), 8)
    validate_config(parse_args(data_argv(prefix, tok) + ["--split", "100,0,0", "--eval-iters", "0"]), 8)
    with pytest.raises(ConfigError, match="--split"):
        validate_config(parse_args(data_argv(prefix, tok) + ["--split", "x"]), 8)


def test_config_from_code_is_checked_too():
    # validate_config also guards configs built in code or loaded from a checkpoint's to_dict().
    cfg = parse_args(BASE)
    cfg.tokenizer.tokenizer_type = "GPT2BPETokenizer"
    with pytest.raises(ConfigError, match="--tokenizer-type 'GPT2BPETokenizer' is not supported"):
        validate_config(cfg, 8)


# --- vocabulary ---


def test_validate_vocab():
    cfg = parse_args(["--tensor-model-parallel-size", "2"])
    validate_vocab(cfg, pause_id=32000, padded_vocab_size=32256)  # 32256 = 126 x 256
    with pytest.raises(ConfigError, match="pause id 32256 .* outside the padded vocab \\[0, 32256\\)"):
        validate_vocab(cfg, pause_id=32256, padded_vocab_size=32256)
    with pytest.raises(ConfigError, match="pause id -1"):
        validate_vocab(cfg, pause_id=-1, padded_vocab_size=32256)
    with pytest.raises(ConfigError) as exc:
        validate_vocab(cfg, pause_id=5, padded_vocab_size=32128)  # a multiple of 128 but not of 128 x TP
    assert "--make-vocab-size-divisible-by (128) x --tensor-model-parallel-size (2) = 256" in str(exc.value)
