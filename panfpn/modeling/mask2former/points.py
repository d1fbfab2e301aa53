"""Point sampling of mask logits and the uncertainty-based point selection (PointRend, used by
Mask2Former to compute mask losses on K points instead of whole masks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``maps`` ``[N, C, H, W]`` at ``coords`` ``[N, P, 2]`` (x, y in [0, 1] of
    the whole map, pixel corners at 0 and 1, as ``align_corners=False``) -> ``[N, C, P]``; outside: 0."""
    grid = (2.0 * coords - 1.0)[:, :, None, :]
    return F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=False)[..., 0]


def uncertain_point_coords(logits: torch.Tensor, num_points: int, oversample_ratio: float,
                           importance_ratio: float) -> torch.Tensor:
    """``[N, num_points, 2]`` points per mask: the ``importance_ratio`` share chosen among
    ``oversample_ratio * num_points`` random points as the most uncertain (logit nearest 0), the
    rest uniformly random. ``logits``: ``[N, 1, H, W]``."""
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits, coords)[:, 0].abs()
    num_uncertain = int(importance_ratio * num_points)
    idx = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = coords.gather(1, idx[..., None].expand(-1, -1, 2))
    random = torch.rand(n, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat((chosen, random), dim=1)


def sigmoid_ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-mask mean binary cross-entropy over its points: ``[N, P]`` x ``[N, P]`` -> ``[N]``."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)


def dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-mask soft dice loss ``1 - (2 |p t| + 1) / (|p| + |t| + 1)``: ``[N, P]`` x ``[N, P]`` -> ``[N]``."""
    p = logits.sigmoid()
    return 1 - (2 * (p * labels).sum(1) + 1) / (p.sum(1) + labels.sum(1) + 1)


def pairwise_sigmoid_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`sigmoid_ce_loss` of every prediction against every target: ``[Q, P]`` x ``[T, P]`` -> ``[Q, T]``."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ labels.T + neg @ (1 - labels).T) / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`dice_loss` of every prediction against every target: ``[Q, P]`` x ``[T, P]`` -> ``[Q, T]``."""
    p = logits.sigmoid()
    return 1 - (2 * p @ labels.T + 1) / (p.sum(1)[:, None] + labels.sum(1)[None, :] + 1)
