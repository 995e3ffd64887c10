"""The flags against the configuration stored with a checkpoint: ``--use-checkpoint-args``, the
mismatch report and the tokenizer check.

Every checkpoint stores its run's resolved configuration (``megatron_pause.json``), so a load can
compare it with the flags before building a model or reading a tensor. Without that comparison a
different ``--hidden-size`` surfaced as megatron-core's "Global shape mismatch" at the end of a long
traceback, and a different tokenizer of the same size would have loaded and trained silently.

Settings fall into three groups:

* **must match** (:data:`MUST_MATCH`): the model's shape and function, the tokenizer type and the
  pause token. A checkpoint's weights mean nothing under other values. A difference is one error
  listing every differing setting (flag, checkpoint value, given value), unless
  ``--use-checkpoint-args`` takes them from the checkpoint.
* **must match when resuming** (:data:`MUST_MATCH_ON_RESUME`): the pause fraction. A resumed run
  continues its data recipe; loading weights only (``--finetune``, generation, evaluation) may
  change it -- pause-finetuning a standard-pretrained model is the paper's recipe.
* **may change**: everything else -- parallel layout, batch sizes, precision, learning-rate and
  data flags, sequence length, dropout: what Megatron-LM users change between a run and its
  continuation or finetuning.

``--use-checkpoint-args`` (Megatron-LM's flag) fills every model, tokenizer and pause setting that
the command line does not give from the checkpoint (the pause fraction only when resuming). Given flags keep their value where it may
legitimately differ (``--seq-length``, a moved ``--tokenizer-model``); a given flag that
contradicts a must-match setting is an error rather than silently overridden.

The tokenizer itself is compared once built (:func:`check_tokenizer`): the vocabulary size, padded
size and pause id recorded with the checkpoint (:func:`vocab_record`) must be this tokenizer's, or
the run would read and train the wrong embedding rows.

Entry points that load a checkpoint call :func:`resolve_checkpoint_config` after parsing (with
:func:`megatron_pause.arguments.parse_args_and_given`) and before anything is built; it raises
:class:`~megatron_pause.arguments.ConfigError` or
:class:`~megatron_pause.training.checkpoint.CheckpointError`, both printed without a traceback
(exit status 2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from megatron_pause.arguments import ConfigError, build_parser
from megatron_pause.config import ModelConfig, PauseConfig, PretrainConfig, TokenizerConfig

MUST_MATCH: tuple[str, ...] = (
    "model.num_layers",
    "model.hidden_size",
    "model.ffn_hidden_size",
    "model.num_attention_heads",
    "model.num_query_groups",
    "model.normalization",
    "model.norm_epsilon",
    "model.swiglu",
    "model.add_bias_linear",
    "model.position_embedding_type",
    "model.rotary_base",
    "model.untie_embeddings_and_output_weights",
    "model.make_vocab_size_divisible_by",
    "tokenizer.tokenizer_type",
    "pause.pause_token",
)
MUST_MATCH_ON_RESUME: tuple[str, ...] = ("pause.pause_fraction",)
# A shape only with learned absolute positions (RoPE has no position table).
_POSITION_TABLE = "model.max_position_embeddings"
# What --use-checkpoint-args fills in: every model, tokenizer and pause setting.
TAKEN_FROM_CHECKPOINT: tuple[str, ...] = tuple(
    f"{section}.{f.name}"
    for section, cls in (("model", ModelConfig), ("tokenizer", TokenizerConfig), ("pause", PauseConfig))
    for f in dataclasses.fields(cls)
)

_MISSING = object()


def _value(config: dict[str, Any], dest: str) -> Any:
    section, name = dest.split(".", 1)
    return config.get(section, {}).get(name, _MISSING)


def flag_names() -> dict[str, str]:
    """dest -> the flag(s) that set it, e.g. ``"--swiglu/--no-swiglu"``, from the one parser."""
    names: dict[str, list[str]] = {}
    for action in build_parser()._actions:
        if action.option_strings and "." in action.dest:
            names.setdefault(action.dest, []).append(action.option_strings[0])
    return {dest: "/".join(flags) for dest, flags in names.items()}


def _must_match(cfg: PretrainConfig, weights_only: bool) -> list[str]:
    dests = list(MUST_MATCH)
    if cfg.model.position_embedding_type == "learned_absolute":
        dests.append(_POSITION_TABLE)
    if not weights_only:
        dests += MUST_MATCH_ON_RESUME
    return dests


def _table(rows: list[tuple[str, Any, Any, bool]]) -> str:
    """``rows`` of (dest, checkpoint value, given value, given on the command line)."""
    flags = flag_names()
    lines = [
        (flags.get(dest, dest), str(theirs), f"{ours}{'' if given else ' (default)'}")
        for dest, theirs, ours, given in rows
    ]
    lines.insert(0, ("flag", "checkpoint", "given"))
    width = [max(len(line[i]) for line in lines) for i in range(2)]
    return "\n".join(f"    {a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in lines)


def resolve_checkpoint_config(
    cfg: PretrainConfig,
    given: Collection[str],
    load_dir: str | None,
    ckpt_step: int | None = None,
    use_checkpoint_args: bool = False,
    weights_only: bool = False,
) -> PretrainConfig:
    """``cfg`` checked against (or, with ``use_checkpoint_args``, completed from) the configuration
    stored with the checkpoint that ``load_dir`` / ``ckpt_step`` names.

    ``given`` is the set of dests the command line set (:func:`~megatron_pause.arguments.given_dests`).
    ``weights_only``: the caller takes the weights only (``--finetune``, generation, evaluation),
    so settings of the data recipe may change. Returns ``cfg`` itself when there is nothing to
    load (no ``load_dir``, or no checkpoint under it: a fresh start). Checks that the checkpoint's
    files are readable first (:func:`~megatron_pause.training.checkpoint.verify_checkpoint`).

    Raises :class:`ConfigError` for flags that contradict the checkpoint and
    :class:`~megatron_pause.training.checkpoint.CheckpointError` for a checkpoint that cannot be read.
    """
    if not load_dir:
        return cfg
    from megatron_pause.training import checkpoint  # torch and megatron: only when loading

    named_by = None
    if ckpt_step is None:
        iteration = checkpoint.latest_iteration(load_dir)
        if iteration is None:
            if use_checkpoint_args:
                raise checkpoint.CheckpointError(
                    f"--use-checkpoint-args: there is no checkpoint under --load {load_dir} to take settings from"
                )
            return cfg
    else:
        iteration, named_by = ckpt_step, f"--ckpt-step {ckpt_step}"
    path, meta = checkpoint.verify_checkpoint(load_dir, iteration, named_by)
    stored = meta.get("config")
    if not isinstance(stored, dict) or not stored:
        if use_checkpoint_args:
            raise checkpoint.CheckpointError(
                f"{path} stores no run configuration, so --use-checkpoint-args cannot take settings "
                "from it; give the model, tokenizer and pause flags instead"
            )
        return cfg
    source = f"checkpoint {path}"

    current = cfg.to_dict()
    if use_checkpoint_args:
        # A given flag that contradicts the checkpoint's shape is a mistake, not a wish.
        merged = {section: dict(values) for section, values in current.items()}
        for dest in TAKEN_FROM_CHECKPOINT:
            theirs = _value(stored, dest)
            if dest in given or theirs is _MISSING:
                continue
            if weights_only and dest in MUST_MATCH_ON_RESUME:
                continue  # the data recipe of a new run, not a property of the weights
            if dest == _POSITION_TABLE and "model.seq_length" in given:
                continue  # derived from the given --seq-length unless the table is a shape (checked below)
            section, name = dest.split(".", 1)
            merged[section][name] = theirs
        resolved = type(cfg).from_dict(merged)  # keeps an entry point's own sections (finetuning's)
        rows = [
            (dest, _value(stored, dest), _value(merged, dest), True)
            for dest in _must_match(resolved, weights_only)
            if dest in given and _value(stored, dest) not in (_MISSING, _value(merged, dest))
        ]
        if rows:
            raise ConfigError(
                [
                    f"--use-checkpoint-args: these flags contradict {source} (iteration {iteration}):\n"
                    f"{_table(rows)}\n  its weights only fit its own settings: drop these flags"
                ]
            )
        return resolved

    rows = [
        (dest, _value(stored, dest), _value(current, dest), dest in given)
        for dest in _must_match(cfg, weights_only)
        if _value(stored, dest) not in (_MISSING, _value(current, dest))
    ]
    if rows:
        hint = (
            "  its weights only fit its own model: add --use-checkpoint-args to take the model, tokenizer "
            "and pause settings from the checkpoint, or change these flags"
        )
        if any(dest in MUST_MATCH_ON_RESUME for dest, *_ in rows):
            hint += "\n  (--pause-fraction may differ when loading weights only, with --finetune)"
        raise ConfigError(
            [
                f"--load {load_dir}: these flags differ from {source} (iteration {iteration}):\n{_table(rows)}\n{hint}"
            ]
        )
    return cfg


def check_against_load(cfg: PretrainConfig, given: Collection[str]) -> PretrainConfig:
    """What every training entry point runs before validation when ``--load`` is given:
    :func:`resolve_checkpoint_config` with the run's own ``--ckpt-step``,
    ``--use-checkpoint-args`` and ``--finetune`` (weights only)."""
    ck = cfg.checkpoint
    return resolve_checkpoint_config(
        cfg, given, ck.load, ck.ckpt_step, ck.use_checkpoint_args, weights_only=ck.finetune
    )


def vocab_record(tokenizer: Any, padded_vocab_size: int) -> dict[str, Any]:
    """What a checkpoint records of its tokenizer (``megatron_pause.json``'s ``vocab``)."""
    return {
        "vocab_size": int(tokenizer.vocab_size),
        "padded_vocab_size": int(padded_vocab_size),
        "pause_id": int(tokenizer.pause_id),
        "tokenizer": str(tokenizer.identity),
    }


# The padded size is recorded but not compared: it grows with --tensor-model-parallel-size, and
# megatron's embedding and output layer load a checkpoint padded for another TP (the padding rows
# are never fed and never emitted), so resharding TP1 -> TP2 legitimately changes it.
_VOCAB_FIELDS = (
    ("vocab_size", "vocabulary size (with <pause>)"),
    ("pause_id", "pause id"),
)


def check_tokenizer(load_dir: str | None, ckpt_step: int | None, record: dict[str, Any]) -> list[str]:
    """Refuse a tokenizer whose vocabulary size or pause id differs from the one
    recorded with the checkpoint to be loaded (:class:`ConfigError`). Returns notes for the user
    (the tokenizer files differ, but every size agrees). Checkpoints without a record (saved by
    other tools) pass."""
    if not load_dir:
        return []
    from megatron_pause.training import checkpoint

    iteration = checkpoint.latest_iteration(load_dir) if ckpt_step is None else ckpt_step
    if iteration is None:
        return []
    saved = checkpoint.checkpoint_config(load_dir, iteration).get("vocab")
    if not isinstance(saved, dict):
        return []
    where = f"checkpoint {checkpoint.iteration_dir(load_dir, iteration)}"
    problems = [
        f"{what}: checkpoint {saved[key]}, this tokenizer {record[key]}"
        for key, what in _VOCAB_FIELDS
        if key in saved and saved[key] != record[key]
    ]
    if problems:
        listing = "\n".join(f"    {p}" for p in problems)
        raise ConfigError(
            [
                f"the tokenizer does not fit {where}, whose embedding rows it would misread:\n{listing}\n"
                f"  it was trained with tokenizer {saved.get('tokenizer')}; this one is {record['tokenizer']}.\n"
                "  check --tokenizer-model, --pause-token and --make-vocab-size-divisible-by (the padding "
                "also grows with --tensor-model-parallel-size), or add --use-checkpoint-args"
            ]
        )
    if saved.get("tokenizer") not in (None, record["tokenizer"]):
        return [
            f"note: the tokenizer files differ from those {where} was trained with "
            f"({saved['tokenizer']} vs {record['tokenizer']}); vocabulary size and pause id agree"
        ]
    return []
