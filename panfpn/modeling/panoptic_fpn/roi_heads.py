"""RoI heads: samples proposals for training and chains the box head and the mask head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn
from torchvision.ops import box_iou

from panfpn.modeling.panoptic_fpn.box_head import BoxHead
from panfpn.modeling.panoptic_fpn.mask_head import MaskHead


@dataclass(frozen=True)
class RoISampling:
    """Which proposals train the box and mask heads (Detectron2 defaults)."""

    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    append_gt_boxes: bool = True  # GT boxes join the proposals so early training has positives


@dataclass
class SampledRoIs:
    """Per image: sampled proposals ``[Ri, 4]``, labels ``[Ri]`` (K = background), matched GT index and box."""

    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    matched_idxs: list[torch.Tensor]
    matched_boxes: list[torch.Tensor]


class RoIHeads(nn.Module):
    """Box head then mask head on the proposals.

    ``forward(features, proposals, image_sizes, targets=None)``:
      - training (``targets`` = per image dicts with ``boxes [G, 4]``, ``labels [G]``,
        ``masks uint8 [G, H, W]``): returns ``{"loss_cls", "loss_box_reg", "loss_mask"}``
      - eval: per image ``{"boxes" [D, 4] input pixels, "scores" [D], "labels" [D],
        "mask_probs" [D, M, M]}`` (masks relative to their boxes)
    """

    def __init__(self, box_head: BoxHead, mask_head: MaskHead, *,
                 sampling: RoISampling = RoISampling()) -> None:
        super().__init__()
        self.box_head = box_head
        self.mask_head = mask_head
        self.sampling = sampling

    def sample(self, proposals: Sequence[torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]]) -> SampledRoIs:
        cfg = self.sampling
        background = self.box_head.num_classes
        out = SampledRoIs([], [], [], [])
        for props, tgt in zip(proposals, targets):
            gt_boxes, gt_labels = tgt["boxes"].to(props.dtype), tgt["labels"]
            if cfg.append_gt_boxes:
                props = torch.cat([props, gt_boxes])
            if len(gt_boxes):
                iou, idx = box_iou(gt_boxes, props).max(dim=0)
                fg = iou >= cfg.fg_iou_thresh
                labels = torch.where(fg, gt_labels[idx], torch.full_like(idx, background))
            else:
                idx = torch.zeros(len(props), dtype=torch.long, device=props.device)
                fg = torch.zeros(len(props), dtype=torch.bool, device=props.device)
                labels = torch.full_like(idx, background)
            fg_idx = torch.nonzero(fg).squeeze(1)
            bg_idx = torch.nonzero(~fg).squeeze(1)
            num_fg = min(int(cfg.batch_size_per_image * cfg.positive_fraction), len(fg_idx))
            num_bg = min(cfg.batch_size_per_image - num_fg, len(bg_idx))
            fg_idx = fg_idx[torch.randperm(len(fg_idx), device=fg_idx.device)[:num_fg]]
            bg_idx = bg_idx[torch.randperm(len(bg_idx), device=bg_idx.device)[:num_bg]]
            keep = torch.cat([fg_idx, bg_idx])
            out.boxes.append(props[keep])
            out.labels.append(labels[keep])
            out.matched_idxs.append(idx[keep])
            out.matched_boxes.append(gt_boxes[idx[keep]] if len(gt_boxes) else props[keep])
        return out

    def forward(
        self,
        features: Mapping[str, torch.Tensor],
        proposals: Sequence[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[Mapping[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads needs targets (boxes, labels, masks) in training mode")
            return self._losses(features, proposals, targets)
        logits, deltas = self.box_head(features, proposals)
        detections = self.box_head.predict(logits, deltas, proposals, image_sizes)
        mask_logits = self.mask_head(features, [d["boxes"] for d in detections])
        labels = torch.cat([d["labels"] for d in detections])
        probs = self.mask_head.predict(mask_logits, labels).split([len(d["labels"]) for d in detections])
        for det, p in zip(detections, probs):
            det["mask_probs"] = p
        return detections

    def _losses(self, features: Mapping[str, torch.Tensor], proposals: Sequence[torch.Tensor],
                targets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        rois = self.sample(proposals, targets)
        logits, deltas = self.box_head(features, rois.boxes)
        losses = self.box_head.loss(logits, deltas, torch.cat(rois.boxes), torch.cat(rois.labels),
                                    torch.cat(rois.matched_boxes))
        # The mask head trains on foreground RoIs only, each against its matched GT mask.
        background = self.box_head.num_classes
        fg = [lab < background for lab in rois.labels]
        fg_boxes = [b[m] for b, m in zip(rois.boxes, fg)]
        fg_labels = torch.cat([lab[m] for lab, m in zip(rois.labels, fg)])
        fg_idxs = [i[m] for i, m in zip(rois.matched_idxs, fg)]
        mask_logits = self.mask_head(features, fg_boxes)
        mask_targets = self.mask_head.targets([t["masks"] for t in targets], fg_boxes, fg_idxs)
        losses["loss_mask"] = self.mask_head.loss(mask_logits, fg_labels, mask_targets)
        return losses
