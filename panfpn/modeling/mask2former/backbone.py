"""A Panoptic FPN backbone's body alone: its stride 4/8/16/32 features (C2..C5), without the FPN.

Mask2Former builds its own multi-scale features (the pixel decoder), so it takes the body of the
same backbone classes Panoptic FPN uses (:class:`~panfpn.modeling.backbone.ResNetFPN`, any
:class:`~panfpn.modeling.backbone_tv.TorchvisionFPN`): same construction options (depth / name,
norm, freeze_at), same ``body.*`` parameter names, so ImageNet weights load the same way.
``out_norms=True`` adds a LayerNorm on each output (``out_norms.{0..3}``), as the official
Mask2Former Swin backbone (``D2SwinTransformer``'s ``norm0..norm3``) has and torchvision's Swin lacks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from panfpn.modeling.backbone import ResNetFPN
from panfpn.modeling.backbone_tv import TorchvisionFPN


class BackboneBody(nn.Module):
    """``forward(x)`` -> ``[c2, c3, c4, c5]`` (strides 4, 8, 16, 32); ``out_channels``: their widths.

    Args:
        name: ``resnet`` (:class:`ResNetFPN`, with ``depth``) or a torchvision model name
            (:class:`TorchvisionFPN`; ``swin`` with ``arch``); other keyword arguments go to that
            class (its FPN is dropped).
        out_norms: a LayerNorm over the channels of each output (eps 1e-5), trained with the body.
    """

    stride_in_1x1 = False  # the weights loader reads it; torchvision bottleneck layout

    def __init__(self, name: str = "resnet", *, out_norms: bool = False, **kwargs: Any) -> None:
        super().__init__()
        source: nn.Module = ResNetFPN(**kwargs) if name == "resnet" else TorchvisionFPN(name, **kwargs)
        self.out_channels = [block[0].in_channels for block in source.fpn.inner_blocks]
        del source.fpn
        self.body = source.body
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.out_channels) if out_norms else None
        self.depth = getattr(source, "depth", 0)
        self.unused_source_keys = getattr(source, "unused_source_keys", frozenset())
        self._source = (source,)  # not a child: its freezing rules (train()) and feature code are reused
        self.train(self.training)

    def train(self, mode: bool = True) -> "BackboneBody":
        super().train(mode)
        if hasattr(self, "_source"):
            self._source[0].train(mode)  # keeps BN of frozen stages in eval mode
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self._body_features(x)
        if self.out_norms is None:
            return feats
        return [norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for norm, f in zip(self.out_norms, feats)]

    def _body_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        source = self._source[0]
        if isinstance(source, TorchvisionFPN):
            return list(source._features(x).values())
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        feats = []
        for stage in (b.layer1, b.layer2, b.layer3, b.layer4):
            x = stage(x)
            feats.append(x)
        return feats
