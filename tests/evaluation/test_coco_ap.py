"""COCO AP with instances derived from panoptic ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from panfpn.evaluation import COCOAPEvaluator, instances_from_panoptic
from pq_case_gen import CATEGORIES

SAMPLE = Path(__file__).parents[1] / "assets" / "coco_panoptic_sample"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools decode on numpy 2
def test_instances_match_the_official_conversion():
    ours = instances_from_panoptic(SAMPLE / "panoptic_examples.json")
    official = json.loads((SAMPLE / "panoptic_coco_detection_format.json").read_text())
    thing_ids = {c["id"] for c in json.loads((SAMPLE / "panoptic_coco_categories.json").read_text())
                 if c["isthing"]}
    expected = [a for a in official["annotations"] if a["category_id"] in thing_ids]
    assert len(ours["annotations"]) == len(expected) > 10
    assert {c["id"] for c in ours["categories"]} == thing_ids
    key = lambda a: (a["image_id"], tuple(a["bbox"]))  # noqa: E731
    for mine, ref in zip(sorted(ours["annotations"], key=key), sorted(expected, key=key)):
        for k in ("image_id", "category_id", "iscrowd", "bbox", "area"):
            assert mine[k] == ref[k], k
        assert mask_util.area(mine["segmentation"]) == ref["area"]
        ref_rle = ref["segmentation"]
        if isinstance(ref_rle, dict):
            ref_mask = mask_util.decode(ref_rle if isinstance(ref_rle["counts"], str) else
                                        mask_util.frPyObjects(ref_rle, *ref_rle["size"]))
            assert np.array_equal(mask_util.decode(mine["segmentation"]), ref_mask)


def _scene():
    """A 20x30 image: person (1) at two places, a car (3), grass (101) everywhere else."""
    ids = np.full((20, 30), 7, np.int32)
    ids[2:8, 3:9] = 11  # person A
    ids[12:19, 20:28] = 12  # person B
    ids[10:16, 2:12] = 13  # car
    segs = [{"id": 7, "category_id": 101, "iscrowd": 0},
            {"id": 11, "category_id": 1, "iscrowd": 0},
            {"id": 12, "category_id": 1, "iscrowd": 0},
            {"id": 13, "category_id": 3, "iscrowd": 0}]
    for s in segs:
        ys, xs = np.nonzero(ids == s["id"])
        s["area"] = int(ys.size)
        s["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                     int(ys.max() - ys.min() + 1)]
    return ids, segs


def _detections(ids, segs, keep):
    boxes, masks, cats = [], [], []
    for s in segs:
        if s["id"] in keep:
            x, y, w, h = s["bbox"]
            boxes.append([x, y, x + w, y + h])
            masks.append(ids == s["id"])
            cats.append(s["category_id"])
    return (torch.tensor(boxes, dtype=torch.float32), torch.ones(len(boxes)),
            torch.tensor(cats), torch.from_numpy(np.stack(masks)))


def test_perfect_detections_score_one():
    ids, segs = _scene()
    ev = COCOAPEvaluator(CATEGORIES)
    ev.add_ground_truth(5, torch.from_numpy(ids), segs)
    ev.update(5, *_detections(ids, segs, {11, 12, 13}))
    r = ev.compute()
    for iou_type in ("bbox", "segm"):
        assert r[iou_type]["AP"] == pytest.approx(1.0)
        assert r[iou_type]["AP50"] == pytest.approx(1.0)
        assert r[iou_type]["APs"] == pytest.approx(1.0)  # every object is small (< 32^2)
        assert r[iou_type]["APl"] == -1.0  # no large object: nothing to average


def test_one_missed_person_halves_person_ap():
    ids, segs = _scene()
    ev = COCOAPEvaluator(CATEGORIES)
    ev.add_ground_truth(5, ids, segs)
    ev.update(5, *_detections(ids, segs, {11, 13}))  # person B missed
    r = ev.compute()
    # person: precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points; car: 1.0
    expected = (51 / 101 + 1.0) / 2
    for iou_type in ("bbox", "segm"):
        assert r[iou_type]["AP"] == pytest.approx(expected)


def test_crowd_ground_truth_is_not_a_miss():
    ids, segs = _scene()
    segs[2]["iscrowd"] = 1  # person B is a crowd region: not detecting it costs nothing
    ev = COCOAPEvaluator(CATEGORIES)
    ev.add_ground_truth(5, ids, segs)
    ev.update(5, *_detections(ids, segs, {11, 13}))
    assert ev.compute()["bbox"]["AP"] == pytest.approx(1.0)
