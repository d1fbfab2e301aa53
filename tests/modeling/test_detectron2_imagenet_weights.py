"""Detectron2's ImageNet initialisation files (MODEL.WEIGHTS of every official Panoptic FPN config:
ImageNetPretrained/MSRA/R-50.pkl, R-101.pkl; and ImageNetPretrained/torchvision/R-50.pkl) load into
the ResNet body with the settings Detectron2 uses them with.

The MSRA files are written here in Caffe2 names from a torchvision-shaped ResNet with random weights
and batch-norm statistics, folded into scale / bias as Caffe2 stores them. The reference is an
independent plain-torch forward of the Caffe2-convention network from Detectron2's documented
structure (resnet.py / batch_norm.py / defaults.py): BGR input minus the Caffe mean, std 1, stride in
the bottleneck's first 1x1 conv, FrozenBatchNorm2d holding the blob scale / bias with running mean 0
and variance 1 (what Detectron2's loader fills in for files without statistics), eps 1e-5.
"""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision

from modeling_helpers import compose_model_config, random_torchvision_r50

from panfpn.modeling.backbone import ResNetFPN
from panfpn.modeling.build import instantiate_model
from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.panoptic_fpn import PanopticFPN
from panfpn.modeling.panoptic_fpn.box_head import BoxHead
from panfpn.modeling.panoptic_fpn.mask_head import MaskHead
from panfpn.modeling.panoptic_fpn.roi_heads import RoIHeads, RoISampling
from panfpn.modeling.panoptic_fpn.rpn import RPN, ProposalLimits
from panfpn.modeling.panoptic_fpn.semantic_head import SemanticFPNHead
from panfpn.modeling.weights import WeightsError, load_weights

CAFFE_MEAN_BGR = (103.530, 116.280, 123.675)
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
EPS = 1e-5


def small_model(depth: int) -> PanopticFPN:
    """A Panoptic FPN with a ResNet body of ``depth`` as a torchvision-weights config builds it
    (stride in the 3x3 conv, ImageNet RGB mean / std) and narrow heads."""
    torch.manual_seed(0)
    return PanopticFPN(
        ResNetFPN(depth, norm="frozen_bn", freeze_at=2, stride_in_1x1=False, out_channels=16),
        SemanticFPNHead(3, in_channels=16, conv_channels=32),
        RPN(in_channels=16, limits=ProposalLimits(20, 20, 10, 10)),
        RoIHeads(BoxHead(2, in_channels=16, fc_dim=16), MaskHead(2, in_channels=16, conv_dim=8, num_convs=1),
                 sampling=RoISampling(16)),
        thing_sem_labels=[2], merge=MergeThresholds(0.5, 0.5, 4)).eval()


