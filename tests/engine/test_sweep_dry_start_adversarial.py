"""The sweep dry start (panfpn/engine/training/dry_start.py) against configurations users really sweep:
what a job accepts at its start, the dry start must accept too (a false refusal cannot be worked around)."""

from __future__ import annotations

import pickle

import pytest

from test_sweep_dry_start import _refused
from test_sweep_precheck_inputs import multirun_config

from panfpn.modeling.build import instantiate_model
from panfpn.modeling.mask2former.official_weights import official_name
from panfpn.modeling.weights import load_weights

# a Mask2Former with a tiny Swin body (one shifted block per stage), as configs/model/mask2former_swin_*.yaml build it
SWIN = ["model=mask2former_small", "model.backbone.name=swin", "model.backbone.depth=null", "model.backbone.norm=native",
        "+model.backbone.out_norms=true",
        "+model.backbone.arch={embed_dim:24,depths:[2,2,2,2],num_heads:[1,2,3,4],window_size:7}"]


@pytest.fixture(params=["official Mask2Former", "imagenet swin"])
def official_swin_file(request, tiny_args, tmp_path):
    """An official Mask2Former model-zoo ``.pkl`` (its names, numpy arrays, relative position indices
    included) of the tiny Swin Mask2Former, or the ImageNet classification Swin ``.pkl`` of its body
    (the official initialisation), and the job's own strict load of it succeeding."""
    with multirun_config(*tiny_args, *SWIN) as cfg:
        model = instantiate_model(cfg)
    state = {official_name(k): v.numpy().copy() for k, v in model.state_dict().items() if official_name(k)}
    if request.param == "imagenet swin":
        state = {k.removeprefix("backbone."): v for k, v in state.items()
                 if k.startswith(("backbone.patch_embed.", "backbone.layers."))}
    assert any(k.endswith("relative_position_index") for k in state)
    path = tmp_path / "model_final_swin.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "FAIR", "matching_heuristics": True}, f)
    report = load_weights(model, str(path))  # what the job does at its start
    assert report.complete and report.format.lower().endswith(request.param.lower()), report.format
    return path


def test_an_official_swin_checkpoint_that_the_job_loads_is_not_refused(capsys, tiny_args, official_swin_file):
    """The Swin loaders check the file's relative_position_index against the model's values, which a
    meta-device model does not have (aten::equal has no meta kernel): every Mask2Former Swin sweep
    with official weights was refused with NotImplementedError."""
    assert _refused(capsys, *tiny_args, *SWIN, f"weights={official_swin_file}", "seed=1,2") is None


def test_an_official_swin_checkpoint_of_another_window_is_still_refused(capsys, tiny_args, official_swin_file):
    lines = _refused(capsys, *tiny_args, *SWIN[:-1], f"weights={official_swin_file}", "seed=1,2",
                     "+model.backbone.arch={embed_dim:24,depths:[2,2,2,2],num_heads:[1,2,3,4],window_size:5}")
    assert lines is not None and len(lines) == 2 and "WeightsError" in lines[0], lines


def test_torchvision_weights_of_another_architecture_are_refused_without_downloading(capsys, tiny_args, monkeypatch):
    """ResNet-50 weights into the ResNet-18 body: the job downloads 100 MB and then refuses them at
    its start; the check loads the named architecture's own (meta) state dict in their place."""
    monkeypatch.setattr("torchvision.models.WeightsEnum.get_state_dict",
                        lambda *a, **k: pytest.fail("the sweep check must not fetch weights"))
    lines = _refused(capsys, *tiny_args, "weights=ResNet18_Weights.IMAGENET1K_V1,ResNet50_Weights.IMAGENET1K_V2")
    assert lines is not None and len(lines) == 1, lines
    assert lines[0].startswith("job 1 [weights=ResNet50_Weights.IMAGENET1K_V2]: WeightsError: weights "
                               "ResNet50_Weights.IMAGENET1K_V2 (torchvision imagenet) do not fit the model"), lines


@pytest.mark.parametrize("model,weights", [("panoptic_fpn_regnety_3_2gf", "RegNet_Y_3_2GF_Weights.IMAGENET1K_V2"),
                                           ("panoptic_fpn_convnext_t", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1")])
def test_torchvision_weights_of_the_backbone_are_accepted(capsys, tiny_args, monkeypatch, model, weights):
    """The presets' own torchvision weights (RegNet's model is built on the CPU, ConvNeXt's on the meta device)."""
    monkeypatch.setattr("torchvision.models.WeightsEnum.get_state_dict",
                        lambda *a, **k: pytest.fail("the sweep check must not fetch weights"))
    assert _refused(capsys, *tiny_args, f"model={model}", f"weights={weights}", "seed=1,2") is None
