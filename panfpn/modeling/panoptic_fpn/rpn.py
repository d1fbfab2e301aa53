"""Region proposal network: torchvision's anchors, head and proposal filtering, Detectron2's loss and
its rule for dropping proposals (only empty or non-finite boxes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

from panfpn.modeling.backbone import FPN_STRIDES


@dataclass(frozen=True)
class RPNSampling:
    """Anchor labelling and sampling for the RPN loss (Detectron2 defaults)."""

    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5


@dataclass(frozen=True)
class ProposalLimits:
    """Proposal filtering: top-k per level before NMS, top-k per image after (Detectron2 defaults)."""

    pre_nms_topk_train: int = 2000
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 1000
    post_nms_topk_test: int = 1000
    nms_thresh: float = 0.7


class FixedStrideAnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator with the true level strides and unrounded cell anchors.

    torchvision infers each level's stride as ``padded_size // grid_size``, which is wrong when
    the padded size is not a multiple of the level's stride (P6 of an 800-pixel-high input:
    800 // 13 = 61, not 64), shifting the largest anchors; and it rounds the cell anchors to
    integers. Detectron2 does neither, and its weights were trained with its anchors.
    """

    def __init__(self, sizes: Sequence[int], aspect_ratios: Sequence[float], strides: Sequence[int]) -> None:
        super().__init__(tuple((int(s),) for s in sizes),
                         (tuple(float(r) for r in aspect_ratios),) * len(sizes))
        self.strides = [int(s) for s in strides]

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        # aspect ratio = h / w at constant area size^2
        hs = (torch.sqrt(ratios)[:, None] * scales[None, :]).view(-1)
        ws = (scales[None, :] / torch.sqrt(ratios)[:, None]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"RPN got {len(feature_maps)} feature levels for {len(self.strides)} anchor sizes")
        device = feature_maps[0].device
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]


