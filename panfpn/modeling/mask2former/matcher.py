"""Hungarian matching of predictions to targets (one-to-one, minimal total cost), per image.

Cost of prediction q for target t: ``class_weight * -p_q(label_t)`` plus ``mask_weight`` times the
sigmoid cross-entropy and ``dice_weight`` times the dice loss of mask q against mask t on
``num_points`` uniformly random points (the same points for every pair, as the official matcher).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from scipy.optimize import linear_sum_assignment

from panfpn.modeling.loss_weights import check_loss_weights
from panfpn.modeling.mask2former.points import pairwise_dice, pairwise_sigmoid_ce, point_sample


@dataclass(frozen=True)
class HungarianMatcher:
    """Weights of the three costs and the number of points the mask costs use."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    num_points: int = 12544

    def __post_init__(self) -> None:
        check_loss_weights({"class_weight": self.class_weight, "mask_weight": self.mask_weight,
                            "dice_weight": self.dice_weight}, "matcher")

    def cost_matrix(self, logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                    target_masks: torch.Tensor) -> torch.Tensor:
        """``[Q, T]`` costs of one image: ``logits`` ``[Q, K+1]``, ``masks`` ``[Q, h, w]`` logits,
        ``labels`` ``[T]``, ``target_masks`` ``[T, H, W]`` (any resolution covering the same extent)."""
        logits, masks = logits.float(), masks.float()
        cost_class = -logits.softmax(-1)[:, labels]
        coords = torch.rand(1, self.num_points, 2, device=masks.device)
        pred = point_sample(masks[:, None], coords.expand(masks.shape[0], -1, -1))[:, 0]
        tgt = point_sample(target_masks[:, None].float(), coords.expand(target_masks.shape[0], -1, -1))[:, 0]
        return (self.class_weight * cost_class + self.mask_weight * pairwise_sigmoid_ce(pred, tgt)
                + self.dice_weight * pairwise_dice(pred, tgt))

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, masks: torch.Tensor,
                 targets: Sequence[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image ``(prediction indices, target indices)`` (int64, same length, sorted by prediction).

        ``logits`` ``[B, Q, K+1]``, ``masks`` ``[B, Q, h, w]``; ``targets[i]``: ``labels`` ``[T]``
        and ``masks`` ``[T, H, W]``."""
        out = []
        for b, tgt in enumerate(targets):
            if tgt["labels"].numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                out.append((empty, empty))
                continue
            cost = self.cost_matrix(logits[b], masks[b], tgt["labels"], tgt["masks"])
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out
