"""The two halves of Mask2Former for export, as Panoptic FPN's: a network (normalisation, backbone
body, pixel decoder, transformer decoder -> the final layer's raw predictions; exports with dynamic
batch and size) and a postprocessor (those predictions -> the per-image eval dicts, :mod:`.inference`).

``model.eval()(batch)`` is ``postprocessor(network(preprocess(batch)))``: the model's own eval path
goes through these halves, so an exported network plus the postprocessor gives the same results.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from panfpn.modeling.mask2former.classes import ClassSpace
from panfpn.modeling.mask2former.inference import (InferenceConfig, instance_inference, panoptic_inference,
                                                   resize_masks, semantic_inference)
from panfpn.modeling.batch_sizes import check_images, check_sizes
from panfpn.modeling.panoptic_fpn.network import normalize_images

OUTPUT_NAMES = ("pred_logits", "pred_masks")
MASK_STRIDE = 4  # pred_masks are at 1/4 of the padded input


class Mask2FormerNetwork(nn.Module):
    """Backbone body, pixel decoder and transformer decoder of one model, plus its input normalisation.

    Holds the model's own modules and buffers (no copies). ``preprocess(images, image_sizes)``:
    uint8 RGB ``[B, 3, Hp, Wp]`` -> ``ImageList`` of normalised float, padding zeroed.
    ``forward(images)``: that float ``[B, 3, H, W]`` (multiples of 32) -> ``(pred_logits [B, Q, K+1],
    pred_masks [B, Q, H/4, W/4])``, the final decoder layer's class and mask logits.

    Exports with dynamic batch, H and W: every feature size is read from a tensor's shape and used
    as it is (no ``int()``, no tensor built from sizes), so it stays symbolic in the exported graph.
    """

    OUTPUT_NAMES = OUTPUT_NAMES
    OUTPUT_AXES = {"pred_logits": {0: "batch"},
                   "pred_masks": {0: "batch", 2: "pred_masks_height", 3: "pred_masks_width"}}

    def __init__(self, backbone: nn.Module, pixel_decoder: nn.Module, predictor: nn.Module,
                 pixel_mean: torch.Tensor, pixel_std: torch.Tensor, *,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.register_buffer("pixel_mean", pixel_mean)  # the tensors themselves, not copies
        self.register_buffer("pixel_std", pixel_std)
        self.memory_format = memory_format

    def preprocess(self, images: torch.Tensor, image_sizes: Sequence[Sequence[int]]) -> ImageList:
        """uint8 RGB ``[B, 3, Hp, Wp]`` -> normalised float ``ImageList``, padding zeroed, size a multiple of 32."""
        return normalize_images(check_images(images).to(self.pixel_mean.device, non_blocking=True), image_sizes,
                                self.pixel_mean, self.pixel_std)

    def predict_all(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Normalised float ``[B, 3, H, W]`` -> per decoder layer (class logits, mask logits at 1/4)
        (training supervises every layer)."""
        features = self.backbone(images.contiguous(memory_format=self.memory_format))
        mask_features, scales = self.pixel_decoder(features)
        return self.predictor(scales, mask_features)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classes, masks = self.predict_all(images)
        return classes[-1], masks[-1]


class Mask2FormerPostprocessor:
    """``(pred_logits, pred_masks)``, image sizes, original sizes -> per-image ``{"panoptic",
    "instances", "sem_seg"}`` (docs/interfaces.md section 3). Not a module: no parameters."""

    def __init__(self, space: ClassSpace, num_sem_classes: int, inference: InferenceConfig) -> None:
        self.space = space
        self.num_sem_classes = num_sem_classes
        self.inference_config = inference
        self.training = False

    def __call__(self, outputs: Sequence[torch.Tensor], image_sizes: Sequence[Sequence[int]],
                 orig_sizes: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        if len(outputs) != len(OUTPUT_NAMES):
            raise ValueError(f"expected {len(OUTPUT_NAMES)} network outputs ({', '.join(OUTPUT_NAMES)}), "
                             f"got {len(outputs)}")
        logits, masks = (torch.as_tensor(t) for t in outputs)
        padded = (int(masks.shape[-2]) * MASK_STRIDE, int(masks.shape[-1]) * MASK_STRIDE)
        image_sizes = check_sizes(image_sizes, "image_sizes", int(masks.shape[0]), padded)
        orig_sizes = check_sizes(orig_sizes, "orig_sizes", int(masks.shape[0]))
        cfg = self.inference_config
        out = []
        for b, (size, orig) in enumerate(zip(image_sizes, orig_sizes)):
            full = resize_masks(masks[b], padded, (int(size[0]), int(size[1])), (int(orig[0]), int(orig[1])))
            out.append({
                "panoptic": panoptic_inference(logits[b], full, self.space, cfg),
                "instances": instance_inference(logits[b], full, self.space, cfg),
                "sem_seg": semantic_inference(logits[b], full, self.space, self.num_sem_classes),
            })
        return out