class _Float32RPNHead(RPNHead):
    """RPNHead whose outputs are float32: under autocast they would be bf16/fp16, and torchvision
    decodes proposals in the dtype of the deltas (bf16 rounds coordinates to several pixels)."""

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class RPN(RegionProposalNetwork):
    """One anchor size per FPN level, several aspect ratios; a shared conv head on every level.

    ``forward(images, features, gt_boxes=None)``:
      - ``images``: torchvision ``ImageList`` (padded tensor ``[B, 3, Hp, Wp]`` + unpadded sizes)
      - ``features``: ``{"p2": ..., "p6": ...}`` ``[B, C, Hp/s, Wp/s]``, one level per anchor size
      - ``gt_boxes``: training only, per image ``[Gi, 4]`` XYXY input pixels
    Returns ``(proposals, losses)``: per image ``[Pi, 4]`` XYXY boxes clipped to the image (detached),
    and ``{"loss_rpn_cls", "loss_rpn_loc"}`` in training (``{}`` in eval). Training and eval make
    proposals with the same code (:meth:`predict`; only the top-k limits differ by mode); training
    adds the loss on the anchors. torchvision's ``RegionProposalNetwork.forward`` is not used.
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_strides: Sequence[int] = FPN_STRIDES,
        sampling: RPNSampling = RPNSampling(),
        limits: ProposalLimits = ProposalLimits(),
    ) -> None:
        super().__init__(
            FixedStrideAnchorGenerator(anchor_sizes, aspect_ratios, anchor_strides),
            _Float32RPNHead(in_channels, len(aspect_ratios)),
            fg_iou_thresh=sampling.fg_iou_thresh,
            bg_iou_thresh=sampling.bg_iou_thresh,
            batch_size_per_image=sampling.batch_size_per_image,
            positive_fraction=sampling.positive_fraction,
            pre_nms_top_n={"training": limits.pre_nms_topk_train, "testing": limits.pre_nms_topk_test},
            post_nms_top_n={"training": limits.post_nms_topk_train, "testing": limits.post_nms_topk_test},
            nms_thresh=limits.nms_thresh,
        )
        self.batch_size_per_image = sampling.batch_size_per_image

    def compute_loss(self, objectness: torch.Tensor, pred_bbox_deltas: torch.Tensor,
                     labels: list[torch.Tensor], regression_targets: list[torch.Tensor]):
        # Detectron2's normalisation: both losses are sums divided by the nominal number of
        # sampled anchors (256 x images), and the box loss is plain L1 (its default beta 0).
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.cat(pos).bool()
        sampled = pos | torch.cat(neg).bool()
        labels_cat = torch.cat(labels)
        norm = float(self.batch_size_per_image * len(labels))
        loss_cls = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], labels_cat[sampled], reduction="sum") / norm
        loss_loc = F.l1_loss(pred_bbox_deltas[pos], torch.cat(regression_targets)[pos],
                             reduction="sum") / norm
        return loss_cls, loss_loc

    def forward(  # type: ignore[override]
        self,
        images: ImageList,
        features: Mapping[str, torch.Tensor],
        gt_boxes: Sequence[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        levels = list(features.values())
        objectness, deltas = self.head(levels)
        return self.predict(images, levels, objectness, deltas, gt_boxes)

    def predict(self, images: ImageList, features: Sequence[torch.Tensor], objectness: Sequence[torch.Tensor],
                deltas: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor] | None = None,
                ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Proposals from the head's outputs, the same way in training and eval (:meth:`proposals`);
        in training also the loss on the anchors (``gt_boxes`` per image ``[Gi, 4]`` XYXY)."""
        anchors = self.anchor_generator(images, list(features))
        flat_objectness, flat_deltas = concat_box_prediction_layers(list(objectness), list(deltas))
        per_level = [int(o[0].numel()) for o in objectness]  # A * Hl * Wl anchors per level
        proposals = self.decode_proposals(anchors, flat_objectness, flat_deltas, images.image_sizes, per_level)
        if not self.training:
            return proposals, {}
        if gt_boxes is None:
            raise ValueError("the RPN needs gt_boxes in training mode")
        return proposals, self.losses(anchors, flat_objectness, flat_deltas, gt_boxes)

    def decode_proposals(self, anchors: list[torch.Tensor], objectness: torch.Tensor, deltas: torch.Tensor,
                         image_sizes: list[tuple[int, int]], per_level: list[int]) -> list[torch.Tensor]:
        """Flat logits ``[B*N, 1]`` and deltas ``[B*N, 4]`` on ``anchors`` -> per image proposals
        ``[Pi, 4]`` XYXY input pixels, clipped, filtered, after NMS (detached)."""
        boxes = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        proposals, _ = self.filter_proposals(boxes, objectness, image_sizes, per_level)
        return proposals

    def losses(self, anchors: list[torch.Tensor], objectness: torch.Tensor, deltas: torch.Tensor,
               gt_boxes: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``loss_rpn_cls`` and ``loss_rpn_loc`` of the flat head outputs against the GT boxes."""
        labels, matched = self.assign_targets_to_anchors(anchors, [{"boxes": b} for b in gt_boxes])
        regression_targets = self.box_coder.encode(matched, anchors)
        loss_cls, loss_loc = self.compute_loss(objectness, deltas, labels, regression_targets)
        return {"loss_rpn_cls": loss_cls, "loss_rpn_loc": loss_loc}

    def filter_proposals(self, proposals: torch.Tensor, objectness: torch.Tensor,
                         image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """torchvision's filtering (top-k per level, clip, NMS per level, top-k per image) with
        Detectron2's rules: only boxes with zero width or height after clipping are dropped
        (torchvision drops sides below 1e-3 px), and non-finite boxes or scores."""
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=proposals.device)
                            for i, n in enumerate(num_anchors_per_level)])
        top = self._get_top_n_idx(objectness, num_anchors_per_level)
        rows = torch.arange(num_images, device=proposals.device)[:, None]
        scores, boxes = objectness[rows, top].sigmoid(), proposals[rows, top]
        kept_boxes, kept_scores = [], []
        for b, s, lvl, size in zip(boxes, scores, levels[top], image_shapes):
            b, s = filter_image_proposals(b, s, lvl, size, self.nms_thresh, self.post_nms_top_n())
            kept_boxes.append(b)
            kept_scores.append(s)
        return kept_boxes, kept_scores

    @torch.no_grad()
    def proposals(self, images: ImageList, features: Sequence[torch.Tensor],
                  objectness: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Eval proposals from the head's raw outputs (the network/postprocessor cut, see modeling/export.py).

        ``features``: per level ``[B, C, Hl, Wl]`` (only shapes, dtype and device are read, for the
        anchors); ``objectness``: per level ``[B, A, Hl, Wl]`` logits; ``deltas``: per level
        ``[B, 4A, Hl, Wl]``. Returns per image ``[Pi, 4]`` XYXY input pixels, clipped, after NMS.
        """
        if self.training:
            raise RuntimeError("RPN.proposals is the eval path; in training call forward or predict with gt_boxes")
        return self.predict(images, features, objectness, deltas)[0]


def nonempty(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes ``[N, 4]`` XYXY with positive width and height (Detectron2's ``Boxes.nonempty()``)."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def filter_image_proposals(boxes: torch.Tensor, scores: torch.Tensor, levels: torch.Tensor,
                           image_size: tuple[int, int], nms_thresh: float,
                           post_nms_topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's proposals: clip to ``image_size`` (H, W), drop empty and non-finite boxes, NMS
    within each level, keep the ``post_nms_topk`` best. Returns ``(boxes, scores)`` by descending score."""
    boxes = box_ops.clip_boxes_to_image(boxes, image_size)
    keep = nonempty(boxes) & torch.isfinite(boxes).all(1) & torch.isfinite(scores)
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    keep = box_ops.batched_nms(boxes, scores, levels, nms_thresh)[:post_nms_topk]
    return boxes[keep], scores[keep]
