"""The panoptic merge in numpy, for masks kept inside their boxes: the CPU path of tools/merge.py.

Same definition as :func:`panfpn.modeling.merge_reference.merge_panoptic_reference` (its docstring
lists the rules) and the same output as :func:`panfpn.modeling.merge.merge_panoptic` on
:class:`~panfpn.modeling.merge.BoxMasks` (tests/modeling/test_merge_numpy.py checks both on random
inputs). It exists because the merge tool on the CPU should not pay for importing torch (1-3 s of
start-up, more than merging 100 images takes), and because one instance at a time inside its box is
the cheapest order on a CPU: each turn reads and paints only the instance's box.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from panfpn.data.metadata import DatasetMetadata

__all__ = ["merge_boxes_numpy", "merge_dataset_ids_numpy"]


def merge_dataset_ids_numpy(
    sem_ids: np.ndarray, crops: Sequence[np.ndarray], origins: Sequence[tuple[int, int]],
    scores: Sequence[float], category_ids: Sequence[int], *, metadata: DatasetMetadata,
    score_thresh: float, overlap_thresh: float | None, stuff_area: int, thing_min_remaining_area: int,
) -> tuple[np.ndarray, list[dict]]:
    """:func:`merge_boxes_numpy` in dataset category ids, as
    :func:`panfpn.modeling.merge_predictions.merge_predictions` with ``metadata``: ``sem_ids`` int
    ``[H, W]`` (ids the metadata does not know and thing ids are never stuff), ``category_ids`` of
    thing categories (others: ValueError); segments also carry ``category_id``."""
    luts = _Luts.of(metadata)
    if sem_ids.dtype == np.uint8:  # one gather through the label of each byte value
        sem = luts.byte_labels[sem_ids]
    else:
        sem = luts.labels[np.clip(sem_ids, -1, luts.size) + 1]
    index = luts.thing_index
    ids = [int(c) for c in category_ids]
    bad = sorted({i for i in ids if i not in index})
    if bad:
        raise ValueError(f"merge_predictions: instance labels {bad} are not thing category ids of "
                         f"metadata {metadata.name!r} (things: {metadata.thing_ids})")
    id_map, segments = merge_boxes_numpy(
        crops, origins, scores, [index[i] for i in ids], sem,
        thing_sem_labels=luts.thing_sem_labels, score_thresh=score_thresh,
        overlap_thresh=overlap_thresh, stuff_area=stuff_area,
        thing_min_remaining_area=thing_min_remaining_area)
    for seg in segments:
        seg["category_id"] = (luts.thing_ids[seg["category"]] if seg["isthing"]
                              else metadata.segment_category_id(False, seg["category"]))
    return id_map, segments


class _Luts:
    """A metadata's lookup tables for :func:`merge_dataset_ids_numpy`, built once per metadata
    object (building them took ~3 ms, as long as merging a COCO-size image)."""

    _cache: dict[int, tuple[DatasetMetadata, "_Luts"]] = {}

    def __init__(self, metadata: DatasetMetadata) -> None:
        unknown = metadata.num_sem_classes  # the label of ids the metadata does not know: never stuff
        self.size = max(c.id for c in metadata.categories) + 1
        self.labels = np.full(self.size + 2, unknown, dtype=np.uint8 if unknown < 256 else np.int64)
        for cat_id, label in metadata.sem_lut().items():  # labels[id + 1]; ids outside clamp to an end
            self.labels[cat_id + 1] = label
        self.byte_labels = self.labels[np.minimum(np.arange(256), self.size) + 1]
        self.thing_ids = metadata.thing_ids
        self.thing_index = {cat_id: k for k, cat_id in enumerate(self.thing_ids)}
        self.thing_sem_labels = [*metadata.thing_sem_labels, unknown]

    @classmethod
    def of(cls, metadata: DatasetMetadata) -> "_Luts":
        entry = cls._cache.get(id(metadata))
        if entry is None or entry[0] is not metadata:  # the entry holds its metadata: ids stay unique
            entry = cls._cache[id(metadata)] = (metadata, cls(metadata))
        return entry[1]


def merge_boxes_numpy(
    crops: Sequence[np.ndarray], origins: Sequence[tuple[int, int]], scores: Sequence[float],
    labels: Sequence[int], sem_labels: np.ndarray, *, thing_sem_labels: Sequence[int],
    score_thresh: float = 0.5, overlap_thresh: float | None = 0.5, stuff_area: int = 4096,
    thing_min_remaining_area: int = 0,
) -> tuple[np.ndarray, list[dict]]:
    """Merge one image: bool ``crops[i]`` at ``origins[i] = (y0, x0)``, ``scores``, contiguous thing
    ``labels``, non-negative integer ``sem_labels`` ``[H, W]`` -> (int32 id map, segments
    ``{"id", "isthing", "category", "score", "area"}``), exactly as ``merge_panoptic``."""
    id_map = np.zeros(sem_labels.shape, dtype=np.int32)
    segments: list[dict] = []
    score_list = [float(s) for s in scores]
    candidates = [i for i, s in enumerate(score_list) if s >= score_thresh]
    candidates.sort(key=lambda i: -score_list[i])  # stable: equal scores keep the input order
    for i in candidates:
        crop = crops[i]
        y0, x0 = origins[i]
        window = id_map[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]]
        area = int(np.count_nonzero(crop))
        if area == 0:
            continue
        free = crop & (window == 0)
        num_free = int(np.count_nonzero(free))
        if num_free == 0 or num_free < thing_min_remaining_area:
            continue
        if overlap_thresh is not None and (area - num_free) / area > overlap_thresh:
            continue
        segment_id = len(segments) + 1
        window[free] = segment_id
        segments.append({"id": segment_id, "isthing": True, "category": int(labels[i]),
                         "score": score_list[i], "area": num_free})
    _add_stuff(id_map, sem_labels, set(int(t) for t in thing_sem_labels), max(stuff_area, 1), segments)
    return id_map, segments


def _add_stuff(id_map: np.ndarray, sem_labels: np.ndarray, things: set[int], min_area: int,
               segments: list[dict]) -> None:
    """Each non-thing semantic label, ascending, with ``min_area`` still unclaimed pixels becomes a
    segment of those pixels (a label with none unclaimed could never pass the test)."""
    void = id_map == 0
    unclaimed = sem_labels[void]
    if unclaimed.size == 0:
        return
    if unclaimed.min() < 0:
        raise ValueError(f"merge: sem_labels must be >= 0, got {int(unclaimed.min())}")
    counts = np.bincount(unclaimed)
    lut = np.zeros(counts.shape[0], dtype=np.int32)
    for label in np.flatnonzero(counts).tolist():
        area = int(counts[label])
        if label in things or area < min_area:
            continue
        lut[label] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "isthing": False, "category": label, "score": None,
                         "area": area})
    id_map[void] = lut[unclaimed]
