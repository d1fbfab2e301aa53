"""Bring per-image predictions from the padded network input back to the original image size."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from panfpn.modeling.merge import MergeThresholds, merge_panoptic


def _interp_weights(lo: torch.Tensor, hi: torch.Tensor, length: int, size: int) -> torch.Tensor:
    """Bilinear weights ``[D, length, size]`` mapping a ``size``-cell mask spanning [lo, hi] onto
    ``length`` output pixels (pixel centres at i + 0.5; zero outside the mask, like grid_sample
    with align_corners=False and zero padding)."""
    centres = torch.arange(length, device=lo.device, dtype=lo.dtype) + 0.5
    extent = (hi - lo).clamp(min=1e-6)
    # Position of each output pixel centre in mask-cell units, relative to cell centres.
    pos = (centres[None, :] - lo[:, None]) / extent[:, None] * size - 0.5
    cells = torch.arange(size, device=lo.device, dtype=lo.dtype)
    return (1.0 - (pos[:, :, None] - cells[None, None, :]).abs()).clamp(min=0.0)


def paste_masks(mask_probs: torch.Tensor, boxes: torch.Tensor, out_size: tuple[int, int],
                *, chunk: int = 32) -> torch.Tensor:
    """Paste box-relative masks into full images.

    ``mask_probs [D, M, M]`` float, ``boxes [D, 4]`` XYXY output pixels -> ``[D, H, W]`` float.
    Bilinear resampling is separable, so each mask is ``Wy @ mask @ Wx^T`` with small weight
    matrices: two batched matmuls instead of a per-mask loop or a ``[D, H, W, 2]`` sampling grid.
    """
    h, w = out_size
    out = mask_probs.new_zeros((len(mask_probs), h, w))
    m = mask_probs.shape[-1]
    for s in range(0, len(mask_probs), chunk):
        b = boxes[s:s + chunk].to(mask_probs.dtype)
        wy = _interp_weights(b[:, 1], b[:, 3], h, m)
        wx = _interp_weights(b[:, 0], b[:, 2], w, m)
        out[s:s + chunk] = wy @ mask_probs[s:s + chunk] @ wx.transpose(1, 2)
    return out


def resize_sem_logits(logits: torch.Tensor, image_size: tuple[int, int],
                      out_size: tuple[int, int]) -> torch.Tensor:
    """``logits [C, Hp, Wp]`` of a padded input -> ``[C, H0, W0]``: crop the padding, then resize."""
    h, w = image_size
    cropped = logits[None, :, :h, :w].float()
    if (h, w) == tuple(out_size):
        return cropped[0]
    return F.interpolate(cropped, size=tuple(out_size), mode="bilinear", align_corners=False)[0]


def rescale_boxes(boxes: torch.Tensor, image_size: tuple[int, int],
                  out_size: tuple[int, int]) -> torch.Tensor:
    """Boxes ``[D, 4]`` XYXY in network-input pixels -> original pixels, clipped to the image."""
    (h, w), (h0, w0) = image_size, out_size
    scale = boxes.new_tensor([w0 / w, h0 / h, w0 / w, h0 / h])
    out = boxes * scale
    return torch.stack([out[:, 0].clamp(0, w0), out[:, 1].clamp(0, h0),
                        out[:, 2].clamp(0, w0), out[:, 3].clamp(0, h0)], dim=1)


@torch.no_grad()
def panoptic_results(detections: Sequence[Mapping[str, torch.Tensor]], sem_logits: torch.Tensor,
                     image_sizes: Sequence[tuple[int, int]], orig_sizes: Sequence[Sequence[int]], *,
                     thing_sem_labels: Sequence[int], merge: MergeThresholds) -> list[dict[str, Any]]:
    """The eval output of ``PanopticFPN`` (its docstring is the contract) from detections and logits.

    ``detections``: per image ``{"boxes" [D, 4] input pixels, "scores" [D], "labels" [D],
    "mask_probs" [D, M, M]}``; ``sem_logits``: ``[B, C, Hp, Wp]`` of the padded input;
    ``image_sizes``: unpadded input sizes; ``orig_sizes``: the output sizes. Per image: rescale
    boxes, paste masks, resize semantic logits, then merge.
    """
    results = []
    for det, logits, size, orig in zip(detections, sem_logits, image_sizes, orig_sizes):
        orig = (int(orig[0]), int(orig[1]))
        boxes = rescale_boxes(det["boxes"], size, orig)
        probs = paste_masks(det["mask_probs"], boxes, orig)
        sem = resize_sem_logits(logits, size, orig).argmax(dim=0)
        # Only instances that can pass the merge's score threshold need their soft masks.
        cand = det["scores"] >= merge.score_thresh
        panoptic = merge_panoptic(probs[cand], det["scores"][cand], det["labels"][cand], sem,
                                  thing_sem_labels=thing_sem_labels, **asdict(merge))
        results.append({
            "panoptic": panoptic,
            "instances": {"boxes": boxes, "scores": det["scores"], "labels": det["labels"],
                          "masks": probs >= 0.5},  # Detectron2 keeps p >= 0.5
            "sem_seg": sem,
        })
    return results
