"""The official Mask2Former Swin training starting points (``MODEL.WEIGHTS:
swin_tiny_patch4_window7_224.pkl`` ...) load into the Swin body, strictly, the rest left as initialised.

Such a file is the Swin release ``.pth``'s ``"model"`` written by the official
``tools/convert-pretrained-swin-model-to-d2.py`` with a plain ``pickle.dump`` of torch tensors. Its
names are the ImageNet classification Swin's (microsoft/Swin-Transformer ``SwinTransformer``, whose
backbone part is the official ``mask2former/modeling/backbone/swin.py`` without ``backbone.``):
``patch_embed.*``, ``layers.{i}.blocks.{j}.*`` (an ``attn_mask`` buffer first in each shifted block of
a stage larger than a window; ``attn.relative_position_index`` [w^2, w^2] after the bias table),
``layers.{i}.downsample.*``, then the classifier ``norm.*`` and ``head.*``; no ``norm0..3`` (the
official segmentation backbone creates them fresh). Built here in that order, with the seeded
values of test_mask2former_swin_weights.py, so the outputs are checked against its reference forward
of the official Swin and against the same values loaded through the official checkpoint path.
"""

import collections
import pickle

import numpy as np
import pytest
import torch
from test_mask2former_swin_weights import (TINY, _images, _max_rel_err, _tiny_model, _write, official_position_index,
                                           official_swin_forward, official_swin_state)

from panfpn.modeling.mask2former.official_weights import official_name
from panfpn.modeling.weights import WeightsError, load_weights

IMAGE = 224  # the classification input size: stage sides 56, 28, 14, 7
CLASSES = 10


def classification_swin_state(official, depths, window_size, **_):
    """The ImageNet classification Swin's state dict (official names, order and buffers) holding the
    ``backbone.*`` values of the official segmentation checkpoint ``official`` (numpy)."""
    src = {k.removeprefix("backbone."): torch.from_numpy(v) for k, v in official.items() if k.startswith("backbone.")}
    state = collections.OrderedDict((k, src[k]) for k in src if k.startswith("patch_embed."))
    side = IMAGE // 4
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            if j % 2 and side > window_size:  # shifted; a one-window stage does not shift or mask
                windows = (side // window_size) ** 2
                state[p + "attn_mask"] = torch.zeros(windows, window_size ** 2, window_size ** 2)
            state.update((k, src[k]) for k in src if k.startswith(p))
        state.update((k, src[k]) for k in src if k.startswith(f"layers.{i}.downsample."))
        side //= 2
    width = src["layers.3.blocks.0.norm1.weight"].shape[0]
    g = torch.Generator().manual_seed(5)
    state.update({"norm.weight": 1 + 0.1 * torch.randn(width, generator=g),
                  "norm.bias": torch.randn(width, generator=g),
                  "head.weight": torch.randn(CLASSES, width, generator=g), "head.bias": torch.zeros(CLASSES)})
    return state


def _converted(state, path):
    """What the official converter writes (``pkl.dump(res, f)``)."""
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "third_party", "matching_heuristics": True}, f)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A model, the official segmentation checkpoint's values and the ImageNet file built from them."""
    model = _tiny_model()
    official = official_swin_state(TINY, model)
    state = classification_swin_state(official, **TINY)
    return official, state, _converted(state, tmp_path_factory.mktemp("imagenet") / "swin_tiny_patch4_window7_224.pkl")


def test_the_file_fills_the_body_and_leaves_the_rest_as_initialised(files):
    official, state, path = files
    assert list(state)[:5] == ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight",
                               "patch_embed.norm.bias", "layers.0.blocks.0.norm1.weight"]
    assert sum(k.endswith("attn_mask") for k in state) == 3  # stages 0..2; stage 3 (7x7) is one window
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_weights(model, path)
    assert report.complete and report.format == "official imagenet swin", str(report)
    notes = "\n".join(report.notes)
    assert "classifier not used: norm.weight, norm.bias, head.weight, head.bias" in notes
    assert "3 attn_mask" in notes and "4 output norms" in notes
    for key, value in model.state_dict().items():
        if key.startswith("backbone.body."):
            assert torch.equal(value, torch.from_numpy(official[official_name(key)]).reshape(value.shape)), key
        else:  # output norms, pixel decoder, predictor, normalisation
            assert torch.equal(value, before[key]), key
    assert any(k.startswith("backbone.out_norms.") for k in before)


