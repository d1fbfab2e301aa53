"""The panoptic merge with static shapes, for export: the rules of :mod:`panfpn.modeling.merge_reference`.

Inputs are at most ``K`` instances (``K`` = the box head's detections per image), padded to ``K``,
in merge order (descending score, as the box head returns them). The definition paints one
instance at a time; a kept instance claims all its free pixels, so the claimed set after step ``i``
is the union of the kept masks so far, and the keep test of instance ``i`` needs only its overlap
with that union. :func:`merge_static` runs that as a loop unrolled over the ``K`` slots (a few
whole-image ops each), then paints every pixel with the first kept instance covering it (the
``.pt2`` program's form); :func:`merge_in_boxes` runs the same loop on masks given inside their
boxes, each step reading and writing only its box of the id map (the ONNX graph's form: no
``[K, H, W]`` tensor, which made onnxruntime slower than eager). The drop tests are the fused kernel's exact integer limits (:func:`keep_limits`, as
:func:`panfpn.modeling.merge_fused._keep_limit`, with float64 constants that survive ONNX export).
Stuff and the segment list follow as in the fused kernel; the segments come out as fixed-size
arrays ordered by id, with a count.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from panfpn.deploy.resize import f64
from panfpn.modeling.merge import MergeThresholds

STUFF_SCORE = -1.0  # the score column of stuff segments (they have none)


def resolve_things(masks: Tensor, limits: Tensor) -> tuple[Tensor, Tensor]:
    """Sequential keep decisions: ``masks`` bool ``[K, H, W]`` in merge order, ``limits`` int64 ``[K]``
    (largest allowed overlap). Returns ``keep`` bool ``[K]`` and ``overlap`` int64 ``[K]`` (pixels of
    each mask claimed by earlier kept instances at its turn)."""
    claimed = torch.zeros_like(masks[0])
    keeps, overlaps = [], []
    for i in range(masks.shape[0]):
        row = masks[i]
        overlap = (row & claimed).sum()
        keep = overlap <= limits[i]
        claimed = claimed | (row & keep)
        keeps.append(keep)
        overlaps.append(overlap)
    return torch.stack(keeps), torch.stack(overlaps)


def keep_limits(area: Tensor, overlap_thresh: float | None, min_remaining: int) -> Tensor:
    """The largest overlap (already claimed pixels) each instance may have and still be kept:
    ``free >= max(min_remaining, 1)`` and, with ``overlap_thresh``, ``overlap / area <= overlap_thresh``
    in float64 (the eager test). ``area``: int64 ``[K]``; -1 or less: never kept."""
    limit = area - max(int(min_remaining), 1)
    if overlap_thresh is None:
        return limit
    a, thresh, one = area.double(), f64(overlap_thresh), f64(1.0)
    # floor(t * area) is within one of the answer; two steps each way make it exact (as merge_fused)
    ratio_limit = torch.minimum(torch.maximum(torch.floor(thresh * a), -one), a - one)
    for _ in range(2):
        up = (ratio_limit + one <= a - one) & ((ratio_limit + one) / a <= thresh)
        ratio_limit = torch.where(up, ratio_limit + one, ratio_limit)
    for _ in range(2):
        down = (ratio_limit >= f64(0.0)) & (ratio_limit / a > thresh)
        ratio_limit = torch.where(down, ratio_limit - one, ratio_limit)
    ratio_limit = torch.where(area > 0, ratio_limit, -one).long()
    return torch.minimum(limit, ratio_limit)


def merge_static(masks: Tensor, scores: Tensor, labels: Tensor, sem: Tensor, *, thing_sem_labels: Sequence[int],
                 num_sem_classes: int, merge: MergeThresholds) -> tuple[Tensor, dict[str, Tensor]]:
    """Merge ``K`` padded instances (``masks`` bool ``[K, H, W]``, ``scores`` ``[K]`` with padding
    scored below any threshold, ``labels`` ``[K]``) and ``sem`` int64 ``[H, W]``.

    Returns the id map int32 ``[H, W]`` and the segments as ``[K + S]`` arrays in id order: ``id``
    int32, ``isthing`` bool, ``category`` int64 (thing label or semantic label), ``score`` float32
    (:data:`STUFF_SCORE` for stuff), ``area`` int64, plus ``count`` (int64 scalar).
    """
    area = masks.sum((1, 2))
    keep, overlap = resolve_things(masks, thing_limits(area, scores, merge))
    ids = torch.where(keep, torch.cumsum(keep.long(), 0), 0)
    kept = (masks & keep[:, None, None]).to(torch.uint8)
    owner = kept.argmax(0)  # the first kept instance covering the pixel
    id_map = torch.where(kept.amax(0) > 0, ids[owner], 0)
    return add_stuff(id_map, keep, ids, labels, scores, area - overlap, sem, thing_sem_labels=thing_sem_labels,
                     num_sem_classes=num_sem_classes, stuff_area=merge.stuff_area)


def merge_in_boxes(crops: Sequence[Tensor], spans: Tensor, scores: Tensor, labels: Tensor, sem: Tensor, *,
                   thing_sem_labels: Sequence[int], num_sem_classes: int,
                   merge: MergeThresholds) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`merge_static` with each mask given inside its box (``crops[i]`` bool, placed at rows
    ``spans[i, 0]:spans[i, 1]`` and columns ``spans[i, 2]:spans[i, 3]``; zero outside): the same
    outputs, but each instance reads and writes only its box of the id map, so no ``[K, H, W]``
    tensor exists (what made the exported graph slower than eager). The id map itself is the
    claimed set: a pixel is free while its id is 0."""
    area = torch.stack([crop.sum() for crop in crops])
    limits = thing_limits(area, scores, merge)
    id_map = torch.zeros_like(sem, dtype=torch.int32)
    count = torch.zeros((), dtype=torch.int32)
    keeps, taken = [], []
    for crop, (y0, y1, x0, x1), crop_area, limit in zip(crops, spans, area, limits):
        region = id_map[y0:y1, x0:x1]
        free = crop & (region == 0)
        num_free = free.sum()
        keep = crop_area - num_free <= limit  # the overlap with the instances kept so far
        count = count + keep.to(torch.int32)
        painted = torch.where(free & keep, count, region)
        id_map = id_map.index_put((torch.arange(y0, y1)[:, None], torch.arange(x0, x1)[None, :]), painted)
        keeps.append(keep)
        taken.append(num_free)
    keep = torch.stack(keeps)
    ids = torch.where(keep, torch.cumsum(keep.long(), 0), 0)
    return add_stuff(id_map, keep, ids, labels, scores, torch.stack(taken), sem, thing_sem_labels=thing_sem_labels,
                     num_sem_classes=num_sem_classes, stuff_area=merge.stuff_area)


