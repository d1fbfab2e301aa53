"""Semantic FPN head (Panoptic FPN paper, section 3): all levels to stride 4, summed, classified."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from panfpn.modeling.backbone import FPN_STRIDES


class ConvGNReLU(nn.Module):
    """conv3x3 (no bias: the norm has one) + GroupNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, num_groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(num_groups, out_channels)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class SemanticFPNHead(nn.Module):
    """Semantic segmentation from FPN levels P2..P5.

    Each level of stride s gets ``max(1, log2(s) - 2)`` stages of ConvGNReLU, each followed by
    x2 bilinear upsampling (except at stride 4); the levels are summed, classified by a 1x1 conv
    and upsampled x4 to input resolution.

    ``forward(features)``: ``features`` maps ``"p2".."p5"`` to ``[B, in_channels, H/s, W/s]``;
    returns logits ``[B, num_classes, H, W]``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 256,
        conv_channels: int = 128,
        num_groups: int = 32,
        feature_strides: Sequence[int] = FPN_STRIDES[:4],
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.in_features = [f"p{int(math.log2(s))}" for s in feature_strides]
        self.common_stride = int(feature_strides[0])
        self.ignore_index = ignore_index
        levels = []
        for stride in feature_strides:
            n = max(1, int(math.log2(stride) - math.log2(self.common_stride)))
            stages = [ConvGNReLU(in_channels if k == 0 else conv_channels, conv_channels,
                                 num_groups=num_groups) for k in range(n)]
            levels.append(nn.Sequential(*stages))
        self.levels = nn.ModuleList(levels)
        self._upsample = [stride != self.common_stride for stride in feature_strides]
        self.predictor = nn.Conv2d(conv_channels, num_classes, 1)
        # Small init: logits start near 0, so the first loss is about log(num_classes).
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = None
        for name, level, upsample in zip(self.in_features, self.levels, self._upsample):
            x = features[name]
            for stage in level:
                x = stage(x)
                if upsample:
                    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        logits = self.predictor(out)
        return F.interpolate(logits, scale_factor=float(self.common_stride), mode="bilinear",
                             align_corners=False)

    def loss(self, logits: torch.Tensor, sem_seg: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, mean over non-ignored pixels. ``sem_seg``: int64 ``[B, H, W]``, 255 = ignore."""
        if sem_seg.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"sem_seg has size {tuple(sem_seg.shape[-2:])} but the semantic logits "
                             f"have {tuple(logits.shape[-2:])}; pad sem_seg like the images")
        # Sum / clamped count instead of 'mean': an all-ignore batch gives 0, not 0/0 = NaN.
        total = F.cross_entropy(logits.float(), sem_seg, ignore_index=self.ignore_index, reduction="sum")
        return total / (sem_seg != self.ignore_index).sum().clamp(min=1)
