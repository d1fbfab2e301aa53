"""Mask2Former's training losses: class cross-entropy (no-object weighted down) and mask BCE + dice
on importance-sampled points, for the final prediction and every auxiliary one (deep supervision)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from panfpn.modeling.loss_weights import check_loss_weights
from panfpn.modeling.mask2former.matcher import HungarianMatcher
from panfpn.modeling.mask2former.points import dice_loss, point_sample, sigmoid_ce_loss, uncertain_point_coords
from panfpn.utils.dist import get_world_size


class SetCriterion(nn.Module):
    """Losses of matched predictions.

    Keys: ``loss_ce``, ``loss_mask``, ``loss_dice`` for the final prediction and ``loss_ce_i`` ...
    for auxiliary prediction i (0 = from the learnable queries before any layer), already weighted
    (``class_weight``, ``mask_weight``, ``dice_weight``). Mask losses are summed over matched
    targets and divided by the number of targets in the batch (averaged over ranks).
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, *, no_object_weight: float = 0.1,
                 class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 num_points: int = 12544, oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 deep_supervision: bool = True) -> None:
        super().__init__()
        check_loss_weights({"no_object_weight": no_object_weight, "class_weight": class_weight,
                            "mask_weight": mask_weight, "dice_weight": dice_weight}, "criterion")
        self.num_classes, self.matcher = num_classes, matcher
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.num_points, self.oversample_ratio = num_points, oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def forward(self, classes: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``classes`` / ``masks``: the decoder's per-layer predictions (last = final)."""
        num_masks = sum(int(t["labels"].numel()) for t in targets)
        num = torch.tensor(float(num_masks), device=masks[-1].device)
        if get_world_size() > 1:
            torch.distributed.all_reduce(num)
        num = (num / get_world_size()).clamp(min=1.0)
        losses = self.single(classes[-1], masks[-1], targets, num)
        if self.deep_supervision:
            for i, (c, m) in enumerate(zip(classes[:-1], masks[:-1])):
                losses |= {f"{k}_{i}": v for k, v in self.single(c, m, targets, num).items()}
        return losses

    def single(self, logits: torch.Tensor, masks: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]],
               num_masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three weighted losses of one prediction layer."""
        logits, masks = logits.float(), masks.float()
        indices = self.matcher(logits, masks, targets)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src.to(logits.device)] = targets[b]["labels"][tgt.to(logits.device)]
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        loss_mask, loss_dice = self.mask_losses(masks, targets, indices, num_masks)
        return {"loss_ce": loss_ce * self.weights["loss_ce"], "loss_mask": loss_mask * self.weights["loss_mask"],
                "loss_dice": loss_dice * self.weights["loss_dice"]}

    def mask_losses(self, masks: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]],
                    indices: Sequence[tuple[torch.Tensor, torch.Tensor]], num_masks: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BCE and dice of the matched masks on ``num_points`` uncertainty-sampled points each."""
        src = torch.cat([masks[b, s.to(masks.device)] for b, (s, _) in enumerate(indices)])
        tgt = torch.cat([targets[b]["masks"][t.to(masks.device)] for b, (_, t) in enumerate(indices)])
        if src.shape[0] == 0:
            zero = masks.sum() * 0.0  # keeps every parameter in the graph (DDP)
            return zero, zero
        src = src[:, None]
        with torch.no_grad():
            coords = uncertain_point_coords(src, self.num_points, self.oversample_ratio,
                                            self.importance_sample_ratio)
            labels = point_sample(tgt[:, None].to(src.dtype), coords)[:, 0]
        point_logits = point_sample(src, coords)[:, 0]
        return (sigmoid_ce_loss(point_logits, labels).sum() / num_masks,
                dice_loss(point_logits, labels).sum() / num_masks)
