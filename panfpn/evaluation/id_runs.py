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

import numpy as np

Runs = tuple[np.ndarray, np.ndarray, int]


def runs_of_ids(flat_ids: np.ndarray) -> Runs:
    """Runs of a flat integer id array ``[N]`` (any integer dtype)."""
    n = int(flat_ids.shape[0])
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    change = np.flatnonzero(flat_ids[1:] != flat_ids[:-1])
    starts = np.empty(change.shape[0] + 1, np.int64)
    starts[0] = 0
    np.add(change, 1, out=starts[1:])
    return starts, flat_ids[starts].astype(np.int64), n


def runs_of_rgb(rgb: np.ndarray) -> Runs:
    """Runs of a COCO-panoptic colour image ``[H, W, 3]`` uint8, id = R + 256 G + 256^2 B.

    Works on the bytes directly: a byte that differs from the byte three places earlier marks
    a pixel that starts a run, so no full-size id image is ever built.
    """
    h, w = rgb.shape[:2]
    n = h * w
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    flat = np.ascontiguousarray(rgb).reshape(-1)
    pixel = np.flatnonzero(flat[3:] != flat[:-3]) // 3  # pixel index - 1 of each changed byte
    if pixel.shape[0]:
        keep = np.empty(pixel.shape[0], bool)
        keep[0] = True
        np.not_equal(pixel[1:], pixel[:-1], out=keep[1:])
        pixel = pixel[keep]
    starts = np.empty(pixel.shape[0] + 1, np.int64)
    starts[0] = 0
    np.add(pixel, 1, out=starts[1:])
    at = flat.reshape(n, 3)[starts].astype(np.int64)
    ids = at[:, 0] | (at[:, 1] << 8) | (at[:, 2] << 16)
    return starts, ids, n


def pair_counts(gt: Runs, pred: Runs) -> list[tuple[int, int, int]]:
    """Pixel counts of every (gt id, pred id) pair of two maps of the same size, from their runs.

    Returns:
        ``[(gt_id, pred_id, count)]`` with count > 0, sorted by (gt_id, pred_id).
    """
    g_starts, g_ids, n = gt
    p_starts, p_ids, n_pred = pred
    if n != n_pred:
        raise ValueError(f"id maps hold {n} and {n_pred} pixels")
    if n == 0:
        return []
    # The pieces on which both maps are constant start at the union of both run starts.
    starts = np.concatenate([g_starts, p_starts])
    starts.sort(kind="stable")  # two sorted halves: a merge
    keep = np.empty(starts.shape[0], bool)
    keep[0] = True
    np.not_equal(starts[1:], starts[:-1], out=keep[1:])
    starts = starts[keep]
    lengths = np.diff(starts, append=n)
    g_of = np.searchsorted(g_starts, starts, side="right") - 1
    p_of = np.searchsorted(p_starts, starts, side="right") - 1
    # Dense per-image indices keep the count table tiny: (#gt ids) x (#pred ids).
    g_vals, g_inv = np.unique(g_ids, return_inverse=True)
    p_vals, p_inv = np.unique(p_ids, return_inverse=True)
    cell = g_inv[g_of] * p_vals.shape[0] + p_inv[p_of]
    table = np.bincount(cell, weights=lengths, minlength=g_vals.shape[0] * p_vals.shape[0])
    nz = np.flatnonzero(table)
    gi, pi = np.divmod(nz, p_vals.shape[0])
    return list(zip(g_vals[gi].tolist(), p_vals[pi].tolist(), table[nz].astype(np.int64).tolist()))


def segment_boxes(runs: Runs, width: int) -> dict[int, tuple[int, list[int]]]:
    """Area and COCO box ``[x, y, w, h]`` of every id of a map ``width`` pixels wide."""
    starts, ids, n = runs
    if n == 0:
        return {}
    # Split runs at row starts so that each piece lies in one row.
    rows = np.arange(0, n, width, dtype=np.int64)
    cut = np.union1d(starts, rows)
    run_of = np.searchsorted(starts, cut, side="right") - 1
    piece_ids = ids[run_of]
    lengths = np.diff(cut, append=n)
    y, x0 = np.divmod(cut, width)
    x1 = x0 + lengths  # exclusive
    vals, inv = np.unique(piece_ids, return_inverse=True)
    k = vals.shape[0]
    area = np.bincount(inv, weights=lengths, minlength=k).astype(np.int64)
    big = np.iinfo(np.int64).max
    xmin = np.full(k, big)
    ymin = np.full(k, big)
    xmax = np.zeros(k, np.int64)
    ymax = np.zeros(k, np.int64)
    np.minimum.at(xmin, inv, x0)
    np.minimum.at(ymin, inv, y)
    np.maximum.at(xmax, inv, x1)
    np.maximum.at(ymax, inv, y + 1)
    return {
        int(v): (int(a), [int(x), int(yy), int(xx - x), int(yb - yy)])
        for v, a, x, yy, xx, yb in zip(vals, area, xmin, ymin, xmax, ymax)
    }
