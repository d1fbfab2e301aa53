"""Mask2Former's pixel decoder: a 6-layer multi-scale deformable-attention encoder over the stride
8/16/32 features, then an FPN step to stride 4 whose output becomes the per-pixel mask features.

Parameter names follow the official ``MSDeformAttnPixelDecoder`` (``input_proj``,
``transformer.level_embed``, ``transformer.encoder.layers.N``, ``adapter_1``, ``layer_1``,
``mask_features``) so its checkpoints load by a prefix rename.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from panfpn.modeling.mask2former.layers import Conv2dNorm, sine_position_encoding, xavier_conv_
from panfpn.modeling.mask2former.ms_deform_attn import MSDeformAttn


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention and a ReLU feed-forward, each with residual and post-LayerNorm."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int, dim_feedforward: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        src = self.norm1(src + self.dropout(self.self_attn(src + pos, reference_points, src, shapes)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class DeformableEncoder(nn.Module):
    """The encoder layers and the learned level embedding (``level_embed``: ``[levels, C]``)."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int, num_layers: int,
                 dim_feedforward: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        nn.init.normal_(self.level_embed)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, n_levels, n_heads, n_points, dim_feedforward, dropout)
            for _ in range(num_layers))
        for layer in self.encoder.layers:  # official: Xavier on every matrix, then MSDeformAttn's own init
            nn.init.xavier_uniform_(layer.linear1.weight)
            nn.init.xavier_uniform_(layer.linear2.weight)

    def forward(self, srcs: Sequence[torch.Tensor], pos: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-level ``[B, C, h, w]`` maps in, the encoded maps of the same shapes out."""
        shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]  # symbolic when exported: no int()
        x = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        p = torch.cat([q.flatten(2).transpose(1, 2) + self.level_embed[i] for i, q in enumerate(pos)], 1)
        ref = reference_points(shapes, x.device, x.dtype)[None, :, None, :].expand(
            x.shape[0], -1, len(shapes), -1)
        for layer in self.encoder.layers:
            x = layer(x, p, ref, shapes)
        out = x.split([h * w for h, w in shapes], dim=1)
        return [o.transpose(1, 2).reshape(x.shape[0], -1, h, w) for o, (h, w) in zip(out, shapes)]


def reference_points(shapes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Pixel centres of every level as (x, y) in [0, 1]: ``[sum h*w, 2]`` (no padding masks: the
    official model also runs with all-valid masks)."""
    refs = []
    for h, w in shapes:
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack((gx.flatten(), gy.flatten()), -1))
    return torch.cat(refs).to(dtype)


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone features ``{"res2".."res5"}`` -> ``(mask_features [B, mask_dim, H/4, W/4],
    multi_scale [stride 32, 16, 8 maps of conv_dim channels])``.

    Args:
        in_channels: channels of res2..res5 (strides 4, 8, 16, 32).
        conv_dim, mask_dim: width of the decoder and of the mask features (256 / 256).
        num_layers, n_heads, n_points, dim_feedforward, dropout: the deformable encoder (6, 8, 4, 1024, 0).
    """

    def __init__(self, in_channels: Sequence[int], *, conv_dim: int = 256, mask_dim: int = 256,
                 num_layers: int = 6, n_heads: int = 8, n_points: int = 4, dim_feedforward: int = 1024,
                 dropout: float = 0.0, num_groups: int = 32) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"pixel decoder wants 4 input levels (strides 4..32), got {list(in_channels)}")
        levels = list(in_channels[1:])[::-1]  # res5, res4, res3: low to high resolution
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, 1), nn.GroupNorm(num_groups, conv_dim)) for c in levels)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        self.transformer = DeformableEncoder(conv_dim, len(levels), n_heads, n_points, num_layers,
                                             dim_feedforward, dropout)
        self.adapter_1 = Conv2dNorm(in_channels[0], conv_dim, 1, bias=False,
                                    norm=nn.GroupNorm(num_groups, conv_dim))
        self.layer_1 = Conv2dNorm(conv_dim, conv_dim, 3, padding=1, bias=False,
                                  norm=nn.GroupNorm(num_groups, conv_dim), activation=F.relu)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        for conv in (self.adapter_1, self.layer_1, self.mask_features):
            xavier_conv_(conv)
        self.conv_dim = conv_dim

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``features``: res2..res5 maps. Runs in float32 (deformable sampling under autocast is not stable)."""
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            feats = [f.float() for f in features]
            srcs = [proj(f) for proj, f in zip(self.input_proj, feats[1:][::-1])]
            pos = [sine_position_encoding(f, self.conv_dim // 2) for f in feats[1:][::-1]]
            out = self.transformer(srcs, pos)
            fine = self.adapter_1(feats[0])
            fine = fine + F.interpolate(out[-1], size=fine.shape[-2:], mode="bilinear", align_corners=False)
            fine = self.layer_1(fine)
            return self.mask_features(fine), out
