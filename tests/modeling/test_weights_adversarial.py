"""Weights a user brings that used to load "fine" and then give other outputs than the tool that
trained them, or that failed with an unclear error. The Detectron2 files are written in Detectron2's
own names and shapes (its ResNet / FPN / RPN / RoI heads / SemSegFPNHead modules, built here from
their hyper-parameters), not by converting one of our models."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision

from panfpn.modeling.backbone import ResNetFPN
from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.panoptic_fpn import PanopticFPN
from panfpn.modeling.panoptic_fpn.box_head import BoxHead
from panfpn.modeling.panoptic_fpn.mask_head import MaskHead
from panfpn.modeling.panoptic_fpn.roi_heads import RoIHeads, RoISampling
from panfpn.modeling.panoptic_fpn.rpn import RPN, ProposalLimits
from panfpn.modeling.panoptic_fpn.semantic_head import SemanticFPNHead
from panfpn.modeling.weights import WeightsError, load_weights

from modeling_helpers import random_torchvision_r50

THINGS, SEM = 3, 4  # 3 thing classes; the semantic head: 3 stuff + the merged 'things' label
FPN, SEM_DIM, FC, MASK_DIM, MASK_CONVS = 32, 32, 64, 32, 2
CAFFE_MEAN_BGR = [103.530, 116.280, 123.675]


def tiny_model(depth: int = 18, stride_in_1x1: bool = False) -> PanopticFPN:
    """Our Panoptic FPN with the hyper-parameters :func:`d2_state` writes."""
    torch.manual_seed(0)
    return PanopticFPN(
        ResNetFPN(depth, norm="frozen_bn", freeze_at=2, stride_in_1x1=stride_in_1x1, out_channels=FPN),
        SemanticFPNHead(SEM, in_channels=FPN, conv_channels=SEM_DIM),
        RPN(in_channels=FPN, limits=ProposalLimits(100, 100, 50, 50)),
        RoIHeads(BoxHead(THINGS, in_channels=FPN, fc_dim=FC),
                 MaskHead(THINGS, in_channels=FPN, conv_dim=MASK_DIM, num_convs=MASK_CONVS),
                 sampling=RoISampling(32)),
        thing_sem_labels=[SEM - 1], merge=MergeThresholds(0.0, 0.5, 4)).eval()


def _conv(out: dict, name: str, shape: tuple, *, norm: str | None = "frozen_bn", bias: bool = False) -> None:
    """One Detectron2 ``Conv2d`` (weight, optional bias) with its ``norm`` child."""
    out[f"{name}.weight"] = shape
    if bias:
        out[f"{name}.bias"] = (shape[0],)
    if norm == "frozen_bn":
        for buf in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.norm.{buf}"] = (shape[0],)
    elif norm == "gn":
        out[f"{name}.norm.weight"] = (shape[0],)
        out[f"{name}.norm.bias"] = (shape[0],)


def d2_resnet_shapes(depth: int) -> dict[str, tuple]:
    """Detectron2's ``build_resnet_backbone`` names under ``backbone.bottom_up.`` (BasicStem, then
    BasicBlock for R18/34 or BottleneckBlock for R50+, shortcut when the width changes)."""
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    out: dict[str, tuple] = {}
    p = "backbone.bottom_up."
    _conv(out, p + "stem.conv1", (64, 3, 7, 7))
    in_ch = 64
    for stage, n in enumerate(blocks):
        width = 64 * 2 ** stage
        out_ch = width if depth < 50 else width * 4
        for i in range(n):
            name = f"{p}res{stage + 2}.{i}"
            if in_ch != out_ch:
                _conv(out, f"{name}.shortcut", (out_ch, in_ch, 1, 1))
            if depth < 50:
                _conv(out, f"{name}.conv1", (width, in_ch, 3, 3))
                _conv(out, f"{name}.conv2", (width, width, 3, 3))
            else:
                _conv(out, f"{name}.conv1", (width, in_ch, 1, 1))
                _conv(out, f"{name}.conv2", (width, width, 3, 3))
                _conv(out, f"{name}.conv3", (out_ch, width, 1, 1))
            in_ch = out_ch
    return out


def d2_panoptic_shapes(depth: int = 18) -> dict[str, tuple]:
    """Every tensor of Detectron2's PanopticFPN (Base-Panoptic-FPN.yaml) with our tiny sizes."""
    out = d2_resnet_shapes(depth)
    stage_ch = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
    for level, ch in zip(range(2, 6), stage_ch):
        _conv(out, f"backbone.fpn_lateral{level}", (FPN, ch, 1, 1), norm=None, bias=True)
        _conv(out, f"backbone.fpn_output{level}", (FPN, FPN, 3, 3), norm=None, bias=True)
    rpn = "proposal_generator.rpn_head."
    _conv(out, rpn + "conv", (FPN, FPN, 3, 3), norm=None, bias=True)
    _conv(out, rpn + "objectness_logits", (3, FPN, 1, 1), norm=None, bias=True)
    _conv(out, rpn + "anchor_deltas", (12, FPN, 1, 1), norm=None, bias=True)
    _conv(out, "roi_heads.box_head.fc1", (FC, FPN * 7 * 7), norm=None, bias=True)
    _conv(out, "roi_heads.box_head.fc2", (FC, FC), norm=None, bias=True)
    _conv(out, "roi_heads.box_predictor.cls_score", (THINGS + 1, FC), norm=None, bias=True)
    _conv(out, "roi_heads.box_predictor.bbox_pred", (4 * THINGS, FC), norm=None, bias=True)
    in_ch = FPN
    for k in range(1, MASK_CONVS + 1):
        _conv(out, f"roi_heads.mask_head.mask_fcn{k}", (MASK_DIM, in_ch, 3, 3), norm=None, bias=True)
        in_ch = MASK_DIM
    _conv(out, "roi_heads.mask_head.deconv", (MASK_DIM, MASK_DIM, 2, 2), norm=None, bias=True)
    _conv(out, "roi_heads.mask_head.predictor", (THINGS, MASK_DIM, 1, 1), norm=None, bias=True)
    for level in range(2, 6):  # p2: one conv; pN: N-2 conv+upsample pairs (convs at even indices)
        for j in range(max(1, level - 2)):
            _conv(out, f"sem_seg_head.p{level}.{2 * j}", (SEM_DIM, FPN if j == 0 else SEM_DIM, 3, 3), norm="gn")
    _conv(out, "sem_seg_head.predictor", (SEM, SEM_DIM, 1, 1), norm=None, bias=True)
    return out


