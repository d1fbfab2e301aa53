"""Pictures of a few images out of every rank's shard: the ones one process would have picked.

Evaluation shards are contiguous (rank 0 the first images, rank 1 the next, ...), so the dataset
order is (rank, order within the rank). The overlays of the first ``n`` images and the report's
``k`` lowest-PQ images are picked in that order over all ranks; only the picked pictures travel.
Identity with one process.
"""

from __future__ import annotations

from typing import Any, Sequence, TypeVar

from panfpn.utils.dist import all_gather_objects, get_rank, is_multiprocess

T = TypeVar("T")


def first_over_ranks(items: Sequence[T], n: int) -> list[T]:
    """The first ``n`` of every rank's ``items`` laid end to end in rank order (all ranks)."""
    if not is_multiprocess():
        return list(items)[:n]
    counts = all_gather_objects(len(items))
    room = max(0, n - sum(counts[:get_rank()]))
    return [x for part in all_gather_objects(list(items)[:room]) for x in part][:n]


def lowest_over_ranks(scored: Sequence[Any], k: int) -> list[Any]:
    """The ``k`` items with the lowest ``.pq`` over all ranks, ties to the earlier image (all ranks).

    ``scored``: this rank's ``k`` lowest, lowest first and ties in the order seen (what
    :meth:`panfpn.evaluation.worst_images.WorstImages.worst` returns); with contiguous shards the
    key (pq, rank, position) is the order one process would have kept them in.
    """
    if not is_multiprocess():
        return list(scored)[:k]
    pqs = all_gather_objects([float(s.pq) for s in scored])
    keys = sorted((pq, rank, i) for rank, part in enumerate(pqs) for i, pq in enumerate(part))[:k]
    mine = {i for _, rank, i in keys if rank == get_rank()}
    parts = all_gather_objects({i: s for i, s in enumerate(scored) if i in mine})
    return [parts[rank][i] for _, rank, i in keys]
