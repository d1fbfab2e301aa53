"""RPN anchors (true strides, Detectron2's unrounded shapes), losses on edge cases, and one proposal
path for training and eval."""

import math

import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork

from panfpn.modeling.panoptic_fpn.rpn import RPN, FixedStrideAnchorGenerator, ProposalLimits


def test_anchor_centres_use_the_true_stride_on_every_level():
    gen = FixedStrideAnchorGenerator((32, 64, 128, 256, 512), (0.5, 1.0, 2.0), (4, 8, 16, 32, 64))
    hp, wp = 96, 160  # multiples of 32, not of 64: P6 is 2x3 cells
    feats = [torch.zeros(1, 1, math.ceil(hp / s), math.ceil(wp / s)) for s in (4, 8, 16, 32, 64)]
    anchors = gen(ImageList(torch.zeros(1, 3, hp, wp), [(hp, wp)]), feats)[0]
    counts = [f.shape[-1] * f.shape[-2] * 3 for f in feats]
    p6 = anchors.split(counts)[-1]
    centres = (p6[:, :2] + p6[:, 2:]) / 2
    assert set(centres[:, 0].tolist()) == {0.0, 64.0, 128.0}
    assert set(centres[:, 1].tolist()) == {0.0, 64.0}
    # Cell anchors keep area size^2 with h / w = ratio, unrounded.
    w, h = p6[0, 2] - p6[0, 0], p6[0, 3] - p6[0, 1]
    torch.testing.assert_close(w * h, torch.tensor(512.0**2))
    torch.testing.assert_close(h / w, torch.tensor(0.5))
    assert abs(float(anchors.split(counts)[0][0, 2] * 2) - 32 / math.sqrt(0.5)) < 1e-4


def test_rpn_losses_without_ground_truth_and_proposal_limits():
    torch.manual_seed(0)
    rpn = RPN(in_channels=8, limits=ProposalLimits(pre_nms_topk_train=50, post_nms_topk_train=20))
    feats = {f"p{l}": torch.randn(2, 8, 128 // 2**l, 128 // 2**l) for l in range(2, 7)}
    images = ImageList(torch.zeros(2, 3, 128, 128), [(128, 128), (100, 90)])
    rpn.train()
    proposals, losses = rpn(images, feats, [torch.zeros(0, 4), torch.tensor([[10.0, 10, 60, 50]])])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(len(p) <= 20 for p in proposals)
    # Proposals are clipped to each image's unpadded size.
    assert (proposals[1][:, 2] <= 90).all() and (proposals[1][:, 3] <= 100).all()


def _rpn_inputs(seed: int = 0):
    torch.manual_seed(seed)
    limits = ProposalLimits(pre_nms_topk_train=60, post_nms_topk_train=25, pre_nms_topk_test=60,
                            post_nms_topk_test=25)
    rpn = RPN(in_channels=8, limits=limits)
    feats = {f"p{l}": torch.randn(2, 8, 128 // 2**l, 128 // 2**l) for l in range(2, 7)}
    images = ImageList(torch.zeros(2, 3, 128, 128), [(128, 128), (100, 90)])
    gt = [torch.tensor([[5.0, 8, 40, 60]]), torch.tensor([[10.0, 10, 60, 50], [30, 20, 80, 90]])]
    return rpn, feats, images, gt


def test_training_and_eval_make_the_same_proposals():
    # One decode/filter path: with equal limits, the proposals of a training step are the eval ones.
    rpn, feats, images, gt = _rpn_inputs()
    with torch.no_grad():
        objectness, deltas = rpn.head(list(feats.values()))
        train_props, losses = rpn.train().predict(images, list(feats.values()), objectness, deltas, gt)
        eval_props = rpn.eval().proposals(images, list(feats.values()), objectness, deltas)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    assert [len(p) for p in train_props] == [len(p) for p in eval_props] and len(eval_props[0]) == 25
    for a, b in zip(train_props, eval_props):
        assert torch.equal(a, b)


def test_training_step_equals_torchvisions_rpn_forward():
    # The loss and proposals of the split path are those of torchvision's RegionProposalNetwork.forward
    # (with our filtering and loss normalisation), for the same random sampling.
    rpn, feats, images, gt = _rpn_inputs(1)
    rpn.train()
    torch.manual_seed(7)
    props, losses = rpn(images, feats, gt)
    torch.manual_seed(7)
    tv_props, tv_losses = RegionProposalNetwork.forward(rpn, images, feats, [{"boxes": b} for b in gt])
    assert torch.equal(losses["loss_rpn_cls"], tv_losses["loss_objectness"])
    assert torch.equal(losses["loss_rpn_loc"], tv_losses["loss_rpn_box_reg"])
    assert losses["loss_rpn_loc"] > 0
    for a, b in zip(props, tv_props):
        assert torch.equal(a, b)


def test_eval_proposals_refuse_training_mode():
    rpn, feats, images, _ = _rpn_inputs()
    objectness, deltas = rpn.head(list(feats.values()))
    with pytest.raises(RuntimeError, match="eval"):
        rpn.train().proposals(images, list(feats.values()), objectness, deltas)
    with pytest.raises(ValueError, match="gt_boxes"):
        rpn.predict(images, list(feats.values()), objectness, deltas)
