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
    """Yields ``(index, sample_seed)`` forever: a fresh permutation per epoch, sharded by rank.

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
            order = list(range(self.size))
        else:
            g = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        # Every rank gets the same number of samples per epoch: pad by wrapping around.
        per_rank = -(-self.size // self.world_size)
        order = (order * (per_rank * self.world_size // self.size + 1))[: per_rank * self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_rank = -(-self.size // self.world_size)
        position = self.start
        epoch, offset = divmod(position, per_rank)
        while True:
            order = self._epoch_order(epoch)
            for idx in order[offset:]:
                # Seed from the position in the global stream (rank-interleaved), so N processes
                # with batch b augment exactly like one process with batch N*b.
                yield idx, self.seed * SAMPLE_SEED_STRIDE + position * self.world_size + self.rank
                position += 1
            epoch, offset = epoch + 1, 0


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
