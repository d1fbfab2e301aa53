"""Box head: RoIAlign 7x7, two FC layers, class scores and class-specific box deltas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from panfpn.modeling.backbone import FPN_STRIDES
from panfpn.modeling.panoptic_fpn.roi_ops import BoxCoder, MultiLevelRoIAlign
from panfpn.utils.errors import ConfigError


@dataclass(frozen=True)
class BoxTestConfig:
    """Detection post-processing (Detectron2 defaults)."""

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100


class BoxHead(nn.Module):
    """Classifies RoIs into ``num_classes`` things + background and refines their boxes per class.

    Class index convention (as Detectron2): thing labels ``0..K-1``, background ``K`` (last).
    ``forward(features, boxes)``: ``features`` ``{"p2".."p5"}``; ``boxes`` per image ``[Ni, 4]``
    XYXY input pixels. Returns ``(class_logits [R, K+1], box_deltas [R, 4K])``, R = sum Ni.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 256,
        pooler_resolution: int = 7,
        fc_dim: int = 1024,
        num_fc: int = 2,
        box_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        feature_strides: Sequence[int] = FPN_STRIDES[:4],
        test: BoxTestConfig = BoxTestConfig(),
    ) -> None:
        super().__init__()
        if num_classes < 1:  # a stuff-only label set: nn.Linear/Conv2d with 0 outputs fail mid-step
            raise ConfigError(
                f"model.roi_heads.box_head.num_classes={num_classes}: Panoptic FPN needs at least one thing "
                f"category (isthing=1) to detect, and the dataset's categories (data.metadata, "
                f"data.num_thing_classes) have none")
        self.num_classes = num_classes
        self.pooler = MultiLevelRoIAlign(pooler_resolution, feature_strides=feature_strides)
        layers: list[nn.Module] = []
        dim = in_channels * pooler_resolution**2
        for _ in range(num_fc):
            fc = nn.Linear(dim, fc_dim)
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
            layers += [fc, nn.ReLU(inplace=True)]
            dim = fc_dim
        self.fcs = nn.Sequential(nn.Flatten(1), *layers)
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.box_coder = BoxCoder(box_weights)
        self.test = test

    def forward(self, features: Mapping[str, torch.Tensor],
                boxes: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.fcs(self.pooler(features, boxes))
        return self.cls_score(x), self.bbox_pred(x)

    def loss(self, class_logits: torch.Tensor, box_deltas: torch.Tensor, proposals: torch.Tensor,
             labels: torch.Tensor, matched_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy over sampled RoIs; L1 on the GT class's deltas of foreground RoIs.

        ``proposals``, ``matched_boxes``: ``[R, 4]``; ``labels``: int64 ``[R]`` (K = background).
        The box loss is summed and divided by R (not by the foreground count), as in Detectron2.
        """
        loss_cls = F.cross_entropy(class_logits, labels)
        fg = torch.nonzero(labels < self.num_classes).squeeze(1)
        cols = labels[fg, None] * 4 + torch.arange(4, device=labels.device)
        pred = box_deltas[fg[:, None], cols].float()
        target = self.box_coder.encode(matched_boxes[fg], proposals[fg])
        loss_box = F.l1_loss(pred, target, reduction="sum") / max(labels.numel(), 1)
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box}

    @torch.no_grad()
    def predict(self, class_logits: torch.Tensor, box_deltas: torch.Tensor,
                proposals: Sequence[torch.Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """Per image: ``boxes [D, 4]`` (clipped, input pixels), ``scores [D]``, ``labels [D]`` int64,
        sorted by decreasing score, D <= ``detections_per_image``."""
        k = self.num_classes
        scores_all = F.softmax(class_logits.float(), dim=-1)[:, :k]
        boxes_all = self.box_coder.decode(box_deltas, torch.cat(list(proposals))).view(-1, k, 4)
        results = []
        for scores, boxes, (h, w) in zip(scores_all.split([len(p) for p in proposals]),
                                        boxes_all.split([len(p) for p in proposals]), image_sizes):
            boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                                 boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], dim=-1)
            valid = torch.isfinite(boxes).all(dim=-1) & (scores > self.test.score_thresh)
            roi, cls = torch.nonzero(valid, as_tuple=True)
            b, s = boxes[roi, cls], scores[roi, cls]
            keep = batched_nms(b, s, cls, self.test.nms_thresh)[: self.test.detections_per_image]
            results.append({"boxes": b[keep], "scores": s[keep], "labels": cls[keep]})
        return results
