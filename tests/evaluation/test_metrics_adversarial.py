"""Semantic and COCO AP metrics on edge cases, against Detectron2's conventions.

The expected numbers are computed here from Detectron2's definitions
(``detectron2/evaluation/sem_seg_evaluation.py``, ``coco_evaluation.py``), not from panfpn's code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from panfpn.data.metadata import DatasetMetadata
from panfpn.data.targets import semantic_map
from panfpn.engine.eval_loop import format_results
from panfpn.evaluation import COCOAPEvaluator, SemSegEvaluator
from panfpn.evaluation.report import build_report

from fake_results import fake_metrics

CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
              {"id": 101, "name": "grass", "isthing": 0}]


def _d2_semseg(pred: np.ndarray, gt: np.ndarray, c: int, ignore: int = 255) -> dict:
    """Detectron2's SemSegEvaluator.evaluate (main since July 2022, commit f3c1bc19) on one image,
    as fractions: IoU only for classes with ground-truth pixels."""
    gt = np.where(gt == ignore, c, gt)
    conf = np.bincount((c + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=(c + 1) ** 2).reshape(c + 1, c + 1)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = conf[:-1, :-1].sum(0).astype(float)
    pos_pred = conf[:-1, :-1].sum(1).astype(float)
    valid = pos_gt > 0
    iou = np.full(c, np.nan)
    iou[valid] = tp[valid] / (pos_gt + pos_pred - tp)[valid]
    acc = np.full(c, np.nan)
    acc[valid] = tp[valid] / pos_gt[valid]
    return {"mIoU": iou[valid].mean(), "fwIoU": (iou[valid] * pos_gt[valid] / pos_gt.sum()).sum(),
            "mACC": acc[valid].mean(), "pACC": tp.sum() / pos_gt.sum(), "IoU": iou, "ACC": acc}


def test_semseg_equals_detectron2_when_every_predicted_class_has_ground_truth():
    g = torch.Generator().manual_seed(3)
    gt = torch.randint(0, 4, (2, 9, 11), generator=g)
    gt[:, :2] = 255  # ignore rows: the predictions there are not scored
    pred = torch.randint(0, 4, (2, 9, 11), generator=g)
    ev = SemSegEvaluator(5)  # class 4 is absent from both: no IoU, out of every mean
    ev.update(pred, gt)
    ours, d2 = ev.compute(), _d2_semseg(pred.numpy(), gt.numpy(), 5)
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert ours[key] == pytest.approx(d2[key], abs=1e-12), key
    np.testing.assert_allclose(np.array(ours["IoU"], float), d2["IoU"], atol=1e-12)
    np.testing.assert_allclose(np.array(ours["ACC"], float), d2["ACC"], atol=1e-12)


def test_a_class_predicted_but_absent_from_the_ground_truth_is_documented_as_iou_zero():
    # gt: class 0 only; pred: 0 on one pixel, class 1 on the other three (class 1 has no gt pixel)
    gt = torch.tensor([[0, 0, 0, 0]])
    pred = torch.tensor([[0, 1, 1, 1]])
    ev = SemSegEvaluator(3)
    ev.update(pred, gt)
    r = ev.compute()
    d2_main = _d2_semseg(pred.numpy(), gt.numpy(), 3)
    assert d2_main["mIoU"] == pytest.approx(0.25) and math.isnan(d2_main["IoU"][1])
    # panfpn (as Detectron2 v0.6, mmsegmentation, Cityscapes' script): class 1 has IoU 0 and is
    # averaged: (1/4 + 0) / 2; docs/evaluation.md says so
    assert r["IoU"][1] == 0.0 and r["mIoU"] == pytest.approx(0.125)
    for key in ("fwIoU", "mACC", "pACC"):
        assert r[key] == pytest.approx(d2_main[key]), key


def test_coco_semantic_ground_truth_is_detectron2s_separated_labels():
    # datasets/prepare_panoptic_fpn.py: things (crowd too) -> one label, stuff -> its own, void -> 255
    cats = CATEGORIES + [{"id": 120, "name": "sky", "isthing": 0}]
    meta = DatasetMetadata.from_coco_categories(cats)
    ids = torch.tensor([[0, 5, 6, 7], [8, 8, 9, 0]])
    segs = [{"id": 5, "category_id": 1, "iscrowd": 0}, {"id": 6, "category_id": 3, "iscrowd": 1},
            {"id": 7, "category_id": 101, "iscrowd": 0}, {"id": 8, "category_id": 120, "iscrowd": 0}]
    thing, grass, sky = 2, 0, 1  # panfpn's order: stuff by id, then the merged thing label
    expected = torch.tensor([[255, thing, thing, grass], [sky, sky, 255, 255]])  # id 9: no segment
    assert meta.num_sem_classes == 3
    assert torch.equal(semantic_map(ids, segs, meta), expected)


def test_no_scored_pixel_gives_zero_not_nan():
    # every ground-truth pixel void: Detectron2 divides 0 by 0 (nan); panfpn reports 0 (documented)
    ev = SemSegEvaluator(3)
    ev.update(torch.tensor([[0, 1, 2]]), torch.tensor([[255, 255, 255]]))
    r = ev.compute()
    assert (r["mIoU"], r["fwIoU"], r["mACC"], r["pACC"]) == (0.0, 0.0, 0.0, 0.0)
    assert all(math.isnan(v) for v in r["IoU"] + r["ACC"])


def _one_small_person() -> tuple[np.ndarray, list[dict]]:
    ids = np.full((40, 40), 7, np.int32)
    ids[2:10, 2:10] = 11  # 64 pixels: small
    return ids, [{"id": 7, "category_id": 101, "iscrowd": 0}, {"id": 11, "category_id": 1, "iscrowd": 0}]


def test_no_detections_at_all_scores_zero_where_there_is_ground_truth():
    ids, segs = _one_small_person()
    ev = COCOAPEvaluator(CATEGORIES)
    ev.add_ground_truth(1, ids, segs)
    ev.update(1, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), np.zeros((0, 40, 40), bool))
    r = ev.compute()
    # a model with a mask head that finds nothing: both tasks scored (deliberate, docs/evaluation.md:
    # Detectron2's COCOEvaluator without `tasks` takes them from the detections and reports box AP
    # only, all nan); the person is missed (AP 0), no ground truth is medium or large (COCOeval's
    # -1, Detectron2's nan), not 0
    assert set(r) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert r[task]["AP"] == 0.0 and r[task]["APs"] == 0.0
        assert r[task]["APm"] == -1.0 and r[task]["APl"] == -1.0


def test_a_category_without_ground_truth_is_left_out_of_the_mean():
    ids, segs = _one_small_person()
    ev = COCOAPEvaluator(CATEGORIES)
    ev.add_ground_truth(1, ids, segs)
    person = ids == 11
    car = np.zeros_like(person)
    car[20:30, 20:30] = True
    ev.update(1, np.array([[2, 2, 10, 10], [20, 20, 30, 30]], float), np.array([0.9, 0.95]),
              np.array([1, 3]), np.stack([person, car]))
    # car has no ground truth: COCOeval's precision is -1 for it and the mean skips it (Detectron2's
    # AP-car is nan); the person is found: AP 1, not (1 + 0) / 2
    r = ev.compute()
    assert r["bbox"]["AP"] == pytest.approx(1.0) and r["segm"]["AP"] == pytest.approx(1.0)


def test_per_category_ap_as_detectron2_reports_it():
    ids, segs = _one_small_person()
    ids[20:30, 20:30] = 12  # a second person, missed
    segs.append({"id": 12, "category_id": 1, "iscrowd": 0})
    ev = COCOAPEvaluator(CATEGORIES)
    ev.add_ground_truth(1, ids, segs)
    ev.update(1, np.array([[2, 2, 10, 10], [30, 0, 38, 8]], float), np.array([0.9, 0.8]), np.array([1, 3]),
              np.stack([ids == 11, np.zeros_like(ids, bool)]))
    r = ev.compute()
    # Detectron2's AP-person: precision 1 up to recall 0.5 = 51 of 101 recall points; AP-car: nan
    # (no ground truth), null in eval_results.json
    for task in ("bbox", "segm"):
        assert r[task]["per_class"] == {1: pytest.approx(51 / 101), 3: None}
        assert r[task]["AP"] == pytest.approx(51 / 101)


def test_an_empty_predicted_mask_is_a_false_positive_for_mask_ap_only():
    ids, segs = _one_small_person()
    ev = COCOAPEvaluator(CATEGORIES)
    ev.add_ground_truth(1, ids, segs)
    ev.update(1, np.array([[2, 2, 10, 10]], float), np.array([0.9]), np.array([1]), np.zeros((1, 40, 40), bool))
    r = ev.compute()
    assert r["bbox"]["AP"] == pytest.approx(1.0) and r["segm"]["AP"] == 0.0


def _metrics_without_thing_ground_truth() -> dict:
    metrics = fake_metrics({1: 0.5, 101: 0.7})
    undefined = {k: -1.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}  # COCOeval: nothing to average
    metrics["bbox"], metrics["segm"] = dict(undefined), dict(undefined)
    return metrics


def test_undefined_ap_is_not_printed_as_minus_100():
    # Detectron2 prints nan for COCOeval's -1 (coco_evaluation.py: stats * 100 if >= 0 else nan)
    metrics = _metrics_without_thing_ground_truth()
    text = format_results(metrics)
    assert "-100.00" not in text and "bbox AP n/a" in text
    page = build_report(metrics, {1: "person", 101: "grass"})
    assert "-100.00" not in page and "<td>bbox AP</td><td>n/a</td>" in page
