"""Panoptic FPN (Kirillov et al., 2019): Mask R-CNN and a semantic FPN head on one backbone."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList

from panfpn.modeling.backbone import ResNetFPN
from panfpn.modeling.batch_sizes import check_batch, check_targets
from panfpn.modeling.loss_weights import check_loss_weights
from panfpn.modeling.halves import cached_halves, set_halves_mode, share_buffers
from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.panoptic_fpn.network import (SIZE_DIVISIBILITY, PanopticNetwork, normalize_images, pad_amount,
                                     split_outputs)
from panfpn.modeling.panoptic_fpn.postprocess import PanopticPostprocessor
from panfpn.modeling.panoptic_fpn.roi_heads import RoIHeads
from panfpn.modeling.panoptic_fpn.rpn import RPN
from panfpn.modeling.panoptic_fpn.semantic_head import SemanticFPNHead

LOSS_KEYS = ("loss_sem_seg", "loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask")
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
__all__ = ["LOSS_KEYS", "PanopticFPN", "SIZE_DIVISIBILITY", "normalize_images"]


class PanopticFPN(nn.Module):
    """Backbone + semantic head + RPN + RoI heads, fused into panoptic output by :func:`merge_panoptic`.

    The model is two objects over the same modules: :attr:`network` (normalisation, backbone,
    semantic head, RPN head -> raw tensors; what is exported) and :attr:`postprocessor` (proposals,
    RoI inference, mask pasting, merge). Eval is ``postprocessor(network(x))``; training feeds the
    network's outputs to the heads' losses. This module owns the parameters and buffers, so the
    ``state_dict`` keys are ``backbone.*``, ``semantic_head.*``, ``rpn.*``, ``roi_heads.*``,
    ``pixel_mean``, ``pixel_std``.

    Input: the batch of ``collate_panoptic`` (docs/interfaces.md section 2). Only ``images``
    (uint8 ``[B, 3, Hp, Wp]`` RGB), ``image_sizes`` and, in eval, ``orig_sizes`` are read, plus the
    targets ``instances`` and ``sem_seg`` in training. Tensors may be on any device; they are moved
    to the model's device.

    Output contract (the one place it is defined for the model):

    * ``model.train()``: ``dict[str, Tensor]`` of scalar losses, already multiplied by their weights:
      ``loss_sem_seg`` (cross-entropy, 255 ignored), ``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls``,
      ``loss_box_reg``, ``loss_mask``. The training objective is their sum.
    * ``model.eval()``: ``list[dict]``, one per image, everything at the image's ``orig_size`` (H0, W0):

      - ``"panoptic"``: ``(id_map, segments)``; ``id_map`` int32 ``[H0, W0]``, 0 = void, ids 1..K;
        ``segments``: list of ``{"id": int, "isthing": bool, "category": int, "score": float | None,
        "area": int}``, ``category`` = contiguous thing label (things) or semantic label (stuff).
      - ``"instances"``: ``{"boxes": float32 [D, 4] XYXY original pixels, "scores": [D],
        "labels": int64 [D] contiguous thing labels, "masks": bool [D, H0, W0]}`` by descending score.
      - ``"sem_seg"``: int64 ``[H0, W0]`` semantic argmax.
    """

    def __init__(
        self,
        backbone: ResNetFPN,
        semantic_head: SemanticFPNHead,
        rpn: RPN,
        roi_heads: RoIHeads,
        *,
        thing_sem_labels: Sequence[int],
        merge: MergeThresholds = MergeThresholds(),
        pixel_mean: Sequence[float] = IMAGENET_MEAN_RGB,
        pixel_std: Sequence[float] = IMAGENET_STD_RGB,
        loss_weights: Mapping[str, float] | None = None,
        channels_last: bool = True,
    ) -> None:
        """
        Args:
            backbone, semantic_head, rpn, roi_heads: the built parts.
            thing_sem_labels: semantic labels that stand for things (COCO: the merged 'thing' label).
            merge: thresholds of the panoptic merge.
            pixel_mean, pixel_std: RGB normalisation in 0..255 units.
            loss_weights: multipliers by loss key; unlisted keys weigh 1, ``loss_sem_seg`` 0.5.
            channels_last: run the convolutions in NHWC layout (about 1.5x faster training on
                CPU through oneDNN, and the layout tensor cores want under AMP).
        """
        super().__init__()
        self.backbone = backbone
        self.semantic_head = semantic_head
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.thing_sem_labels = [int(x) for x in thing_sem_labels]
        self.merge_thresholds = merge
        weights = {k: 1.0 for k in LOSS_KEYS} | {"loss_sem_seg": 0.5}
        unknown = set(loss_weights or {}) - set(LOSS_KEYS)
        if unknown:
            raise ValueError(f"loss_weights has unknown keys {sorted(unknown)}; valid keys: {list(LOSS_KEYS)}")
        check_loss_weights(dict(loss_weights or {}), "loss_weights")
        self.loss_weights = weights | {k: float(v) for k, v in (loss_weights or {}).items()}
        # Persistent buffers: a checkpoint carries the normalisation its weights were trained with.
        self.register_buffer("pixel_mean", torch.tensor([float(v) for v in pixel_mean]).view(3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([float(v) for v in pixel_std]).view(3, 1, 1))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def network(self) -> PanopticNetwork:
        """The network half over this model's modules and buffers (no copies), built once."""
        return self._halves()[0]

    @property
    def postprocessor(self) -> PanopticPostprocessor:
        """The postprocessor half over this model's RPN, RoI heads and settings, built once."""
        return self._halves()[1]

    def _halves(self) -> tuple[PanopticNetwork, PanopticPostprocessor]:
        """The two halves, made on first use and kept outside the module tree (no second set of
        ``state_dict`` keys), so ``.eval()`` or hooks set on them persist."""
        net, post = cached_halves(self, lambda: (
            PanopticNetwork(self.backbone, self.semantic_head, self.rpn.head, self.pixel_mean, self.pixel_std,
                            memory_format=self.memory_format),
            PanopticPostprocessor(self.rpn, self.roi_heads, thing_sem_labels=self.thing_sem_labels,
                                  merge=self.merge_thresholds)))
        # .to()/.cuda() replace this model's buffers; settings may be reassigned after construction.
        share_buffers(net, pixel_mean=self.pixel_mean, pixel_std=self.pixel_std)
        post.thing_sem_labels, post.merge_thresholds = self.thing_sem_labels, self.merge_thresholds
        return net, post

    def train(self, mode: bool = True) -> PanopticFPN:
        """Set the mode of the modules and of the two halves (whose flags are not in the tree)."""
        super().train(mode)
        set_halves_mode(self, mode)
        return self

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        check_batch(batch, self.training)
        network = self.network
        images = network.preprocess(batch["images"], batch["image_sizes"])
        outputs = network(images.tensors)
        if self.training:
            check_targets(batch, ("sem_seg", "instances"))
            return self.losses(batch, images, outputs)
        return self.postprocessor(outputs, images.image_sizes, batch["orig_sizes"])

    def preprocess(self, images: torch.Tensor, image_sizes: Sequence[Sequence[int]]) -> ImageList:
        """uint8 RGB ``[B, 3, Hp, Wp]`` -> normalised float, padding zeroed, size a multiple of 32."""
        return self.network.preprocess(images, image_sizes)

    def losses(self, batch: Mapping[str, Any], images: ImageList,
               outputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weighted training losses from the network's outputs; each head computes its own."""
        features, sem_logits, objectness, deltas = split_outputs(outputs)
        sem_seg = batch["sem_seg"].to(self.device, non_blocking=True)
        sem_seg = F.pad(sem_seg, pad_amount(sem_seg.shape[-2:]), value=self.semantic_head.ignore_index)
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in inst.items()}
                   for inst in batch["instances"]]
        losses = {"loss_sem_seg": self.semantic_head.loss(sem_logits, sem_seg)}
        proposals, rpn_losses = self.rpn.predict(images, list(features.values()), objectness, deltas,
                                                 [t["boxes"] for t in targets])
        losses |= rpn_losses
        losses |= self.roi_heads(features, proposals, images.image_sizes, targets)
        return {k: losses[k] * self.loss_weights[k] for k in LOSS_KEYS}