def thing_limits(area: Tensor, scores: Tensor, merge: MergeThresholds) -> Tensor:
    """:func:`keep_limits` of each instance, -1 (never kept) below the score threshold."""
    candidate = scores.double() >= f64(merge.score_thresh)  # float64, like comparing Python floats
    limits = keep_limits(area, merge.overlap_thresh, merge.thing_min_remaining_area)
    return torch.where(candidate, limits, torch.full_like(limits, -1))


def add_stuff(id_map: Tensor, keep: Tensor, ids: Tensor, labels: Tensor, scores: Tensor, taken: Tensor,
              sem: Tensor, *, thing_sem_labels: Sequence[int], num_sem_classes: int,
              stuff_area: int) -> tuple[Tensor, dict[str, Tensor]]:
    """The things' id map (0: no thing) -> the panoptic id map int32 and the segment arrays: stuff
    classes with at least ``stuff_area`` free pixels get the ids after the things'."""
    counts = torch.zeros(num_sem_classes + 1, dtype=torch.int64).scatter_add(
        0, torch.where(id_map == 0, sem, num_sem_classes).reshape(-1), torch.ones_like(sem).reshape(-1))
    counts = counts[:num_sem_classes]
    is_thing = torch.tensor([label in set(thing_sem_labels) for label in range(num_sem_classes)])
    is_stuff = ~is_thing & (counts >= max(stuff_area, 1))
    stuff_ids = torch.where(is_stuff, keep.long().sum() + torch.cumsum(is_stuff.long(), 0), 0)
    id_map = torch.where(id_map == 0, stuff_ids.to(id_map.dtype)[sem], id_map).to(torch.int32)
    segments = _segment_arrays(keep, ids, labels, scores, taken, is_stuff, stuff_ids, counts)
    return id_map, segments


def _segment_arrays(keep: Tensor, ids: Tensor, labels: Tensor, scores: Tensor, taken: Tensor,
                    is_stuff: Tensor, stuff_ids: Tensor, counts: Tensor) -> dict[str, Tensor]:
    """Thing slots then stuff slots, sorted by segment id (absent slots last), with the count."""
    num_sem = is_stuff.shape[0]
    valid = torch.cat([keep, is_stuff])
    seg_id = torch.cat([ids, stuff_ids])
    key = torch.where(valid, seg_id, torch.full_like(seg_id, 1 << 40))
    order = torch.sort(key).indices
    columns = {
        "id": torch.where(valid, seg_id, 0).to(torch.int32),
        "isthing": torch.cat([keep, torch.zeros_like(is_stuff)]),
        "category": torch.where(valid, torch.cat([labels.long(), torch.arange(num_sem)]), -1),
        "score": torch.where(valid, torch.cat([scores.float(), torch.full((num_sem,), STUFF_SCORE)]), 0.0),
        "area": torch.where(valid, torch.cat([taken, counts]), 0),
    }
    out = {name: column[order] for name, column in columns.items()}
    out["count"] = valid.long().sum()
    return out
