"""TorchvisionFPN: each shipped torchvision backbone config builds, runs forward/backward on tiny
inputs, loads its torchvision state dict from a local file, trains one step, and exports."""

import math
import warnings

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from panfpn.modeling.backbone_tv import TorchvisionFPN
from panfpn.modeling.build import build_model
from panfpn.modeling.panoptic_fpn import LOSS_KEYS
from panfpn.modeling.weights import WeightsError, load_weights

from modeling_helpers import check_panoptic, compose_model_config, make_batch

# config name -> (torchvision builder, family norm: "bn" or "ln")
SHIPPED = {
    "panoptic_fpn_mobilenet_v3_large": ("mobilenet_v3_large", "bn"),
    "panoptic_fpn_regnety_3_2gf": ("regnet_y_3_2gf", "bn"),
    "panoptic_fpn_convnext_t": ("convnext_tiny", "ln"),
    "panoptic_fpn_swin_t": ("swin_t", "ln"),
    "panoptic_fpn_resnext101_32x8d": ("resnext101_32x8d", "bn"),
}
CHEAP = ("panoptic_fpn_mobilenet_v3_large", "panoptic_fpn_regnety_3_2gf")
EVAL_ALL = ("model.merge.score_thresh=0.0", "model.roi_heads.box_head.test.score_thresh=0.0",
            "model.merge.stuff_area=8", "model.roi_heads.box_head.test.detections_per_image=20",
            "model.roi_heads.sampling.batch_size_per_image=64", "model.rpn.limits.pre_nms_topk_train=200",
            "model.rpn.limits.post_nms_topk_train=100", "model.rpn.limits.pre_nms_topk_test=100",
            "model.rpn.limits.post_nms_topk_test=50")


def _backbone(config: str, *overrides: str) -> TorchvisionFPN:
    cfg = compose_model_config(config, "synthetic", overrides)
    torch.manual_seed(0)
    return instantiate(cfg.model.backbone, _convert_="all")


@pytest.mark.parametrize("config", sorted(SHIPPED))
def test_backbone_levels_norms_and_frozen_stem(config):
    name, family = SHIPPED[config]
    backbone = _backbone(config)
    assert backbone.name == name and backbone.out_channels == 256
    # FPN input widths are the model's own stage widths, read from the model, not a table.
    stage_widths = [b[0].in_channels for b in backbone.fpn.inner_blocks]
    x = torch.randn(2, 3, 64, 96)
    feats = backbone.body(x)
    got = [f.shape[-1] if backbone.nhwc else f.shape[1] for f in feats.values()]
    assert stage_widths == got and len(set(stage_widths)) == 4
    backbone.train()
    out = backbone(x.contiguous(memory_format=torch.channels_last))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for (key, f), stride in zip(out.items(), (4, 8, 16, 32, 64)):
        assert tuple(f.shape) == (2, 256, math.ceil(64 / stride), math.ceil(96 / stride)), key
    sum(f.float().square().mean() for f in out.values()).backward()
    norms = {type(m) for m in backbone.body.modules()}
    if family == "bn":  # frozen BN throughout, no trainable BN left
        assert FrozenBatchNorm2d in norms and nn.BatchNorm2d not in norms
    else:  # LayerNorm nets are left as torchvision builds them
        assert FrozenBatchNorm2d not in norms and any(issubclass(t, nn.LayerNorm) for t in norms)
    params = dict(backbone.body.named_parameters())
    first = next(iter(params))  # the stem's first weight: frozen at freeze_at=2
    assert not params[first].requires_grad and params[first].grad is None
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert trainable and all(params[n].grad is not None for n in trainable[-3:])
    assert backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0


def test_freeze_groups_follow_the_stages_not_name_prefixes():
    """MobileNetV3: freeze_at=2 freezes features.0..3 (stem + the stride-4 stage), not features.10+."""
    backbone = _backbone("panoptic_fpn_mobilenet_v3_large")
    frozen = {n.split(".")[1] for n, p in backbone.body.named_parameters() if not p.requires_grad}
    assert frozen == {"0", "1", "2", "3"}
    none = _backbone("panoptic_fpn_mobilenet_v3_large", "model.backbone.freeze_at=0")
    assert all(p.requires_grad for p in none.body.parameters())


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="model.backbone.norm='frozen_bn'.*convnext_tiny"):
        TorchvisionFPN("convnext_tiny", norm="frozen_bn")
    with pytest.raises(ValueError, match="model.backbone.depth=50"):
        TorchvisionFPN("mobilenet_v3_large", depth=50)
    with pytest.raises(ValueError, match="model.backbone.name='resnet_nonexistent'"):
        TorchvisionFPN("resnet_nonexistent")


def _full_model(config: str, *overrides: str):
    cfg = compose_model_config(config, "synthetic", (*overrides, *EVAL_ALL))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without weights
        return build_model(cfg), cfg


@pytest.mark.parametrize("config", [
    "panoptic_fpn_mobilenet_v3_large", "panoptic_fpn_regnety_3_2gf", "panoptic_fpn_convnext_t",
    "panoptic_fpn_swin_t",
    pytest.param("panoptic_fpn_resnext101_32x8d", marks=pytest.mark.slow)])  # a 350 MB file