def test_backbone_outputs_are_the_official_swin_with_fresh_output_norms(files, tmp_path):
    """Our backbone after the ImageNet load = the official forward of those tensors with norm0..3 at
    their initialisation (1 / 0), and = the same values loaded through the official checkpoint path."""
    official, _, path = files
    model = _tiny_model()
    load_weights(model, path)
    fresh = {f"backbone.norm{i}.{p}": (np.ones if p == "weight" else np.zeros)(24 * 2 ** i, np.float32)
             for i in range(4) for p in ("weight", "bias")}
    reference_state = {**official, **fresh}
    through_checkpoint = _tiny_model()
    load_weights(through_checkpoint, _write(reference_state, tmp_path / "model_final.pkl"))
    for hw in ((96, 128), (260, 292)):
        x = _images(*hw)
        with torch.no_grad():
            ours = model.backbone(x)
            other = through_checkpoint.backbone(x)
        assert _max_rel_err(ours, official_swin_forward(reference_state, x, **TINY)) < 1e-4
        assert all(torch.equal(a, b) for a, b in zip(ours, other))
    assert _max_rel_err(ours, official_swin_forward(official, x, **TINY)) > 1e-2  # the norms do matter


def test_the_swin_release_pth_loads_the_same(files, tmp_path):
    """The file before conversion (``torch.save({"model": ...})``, read weights-only) gives the same model."""
    _, state, path = files
    torch.save({"model": state}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    a, b = _tiny_model(), _tiny_model()
    load_weights(a, path)
    report = load_weights(b, tmp_path / "swin_tiny_patch4_window7_224.pth")
    assert report.complete and report.format == "official imagenet swin"
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("case,key", [
    ("missing", r"backbone\.body\.features\.3\.0\.mlp\.0\.weight"),
    ("extra", "absolute_pos_embed"),
    ("deeper", r"layers\.2\.blocks\.2\.norm1\.weight"),  # a Swin-S file into a Swin-T model
    ("window", r"features\.1\.0\.attn\.relative_position_bias_table model \[169, 1\] vs file \[529, 1\]"),
    ("index", "relative_position_index"),
])
def test_a_body_tensor_that_does_not_fit_is_refused_by_name(files, tmp_path, case, key):
    _, state, _ = files
    bad = collections.OrderedDict(state)
    if case == "missing":
        del bad["layers.1.blocks.0.mlp.fc1.weight"]
    elif case == "extra":
        bad["absolute_pos_embed"] = torch.zeros(1, 56 * 56, 24)
    elif case == "deeper":
        bad["layers.2.blocks.2.norm1.weight"] = torch.ones(96)
    elif case == "window":
        bad["layers.0.blocks.0.attn.relative_position_bias_table"] = torch.zeros(529, 1)
    else:
        bad["layers.0.blocks.0.attn.relative_position_index"] = official_position_index(7).T.contiguous()
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=key):
        load_weights(model, _converted(bad, tmp_path / "bad.pkl"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_resnet_model_matches_nothing(files):
    from modeling_helpers import compose_model_config

    from panfpn.modeling.build import instantiate_model

    model = instantiate_model(compose_model_config("mask2former_small", "coco_panoptic"))
    with pytest.raises(WeightsError, match=r"official imagenet swin\) match nothing"):
        load_weights(model, files[2])


def test_eval_refuses_the_file_its_heads_would_be_random(files):
    """tools/eval.py / predict.py build their model through build_inference_model."""
    from modeling_helpers import compose_model_config

    from panfpn.engine.inference_model import build_inference_model

    dims = (f"embed_dim:{TINY['embed_dim']},depths:{TINY['depths']},num_heads:{TINY['num_heads']},"
            f"window_size:{TINY['window_size']},always_shift:true").replace(" ", "")
    cfg = compose_model_config("mask2former_small", "synthetic", (
        "model.backbone.name=swin", "model.backbone.depth=null", "model.backbone.norm=native",
        "+model.backbone.out_norms=true", f"+model.backbone.arch={{{dims}}}", f"weights={files[2]}"))
    with pytest.raises(WeightsError, match="hold only an ImageNet backbone"):
        build_inference_model(cfg, [])
