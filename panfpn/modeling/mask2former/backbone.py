"""A Panoptic FPN backbone's body alone: its stride 4/8/16/32 features (C2..C5), without the FPN.

Mask2Former builds its own multi-scale features (the pixel decoder), so it takes the body of the
same backbone classes Panoptic FPN uses (:class:`~panfpn.modeling.backbone.ResNetFPN`, any
:class:`~panfpn.modeling.backbone_tv.TorchvisionFPN`): same construction options (depth / name,
norm, freeze_at), same ``body.*`` parameter names, so ImageNet weights load the same way.
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
            (:class:`TorchvisionFPN`); other keyword arguments go to that class (its FPN is dropped).
    """

    stride_in_1x1 = False  # the weights loader reads it; torchvision bottleneck layout

    def __init__(self, name: str = "resnet", **kwargs: Any) -> None:
        super().__init__()
        source: nn.Module = ResNetFPN(**kwargs) if name == "resnet" else TorchvisionFPN(name, **kwargs)
        self.out_channels = [block[0].in_channels for block in source.fpn.inner_blocks]
        del source.fpn
        self.body = source.body
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
