"""Two networks + merge: any semantic model's labels and any instance model's masks -> panoptic.

:func:`merge_predictions` is the merge of :mod:`panfpn.modeling.merge` (same definition, same fused
kernel) for predictions that did not come from our model: per-image semantic labels ``[H, W]`` and
instance masks, scores and labels, in the dataset's category ids (with ``metadata``) or in
contiguous labels (with ``thing_sem_labels``). Default rules: the textbook merge
(``MergeThresholds.textbook()``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

import torch
from torch import Tensor

from panfpn.data.metadata import DatasetMetadata
from panfpn.modeling.merge import BoxMasks, MergeThresholds, merge_panoptic

__all__ = ["merge_predictions"]


def merge_predictions(
    sem_labels: Tensor, masks: Tensor | BoxMasks, scores: Tensor, labels: Tensor, *,
    metadata: DatasetMetadata | None = None, thing_sem_labels: Sequence[int] | None = None,
    rules: MergeThresholds | None = None,
) -> tuple[Tensor, list[dict]]:
    """Merge one image's semantic labels and instance predictions into a panoptic id map.

    Args:
        sem_labels: int ``[H, W]``. With ``metadata``: dataset category ids; ids of thing
            categories and ids the metadata does not know (e.g. 0 or 255 for 'unlabeled') are
            never stuff (they stay void unless an instance claims them). Without: contiguous
            semantic labels >= 0.
        masks: ``[N, H, W]`` or ``[N, 1, H, W]`` (torchvision's Mask R-CNN) float probabilities
            (``>= 0.5`` is foreground) or bool masks, or :class:`BoxMasks`.
        scores: float ``[N]``. labels: int ``[N]``: dataset thing category ids with ``metadata``,
            else contiguous thing labels.
        metadata: the dataset's categories; segments then carry ``category_id`` (dataset ids).
        thing_sem_labels: without ``metadata``: the semantic labels that mean 'thing'.
        rules: default ``MergeThresholds.textbook()``.

    Returns:
        ``id_map`` int32 ``[H, W]`` (0 = void) and the segments ``{"id", "isthing", "category",
        "score", "area"}`` (as :func:`merge_panoptic`), plus ``"category_id"`` with ``metadata``.
    """
    rules = MergeThresholds.textbook() if rules is None else rules
    if isinstance(masks, Tensor) and masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if metadata is None:
        if thing_sem_labels is None:
            raise ValueError("merge_predictions: give metadata (dataset ids) or thing_sem_labels "
                             "(contiguous labels)")
        return merge_panoptic(masks, scores, labels, sem_labels, thing_sem_labels=thing_sem_labels,
                              **asdict(rules))
    if thing_sem_labels is not None:
        raise ValueError("merge_predictions: with metadata, thing_sem_labels come from it; "
                         f"got thing_sem_labels={list(thing_sem_labels)!r} too")
    sem, things = _dataset_sem_to_labels(sem_labels, metadata)
    id_map, segments = merge_panoptic(masks, scores, _thing_labels(labels, metadata), sem,
                                      thing_sem_labels=things, **asdict(rules))
    for seg in segments:
        seg["category_id"] = metadata.segment_category_id(seg["isthing"], seg["category"])
    return id_map, segments


def _dataset_sem_to_labels(sem_ids: Tensor, metadata: DatasetMetadata) -> tuple[Tensor, list[int]]:
    """Dataset category ids ``[H, W]`` -> the metadata's semantic labels; ids it does not know get
    one extra label, listed with the thing labels so it never becomes stuff."""
    if sem_ids.dim() != 2 or sem_ids.is_floating_point() or sem_ids.dtype == torch.bool:
        raise ValueError(f"merge_predictions: sem_labels must be an integer [H, W] tensor, got "
                         f"{sem_ids.dtype} {tuple(sem_ids.shape)}")
    unknown = metadata.num_sem_classes
    lut_size = max(c.id for c in metadata.categories) + 1
    # lut[id + 1] for ids -1..lut_size: every id outside [0, lut_size) is clamped onto an end entry
    lut = torch.full((lut_size + 2,), unknown, dtype=torch.long)
    for cat_id, label in metadata.sem_lut().items():
        lut[cat_id + 1] = label
    lut = lut.to(sem_ids.device)
    sem = lut[sem_ids.long().clamp_(-1, lut_size) + 1]
    return sem, [*metadata.thing_sem_labels, unknown]


def _thing_labels(labels: Tensor, metadata: DatasetMetadata) -> Tensor:
    """Dataset thing category ids ``[N]`` -> contiguous thing labels (unknown or stuff ids: error)."""
    if labels.is_floating_point():
        raise ValueError(f"merge_predictions: labels must be integer category ids, got {labels.dtype}")
    index = {cat_id: k for k, cat_id in enumerate(metadata.thing_ids)}
    ids = labels.tolist()
    bad = sorted({i for i in ids if i not in index})
    if bad:
        raise ValueError(f"merge_predictions: instance labels {bad} are not thing category ids of "
                         f"metadata {metadata.name!r} (things: {metadata.thing_ids})")
    return torch.tensor([index[i] for i in ids], dtype=torch.long, device=labels.device)