def msra_blobs(depth: int, seed: int = 3) -> dict:
    """Caffe2 blobs of a random torchvision-shaped ResNet: BN folded to scale s = gamma / sqrt(var + eps)
    and bias b = beta - mean * s, plus the classifier and SGD momenta the release files hold."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, f"resnet{depth}")()
    state = net.state_dict()
    blobs = {}

    def put(c2: str, conv: str, bn: str, gain: float = 1.0) -> None:
        blobs[f"{c2}_w"] = state[f"{conv}.weight"].numpy() * gain
        n = state[f"{bn}.weight"].numel()
        # residual branches damped as trained ones are, so features stay O(1) through 33 or 100 convs
        gamma = (torch.rand(n) + 0.5) * (0.2 if c2.endswith("2c") else 1.0)
        beta = torch.randn(n) * 0.1
        mean, var = torch.randn(n) * 0.1, torch.rand(n) + 0.5
        scale = gamma / torch.sqrt(var + EPS)
        blobs[f"{c2}_bn_s"], blobs[f"{c2}_bn_b"] = scale.numpy(), (beta - mean * scale).numpy()

    put("res_conv1", "conv1", "bn1", gain=1 / 64)  # it sees 0..255 values minus the mean, std 1
    blobs["conv1_w"] = blobs.pop("res_conv1_w")
    for stage, n in zip(range(2, 6), BLOCKS[depth]):
        for i in range(n):
            prefix = f"layer{stage - 1}.{i}"
            for branch, k in (("2a", 1), ("2b", 2), ("2c", 3)):
                put(f"res{stage}_{i}_branch{branch}", f"{prefix}.conv{k}", f"{prefix}.bn{k}")
            if i == 0:
                put(f"res{stage}_0_branch1", f"{prefix}.downsample.0", f"{prefix}.downsample.1")
    blobs["fc1000_w"], blobs["fc1000_b"] = state["fc.weight"].numpy(), state["fc.bias"].numpy()
    blobs["res2_0_branch2a_w_momentum"] = blobs["res2_0_branch2a_w"] * 0
    return blobs


def caffe2_resnet(blobs: dict, bgr: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """res2..res5 of the Caffe2-convention ResNet, as Detectron2 computes them from these blobs."""
    t = {k: torch.from_numpy(v) for k, v in blobs.items()}

    def affine(x, name):  # FrozenBatchNorm2d: weight s, bias b, running mean 0, running var 1
        return x * (t[f"{name}_bn_s"] / (1 + EPS) ** 0.5).view(1, -1, 1, 1) + t[f"{name}_bn_b"].view(1, -1, 1, 1)

    x = bgr - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    x = F.relu(affine(F.conv2d(x, t["conv1_w"], stride=2, padding=3), "res_conv1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    feats = []
    for stage, n in zip(range(2, 6), BLOCKS[depth]):
        for i in range(n):
            name, stride = f"res{stage}_{i}", 2 if i == 0 and stage > 2 else 1
            out = F.relu(affine(F.conv2d(x, t[f"{name}_branch2a_w"], stride=stride), f"{name}_branch2a"))
            out = F.relu(affine(F.conv2d(out, t[f"{name}_branch2b_w"], padding=1), f"{name}_branch2b"))
            out = affine(F.conv2d(out, t[f"{name}_branch2c_w"]), f"{name}_branch2c")
            short = affine(F.conv2d(x, t[f"{name}_branch1_w"], stride=stride), f"{name}_branch1") if i == 0 else x
            x = F.relu(out + short)
        feats.append(x)
    return feats


def body_features(model: PanopticFPN, rgb: torch.Tensor) -> list[torch.Tensor]:
    """res2..res5 of our backbone body on ``rgb`` normalised with the model's pixel mean / std."""
    body = model.backbone.body
    x = (rgb - model.pixel_mean) / model.pixel_std
    x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
    feats = []
    for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
        x = layer(x)
        feats.append(x)
    return feats


def _write(path, content) -> None:
    with open(path, "wb") as f:
        pickle.dump(content, f)


@pytest.mark.parametrize("depth,wrapped", [(50, False), (50, True), (101, False)])
def test_msra_file_gives_the_features_detectron2_computes(tmp_path, depth, wrapped):
    blobs = msra_blobs(depth)
    path = tmp_path / f"R-{depth}.pkl"
    _write(path, {"blobs": blobs} if wrapped else blobs)  # the release file, or a Detectron1-style 'blobs' dict
    model = small_model(depth)
    report = load_weights(model, path)
    assert report.complete and report.format == "detectron2 imagenet msra"
    assert model.backbone.stride_in_1x1
    assert model.pixel_mean.flatten().tolist() == pytest.approx(CAFFE_MEAN_BGR[::-1])
    assert model.pixel_std.flatten().tolist() == [1.0, 1.0, 1.0]
    rgb = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        ours, theirs = body_features(model, rgb), caffe2_resnet(blobs, rgb.flip(1), depth)
    for level, (a, b) in enumerate(zip(ours, theirs), start=2):
        assert a.shape == b.shape, f"res{level}"
        diff = (a - b).abs().max().item()
        assert diff <= 1e-5 * max(1.0, b.abs().max().item()), f"res{level}: max |diff| {diff}"


