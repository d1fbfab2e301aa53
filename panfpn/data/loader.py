"""DataLoaders for training (endless, resumable) and evaluation (ordered, sharded).

Training is iteration based and resumable; the one training loader is::

    loader = build_training_loader(train_set, batch_size=2, seed=cfg.seed, num_workers=2,
                                   start_iter=start_iter)
    for it, batch in zip(range(start_iter, max_iter), loader):
        ...

The sample order is a pure function of ``(seed, epoch)``, sharded by rank, and each sample's
augmentation is seeded from its position in the global stream (:mod:`panfpn.data.sampler`), so
a run resumed at ``start_iter`` continues exactly like the uninterrupted one, with any number
of workers or processes. Evaluation loaders keep the dataset order and give each rank a
contiguous, unpadded shard.
"""

from __future__ import annotations

import functools
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from panfpn.data.collate import SIZE_DIVISIBILITY, collate_panoptic
from panfpn.data.sampler import ResumableTrainingSampler, SeededSampleDataset
from panfpn.utils.dist import get_rank, get_world_size
from panfpn.utils.stop_signals import ignore_foreign_stop_signals


class ShardSampler(Sampler[int]):
    """Contiguous, unpadded shard of ``range(n)`` for this rank: every sample is seen exactly once
    over all ranks (evaluation must not count padded duplicates, as DistributedSampler adds)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        per = (n + world_size - 1) // world_size
        self.indices = range(min(rank * per, n), min((rank + 1) * per, n))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _rank_world() -> tuple[int, int]:
    return get_rank(), get_world_size()


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGINT, and SIGTERM unless its parent sent it.

    A stop signal sent to every process (Slurm's scancel and preemption, ``kill -- -PGID``,
    ``timeout``, Ctrl-C in a terminal) reaches the workers too. torch's worker handler dies on a
    SIGTERM its parent did not send, and the main process then fails with "DataLoader worker ...
    killed by signal" instead of saving a checkpoint at the next iteration. The main process
    decides when to stop and ends its workers itself: with SIGTERM when one is still running
    (torch's shutdown, Python's exit after Ctrl-C twice), which must end it, or the parent's exit
    waits for it forever. A worker whose parent is gone exits on torch's watchdog or any SIGTERM.
    """
    ignore_foreign_stop_signals()  # also the pool workers of tools/merge.py and pq_compute


def build_training_loader(dataset: Dataset, *, batch_size: int, seed: int, num_workers: int = 0,
                          start_iter: int = 0, distributed: bool = False,
                          size_divisibility: int = SIZE_DIVISIBILITY, pin_memory: bool = False) -> DataLoader:
    """Endless DataLoader of :func:`collate_panoptic` training batches, resumable exactly.

    ``batch_size`` is per process; ``start_iter`` iterations of this rank are skipped without
    loading them. With ``distributed=True`` rank and world size come from
    ``torch.distributed`` and rank r takes samples r, r+W, ... of the single-process stream.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(f"the training dataset {type(dataset).__name__} has no images")
    rank, world = _rank_world() if distributed else (0, 1)
    sampler = ResumableTrainingSampler(len(dataset), seed=seed, rank=rank,  # type: ignore[arg-type]
                                       world_size=world, start=start_iter * batch_size)
    return DataLoader(
        SeededSampleDataset(dataset), batch_size=batch_size, sampler=sampler,
        num_workers=num_workers,
        collate_fn=functools.partial(collate_panoptic, size_divisibility=size_divisibility),
        persistent_workers=num_workers > 0, pin_memory=pin_memory, worker_init_fn=ignore_stop_signals,
        # Its own generator: creating the iterator must not draw from the global RNG, or a
        # resumed run's model randomness would drift from the uninterrupted run's.
        generator=torch.Generator().manual_seed(seed),
    )


def build_dataloader(dataset: Dataset, *, batch_size: int, num_workers: int = 0,
                     distributed: bool = False, size_divisibility: int = SIZE_DIVISIBILITY,
                     pin_memory: bool = False) -> DataLoader:
    """Evaluation DataLoader: dataset order, every image once (no padding, no dropping).

    With ``distributed=True`` each rank reads a contiguous :class:`ShardSampler` shard.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world = _rank_world() if distributed else (0, 1)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world),  # type: ignore[arg-type]
        num_workers=num_workers,
        collate_fn=functools.partial(collate_panoptic, size_divisibility=size_divisibility),
        pin_memory=pin_memory, persistent_workers=False, worker_init_fn=ignore_stop_signals,
    )
