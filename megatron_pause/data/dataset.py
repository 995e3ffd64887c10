"""Pause-pretraining samples on top of megatron-core's GPTDataset.

Goyal et al. pretrain with ``<pause>`` tokens inserted at uniformly random positions: round(10% of
the sequence length) per sample, after which the sample is trimmed back to its length. Doing this
*online*, in ``__getitem__``, keeps the preprocessed data plain Megatron data (usable with and
without pauses, at any fraction) and costs a few microseconds per sample. Everything else is
Megatron's: the document/sample/shuffle indices and their cache, the train/valid/test split, the
blending of weighted prefixes, the rank-0-first build under ``torch.distributed``, and the sample
dictionary (``tokens``, ``labels``, ``loss_mask``, ``position_ids`` and, when Megatron makes it,
``attention_mask``). That is why this subclasses ``GPTDataset`` instead of re-implementing it.

What a sample is, for dataset sample index ``i`` (the index ``__getitem__`` receives):

1. Megatron's window of ``seq_length + 1`` tokens for ``i`` (shuffled, spanning documents);
2. ``k = num_pauses(seq_length, pause_fraction)`` pauses inserted at uniformly random positions
   among its ``seq_length + 1 + k`` slots, drawn under ``pause_key(seed, i, ONLINE_STREAM)``, then
   trimmed back to ``seq_length + 1`` -- so a resumed run, or any worker, sees the same sample;
3. Megatron's shift into tokens/labels and its masks (EOD if ``eod_mask_loss``, padding), plus a
   zero loss mask wherever the *target* is ``<pause>``. A pause *input* still predicts the next
   real token, so its loss mask stays 1 when that target is real.

Shards whose pause sidecar says they were preprocessed with pauses (``pause_fraction > 0``) are
not paused again; their pause targets are still masked. Every shard's sidecar is checked against
the run's tokenizer, so a dataset with a different pause id is refused before training starts.

Offline versus online insertion. Offline (preprocessing) inserts round(f*n) pauses into each
document of n tokens; online inserts round(f*L) pauses into each window of L + 1 tokens. Both place
every pause slot uniformly, so at every position of a training window the chance of seeing a
pause is the same, f/(1+f) up to rounding, and the gaps between pauses follow the same
(geometric-like) law. The *spread* of the per-window count differs by construction: an online
window holds k minus the pauses trimmed off (hypergeometric, nearly constant), while an offline
window's count varies like a binomial, because documents are cut into windows without regard to
where their pauses fell. The means agree. ``tests/test_dataset.py`` measures all of this.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, _get_ltor_masks_and_position_ids
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import Split

from megatron_pause.data.blend import check_prefix_files, check_split, parse_data_path
from megatron_pause.data.sidecar import PauseSidecar, check_sidecar
from megatron_pause.data.window import MMapWindowReader
from megatron_pause.pause import ONLINE_STREAM, insert_pauses, kernel_in_use, num_pauses, pause_key

logger = logging.getLogger(__name__)

# The same bound the preprocessing tool puts on --insert-pauses: beyond it a value is almost
# certainly a percentage typed as a fraction.
MAX_PAUSE_FRACTION = 10.0


class MegatronTokenizerAdapter:
    """The face megatron-core's datasets expect of a tokenizer, over a ``PauseTokenizer``.

    GPTDataset reads ``vocab_size`` (to pick the token dtype), ``eod``, ``pad`` and the special
    ids (to check that padding cannot be confused with them), and serialises
    ``unique_identifiers`` into the description that names its index cache.

    ``pad`` follows Megatron's convention for tokenizers without a distinct pad id: when the
    tokenizer's pad equals its eod (or the pause id), it is not exposed, and Megatron pads short
    samples with its own sentinel (-1) instead, which never collides with real data.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.pause_tokenizer = tokenizer
        self.vocab_size = int(tokenizer.vocab_size)
        self.eod = int(tokenizer.eod)
        self.pause_id = int(tokenizer.pause_id)
        self.identity = str(getattr(tokenizer, "identity", type(tokenizer).__name__))
        bos = getattr(tokenizer, "bos", None)
        self.bos = None if bos is None else int(bos)
        pad = getattr(tokenizer, "pad", None)
        self._pad = None if pad is None or int(pad) in (self.eod, self.pause_id) else int(pad)
        specials = {"eod_token": self.eod, "pause_token": self.pause_id}
        if self.bos is not None:
            specials["bos_token"] = self.bos
        self.special_tokens_dict = specials
        self.unique_identifiers = OrderedDict(
            [
                ("class", type(tokenizer).__name__),
                ("tokenizer_type", str(getattr(tokenizer, "tokenizer_type", "?"))),
                ("identity", self.identity),
                ("vocab_size", self.vocab_size),
                ("pause_id", self.pause_id),
            ]
        )

    @property
    def pad(self) -> int:
        if self._pad is None:
            raise AttributeError("tokenizer has no pad id distinct from eod and <pause>")
        return self._pad

    def tokenize(self, text: str) -> list[int]:
        return self.pause_tokenizer.tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.pause_tokenizer.detokenize(ids)