def test_msra_file_of_another_depth_names_the_depth_to_build(tmp_path):
    path = tmp_path / "R-101.pkl"
    _write(path, msra_blobs(101))
    model = small_model(50)
    before = model.backbone.body.conv1.weight.clone()
    with pytest.raises(WeightsError, match=r"ResNet-101.*ResNet-50.*model\.backbone\.depth=101"):
        load_weights(model, path, allow_partial=True)
    assert torch.equal(model.backbone.body.conv1.weight, before) and not model.backbone.stride_in_1x1


@pytest.mark.parametrize("change,named", [
    (lambda b: b.pop("res3_1_branch2b_bn_s"), "res3_1_branch2b_bn_s"),
    (lambda b: b.pop("res4_0_branch1_w"), "res4_0_branch1_w"),
    (lambda b: b.update(fpn_inner_res5_2_sum_w=b["fc1000_w"]), "fpn_inner_res5_2_sum_w"),
    (lambda b: b.update(res5_2_branch2b_gn_s=b["fc1000_b"]), "res5_2_branch2b_gn_s"),
])
def test_missing_or_unknown_blobs_are_refused_by_name(tmp_path, change, named):
    blobs = msra_blobs(50)
    change(blobs)
    path = tmp_path / "R-50.pkl"
    _write(path, blobs)
    model = small_model(50)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=named) as err:
        load_weights(model, path, allow_partial=True)
    assert "R-50.pkl" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.backbone.stride_in_1x1


def converted_by_detectron2(net: torch.nn.Module) -> dict:
    """convert-torchvision-to-d2.py's output for ``net``, written from its documented renaming."""
    converted = {}
    for key, value in net.state_dict().items():
        name = key if key.startswith("layer") else f"stem.{key}"
        for k in (1, 2, 3, 4):
            name = name.replace(f"layer{k}", f"res{k + 1}")
        for k in (1, 2, 3):
            name = name.replace(f"bn{k}", f"conv{k}.norm")
        converted[name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")] = value.numpy()
    return {"model": converted, "__author__": "torchvision", "matching_heuristics": True}


def test_torchvision_file_converted_by_detectron2_gives_torchvision_features(tmp_path):
    net = random_torchvision_r50()
    path = tmp_path / "R-50.pkl"
    _write(path, converted_by_detectron2(net))
    model = small_model(50)
    model.backbone.stride_in_1x1 = True  # a config carried over from Detectron2's MSRA defaults
    model.pixel_mean.copy_(torch.tensor(CAFFE_MEAN_BGR[::-1]).view(3, 1, 1))
    report = load_weights(model, path)
    assert report.complete and report.format == "detectron2 imagenet torchvision"
    assert not model.backbone.stride_in_1x1
    assert model.pixel_std.flatten().tolist() == pytest.approx([58.395, 57.12, 57.375])
    rgb = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        x = (rgb - model.pixel_mean) / model.pixel_std
        expected = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
        diff = (body_features(model, rgb)[-1] - expected).abs().max().item()
    assert diff <= 1e-5 * max(1.0, expected.abs().max().item()), f"res5: max |diff| {diff}"


def test_mask2former_r50_takes_the_torchvision_file_its_official_config_names_and_refuses_msra(tmp_path):
    model = instantiate_model(compose_model_config("mask2former_r50", data="coco_panoptic"))
    converted, msra = tmp_path / "torchvision-R-50.pkl", tmp_path / "R-50.pkl"
    _write(converted, converted_by_detectron2(random_torchvision_r50()))
    _write(msra, msra_blobs(50))
    report = load_weights(model, converted)
    assert report.complete and report.loaded
    with pytest.raises(WeightsError, match=r"R-50\.pkl.*stride in the bottleneck's 1x1 conv"):
        load_weights(model, msra)
