"""load_weights: Detectron2 .pkl import (round trip, conventions, report), refusal of malicious
pickles, our own checkpoints, torchvision ResNet files and weights names."""

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import FrozenBatchNorm2d

import panfpn
from panfpn.modeling.backbone import ResNetFPN
from panfpn.modeling.panoptic_fpn.box_head import BoxHead
from panfpn.modeling.panoptic_fpn.detectron2_import import D2_PIXEL_MEAN_BGR, ours_to_d2
from panfpn.modeling.panoptic_fpn.mask_head import MaskHead
from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.panoptic_fpn import PanopticFPN
from panfpn.modeling.panoptic_fpn.roi_heads import RoIHeads, RoISampling
from panfpn.modeling.panoptic_fpn.rpn import RPN, ProposalLimits
from panfpn.modeling.panoptic_fpn.semantic_head import SemanticFPNHead
from panfpn.modeling.weights import WeightsError, load_weights

from modeling_helpers import make_batch

NUM_THINGS, NUM_SEM = 3, 4


def small_model(depth=50, seed=0, norm="frozen_bn", stride_in_1x1=False):
    """A Panoptic FPN with the real ResNet body and narrow heads (fast, same structure)."""
    torch.manual_seed(seed)
    c = 32
    model = PanopticFPN(
        ResNetFPN(depth, norm=norm, freeze_at=2, stride_in_1x1=stride_in_1x1, out_channels=c),
        SemanticFPNHead(NUM_SEM, in_channels=c, conv_channels=32),
        RPN(in_channels=c, limits=ProposalLimits(100, 100, 50, 50)),
        RoIHeads(BoxHead(NUM_THINGS, in_channels=c, fc_dim=64),
                 MaskHead(NUM_THINGS, in_channels=c, conv_dim=32, num_convs=2),
                 sampling=RoISampling(32)),
        thing_sem_labels=[NUM_SEM - 1], merge=MergeThresholds(0.0, 0.5, 4))
    for m in model.modules():  # non-trivial frozen statistics, so a mix-up would show
        if isinstance(m, FrozenBatchNorm2d):
            for buf in (m.weight, m.bias, m.running_mean):
                buf.copy_(torch.randn_like(buf) * 0.1 + (1.0 if buf is m.weight else 0.0))
            m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    model.roi_heads.box_head.test = type(model.roi_heads.box_head.test)(0.0, 0.5, 10)
    return model.eval()


def as_detectron2(model) -> dict:
    """Write a model in Detectron2's conventions: its names, BGR first conv, semantic label order,
    numpy arrays."""
    out = {}
    for key, value in model.state_dict().items():
        name = ours_to_d2(key)
        if name is None:
            continue
        value = value.numpy().copy()
        if key == "backbone.body.conv1.weight":
            value = value[:, ::-1].copy()  # RGB -> BGR input channels
        if key.startswith("semantic_head.predictor."):  # Detectron2: merged things at 0, stuff i at i+1
            value = np.concatenate([value[-1:], value[:-1]])
        out[name] = value
    return out


def write_pkl(path, state):
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)
    return path


def set_d2_normalisation(model):
    model.pixel_mean.copy_(torch.tensor(D2_PIXEL_MEAN_BGR[::-1]).view(3, 1, 1))
    model.pixel_std.fill_(1.0)
    model.backbone.stride_in_1x1 = True


@pytest.fixture(scope="module")
def d2_pair(tmp_path_factory):
    """(reference model in Detectron2's setting, its .pkl, the D2-named arrays)."""
    ref = small_model(seed=0)
    set_d2_normalisation(ref)
    state = as_detectron2(ref)
    path = write_pkl(tmp_path_factory.mktemp("d2") / "model_final.pkl", state)
    return ref, path, state


