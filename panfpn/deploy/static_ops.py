"""Detection steps written for export: fixed top-k, NMS and RoIAlign as standard ONNX ops.

The eager model (panfpn/modeling/panoptic_fpn/rpn.py, box_head.py, roi_ops.py) filters with Python-side counts
(``.tolist()``, ``nonzero`` per FPN level, per-class loops chosen by box count); here the same
computations use tensor sizes only, so a trace (``torch.onnx.export``) or ``torch.export`` keeps them
dynamic. Each function names the eager code it stands for; results are the same up to float
rounding (NMS ties, RoIAlign of torchvision vs the eager CPU sparse kernel).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import nms, roi_align

from panfpn.deploy.resize import f64, unbacked_size


def topk_count(values: Tensor, k: int) -> Tensor | int:
    """``min(k, len(values))``: a tensor while tracing (the length stays dynamic), else an int
    (under ``torch.export`` a fresh symbol: see :func:`~panfpn.deploy.resize.unbacked_size`)."""
    if torch.jit.is_tracing():
        n = torch._shape_as_tensor(values)[0]
        return torch.clamp(n, max=k)
    count = torch.sym_min(k, values.shape[0])
    return unbacked_size(count, k, smallest=0) if isinstance(count, torch.SymInt) else count


def clip_boxes(boxes: Tensor, height: Tensor | int, width: Tensor | int) -> Tensor:
    """XYXY boxes clipped to ``[0, width] x [0, height]`` (sizes: ints or scalar tensors): ``clamp(0, w)`` per
    coordinate, as ``torchvision.ops.clip_boxes_to_image`` and the box head's clamp."""
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), f64(width).to(boxes.dtype))
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), f64(height).to(boxes.dtype))
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def level_proposals(objectness: Sequence[Tensor], deltas: Sequence[Tensor], anchors: Sequence[Tensor],
                    box_coder, pre_nms_topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per FPN level the ``pre_nms_topk`` best anchors (batch 1), decoded: ``(boxes [P, 4], logits
    [P], level [P])`` level by level, each by decreasing objectness (RPN.filter_proposals' top-k)."""
    boxes, logits, levels = [], [], []
    for lvl, (obj, delta, anchor) in enumerate(zip(objectness, deltas, anchors)):
        num_anchors = obj.shape[1]
        flat_obj = obj[0].permute(1, 2, 0).reshape(-1)  # (y, x, anchor) order, as the eager flattening
        flat_delta = delta[0].reshape(num_anchors, 4, -1).permute(2, 0, 1).reshape(-1, 4)
        top_logits, top = flat_obj.topk(topk_count(flat_obj, pre_nms_topk))
        boxes.append(box_coder.decode_single(flat_delta[top], anchor[top]))
        logits.append(top_logits)
        levels.append(torch.full_like(top, lvl))
    return torch.cat(boxes), torch.cat(logits), torch.cat(levels)


def filter_proposals(boxes: Tensor, logits: Tensor, levels: Tensor, height: Tensor, width: Tensor,
                     num_levels: int, nms_thresh: float, post_nms_topk: int) -> Tensor:
    """:func:`panfpn.modeling.panoptic_fpn.rpn.filter_image_proposals`: clip, drop empty and non-finite boxes, NMS
    within each level, the ``post_nms_topk`` best by score. Returns the proposals ``[R, 4]``."""
    boxes = clip_boxes(boxes, height, width)
    scores = logits.sigmoid()
    keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & torch.isfinite(boxes).all(1)
            & torch.isfinite(scores))
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    kept = []
    for lvl in range(num_levels):  # per level, like the eager batched_nms on many boxes
        index = torch.nonzero(levels == lvl).reshape(-1)
        kept.append(index[nms(boxes[index], scores[index], nms_thresh)])
    kept_index = torch.cat(kept)
    order = scores[kept_index].topk(topk_count(kept_index, post_nms_topk)).indices
    return boxes[kept_index[order]]


def multilevel_roi_align(maps: Sequence[Tensor], boxes: Tensor, pooler) -> Tensor:
    """:class:`panfpn.modeling.panoptic_fpn.roi_ops.MultiLevelRoIAlign` for one image's boxes ``[R, 4]``: each
    level pools the RoIs assigned to it and scatters them into their rows (``[R, C, S, S]``). Pooling
    every RoI on every level and keeping one (the earlier graph) cost 4x the output and, with adaptive
    sampling (``sampling_ratio`` 0), hundreds of samples per bin for a large RoI on a fine level."""
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1).float()
    level = pooler.level_of(rois)
    size = pooler.output_size
    out = torch.zeros_like(rois[:, :1, None, None]).expand(-1, maps[0].shape[1], size, size)  # R stays dynamic
    for i, (fmap, scale) in enumerate(zip(maps, pooler.scales)):
        index = torch.nonzero(level == i).reshape(-1)
        pooled = roi_align(fmap.float(), rois[index], size, spatial_scale=scale,
                           sampling_ratio=pooler.sampling_ratio, aligned=True)
        out = out.index_put((index,), pooled)
    return out


def class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float, num_classes: int) -> Tensor:
    """Indices kept by NMS within each class (the eager ``batched_nms``: one NMS per class), by
    decreasing score, ties in input order as the eager box head's (torchvision's stable NMS over
    class-offset boxes, up to 1000 candidates on the CPU): exactly tied scores (1.0 when saturated)
    would otherwise swap instances, their segment ids and which of them an overlap goes to."""
    kept = []
    for c in range(num_classes):
        index = torch.nonzero(labels == c).reshape(-1)
        kept.append(index[nms(boxes[index], scores[index], iou_thresh)])
    kept_index = torch.cat(kept).sort().values  # input order; then a stable sort by score
    return kept_index[_stable_descending(scores[kept_index])]


def _stable_descending(values: Tensor) -> Tensor:
    """Indices sorting ``values`` in decreasing order, ties by index. Traced, a plain sort: ONNX's
    TopK puts the lower index first (the exporter refuses ``stable=True``)."""
    if torch.jit.is_tracing():
        return values.sort(descending=True).indices
    return values.sort(descending=True, stable=True).indices
