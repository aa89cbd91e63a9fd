"""BOS-aligned best-fit packing: every row starts with BOS, no padding, every position a real token.

Documents are tokenized with BOS prepended and kept in a buffer sorted by length. Each row of
`seq_len + 1` tokens is filled by repeatedly placing the longest buffered document that still
fits; when none fits, the shortest one is cropped to fill the row exactly and its remainder is
dropped (upstream's rule: a row never continues a document from the middle, so the model always
sees a document start right after a BOS). Inputs are `row[:-1]`, targets `row[1:]`.

Epochs are true passes: the buffer is refilled only from the current pass, drained when the
pass is exhausted, and the next pass starts after it is empty, so the first rows of the `val`
split are always the same documents in the same order (evaluation relies on it). `train` shuffles
file, row-group and document order per epoch from `seed`; `val` never shuffles. Both are infinite;
the yielded epoch counts passes from 1.

Tensors are fresh per batch. On CUDA the batch goes through pinned host memory with a
non-blocking copy; on every other device (CPU, MPS, ...) it is a plain copy.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from shared_data.prepare import PreparedData
from shared_data.tokenizer import Tokenizer

DOC_BUFFER_SIZE = 1000  # documents the best-fit search chooses from (upstream's buffer)
TOKENIZE_BATCH_DOCS = 128  # documents per tokenizer call (tiktoken batches across threads)


@dataclass
class PackingStats:
    rows: int = 0
    docs_placed: int = 0  # documents placed whole
    docs_cropped: int = 0  # documents cut to fill the end of a row
    tokens_placed: int = 0  # tokens written into rows
    tokens_dropped: int = 0  # tokens cut off cropped documents

    @property
    def utilization(self) -> float:
        """Share of row positions holding real tokens: 1.0 by construction (there is no padding)."""
        return 1.0 if self.rows else 0.0

    @property
    def kept_fraction(self) -> float:
        """Share of tokenized document tokens that made it into rows (the rest was cropped off)."""
        total = self.tokens_placed + self.tokens_dropped
        return self.tokens_placed / total if total else 0.0


def _document_batches(files: list[Path], text_column: str, shuffle: bool, seed: int,
                      epoch: int) -> Iterator[list[str]]:
    """One pass over the split's documents, in batches for the tokenizer."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(files)
    if shuffle:
        rng.shuffle(order)
    for path in order:
        parquet = pq.ParquetFile(path)
        groups = list(range(parquet.num_row_groups))
        if shuffle:
            rng.shuffle(groups)
        for group in groups:
            texts = parquet.read_row_group(group, columns=[text_column]).column(0).to_pylist()
            if shuffle:
                rng.shuffle(texts)
            for start in range(0, len(texts), TOKENIZE_BATCH_DOCS):
                yield texts[start:start + TOKENIZE_BATCH_DOCS]


class BestFitPacker:
    """Packs BOS-prefixed token documents into rows of fixed length; see the module docstring."""

    def __init__(self, epoch_documents: Callable[[int], Iterator[list[list[int]]]], row_capacity: int,
                 buffer_size: int = DOC_BUFFER_SIZE) -> None:
        # epoch_documents(epoch) -> batches of token-id documents, each starting with BOS
        if row_capacity < 2 or buffer_size < 1:
            raise ValueError("row_capacity must be >= 2 and buffer_size >= 1")
        self._epoch_documents = epoch_documents
        self.row_capacity = row_capacity
        self.buffer_size = buffer_size
        self.epoch = 1
        self.stats = PackingStats()
        self._lengths: list[int] = []  # sorted ascending, parallel to _docs
        self._docs: list[list[int]] = []
        self._source = self._epoch_documents(self.epoch)
        self._empty_passes = 0
        self.rows_in_first_epoch = 0  # rows completed before pass 2 began

    def _refill(self) -> None:
        """Top the buffer up from the current pass; start the next pass only once the buffer is empty."""
        while len(self._docs) < self.buffer_size:
            batch = next(self._source, None)
            if batch is None:
                if self._docs:
                    return  # drain what is left of this pass first
                self._empty_passes += 1
                if self._empty_passes > 1:
                    raise ValueError("the split has no documents")
                if self.epoch == 1:
                    self.rows_in_first_epoch = self.stats.rows
                self.epoch += 1
                self._source = self._epoch_documents(self.epoch)
                continue
            self._empty_passes = 0
            for doc in batch:
                index = bisect.bisect_right(self._lengths, len(doc))
                self._lengths.insert(index, len(doc))
                self._docs.insert(index, doc)

    def fill_row(self, row: np.ndarray) -> None:
        """Fill `row` (length row_capacity) completely."""
        pos = 0
        while pos < self.row_capacity:
            self._refill()
            remaining = self.row_capacity - pos
            index = bisect.bisect_right(self._lengths, remaining) - 1  # longest document that fits
            if index >= 0:
                doc = self._docs.pop(index)
                self._lengths.pop(index)
                row[pos:pos + len(doc)] = doc
                pos += len(doc)
                self.stats.docs_placed += 1
                self.stats.tokens_placed += len(doc)
            else:
                doc = self._docs.pop(0)  # shortest; longer than what is left of the row
                self._lengths.pop(0)
                row[pos:] = doc[:remaining]
                pos = self.row_capacity
                self.stats.docs_cropped += 1
                self.stats.tokens_placed += remaining
                self.stats.tokens_dropped += len(doc) - remaining
        self.stats.rows += 1


class DataLoader:
    """Infinite iterator of (inputs [B,T] int64, targets [B,T] int64, epoch) on `device`."""

    def __init__(self, prepared: PreparedData, tokenizer: Tokenizer, split: str, batch_size: int, seq_len: int,
                 device: torch.device | str, *, seed: int = 0, buffer_size: int = DOC_BUFFER_SIZE) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        files = prepared.train_files if split == "train" else prepared.val_files
        if not files:
            raise ValueError(f"prepared data has no {split} files")
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.device = torch.device(device)
        self._pin = self.device.type == "cuda"
        text_column = prepared.manifest.text_column
        shuffle = split == "train"

        def epoch_documents(epoch: int) -> Iterator[list[list[int]]]:
            for texts in _document_batches(files, text_column, shuffle, seed, epoch):
                yield tokenizer.encode(texts, prepend_bos=True)

        self.packer = BestFitPacker(epoch_documents, seq_len + 1, buffer_size)

    @property
    def stats(self) -> PackingStats:
        return self.packer.stats

    def __iter__(self) -> DataLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        rows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for row in rows:
            self.packer.fill_row(row)
        host = torch.from_numpy(rows)
        if self._pin:
            staged = torch.empty((2, self.batch_size, self.seq_len), dtype=torch.int64, pin_memory=True)
            staged[0].copy_(host[:, :-1])
            staged[1].copy_(host[:, 1:])
            on_device = staged.to(self.device, non_blocking=True)
            return on_device[0], on_device[1], self.packer.epoch
        inputs = host[:, :-1].contiguous()
        targets = host[:, 1:].contiguous()
        if self.device.type != "cpu":
            inputs, targets = inputs.to(self.device), targets.to(self.device)
        return inputs, targets, self.packer.epoch


def make_dataloader(prepared: PreparedData, tokenizer: Tokenizer, split: str, batch_size: int, seq_len: int,
                    device: torch.device | str, *, seed: int = 0,
                    buffer_size: int = DOC_BUFFER_SIZE) -> DataLoader:
    """BOS-aligned best-fit packed batches of `split`; infinite, see the module docstring."""
    return DataLoader(prepared, tokenizer, split, batch_size, seq_len, device, seed=seed, buffer_size=buffer_size)