def d2_state(depth: int = 18, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 arrays in Detectron2's layout (variances positive)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in d2_panoptic_shapes(depth).items():
        value = rng.normal(0, 0.05, shape).astype(np.float32)
        state[name] = np.abs(value) + 0.5 if name.endswith("running_var") else value
    return state


def write_zoo_pkl(path, state: dict) -> str:
    """A Detectron2 model-zoo .pkl: ``{"model": numpy arrays, "__author__": ...}``."""
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    return str(path)


def write_training_pth(path, state: dict, **extra_model: torch.Tensor) -> str:
    """A checkpoint as Detectron2's trainer writes it (fvcore ``Checkpointer.save``)."""
    model = {k: torch.from_numpy(v) for k, v in state.items()}
    model.update(extra_model)
    torch.save({"model": model,
                "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                              "param_groups": [{"lr": 0.02, "momentum": 0.9, "params": [0]}]},
                "scheduler": {"base_lrs": [0.02], "last_epoch": 89999}, "iteration": 89999}, path)
    return str(path)


def test_the_builder_writes_a_complete_detectron2_model(tmp_path):
    """The layout above loads strictly (so the tests below probe conventions, not names); the
    model-zoo .pkl and the trainer's .pth give the same model."""
    state = d2_state()
    a, b = tiny_model(), tiny_model()
    assert load_weights(a, write_zoo_pkl(tmp_path / "model_final.pkl", state)).complete
    assert load_weights(b, write_training_pth(tmp_path / "model_final.pth", state)).complete
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


# --- input normalisation recorded in a Detectron2 file ---------------------------------------------
# Detectron2 before its pixel_mean / pixel_std buffers became non-persistent saved them in the
# model's state: a file trained with INPUT.FORMAT RGB and the torchvision mean/std (the recipe for
# torchvision-initialised backbones) says so there. Loaded as Caffe BGR, its first conv saw flipped,
# unscaled inputs: other outputs than in Detectron2, exit 0.
TORCHVISION_MEAN_RGB = [123.675, 116.280, 103.530]
TORCHVISION_STD_RGB = [58.395, 57.120, 57.375]


@pytest.mark.parametrize("allow_partial", [False, True])
def test_a_file_trained_with_other_pixel_mean_and_std_is_refused_by_name(tmp_path, allow_partial):
    path = write_training_pth(tmp_path / "model_final.pth", d2_state(),
                              pixel_mean=torch.tensor(TORCHVISION_MEAN_RGB).view(3, 1, 1),
                              pixel_std=torch.tensor(TORCHVISION_STD_RGB).view(3, 1, 1))
    model = tiny_model()
    before = model.pixel_mean.clone()
    with pytest.raises(WeightsError, match=r"pixel_mean \[123\.675, 116\.28, 103\.53\].*pixel_std \[58\.395") as err:
        load_weights(model, path, allow_partial=allow_partial)
    assert "model_final.pth" in str(err.value) and "103.53, 116.28, 123.675" in str(err.value)
    assert torch.equal(model.pixel_mean, before)


def test_a_file_recording_detectrons_default_normalisation_loads(tmp_path):
    """Old Detectron2 files with the default Caffe BGR mean and unit std recorded: nothing to refuse."""
    path = write_training_pth(tmp_path / "model_final.pth", d2_state(),
                              pixel_mean=torch.tensor(CAFFE_MEAN_BGR).view(3, 1, 1),
                              pixel_std=torch.ones(3, 1, 1))
    model = tiny_model()
    assert load_weights(model, path).complete
    assert model.pixel_mean.flatten().tolist() == pytest.approx(CAFFE_MEAN_BGR[::-1])


# --- torchvision ImageNet ResNets and the stride's place --------------------------------------------
# torchvision's bottleneck downsamples in the 3x3 conv. Detectron2's configs default to
# STRIDE_IN_1X1: True (MSRA weights), so a config carried over with stride_in_1x1=true took a
# torchvision ResNet file silently and computed other features than the network it came from.
def _res5(body: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(body, name)(x)
    return x


@pytest.fixture(scope="module")
def torchvision_r50():
    return random_torchvision_r50(seed=1)


def test_a_torchvision_resnet_file_computes_torchvisions_features_whatever_the_config_stride(
        torchvision_r50, tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision_r50.state_dict(), path)
    model = tiny_model(depth=50, stride_in_1x1=True)
    report = load_weights(model, path)
    assert report.format == "torchvision resnet" and report.complete
    assert not model.backbone.stride_in_1x1
    assert any("stride_in_1x1=False" in n for n in report.notes)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_res5(model.backbone.body, x), _res5(torchvision_r50, x), rtol=1e-3, atol=1e-3)


def test_a_torchvision_weights_name_moves_the_stride_too(torchvision_r50, monkeypatch):
    state = torchvision_r50.state_dict()
    monkeypatch.setattr(torchvision.models.ResNet50_Weights, "get_state_dict", lambda self, **_: state)
    model = tiny_model(depth=50, stride_in_1x1=True)
    load_weights(model, "ResNet50_Weights.IMAGENET1K_V1")
    assert not model.backbone.stride_in_1x1


# --- what a checkpoint records after a Detectron2 initialisation ------------------------------------
# The Detectron2 import moves the stride to the 1x1 conv on the built model; the checkpoint recorded
# the config's model node (stride_in_1x1: false), so eval / predict / export rebuilt the trained
# model with the stride in the 3x3 conv and ran other features than training did, with exit 0.
R50_TINY = [
    "model=panoptic_fpn_r50", "model.channels_last=false", "model.backbone.out_channels=32",
    "model.semantic_head.conv_channels=32", "model.semantic_head.num_groups=8", "model.roi_heads.box_head.fc_dim=32",
    "model.roi_heads.mask_head.conv_dim=16", "model.roi_heads.sampling.batch_size_per_image=32",
    "model.rpn.limits.pre_nms_topk_train=50", "model.rpn.limits.post_nms_topk_train=20",
    "model.rpn.limits.pre_nms_topk_test=50", "model.rpn.limits.post_nms_topk_test=20",
    "data.train.num_images=2", "data.train.height=64", "data.train.width=64",
    "data.train.transforms.transforms.0.short_edge_lengths=[64]", "data.train.transforms.transforms.0.max_size=64",
    "data.val.num_images=1", "data.val.height=64", "data.val.width=64",
    "data.val.transforms.short_edge_lengths=[64]", "data.val.transforms.max_size=64",
    "data.batch_size=2", "data.num_workers=0", "solver=synthetic_sgd", "solver.max_iter=1",
    "solver.schedule.steps=[1]", "solver.schedule.warmup_iters=0", "train.eval_period=-1",
    "train.checkpoint_period=1", "train.progress_bar=false", "device=cpu",
]


def test_eval_rebuilds_a_model_fine_tuned_from_detectron2_weights_with_its_stride(tmp_path):
    from config_helpers import compose_config

    from panfpn.engine.inference_model import build_inference_model
    from panfpn.engine.train_run import train_from_config

    backbone = {k: v for k, v in d2_state(depth=50).items() if k.startswith("backbone.bottom_up.")}
    init = write_zoo_pkl(tmp_path / "R50-backbone.pkl", backbone)
    train_from_config(compose_config([*R50_TINY, f"weights={init}", "weights_partial=true"],
                                     output_dir=tmp_path / "run"))
    ckpt = tmp_path / "run" / "model_final.pth"
    built = build_inference_model(compose_config([*R50_TINY, f"weights={ckpt}"], output_dir=tmp_path / "eval"),
                                  overrides=[])
    assert built.model.backbone.stride_in_1x1
    # resuming the run (same command, resume=true, one more step) accepts the record it wrote
    resumed = train_from_config(compose_config([*R50_TINY, f"weights={init}", "weights_partial=true", "resume=true",
                                                "solver.max_iter=2"], output_dir=tmp_path / "run"))
    assert resumed["iteration"] == 2


# --- weights_partial in eval / predict -------------------------------------------------------------
# weights_partial=true (fine-tuning) left in a config made eval and predict run a checkpoint that
# lacks a head with that head random: a warning, then predictions and metrics with exit 0.
TINY_EVAL = ["data.val.num_images=1", "data.val.height=64", "data.val.width=64", "data.num_workers=0", "device=cpu"]


@pytest.mark.parametrize("drop", ["roi_heads.mask_head.", "backbone.body.layer4."])
def test_eval_and_predict_refuse_a_partial_load_even_with_weights_partial(tmp_path, drop):
    from config_helpers import compose_config

    from panfpn.engine.inference_model import build_inference_model
    from panfpn.modeling.build import instantiate_model

    cfg = compose_config([*TINY_EVAL, "weights_partial=true"], output_dir=tmp_path / "run")
    state = {k: v for k, v in instantiate_model(cfg).state_dict().items() if not k.startswith(drop)}
    torch.save(state, tmp_path / "no_head.pth")
    cfg.weights = str(tmp_path / "no_head.pth")
    with pytest.raises(WeightsError, match=rf"no_head\.pth.*not in the file \({drop}.*weights_partial"):
        build_inference_model(cfg, overrides=[])


def test_fine_tuning_from_a_checkpoint_takes_the_stride_it_records(tmp_path):
    """A checkpoint of a run initialised from Detectron2 weights records stride_in_1x1: true;
    training (and eval with model_from_checkpoint=false) builds the config's model, stride in the
    3x3 conv, and loaded its tensors into it silently."""
    trained = tiny_model(depth=50, stride_in_1x1=True)
    torch.save({"model": trained.state_dict(), "iteration": 10,
                "model_config": "backbone:\n  depth: 50\n  stride_in_1x1: true\n"}, tmp_path / "model_final.pth")
    model = tiny_model(depth=50, stride_in_1x1=False)
    report = load_weights(model, tmp_path / "model_final.pth")
    assert report.complete and model.backbone.stride_in_1x1
    assert any("stride_in_1x1=True" in n for n in report.notes)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_res5(model.backbone.body, x), _res5(trained.backbone.body, x))


