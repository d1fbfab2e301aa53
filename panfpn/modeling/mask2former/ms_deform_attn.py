"""Multi-scale deformable attention (Deformable DETR, Zhu et al., ICLR 2021) in pure PyTorch.

Each query attends to ``n_points`` sampled locations per head and feature level around its
reference point; values are read with ``F.grid_sample`` (no compiled op), so it runs on any device
and exports (``torch.export``, ONNX ``GridSample``) with symbolic level sizes: any input size.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def deformable_sample(value: torch.Tensor, shapes: Sequence[tuple[int, int]], locations: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of bilinearly sampled values.

    Args:
        value: ``[B, S, heads, Dh]``, the levels' pixels flattened and concatenated (S = sum h*w).
        shapes: ``(h, w)`` of each level, in the order of ``value``.
        locations: ``[B, Q, heads, L, P, 2]`` sampling points, (x, y) in [0, 1] of each level.
        weights: ``[B, Q, heads, L, P]`` attention weights.
    Returns: ``[B, Q, heads * Dh]``.
    """
    b, _, heads, dh = value.shape
    q, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(b * heads, dh, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B*heads, Q, P, 2]
        sampled.append(F.grid_sample(v, g.to(v.dtype), mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # [B*heads, Dh, Q, P]
    attn = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (torch.cat(sampled, dim=-1) * attn).sum(-1)  # [B*heads, Dh, Q]
    return out.view(b, heads * dh, q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention; parameter names as Deformable DETR's (``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj``)."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on rings around the reference point (head h points at angle 2*pi*h/heads,
        point k at distance k+1); attention starts uniform; projections Xavier."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        grid = torch.stack((angles.cos(), angles.sin()), -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """``query`` ``[B, Q, C]``, ``reference_points`` ``[B, Q, L, 2]`` in [0, 1], ``value``
        ``[B, S, C]`` (levels flattened in ``shapes`` order) -> ``[B, Q, C]``."""
        b, q, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        v = self.value_proj(value).view(b, value.shape[1], heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(b, q, heads, levels, points, 2)
        attn = self.attention_weights(query).view(b, q, heads, levels * points).softmax(-1)
        attn = attn.view(b, q, heads, levels, points)
        locations = reference_points[:, :, None, :, None, :] + normalize_offsets(offsets, shapes)
        return self.output_proj(deformable_sample(v, shapes, locations, attn))


def normalize_offsets(offsets: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Pixel offsets ``[..., L, P, 2]`` (x, y) -> fractions of each level's width / height.

    Divides by the sizes as scalars, not by a tensor built from them, so that symbolic sizes
    (``torch.export``, ONNX tracing) stay symbolic: the graph takes any input size.
    """
    per_level = [torch.stack((offsets[..., lvl, :, 0] / w, offsets[..., lvl, :, 1] / h), -1)
                 for lvl, (h, w) in enumerate(shapes)]
    return torch.stack(per_level, -3)
