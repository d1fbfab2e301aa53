"""An endless, resumable stream of training samples with per-sample random seeds.

Resume must continue exactly where an uninterrupted run would be, whatever the number of
DataLoader workers. So the order of samples is a pure function of (seed, epoch), and each sample's
augmentation randomness is seeded from its position in the stream, not from worker RNG state.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


# Primes that keep the (seed, epoch) and (seed, stream position) seed spaces of different run
# seeds from overlapping for any realistic number of epochs / samples.
EPOCH_SEED_STRIDE = 1_000_003
SAMPLE_SEED_STRIDE = 1_000_000_007

class ResumableTrainingSampler(Sampler):
    """Yields ``(index, sample_seed)`` forever: rank ``r`` of ``W`` takes positions r, r+W, r+2W, ...
    of one global stream, a fresh permutation per epoch laid end to end (Detectron2's
    TrainingSampler), so W processes with batch b see exactly the samples of one process with
    batch W*b, also when the dataset size does not divide by W (no padding within an epoch).

    ``start`` is the number of samples this rank has already consumed (iteration × per-rank batch),
    so a resumed run skips them without loading them.
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, start: int = 0) -> None:
        if size <= 0:
            raise ValueError("the training dataset is empty")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.shuffle, self.start = shuffle, start

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start  # this rank's samples so far
        epoch, order = -1, []
        while True:
            global_position = position * self.world_size + self.rank
            sample_epoch, offset = divmod(global_position, self.size)
            if sample_epoch != epoch:
                epoch, order = sample_epoch, self._epoch_order(sample_epoch)
            # Seeded from the position in the global stream, so N processes with batch b augment
            # exactly like one process with batch N*b.
            yield order[offset], self.seed * SAMPLE_SEED_STRIDE + global_position
            position += 1


class SeededSampleDataset(Dataset):
    """Wraps a dataset so ``ds[(index, seed)]`` draws its random augmentation from ``seed`` alone.

    The global RNG states of the calling process are restored afterwards, so loading in the main
    process (num_workers=0) does not disturb the model's randomness.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed % (2**63))
                random.seed(seed)
                np.random.seed(seed % (2**32))
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
