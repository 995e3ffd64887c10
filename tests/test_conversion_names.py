"""The pure pieces of conversion: the QKV/fc1 layouts and the safetensors writer."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_pause.conversion import llama
from megatron_pause.conversion.safetensors_writer import ShardedSafetensorsWriter, parse_size

SHAPE = llama.LlamaShape(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_attention_heads=8,
                         num_query_groups=2, vocab_size=50)  # fmt: skip


def test_qkv_and_fc1_layouts_round_trip_and_group_heads():
    g, n, d, h = SHAPE.num_query_groups, SHAPE.heads_per_group, SHAPE.head_dim, SHAPE.hidden_size
    # Label each megatron row with (group, slot): slots 0..n-1 are queries, n is key, n+1 value.
    qkv = torch.arange(g * (n + 2) * d, dtype=torch.float32)[:, None].expand(-1, h).contiguous()
    q, k, v = llama.split_qkv(qkv, SHAPE)
    assert q.shape == (g * n * d, h) and k.shape == v.shape == (g * d, h)
    rows = qkv[:, 0].reshape(g, n + 2, d)
    assert torch.equal(k[:, 0].reshape(g, d), rows[:, n]) and torch.equal(
        v[:, 0].reshape(g, d), rows[:, n + 1]
    )
    assert torch.equal(llama.merge_qkv(q, k, v, SHAPE), qkv)
    fc1 = torch.randn(2 * SHAPE.ffn_hidden_size, h)
    gate, up = llama.split_fc1(fc1, SHAPE)
    assert torch.equal(gate, fc1[: SHAPE.ffn_hidden_size]) and torch.equal(llama.merge_fc1(gate, up), fc1)
    with pytest.raises(ValueError, match="expected"):
        llama.split_qkv(qkv[:-1], SHAPE)
    with pytest.raises(ValueError, match="query groups"):
        llama.LlamaShape(1, 32, 48, 8, 3, 50)


def test_sharded_writer_matches_safetensors_and_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    tensors = {name: torch.randn(shape) for name, shape in SHAPE.hf_tensor_shapes()}
    for run in ("a", "b"):
        with ShardedSafetensorsWriter(
            str(tmp_path / run), SHAPE.hf_tensor_shapes(), torch.bfloat16, 6000
        ) as w:
            for name in reversed(list(tensors)):  # any order
                w.write(name, tensors[name])
    index = json.load(open(tmp_path / "a" / "model.safetensors.index.json"))
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    loaded = {}
    for f in files:
        loaded.update(load_file(tmp_path / "a" / f))
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t.to(torch.bfloat16)), name
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in tensors.values())


def test_writer_leaves_nothing_when_interrupted_or_incomplete(tmp_path):
    plan = [("a", (4,)), ("b", (4,))]
    with pytest.raises(RuntimeError, match="never written"):
        with ShardedSafetensorsWriter(str(tmp_path / "x"), plan, torch.float32, 10**9) as w:
            w.write("a", torch.ones(4))
    with pytest.raises(KeyError):
        with ShardedSafetensorsWriter(str(tmp_path / "y"), plan, torch.float32, 10**9) as w:
            w.write("c", torch.ones(4))
    assert not list((tmp_path / "y").iterdir())
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_parse_size():
    assert (
        parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("400KB") == 400_000
    )
    for bad in ("5 parsecs", "-1GB", "0MB"):
        with pytest.raises(ValueError):
            parse_size(bad)
