"""The network half of Panoptic FPN: normalisation, backbone, semantic head and RPN head -> raw tensors.

This is exactly what is exported (panfpn/modeling/panoptic_fpn/export.py); everything after it (proposals, RoI
heads, mask pasting, merge) is the postprocessor (:class:`~panfpn.modeling.panoptic_fpn.postprocess.PanopticPostprocessor`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList

from panfpn.data.collate import SIZE_DIVISIBILITY  # the batch contract: P5 stride, FPN levels align
from panfpn.modeling.batch_sizes import check_images, check_sizes

FEATURE_NAMES = ("p2", "p3", "p4", "p5", "p6")
OUTPUT_NAMES = (*FEATURE_NAMES, "sem_logits", *(f"objectness_{n}" for n in FEATURE_NAMES),
                *(f"deltas_{n}" for n in FEATURE_NAMES))


class PanopticNetwork(nn.Module):
    """Backbone, semantic head and RPN head of one model, plus the normalisation of its input.

    Holds the model's own modules and buffers (no copies): ``PanopticFPN.network`` builds it on
    access. ``preprocess(images, image_sizes)``: uint8 RGB ``[B, 3, Hp, Wp]`` -> ``ImageList`` of
    normalised float (eager: per-image padding). ``forward(images)``: that float ``[B, 3, H, W]``, H
    and W multiples of 32 -> flat tuple in :data:`OUTPUT_NAMES` order (ONNX outputs are flat):
    ``p2..p6`` ``[B, C, H/s, W/s]``, ``sem_logits`` ``[B, S, H, W]``, ``objectness_p2..p6``
    ``[B, A, H/s, W/s]`` logits, ``deltas_p2..p6`` ``[B, 4A, H/s, W/s]``.
    """

    def __init__(self, backbone: nn.Module, semantic_head: nn.Module, rpn_head: nn.Module,
                 pixel_mean: torch.Tensor, pixel_std: torch.Tensor, *,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        super().__init__()
        self.backbone = backbone
        self.semantic_head = semantic_head
        self.rpn_head = rpn_head
        self.register_buffer("pixel_mean", pixel_mean)  # the tensors themselves, not copies
        self.register_buffer("pixel_std", pixel_std)
        self.memory_format = memory_format

    def preprocess(self, images: torch.Tensor, image_sizes: Sequence[Sequence[int]]) -> ImageList:
        """uint8 RGB ``[B, 3, Hp, Wp]`` -> normalised float ``ImageList``, padding zeroed, size a multiple of 32."""
        return normalize_images(check_images(images).to(self.pixel_mean.device, non_blocking=True), image_sizes,
                                self.pixel_mean, self.pixel_std, memory_format=self.memory_format)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        if tuple(features) != FEATURE_NAMES:
            raise ValueError(f"backbone levels {list(features)} differ from {list(FEATURE_NAMES)}")
        sem_logits = self.semantic_head(features)
        objectness, deltas = self.rpn_head(list(features.values()))
        return (*features.values(), sem_logits, *objectness, *deltas)


def split_outputs(outputs: Sequence[torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                             list[torch.Tensor], list[torch.Tensor]]:
    """The flat tuple of :class:`PanopticNetwork` -> ``(features, sem_logits, objectness, deltas)``."""
    if len(outputs) != len(OUTPUT_NAMES):
        raise ValueError(f"expected {len(OUTPUT_NAMES)} network outputs ({', '.join(OUTPUT_NAMES)}), "
                         f"got {len(outputs)}")
    n = len(FEATURE_NAMES)
    features = dict(zip(FEATURE_NAMES, outputs[:n]))
    return features, outputs[n], list(outputs[n + 1:2 * n + 1]), list(outputs[2 * n + 1:])


def normalize_images(images: torch.Tensor, image_sizes: Sequence[Sequence[int]], pixel_mean: torch.Tensor,
                     pixel_std: torch.Tensor, *,
                     memory_format: torch.memory_format = torch.contiguous_format) -> ImageList:
    """uint8 RGB ``[B, 3, Hp, Wp]`` -> normalised float ``ImageList``, padding zeroed, size a multiple of 32.

    ``pixel_mean``, ``pixel_std``: ``[3, 1, 1]`` in 0..255 units, on the images' device.
    """
    check_images(images)
    sizes = check_sizes(image_sizes, "image_sizes", images.shape[0], (images.shape[-2], images.shape[-1]))
    x = (images.float() - pixel_mean) / pixel_std
    # The collate pads with black; zero in normalised space (the mean colour) is what the
    # weights were trained with (Detectron2 pads after normalising).
    for i, (h, w) in enumerate(sizes):
        x[i, :, h:, :] = 0
        x[i, :, :, w:] = 0
    x = F.pad(x, pad_amount(x.shape[-2:])).contiguous(memory_format=memory_format)
    return ImageList(x, sizes)


def pad_amount(size: Sequence[int]) -> tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) bringing ``(H, W)`` up to a multiple of 32."""
    h, w = int(size[0]), int(size[1])
    return (0, -w % SIZE_DIVISIBILITY, 0, -h % SIZE_DIVISIBILITY)
