"""Each ground-truth pixel's position in the image's segment list: computed once per image
(``EvalImage.gt_positions``) for the evaluators that count pixels per segment (``cityscapes_ap``,
``cityscapes_sem_seg``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def segment_positions(gt_map: np.ndarray, seg_ids: Sequence[int]) -> np.ndarray:
    """int64 map of ``gt_map``'s shape: each pixel's position in ``seg_ids`` (distinct), or
    ``len(seg_ids)`` for an id that is none of them (void). No sort of the pixels."""
    n = len(seg_ids)
    if n == 0:
        return np.zeros(gt_map.shape, dtype=np.int64)
    ids = np.asarray(seg_ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.minimum(np.searchsorted(ids[order], gt_map), n - 1)
    return np.where(ids[order][pos] == gt_map, order[pos], n)


__all__ = ["segment_positions"]
