"""The panoptic merge's public entry: instance masks + semantic labels -> one panoptic id map.

The merge is DEFINED by :func:`panfpn.modeling.merge_reference.merge_panoptic_reference` (sequential,
readable: the rules and their order are in that module's docstring; docs/merge.md says it in prose).
:func:`merge_panoptic` checks its inputs and runs the fused kernel of :mod:`panfpn.modeling.merge_fused`,
which gives exactly the same output with a constant number of host reads per image; the tests check
the two are equal on hundreds of random inputs (tests/modeling/test_merge.py).

Conventions (those of Detectron2's panoptic combination, whose defaults these are): a score equal to
``score_thresh`` is kept; an overlap share equal to ``overlap_thresh`` is kept (``None``: no
overlap-ratio rule); an instance needs ``thing_min_remaining_area`` unclaimed pixels (exactly the
minimum is kept); a probability of exactly 0.5 is foreground (Detectron2 pastes masks as
``prob >= 0.5``); a stuff region needs ``max(stuff_area, 1)`` unclaimed pixels (segments are never
empty). ``MergeThresholds.detectron2()`` and ``MergeThresholds.textbook()`` name the two conventions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor

from panfpn.modeling.box_masks import BoxMasks
from panfpn.modeling.merge_fused import merge_fused
from panfpn.modeling.merge_reference import Segment
from panfpn.modeling.merge_thresholds import MergeThresholds, _check_thresholds

__all__ = ["BoxMasks", "MergeThresholds", "merge_panoptic", "merge_panoptic_batch"]


def merge_panoptic(
    mask_probs: Tensor | BoxMasks,
    scores: Tensor,
    labels: Tensor,
    sem_labels: Tensor,
    *,
    thing_sem_labels: Sequence[int] | Tensor,
    score_thresh: float = 0.5,
    overlap_thresh: float | None = 0.5,
    stuff_area: int = 4096,
    thing_min_remaining_area: int = 0,
) -> tuple[Tensor, list[Segment]]:
    """Merge one image's instances and semantic labels into a panoptic id map.

    Args:
        mask_probs: float ``[N, H, W]``, per-instance foreground probabilities in [0, 1]; or bool
            ``[N, H, W]`` masks already thresholded (True = covered; 8x less memory than float32);
            or :class:`BoxMasks` (thresholded masks inside their boxes: no full-size tensor).
        scores: float ``[N]``, instance scores.
        labels: int ``[N]``, contiguous thing labels.
        sem_labels: int ``[H, W]``, semantic argmax (labels >= 0).
        thing_sem_labels: semantic labels that mean 'thing'; they are never turned into stuff.
        score_thresh, overlap_thresh, stuff_area, thing_min_remaining_area: see
            :class:`MergeThresholds`.

    Returns:
        ``id_map``: int32 ``[H, W]`` on the input device, 0 = void, segment ids 1..K in creation order
        (things by descending score, then stuff by ascending semantic label).
        ``segments``: list of ``{"id", "isthing", "category", "score", "area"}``; ``category`` is the
        thing label (things) or the semantic label (stuff); ``score`` is None for stuff.
    """
    _check_thresholds(score_thresh, overlap_thresh, stuff_area, thing_min_remaining_area)
    _check_inputs(mask_probs, scores, labels, sem_labels)
    return merge_fused(
        mask_probs, scores, labels, sem_labels, _thing_label_list(thing_sem_labels),
        score_thresh=float(score_thresh),
        overlap_thresh=None if overlap_thresh is None else float(overlap_thresh),
        stuff_area=int(stuff_area), thing_min_remaining_area=int(thing_min_remaining_area),
    )


def merge_panoptic_batch(
    mask_probs: Sequence[Tensor],
    scores: Sequence[Tensor],
    labels: Sequence[Tensor],
    sem_labels: Sequence[Tensor] | Tensor,
    *,
    thing_sem_labels: Sequence[int] | Tensor,
    thresholds: MergeThresholds | None = None,
) -> list[tuple[Tensor, list[Segment]]]:
    """:func:`merge_panoptic` over a batch: per image ``[N_b, H_b, W_b]`` probabilities, ``[N_b]``
    scores and labels, ``[H_b, W_b]`` semantic labels (a list, or a ``[B, H, W]`` tensor).

    Returns one ``(id_map, segments)`` per image; errors name the image's position in the batch.
    ``thresholds`` defaults to ``MergeThresholds()``.
    """
    thresholds = MergeThresholds() if thresholds is None else thresholds
    sizes = {len(mask_probs), len(scores), len(labels), len(sem_labels)}
    if len(sizes) != 1:
        raise ValueError(
            "merge_panoptic_batch: mask_probs, scores, labels and sem_labels must have one entry "
            f"per image, got lengths {len(mask_probs)}, {len(scores)}, {len(labels)}, {len(sem_labels)}"
        )
    results = []
    for b in range(len(mask_probs)):
        try:
            results.append(merge_panoptic(
                mask_probs[b], scores[b], labels[b], sem_labels[b],
                thing_sem_labels=thing_sem_labels, **asdict(thresholds),
            ))
        except ValueError as err:
            raise ValueError(f"merge_panoptic_batch: image {b}: {err}") from err
    return results


# ----------------------------------------------------------------------------------------------
# checks


def _check_inputs(mask_probs: Tensor | BoxMasks, scores: Tensor, labels: Tensor, sem_labels: Tensor) -> None:
    if sem_labels.dim() != 2 or sem_labels.is_floating_point() or sem_labels.dtype == torch.bool:
        raise ValueError(
            f"merge: sem_labels must be an integer [H, W] tensor, got {sem_labels.dtype} "
            f"{tuple(sem_labels.shape)}"
        )
    if isinstance(mask_probs, BoxMasks):
        _check_box_masks(mask_probs, sem_labels)
        # a zero-stride stand-in, so the shape and device checks below apply as they are
        mask_probs = torch.zeros((), dtype=torch.bool, device=sem_labels.device).expand(
            len(mask_probs), *sem_labels.shape)
    if mask_probs.dim() != 3 or not (mask_probs.is_floating_point() or mask_probs.dtype == torch.bool):
        raise ValueError(
            f"merge: mask_probs must be a float or bool [N, H, W] tensor, got {mask_probs.dtype} "
            f"{tuple(mask_probs.shape)}"
        )
    if mask_probs.shape[1:] != sem_labels.shape:
        raise ValueError(
            f"merge: mask_probs is {tuple(mask_probs.shape)} but sem_labels is "
            f"{tuple(sem_labels.shape)}; both must be at the same [H, W]"
        )
    n = mask_probs.shape[0]
    if labels.is_floating_point() or not scores.is_floating_point():
        raise ValueError(
            f"merge: scores must be float and labels integer, got {scores.dtype} and {labels.dtype}"
        )
    if scores.shape != (n,) or labels.shape != (n,):
        raise ValueError(
            f"merge: scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must be [{n}] "
            f"like mask_probs {tuple(mask_probs.shape)}"
        )
    devices = {t.device for t in (mask_probs, scores, labels, sem_labels)}
    if len(devices) != 1:
        raise ValueError(f"merge: all inputs must be on one device, got {sorted(map(str, devices))}")


def _check_box_masks(masks: BoxMasks, sem_labels: Tensor) -> None:
    h, w = sem_labels.shape
    if tuple(masks.size) != (h, w) or len(masks.origins) != len(masks.crops):
        raise ValueError(f"merge: BoxMasks of size {tuple(masks.size)} with {len(masks.crops)} crops and "
                         f"{len(masks.origins)} origins; sem_labels is {(h, w)}")
    for i, (crop, (y0, x0)) in enumerate(zip(masks.crops, masks.origins)):
        if crop.dtype != torch.bool or crop.dim() != 2 or crop.device != sem_labels.device:
            raise ValueError(f"merge: BoxMasks crop {i} must be a bool [h, w] tensor on "
                             f"{sem_labels.device}, got {crop.dtype} {tuple(crop.shape)} on {crop.device}")
        if y0 < 0 or x0 < 0 or y0 + crop.shape[0] > h or x0 + crop.shape[1] > w:
            raise ValueError(f"merge: BoxMasks crop {i} {tuple(crop.shape)} at {(y0, x0)} leaves the "
                             f"{h}x{w} image")


def _thing_label_list(thing_sem_labels: Sequence[int] | Tensor) -> list[int]:
    if isinstance(thing_sem_labels, Tensor):
        thing_sem_labels = thing_sem_labels.reshape(-1).tolist()
    try:
        labels = [int(t) for t in thing_sem_labels]
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"merge: thing_sem_labels must be a sequence of ints, got {thing_sem_labels!r}"
        ) from err
    if any(t < 0 for t in labels):
        raise ValueError(f"merge: thing_sem_labels must be >= 0, got {labels}")
    return labels
