"""Strict weight loading: what does not fit is an error naming how many and which keys, unless
partial loading is asked for (then it is skipped and listed); weights matching nothing, unreadable
files, directories and unknown formats are always errors, and a failed load changes nothing."""

import logging
import pickle

import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from panfpn.modeling.backbone import ResNetFPN
from panfpn.modeling.panoptic_fpn.box_head import BoxHead
from panfpn.modeling.panoptic_fpn.mask_head import MaskHead
from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.panoptic_fpn import PanopticFPN
from panfpn.modeling.panoptic_fpn.roi_heads import RoIHeads, RoISampling
from panfpn.modeling.panoptic_fpn.rpn import RPN, ProposalLimits
from panfpn.modeling.panoptic_fpn.semantic_head import SemanticFPNHead
from panfpn.modeling.weights import WeightsError, load_weights


def tiny_model(num_things=3, num_sem=4, depth=18, norm="bn", seed=0):
    """The real ResNet body with narrow heads; ``num_things`` changes the class-dependent tensors."""
    torch.manual_seed(seed)
    c = 32
    model = PanopticFPN(
        ResNetFPN(depth, norm=norm, freeze_at=0 if norm == "bn" else 2, out_channels=c),
        SemanticFPNHead(num_sem, in_channels=c, conv_channels=32),
        RPN(in_channels=c, limits=ProposalLimits(100, 100, 50, 50)),
        RoIHeads(BoxHead(num_things, in_channels=c, fc_dim=64),
                 MaskHead(num_things, in_channels=c, conv_dim=32, num_convs=2), sampling=RoISampling(32)),
        thing_sem_labels=[num_sem - 1], merge=MergeThresholds(0.0, 0.5, 4))
    return model.eval()


