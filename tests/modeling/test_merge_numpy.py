"""The numpy merge of tools/merge.py's CPU path equals the package's merge on every input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panfpn.data.metadata import DatasetMetadata
from panfpn.modeling.merge import BoxMasks, MergeThresholds
from panfpn.modeling.merge_numpy import merge_boxes_numpy, merge_dataset_ids_numpy
from panfpn.modeling.merge_predictions import merge_predictions
from panfpn.modeling.merge_reference import merge_panoptic_reference
from tests.modeling.test_merge import random_case


def _boxes(masks: torch.Tensor) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Each bool mask cut to its bounding box (an empty mask: a 0x0 crop at (0, 0))."""
    crops, origins = [], []
    for m in masks.numpy():
        ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        if ys.size == 0:
            crops.append(np.zeros((0, 0), bool))
            origins.append((0, 0))
            continue
        crops.append(m[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1])
        origins.append((int(ys[0]), int(xs[0])))
    return crops, origins


@pytest.mark.parametrize("seed", range(300))
def test_numpy_merge_equals_the_definition(seed):
    probs, scores, labels, sem, things, score_thresh, overlap, stuff_area, min_remaining = random_case(seed)
    crops, origins = _boxes(probs >= 0.5)
    want_map, want = merge_panoptic_reference(
        probs, scores.double(), labels, sem, thing_sem_labels=things, score_thresh=score_thresh,
        overlap_thresh=overlap, stuff_area=stuff_area, thing_min_remaining_area=min_remaining)
    got_map, got = merge_boxes_numpy(
        crops, origins, scores.double().tolist(), labels.tolist(), sem.numpy(), thing_sem_labels=things,
        score_thresh=score_thresh, overlap_thresh=overlap, stuff_area=stuff_area,
        thing_min_remaining_area=min_remaining)
    assert got_map.dtype == np.int32 and np.array_equal(got_map, want_map.numpy())
    assert got == want


@pytest.mark.parametrize("rules", [MergeThresholds.detectron2(), MergeThresholds.textbook()])
def test_dataset_ids_as_merge_predictions(rules):
    """Dataset ids, unknown semantic ids (-1, 0, 255) and the thing/stuff split as merge_predictions."""
    metadata = DatasetMetadata.from_coco_categories(
        [{"id": 1, "name": "a", "isthing": 1}, {"id": 3, "name": "b", "isthing": 1},
         {"id": 7, "name": "c", "isthing": 0}, {"id": 9, "name": "d", "isthing": 0}], name="cats")
    rng = np.random.default_rng(0)
    sem = rng.choice([-1, 0, 1, 3, 7, 9, 255], size=(90, 120), p=[.05, .05, .1, .1, .3, .35, .05])
    sem[:40, :50] = 7
    masks = torch.zeros(6, 90, 120, dtype=torch.bool)
    for k in range(6):
        masks[k, 10 * k:10 * k + 30, 15 * k:15 * k + 40] = True
    scores = torch.tensor([0.9, 0.4, 0.8, 0.8, 0.95, 0.6], dtype=torch.float64)
    cats = torch.tensor([1, 3, 3, 1, 1, 3])
    crops, origins = _boxes(masks)
    want_map, want = merge_predictions(torch.from_numpy(sem), BoxMasks(
        tuple(torch.from_numpy(c) for c in crops), tuple(origins), (90, 120)), scores, cats,
        metadata=metadata, rules=rules)
    got_map, got = merge_dataset_ids_numpy(sem, crops, origins, scores.tolist(), cats.tolist(),
                                           metadata=metadata, **rules.__dict__)
    assert np.array_equal(got_map, want_map.numpy()) and got == want
    with pytest.raises(ValueError, match=r"instance labels \[7\] are not thing category ids"):
        merge_dataset_ids_numpy(sem, crops, origins, scores.tolist(), [1, 7, 3, 1, 1, 3],
                                metadata=metadata, **rules.__dict__)
