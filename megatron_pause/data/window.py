"""A GPTDataset sample's token window, read straight from the memory-mapped ``.bin``.

Why: megatron-core's ``GPTDataset._query_document_sample_shuffle_indices`` reads each window
through ``IndexedDataset.get``. Per document piece, that is an index lookup, a bin-reader call
and an ``np.frombuffer``, and short windows are padded from a Python list. Per sample this is more
interpreter work than inserting the pauses. For the common case, one numpy view of the whole
``.bin`` gives the same window as one slice, or a few when the window spans documents. The case
needs a memory-mapped ``.bin`` (Megatron's default), no multimodal modes, and windows of
``sequence_length + 1`` tokens. The view is indexed by Megatron's own shuffle, sample and
document indices, read at the same byte positions.

``tests/test_dataset.py`` checks the read against Megatron's for every sample of several
datasets. Those include windows that span documents and a padded final validation window.
"""

from __future__ import annotations

import numpy as np
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.indexed_dataset import _MMapBinReader


class MMapWindowReader:
    """Reads ``dataset``'s (``sequence_length + 1``)-token windows; see the module docstring.

    Build it with :meth:`for_dataset`, which returns None when the fast read does not apply. It
    holds views of memory maps, so it is never pickled: a DataLoader worker builds its own.
    """

    def __init__(self, dataset: GPTDataset) -> None:
        if dataset.shuffle_index is None:  # megatron loads its indices lazily after unpickling
            dataset._query_document_sample_shuffle_indices(0)
        index = dataset.dataset.index
        itemsize = np.dtype(index.dtype).itemsize
        self.tokens = np.frombuffer(dataset.dataset.bin_reader._bin_buffer, dtype=index.dtype)
        self.starts = index.sequence_pointers // itemsize
        self.ends = self.starts + index.sequence_lengths
        self.shuffle_index = dataset.shuffle_index
        self.sample_index = dataset.sample_index
        self.document_index = dataset.document_index
        self.length = dataset.config.sequence_length + 1
        self.pad_id = dataset._pad_token_id

    @classmethod
    def for_dataset(cls, dataset: GPTDataset) -> MMapWindowReader | None:
        indexed = dataset.dataset
        if (
            not isinstance(indexed.bin_reader, _MMapBinReader)
            or indexed.index.sequence_modes is not None
            or not dataset.config.add_extra_token_to_sequence
        ):
            return None
        return cls(dataset)

    def read(self, idx: int) -> np.ndarray:
        """Megatron's window for sample ``idx``, padded with its pad id when short.

        The result may be a read-only view of the ``.bin``; copy it before writing.
        """
        sample = self.shuffle_index[idx]
        first, first_offset = self.sample_index[sample]
        last, last_offset = self.sample_index[sample + 1]
        docs = self.document_index
        if first == last:
            start = self.starts[docs[first]] + first_offset
            window = self.tokens[start : start + (last_offset - first_offset + 1)]
        else:
            doc = docs[first]
            pieces = [self.tokens[self.starts[doc] + first_offset : self.ends[doc]]]
            for i in range(first + 1, last):
                doc = docs[i]
                pieces.append(self.tokens[self.starts[doc] : self.ends[doc]])
            start = self.starts[docs[last]]
            pieces.append(self.tokens[start : start + last_offset + 1])
            window = np.concatenate(pieces)
        if window.shape[0] < self.length:
            # Megatron pads with a Python list of its pad id, which promotes the window to int64.
            padding = np.full(self.length - window.shape[0], self.pad_id, dtype=np.int64)
            window = np.concatenate([window, padding])
        return window
