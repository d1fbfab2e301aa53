"""ResNet + FPN backbone: torchvision ResNet body, torchvision FPN, P6 by max-pooling P5."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Literal

import torch
import torchvision
from torch import nn
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

Norm = Literal["frozen_bn", "bn", "gn"]
FPN_STRIDES = (4, 8, 16, 32, 64)  # P2..P6: the strides every head's defaults assume
_DEPTHS = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101"}
_STAGES = ("layer1", "layer2", "layer3", "layer4")  # res2..res5


def _norm_layer(norm: Norm) -> Callable[[int], nn.Module]:
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        # 32 groups as in the GN paper; every ResNet width (64..2048) is divisible by 32.
        return lambda channels: nn.GroupNorm(32, channels)
    raise ValueError(f"backbone norm must be 'frozen_bn', 'bn' or 'gn', got {norm!r}")


class ResNetFPN(nn.Module):
    """ResNet body (res2..res5) followed by an FPN giving P2..P6.

    Input: float images ``[B, 3, H, W]`` (already normalised), H and W multiples of 32.
    Output: ``OrderedDict`` ``{"p2": [B, C, H/4, W/4], ..., "p6": [B, C, H/64, W/64]}``, C = ``out_channels``.

    Parameter names: ``body.*`` are exactly torchvision's ResNet names (``conv1``, ``bn1``,
    ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...) so a torchvision ResNet state dict loads
    into ``body`` unchanged; ``fpn.*`` are torchvision's FeaturePyramidNetwork names.
    """

    def __init__(
        self,
        depth: int = 50,
        *,
        norm: Norm = "frozen_bn",
        freeze_at: int = 2,
        stride_in_1x1: bool = False,
        out_channels: int = 256,
    ) -> None:
        """
        Args:
            depth: ResNet depth, one of 18, 34, 50, 101.
            norm: 'frozen_bn' (for pretrained weights), 'bn' (trainable) or 'gn' (from scratch).
            freeze_at: 0 freezes nothing, 1 the stem, 2 stem + res2, ... 5 the whole body.
            stride_in_1x1: put each stage's downsampling stride on the first 1x1 conv of the
                bottleneck (MSRA / Detectron2 weights) instead of the 3x3 (torchvision weights).
            out_channels: FPN width.

        ImageNet weights come through the top-level ``weights`` config key
        (:func:`panfpn.modeling.weights.load_weights`), the one way to give weights.
        """
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        builder = getattr(torchvision.models, _DEPTHS[depth])
        body = builder(weights=None, norm_layer=_norm_layer(norm))
        # The classifier is not part of a detection backbone (and would inflate the parameter count).
        del body.fc, body.avgpool
        self.body = body
        self.depth = depth
        self.freeze_at = freeze_at
        self._stride_in_1x1 = False
        self.stride_in_1x1 = stride_in_1x1

        widths = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
        self.fpn = FeaturePyramidNetwork(widths, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self._freeze(freeze_at)

    @property
    def stride_in_1x1(self) -> bool:
        """Whether stage strides sit on the bottleneck's 1x1 conv (MSRA/Detectron2 layout)."""
        return self._stride_in_1x1

    @stride_in_1x1.setter
    def stride_in_1x1(self, value: bool) -> None:
        # Moving the stride changes no parameter, only which conv downsamples, so imported
        # Detectron2 weights can switch it on an already-built model.
        if self.depth < 50:
            if value:
                raise ValueError("stride_in_1x1 applies to bottleneck ResNets (depth >= 50) only")
            return
        for name in _STAGES[1:]:
            block = getattr(self.body, name)[0]
            stride = max(block.conv1.stride[0], block.conv2.stride[0])
            block.conv1.stride = (stride, stride) if value else (1, 1)
            block.conv2.stride = (1, 1) if value else (stride, stride)
        self._stride_in_1x1 = bool(value)

    def _freeze(self, freeze_at: int) -> None:
        groups = [("conv1", "bn1"), *((name,) for name in _STAGES)]
        # Names, not module references: SyncBatchNorm conversion replaces the BN modules.
        self._frozen_names = [name for group in groups[:freeze_at] for name in group]
        for name in self._frozen_names:
            for p in getattr(self.body, name).parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ResNetFPN":
        super().train(mode)
        # Trainable BN inside a frozen stage must also keep its statistics.
        for name in self._frozen_names:
            for m in getattr(self.body, name).modules():
                if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        feats: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, name in enumerate(_STAGES):
            x = getattr(b, name)(x)
            feats[f"p{i + 2}"] = x
        out = self.fpn(feats)
        return OrderedDict(zip(("p2", "p3", "p4", "p5", "p6"), out.values()))
