"""RoI helpers shared by the box and mask heads: multi-level RoIAlign and the box coder."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from panfpn.modeling.backbone import FPN_STRIDES
from panfpn.modeling.panoptic_fpn.roi_align_sparse import roi_align_sparse, sparse_mm_works

# Deltas dw/dh are clamped so exp() cannot overflow for a wild prediction (box growth <= 1000/16).
_SCALE_CLAMP = math.log(1000.0 / 16)


def boxes_to_rois(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image boxes ``[Ni, 4]`` -> RoIs ``[sum Ni, 5]`` as (image index, x1, y1, x2, y2)."""
    idx = torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device)
                     for i, b in enumerate(boxes)])
    return torch.cat([idx, torch.cat(list(boxes))], dim=1)


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign (aligned=True, i.e. half-pixel corrected) from the FPN level suited to each box.

    Level = floor(canonical_level + log2(sqrt(area) / canonical_size)), clamped to the levels
    given. ``forward(features, boxes)``: ``features`` maps ``"p2".."p5"`` to ``[B, C, H/s, W/s]``;
    ``boxes`` is a list (per image) of ``[Ni, 4]`` XYXY input-pixel boxes; returns
    ``[sum Ni, C, output_size, output_size]`` in the order of the concatenated boxes.
    """

    def __init__(
        self,
        output_size: int,
        *,
        feature_strides: Sequence[int] = FPN_STRIDES[:4],
        sampling_ratio: int = 0,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.levels = [int(math.log2(s)) for s in feature_strides]
        self.scales = [1.0 / s for s in feature_strides]
        self.sampling_ratio = sampling_ratio
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level

    def level_of(self, rois: torch.Tensor) -> torch.Tensor:
        """Index into the configured levels for each RoI ``[R, 5]`` -> int64 ``[R]``."""
        wh = (rois[:, 3:5] - rois[:, 1:3]).clamp(min=0)
        size = torch.sqrt(wh[:, 0] * wh[:, 1])
        level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_size + 1e-8))
        return (level.clamp(self.levels[0], self.levels[-1]) - self.levels[0]).long()

    def forward(self, features: Mapping[str, torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        maps = [features[f"p{lvl}"] for lvl in self.levels]
        # Box coordinates stay float32 even under autocast: bf16 would round a 1000-pixel
        # coordinate to a multiple of 4-8 pixels.
        rois = boxes_to_rois(boxes).float()
        out = maps[0].new_zeros((len(rois), maps[0].shape[1], self.output_size, self.output_size))
        if len(rois) == 0:
            return out
        level = self.level_of(rois)
        align = roi_align_sparse if _use_sparse(maps[0]) else roi_align
        for i, (fmap, scale) in enumerate(zip(maps, self.scales)):
            # nonzero() syncs once per level; RoIAlign needs the subset anyway.
            idx = torch.nonzero(level == i).squeeze(1)
            if idx.numel():
                out[idx] = align(fmap.float(), rois[idx], self.output_size, spatial_scale=scale,
                                 sampling_ratio=self.sampling_ratio, aligned=True).to(out.dtype)
        return out


def _use_sparse(features: torch.Tensor) -> bool:
    """The sparse-matrix RoIAlign on CPU (2-10x faster there) where this torch build has the
    sparse kernels; torchvision's kernel on GPUs and whenever the graph is traced, compiled or
    exported (ONNX and torch.export know that op)."""
    if features.device.type != "cpu" or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if not sparse_mm_works("cpu"):
        return False
    compiler = getattr(torch, "compiler", None)  # is_compiling: torch >= 2.3, is_exporting: >= 2.5
    return not any(getattr(compiler, name, lambda: False)()
                   for name in ("is_compiling", "is_exporting"))


class BoxCoder:
    """Encodes boxes as weighted (dx, dy, dw, dh) deltas relative to reference boxes (R-CNN)."""

    def __init__(self, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> None:
        self.weights = tuple(float(w) for w in weights)

    def encode(self, targets: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        """``targets``, ``refs``: ``[N, 4]`` XYXY -> deltas ``[N, 4]``."""
        wx, wy, ww, wh = self.weights
        rw, rh = refs[:, 2] - refs[:, 0], refs[:, 3] - refs[:, 1]
        rx, ry = refs[:, 0] + 0.5 * rw, refs[:, 1] + 0.5 * rh
        tw, th = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
        tx, ty = targets[:, 0] + 0.5 * tw, targets[:, 1] + 0.5 * th
        return torch.stack([wx * (tx - rx) / rw, wy * (ty - ry) / rh,
                            ww * torch.log(tw / rw), wh * torch.log(th / rh)], dim=1)

    def decode(self, deltas: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        """``deltas``: ``[N, 4k]``, ``refs``: ``[N, 4]`` XYXY -> boxes ``[N, 4k]`` XYXY."""
        wx, wy, ww, wh = self.weights
        # Always float32: under autocast the deltas may arrive as bf16/fp16.
        deltas, refs = deltas.float(), refs.float()
        rw, rh = (refs[:, 2] - refs[:, 0])[:, None], (refs[:, 3] - refs[:, 1])[:, None]
        rx, ry = refs[:, 0, None] + 0.5 * rw, refs[:, 1, None] + 0.5 * rh
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=_SCALE_CLAMP)
        dh = (deltas[:, 3::4] / wh).clamp(max=_SCALE_CLAMP)
        cx, cy = dx * rw + rx, dy * rh + ry
        w, h = torch.exp(dw) * rw, torch.exp(dh) * rh
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=2)
        return boxes.reshape(deltas.shape)
