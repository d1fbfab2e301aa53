"""The panoptic merge's definition: plain sequential code, one instance and one stuff label at a time.

This function IS the definition of the merge (Detectron2's panoptic combination rules and defaults;
the textbook rules are a configuration of the same steps, see ``MergeThresholds.textbook``);
:func:`panfpn.modeling.merge.merge_panoptic` computes exactly the same output with a fused kernel
(:mod:`panfpn.modeling.merge_fused`), and the tests check the two are equal on hundreds of random
inputs. The rules, in order:

1. Candidates: the instances with ``score >= score_thresh`` (compared as Python floats; a NaN score
   is never a candidate). The others are ignored.
2. Order: candidates by descending score; equal scores keep the input order (lower index first).
3. Masks: instance ``i`` covers the pixels with ``mask_probs[i] >= 0.5`` (so exactly 0.5 is
   foreground, as Detectron2 pastes masks); a bool mask covers its True pixels.
4. Things, in that order: ``area`` = covered pixels, ``free`` = covered pixels not yet claimed by an
   earlier kept instance. The instance is dropped if ``area == 0``, if ``free`` is empty, if
   ``overlap_thresh`` is not None and ``(area - |free|) / area > overlap_thresh`` (float64 division;
   a share equal to the threshold is kept; None: no overlap-ratio rule at all), or if
   ``|free| < thing_min_remaining_area`` (the REMAINING, unclaimed pixels; exactly the minimum is
   kept). All four tests read the same ``area`` and ``free`` of this turn, so their order does not
   change the result. Otherwise its ``free`` pixels are claimed and painted with the next segment id
   (a dropped instance claims nothing).
5. Stuff: for each semantic label present in ``sem_labels``, ascending, that is not in
   ``thing_sem_labels``: the region is its still unclaimed pixels; it becomes a segment, painted
   with the next id, iff it has at least ``max(stuff_area, 1)`` pixels.
6. Every pixel still unpainted is void: 0 in the id map.
7. Segment ids are 1..K in creation order (things by descending score, then stuff by ascending
   label). Each segment is ``{"id", "isthing", "category", "score", "area"}``: ``category`` is the
   thing label (things) or the semantic label (stuff), ``score`` the instance's score as a Python
   float (None for stuff), ``area`` its pixel count in the id map (never 0).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["Segment", "merge_panoptic_reference"]

Segment = dict  # {"id": int, "isthing": bool, "category": int, "score": float | None, "area": int}


def merge_panoptic_reference(
    mask_probs: Tensor, scores: Tensor, labels: Tensor, sem_labels: Tensor, *,
    thing_sem_labels: Sequence[int] | Tensor, score_thresh: float = 0.5,
    overlap_thresh: float | None = 0.5, stuff_area: int = 4096, thing_min_remaining_area: int = 0,
) -> tuple[Tensor, list[Segment]]:
    """The merge by its definition (module docstring, steps 1-7), on dense masks.

    Same contract as :func:`panfpn.modeling.merge.merge_panoptic` for ``[N, H, W]`` float or bool
    ``mask_probs``: returns an int32 ``[H, W]`` id map on ``sem_labels``' device and the segments.
    Slow (a few host reads per instance); it exists to be read and to test the fused kernel against.
    """
    id_map = torch.zeros(sem_labels.shape, dtype=torch.int32, device=sem_labels.device)
    segments: list[Segment] = []
    score_list = scores.tolist()
    candidates = [i for i, s in enumerate(score_list) if s >= score_thresh]  # step 1
    candidates.sort(key=lambda i: -score_list[i])  # step 2: Python's sort is stable
    for i in candidates:
        mask = mask_probs[i] >= 0.5  # step 3
        free = mask & (id_map == 0)  # step 4
        area, num_free = int(mask.sum()), int(free.sum())
        if area == 0 or num_free == 0:
            continue
        if overlap_thresh is not None and (area - num_free) / area > overlap_thresh:
            continue
        if num_free < thing_min_remaining_area:
            continue
        id_map[free] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "isthing": True, "category": int(labels[i]),
                         "score": score_list[i], "area": num_free})
    things = {int(t) for t in thing_sem_labels}
    for label in torch.unique(sem_labels).tolist():  # step 5: ascending
        if label in things:
            continue
        region = (sem_labels == label) & (id_map == 0)
        area = int(region.sum())
        if area < max(stuff_area, 1):
            continue
        id_map[region] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "isthing": False, "category": int(label),
                         "score": None, "area": area})
    return id_map, segments  # step 6: unpainted pixels stay 0
