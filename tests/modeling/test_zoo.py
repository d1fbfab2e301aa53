"""panfpn.panoptic_fpn_r50 / _r101 / _small build from Python exactly what the yaml configs build."""

import warnings
from pathlib import Path

import pytest
import torch
from config_helpers import CONFIG_DIR
from omegaconf import OmegaConf

import panfpn
from panfpn.modeling.build import build_model
from panfpn.modeling.weights import WeightsError
from panfpn.modeling.zoo import MODEL_CONFIG_DIR, model_config

from modeling_helpers import compose_model_config, make_batch

NAMES = ["panoptic_fpn_small", "panoptic_fpn_r50", "panoptic_fpn_r101"]
# torchvision backbones (panfpn.modeling.backbone_tv): built by name with build_named_model
TV_NAMES = ["panoptic_fpn_convnext_t", "panoptic_fpn_mobilenet_v3_large", "panoptic_fpn_regnety_3_2gf",
            "panoptic_fpn_resnext101_32x8d", "panoptic_fpn_swin_t"]
MASK2FORMER_NAMES = ["mask2former_r50", "mask2former_small",  # tests/modeling/test_mask2former_*.py
                     "mask2former_swin_t", "mask2former_swin_s", "mask2former_swin_b_384", "mask2former_swin_l"]


def _shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without weights (tested below)
        return fn(*args, **kwargs)


def test_packaged_model_configs_are_the_repository_configs():
    """panfpn/configs (the link shipped as package data) is the repository's configs folder."""
    assert MODEL_CONFIG_DIR.resolve() == (Path(CONFIG_DIR) / "model").resolve()
    assert sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml")) == sorted(NAMES + TV_NAMES + MASK2FORMER_NAMES)


@pytest.mark.parametrize("name", TV_NAMES)
def test_torchvision_backbone_configs_load_as_hydra_composes_them(name):
    """The zoo's defaults-list merge gives the same model node as hydra for the backbone configs."""
    ours = model_config(name, 80, 53)
    composed = compose_model_config(name, "coco_panoptic")
    assert OmegaConf.to_container(ours.model, resolve=True) == OmegaConf.to_container(composed.model, resolve=True)
    assert ours.model.backbone._target_ == "panfpn.modeling.backbone_tv.TorchvisionFPN"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("data, counts", [("synthetic", (4, 4)), ("coco_panoptic", (80, 53)),
                                          ("cityscapes_panoptic", None)])
def test_model_config_equals_the_composed_one(name, data, counts):
    if counts is None:  # Cityscapes: all 19 classes have a label, things are 11..18
        ours = model_config(name, 8, 11, sem_seg_mode="all", thing_sem_labels=range(11, 19))
    else:
        ours = model_config(name, *counts)
    composed = compose_model_config(name, data)
    assert OmegaConf.to_container(ours.model, resolve=True) == OmegaConf.to_container(composed.model, resolve=True)


@pytest.mark.parametrize("name, total", [("panoptic_fpn_r50", 45_973_990), ("panoptic_fpn_r101", 64_913_894)])
def test_coco_models_match_build_model(name, total):
    ours = _quiet(getattr(panfpn, name))  # COCO counts by default: 80 things, 53 stuff
    ref = _quiet(build_model, compose_model_config(name, "coco_panoptic"))
    assert sum(p.numel() for p in ours.parameters()) == total
    assert _shapes(ours) == _shapes(ref)


def test_small_model_same_weights_and_outputs_as_build_model():
    torch.manual_seed(0)
    ours = panfpn.panoptic_fpn_small(4, 4).eval()
    torch.manual_seed(0)
    ref = build_model(compose_model_config("panoptic_fpn_small")).eval()
    ref_state = ref.state_dict()
    assert ours.state_dict().keys() == ref_state.keys()
    assert all(torch.equal(v, ref_state[k]) for k, v in ours.state_dict().items())
    batch = make_batch([(64, 64)], [(64, 64)], num_things=4, num_sem=5)
    with torch.no_grad():
        a, b = ours(batch)[0], ref(batch)[0]
    assert torch.equal(a["sem_seg"], b["sem_seg"]) and torch.equal(a["panoptic"][0], b["panoptic"][0])
    assert a["panoptic"][1] == b["panoptic"][1]
    assert torch.equal(a["instances"]["boxes"], b["instances"]["boxes"])


def test_weights_load_strict_unless_partial(tmp_path):
    torch.manual_seed(1)
    src = panfpn.panoptic_fpn_small(4, 4)
    path = tmp_path / "small.pth"
    torch.save({"model": src.state_dict()}, path)
    loaded = panfpn.panoptic_fpn_small(4, 4, weights=path)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(WeightsError):
        panfpn.panoptic_fpn_small(5, 4, weights=path)  # box/mask heads have other shapes
    partial = panfpn.panoptic_fpn_small(5, 4, weights=path, allow_partial=True)
    assert all(torch.equal(v, src.backbone.state_dict()[k]) for k, v in partial.backbone.state_dict().items())
    assert partial.roi_heads.box_head.cls_score.weight.shape[0] == 6  # 5 things + background, not loaded


def test_frozen_bn_without_weights_warns_like_build_model():
    with pytest.warns(UserWarning, match="frozen BatchNorm"):
        panfpn.panoptic_fpn_r50(2, 1, backbone={"depth": 18, "out_channels": 32})


def test_sem_seg_modes():
    model = panfpn.panoptic_fpn_small(2, 3)
    assert model.thing_sem_labels == [3] and model.semantic_head.predictor.out_channels == 4
    model = panfpn.panoptic_fpn_small(2, 3, sem_seg_mode="all", thing_sem_labels=[0, 3])
    assert model.thing_sem_labels == [0, 3] and model.semantic_head.predictor.out_channels == 5
    with pytest.raises(ValueError, match="needs thing_sem_labels"):
        panfpn.panoptic_fpn_small(2, 3, sem_seg_mode="all")
    with pytest.raises(ValueError, match="sem_seg_mode must be"):
        panfpn.panoptic_fpn_small(2, 3, sem_seg_mode="things")


def test_overrides_are_nested_keys_and_typos_are_named():
    model = panfpn.panoptic_fpn_small(2, 3, backbone={"norm": "gn"}, merge={"stuff_area": 7})
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.modules())
    assert model.merge_thresholds.stuff_area == 7
    with pytest.raises(ValueError, match="nrom"):
        panfpn.panoptic_fpn_small(2, 3, backbone={"nrom": "gn"})


def test_model_yaml_defaults_errors_are_named(tmp_path, monkeypatch):
    from panfpn.modeling import zoo

    (tmp_path / "a.yaml").write_text("defaults:\n  - b\n  - _self_\nx: 1\n")
    (tmp_path / "b.yaml").write_text("defaults:\n  - a\n")
    (tmp_path / "c.yaml").write_text("defaults:\n  - /data: synthetic\n")
    (tmp_path / "d.yaml").write_text("x: 2\ny: 3\n")
    (tmp_path / "e.yaml").write_text("defaults:\n  - d\nx: 4\n")  # _self_ absent: applied last
    monkeypatch.setattr(zoo, "MODEL_CONFIG_DIR", tmp_path)
    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        zoo.load_model_yaml("a")
    with pytest.raises(ValueError, match=r"c\.yaml: defaults entry .*not supported"):
        zoo.load_model_yaml("c")
    with pytest.raises(FileNotFoundError, match=r"no model config .*nope\.yaml"):
        zoo.load_model_yaml("nope")
    assert OmegaConf.to_container(zoo.load_model_yaml("e")) == {"x": 4, "y": 3}