def test_loads_its_torchvision_state_dict_from_a_local_file(config, tmp_path):
    name, _ = SHIPPED[config]
    torch.manual_seed(1)
    state = getattr(torchvision.models, name)().state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    model, _ = _full_model(config)
    report = load_weights(model, path)
    # ResNe(X)t state dicts take the ResNet path (same torchvision names), the others the general one
    assert report.format in ("torchvision imagenet", "torchvision resnet") and report.complete, str(report)
    ours = model.state_dict()
    body = [k for k in ours if k.startswith("backbone.body.") and not k.endswith("num_batches_tracked")]
    assert body and all(torch.equal(ours[k], state[k[len("backbone.body."):]]) for k in body)
    # the classifier head is the only thing left out (frozen BN keeps no batch counter)
    left = {k for k in state if f"backbone.body.{k}" not in ours and not k.endswith("num_batches_tracked")}
    assert left == set(model.backbone.unused_source_keys) and left


def test_another_models_state_dict_is_refused(tmp_path):
    path = tmp_path / "regnet.pth"
    torch.save(torchvision.models.regnet_y_400mf().state_dict(), path)
    model, _ = _full_model("panoptic_fpn_regnety_3_2gf")
    before = model.state_dict()["backbone.body.stem.0.weight"].clone()
    with pytest.raises(WeightsError, match=r"\(torchvision imagenet\) do not fit.*another shape"):
        load_weights(model, path)
    assert torch.equal(model.state_dict()["backbone.body.stem.0.weight"], before)


@pytest.mark.parametrize("config", [*CHEAP, "panoptic_fpn_convnext_t", "panoptic_fpn_swin_t",
                                    pytest.param("panoptic_fpn_resnext101_32x8d", marks=pytest.mark.slow)])
def test_one_training_step_and_eval_contract(config):
    norm = "bn" if SHIPPED[config][1] == "bn" else "native"  # LayerNorm families stay as built
    model, cfg = _full_model(config, f"model.backbone.norm={norm}")
    d = cfg.data
    batch = make_batch([(64, 96), (60, 80)], [(64, 96), (60, 80)],
                       num_things=d.num_thing_classes, num_sem=d.num_sem_classes)
    model.train()
    losses = model(batch)
    assert set(losses) == set(LOSS_KEYS) and all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    trainable = [p for p in model.backbone.body.parameters() if p.requires_grad]
    # the earliest trainable parameter gets a gradient: it flowed back through every later stage
    assert trainable and trainable[0].grad is not None and trainable[0].grad.abs().sum() > 0
    model.eval()
    orig = [(100, 150), (60, 70)]
    batch = make_batch([(64, 96), (60, 70)], orig, num_things=d.num_thing_classes,
                       num_sem=d.num_sem_classes, seed=1)
    with torch.no_grad():
        results = model(batch)
    thing_sem = list(OmegaConf.to_container(d.thing_sem_labels))
    for result, size in zip(results, orig):
        check_panoptic(result, size, num_things=d.num_thing_classes, num_sem=d.num_sem_classes,
                       thing_sem_labels=thing_sem)


# Swin-T: fixed-size export only (its window padding guards the input size; see docs/models.md Backbones)
@pytest.mark.parametrize("config", [*CHEAP, "panoptic_fpn_swin_t"])
def test_torch_export_of_the_backbone_matches_eager(config):
    backbone = _backbone(config).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        program = torch.export.export(backbone, (x,))
        got, want = program.module()(x), backbone(x)
    assert list(got) == list(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-4)


def test_weights_enum_name_loads_the_body_without_the_classifier(monkeypatch):
    """``weights=MobileNet_V3_Large_Weights.IMAGENET1K_V1``: torchvision's file (faked here, no
    network) loads completely into the body; its classifier head is dropped, not refused."""
    torch.manual_seed(2)
    state = torchvision.models.mobilenet_v3_large().state_dict()
    enum = torchvision.models.MobileNet_V3_Large_Weights
    monkeypatch.setattr(enum, "get_state_dict", lambda self, *a, **k: state)
    model, _ = _full_model("panoptic_fpn_mobilenet_v3_large")
    report = load_weights(model, "MobileNet_V3_Large_Weights.IMAGENET1K_V1")
    assert report.format == "torchvision imagenet" and report.complete, str(report)
    assert torch.equal(model.state_dict()["backbone.body.features.16.0.weight"], state["features.16.0.weight"])


def test_return_nodes_are_checked_for_their_strides():
    """Explicit return nodes: accepted at strides 4..32 (with freeze_at=0), refused otherwise."""
    nodes = ["features.3", "features.6", "features.12", "features.16"]
    ok = TorchvisionFPN("mobilenet_v3_large", norm="bn", freeze_at=0, return_nodes=nodes)
    assert [b[0].in_channels for b in ok.fpn.inner_blocks] == [24, 40, 112, 960]
    with pytest.raises(ValueError, match="strides 4, 8, 16, 32"):
        TorchvisionFPN("mobilenet_v3_large", norm="bn", freeze_at=0,
                       return_nodes=["features.1", "features.6", "features.12", "features.16"])
    with pytest.raises(ValueError, match="freeze_at=0"):
        TorchvisionFPN("mobilenet_v3_large", return_nodes=nodes)