# --- Detectron2's ImageNet backbone files ----------------------------------------------------------
# Detectron2 matches these by name heuristics (c2_model_loading.py). They were refused as "(detectron2)
# match nothing in the model", then refused naming what they are; now they load
# (test_detectron2_imagenet_weights.py checks the features), and a file that is not a whole ImageNet
# ResNet (a stub, a Detectron1 detection model) is refused naming the blobs.
def _caffe2_r50_names() -> dict[str, np.ndarray]:
    """The first block of the MSRA ImageNet R-50.pkl: a plain dict of Caffe2 blob names (no 'model', no
    'blobs'), the other blocks missing."""
    out = {"conv1_w": (64, 3, 7, 7), "res_conv1_bn_s": (64,), "res_conv1_bn_b": (64,),
           "fc1000_w": (1000, 2048), "fc1000_b": (1000,)}
    for branch, shape in (("branch2a", (64, 64, 1, 1)), ("branch2b", (64, 64, 3, 3)),
                          ("branch2c", (256, 64, 1, 1)), ("branch1", (256, 64, 1, 1))):
        out[f"res2_0_{branch}_w"] = shape
        out[f"res2_0_{branch}_bn_s"] = out[f"res2_0_{branch}_bn_b"] = (shape[0],)
    return {k: np.zeros(v, np.float32) for k, v in out.items()}


