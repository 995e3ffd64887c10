"""KV-cached generation and log-likelihood scoring on megatron-core's ``GPTModel``, at any TP/PP layout.

**Why not megatron's ``StaticInferenceEngine``.** It was measured to be correct with pauses on
0.16.1 only in its legacy mode and only after about eight CPU patches; its default mode
re-tokenizes prompt *text*, which silently drops the pauses (``PauseTokenizer.detokenize`` removes
them); it ignores the termination id and stop words; and it is slower than Hugging Face's
``generate`` on CPU. What pause-inference needs is small: a prompt of token ids ending in M
pauses, a prefill, one-token decode steps, a pipeline hand-off and a tensor-parallel gather. So
this module drives the model directly and uses megatron's own KV cache machinery for the rest:
``StaticInferenceContext`` (megatron's attention writes and reads the cache, applies RoPE at the
right offset and switches to no causal mask for the one-token steps) and the model's
last-token-only output in ``InferenceMode``. The cache is allocated here, up front, on this
process's device (megatron would allocate it on ``torch.cuda.current_device()``), so no CPU patch
is needed.

**Speed.** On CPU, megatron's layers as they are decode at ~0.8x Hugging Face ``generate`` on the
same weights. Four changes that compute the same function (up to fp32 rounding) bring it level or ahead:
the KV cache holds keys already rotated (``models/self_attention.py``; megatron re-rotated the
whole cached prefix every step), its memory is laid out ``[batch, group, position, dim]`` behind
megatron's ``[position, batch, ...]`` indexing (unit-stride reads in attention), and with
autograd off the linears skip megatron's autograd ``Function`` s (``plain_linears``) and SwiGLU
runs on contiguous halves (``split_swiglu``). ``benchmarks/bench_generate.py`` measures ours/HF
at 1.01-1.29x over two runs on two machines (tiny and 130M presets, batch 1 and 16, one thread)
with identical tokens; the low end is the 130M model at batch 1 (1.02, 95% CI 1.02-1.03, in the
second run), where both stream the same weights once per token.

**Mixed prompt lengths.** Prompts are sorted by length and batched; a batch is prefilled up to
its shortest prompt, then advanced one position per step, where a row still inside its prompt
is fed its own next prompt token (its output is ignored) and the others their last generated
token. Every row therefore sees exactly the computation it would see alone: batched equals one
at a time. Sorting keeps the prompts of a batch close in length, so little time is spent on
these forced steps.

**Scoring never uses the cache.** megatron's attention drops the causal mask for any forward on
top of a filled static cache, so a multi-token continuation forwarded after a cached context
would attend to its own future. :meth:`PauseGenerator.loglikelihoods` runs plain full forwards.

**Pauses.** The ids fed to the model are ``prompt + [pause] * M`` (:func:`pause.append_pauses`);
the first output read is the one at the last pause, as in the paper's Algorithm 3. ``<pause>``
and the padded-vocabulary rows are removed from every output distribution, so a pause is never
emitted (and never scored).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.inference.utils import InferenceMode
from megatron.core.transformer.attention import Attention

from megatron_pause import platform
from megatron_pause.inference import plain_linears, split_swiglu
from megatron_pause.inference.sampling import SamplingConfig, banned_mask, choose_next
from megatron_pause.models.attention import SDPAttention
from megatron_pause.pause import append_pauses


@dataclass
class Completion:
    tokens: list[int]  # generated ids, without the eod / after truncation at a stop string
    text: str
    finish_reason: str  # "eod", "stop" or "length"


class PromptTooLong(ValueError):
    pass


def _preallocated_context(model: torch.nn.Module, batch: int, length: int) -> StaticInferenceContext:
    """megatron's static KV cache with every layer's buffers already allocated on our device."""
    ctx = StaticInferenceContext(batch, length)
    dev = platform.device()
    dtype = model.config.params_dtype
    for module in model.modules():
        if not isinstance(module, Attention):
            continue
        groups = module.num_query_groups_per_partition
        # megatron indexes the cache as [position, batch, group, dim]. For our SDPA the memory
        # behind that view is laid out [batch, group, position, dim], the order attention reads it
        # in, so each head's keys are one contiguous run (unit stride, not every b*g*d floats).
        # Transformer Engine's attention infers its layout from the strides: it gets megatron's.
        ours = isinstance(module.core_attention, SDPAttention)
        shape = (batch, groups, length) if ours else (length, batch, groups)
        k = torch.empty(*shape, module.key_hidden_size, dtype=dtype, device=dev)
        v = torch.empty(*shape, module.val_hidden_size, dtype=dtype, device=dev)
        if ours:
            k, v = k.permute(2, 0, 1, 3), v.permute(2, 0, 1, 3)
        ctx.key_value_memory_dict[module.layer_number] = (k, v)
    return ctx


class PauseGenerator:
    """Generation and scoring with one model stage per rank. Every rank of a model-parallel
    group must call the same methods with the same arguments (they are collective); data-parallel
    replicas split the prompts between them and return the same full result everywhere."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        padded_vocab_size: int,
        max_batch_size: int = 16,
        max_sequence_length: int | None = None,
        suppress_pause: bool = True,
        stop_at_eod: bool = True,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        plain_linears.install(model)  # no autograd Function per matmul (see the module's docstring)
        split_swiglu.install(model)  # contiguous gate/up, no strided activation (ditto)
        self.tokenizer = tokenizer
        self.pause_id = tokenizer.pause_id
        self.stop_at_eod = stop_at_eod  # False: always max_new_tokens (benchmarks)
        self.max_batch_size = max_batch_size
        # Prompt + pauses + new tokens must fit the positions the model was trained with.
        self.max_sequence_length = max_sequence_length
        banned = [self.pause_id] if suppress_pause else []
        self.banned = banned_mask(padded_vocab_size, tokenizer.vocab_size, banned)
        self.hidden_size = model.config.hidden_size
        self.dtype = model.config.params_dtype
        self.first_stage = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
        self.last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        self.pp = parallel_state.get_pipeline_model_parallel_world_size()
        self.forward_calls = 0  # model forwards on this rank (benchmarks report it)

    # ------------------------------------------------------------------ the forward step

    def _forward(
        self,
        tokens: torch.Tensor,
        start: int,
        ctx: StaticInferenceContext | None,
        all_positions: bool = False,
    ) -> torch.Tensor | None:
        """Forward ``tokens`` ``[b, s]`` at positions ``start..start+s-1`` through this stage,
        handing activations down the pipeline. On the last stage returns full-vocabulary logits
        (gathered over tensor-parallel ranks by the output layer):
        ``[b, s, V]`` with ``all_positions`` (no cache) else the last position's ``[b, V]``."""
        dev = platform.device()
        b, s = tokens.shape
        tokens = tokens.to(dev)
        positions = torch.arange(start, start + s, device=dev).unsqueeze(0).expand(b, s)
        if not self.first_stage:
            hidden = torch.empty(s, b, self.hidden_size, dtype=self.dtype, device=dev)
            torch.distributed.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank())
            self.model.set_input_tensor(hidden)
        mode = InferenceMode.active() if ctx is not None else contextlib.nullcontext()
        with torch.inference_mode(), mode:
            out = self.model(tokens, positions, None, inference_context=ctx, runtime_gather_output=True)
        self.forward_calls += 1
        if ctx is not None:
            ctx.sequence_len_offset += s
        if not self.last_stage:
            torch.distributed.send(
                out.contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank()
            )
            return None
        if not all_positions:
            out = out[:, -1, :]
        return out.float()

    def _from_last_stage(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as computed on the last pipeline stage, on every stage."""
        if self.pp > 1:
            t = t.to(platform.device())
            torch.distributed.broadcast(
                t,
                src=parallel_state.get_pipeline_model_parallel_last_rank(),
                group=parallel_state.get_pipeline_model_parallel_group(),
            )
        return t.cpu()

    # ------------------------------------------------------------------ batching

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices sorted by length, cut into batches; this data-parallel rank's share."""
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        batches = [order[i : i + self.max_batch_size] for i in range(0, len(order), self.max_batch_size)]
        dp, rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
        return batches[rank::dp]

    @staticmethod
    def _gather_over_data_parallel(local: dict[int, object], total: int) -> list:
        if parallel_state.get_data_parallel_world_size() > 1:
            parts: list = [None] * parallel_state.get_data_parallel_world_size()
            torch.distributed.all_gather_object(parts, local, group=parallel_state.get_data_parallel_group())
            merged: dict[int, object] = {}
            for p in parts:
                merged.update(p)
            local = merged
        return [local[i] for i in range(total)]

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        inference_pauses: int,
        max_new_tokens: int,
        sampling: SamplingConfig | None = None,
        stop: Sequence[str] = (),
        use_cache: bool = True,
    ) -> list[Completion]:
        """Complete each prompt (token ids, without pauses) after ``inference_pauses`` pauses.
        Stops at eod, at any ``stop`` string (the text is cut before it) or after
        ``max_new_tokens``. Results are in input order."""
        if inference_pauses < 0 or max_new_tokens < 1:
            raise ValueError(
                f"inference_pauses must be >= 0 and max_new_tokens >= 1, got {inference_pauses}, {max_new_tokens}"
            )
        sampling = sampling or SamplingConfig()
        rows = [append_pauses(p, inference_pauses, self.pause_id) for p in prompts]
        limit = self.max_sequence_length
        if limit is not None:
            too_long = [i for i, r in enumerate(rows) if len(r) + max_new_tokens > limit]
            if too_long:
                raise PromptTooLong(
                    f"{len(too_long)} prompt(s) (first: #{too_long[0]}, {len(rows[too_long[0]])} tokens with "
                    f"{inference_pauses} pauses) do not fit {max_new_tokens} new tokens in the model's "
                    f"{limit} positions"
                )
        empty = [i for i, r in enumerate(rows) if not r]
        if empty:
            raise ValueError(f"prompt #{empty[0]} is empty and has no pauses: nothing to condition on")
        local: dict[int, Completion] = {}
        for batch in self._batches([len(r) for r in rows]):
            # One generator per batch, seeded by its first prompt: sampled completions do not depend
            # on how many data-parallel ranks share the work.
            gen = torch.Generator().manual_seed(sampling.seed + batch[0])
            outs = self._generate_batch(
                [rows[i] for i in batch], max_new_tokens, sampling, stop, use_cache, gen
            )
            local.update(zip(batch, outs))
        return self._gather_over_data_parallel(local, len(rows))

    def _generate_batch(self, rows, max_new_tokens, sampling, stop, use_cache, gen) -> list[Completion]:
        b = len(rows)
        lens = [len(r) for r in rows]
        total = max(lens) + max_new_tokens
        tokens = torch.full((b, total), self.tokenizer.eod, dtype=torch.long)
        for r, row in enumerate(rows):
            tokens[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        ctx = _preallocated_context(self.model, b, total) if use_cache else None
        generated: list[list[int]] = [[] for _ in range(b)]
        reason = ["length"] * b
        done = [False] * b
        fed = 0  # positions already in the cache
        cur = min(lens)  # positions fed so far, after this step's forward
        while True:
            if use_cache:
                logits = self._forward(tokens[:, fed:cur], fed, ctx)
                fed = cur
            else:
                logits = self._forward(tokens[:, :cur], 0, None, all_positions=True)
                logits = logits[:, -1, :] if logits is not None else None
            nxt = (
                choose_next(logits, sampling, self.banned, gen)
                if logits is not None
                else torch.zeros(b, dtype=torch.long)
            )
            nxt = self._from_last_stage(nxt)
            for r in range(b):
                if cur < lens[r]:
                    continue  # still inside its prompt: the prompt token is already at `cur`
                if done[r]:
                    continue  # finished rows are fed eod; their outputs are ignored
                t = int(nxt[r])
                tokens[r, cur] = t
                if t == self.tokenizer.eod and self.stop_at_eod:
                    done[r], reason[r] = True, "eod"
                    continue
                generated[r].append(t)
                if stop and any(s in self.tokenizer.detokenize(generated[r]) for s in stop):
                    done[r], reason[r] = True, "stop"
                elif len(generated[r]) >= max_new_tokens:
                    done[r] = True
            cur += 1
            if all(done) or cur >= total:
                break
        return [self._completion(g, why, stop) for g, why in zip(generated, reason)]

    def _completion(self, ids: list[int], reason: str, stop: Sequence[str]) -> Completion:
        text = self.tokenizer.detokenize(ids)
        if reason == "stop":
            cut = min(text.find(s) for s in stop if s in text)
            text = text[:cut]
        return Completion(ids, text, reason)

    # ------------------------------------------------------------------ scoring

    def loglikelihoods(
        self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], inference_pauses: int
    ) -> list[tuple[float, bool]]:
        """For each ``(context, continuation)`` (token ids): the summed log-probability of the
        continuation after ``context + [pause] * M``, and whether greedy decoding would have
        produced it (lm-evaluation-harness's ``is_greedy``). Full forwards, no KV cache."""
        rows = [append_pauses(c, inference_pauses, self.pause_id) for c, _ in requests]
        conts = [list(x) for _, x in requests]
        bad = [i for i, (r, c) in enumerate(zip(rows, conts)) if not r or not c]
        if bad:
            raise ValueError(
                f"request #{bad[0]} has an empty context (and no pauses) or an empty continuation"
            )
        full = [r + c for r, c in zip(rows, conts)]
        limit = self.max_sequence_length
        if limit is not None:
            too_long = [i for i, f in enumerate(full) if len(f) > limit]
            if too_long:
                raise PromptTooLong(
                    f"{len(too_long)} scoring request(s) (first: #{too_long[0]}, {len(full[too_long[0]])} tokens) "
                    f"exceed the model's {limit} positions"
                )
        local: dict[int, tuple[float, bool]] = {}
        for batch in self._batches([len(f) for f in full]):
            width = max(len(full[i]) for i in batch)
            tokens = torch.full((len(batch), width), self.tokenizer.eod, dtype=torch.long)
            for j, i in enumerate(batch):
                tokens[j, : len(full[i])] = torch.tensor(full[i])
            # Right padding: causal attention keeps it out of every real position.
            logits = self._forward(tokens, 0, None, all_positions=True)
            result = torch.zeros(len(batch), 2, dtype=torch.float64)
            if logits is not None:
                logits = logits.masked_fill(self.banned.to(logits.device), float("-inf"))
                for j, i in enumerate(batch):
                    start, end = len(rows[i]), len(full[i])
                    # The output at position p predicts token p + 1.
                    lp = torch.log_softmax(logits[j, start - 1 : end - 1].double(), dim=-1)
                    target = torch.tensor(conts[i], device=lp.device)
                    result[j, 0] = lp.gather(-1, target[:, None]).sum()
                    result[j, 1] = float(bool((lp.argmax(-1) == target).all()))
            result = self._from_last_stage(result)
            for j, i in enumerate(batch):
                local[i] = (float(result[j, 0]), bool(result[j, 1]))
        return self._gather_over_data_parallel(local, len(full))
