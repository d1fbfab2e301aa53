"""DataLoader construction for single-process and distributed runs, and endless iteration.

Training is iteration based; loop with::

    loader = build_dataloader(train_set, batch_size=2, num_workers=2, shuffle=True, seed=cfg.seed)
    for it, batch in zip(range(start_iter, max_iter), iterate_forever(loader, start_epoch)):
        ...

``iterate_forever`` calls ``sampler.set_epoch(epoch)`` before every pass, so each epoch is a new
permutation that depends only on ``(seed, epoch)`` and is identical on every rank's view.
Augmentation randomness: with workers, each worker's torch generator is seeded from the
loader's generator (seeded from ``seed`` and the rank); with ``num_workers=0`` the transforms
draw from the main process's global torch generator (seed it with ``torch.manual_seed``).
"""

from __future__ import annotations

import functools
import random
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from panfpn.data.collate import collate_panoptic


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

    def set_epoch(self, epoch: int) -> None:
        """Same order every epoch; present so iterate_forever can treat samplers alike."""


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _seed_worker(worker_id: int) -> None:
    # torch already seeds each worker's torch and `random` generators from the loader's base
    # seed; numpy is not, so forked workers would otherwise share numpy state.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_dataloader(dataset: Dataset, *, batch_size: int, num_workers: int = 0,
                     shuffle: bool = True, distributed: bool = False, seed: int = 0,
                     drop_last: bool | None = None, size_divisibility: int = 32,
                     pin_memory: bool = False) -> DataLoader:
    """DataLoader yielding :func:`collate_panoptic` batches.

    ``batch_size`` is per process. With ``distributed=True`` the rank and world size come from
    ``torch.distributed``: shuffled (training) loaders use a ``DistributedSampler`` (each rank a
    disjoint slice of the epoch's permutation); unshuffled (evaluation) loaders a
    :class:`ShardSampler` without padding. ``drop_last`` defaults to ``shuffle`` (training
    drops the incomplete last batch, evaluation keeps every image).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world = _rank_world() if distributed else (0, 1)
    drop_last = shuffle if drop_last is None else drop_last
    sampler: Sampler[int]
    if shuffle:
        # Also used with one process: it gives set_epoch and a (seed, epoch)-determined order.
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                     seed=seed, drop_last=drop_last)
    else:
        sampler = ShardSampler(len(dataset), rank, world)  # type: ignore[arg-type]
    generator = torch.Generator()
    generator.manual_seed(seed + 100_003 * rank)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=functools.partial(collate_panoptic, size_divisibility=size_divisibility),
        drop_last=drop_last, pin_memory=pin_memory, worker_init_fn=_seed_worker,
        generator=generator, persistent_workers=num_workers > 0,
    )


def iterate_forever(loader: DataLoader, start_epoch: int = 0) -> Iterator[dict]:
    """Yield batches endlessly, calling ``loader.sampler.set_epoch`` before each pass."""
    if len(loader) == 0:
        raise ValueError(f"the data loader yields no batch (dataset of {len(loader.dataset)} "  # type: ignore[arg-type]
                         f"images, batch size {loader.batch_size}, drop_last={loader.drop_last})")
    epoch = start_epoch
    while True:
        set_epoch = getattr(loader.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        yield from loader
        epoch += 1
