"""Region proposal network: torchvision's anchors, head and proposal filtering, Detectron2's loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead


@dataclass(frozen=True)
class RPNSampling:
    """Anchor labelling and sampling for the RPN loss (Detectron2 defaults)."""

    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5


@dataclass(frozen=True)
class ProposalLimits:
    """Proposal filtering: top-k per level before NMS, top-k per image after (Detectron2 defaults)."""

    pre_nms_topk_train: int = 2000
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 1000
    post_nms_topk_test: int = 1000
    nms_thresh: float = 0.7


class RPN(RegionProposalNetwork):
    """One anchor size per FPN level, several aspect ratios; a shared conv head on every level.

    ``forward(images, features, gt_boxes=None)``:
      - ``images``: torchvision ``ImageList`` (padded tensor ``[B, 3, Hp, Wp]`` + unpadded sizes)
      - ``features``: ``{"p2": ..., "p6": ...}`` ``[B, C, Hp/s, Wp/s]``, one level per anchor size
      - ``gt_boxes``: training only, per image ``[Gi, 4]`` XYXY input pixels
    Returns ``(proposals, losses)``: per image ``[Pi, 4]`` XYXY boxes clipped to the image (detached),
    and ``{"loss_rpn_cls", "loss_rpn_loc"}`` in training (``{}`` in eval).
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        sampling: RPNSampling = RPNSampling(),
        limits: ProposalLimits = ProposalLimits(),
    ) -> None:
        sizes = tuple((int(s),) for s in anchor_sizes)
        ratios = (tuple(float(r) for r in aspect_ratios),) * len(sizes)
        super().__init__(
            AnchorGenerator(sizes, ratios),
            RPNHead(in_channels, len(aspect_ratios)),
            fg_iou_thresh=sampling.fg_iou_thresh,
            bg_iou_thresh=sampling.bg_iou_thresh,
            batch_size_per_image=sampling.batch_size_per_image,
            positive_fraction=sampling.positive_fraction,
            pre_nms_top_n={"training": limits.pre_nms_topk_train, "testing": limits.pre_nms_topk_test},
            post_nms_top_n={"training": limits.post_nms_topk_train, "testing": limits.post_nms_topk_test},
            nms_thresh=limits.nms_thresh,
        )
        self.batch_size_per_image = sampling.batch_size_per_image

    def compute_loss(self, objectness: torch.Tensor, pred_bbox_deltas: torch.Tensor,
                     labels: list[torch.Tensor], regression_targets: list[torch.Tensor]):
        # Detectron2's normalisation: both losses are sums divided by the nominal number of
        # sampled anchors (256 x images), and the box loss is plain L1 (its default beta 0).
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.cat(pos).bool()
        sampled = pos | torch.cat(neg).bool()
        labels_cat = torch.cat(labels)
        norm = float(self.batch_size_per_image * len(labels))
        loss_cls = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], labels_cat[sampled], reduction="sum") / norm
        loss_loc = F.l1_loss(pred_bbox_deltas[pos], torch.cat(regression_targets)[pos],
                             reduction="sum") / norm
        return loss_cls, loss_loc

    def forward(  # type: ignore[override]
        self,
        images: ImageList,
        features: Mapping[str, torch.Tensor],
        gt_boxes: Sequence[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        targets = None if gt_boxes is None else [{"boxes": b} for b in gt_boxes]
        proposals, losses = super().forward(images, dict(features), targets)
        if not self.training:
            return proposals, {}
        return proposals, {"loss_rpn_cls": losses["loss_objectness"],
                           "loss_rpn_loc": losses["loss_rpn_box_reg"]}
