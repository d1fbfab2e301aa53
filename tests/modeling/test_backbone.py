"""Backbone structure, freezing, norms, and the exact Detectron2 parameter counts."""

import warnings

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from panfpn.modeling.backbone import ResNetFPN
from panfpn.modeling.build import build_model

from modeling_helpers import compose_model_config


def _count(model):
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


@pytest.mark.parametrize("name, total, trainable", [
    # Detectron2's Panoptic FPN R50-FPN on COCO (80 things, 53 stuff + 1 thing), freeze_at=2.
    ("panoptic_fpn_r50", 45_973_990, 45_751_590),
    # R101: 17 more res4 bottlenecks of 1,114,112 weights each; same frozen stem + res2.
    ("panoptic_fpn_r101", 64_913_894, 64_691_494),
])
def test_parameter_count_matches_detectron2(name, total, trainable):
    cfg = compose_model_config(name, "coco_panoptic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg)
    assert _count(model) == (total, trainable)
    # Frozen BN statistics and affine terms are buffers, not parameters.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())


def test_frozen_bn_without_weights_warns():
    cfg = compose_model_config("panoptic_fpn_r50", "coco_panoptic")
    with pytest.warns(UserWarning, match="frozen BatchNorm"):
        build_model(cfg)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3])
def test_freeze_at(freeze_at):
    bb = ResNetFPN(18, norm="bn", freeze_at=freeze_at, out_channels=32)
    parts = [bb.body.conv1, bb.body.layer1, bb.body.layer2, bb.body.layer3, bb.body.layer4]
    for i, part in enumerate(parts):
        assert all(p.requires_grad == (i >= freeze_at) for p in part.parameters()), (freeze_at, i)
    assert all(p.requires_grad for p in bb.fpn.parameters())
    bb.train()
    if freeze_at >= 1:  # BN inside frozen stages keeps its statistics in train mode
        assert not bb.body.bn1.training
    assert bb.body.layer4[0].bn1.training


@pytest.mark.parametrize("norm, cls", [("frozen_bn", FrozenBatchNorm2d), ("bn", nn.BatchNorm2d),
                                       ("gn", nn.GroupNorm)])
def test_norms_and_output_shapes(norm, cls):
    bb = ResNetFPN(18, norm=norm, freeze_at=0, out_channels=32)
    assert isinstance(bb.body.bn1, cls)
    out = bb(torch.randn(1, 3, 64, 96))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for (name, f), stride in zip(out.items(), [4, 8, 16, 32, 64]):
        assert f.shape == (1, 32, -(-64 // stride), -(-96 // stride)), name


def test_stride_in_1x1_moves_the_stride_not_the_output():
    bb = ResNetFPN(50, norm="frozen_bn", stride_in_1x1=True, out_channels=32)
    block = bb.body.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = bb(x)
        bb.stride_in_1x1 = False
        b = bb(x)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert all(a[k].shape == b[k].shape for k in a)
    assert not torch.allclose(a["p2"], b["p2"]) or not torch.allclose(a["p5"], b["p5"])
    with pytest.raises(ValueError, match="bottleneck"):
        ResNetFPN(18, stride_in_1x1=True)


def test_bad_arguments_name_the_option():
    with pytest.raises(ValueError, match="depth"):
        ResNetFPN(42)
    with pytest.raises(ValueError, match="norm"):
        ResNetFPN(18, norm="batchnorm")


def test_frozen_stages_keep_bn_statistics_after_syncbn_conversion():
    bb = ResNetFPN(18, norm="bn", freeze_at=2, out_channels=32)
    bb = nn.SyncBatchNorm.convert_sync_batchnorm(bb)
    bb.train()
    assert isinstance(bb.body.bn1, nn.SyncBatchNorm) and not bb.body.bn1.training
    assert not bb.body.layer1[0].bn1.training and bb.body.layer2[0].bn1.training