def as_megatron_tokenizer(tokenizer: Any) -> MegatronTokenizerAdapter:
    """Wrap a PauseTokenizer (or anything with its attributes) for megatron-core; idempotent."""
    if isinstance(tokenizer, MegatronTokenizerAdapter):
        return tokenizer
    missing = [name for name in ("vocab_size", "eod", "pause_id") if not hasattr(tokenizer, name)]
    if missing:
        raise TypeError(f"tokenizer {type(tokenizer).__name__} lacks {missing}; pass a PauseTokenizer")
    return MegatronTokenizerAdapter(tokenizer)


@dataclass
class PauseGPTDatasetConfig(GPTDatasetConfig):
    """GPTDatasetConfig plus the pause recipe. ``tokenizer`` may be a PauseTokenizer; it is wrapped
    for megatron-core. ``pause_id`` defaults to the tokenizer's, ``pause_seed`` to ``random_seed``.

    The pause fields are deliberately not part of the index-cache key: they do not change which
    tokens form a sample, so runs that differ only in pause settings share Megatron's indices.
    """

    pause_fraction: float = 0.1
    pause_id: int | None = None
    pause_seed: int | None = None

    def __post_init__(self) -> None:
        if self.tokenizer is None:
            raise ValueError("PauseGPTDatasetConfig needs the run's tokenizer")
        self.tokenizer = as_megatron_tokenizer(self.tokenizer)
        super().__post_init__()
        if self.inter_document_masking:
            # megatron-core 0.19's per-document attention takes document lengths counted before
            # online pauses are inserted (and trimmed back), so its boundaries would be wrong, and
            # our __getitem__ builds no cu_seqlens. Refuse rather than mask the wrong tokens.
            raise ValueError(
                "inter_document_masking is not supported with pause insertion: megatron-core's "
                "document lengths count tokens before pauses are inserted"
            )
        fraction = float(self.pause_fraction)
        if not (math.isfinite(fraction) and 0.0 <= fraction <= MAX_PAUSE_FRACTION):
            raise ValueError(
                f"pause_fraction must be a fraction in [0, {MAX_PAUSE_FRACTION:g}] (the paper uses 0.1), "
                f"got {self.pause_fraction}"
            )
        self.pause_fraction = fraction
        if self.pause_id is None:
            self.pause_id = self.tokenizer.pause_id
        self.pause_id = int(self.pause_id)
        if self.pause_id != self.tokenizer.pause_id:
            raise ValueError(
                f"pause_id {self.pause_id} disagrees with the tokenizer's {self.tokenizer.pause_id}"
            )
        if not 0 <= self.pause_id < self.tokenizer.vocab_size:
            raise ValueError(
                f"pause id {self.pause_id} is outside the vocabulary [0, {self.tokenizer.vocab_size})"
            )
        if self.pause_id == self.tokenizer.eod:
            raise ValueError(
                f"pause id {self.pause_id} equals the eod id; the tokenizer needs a distinct <pause>"
            )
        if self.pause_seed is None:
            self.pause_seed = self.random_seed
        self.pause_seed = int(self.pause_seed)


