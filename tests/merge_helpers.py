"""A sequential panoptic merge on dataset category ids, written for the tests independently of
panfpn's (its definition is panfpn.modeling.merge_reference): importable as ``merge_helpers``."""

from __future__ import annotations

import torch


def sequential_merge(sem_ids, probs, scores, cat_ids, rules, stuff_ids):
    """The merge on dataset ids, one instance and one stuff id at a time: instances by descending
    score (ties: input order) claim their unclaimed pixels unless dropped; then each stuff id,
    ascending, takes its unclaimed pixels if there are at least max(stuff_area, 1)."""
    id_map = torch.zeros(sem_ids.shape, dtype=torch.int32)
    segs = []
    score_list = scores.tolist()
    order = sorted((i for i, s in enumerate(score_list) if s >= rules.score_thresh),
                   key=lambda i: (-score_list[i], i))
    for i in order:
        mask = probs[i] >= 0.5
        free = mask & (id_map == 0)
        area, n_free = int(mask.sum()), int(free.sum())
        if area == 0 or n_free == 0 or n_free < rules.thing_min_remaining_area:
            continue
        if rules.overlap_thresh is not None and (area - n_free) / area > rules.overlap_thresh:
            continue
        id_map[free] = len(segs) + 1
        segs.append((len(segs) + 1, True, int(cat_ids[i]), score_list[i], n_free))
    for cat in sorted(stuff_ids):
        region = (sem_ids == cat) & (id_map == 0)
        if int(region.sum()) >= max(rules.stuff_area, 1):
            id_map[region] = len(segs) + 1
            segs.append((len(segs) + 1, False, cat, None, int(region.sum())))
    return id_map, segs
