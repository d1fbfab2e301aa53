"""Mask2Former's transformer decoder: learnable queries refined by masked cross-attention to one
feature scale per layer (round robin over strides 32, 16, 8), self-attention and a feed-forward;
class and mask predictions after the query init and after every layer (deep supervision).

Parameter names follow the official ``MultiScaleMaskedTransformerDecoder``
(``transformer_{self,cross}_attention_layers``, ``transformer_ffn_layers``, ``decoder_norm``,
``query_feat``, ``query_embed``, ``level_embed``, ``class_embed``, ``mask_embed.layers``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from panfpn.modeling.mask2former.layers import MLP, sine_position_encoding, xavier_conv_


class SelfAttentionLayer(nn.Module):
    """Query self-attention, residual, post-LayerNorm."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        return self.norm(tgt + self.dropout(self.self_attn(q, q, tgt, need_weights=False)[0]))


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention of the queries to one scale's pixels, residual, post-LayerNorm."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, attn_mask: torch.Tensor | None,
                pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        out = self.multihead_attn(tgt + query_pos, memory + pos, memory, attn_mask=attn_mask,
                                  need_weights=False)[0]
        return self.norm(tgt + self.dropout(out))


class FFNLayer(nn.Module):
    """ReLU feed-forward, residual, post-LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class MaskedTransformerDecoder(nn.Module):
    """Queries -> per-layer ``(class logits [B, Q, K+1], mask logits [B, Q, H/4, W/4])``.

    Args:
        in_channels: channels of the pixel decoder's scales; ``mask_dim``: of its mask features.
        num_classes: K (the last of the K+1 logits is "no object").
        hidden_dim, num_queries, n_heads, dim_feedforward, dec_layers: 256, 100, 8, 2048, 9.
    """

    def __init__(self, in_channels: int, num_classes: int, *, hidden_dim: int = 256, num_queries: int = 100,
                 n_heads: int = 8, dim_feedforward: int = 2048, dec_layers: int = 9, mask_dim: int = 256,
                 num_scales: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.num_layers, self.num_scales = n_heads, dec_layers, num_scales
        self.hidden_dim = hidden_dim
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, n_heads, dropout) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, n_heads, dropout) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout) for _ in range(dec_layers))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_scales, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_scales):
            if in_channels == hidden_dim:
                self.input_proj.append(nn.Sequential())
            else:
                conv = nn.Conv2d(in_channels, hidden_dim, 1)
                xavier_conv_(conv)
                self.input_proj.append(conv)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, scales: Sequence[torch.Tensor], mask_features: torch.Tensor
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``scales``: the pixel decoder's maps (stride 32, 16, 8); returns the class and mask
        predictions of the query init and of every layer (``dec_layers + 1`` each, last = final)."""
        b = mask_features.shape[0]
        srcs, pos, sizes = [], [], []
        for i, x in enumerate(scales[:self.num_scales]):
            sizes.append(tuple(x.shape[-2:]))
            # the keys' position encoding has the width of the projected maps (hidden_dim), not of the
            # pixel decoder's (conv_dim): they differ when input_proj is a 1x1 conv
            pos.append(sine_position_encoding(x, self.hidden_dim // 2).flatten(2).permute(2, 0, 1))
            src = self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]
            srcs.append(src.permute(2, 0, 1))  # [HW, B, C]
        query_pos = self.query_embed.weight[:, None].expand(-1, b, -1)
        out = self.query_feat.weight[:, None].expand(-1, b, -1)
        classes, masks = [], []
        logits, mask, attn_mask = self.predict(out, mask_features, sizes[0])
        classes.append(logits)
        masks.append(mask)
        for i in range(self.num_layers):
            lvl = i % self.num_scales
            # A query whose mask covers no pixel of this scale attends to all of them instead.
            attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
            out = self.transformer_cross_attention_layers[i](out, srcs[lvl], attn_mask, pos[lvl], query_pos)
            out = self.transformer_self_attention_layers[i](out, query_pos)
            out = self.transformer_ffn_layers[i](out)
            logits, mask, attn_mask = self.predict(out, mask_features, sizes[(i + 1) % self.num_scales])
            classes.append(logits)
            masks.append(mask)
        return classes, masks

    def predict(self, queries: torch.Tensor, mask_features: torch.Tensor, attn_size: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class logits, mask logits and the next layer's attention mask (True = blocked: pixels
        where the resized mask's probability is below 0.5), ``[B * heads, Q, h * w]``."""
        x = self.decoder_norm(queries).transpose(0, 1)  # [B, Q, C]
        logits = self.class_embed(x)
        mask = torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)
        small = F.interpolate(mask, size=attn_size, mode="bilinear", align_corners=False)
        attn_mask = (small.sigmoid().flatten(2) < 0.5).detach()
        attn_mask = attn_mask[:, None].expand(-1, self.num_heads, -1, -1).flatten(0, 1)
        return logits, mask, attn_mask