@dataclass(frozen=True)
class ShardPauseMode:
    """How one shard is paused: ``online_pauses`` per sample (0 when off) and its sidecar."""

    online_pauses: int
    offline_pauses: bool
    sidecar: PauseSidecar | None


def shard_pause_mode(prefix: str | None, config: PauseGPTDatasetConfig) -> ShardPauseMode:
    """Check ``prefix``'s sidecar against the run's tokenizer (ValueError on a mismatch) and decide
    whether its samples get online pauses: not when the shard already carries offline ones."""
    sidecar = None if prefix is None else check_sidecar(prefix, config.tokenizer)
    offline = sidecar is not None and sidecar.pause_fraction > 0
    online = 0 if offline else num_pauses(config.sequence_length, config.pause_fraction)
    return ShardPauseMode(online_pauses=online, offline_pauses=offline, sidecar=sidecar)


class PauseGPTDataset(GPTDataset):
    """GPTDataset whose samples carry online pauses and mask pause targets (see module docstring)."""

    def __init__(
        self,
        indexed_dataset: IndexedDataset,
        dataset_path: str | None,
        indexed_indices: np.ndarray,
        num_samples: int | None,
        index_split: Split,
        config: PauseGPTDatasetConfig,
    ) -> None:
        if not isinstance(config, PauseGPTDatasetConfig):
            raise TypeError(
                f"{type(self).__name__} needs a PauseGPTDatasetConfig, got {type(config).__name__}"
            )
        # Before the (possibly slow) index build, so that a mismatched shard fails at once.
        self.pause_mode = shard_pause_mode(dataset_path, config)
        self.pause_id = config.pause_id
        self.pause_seed = config.pause_seed
        # Built on the first fast fetch (None: not yet; False: the fast read does not apply).
        self._window_reader: MMapWindowReader | None | bool = None
        self._static_masks: tuple[torch.Tensor | None, torch.Tensor] | None = None
        super().__init__(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config)
        if self.pause_mode.offline_pauses:
            logger.info(
                "%s %s: carries offline pauses (fraction %g), so no online pauses (the run's "
                "pause fraction %g applies to shards without them)",
                dataset_path,
                index_split.name,
                self.pause_mode.sidecar.pause_fraction,
                config.pause_fraction,
            )

    def _get_num_epochs(self, num_tokens_per_epoch: int) -> int:
        # GPTDataset adds epochs until it has enough tokens, which never happens when the split
        # holds none: fail with the fix instead of hanging.
        if num_tokens_per_epoch == 0 and self.num_samples is not None:
            raise ValueError(
                f"the {self.index_split.name} split of dataset {self.dataset_path} holds no tokens "
                f"({len(self.indices)} of its {self.dataset.sequence_lengths.shape[0]} documents with "
                f"--split {self.config.split!r}) but {self.num_samples} samples were requested; give that "
                "split a larger share or set it to 0, or use more data"
            )
        return super()._get_num_epochs(num_tokens_per_epoch)

    def _query_document_sample_shuffle_indices(self, idx: int) -> tuple[np.ndarray, ...]:
        # megatron-core 0.19 returns (text, document_ids, document_lengths); the lengths count
        # tokens before pause insertion, which is why inter-document masking is refused with pauses.
        text, *rest = super()._query_document_sample_shuffle_indices(idx)
        return (self._paused_window(text, idx), *rest)

    def _paused_window(self, window: np.ndarray, idx: int) -> np.ndarray:
        """Sample ``idx``'s window with its online pauses, as a new int64 array."""
        k = self.pause_mode.online_pauses
        if k == 0:
            return np.array(window, dtype=np.int64)
        # Insert into the whole (seq_length + 1)-token window and trim back: the paper's recipe.
        key = pause_key(self.pause_seed, idx, ONLINE_STREAM)
        return insert_pauses(window, k, self.pause_id, key, window.shape[0], np.int64)

    def __getitem__(self, idx: int | None) -> dict[str, torch.Tensor]:
        if idx is not None and self._static_masks_apply:
            return self._fast_sample(idx)
        return self._megatron_sample(idx)

    def __getstate__(self) -> dict:
        # The window reader holds views of memory maps; each process builds its own.
        state = self.__dict__.copy()
        state["_window_reader"] = None
        return state

    @property
    def _static_masks_apply(self) -> bool:
        """Whether every sample has the same attention mask and position ids: no per-document
        resets (Megatron-LM's defaults). ``--eod-mask-loss`` alone only changes the loss mask."""
        config = self.config
        return (
            not config.reset_position_ids
            and not config.reset_attention_mask
            and config.add_extra_token_to_sequence
        )

    def _fast_sample(self, idx: int) -> dict[str, torch.Tensor]:
        """GPTDataset's sample when attention mask and position ids are the same for every sample,
        built in a few numpy operations: the same tensors as :meth:`_megatron_sample`
        (tests/test_dataset.py checks every key against megatron's). Megatron's torch index-puts
        and per-document reads would cost more than the pause work itself; with
        ``--eod-mask-loss`` it also rebuilds the (seq x seq) attention mask for every sample,
        where this returns one shared tensor, as Megatron does when it caches its masks."""
        if self._window_reader is None:
            self._window_reader = MMapWindowReader.for_dataset(self) or False
            length = self.config.sequence_length
            attention_mask, _, position_ids = _get_ltor_masks_and_position_ids(
                torch.zeros(length, dtype=torch.long),
                0,
                False,
                False,
                False,
                self.config.create_attention_mask,
            )
            self._static_masks = (attention_mask, position_ids)
        if self._window_reader:
            text = self._paused_window(self._window_reader.read(idx), idx)
        else:
            text, *_ = self._query_document_sample_shuffle_indices(idx)
        labels = text[1:]
        keep = labels != self.pause_id
        if self.config.eod_mask_loss:
            keep &= text[:-1] != self.config.tokenizer.eod
        # Padding (the tokenizer's pad id, or megatron's -1 sentinel) fills a short last sample.
        is_pad = text == self._pad_token_id
        if is_pad.any():
            keep &= ~is_pad[1:]
            text[is_pad] = 0  # the embedding must be able to look padding up
        attention_mask, position_ids = self._static_masks
        sample = {"tokens": torch.from_numpy(text[:-1]), "labels": torch.from_numpy(labels)}
        if attention_mask is not None:
            sample["attention_mask"] = attention_mask
        sample["loss_mask"] = torch.from_numpy(keep.astype(np.float32))
        sample["position_ids"] = position_ids
        return sample

    def _megatron_sample(self, idx: int | None) -> dict[str, torch.Tensor]:
        masks_were_cached = self.masks_and_position_ids_are_cached
        sample = super().__getitem__(idx)
        loss_mask = sample["loss_mask"]
        if self.masks_and_position_ids_are_cacheable and not masks_were_cached:
            # On its first call GPTDataset caches this very tensor and then masks padding in it
            # in place. Give the cache a pristine mask (all ones: a cacheable config masks
            # nothing) so that neither that padding nor the pause masking below leaks into
            # every later sample.
            self.cached_loss_mask = torch.ones_like(loss_mask)
        # Never train to predict <pause> (inserted, or literal in the data). The same through numpy
        # views of these tensors measured no cheaper in place (~10 us either way).
        loss_mask.masked_fill_(sample["labels"] == self.pause_id, 0.0)
        return sample


