"""Bring per-image predictions from the padded network input back to the original image size.

At the original size of a large photo (24 MP) the outputs dominate memory, so nothing here
builds a float tensor over classes or instances at that size: the semantic argmax is taken over
channel groups of the upsampled logits (:func:`sem_argmax`), and each instance mask is pasted
inside its box only, straight to booleans (:func:`paste_masks_binary`). Both give exactly the
values of the full-size computation (:func:`resize_sem_logits` + argmax, :func:`paste_masks`).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import asdict
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from torch import nn
from torchvision.models.detection.image_list import ImageList

from panfpn.modeling.batch_sizes import check_sizes
from panfpn.modeling.merge import BoxMasks, MergeThresholds, merge_panoptic
from panfpn.modeling.panoptic_fpn.network import split_outputs

_DENSE_INSTANCE_MASKS: contextvars.ContextVar[bool] = contextvars.ContextVar("dense_instance_masks",
                                                                               default=True)


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


# Largest float tensor (elements) the semantic argmax upsamples at once: 128 MB.
_SEM_CHUNK_ELEMENTS = 1 << 25


def _supports(weights: torch.Tensor) -> torch.Tensor:
    """Per mask, the first and one-past-last output pixel with a nonzero weight (``weights
    [D, L, M]`` -> long ``[D, 2]``; equal values when there is none)."""
    reach = weights.amax(2) > 0  # [D, L]
    length = reach.shape[1]
    first = reach.byte().argmax(1)
    last = length - reach.flip(1).byte().argmax(1)
    return torch.where(reach.any(1)[:, None], torch.stack([first, last], 1), 0)


def paste_masks_binary(mask_probs: torch.Tensor, boxes: torch.Tensor, out_size: tuple[int, int]
                       ) -> BoxMasks:
    """``paste_masks(...) >= 0.5`` kept inside the boxes, without any full-size tensor.

    Each mask is pasted only over the output pixels its bilinear weights reach (its box plus half a
    mask cell; exactly zero elsewhere, as in :func:`paste_masks`), with the same weight matrices.
    Returns the masks as :class:`BoxMasks` (a probability of exactly 0.5 is foreground, as in
    Detectron2's pasting; the merge uses the same masks).
    """
    h, w = int(out_size[0]), int(out_size[1])
    m = mask_probs.shape[-1]
    b = boxes.to(mask_probs.dtype)
    wy = _interp_weights(b[:, 1], b[:, 3], h, m)  # [D, H, M]: small, and the values paste_masks uses
    wx = _interp_weights(b[:, 0], b[:, 2], w, m)
    spans = torch.cat([_supports(wy), _supports(wx)], 1).tolist()  # one host read
    crops, origins = [], []
    for i, (y0, y1, x0, x1) in enumerate(spans):
        if y1 <= y0 or x1 <= x0:
            y0 = y1 = x0 = x1 = 0
        block = wy[i, y0:y1] @ mask_probs[i] @ wx[i, x0:x1].T
        crops.append(block >= 0.5)
        origins.append((y0, x0))
    return BoxMasks(tuple(crops), tuple(origins), (h, w))


@contextlib.contextmanager
def box_instance_masks() -> Iterator[None]:
    """Within this block, eval outputs carry ``instances["masks"]`` as :class:`BoxMasks` (each mask
    inside its box; ``.dense()`` gives the bool ``[K, H0, W0]`` tensor) instead of the dense tensor:
    what inference on large photos uses when it does not need the instance masks (tools/predict)."""
    token = _DENSE_INSTANCE_MASKS.set(False)
    try:
        yield
    finally:
        _DENSE_INSTANCE_MASKS.reset(token)


def sem_argmax(logits: torch.Tensor, image_size: tuple[int, int], out_size: tuple[int, int], *,
               chunk_elements: int = _SEM_CHUNK_ELEMENTS) -> torch.Tensor:
    """``resize_sem_logits(...).argmax(0)`` (int64 ``[H0, W0]``) without the ``[C, H0, W0]`` tensor.

    The logits are upsampled a few channels at a time (interpolation is per channel, so the values
    are bitwise those of the full call) and a running maximum keeps the first maximal channel, as
    ``argmax`` does (NaN counts as the maximum, also as in ``argmax``).
    """
    h, w = image_size
    out_size = (int(out_size[0]), int(out_size[1]))
    cropped = logits[None, :, :h, :w].float()
    if (h, w) == out_size:
        return cropped[0].argmax(dim=0)
    num_classes = cropped.shape[1]
    group = max(1, chunk_elements // max(1, out_size[0] * out_size[1]))
    # NaN can only appear in the upsampled logits if the logits hold a NaN or an infinity
    check_nan = not bool(torch.isfinite(cropped).all())
    best_val = torch.full(out_size, float("-inf"), device=cropped.device)
    index_dtype = torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int64
    best_idx = torch.zeros(out_size, dtype=index_dtype, device=cropped.device)
    better = torch.empty(out_size, dtype=torch.bool, device=cropped.device)
    for start in range(0, num_classes, group):
        up = F.interpolate(cropped[:, start:start + group], size=out_size, mode="bilinear",
                           align_corners=False)[0]
        val, idx = up.max(dim=0) if up.shape[0] > 1 else (up[0], None)
        # strictly greater: on ties the earlier channel stays, as argmax keeps the first maximum;
        # a NaN replaces a number (argmax's NaN is the maximum); -inf start: channel 0 always lands
        torch.gt(val, best_val, out=better)
        if start == 0:
            better.fill_(True)
        if check_nan:
            better |= val.isnan() & ~best_val.isnan()
        torch.where(better, val, best_val, out=best_val)
        if idx is None:
            best_idx.masked_fill_(better, start)
        else:
            torch.where(better, (idx + start).to(index_dtype), best_idx, out=best_idx)
        del up, val, idx
    return best_idx.long()


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
        masks = paste_masks_binary(det["mask_probs"], boxes, orig)
        sem = sem_argmax(logits, size, orig)
        panoptic = merge_panoptic(masks, det["scores"], det["labels"], sem,
                                  thing_sem_labels=thing_sem_labels, **asdict(merge))
        results.append({
            "panoptic": panoptic,
            "instances": {"boxes": boxes, "scores": det["scores"], "labels": det["labels"],
                          "masks": masks.dense() if _DENSE_INSTANCE_MASKS.get() else masks},
            "sem_seg": sem,
        })
    return results


class PanopticPostprocessor(nn.Module):
    """The postprocessor half of Panoptic FPN: the network's raw outputs -> the eval output.

    Proposals from the RPN outputs (``rpn.proposals``), RoI inference (box head, box NMS, mask
    head), box rescaling, mask pasting, semantic argmax and the panoptic merge. Holds the model's
    own ``rpn`` and ``roi_heads`` modules and its ``thing_sem_labels`` and ``merge`` settings (no
    copies): ``PanopticFPN.postprocessor`` builds it on access. Eval mode only.

    ``forward(outputs, image_sizes, orig_sizes)``: the network's flat outputs (tensors or arrays in
    ``OUTPUT_NAMES`` order, any device) -> per-image dicts with ``panoptic``, ``instances``,
    ``sem_seg`` (docs/interfaces.md section 3).
    """

    def __init__(self, rpn: nn.Module, roi_heads: nn.Module, *, thing_sem_labels: Sequence[int],
                 merge: MergeThresholds) -> None:
        super().__init__()
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.thing_sem_labels = thing_sem_labels
        self.merge_thresholds = merge

    @torch.no_grad()
    def forward(self, outputs: Sequence[Any], image_sizes: Sequence[Sequence[int]],
                orig_sizes: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        device = next(self.roi_heads.parameters()).device
        features, sem_logits, objectness, deltas = split_outputs([torch.as_tensor(t).to(device)
                                                                  for t in outputs])
        batch, height, width = sem_logits.shape[0], sem_logits.shape[-2], sem_logits.shape[-1]
        sizes = check_sizes(image_sizes, "image_sizes", batch, (height, width))
        orig_sizes = check_sizes(orig_sizes, "orig_sizes", batch)
        if self.rpn.training or self.roi_heads.training:
            raise RuntimeError("the postprocessor runs in eval mode only; call model.eval()")
        # The anchors and proposal clipping read only the image sizes, not the pixels.
        images = ImageList(sem_logits.new_empty((batch, 3, height, width)), sizes)
        proposals = self.rpn.proposals(images, list(features.values()), objectness, deltas)
        detections = self.roi_heads(features, proposals, sizes)
        return panoptic_results(detections, sem_logits, sizes, orig_sizes,
                                thing_sem_labels=self.thing_sem_labels, merge=self.merge_thresholds)
