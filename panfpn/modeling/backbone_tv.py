"""Any torchvision classification model as an FPN backbone (ResNeXt, RegNet, ConvNeXt, Swin, MobileNetV3 ...).

The stride 4/8/16/32 stage outputs are taken with torchvision's feature extraction utilities
(``create_feature_extractor``), fed to torchvision's FeaturePyramidNetwork, and P6 is max-pooled
from P5, exactly as :class:`~panfpn.modeling.backbone.ResNetFPN` does, so the heads work unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from panfpn.modeling.backbone import FPN_STRIDES
from panfpn.modeling.swin_windows import build_swin

TvNorm = Literal["frozen_bn", "bn", "native"]
_LEVELS = ("p2", "p3", "p4", "p5")
_PROBE_HW = (64, 96)  # unequal sides tell NCHW from NHWC outputs in the probe forward
# Families without a ``features`` Sequential: (stem parameter prefixes, stage module names).
_FAMILIES = {
    "resnet": (("conv1", "bn1"), ("layer1", "layer2", "layer3", "layer4")),
    "resnext": (("conv1", "bn1"), ("layer1", "layer2", "layer3", "layer4")),
    "wide_resnet": (("conv1", "bn1"), ("layer1", "layer2", "layer3", "layer4")),
    "regnet": (("stem",), tuple(f"trunk_output.block{i}" for i in range(1, 5))),
}
_LAYER_NORM_FAMILIES = ("convnext", "swin")
# Architectures built from their torchvision class with the config's arguments (model.backbone.arch),
# for variants torchvision has no builder for (Swin-L; Swin-B with 12x12 windows).
_ARCH_BUILDERS: dict[str, Callable[..., nn.Module]] = {"swin": build_swin}


def _family(name: str) -> str | None:
    return next((f for f in (*_FAMILIES, *_LAYER_NORM_FAMILIES) if name.startswith(f)), None)


def _build_arch(name: str, norm: TvNorm, arch: Mapping[str, Any]) -> nn.Module:
    """The model ``name`` built by its ``_ARCH_BUILDERS`` entry with the arguments ``arch``."""
    if name not in _ARCH_BUILDERS:
        raise ValueError(f"model.backbone.arch is for model.backbone.name in {sorted(_ARCH_BUILDERS)}, "
                         f"got name={name!r}; torchvision builders take no arch (set model.backbone.arch=null)")
    if norm != "native":
        raise ValueError(f"model.backbone.norm={norm!r} does not fit {name} (LayerNorm network): use "
                         "model.backbone.norm=native")
    build = _ARCH_BUILDERS[name]
    kwargs = {k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in arch.items()}
    try:
        return build(**kwargs)
    except TypeError as err:
        raise ValueError(f"model.backbone.arch={dict(arch)} does not fit {name} ({build.__name__}): {err}") from err


def _build_classifier(name: str, norm: TvNorm, arch: Mapping[str, Any] | None = None) -> nn.Module:
    """The torchvision model ``name`` with random weights and the norm layer ``norm`` asks for
    (``arch``: the arguments of its builder, for the names in ``_ARCH_BUILDERS``)."""
    if arch is not None:
        return _build_arch(name, norm, arch)
    builder = getattr(torchvision.models, name, None)
    if builder is None or name not in torchvision.models.list_models(torchvision.models):
        raise ValueError(f"model.backbone.name={name!r} is not a torchvision classification model; "
                         f"e.g. {', '.join(sorted(torchvision.models.list_models(torchvision.models))[:8])} ...")
    if norm == "native":
        return builder(weights=None)
    if name.startswith(_LAYER_NORM_FAMILIES):
        raise ValueError(f"model.backbone.norm={norm!r} does not fit {name} (LayerNorm network): use "
                         "model.backbone.norm=native")
    if norm == "bn":
        return builder(weights=None)
    if norm != "frozen_bn":
        raise ValueError(f"model.backbone.norm must be 'frozen_bn', 'bn' or 'native', got {norm!r}")
    # MobileNetV3 / EfficientNet use BN eps 1e-3: keep the eps the pretrained statistics were made with.
    eps = 1e-3 if name.startswith(("mobilenet_v3", "efficientnet", "mnasnet")) else 1e-5
    try:
        return builder(weights=None, norm_layer=partial(FrozenBatchNorm2d, eps=eps))
    except TypeError as err:
        raise ValueError(f"{name} takes no norm_layer, so model.backbone.norm=frozen_bn cannot be applied; "
                         "use model.backbone.norm=bn or native") from err


def _probe(module: nn.Module, shape: tuple[int, int]) -> list[tuple[str, tuple[int, ...]]]:
    """(child name, output shape) for each child of a Sequential on a dummy input."""
    x = torch.zeros(1, 3, *shape)
    out = []
    with torch.no_grad():
        for name, child in module.named_children():
            x = child(x)
            out.append((name, tuple(x.shape)))
    return out


def _layout(shape: tuple[int, ...], hw: tuple[int, int], stride: int) -> str | None:
    h, w = hw[0] // stride, hw[1] // stride
    if len(shape) == 4 and shape[2:] == (h, w):
        return "nchw"
    if len(shape) == 4 and shape[1:3] == (h, w):
        return "nhwc"
    return None


def find_return_nodes(model: nn.Module, name: str) -> tuple[list[str], list[tuple[str, ...]]]:
    """Return nodes for strides 4..32 and the five freeze groups (stem, stage 1..4) as parameter
    prefixes; ``features`` models (ConvNeXt, Swin, MobileNet ...) are probed child by child."""
    family = _family(name)
    if family in _FAMILIES:
        stem, stages = _FAMILIES[family]
        return list(stages), [stem, *((s,) for s in stages)]
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ValueError(f"model.backbone.name={name}: no known stage layout and no 'features' Sequential; "
                         "give model.backbone.return_nodes (4 node names at strides 4, 8, 16, 32)")
    was_training = features.training
    features.eval()
    probed = _probe(features, _PROBE_HW)
    features.train(was_training)
    nodes = []
    for stride in FPN_STRIDES[:4]:
        hits = [n for n, s in probed if _layout(s, _PROBE_HW, stride)]
        if not hits:
            raise ValueError(f"model.backbone.name={name}: no stage of 'features' gives stride {stride}; "
                             f"output shapes on a {_PROBE_HW} input: {probed}")
        nodes.append(f"features.{hits[-1]}")
    idx = [int(n.split(".")[1]) for n in nodes]
    bounds = [0, *idx]
    groups = [("features.0",)] + [tuple(f"features.{i}" for i in range(max(lo + 1, 1), hi + 1))
                                  for lo, hi in zip(bounds[:-1], bounds[1:])]
    return nodes, groups


class TorchvisionFPN(nn.Module):
    """A torchvision classification model's stride 4/8/16/32 features -> FPN -> P2..P6.

    Output: ``OrderedDict`` ``{"p2": [B, C, H/4, W/4], ..., "p6": [B, C, H/64, W/64]}``, C = ``out_channels``,
    as :class:`~panfpn.modeling.backbone.ResNetFPN`. Parameter names: ``body.*`` are the torchvision
    model's own names (the classifier head is dropped; its keys are in ``unused_source_keys``), so
    a torchvision state dict loads into ``body`` unchanged; ``fpn.*`` are FeaturePyramidNetwork's.
    """

    stride_in_1x1 = False  # read by the weights loader; a ResNetFPN-only option
    depth = 0              # not a ResNet depth: the Detectron2 ResNet conventions never apply

    def __init__(self, name: str = "convnext_tiny", *, norm: TvNorm = "frozen_bn", freeze_at: int = 2,
                 out_channels: int = 256, return_nodes: Sequence[str] | None = None,
                 depth: None = None, stride_in_1x1: bool | None = None,
                 arch: Mapping[str, Any] | None = None) -> None:
        """
        Args:
            name: torchvision model builder name (``convnext_tiny``, ``swin_t``, ``regnet_y_3_2gf``,
                ``resnext101_32x8d``, ``mobilenet_v3_large`` ...).
            norm: 'frozen_bn' (BN nets with pretrained weights: FrozenBatchNorm2d), 'bn' (trainable BN)
                or 'native' (the model as torchvision builds it; the only choice for ConvNeXt / Swin).
            freeze_at: 0 freezes nothing, 1 the stem, 2 stem + stride-4 stage, ... 5 the whole body.
            out_channels: FPN width.
            return_nodes: 4 node names at strides 4, 8, 16, 32 for models this module does not know.
            depth, stride_in_1x1: ResNetFPN keys that configs built on panoptic_fpn_r50.yaml inherit
                (hydra merges, it cannot delete keys): must be null here.
            arch: the arguments of the model's torchvision class instead of a builder, for variants
                without one: ``name=swin`` with ``embed_dim``, ``depths``, ``num_heads``,
                ``window_size``, ``stochastic_depth_prob``, ``always_shift``
                (:func:`~panfpn.modeling.swin_windows.build_swin`: torchvision ``SwinTransformer``).
        """
        super().__init__()
        for key, value in (("depth", depth), ("stride_in_1x1", stride_in_1x1)):
            if value is not None:
                raise ValueError(f"model.backbone.{key}={value!r} is a ResNetFPN option; TorchvisionFPN "
                                 f"({name}) takes the model by name: set model.backbone.{key}=null")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"model.backbone.freeze_at must be in 0..5, got {freeze_at}")
        model = _build_classifier(name, norm, arch)
        if return_nodes is None:
            nodes, groups = find_return_nodes(model, name)
        elif len(return_nodes) != 4 or freeze_at:
            raise ValueError(f"model.backbone.return_nodes needs 4 names (strides 4..32) and freeze_at=0 "
                             f"(the stages to freeze are unknown); got {return_nodes}, freeze_at={freeze_at}")
        else:
            nodes, groups = list(return_nodes), []
        self.name, self.freeze_at = name, freeze_at
        self.body = create_feature_extractor(model, {n: lvl for n, lvl in zip(nodes, _LEVELS)})
        kept = set(self.body.state_dict())
        self.unused_source_keys = frozenset(k for k in model.state_dict() if k not in kept)
        in_channels, self.nhwc = self._probe_levels()
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self._frozen_prefixes = tuple(p for group in groups[:freeze_at] for p in group)
        for pname, param in self.body.named_parameters():
            if _under(pname, self._frozen_prefixes):
                param.requires_grad_(False)
        self.train(self.training)

    def _probe_levels(self) -> tuple[list[int], bool]:
        """Each level's channel count and whether the levels are NHWC (Swin), read from a dummy
        forward (eval mode: BN statistics untouched); each level must have its stride."""
        was_training = self.body.training
        self.body.eval()
        with torch.no_grad():
            out = self.body(torch.zeros(1, 3, *_PROBE_HW))
        self.body.train(was_training)
        shapes = [tuple(out[k].shape) for k in _LEVELS]
        layouts = [_layout(shape, _PROBE_HW, stride) for shape, stride in zip(shapes, FPN_STRIDES)]
        if None in layouts or len(set(layouts)) != 1:
            raise ValueError(f"model.backbone ({self.name}): the 4 return nodes must give strides 4, 8, 16, 32 "
                             f"in one layout; on a {_PROBE_HW} input they give {shapes}")
        nhwc = layouts[0] == "nhwc"
        return [shape[3] if nhwc else shape[1] for shape in shapes], nhwc

    def _features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        out = self.body(x)
        if self.nhwc:  # Swin's stages are [B, H, W, C]
            return OrderedDict((k, out[k].permute(0, 3, 1, 2)) for k in _LEVELS)
        return OrderedDict((k, out[k]) for k in _LEVELS)

    def train(self, mode: bool = True) -> "TorchvisionFPN":
        super().train(mode)
        # Trainable BN inside a frozen stage keeps its statistics too.
        for mname, m in self.body.named_modules():
            if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)) and _under(mname, self._frozen_prefixes):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        out = self.fpn(self._features(x))
        return OrderedDict(zip(("p2", "p3", "p4", "p5", "p6"), out.values()))


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    """``name`` is one of ``prefixes`` or inside one (``features.1`` is not inside ``features.10``)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)