def _torchvision_converted_by_detectron2(net: torch.nn.Module) -> dict:
    """tools/convert-torchvision-to-d2.py's output: torchvision names renamed stem.* / resN.*."""
    out = {}
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0].startswith("layer"):
            name = f"res{int(parts[0][5:]) + 1}." + ".".join(parts[1:])
        else:
            name = "stem." + key
        for k in (1, 2, 3):
            name = name.replace(f"bn{k}.", f"conv{k}.norm.")
        name = name.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        out[name] = value.numpy()
    return {"model": out, "__author__": "torchvision", "matching_heuristics": True}


def _detectron1_model() -> dict:
    """A Detectron1 (Caffe2) model-zoo file: its blobs (with SGD momenta) under 'blobs', its config as text."""
    blobs = _caffe2_r50_names()
    blobs.update({f"{k}_momentum": v for k, v in list(blobs.items())[:3]})
    blobs["fpn_inner_res5_2_sum_w"] = np.zeros((256, 2048, 1, 1), np.float32)
    return {"blobs": blobs, "cfg": "MODEL:\n  TYPE: generalized_rcnn\n"}


@pytest.mark.parametrize("kind", ["caffe2", "converted torchvision", "detectron1"])
def test_detectron2_imagenet_backbone_files_load_or_name_what_is_wrong(tmp_path, kind, torchvision_r50):
    path = tmp_path / "R-50.pkl"
    content = {"caffe2": _caffe2_r50_names, "detectron1": _detectron1_model}.get(
        kind, lambda: _torchvision_converted_by_detectron2(torchvision_r50))()
    with open(path, "wb") as f:
        pickle.dump(content, f)
    model = tiny_model(depth=50, stride_in_1x1=True)
    if kind == "converted torchvision":
        report = load_weights(model, path)
        assert report.complete and not model.backbone.stride_in_1x1
        ours = model.backbone.body.state_dict()
        assert all(torch.equal(ours[k], v) for k, v in torchvision_r50.state_dict().items()
                   if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))
        return
    with pytest.raises(WeightsError) as err:
        load_weights(model, path, allow_partial=True)
    text = str(err.value)
    assert "R-50.pkl" in text
    assert ("fpn_inner_res5_2_sum_w" in text and "Detectron1" in text) if kind == "detectron1" else (
        "not in the file" in text and "res2_1_branch2a_w" in text)


