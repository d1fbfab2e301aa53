"""panfpn.merge_predictions (two networks + merge) equals a sequential merge written here, on
dataset category ids, for Detectron2's and the textbook rules."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import panfpn
from panfpn.data.metadata import DatasetMetadata
from panfpn.modeling.merge_reference import merge_panoptic_reference

from merge_helpers import sequential_merge

THINGS, STUFF = [3, 7, 20], [1, 5, 12, 40]  # non-contiguous dataset ids
UNLABELED = [0, 255]  # ids a semantic model may write that are no category


def _metadata(mode: str) -> DatasetMetadata:
    cats = [{"id": i, "name": f"c{i}", "isthing": int(i in THINGS)} for i in THINGS + STUFF]
    return DatasetMetadata.from_coco_categories(cats, sem_seg_mode=mode)


def generated_predictions(seed):
    """random_case's masks and scores (duplicates, nesting, ties, exact 0.5) with dataset ids."""
    from test_merge import random_case

    probs, scores, _, sem, *_ = random_case(seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(STUFF + THINGS + UNLABELED)
    sem_ids = ids[torch.randint(0, len(ids), (int(sem.max()) + 1,), generator=g)][sem]
    cat_ids = torch.tensor(THINGS)[torch.randint(0, len(THINGS), (len(scores),), generator=g)]
    return sem_ids, probs, scores, cat_ids


RULES = [panfpn.MergeThresholds.textbook(), panfpn.MergeThresholds.detectron2(),
         dataclasses.replace(panfpn.MergeThresholds.detectron2(), stuff_area=20),
         dataclasses.replace(panfpn.MergeThresholds.textbook(), thing_min_remaining_area=5)]


@pytest.mark.parametrize("mode", ["stuff_plus_thing", "all"])
@pytest.mark.parametrize("rules", RULES, ids=["textbook", "detectron2", "d2_area20", "textbook_min5"])
def test_equals_sequential_merge_on_dataset_ids(mode, rules):
    metadata = _metadata(mode)
    painted = 0
    for seed in range(60):
        sem_ids, probs, scores, cat_ids = generated_predictions(seed)
        want_map, want = sequential_merge(sem_ids, probs, scores, cat_ids, rules, STUFF)
        masks = probs[:, None] if seed % 2 else probs  # torchvision's [N, 1, H, W] too
        id_map, segments = panfpn.merge_predictions(sem_ids, masks, scores, cat_ids, metadata=metadata,
                                                    rules=rules)
        got = [(s["id"], s["isthing"], s["category_id"], s["score"], s["area"]) for s in segments]
        assert torch.equal(id_map, want_map) and got == want, f"seed {seed}"
        painted += len(want)
    assert painted > 100  # the cases are not trivially empty


def test_contiguous_labels_equal_the_definition():
    from test_merge import random_case

    for seed in range(40):
        probs, scores, labels, sem, things, *_ = random_case(seed)
        for rules in (panfpn.MergeThresholds.textbook(), panfpn.MergeThresholds.detectron2()):
            want = merge_panoptic_reference(probs, scores, labels, sem, thing_sem_labels=things,
                                            **dataclasses.asdict(rules))
            got = panfpn.merge_predictions(sem, probs, scores, labels, thing_sem_labels=things,
                                           rules=rules)
            assert torch.equal(got[0], want[0]) and got[1] == want[1], f"seed {seed}"


def test_bad_inputs_are_named():
    metadata = _metadata("stuff_plus_thing")
    sem = torch.full((4, 4), 5)
    with pytest.raises(ValueError, match=r"instance labels \[5\] are not thing category ids"):
        panfpn.merge_predictions(sem, torch.ones(1, 4, 4), torch.ones(1), torch.tensor([5]),
                                 metadata=metadata)
    with pytest.raises(ValueError, match="metadata .* or thing_sem_labels"):
        panfpn.merge_predictions(sem, torch.ones(1, 4, 4), torch.ones(1), torch.tensor([0]))