class _DropRecords(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class PauseBlendedDataset(BlendedDataset):
    """megatron-core's BlendedDataset, also usable without torch.distributed when a cache path is set.

    megatron-core 0.16.1 asks ``torch.distributed.get_rank()`` on a blend-index cache miss, which
    raises in a single process. Here a single process builds the indices without the cache and
    then saves them under megatron's file names, so the next run loads them as usual.
    """

    def _build_indices(self) -> tuple[np.ndarray, np.ndarray]:
        cache_dir = self.config.path_to_cache
        if (
            torch.distributed.is_initialized()
            or not cache_dir
            or self.config.fast_cache_load
            or self.config.defer_npy_index_mmap
        ):
            return super()._build_indices()
        base = os.path.join(
            cache_dir, f"{self.unique_description_hash}-{type(self).__name__}-{self.split.name}"
        )
        description_path = f"{base}-description.txt"
        index_path = f"{base}-dataset_index.npy"
        sample_index_path = f"{base}-dataset_sample_index.npy"
        if all(os.path.isfile(p) for p in (description_path, index_path, sample_index_path)):
            return super()._build_indices()  # a cache hit never asks for the rank

        config = self.config
        self.config = copy.copy(config)
        self.config.path_to_cache = None
        # Megatron would warn that it cannot save without a cache path; this method saves them.
        quiet = _DropRecords("because path_to_cache is None")
        megatron_logger = logging.getLogger(BlendedDataset.__module__)
        megatron_logger.addFilter(quiet)
        try:
            dataset_index, dataset_sample_index = super()._build_indices()
        finally:
            self.config = config
            megatron_logger.removeFilter(quiet)
        os.makedirs(cache_dir, exist_ok=True)
        # The description goes last: megatron treats the cache as present only when all three
        # files exist, so an interrupted save is rebuilt instead of loaded half-written.
        for path, array in ((index_path, dataset_index), (sample_index_path, dataset_sample_index)):
            tmp = f"{path}.tmp.{os.getpid()}.npy"
            np.save(tmp, array, allow_pickle=True)
            os.replace(tmp, path)
        tmp = f"{description_path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.unique_description)
        os.replace(tmp, description_path)
        return dataset_index, dataset_sample_index


class PauseDatasetBuilder(BlendedMegatronDatasetBuilder):
    """megatron-core's builder, blending with :class:`PauseBlendedDataset`."""

    @staticmethod
    def build_generic_dataset(
        cls: Any, is_built_on_rank: Callable[[], bool], synchronize_ranks: bool, *args: Any
    ):
        if cls is BlendedDataset:
            cls = PauseBlendedDataset
        return BlendedMegatronDatasetBuilder.build_generic_dataset(
            cls, is_built_on_rank, synchronize_ranks, *args
        )


@dataclass
class PretrainDataConfig:
    """Data settings of a pause-pretraining run, named after Megatron-LM's flags.

    ``data_path`` is ``--data-path`` ("PREFIX" or "W1 PREFIX1 W2 PREFIX2 ..."), split by ``split``
    ("969,30,1"). ``train/valid/test_data_path`` are Megatron's per-split alternative (then
    ``data_path`` and ``split`` are not used). ``seed`` drives Megatron's shuffling and, unless
    ``pause_seed`` is given, the pause positions.
    """

    data_path: list[str] = field(default_factory=list)
    split: str = "969,30,1"
    train_data_path: list[str] | None = None
    valid_data_path: list[str] | None = None
    test_data_path: list[str] | None = None
    seed: int = 1234
    pause_fraction: float = 0.1
    pause_seed: int | None = None
    eod_mask_loss: bool = False
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    create_attention_mask: bool = True
    data_cache_path: str | None = None
    mmap_bin_files: bool = True
    num_dataset_builder_threads: int = 1
    mid_level_dataset_surplus: float = 0.005

    def per_split_paths(self) -> list[list[str] | None] | None:
        paths = [self.train_data_path, self.valid_data_path, self.test_data_path]
        return paths if any(p for p in paths) else None


def _checked_blend(data_path: Sequence[str] | str) -> tuple[list[str], list[float] | None]:
    blend = parse_data_path(data_path)
    for prefix in blend.prefixes:
        check_prefix_files(prefix)
    return blend.as_megatron()


def build_pretraining_datasets(
    config: PretrainDataConfig,
    tokenizer: Any,
    seq_length: int,
    train_valid_test_num_samples: Sequence[int | None],
    is_built_on_rank: Callable[[], bool] | None = None,
) -> tuple[Any, Any, Any]:
    """Build the (train, valid, test) pause datasets; an entry is None where a split is empty or,
    under torch.distributed, where ``is_built_on_rank()`` is False on this rank.

    Call on every rank when torch.distributed is initialised: megatron-core builds (and caches)
    on rank 0 first, then on the others behind a barrier. Without torch.distributed everything is
    built in this process. Each entry is a :class:`PauseGPTDataset` for a single unweighted prefix,
    otherwise a :class:`PauseBlendedDataset` (samples then carry megatron's ``dataset_id``).
    """
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    sizes = list(train_valid_test_num_samples)
    if len(sizes) != 3 or any(s is not None and (int(s) != s or s < 0) for s in sizes):
        raise ValueError(f"train_valid_test_num_samples must be 3 non-negative counts (or None), got {sizes}")
    sizes = [None if s is None else int(s) for s in sizes]

    blend = blend_per_split = None
    split: str | None = config.split
    per_split = config.per_split_paths()
    if per_split is not None:
        if config.data_path:
            raise ValueError("give either data_path (with split) or train/valid/test_data_path, not both")
        blend_per_split = [_checked_blend(p) if p else None for p in per_split]
        split = None
    else:
        if not config.data_path:
            raise ValueError("no data: pass data_path (Megatron's --data-path) or train/valid/test_data_path")
        # Positional notation: megatron's parser reads only digits and dots ("1e-05" would split).
        split = ",".join(np.format_float_positional(w, trim="-") for w in check_split(config.split))
        blend = _checked_blend(config.data_path)
    # megatron-core only asserts this, deep inside its builder.
    weighted_splits = [blend] * 3 if blend else blend_per_split or [None] * 3
    for name, split_blend, size in zip(("train", "valid", "test"), weighted_splits, sizes):
        if split_blend is not None and split_blend[1] is not None and size is None:
            raise ValueError(f"weighted data paths need a sample count for the {name} split, got {sizes}")

    if config.pause_fraction > 0 and not kernel_in_use():
        logger.warning(
            "online pauses use the numpy twin of the pause draw: the compiled one "
            "(megatron_pause/_pause_kernels.c) was not built for %s. Same pauses, slower samples "
            "(DataLoader workers, --num-workers, hide it); to build it run `pip install -e .` or "
            "`python setup.py build_ext --inplace` there",
            os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )
    dataset_config = PauseGPTDatasetConfig(
        random_seed=config.seed,
        sequence_length=seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=split,
        path_to_cache=config.data_cache_path,
        mmap_bin_files=config.mmap_bin_files,
        num_dataset_builder_threads=config.num_dataset_builder_threads,
        mid_level_dataset_surplus=config.mid_level_dataset_surplus,
        tokenizer=tokenizer,
        reset_position_ids=config.reset_position_ids,
        reset_attention_mask=config.reset_attention_mask,
        eod_mask_loss=config.eod_mask_loss,
        create_attention_mask=config.create_attention_mask,
        pause_fraction=config.pause_fraction,
        pause_seed=config.pause_seed,
    )
    # Every shard's sidecar, before any index is built: a mismatch must stop the run at once.
    prefixes = list(blend[0]) if blend else [p for b in blend_per_split or [] if b for p in b[0]]
    for prefix in dict.fromkeys(prefixes):
        mode = shard_pause_mode(prefix, dataset_config)
        if mode.sidecar is None:
            logger.info("%s has no pause sidecar: treated as plain data from this run's tokenizer", prefix)

    builder = PauseDatasetBuilder(PauseGPTDataset, sizes, is_built_on_rank or (lambda: True), dataset_config)
    train, valid, test = builder.build()
    return train, valid, test
