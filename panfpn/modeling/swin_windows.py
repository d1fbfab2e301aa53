"""torchvision's Swin Transformer with the window shift of the official detection / segmentation code.

torchvision's ``shifted_window_attention`` (as the classification Swin code) skips the cyclic shift
along a side whose padded feature map is a single window. The Swin backbone of the detection and
segmentation code bases (Swin-Transformer-Object-Detection / -Semantic-Segmentation, and Mask2Former's
``D2SwinTransformer``, whose checkpoints this repository loads) always shifts in the odd blocks and
masks attention across the shifted regions (-100 added to the logits), whatever the map size. Both
agree where every map with shifted blocks is larger than one window on each side (an input side
> 32 x window for the stride-32 stage); :func:`build_swin` with ``always_shift=True`` gives the
official behaviour everywhere. Parameter and buffer names are torchvision's in both cases.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention, SwinTransformer, SwinTransformerBlock


def _region_mask(hp: int, wp: int, window: Sequence[int], shift: Sequence[int], device: torch.device) -> torch.Tensor:
    """``[nW, N, N]``: 0 between tokens of one region of the shifted map, -100 across regions."""
    regions = torch.zeros(hp, wp, device=device)
    for axis, (size, win, sh) in enumerate(zip((hp, wp), window, shift)):
        label = torch.zeros(size, device=device)
        label[size - win:size - sh] = 1
        label[size - sh:] = 2
        regions += label.view(-1, 1) * 3 if axis == 0 else label.view(1, -1)
    ids = regions.view(hp // window[0], window[0], wp // window[1], window[1]).permute(0, 2, 1, 3)
    ids = ids.reshape(-1, window[0] * window[1])
    return (ids[:, None, :] != ids[:, :, None]).float() * -100.0


def always_shifted_window_attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor | None,
                                    proj_weight: torch.Tensor, proj_bias: torch.Tensor | None,
                                    position_bias: torch.Tensor, window: list[int], shift: list[int], heads: int,
                                    attention_dropout: float = 0.0, dropout: float = 0.0,
                                    training: bool = False) -> torch.Tensor:
    """Window attention of ``[B, H, W, C]``: pad to whole windows, shift by ``shift`` (always, when
    non-zero), attend within windows (``position_bias`` [1, heads, N, N] plus the region mask),
    shift back, crop."""
    b, h, w, c = x.shape
    (wh, ww), (sh, sw) = window, shift
    x = F.pad(x, (0, 0, 0, -w % ww, 0, -h % wh))
    hp, wp = x.shape[1], x.shape[2]
    if sh or sw:
        x = torch.roll(x, (-sh, -sw), (1, 2))
    n, nw = wh * ww, (hp // wh) * (wp // ww)
    tokens = x.view(b, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nw, n, c)
    qkv = F.linear(tokens, qkv_weight, qkv_bias).view(b * nw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    logits = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1) + position_bias
    if sh or sw:
        mask = _region_mask(hp, wp, (wh, ww), (sh, sw), x.device).to(logits.dtype)
        logits = (logits.view(b, nw, heads, n, n) + mask[None, :, None]).view(b * nw, heads, n, n)
    probs = F.dropout(logits.softmax(-1), attention_dropout, training)
    out = F.linear((probs @ v).transpose(1, 2).reshape(b * nw, n, c), proj_weight, proj_bias)
    out = F.dropout(out, dropout, training)
    out = out.view(b, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    if sh or sw:
        out = torch.roll(out, (sh, sw), (1, 2))
    return out[:, :h, :w].contiguous()


torch.fx.wrap("always_shifted_window_attention")  # feature extraction keeps it one call (shape-dependent code)


class AlwaysShiftedWindowAttention(ShiftedWindowAttention):
    """torchvision's window attention (same parameters and buffers) that shifts on every map size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return always_shifted_window_attention(
            x, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias, self.get_relative_position_bias(),
            list(self.window_size), list(self.shift_size), self.num_heads, self.attention_dropout, self.dropout,
            self.training)


def build_swin(*, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int | Sequence[int],
               stochastic_depth_prob: float = 0.2, always_shift: bool = False, **kwargs: Any) -> nn.Module:
    """torchvision ``SwinTransformer`` (v1, 4x4 patches) with these dimensions; ``always_shift``: the
    official detection / segmentation window shift (module docstring)."""
    window = [window_size] * 2 if isinstance(window_size, int) else list(window_size)
    block = partial(SwinTransformerBlock, attn_layer=AlwaysShiftedWindowAttention) if always_shift else None
    return SwinTransformer([4, 4], embed_dim, list(depths), list(num_heads), window,
                           stochastic_depth_prob=stochastic_depth_prob, block=block, **kwargs)
