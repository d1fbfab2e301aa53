"""Mask2Former as a panfpn model: the engine's batch in, the same loss dict / per-image outputs
(docs/interfaces.md sections 2-3) as Panoptic FPN out, so training, evaluation, prediction and
checkpoints work unchanged."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from panfpn.modeling.batch_sizes import check_batch, check_targets
from panfpn.modeling.halves import cached_halves, set_halves_mode, share_buffers
from panfpn.modeling.mask2former.backbone import BackboneBody
from panfpn.modeling.mask2former.classes import ClassOrder, build_class_space
from panfpn.modeling.mask2former.criterion import SetCriterion
from panfpn.modeling.mask2former.inference import InferenceConfig
from panfpn.modeling.mask2former.matcher import HungarianMatcher
from panfpn.modeling.mask2former.pixel_decoder import MSDeformAttnPixelDecoder
from panfpn.modeling.mask2former.targets import build_targets
from panfpn.modeling.mask2former.transformer_decoder import MaskedTransformerDecoder
from panfpn.modeling.mask2former.network import Mask2FormerNetwork, Mask2FormerPostprocessor

IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


class Mask2Former(nn.Module):
    """Backbone body -> pixel decoder -> masked transformer decoder -> mask classification.

    ``state_dict`` keys: ``backbone.body.*`` (the backbone's own names), ``backbone.out_norms.*``
    (Swin's output norms), ``pixel_decoder.*``, ``predictor.*`` (the official
    ``sem_seg_head.pixel_decoder.*`` / ``sem_seg_head.predictor.*`` minus the prefix),
    ``pixel_mean``, ``pixel_std``.

    * ``model.train()(batch)``: weighted losses ``loss_ce``, ``loss_mask``, ``loss_dice`` and
      ``loss_{ce,mask,dice}_{i}`` of the auxiliary predictions i (deep supervision); the
      objective is their sum.
    * ``model.eval()(batch)``: per image ``{"panoptic", "instances", "sem_seg"}`` at ``orig_size``,
      as Panoptic FPN (docs/interfaces.md section 3; ``instances["masks"]`` dense bool).
    """

    def __init__(self, backbone: BackboneBody, pixel_decoder: MSDeformAttnPixelDecoder | Mapping[str, Any],
                 predictor: Mapping[str, Any], *, num_thing_classes: int, num_sem_classes: int,
                 thing_sem_labels: Sequence[int], class_order: ClassOrder = "things_first",
                 matcher: HungarianMatcher = HungarianMatcher(), criterion: Mapping[str, Any] | None = None,
                 inference: InferenceConfig = InferenceConfig(),
                 pixel_mean: Sequence[float] = IMAGENET_MEAN_RGB, pixel_std: Sequence[float] = IMAGENET_STD_RGB,
                 channels_last: bool = True) -> None:
        """
        Args:
            backbone: the body of a Panoptic FPN backbone (C2..C5).
            pixel_decoder: :class:`MSDeformAttnPixelDecoder` keyword arguments (input widths from the backbone).
            predictor: :class:`MaskedTransformerDecoder` keyword arguments (classes from the label counts).
            num_thing_classes, num_sem_classes, thing_sem_labels: the data's label counts (``data.*``).
            class_order: the class index order (:mod:`panfpn.modeling.mask2former.classes`).
            matcher, criterion: Hungarian matcher; :class:`SetCriterion` keyword arguments.
            inference: panoptic thresholds and instances per image.
            pixel_mean, pixel_std: RGB normalisation in 0..255 units (the input is padded to a
                multiple of 32, as for Panoptic FPN).
            channels_last: run the backbone in NHWC layout (faster convolutions on CPU through
                oneDNN and with AMP on GPU), as Panoptic FPN.
        """
        super().__init__()
        self.space = build_class_space(num_thing_classes, num_sem_classes, thing_sem_labels, class_order)
        self.num_sem_classes = num_sem_classes
        self.backbone = backbone
        self.pixel_decoder = (pixel_decoder if isinstance(pixel_decoder, nn.Module)
                              else MSDeformAttnPixelDecoder(backbone.out_channels, **pixel_decoder))
        self.predictor = MaskedTransformerDecoder(self.pixel_decoder.conv_dim, self.space.num_classes,
                                                  **predictor)
        self.criterion = SetCriterion(self.space.num_classes, matcher, num_points=matcher.num_points,
                                      **(criterion or {}))
        self.inference_config = inference
        self.register_buffer("pixel_mean", torch.tensor([float(v) for v in pixel_mean]).view(3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([float(v) for v in pixel_std]).view(3, 1, 1))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone.to(memory_format=self.memory_format)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def network(self) -> Mask2FormerNetwork:
        """The network half over this model's modules and buffers (no copies), built once; what is exported."""
        return self._halves()[0]

    @property
    def postprocessor(self) -> Mask2FormerPostprocessor:
        """The postprocessor half over this model's class space and inference settings, built once."""
        return self._halves()[1]

    def _halves(self) -> tuple[Mask2FormerNetwork, Mask2FormerPostprocessor]:
        """The two halves, made on first use and kept outside the module tree (no second set of
        ``state_dict`` keys), as Panoptic FPN's."""
        net, post = cached_halves(self, lambda: (
            Mask2FormerNetwork(self.backbone, self.pixel_decoder, self.predictor, self.pixel_mean,
                               self.pixel_std, memory_format=self.memory_format),
            Mask2FormerPostprocessor(self.space, self.num_sem_classes, self.inference_config)))
        # .to()/.cuda() replace this model's buffers; settings may be reassigned after construction.
        share_buffers(net, pixel_mean=self.pixel_mean, pixel_std=self.pixel_std)
        post.space, post.num_sem_classes = self.space, self.num_sem_classes
        post.inference_config = self.inference_config
        return net, post

    def train(self, mode: bool = True) -> "Mask2Former":
        """Set the mode of the modules and of the two halves (whose flags are not in the tree)."""
        super().train(mode)
        set_halves_mode(self, mode)
        return self

    def predict(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Normalised float ``[B, 3, H, W]`` -> per decoder layer (class logits, mask logits at 1/4)."""
        return self.network.predict_all(images)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        check_batch(batch, self.training)
        network = self.network
        images = network.preprocess(batch["images"], batch["image_sizes"])
        if self.training:
            check_targets(batch, ("sem_seg", "instances"))
            classes, masks = network.predict_all(images.tensors)
            padded = (int(images.tensors.shape[-2]), int(images.tensors.shape[-1]))
            targets = build_targets(batch, self.space, padded, self.device)
            return self.criterion(classes, masks, targets)
        return self.postprocessor(network(images.tensors), images.image_sizes, batch["orig_sizes"])

    def convert_official_state(self, state: Mapping[str, torch.Tensor], report: Any) -> dict[str, torch.Tensor]:
        """An official Mask2Former checkpoint's tensors under this model's names (weights.py calls it)."""
        from panfpn.modeling.mask2former.official_weights import official_to_ours

        return official_to_ours(self, state, report)