def test_d2_names_are_detectron2s():
    """Known names and shapes of Detectron2's Panoptic FPN R50 checkpoint."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = panfpn.panoptic_fpn_r50(num_thing_classes=80, num_stuff_classes=53)
    names = {}
    for key, value in model.state_dict().items():
        name = ours_to_d2(key)
        if name is None:
            assert key in ("pixel_mean", "pixel_std"), f"{key} has no Detectron2 name"
            continue
        assert name not in names, f"two keys map to {name}"
        names[name] = tuple(value.shape)
    expected = {
        "backbone.bottom_up.stem.conv1.weight": (64, 3, 7, 7),
        "backbone.bottom_up.stem.conv1.norm.running_var": (64,),
        "backbone.bottom_up.res2.0.shortcut.weight": (256, 64, 1, 1),
        "backbone.bottom_up.res2.0.shortcut.norm.bias": (256,),
        "backbone.bottom_up.res3.0.conv1.weight": (128, 256, 1, 1),
        "backbone.bottom_up.res4.5.conv3.norm.running_mean": (1024,),
        "backbone.bottom_up.res5.2.conv2.weight": (512, 512, 3, 3),
        "backbone.fpn_lateral2.weight": (256, 256, 1, 1),
        "backbone.fpn_lateral5.weight": (256, 2048, 1, 1),
        "backbone.fpn_output4.bias": (256,),
        "proposal_generator.rpn_head.conv.weight": (256, 256, 3, 3),
        "proposal_generator.rpn_head.objectness_logits.weight": (3, 256, 1, 1),
        "proposal_generator.rpn_head.anchor_deltas.weight": (12, 256, 1, 1),
        "roi_heads.box_head.fc1.weight": (1024, 12544),
        "roi_heads.box_head.fc2.bias": (1024,),
        "roi_heads.box_predictor.cls_score.weight": (81, 1024),
        "roi_heads.box_predictor.bbox_pred.weight": (320, 1024),
        "roi_heads.mask_head.mask_fcn1.weight": (256, 256, 3, 3),
        "roi_heads.mask_head.mask_fcn4.bias": (256,),
        "roi_heads.mask_head.deconv.weight": (256, 256, 2, 2),
        "roi_heads.mask_head.predictor.weight": (80, 256, 1, 1),
        "sem_seg_head.p2.0.weight": (128, 256, 3, 3),
        "sem_seg_head.p2.0.norm.weight": (128,),
        "sem_seg_head.p3.0.norm.bias": (128,),
        "sem_seg_head.p4.2.weight": (128, 128, 3, 3),
        "sem_seg_head.p5.4.norm.bias": (128,),
        "sem_seg_head.predictor.weight": (54, 128, 1, 1),
    }
    for name, shape in expected.items():
        assert names.get(name) == shape, name
    assert "sem_seg_head.p4.1.weight" not in names  # index 1 is an Upsample in Detectron2


def test_d2_pickle_round_trip(d2_pair):
    ref, path, _ = d2_pair
    model = small_model(seed=1)
    assert not model.backbone.stride_in_1x1
    report = load_weights(model, path)
    assert report.format == "detectron2"
    assert report.complete, str(report)
    assert model.backbone.stride_in_1x1
    ours, theirs = model.state_dict(), ref.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)
    batch = make_batch([(64, 96), (60, 70)], [(64, 96), (90, 100)], num_things=NUM_THINGS,
                       num_sem=NUM_SEM, seed=2)
    with torch.no_grad():
        a, b = ref(batch), model(batch)
    for ra, rb in zip(a, b):
        assert torch.equal(ra["sem_seg"], rb["sem_seg"])
        torch.testing.assert_close(ra["instances"]["boxes"], rb["instances"]["boxes"])
        assert torch.equal(ra["panoptic"][0], rb["panoptic"][0])
        assert len(ra["instances"]["scores"]) > 0


def test_d2_bgr_input_convention(d2_pair):
    """Independently of the mapping: our RGB first conv on our normalisation equals Detectron2's
    BGR conv on Caffe-mean-subtracted BGR pixels."""
    _, path, state = d2_pair
    model = small_model(seed=1)
    load_weights(model, path)
    rgb = torch.randint(0, 256, (1, 3, 32, 32)).float()
    bgr = rgb.flip(1)
    d2 = F.conv2d(bgr - torch.tensor(D2_PIXEL_MEAN_BGR).view(1, 3, 1, 1),
                  torch.from_numpy(state["backbone.bottom_up.stem.conv1.weight"]), stride=2, padding=3)
    ours = F.conv2d((rgb - model.pixel_mean) / model.pixel_std, model.backbone.body.conv1.weight,
                    stride=2, padding=3)
    torch.testing.assert_close(ours, d2, rtol=1e-4, atol=1e-3)


def test_d2_report_lists_what_does_not_fit(d2_pair, tmp_path):
    _, _, state = d2_pair
    state = dict(state)
    state["roi_heads.keypoint_head.conv1.weight"] = np.zeros((2, 2), np.float32)
    del state["sem_seg_head.predictor.bias"]
    state["roi_heads.box_predictor.cls_score.weight"] = np.zeros((7, 64), np.float32)
    state["proposal_generator.anchor_generator.cell_anchors.0"] = np.zeros((3, 4), np.float32)
    path = write_pkl(tmp_path / "partial.pkl", state)
    model = small_model(seed=1)
    before = model.roi_heads.box_head.cls_score.weight.clone()
    report = load_weights(model, path, allow_partial=True)  # strict would refuse it
    assert not report.complete
    assert report.unexpected == ["roi_heads.keypoint_head.conv1.weight"]
    assert report.missing == ["semantic_head.predictor.bias"]
    assert report.shape_mismatch == [("roi_heads.box_head.cls_score.weight", (NUM_THINGS + 1, 64), (7, 64))]
    assert torch.equal(model.roi_heads.box_head.cls_score.weight, before)
    text = str(report)
    assert "keypoint_head" in text and "semantic_head.predictor.bias" in text and "[7, 64]" in text


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["system", "eval", "torch"])
def test_malicious_pickle_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    if payload == "system":
        obj = {"model": {"x": _Evil(marker)}}
    elif payload == "eval":
        obj = {"model": {"x": np.zeros(2)}, "y": _EvalPayload()}
    else:  # torch tensors load (their storages through torch's weights-only reader): not one that runs code
        evil = pickle.dumps(_Evil(marker), protocol=2)
        obj = {"model": {"x": _TorchPayload(torch.storage._load_from_bytes, evil)}}
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_weights(small_model(), path)
    assert not marker.exists()


def test_malicious_torch_save_file_names_what_was_refused(tmp_path):
    """A torch.save zip holding code to run: refused, and the message says what torch refused
    (the blocked global), not the first line of torch's general advice."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(2), "y": _Evil(marker)}}, path)
    with pytest.raises(WeightsError) as info:
        load_weights(small_model(), path)
    text = str(info.value)
    assert str(path) in text and "weights-only unpickler refused it" in text
    assert "system" in text and "In PyTorch 2.6" not in text, text
    assert not marker.exists()


