"""A map-style dataset of Samples and a seeded batch iterator that resumes exactly.

The trainer must resume a run as if it had never stopped, which includes the data: the next batch after a
restart is the one the interrupted run would have seen. Epoch e is read in the order of a permutation drawn
from a generator seeded with (seed, e), so (seed, epoch, offset) is the whole data position.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .formats import DataError
from .sample import Sample


class SampleDataset(torch.utils.data.Dataset):
    """Samples by index; a torch Dataset, so torch's DataLoader and samplers work with it too."""

    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


class BatchLoader:
    """Endless iterator of `collate(list of samples)` batches over shuffled epochs.

    Each batch takes the next `batch_size` samples of the epoch's order (with packing these become
    however many rows they fill); without `drop_last` an epoch's last batch may be smaller. Batches in
    which the collator dropped every sample are skipped. `state_dict()` after k batches, loaded into a
    fresh loader, yields batch k + 1 onwards identically.
    """

    def __init__(
        self,
        dataset: SampleDataset,
        collate: Callable[[list[Sample]], dict],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        if len(dataset) == 0:
            raise DataError("the dataset is empty: nothing to load")
        if batch_size < 1 or (drop_last and batch_size > len(dataset)):
            raise ValueError(f"batch_size {batch_size} does not fit a dataset of {len(dataset)} samples")
        self.dataset, self.collate, self.batch_size = dataset, collate, batch_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.offset = 0, 0
        self._order_epoch, self._order = -1, np.arange(0)

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of `epoch`, in reading order."""
        if epoch != self._order_epoch:
            n = len(self.dataset)
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order_epoch = epoch
        return self._order

    @property
    def progress(self) -> float:
        """Epochs done, fractional: for logging."""
        return self.epoch + self.offset / len(self.dataset)

    def __iter__(self) -> "BatchLoader":
        return self

    def __next__(self) -> dict:
        n = len(self.dataset)
        empty_samples = 0
        while True:
            if self.offset >= n or (self.drop_last and n - self.offset < self.batch_size):
                self.epoch, self.offset = self.epoch + 1, 0
            indices = self.order(self.epoch)[self.offset:self.offset + self.batch_size]
            self.offset += len(indices)
            batch = self.collate([self.dataset[int(i)] for i in indices])
            if len(batch["input_ids"]):
                return batch
            empty_samples += len(indices)
            if empty_samples >= n:
                raise DataError("the collator dropped every sample of a full epoch (all longer than max_length?)")

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "offset": self.offset, "n_samples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state["n_samples"] != len(self.dataset):
            raise DataError(
                f"cannot resume the data position: it was saved for {state['n_samples']} samples but the "
                f"dataset now has {len(self.dataset)}; resume with the same data files"
            )
        self.seed, self.epoch, self.offset = state["seed"], state["epoch"], state["offset"]
