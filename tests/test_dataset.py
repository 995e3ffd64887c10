"""The online pause-pretraining dataset (megatron_pause/data/dataset.py) and --data-path parsing.

Every test builds real Megatron indexed shards (IndexedDatasetBuilder) in tmp_path and reads them
through megatron-core's builder, so the Megatron machinery (split, shuffle, sample index, cache,
blending) is the real one. The reference for a sample is the plain GPTDataset over the same shard
and config: it reads the very same token window, so "what the pause dataset did" is measurable
exactly, not just plausibly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, _get_ltor_masks_and_position_ids
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_pause.data.blend import check_prefix_files, check_split, parse_data_path
from megatron_pause.data.dataset import (
    MegatronTokenizerAdapter,
    PauseBlendedDataset,
    PauseGPTDataset,
    PauseGPTDatasetConfig,
    PretrainDataConfig,
    build_pretraining_datasets,
)
from megatron_pause.data.sidecar import PauseSidecar, write_sidecar
from megatron_pause.data.window import MMapWindowReader
from megatron_pause.pause import OFFLINE_STREAM, ONLINE_STREAM, insert_pauses, num_pauses, pause_key

BASE_VOCAB = 500
PAUSE = BASE_VOCAB  # appended after the base vocabulary, as PauseTokenizer does
EOD = 0


@dataclass
class FakeTokenizer:
    """The PauseTokenizer attributes the dataset reads; no tokenizer files needed."""

    vocab_size: int = BASE_VOCAB + 1
    base_vocab_size: int = BASE_VOCAB
    pause_id: int = PAUSE
    eod: int = EOD
    pad: int = EOD
    bos: int | None = None
    identity: str = "fake:500"
    tokenizer_type: str = "FakeTokenizer"


def write_shard(prefix: str, documents: list[np.ndarray]) -> str:
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for doc in documents:
        builder.add_item(torch.from_numpy(np.asarray(doc, dtype=np.int64)))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix


def random_documents(seed: int, count: int, low: int = 20, high: int = 200) -> list[np.ndarray]:
    """Text documents of random length ending in eod (ids 1..BASE_VOCAB-1 are text)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(count):
        body = rng.integers(1, BASE_VOCAB, size=int(rng.integers(low, high)))
        docs.append(np.append(body, EOD))
    return docs


def sidecar_for(documents: list[np.ndarray], fraction: float, **changes) -> PauseSidecar:
    tok = FakeTokenizer()
    fields = dict(
        tokenizer=tok.identity,
        tokenizer_type=tok.tokenizer_type,
        vocab_size=tok.vocab_size,
        pause_id=tok.pause_id,
        eod=tok.eod,
        pause_fraction=fraction,
        seed=1,
        documents=len(documents),
        tokens=int(sum(len(d) for d in documents)),
        pause_tokens=int(sum(int((d == PAUSE).sum()) for d in documents)),
    )
    fields.update(changes)
    return PauseSidecar(**fields)


def build(prefixes, tmp_path, seq_length=32, sizes=(200, 0, 0), split="1,0,0", **options):
    data_path = prefixes if isinstance(prefixes, list) else [prefixes]
    config = PretrainDataConfig(
        data_path=data_path, split=split, seed=7, data_cache_path=str(tmp_path / "cache")
    )
    for name, value in options.items():
        setattr(config, name, value)
    return build_pretraining_datasets(config, FakeTokenizer(), seq_length, list(sizes))


def plain_gpt(prefix, tmp_path, seq_length=32, sizes=(200, 0, 0), split="1,0,0", **flags):
    """Megatron's own GPTDataset over the same shard and config: the reference windows."""
    config = GPTDatasetConfig(
        random_seed=7,
        sequence_length=seq_length,
        blend=([prefix], None),
        split=split,
        path_to_cache=str(tmp_path / "cache"),
        tokenizer=MegatronTokenizerAdapter(FakeTokenizer()),
        reset_position_ids=flags.get("reset_position_ids", False),
        reset_attention_mask=False,
        eod_mask_loss=flags.get("eod_mask_loss", False),
        create_attention_mask=flags.get("create_attention_mask", True),
    )
    return BlendedMegatronDatasetBuilder(GPTDataset, list(sizes), lambda: True, config).build()


