"""Small building blocks shared by the pixel decoder and the transformer decoder."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def sine_position_encoding(x: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0) -> torch.Tensor:
    """2-D sine/cosine position encoding of a feature map's grid (DETR's, normalised to 2*pi).

    Only ``x``'s shape, device and dtype are used. Returns ``[B, 2 * num_feats, H, W]``: the first
    ``num_feats`` channels encode y, the rest x, each interleaving sin and cos.
    """
    b, _, h, w = x.shape
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, device=x.device, dtype=torch.float32)[:, None].expand(h, w)
    xx = torch.arange(1, w + 1, device=x.device, dtype=torch.float32)[None, :].expand(h, w)
    y = y / (h + eps) * scale
    xx = xx / (w + eps) * scale
    dim_t = torch.arange(num_feats, device=x.device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        p = pos[..., None] / dim_t  # [H, W, F]
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)

    pos = torch.cat((encode(y), encode(xx)), dim=-1).permute(2, 0, 1)
    return pos[None].expand(b, -1, -1, -1).to(x.dtype)


class Conv2dNorm(nn.Conv2d):
    """Conv2d with an optional norm and activation after it; the norm is the child ``norm`` (the
    layout of Detectron2's Conv2d, so official checkpoints keep their names)."""

    def __init__(self, *args, norm: nn.Module | None = None,
                 activation: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.activation(x) if self.activation is not None else x


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (the mask embedding head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def xavier_conv_(conv: nn.Conv2d) -> None:
    """Caffe2-style Xavier fill (uniform, fan-in, gain 1) and zero bias, as the official convs."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