# --- a model-zoo checkpoint of the other architecture ----------------------------------------------
# Both are Detectron2 .pkl files; given to the other model they matched nothing and the error listed
# hundreds of keys without saying which model the file is for.
def _mask2former_official_keys() -> dict[str, np.ndarray]:
    """A few entries of an official Mask2Former R50 checkpoint (Detectron2 ResNet as backbone.resN,
    MSDeformAttnPixelDecoder and the masked-attention decoder under sem_seg_head)."""
    shapes = {"backbone.stem.conv1.weight": (64, 3, 7, 7), "backbone.res2.0.conv1.weight": (64, 64, 1, 1),
              "sem_seg_head.pixel_decoder.mask_features.weight": (256, 256, 1, 1),
              "sem_seg_head.predictor.query_feat.weight": (100, 256),
              "sem_seg_head.predictor.class_embed.weight": (134, 256), "criterion.empty_weight": (134,)}
    return {k: np.zeros(v, np.float32) for k, v in shapes.items()}


def test_a_mask2former_checkpoint_given_to_panoptic_fpn_says_which_model_it_is_for(tmp_path):
    path = write_zoo_pkl(tmp_path / "model_final_94dc52.pkl", _mask2former_official_keys())
    with pytest.raises(WeightsError, match=r"model_final_94dc52\.pkl.*Mask2Former.*model=mask2former_"):
        load_weights(tiny_model(depth=50), path, allow_partial=True)


