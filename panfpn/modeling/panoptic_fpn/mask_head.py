"""Mask head: RoIAlign 14x14, conv stack, 2x deconv to 28x28, one mask per thing class."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from panfpn.modeling.backbone import FPN_STRIDES
from panfpn.modeling.panoptic_fpn.roi_ops import MultiLevelRoIAlign


class MaskHead(nn.Module):
    """Predicts a ``2 * pooler_resolution`` square mask logit per RoI and thing class.

    ``forward(features, boxes)``: ``features`` ``{"p2".."p5"}``; ``boxes`` per image ``[Ni, 4]``
    XYXY input pixels. Returns logits ``[R, K, M, M]``, M = 2 * ``pooler_resolution``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 256,
        pooler_resolution: int = 14,
        conv_dim: int = 256,
        num_convs: int = 4,
        feature_strides: Sequence[int] = FPN_STRIDES[:4],
    ) -> None:
        super().__init__()
        self.pooler = MultiLevelRoIAlign(pooler_resolution, feature_strides=feature_strides)
        self.mask_size = 2 * pooler_resolution
        layers: list[nn.Module] = []
        dim = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(dim, conv_dim, 3, padding=1), nn.ReLU(inplace=True)]
            dim = conv_dim
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(dim, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)
        for m in [*self.convs, self.deconv]:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # A small init keeps the initial masks near 0.5 so early BCE gradients are balanced.
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Mapping[str, torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.convs(self.pooler(features, boxes))
        return self.predictor(F.relu(self.deconv(x)))

    def targets(self, gt_masks: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                matched_idxs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Crop-and-resize each RoI's matched GT mask to ``[R, M, M]`` {0, 1} float.

        ``gt_masks`` per image uint8 ``[Gi, H, W]``; ``proposals`` per image ``[Ri, 4]``;
        ``matched_idxs`` per image int64 ``[Ri]`` indices into that image's ``gt_masks``.
        """
        out = []
        for masks, boxes, idx in zip(gt_masks, proposals, matched_idxs):
            if len(boxes) == 0:
                continue
            rois = torch.cat([idx[:, None].to(boxes.dtype), boxes], dim=1)
            # aligned=True samples at pixel centres, matching how the features were pooled.
            crop = roi_align(masks[:, None].to(boxes.dtype), rois, self.mask_size,
                             spatial_scale=1.0, sampling_ratio=0, aligned=True)
            out.append((crop[:, 0] >= 0.5).to(boxes.dtype))
        if not out:
            return torch.zeros((0, self.mask_size, self.mask_size), device=proposals[0].device)
        return torch.cat(out)

    def loss(self, mask_logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """BCE on the GT class's mask. ``mask_logits [R, K, M, M]``, ``labels [R]``, ``targets [R, M, M]``."""
        if len(labels) == 0:
            # Keep the head in the graph (DDP needs every parameter to receive a gradient).
            return mask_logits.sum() * 0.0
        logits = mask_logits[torch.arange(len(labels), device=labels.device), labels].float()
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="mean")

    @torch.no_grad()
    def predict(self, mask_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Probabilities of each detection's predicted class: ``[D, M, M]`` in [0, 1]."""
        return mask_logits[torch.arange(len(labels), device=labels.device), labels].float().sigmoid()
