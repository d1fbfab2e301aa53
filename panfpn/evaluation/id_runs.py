"""Run-length view of panoptic id maps: the fast path from pixels to confusion counts.

Panoptic id maps are piecewise constant, so a map of N pixels holds only a few thousand runs of
equal ids in raster order (about 4,000 for a 640x480 COCO image with 30 segments). Finding the
runs costs one vectorised comparison; everything after it (pairing ground truth with
prediction, counting) works on the runs, so it is almost free next to PNG decoding.

A "runs" value is ``(starts, ids, n)``: ``starts`` int64 ``[R]`` ascending with
``starts[0] == 0``, ``ids`` int64 ``[R]`` the id of each run, ``n`` the pixel count. Run r
covers flat pixels ``starts[r] .. starts[r+1]-1`` (the last one up to ``n - 1``).
"""

from __future__ import annotations

import threading
from typing import Mapping, Sequence

import numpy as np

Runs = tuple[np.ndarray, np.ndarray, int]


def runs_of_ids(flat_ids: np.ndarray) -> Runs:
    """Runs of a flat integer id array ``[N]`` (any integer dtype)."""
    n = int(flat_ids.shape[0])
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    starts = np.flatnonzero(_run_heads(flat_ids))
    return starts, flat_ids[starts].astype(np.int64), n


def _run_heads(values: np.ndarray) -> np.ndarray:
    """bool ``[N]`` (N >= 1): True where a run of equal values starts (the first element, and each
    one that differs from the one before)."""
    heads = np.empty(values.shape[0], bool)
    heads[0] = True
    np.not_equal(values[1:], values[:-1], out=heads[1:])
    return heads


def runs_of_packed(words: np.ndarray) -> Runs:
    """Runs of an id map of packed words ``[H, W]`` uint32, id = ``word & 0xFFFFFF`` (the form of
    :func:`panfpn.data.panoptic_io.decode_id_png_packed`)."""
    starts, ids, n = runs_of_ids(np.ascontiguousarray(words).reshape(-1))
    return starts, ids & _ID_BITS, n


def known_ids(segments: Sequence[Mapping]) -> np.ndarray | None:
    """Sorted ids a map should hold (its segments' and void): a hint for the pair counting."""
    try:
        ids = np.array([0] + [int(s["id"]) for s in segments], np.int64)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None  # malformed segments are reported by the rules, with the image named
    # Sorted and deduplicated by hand: np.unique imports numpy.ma on its first call (~10 ms in
    # every fresh PQ worker).
    ids.sort()
    return ids[_run_heads(ids)]


_ID_BITS = (1 << 24) - 1  # a COCO-panoptic id fills the 24 bits of an RGB colour
_SLOT_BITS = (1 << 16) - 1  # the id bits that pick a slot of the lookup table
_LOOKUP = threading.local()  # each thread's slot -> index table (see _indices_in)