def test_a_panoptic_fpn_checkpoint_given_to_mask2former_says_which_model_it_is_for(tmp_path):
    from modeling_helpers import compose_model_config

    from panfpn.modeling.build import instantiate_model

    model = instantiate_model(compose_model_config("mask2former_small"))
    path = write_zoo_pkl(tmp_path / "model_final_c10459.pkl", d2_state())
    with pytest.raises(WeightsError, match=r"model_final_c10459\.pkl.*Panoptic FPN.*model=panoptic_fpn_"):
        load_weights(model, path, allow_partial=True)


# --- state dicts saved from a DistributedDataParallel wrapper --------------------------------------
# fvcore's Checkpointer (Detectron2) strips a "module." prefix on every key; here such a file
# matched nothing, reported as a panfpn checkpoint whatever it held.
def test_a_state_dict_saved_through_ddp_loads_like_the_unwrapped_one(tmp_path):
    state = d2_state()
    plain = tiny_model()
    load_weights(plain, write_training_pth(tmp_path / "plain.pth", state))
    torch.save({"model": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}}, tmp_path / "ddp.pth")
    wrapped = tiny_model()
    report = load_weights(wrapped, tmp_path / "ddp.pth")
    assert report.format == "detectron2" and report.complete
    for key, value in plain.state_dict().items():
        assert torch.equal(value, wrapped.state_dict()[key]), key
