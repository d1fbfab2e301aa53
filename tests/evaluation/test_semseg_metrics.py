"""SemSegEvaluator on cases small enough to check by hand."""

from __future__ import annotations

import math

import pytest
import torch

from panfpn.evaluation import SemSegEvaluator


def test_hand_checked_partial_overlap():
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    ev = SemSegEvaluator(3)
    ev.update(pred, gt)
    r = ev.compute()
    # scored pixels: (gt, pred) = (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
    assert r["IoU"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert r["mIoU"] == pytest.approx(0.5)
    assert r["pACC"] == pytest.approx(4 / 6)
    assert r["ACC"] == pytest.approx([1 / 2, 1, 1 / 2])
    assert r["mACC"] == pytest.approx(2 / 3)
    assert r["fwIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_perfect_absent_class_and_out_of_range_prediction():
    gt = torch.tensor([[0, 0, 2, 255]])
    ev = SemSegEvaluator(4)
    ev.update(gt.clone(), gt)
    r = ev.compute()
    assert r["mIoU"] == 1.0 and r["pACC"] == 1.0
    assert math.isnan(r["IoU"][1]) and math.isnan(r["IoU"][3])  # absent everywhere: not averaged
    ev.update(torch.tensor([[9, 0, 2, 255]]), gt)  # 9 is not a class: a miss for gt class 0
    r = ev.compute()
    assert r["IoU"][0] == pytest.approx(3 / 4) and r["IoU"][2] == 1.0
    assert r["pACC"] == pytest.approx(5 / 6)


def test_batched_and_split_updates_agree():
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 5, (2, 6, 7), generator=g)
    gt[0, 0] = 255
    pred = torch.randint(0, 5, (2, 6, 7), generator=g)
    one, two = SemSegEvaluator(5), SemSegEvaluator(5)
    one.update(pred, gt)
    two.update(pred[0], gt[0])
    two.update(pred[1], gt[1])
    assert one.compute() == two.compute()
    with pytest.raises(ValueError, match="shape"):
        one.update(pred[0], gt)