def window(sample: dict) -> torch.Tensor:
    """The (seq_length + 1)-token window a sample was shifted from."""
    return torch.cat([sample["tokens"], sample["labels"][-1:]])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Fetch samples the way DataLoader workers do, with one intra-op thread. (With two on this
    2-core machine, each tiny torch.tril in Megatron's mask code takes milliseconds.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    return write_shard(str(tmp_path_factory.mktemp("shard") / "text"), random_documents(0, 120))


# --- the sample recipe ---------------------------------------------------------------------------


def test_sample_is_megatron_window_with_paper_recipe_pauses(shard, tmp_path):
    train, _, _ = build(shard, tmp_path)
    reference, _, _ = plain_gpt(shard, tmp_path)
    assert isinstance(train, PauseGPTDataset) and len(train) == len(reference)
    k = num_pauses(32, 0.1)
    assert k == 3
    for i in range(len(train)):
        raw = reference[i]
        raw_window = window(raw).numpy()
        full = insert_pauses(raw_window, k, PAUSE, pause_key(7, i, ONLINE_STREAM))
        expected = full[: raw_window.shape[0]]
        got = train[i]
        assert np.array_equal(window(got).numpy(), expected)
        # The count in the 33-token window is k minus the pauses pushed past its end...
        in_window = int((window(got) == PAUSE).sum())
        assert in_window == k - int((full[raw_window.shape[0] :] == PAUSE).sum())
        # ...and the real tokens are the window's prefix, in order; the overflow is dropped.
        real = window(got)[window(got) != PAUSE]
        assert torch.equal(real, window(raw)[: real.numel()])
        assert set(got) == set(raw) == {"tokens", "labels", "loss_mask", "position_ids", "attention_mask"}
        assert torch.equal(got["position_ids"], raw["position_ids"])
        assert torch.equal(got["attention_mask"], raw["attention_mask"])


def test_pause_targets_are_masked_and_pause_inputs_still_predict(shard, tmp_path):
    train, _, _ = build(shard, tmp_path, pause_fraction=0.25)
    pause_inputs_scored = 0
    for i in range(len(train)):
        s = train[i]
        target_is_pause = s["labels"] == PAUSE
        assert torch.all(s["loss_mask"][target_is_pause] == 0)
        assert torch.all(s["loss_mask"][~target_is_pause] == 1)  # no other masking configured
        pause_in_real_out = (s["tokens"] == PAUSE) & ~target_is_pause
        assert torch.all(s["loss_mask"][pause_in_real_out] == 1)
        pause_inputs_scored += int(pause_in_real_out.sum())
    assert pause_inputs_scored > 0


def test_eod_mask_and_position_reset_compose_with_pause_masking(shard, tmp_path):
    train, _, _ = build(shard, tmp_path, eod_mask_loss=True, reset_position_ids=True)
    eods_seen = 0
    for i in range(len(train)):
        s = train[i]
        expected_mask = ((s["tokens"] != EOD) & (s["labels"] != PAUSE)).float()
        assert torch.equal(s["loss_mask"], expected_mask)
        # Megatron's own position reset, applied to the paused tokens: pauses take positions.
        _, _, positions = _get_ltor_masks_and_position_ids(s["tokens"], EOD, True, False, True, False)
        assert torch.equal(s["position_ids"], positions)
        eods_seen += int((s["tokens"] == EOD).sum())
    assert eods_seen > 0


def test_fraction_zero_is_exactly_megatrons_gptdataset(shard, tmp_path):
    train, _, _ = build(shard, tmp_path, pause_fraction=0.0, eod_mask_loss=True)
    reference, _, _ = plain_gpt(shard, tmp_path, eod_mask_loss=True)
    for i in range(len(train)):
        got, raw = train[i], reference[i]
        assert all(torch.equal(got[key], raw[key]) for key in raw)


@pytest.mark.parametrize("eod_mask_loss", [False, True])
@pytest.mark.parametrize("attention_mask", [True, False])
def test_fast_path_is_exactly_megatrons_sample(shard, tmp_path, attention_mask, eod_mask_loss):
    # Without per-document resets PauseGPTDataset builds samples itself in numpy; they must equal
    # megatron's, with and without pauses, attention mask and EOD loss masking.
    flags = dict(create_attention_mask=attention_mask, eod_mask_loss=eod_mask_loss)
    plain_pause, _, _ = build(shard, tmp_path, pause_fraction=0.0, **flags)
    reference, _, _ = plain_gpt(shard, tmp_path, **flags)
    paused, _, _ = build(shard, tmp_path, **flags)
    assert plain_pause._static_masks_apply and paused._static_masks_apply
    eods = 0
    for i in range(len(plain_pause)):
        got, raw = plain_pause[i], reference[i]
        assert list(got) == list(raw)
        assert all(torch.equal(got[key], raw[key]) and got[key].dtype == raw[key].dtype for key in raw)
        eods += int((raw["tokens"] == EOD).sum())
    assert eods > 0
    for i in range(len(paused)):
        fast, slow = paused._fast_sample(i), paused._megatron_sample(i)
        assert list(fast) == list(slow)
        assert all(torch.equal(fast[key], slow[key]) for key in slow)
        assert (fast["loss_mask"][fast["labels"] == PAUSE] == 0).all()


def _one_epoch_datasets(prefix, tmp_path, tokenizer, cls, **config):
    """(train, valid) over one epoch of ``prefix``, keeping valid's partial last window."""
    config = (PauseGPTDatasetConfig if cls is PauseGPTDataset else GPTDatasetConfig)(
        random_seed=7,
        sequence_length=32,
        blend=([prefix], None),
        split="1,1,0",
        path_to_cache=str(tmp_path / "cache"),
        tokenizer=MegatronTokenizerAdapter(tokenizer),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        drop_last_partial_validation_sequence=False,
        **config,
    )
    return BlendedMegatronDatasetBuilder(cls, [None, None, 0], lambda: True, config).build()[:2]


@pytest.mark.parametrize("pad", [EOD, 3], ids=["megatron-sentinel-pad", "distinct-pad-id"])
def test_window_reader_reads_megatrons_windows(tmp_path, pad):
    # Every window, read from the memory map, equals megatron's own read: spans of several
    # documents, the padded last validation window, and (with a distinct pad id that also occurs
    # as text) the samples built from them.
    documents = random_documents(3, 60, low=5, high=70)
    prefix = write_shard(str(tmp_path / "docs"), documents)
    tok = FakeTokenizer(pad=pad)
    paused_splits = _one_epoch_datasets(prefix, tmp_path, tok, PauseGPTDataset, pause_fraction=0.0)
    plain_splits = _one_epoch_datasets(prefix, tmp_path, tok, GPTDataset)
    spans = padded = 0
    for paused, plain in zip(paused_splits, plain_splits):
        reader = MMapWindowReader.for_dataset(paused)
        assert reader is not None
        for i in range(len(paused)):
            expected, document_ids, *_ = GPTDataset._query_document_sample_shuffle_indices(paused, i)
            got = reader.read(i)
            assert got.tolist() == expected.tolist(), i
            spans += len(document_ids) > 1
            padded += bool((expected == paused._pad_token_id).any())
            sample, reference = paused[i], plain[i]
            assert all(torch.equal(sample[key], reference[key]) for key in reference), i
    assert spans > 20
    # Padding with megatron's sentinel (-1) marks exactly the short window; a distinct pad id
    # also occurs as text, which megatron masks too, and so must we.
    assert padded == 1 if pad == EOD else padded > 1


def test_pickled_dataset_gives_the_same_samples(shard, tmp_path):
    # DataLoader workers started with "spawn" get a pickled copy: the memory-mapped window reader
    # must not travel (it would copy the shard) and must be rebuilt on the other side.
    import pickle

    paused, _, _ = build(shard, tmp_path)
    before = [paused[i] for i in range(len(paused))]
    assert isinstance(paused._window_reader, MMapWindowReader)
    payload = pickle.dumps(paused)
    assert len(payload) < 200_000
    copy = pickle.loads(payload)
    assert copy._window_reader is None
    for i, sample in enumerate(before):
        assert all(torch.equal(sample[key], copy[i][key]) for key in sample)


# --- determinism and resume ----------------------------------------------------------------------


def test_samples_are_deterministic_across_constructions_and_access_order(shard, tmp_path):
    first, _, _ = build(shard, tmp_path)
    again, _, _ = build(shard, tmp_path)  # a resumed run: megatron loads the cached indices
    order = list(range(len(first)))
    forward = [first[i] for i in order]
    backward = {i: again[i] for i in reversed(order)}
    for i in order:
        assert all(torch.equal(forward[i][key], backward[i][key]) for key in forward[i])
    other_seed, _, _ = build(shard, tmp_path, pause_seed=99)
    moved = sum(not torch.equal(first[i]["tokens"], other_seed[i]["tokens"]) for i in order)
    assert moved > 0.9 * len(order)  # another pause seed moves the pauses, not the windows
    for i in order:
        a, b = first[i]["tokens"], other_seed[i]["tokens"]
        assert torch.equal(a[a != PAUSE][:20], b[b != PAUSE][:20])


# --- offline shards, sidecars --------------------------------------------------------------------


def offline_documents(raw: list[np.ndarray], fraction: float, seed: int = 1) -> list[np.ndarray]:
    """What preprocessing with --insert-pauses writes: pauses among each body, eod kept last."""
    docs = []
    for d, doc in enumerate(raw):
        body = doc[:-1]
        paused = insert_pauses(
            body, num_pauses(body.shape[0], fraction), PAUSE, pause_key(seed, d, OFFLINE_STREAM)
        )
        docs.append(np.append(paused, EOD))
    return docs


def test_offline_paused_shard_is_not_paused_twice(tmp_path):
    docs = offline_documents(random_documents(1, 80), 0.1)
    prefix = write_shard(str(tmp_path / "offline"), docs)
    write_sidecar(prefix, sidecar_for(docs, 0.1))
    train, _, _ = build(prefix, tmp_path)
    reference, _, _ = plain_gpt(prefix, tmp_path)
    assert train.pause_mode.offline_pauses and train.pause_mode.online_pauses == 0
    pause_targets = 0
    for i in range(len(train)):
        got = train[i]
        assert torch.equal(got["tokens"], reference[i]["tokens"])  # exactly the stored data
        target_is_pause = got["labels"] == PAUSE
        assert torch.equal(got["loss_mask"], (~target_is_pause).float())
        pause_targets += int(target_is_pause.sum())
    assert pause_targets > 0


def test_blend_pauses_only_the_shard_without_offline_pauses(shard, tmp_path):
    docs = offline_documents(random_documents(2, 80), 0.1)
    offline = write_shard(str(tmp_path / "offline"), docs)
    write_sidecar(offline, sidecar_for(docs, 0.1))
    plain = write_shard(str(tmp_path / "plain"), random_documents(3, 80))
    write_sidecar(plain, sidecar_for(random_documents(3, 80), 0.0))  # preprocessed, no pauses
    train, _, _ = build(["0.5", offline, "0.5", plain], tmp_path, sizes=(100, 0, 0))
    modes = {ds.dataset_path: ds.pause_mode for ds in train.datasets}
    assert modes[offline].online_pauses == 0 and modes[offline].offline_pauses
    assert modes[plain].online_pauses == num_pauses(32, 0.1) and not modes[plain].offline_pauses


@pytest.mark.parametrize(
    "change,message",
    [({"pause_id": PAUSE - 1}, "pause id"), ({"vocab_size": BASE_VOCAB + 2}, "vocab size")],
)
def test_sidecar_disagreeing_with_the_tokenizer_refuses_the_dataset(shard, tmp_path, change, message):
    docs = random_documents(4, 30)
    prefix = write_shard(str(tmp_path / "other"), docs)
    write_sidecar(prefix, sidecar_for(docs, 0.0, **change))
    with pytest.raises(ValueError, match=message):
        build(["0.5", shard, "0.5", prefix], tmp_path, sizes=(50, 0, 0))
    assert not (tmp_path / "cache").exists()  # refused before any index was built


# --- blends, splits, bad input -------------------------------------------------------------------


def labelled_documents(first_label: int, count: int) -> list[np.ndarray]:
    """Document d is made of the token (first_label + d) only, so a token tells its document."""
    rng = np.random.default_rng(first_label)
    return [np.append(np.full(int(rng.integers(10, 60)), first_label + d), EOD) for d in range(count)]


def test_weighted_blend_and_split_draw_from_the_right_documents(tmp_path):
    a = write_shard(str(tmp_path / "a"), labelled_documents(1, 100))  # tokens 1..100
    b = write_shard(str(tmp_path / "b"), labelled_documents(201, 100))  # tokens 201..300
    sizes = (400, 60, 40)
    train, valid, test = build(["0.7", a, "0.3", b], tmp_path, seq_length=16, sizes=sizes, split="8,1,1")
    # megatron's book-ends for 100 documents and 8,1,1: [0, 80), [80, 90), [90, 100)
    ranges = {"train": (0, 80), "valid": (80, 90), "test": (90, 100)}
    for name, dataset, size in zip(("train", "valid", "test"), (train, valid, test), sizes):
        assert isinstance(dataset, PauseBlendedDataset) and len(dataset) == size
        begin, end = ranges[name]
        ids = np.array([int(dataset[i]["dataset_id"]) for i in range(len(dataset))])
        assert abs(np.mean(ids == 0) - 0.7) < 0.02
        for i in range(len(dataset)):
            s = dataset[i]
            text = window(s)
            text = text[(text != PAUSE) & (text != EOD)].numpy()
            first = 1 if s["dataset_id"] == 0 else 201
            assert np.all((text >= first + begin) & (text < first + end)), (name, i)


def test_per_split_data_paths_take_each_split_whole(tmp_path):
    a = write_shard(str(tmp_path / "a"), labelled_documents(1, 30))
    b = write_shard(str(tmp_path / "b"), labelled_documents(201, 30))
    train, valid, test = build(
        [], tmp_path, seq_length=16, sizes=(50, 20, 0), train_data_path=[a], valid_data_path=[b]
    )
    assert test is None
    for dataset, (low, high) in ((train, (1, 31)), (valid, (201, 231))):
        tokens = torch.cat([window(dataset[i]) for i in range(len(dataset))]).numpy()
        text = tokens[(tokens != PAUSE) & (tokens != EOD)]
        assert text.min() >= low and text.max() < high
        assert len(np.unique(text)) > 20  # the whole shard, not a split share of it


def test_empty_split_is_an_error_not_a_hang(tmp_path):
    prefix = write_shard(str(tmp_path / "small"), random_documents(5, 10))
    # 10 documents with 969,30,1: valid gets round(9.69)..round(9.99) = documents [10, 10)
    with pytest.raises(ValueError, match="valid split .* holds no tokens"):
        build(prefix, tmp_path, sizes=(10, 5, 0), split="969,30,1")


def test_missing_files_and_malformed_data_paths_are_clear_errors(tmp_path, shard):
    write_shard(str(tmp_path / "half"), random_documents(6, 3))
    (tmp_path / "half.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"half\.idx is missing"):
        build(str(tmp_path / "half"), tmp_path)
    with pytest.raises(FileNotFoundError, match="neither"):
        build(str(tmp_path / "nothing"), tmp_path)
    with pytest.raises(FileNotFoundError, match="without '.bin'"):
        check_prefix_files(shard + ".bin")
    assert parse_data_path("0.7 a 0.3 b").prefixes == ("a", "b")
    assert parse_data_path(["a", "b"]).weights is None
    assert parse_data_path(["0.7", "a", "0.3", "b"]).as_megatron() == (["a", "b"], [0.7, 0.3])
    assert check_split("969/30/1") == (969.0, 30.0, 1.0) and check_split("1") == (1.0, 0.0, 0.0)
    for bad_split in ("1,-1,0", "0,0,0", "a,b", "1,1,1,1"):
        with pytest.raises(ValueError, match="--split"):
            build(shard, tmp_path, split=bad_split)
    for bad, message in [
        (["0.7", "a", "b"], "pairs"),
        (["a", "0.3", "b"], "mixes"),
        (["0", "a"], "positive"),
        (["1", "a", "2", "3"], "expected a prefix"),
        ([], "empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_data_path(bad)


def test_config_rejects_bad_pause_settings():
    tok = FakeTokenizer()
    common = dict(random_seed=1, sequence_length=8, reset_position_ids=False, reset_attention_mask=False)
    common |= dict(eod_mask_loss=False, blend=(["x"], None), split="1,0,0")
    with pytest.raises(ValueError, match="percentage|fraction"):
        PauseGPTDatasetConfig(tokenizer=tok, pause_fraction=11.0, **common)
    with pytest.raises(ValueError, match="eod"):
        PauseGPTDatasetConfig(tokenizer=FakeTokenizer(pause_id=EOD), **common)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        PauseGPTDatasetConfig(tokenizer=FakeTokenizer(pause_id=BASE_VOCAB + 1), **common)
    with pytest.raises(ValueError, match="inter_document_masking.*before pauses are inserted"):
        PauseGPTDatasetConfig(tokenizer=tok, inter_document_masking=True, **common)
    config = PauseGPTDatasetConfig(tokenizer=tok, **common)
    assert config.pause_id == PAUSE and config.pause_seed == 1
    # pad == eod is not a distinct pad: megatron then pads with its own -1 sentinel.
    assert not hasattr(config.tokenizer, "pad")
    assert MegatronTokenizerAdapter(FakeTokenizer(pad=3)).pad == 3


# --- torch.distributed -----------------------------------------------------------------------


def _build_on_rank(rank: int, world_size: int, prefix: str, cache: str) -> list[list[int]]:
    config = PretrainDataConfig(
        data_path=["0.6", prefix, "0.4", prefix], split="1,0,0", seed=7, data_cache_path=cache
    )
    train, _, _ = build_pretraining_datasets(config, FakeTokenizer(), 32, [60, 0, 0])
    only_rank0, _, _ = build_pretraining_datasets(config, FakeTokenizer(), 32, [60, 0, 0], lambda: rank == 0)
    assert (only_rank0 is None) == (rank != 0)
    return [train[i]["tokens"].tolist() for i in range(len(train))]


def test_gloo_world_builds_on_rank0_first_and_matches_a_single_process(shard, tmp_path):
    from megatron_pause.testing import run_distributed

    cache = str(tmp_path / "cache")
    rank0, rank1 = run_distributed(_build_on_rank, 2, shard, cache, timeout=120)
    assert rank0 == rank1
    single, _, _ = build(["0.6", shard, "0.4", shard], tmp_path, sizes=(60, 0, 0))
    assert [single[i]["tokens"].tolist() for i in range(len(single))] == rank0


# --- offline vs online: the same pause distribution ------------------------------------------


def _pause_windows(dataset) -> np.ndarray:
    """Boolean (samples x (seq_length + 1)): where the sample windows hold a pause."""
    return np.stack([(window(dataset[i]) == PAUSE).numpy() for i in range(len(dataset))])


def _two_sample_chi2(a: np.ndarray, b: np.ndarray) -> float:
    """Chi-square statistic of homogeneity for two histograms over the same bins."""
    table = np.stack([a, b]).astype(float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def _gaps(is_pause: np.ndarray) -> np.ndarray:
    """Real tokens between consecutive pauses inside each window."""
    gaps = [np.diff(np.flatnonzero(row)) - 1 for row in is_pause]
    return np.concatenate(gaps)


def test_offline_and_online_insertion_give_the_same_pause_distribution(tmp_path):
    """Offline: round(f x n) pauses per document, windows cut afterwards. Online: round(f x L) per
    window of L + 1, then trimmed. Per position the pause rate is the same (f/(1+f) up to
    rounding) and flat along the window, the mean count agrees, and given the count the pauses
    are arranged alike (same gaps). The spread of the count differs by construction: online it
    is k minus a hypergeometric trim, offline binomial-like."""
    seq_length, fraction, samples = 100, 0.1, 3000
    raw = random_documents(10, 1000, low=200, high=600)
    online_prefix = write_shard(str(tmp_path / "online"), raw)
    offline_docs = offline_documents(raw, fraction, seed=3)
    offline_prefix = write_shard(str(tmp_path / "offline"), offline_docs)
    write_sidecar(offline_prefix, sidecar_for(offline_docs, fraction))
    opts = dict(seq_length=seq_length, sizes=(samples, 0, 0), create_attention_mask=False)
    online = _pause_windows(build(online_prefix, tmp_path, **opts)[0])
    offline = _pause_windows(build(offline_prefix, tmp_path, **opts)[0])
    width = seq_length + 1

    # Mean count per window: each matches its exact expectation, and they match each other.
    k = num_pauses(seq_length, fraction)
    online_expected = width * k / (width + k)
    body_pauses = sum(num_pauses(d.shape[0] - 1, fraction) for d in raw)
    offline_expected = width * body_pauses / sum(d.shape[0] for d in offline_docs)
    online_counts, offline_counts = online.sum(1), offline.sum(1)
    assert abs(online_counts.mean() - online_expected) < 0.02 * online_expected
    assert abs(offline_counts.mean() - offline_expected) < 0.03 * offline_expected
    assert abs(online_counts.mean() - offline_counts.mean()) < 0.04 * offline_expected

    # The online count is exactly k minus a hypergeometric number of trimmed pauses.
    assert online_counts.max() <= k
    pmf = np.array(
        [math.comb(k, c) * math.comb(width, width - c) / math.comb(width + k, width) for c in range(k + 1)]
    )
    observed = np.bincount(online_counts, minlength=k + 1)
    expected = pmf * online_counts.shape[0]
    keep = expected >= 5  # pool the sparse tail
    pooled_obs = np.append(observed[keep], observed[~keep].sum())
    pooled_exp = np.append(expected[keep], expected[~keep].sum())
    chi2 = float(((pooled_obs - pooled_exp) ** 2 / pooled_exp).sum())
    assert chi2 < 27.9  # p = 0.001 at <= 9 degrees of freedom
    # The documented difference: offline counts spread far more.
    assert offline_counts.var() > 3 * online_counts.var()

    # Where in the window pauses fall: flat for both, and the same for both.
    bins = np.array_split(np.arange(width), 10)
    online_by_bin = np.array([online[:, b].sum() for b in bins])
    offline_by_bin = np.array([offline[:, b].sum() for b in bins])
    assert _two_sample_chi2(online_by_bin, offline_by_bin) < 27.9  # p = 0.001, 9 d.o.f.
    for by_bin in (online_by_bin, offline_by_bin):
        sizes = np.array([len(b) for b in bins])
        flat = by_bin.sum() * sizes / sizes.sum()
        assert float(((by_bin - flat) ** 2 / flat).sum()) < 27.9

    # Gaps between consecutive pauses. Given its count, a window's pauses are a uniformly random
    # arrangement in both, so the gap histograms agree count by count. (Pooled over all windows
    # offline gaps run slightly shorter: its windows with more pauses, hence shorter gaps,
    # contribute more gaps -- the count spread again.)
    edges = [0, 1, 3, 6, 10, 15, 23, width]
    common_counts = [
        c for c in range(k + 1) if min((online_counts == c).sum(), (offline_counts == c).sum()) >= 400
    ]
    assert len(common_counts) >= 2
    for c in common_counts:
        online_gaps = np.histogram(_gaps(online[online_counts == c]), bins=edges)[0]
        offline_gaps = np.histogram(_gaps(offline[offline_counts == c]), bins=edges)[0]
        assert _two_sample_chi2(online_gaps, offline_gaps) < 22.5, c  # p = 0.001, 6 d.o.f.