class _TorchPayload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class _EvalPayload:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_our_checkpoints(tmp_path):
    ref = small_model(depth=18, seed=0, norm="bn")
    target = small_model(depth=18, seed=1, norm="bn")
    torch.save({"model": ref.state_dict(), "iteration": 7}, tmp_path / "ckpt.pth")
    torch.save(ref.state_dict(), tmp_path / "bare.pt")
    for name in ("ckpt.pth", "bare.pt"):
        report = load_weights(target, tmp_path / name)
        assert report.format == "panfpn" and report.complete, str(report)
        for key, value in ref.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(target, tmp_path / "nope.pth")


def test_torchvision_resnet_file_loads_into_the_body(tmp_path):
    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    model = small_model(depth=18, norm="bn")
    report = load_weights(model, tmp_path / "resnet18.pth")
    assert report.format == "torchvision resnet" and report.complete, str(report)
    assert torch.equal(model.backbone.body.layer3[1].conv2.weight, resnet.layer3[1].conv2.weight)
    assert torch.equal(model.backbone.body.bn1.running_var, resnet.bn1.running_var)


def test_torchvision_weights_name_uses_torch_hub_cache(tmp_path, monkeypatch):
    """The weights-API path, offline: torchvision finds the file in the torch hub cache."""
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    resnet = torchvision.models.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(resnet.state_dict(), cache / os.path.basename(weights.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = small_model(depth=18)  # frozen BN: ImageNet statistics land in its buffers
    report = load_weights(model, "ResNet18_Weights.IMAGENET1K_V1")
    assert report.format == "torchvision imagenet" and report.complete, str(report)
    assert torch.equal(model.backbone.body.bn1.running_mean, resnet.bn1.running_mean)
    assert torch.equal(model.backbone.body.conv1.weight, resnet.conv1.weight)