def state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed by a failed load"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(reference model with 3 thing classes, its checkpoint file in our format)."""
    ref = tiny_model(num_things=3, seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pth"
    torch.save({"model": ref.state_dict(), "iteration": 1}, path)
    return ref, path


def test_other_class_counts_are_an_error_naming_count_and_keys(checkpoint):
    ref, path = checkpoint
    model = tiny_model(num_things=5, seed=1)
    before = state_copy(model)
    differing = [k for k, v in model.state_dict().items() if v.shape != ref.state_dict()[k].shape]
    assert len(differing) >= 4  # box classifier/regressor and mask predictor
    with pytest.raises(WeightsError) as err:
        load_weights(model, path)
    message = str(err.value)
    assert str(path) in message and f"{len(differing)} with another shape" in message
    assert differing[0] in message and "weights_partial=true" in message
    assert_unchanged(model, before)


def test_missing_and_unexpected_tensors_are_errors(checkpoint, tmp_path):
    ref, _ = checkpoint
    state = ref.state_dict()
    dropped = ["rpn.head.cls_logits.bias", "semantic_head.predictor.bias"]
    missing = {k: v for k, v in state.items() if k not in dropped}
    torch.save({"model": missing}, tmp_path / "missing.pth")
    model = tiny_model(seed=1)
    before = state_copy(model)
    with pytest.raises(WeightsError, match=r"2 model tensor\(s\) not in the file") as err:
        load_weights(model, tmp_path / "missing.pth")
    assert all(k in str(err.value) for k in dropped)
    assert_unchanged(model, before)

    extra = dict(state, **{"roi_heads.keypoint_head.conv1.weight": torch.zeros(2, 2)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"1 file tensor\(s\) the model does not have "
                                           r"\(roi_heads.keypoint_head.conv1.weight\)"):
        load_weights(model, tmp_path / "extra.pth")
    assert_unchanged(model, before)


def test_partial_loading_skips_and_lists_what_does_not_fit(checkpoint, caplog):
    ref, path = checkpoint
    model = tiny_model(num_things=5, seed=1)
    before = state_copy(model)
    with caplog.at_level(logging.INFO, logger="panfpn"):
        report = load_weights(model, path, allow_partial=True)
    ours, theirs = model.state_dict(), ref.state_dict()
    skipped = sorted(k for k in ours if ours[k].shape != theirs[k].shape)
    assert sorted(k for k, _, _ in report.shape_mismatch) == skipped
    assert not report.missing and not report.unexpected
    for key in ours:
        expected = before[key] if key in skipped else theirs[key]
        assert torch.equal(ours[key], expected), key
    for key in skipped:  # every skipped tensor is in the log, with both shapes
        assert any(key in r.getMessage() and "shape mismatch" in r.getMessage() for r in caplog.records), key
    assert any("partial load" in r.getMessage() for r in caplog.records)


def test_torchvision_backbone_scope(tmp_path):
    """ImageNet ResNet files fill the body only (heads stay fresh); strict means the whole body."""
    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    model = tiny_model()
    report = load_weights(model, tmp_path / "resnet18.pth")
    assert report.complete and all(k.startswith("backbone.body.") for k in report.loaded)
    partial = {k: v for k, v in resnet.state_dict().items() if not k.startswith("layer4.1.")}
    torch.save(partial, tmp_path / "resnet18_cut.pth")
    with pytest.raises(WeightsError, match=r"backbone\.body\.layer4\.1\.bn1"):
        load_weights(tiny_model(), tmp_path / "resnet18_cut.pth")


def _d2_conv_state():
    return {"sem_seg_head.something_else.weight": np.zeros((3, 3), np.float32)}


@pytest.mark.parametrize("kind", ["empty_pkl", "unrelated_pkl", "empty_pth", "unrelated_pth", "unrelated_d2_pth"])
@pytest.mark.parametrize("allow_partial", [False, True])
def test_weights_matching_nothing_are_an_error_and_change_nothing(kind, allow_partial, tmp_path):
    model = tiny_model(depth=50, norm="frozen_bn")  # depth 50: the Detectron2 path would switch stride_in_1x1
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_var.fill_(2.0)
    before = state_copy(model)
    strides = [tuple(m.stride) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    path = tmp_path / ("w.pkl" if kind.endswith("pkl") else "w.pth")
    if kind == "empty_pkl":
        path.write_bytes(pickle.dumps({"model": {}, "__author__": "test"}))
    elif kind == "unrelated_pkl":
        path.write_bytes(pickle.dumps({"model": _d2_conv_state()}))
    elif kind == "empty_pth":
        torch.save({"model": {}}, path)
    elif kind == "unrelated_pth":
        torch.save({"foo.weight": torch.zeros(3)}, path)
    else:
        torch.save({k: torch.from_numpy(v) for k, v in _d2_conv_state().items()}, path)
    with pytest.raises(WeightsError, match="match(es)? nothing") as err:
        load_weights(model, path, allow_partial=allow_partial)
    assert str(path) in str(err.value)
    assert_unchanged(model, before)  # pixel_mean / pixel_std included
    assert not model.backbone.stride_in_1x1
    assert [tuple(m.stride) for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == strides


@pytest.mark.parametrize("kind", ["text_pth", "text_pkl", "directory", "unknown_suffix", "no_suffix"])
def test_files_that_are_not_weights_name_the_path_and_the_formats(kind, tmp_path, checkpoint):
    _, good = checkpoint
    if kind == "text_pth":
        path = tmp_path / "model.pth"
        path.write_text("weights: please\n")
    elif kind == "text_pkl":
        path = tmp_path / "model.pkl"
        path.write_text("not a pickle at all\n")
    elif kind == "directory":
        path = tmp_path / "run"
        path.mkdir()
    elif kind == "unknown_suffix":
        path = tmp_path / "model.safetensors"
        path.write_bytes(good.read_bytes())
    else:
        path = tmp_path / "model"
        path.write_bytes(good.read_bytes())
    model = tiny_model(seed=1)
    before = state_copy(model)
    with pytest.raises(WeightsError) as err:
        load_weights(model, path)
    message = str(err.value)
    assert str(path) in message
    assert "Detectron2" in message and "torchvision" in message and ".pth" in message  # the formats accepted
    assert_unchanged(model, before)


def test_directory_of_a_run_points_at_its_checkpoint(tmp_path, checkpoint):
    _, good = checkpoint
    (tmp_path / "model_final.pth").write_bytes(good.read_bytes())
    with pytest.raises(WeightsError, match=f"did you mean {tmp_path / 'model_final.pth'}"):
        load_weights(tiny_model(), tmp_path)