def _dense(ids: np.ndarray, known: np.ndarray | None,
           in_24_bits: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(sorted distinct values, index of each id among them, the index of the first value: 0 or 1).

    ``known`` (sorted ids expected in the map, e.g. from the JSON, plus 0) spares the sort of
    every run id (its indices come 1-based from the lookup table); an id outside it falls back to
    the exact path. ``in_24_bits``: the caller knows every id lies in [0, 2^24) (masked words),
    so the range check is skipped.
    """
    if known is not None and 0 < known.shape[0] < 1 << 15 and known[0] >= 0 and known[-1] <= _ID_BITS:
        idx = _indices_in(ids, known, in_24_bits)
        if idx is not None:
            return known, idx, 1
    vals = np.unique(ids)
    return vals, np.searchsorted(vals, ids), 0


def _indices_in(ids: np.ndarray, known: np.ndarray, in_24_bits: bool) -> np.ndarray | None:
    """1-based index (int16) of each of ``ids`` in ``known`` (sorted, distinct, within 24 bits), or
    None when one of ``ids`` is not in it (or two known ids share a table slot: rare).

    A table over the ids' low 16 bits (128 kB per thread, cache-resident) gives each run its
    candidate, one more gather checks it: 4x faster than a binary search of each run's id, and
    without the page faults of a table over all 2^24 ids, whose pages COCO's random colour ids
    touch all over (~6,000 per worker per evaluation).
    """
    if ids.shape[0] == 0:
        return np.zeros(0, np.int16)
    if not in_24_bits and (ids.min() < 0 or ids.max() > _ID_BITS):
        return None
    slots = known & _SLOT_BITS
    in_order = np.sort(slots)
    if (in_order[1:] == in_order[:-1]).any():  # two known ids share a slot
        return None
    table = getattr(_LOOKUP, "table", None)
    if table is None:
        table = _LOOKUP.table = np.zeros(_SLOT_BITS + 1, np.int16)  # 0: no known id in the slot
    table[slots] = np.arange(1, known.shape[0] + 1, dtype=np.int16)
    try:
        idx = table.take(ids & _SLOT_BITS)
    finally:
        table[slots] = 0
    candidates = np.empty(known.shape[0] + 1, known.dtype)
    candidates[0] = -1  # slot 0 of the index: no known id, never equal to an id
    candidates[1:] = known
    return idx if np.array_equal(candidates.take(idx), ids) else None


def _count(g_ids: np.ndarray, p_ids: np.ndarray, lengths: np.ndarray,
           gt_known: np.ndarray | None, pred_known: np.ndarray | None,
           in_24_bits: bool = False) -> list:
    # Dense per-image indices keep the count table tiny: (#gt ids) x (#pred ids); the offset of
    # 1-based indices is taken off the table, not off every run.
    g_vals, g_dense, g_first = _dense(g_ids, gt_known, in_24_bits)
    p_vals, p_dense, p_first = _dense(p_ids, pred_known, in_24_bits)
    n_p = p_vals.shape[0]
    cell = g_dense.astype(np.int64)
    cell *= n_p
    cell += p_dense
    offset = g_first * n_p + p_first
    if g_vals.shape[0] * n_p <= max(_DENSE_CELLS, 4 * cell.shape[0]):
        table = np.bincount(cell, weights=lengths, minlength=g_vals.shape[0] * n_p + offset)[offset:]
        nz = np.flatnonzero(table)
        counts = table[nz].astype(np.int64)
    else:  # thousands of ids on both sides: a table per pair of ids would take gigabytes
        nz, counts = _sums_by_cell(cell, lengths)
        nz -= offset
    gi, pi = np.divmod(nz, n_p)
    return list(zip(g_vals[gi].tolist(), p_vals[pi].tolist(), counts.tolist()))


_DENSE_CELLS = 1 << 16  # count tables up to this many cells (512 kB), or 4 per run, are dense


def _sums_by_cell(cell: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ascending distinct cells, the summed lengths of each): the sparse form of the count table,
    in the memory of the runs."""
    order = np.argsort(cell, kind="stable")
    cells = cell[order]
    starts = np.flatnonzero(_run_heads(cells))
    return cells[starts], np.add.reduceat(lengths[order], starts)


def pair_counts(gt: Runs, pred: Runs, gt_known: np.ndarray | None = None,
                pred_known: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """Pixel counts of every (gt id, pred id) pair of two maps of the same size, from their runs.

    Args:
        gt_known, pred_known: optional sorted int64 arrays of the ids expected in each map
            (a speed hint only: the result is the same without them).

    Returns:
        ``[(gt_id, pred_id, count)]`` with count > 0, sorted by (gt_id, pred_id).
    """
    g_starts, g_ids, n = gt
    p_starts, p_ids, n_pred = pred
    if n != n_pred:
        raise ValueError(f"id maps hold {n} and {n_pred} pixels")
    if n == 0:
        return []
    # The pieces on which both maps are constant start at the union of both run starts. A
    # stable argsort of two sorted halves is a linear merge; it also tells which run of each
    # map a piece lies in (the count of that map's starts up to it).
    merged = np.concatenate([g_starts, p_starts])
    order = np.argsort(merged, kind="stable")
    merged = merged[order]
    g_of = np.cumsum(order < g_starts.shape[0]) - 1
    p_of = np.arange(merged.shape[0]) - g_of - 1
    last = np.empty(merged.shape[0], bool)  # of equal starts keep the last: both counts are in
    last[-1] = True
    np.not_equal(merged[1:], merged[:-1], out=last[:-1])
    starts, g_of, p_of = merged[last], g_of[last], p_of[last]
    return _count(g_ids[g_of], p_ids[p_of], np.diff(starts, append=n), gt_known, pred_known)


def pair_counts_packed(gt_words: np.ndarray, pred_words: np.ndarray,
                       gt_known: np.ndarray | None = None,
                       pred_known: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """:func:`pair_counts` of two id maps of packed words ``[H, W]`` uint32 of one shape (id =
    ``word & 0xFFFFFF``, see :func:`runs_of_packed`), in one pass over the pixels."""
    if gt_words.shape != pred_words.shape:
        raise ValueError(f"id maps of shapes {gt_words.shape} and {pred_words.shape}")
    return _joint_counts(gt_words, pred_words, _ID_BITS, gt_known, pred_known)


def pair_counts_ids(gt: np.ndarray, pred: np.ndarray, gt_known: np.ndarray | None = None,
                    pred_known: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """:func:`pair_counts` of two integer id maps of one shape, in one pass over the pixels."""
    if gt.shape != pred.shape:
        raise ValueError(f"id maps of shapes {gt.shape} and {pred.shape}")
    return _joint_counts(gt, pred, None, gt_known, pred_known)


def _joint_counts(gt: np.ndarray, pred: np.ndarray, id_mask: int | None,
                  gt_known: np.ndarray | None, pred_known: np.ndarray | None) -> list:
    """Counts of two maps of one shape: a pixel starts a joint run when either map changes there;
    ``id_mask`` takes the id out of each run's value (None: the value is the id)."""
    g, p = np.ascontiguousarray(gt).reshape(-1), np.ascontiguousarray(pred).reshape(-1)
    n = g.shape[0]
    if n == 0:
        return []
    changed = _run_heads(g)
    np.logical_or(changed[1:], np.not_equal(p[1:], p[:-1]), out=changed[1:])
    starts = np.flatnonzero(changed)
    g_ids, p_ids = g.take(starts), p.take(starts)
    if id_mask is not None:
        g_ids &= id_mask
        p_ids &= id_mask
    lengths = np.empty(starts.shape[0], np.int64)
    np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
    lengths[-1] = n - starts[-1]
    return _count(g_ids, p_ids, lengths, gt_known, pred_known, in_24_bits=id_mask == _ID_BITS)
