"""The SemanticSegmentation evaluator on COCO-style panoptic ground truth against Detectron2's
SemSegEvaluator on ``coco_2017_val_panoptic_separated``, both written out here from their
definitions (not from panfpn's code):

- the ground truth as ``datasets/prepare_panoptic_fpn.py`` makes it from the panoptic PNG: every
  thing segment (crowd too) -> 0, stuff -> 1.. in category-id order, void and ids without a
  segment -> 255;
- the metrics as ``sem_seg_evaluation.py`` (main) computes them from its confusion matrix
  (rows: prediction, columns: ground truth, the ignore label in the extra column), as percent.

panfpn's semantic labels are the stuff categories by id, then the merged thing label
(docs/evaluation.md), so Detectron2's label ``0`` is panfpn's last and ``i >= 1`` is ``i - 1``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import panfpn.evaluation.semantic as semantic
from panfpn.data.metadata import DatasetMetadata
from panfpn.data.targets import semantic_map
from panfpn.evaluation.evaluators import SemanticSegmentation

CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
              {"id": 101, "name": "grass", "isthing": 0}, {"id": 120, "name": "sky", "isthing": 0},
              {"id": 150, "name": "road", "isthing": 0}, {"id": 199, "name": "wall", "isthing": 0}]
STUFF = [101, 120, 150, 199]  # Detectron2's labels 1..4 (wall: never in the ground truth)


def _image(rng: np.random.RandomState, h: int, w: int) -> tuple[np.ndarray, list[dict]]:
    """A panoptic id map of random rectangles: stuff, things, a crowd, void and an unlisted id."""
    ids = np.zeros((h, w), np.int32)
    segs = []
    for seg_id, cat, crowd in [(2, 101, 0), (3, 120, 0), (4, 150, 0), (5, 1, 0), (6, 1, 1), (7, 3, 0), (8, 1, 0)]:
        y0, x0 = rng.randint(0, h - 4), rng.randint(0, w - 4)
        ids[y0:y0 + rng.randint(3, h), x0:x0 + rng.randint(3, w)] = seg_id
        segs.append({"id": seg_id, "category_id": cat, "iscrowd": crowd})
    ids[rng.uniform(size=(h, w)) < 0.05] = 9  # an id without a segment: void
    return ids, segs


def _detectron2_semantic_gt(ids: np.ndarray, segs: list[dict]) -> np.ndarray:
    thing_ids = {c["id"] for c in CATEGORIES if c["isthing"]}
    out = np.full(ids.shape, 255, np.int64)
    for s in segs:
        out[ids == s["id"]] = 0 if s["category_id"] in thing_ids else STUFF.index(s["category_id"]) + 1
    return out


def _detectron2_metrics(preds: list[np.ndarray], gts: list[np.ndarray], n: int) -> dict:
    conf = np.zeros((n + 1, n + 1), np.int64)
    for pred, gt in zip(preds, gts):
        gt = np.where(gt == 255, n, gt)
        np.add.at(conf, (pred.reshape(-1), gt.reshape(-1)), 1)
    tp = np.diag(conf)[:n].astype(float)
    gt_pixels = conf[:n, :n].sum(0).astype(float)
    pred_pixels = conf[:n, :n].sum(1).astype(float)
    has_gt = gt_pixels > 0
    union = gt_pixels + pred_pixels - tp
    has_iou = has_gt & (union > 0)
    iou = np.where(has_iou, tp / np.maximum(union, 1), np.nan)
    acc = np.where(has_gt, tp / np.maximum(gt_pixels, 1), np.nan)
    return {"mIoU": 100 * iou[has_iou].mean(), "fwIoU": 100 * (iou[has_iou] * gt_pixels[has_iou]).sum() / gt_pixels.sum(),
            "mACC": 100 * acc[has_gt].mean(), "pACC": 100 * tp.sum() / gt_pixels.sum(),
            "IoU": 100 * iou, "ACC": 100 * acc}


def _to_panfpn_labels(d2_labels: np.ndarray, n: int) -> np.ndarray:
    return np.where(d2_labels == 0, n - 1, d2_labels - 1)


def _case(seed: int = 0):
    rng = np.random.RandomState(seed)
    images = [_image(rng, 23, 31), _image(rng, 17, 40), _image(rng, 30, 20)]
    gts = [_detectron2_semantic_gt(ids, segs) for ids, segs in images]
    n = 1 + len(STUFF)
    # predictions: the ground truth with a third of the pixels relabelled at random, never as
    # 'wall' (a class predicted without ground truth is the documented mIoU difference)
    preds = []
    for gt in gts:
        noise = rng.randint(0, n - 1, gt.shape)
        preds.append(np.where((rng.uniform(size=gt.shape) < 0.33) | (gt == 255), noise, gt))
    return images, gts, preds, n


def _ours(images, preds, n, metadata, ranks: int = 1, monkeypatch=None) -> dict:
    evaluators = [SemanticSegmentation(metadata) for _ in range(ranks)]
    for e in evaluators:
        e.reset()
    for k, ((ids, segs), pred) in enumerate(zip(images, preds)):
        gt_map = torch.from_numpy(ids)
        labels, sem_gt = torch.from_numpy(_to_panfpn_labels(pred, n)), semantic_map(gt_map, segs, metadata)
        img = SimpleNamespace(output={"sem_seg": labels}, sem_gt=sem_gt,  # EvalImage's fields the evaluator reads
                              sem_confusion=semantic.confusion_counts(labels, sem_gt, metadata.num_sem_classes))
        evaluators[k * ranks // len(images)].process({}, [img])
    if ranks > 1:  # every rank's confusion matrix summed, as all_reduce_sum does
        total = sum(e.sem.confusion for e in evaluators)
        monkeypatch.setattr(semantic, "all_reduce_sum", lambda t: total.clone())
    return evaluators[0].evaluate()["sem_seg"]


@pytest.mark.parametrize("ranks", [1, 2])
def test_semseg_equals_detectron2_on_panoptic_separated_ground_truth(ranks, monkeypatch):
    images, gts, preds, n = _case()
    metadata = DatasetMetadata.from_coco_categories(CATEGORIES)
    assert metadata.num_sem_classes == n
    d2 = _detectron2_metrics(preds, gts, n)
    ours = _ours(images, preds, n, metadata, ranks, monkeypatch)
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert 100 * ours[key] == pytest.approx(d2[key], abs=1e-10), key
    for key in ("IoU", "ACC"):
        reordered = [100 * v for v in ours[key]]
        reordered = [reordered[-1]] + reordered[:-1]  # Detectron2's order: things first
        np.testing.assert_allclose(np.array(reordered, float), d2[key], atol=1e-10, err_msg=key)
    assert math.isnan(d2["IoU"][STUFF.index(199) + 1])  # wall: nowhere, no IoU, in no mean
    assert not any(math.isnan(v) for v in d2["IoU"][:-1])
