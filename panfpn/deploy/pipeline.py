"""The whole panoptic pipeline as one exportable module: decoded uint8 image in, panoptic result out.

:class:`PanopticPipeline` wraps an eval-mode :class:`~panfpn.modeling.panoptic_fpn.PanopticFPN` (its
own modules, no copies) and does in tensor ops what the eager path does around it::

    image uint8 [H0, W0, 3] RGB
      -> test resize (shortest edge, Pillow's uint8 bilinear bit for bit: deploy/resize.py)
      -> normalise, zero padding to a multiple of 32 -> model.network (backbone, FPN, heads)
      -> proposals (top-k per level, NMS per level), box head, per-class NMS, mask head
      -> boxes to the input's size, semantic resize + argmax, mask pasting and static merge inside
         the boxes (full-size masks under torch.export: see PanopticPipeline.merged)
    outputs (OUTPUT_NAMES): the id map [H0, W0], the segments as [K + S] arrays with a count,
      the instances as [K] arrays with a count, the semantic labels [H0, W0]

``K`` is the box head's ``detections_per_image``; ``S`` the number of semantic classes. Category
ids are the dataset's (tables from the metadata). Batch 1; H0 and W0 are dynamic.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panfpn.data.collate import SIZE_DIVISIBILITY
from panfpn.deploy import static_ops as ops
from panfpn.deploy.merge_static import merge_in_boxes, merge_static
from panfpn.deploy.resize import f64, pass_order, resize_uint8, shortest_edge_size, size_of, unbacked_size
from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.panoptic_fpn.network import split_outputs
from panfpn.modeling.panoptic_fpn import PanopticFPN
from panfpn.modeling.panoptic_fpn.postprocess import _interp_weights

INPUT_NAME = "image"
OUTPUT_NAMES = ("panoptic", "segments_id", "segments_category_id", "segments_isthing", "segments_score",
                "segments_area", "num_segments", "boxes", "scores", "labels", "num_instances", "sem_seg")


class PanopticPipeline(nn.Module):
    """Image to panoptic result (see the module docstring), for ``torch.onnx.export``/``torch.export``.

    Args:
        model: the eval-mode model (its modules are used, not copied).
        resize: ``(short_edge, max_size)`` of the test transform, or None (the image is used as is).
        thing_category_ids: dataset category id of each contiguous thing label.
        sem_category_ids: dataset category id of each semantic label (-1 for the 'thing' label).
        merge: the merge rules; default the model's.
        resize_order: the resize's pass order (``panfpn.deploy.resize.PASS_ORDERS``); default that of
            the installed Pillow, which the eager test transform uses.
    """

    def __init__(self, model: PanopticFPN, *, resize: tuple[int, int] | None,
                 thing_category_ids: Sequence[int], sem_category_ids: Sequence[int],
                 merge: MergeThresholds | None = None, resize_order: str | None = None) -> None:
        super().__init__()
        if model.training:
            raise ValueError("export an eval-mode model: call model.eval() first")
        self.model = model
        self.resize = resize
        self.resize_order = pass_order(resize_order)
        self.merge = merge if merge is not None else model.merge_thresholds
        self.register_buffer("thing_category_ids", torch.tensor([int(c) for c in thing_category_ids]))
        self.register_buffer("sem_category_ids", torch.tensor([int(c) for c in sem_category_ids]))
        self.max_detections = model.roi_heads.box_head.test.detections_per_image
        self.eval()  # exporters restore the wrapper's mode on every submodule afterwards

    def preprocess(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """uint8 ``[H0, W0, 3]`` -> (normalised padded ``[1, 3, Hp, Wp]``, resized H, W as int64 scalars)."""
        return preprocess_image(image, self.resize, self.model.pixel_mean, self.model.pixel_std,
                                self.model.memory_format, self.resize_order)

    def detect(self, outputs: Sequence[Tensor], h: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Network outputs -> detections ``(boxes [D, 4] input pixels, scores, labels, mask_probs)``."""
        features, _, objectness, deltas = split_outputs(outputs)
        rpn, roi = self.model.rpn, self.model.roi_heads
        maps = list(features.values())
        grid = [list(f.shape[-2:]) for f in maps]
        strides = [[torch.tensor(s), torch.tensor(s)] for s in rpn.anchor_generator.strides]
        rpn.anchor_generator.set_cell_anchors(maps[0].dtype, maps[0].device)
        anchors = rpn.anchor_generator.grid_anchors(grid, strides)
        boxes, logits, levels = ops.level_proposals(objectness, deltas, anchors, rpn.box_coder,
                                                    rpn.pre_nms_top_n())
        proposals = ops.filter_proposals(boxes, logits, levels, h, w, len(maps), rpn.nms_thresh,
                                         rpn.post_nms_top_n())
        return self.box_predictions([features[f"p{l}"] for l in roi.box_head.pooler.levels], proposals, h, w)

    def box_predictions(self, maps: list[Tensor], proposals: Tensor, h: Tensor,
                        w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`BoxHead.predict` and the mask head on one image's proposals."""
        box_head, mask_head = self.model.roi_heads.box_head, self.model.roi_heads.mask_head
        x = box_head.fcs(ops.multilevel_roi_align(maps, proposals, box_head.pooler))
        class_logits, box_deltas = box_head.cls_score(x), box_head.bbox_pred(x)
        k = box_head.num_classes
        scores = F.softmax(class_logits.float(), dim=-1)[:, :k]
        boxes = ops.clip_boxes(box_head.box_coder.decode(box_deltas, proposals).view(-1, k, 4), h, w)
        valid = torch.isfinite(boxes).all(dim=-1) & (scores > box_head.test.score_thresh)
        roi_index, cls = torch.nonzero(valid, as_tuple=True)
        b, s = boxes[roi_index, cls], scores[roi_index, cls]
        keep = ops.class_nms(b, s, cls, box_head.test.nms_thresh, k)[: self.max_detections]
        b, s, cls = b[keep], s[keep], cls[keep]
        pooled = ops.multilevel_roi_align(maps, b, mask_head.pooler)
        mask_logits = mask_head.predictor(F.relu(mask_head.deconv(mask_head.convs(pooled))))
        probs = mask_logits[torch.arange(cls.shape[0]), cls].float().sigmoid()
        return b, s, cls, probs

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        x, h, w = self.preprocess(image)
        outputs = self.model.network(x)
        boxes, scores, labels, probs = self.detect(outputs, h, w)
        h0, w0 = size_of(image, 0), size_of(image, 1)
        scale = torch.cat([f64(w0) / f64(w), f64(h0) / f64(h)]).float()  # float64 ratios, as eager
        boxes = ops.clip_boxes(boxes * scale.repeat(2), h0, w0)
        sem = sem_argmax(split_outputs(outputs)[1], h, w, image)
        return self.merged(probs, boxes, scores, labels, sem, image)

    def merged(self, probs: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor, sem: Tensor,
               image: Tensor) -> tuple[Tensor, ...]:
        """Pad the detections to ``K``, paste, merge, and order the outputs as :data:`OUTPUT_NAMES`.

        The ONNX trace (and the module run eagerly) pastes each mask inside its box and merges box
        by box (:func:`paste_in_boxes`, :func:`merge_in_boxes`); ``torch.export`` pastes full-size
        masks (:func:`merge_static`: crop sizes would be data-dependent sizes there). Same outputs."""
        k = self.max_detections
        first = torch.arange(k)  # the first K rows (index_select: no trace-time decision on D = 0)
        probs = torch.cat([probs, probs.new_zeros((k, *probs.shape[1:]))]).index_select(0, first)  # padding: empty
        scores = torch.cat([scores, torch.full((k,), -1.0)]).index_select(0, first)
        labels = torch.cat([labels, torch.zeros((k,), dtype=labels.dtype)]).index_select(0, first)
        boxes = torch.cat([boxes, torch.zeros((k, 4))]).index_select(0, first)
        num = (scores >= 0).sum()  # a tensor in every mode (detection scores are probabilities)
        rules = {"thing_sem_labels": self.model.thing_sem_labels,
                 "num_sem_classes": self.sem_category_ids.shape[0], "merge": self.merge}
        if torch.compiler.is_exporting():
            id_map, seg = merge_static(paste_masks(probs, boxes, image), scores, labels, sem, **rules)
        else:
            id_map, seg = merge_in_boxes(*paste_in_boxes(probs, boxes, image), scores, labels, sem, **rules)
        table = torch.cat([self.thing_category_ids, self.sem_category_ids])
        offset = self.thing_category_ids.shape[0]
        # both branches are evaluated: each index is clamped into the table (COCO: thing label 79 + 80
        # would be out of range in the stuff branch)
        last = table.shape[0] - 1
        category_id = torch.where(seg["isthing"], table[seg["category"].clamp(0, last)],
                                  table[(seg["category"] + offset).clamp(0, last)])
        category_id = torch.where(seg["id"] > 0, category_id, -1)
        category = torch.where(torch.arange(k) < num, self.thing_category_ids[labels], -1)  # -1: padding
        return (id_map, seg["id"], category_id, seg["isthing"], seg["score"], seg["area"], seg["count"],
                boxes, scores, category, num, sem)


def preprocess_image(image: Tensor, resize: tuple[int, int] | None, pixel_mean: Tensor, pixel_std: Tensor,
                     memory_format: torch.memory_format = torch.contiguous_format,
                     resize_order: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 ``[H0, W0, 3]`` -> (normalised ``[1, 3, Hp, Wp]`` zero-padded to a multiple of 32, resized
    H, W): the eager test resize (passes in ``resize_order``, default the installed Pillow's),
    normalisation and collate padding, shared by every pipeline."""
    chw = image.permute(2, 0, 1)
    h, w = size_of(image, 0), size_of(image, 1)
    if resize is not None:
        h, w = shortest_edge_size(h, w, *resize)
    if isinstance(h, torch.SymInt):  # torch.export: see unbacked_size
        largest = max(resize) if resize is not None else None
        h, w = unbacked_size(h, largest), unbacked_size(w, largest)
        if resize is None:  # the image's own rows and columns, with the sizes' new symbols
            chw = chw.index_select(1, torch.arange(h)).index_select(2, torch.arange(w))
    x = resize_uint8(chw, h, w, resize_order).float() if resize is not None else chw.float()
    x = (x[None] - pixel_mean) / pixel_std
    pad_h, pad_w = (-h) % SIZE_DIVISIBILITY, (-w) % SIZE_DIVISIBILITY
    if isinstance(h, torch.SymInt):  # the padded size as one symbol too
        pad_h, pad_w = unbacked_size(h + pad_h) - h, unbacked_size(w + pad_w) - w
    x = F.pad(x, (0, pad_w, 0, pad_h))  # no size-specific branch: a pad of 0 or 1 is a pad too
    return x.contiguous(memory_format=memory_format), h, w  # the eager layout


def paste_masks(probs: Tensor, boxes: Tensor, image: Tensor) -> Tensor:
    """``[D, M, M]`` mask probabilities in their boxes -> bool ``[D, H0, W0]`` (``>= 0.5``), with the
    weights of :func:`panfpn.modeling.panoptic_fpn.postprocess.paste_masks_binary` over the whole image."""
    size = probs.shape[-1]
    wy = _interp_weights(boxes[:, 1], boxes[:, 3], image.shape[0], size)
    wx = _interp_weights(boxes[:, 0], boxes[:, 2], image.shape[1], size)
    return (wy @ probs @ wx.transpose(1, 2)) >= 0.5


def paste_in_boxes(probs: Tensor, boxes: Tensor, image: Tensor) -> tuple[list[Tensor], Tensor]:
    """:func:`paste_masks` inside each box: the bool crops and their spans ``[K, 4]`` (first and
    one-past-last row, then column, its bilinear weights reach; all 0 for an empty mask), as
    :func:`panfpn.modeling.panoptic_fpn.postprocess.paste_masks_binary` pastes them eagerly."""
    size = probs.shape[-1]
    wy = _interp_weights(boxes[:, 1], boxes[:, 3], image.shape[0], size)
    wx = _interp_weights(boxes[:, 0], boxes[:, 2], image.shape[1], size)
    spans = torch.cat([weight_span(wy), weight_span(wx)], 1)
    empty = (spans[:, 1] <= spans[:, 0]) | (spans[:, 3] <= spans[:, 2])
    spans = torch.where(empty[:, None], 0, spans)
    crops = [wy[i, y0:y1] @ probs[i] @ wx[i, x0:x1].T >= 0.5 for i, (y0, y1, x0, x1) in enumerate(spans)]
    return crops, spans


def weight_span(weights: Tensor) -> Tensor:
    """Bilinear weights ``[K, L, M]`` -> int64 ``[K, 2]``: per mask the first and one-past-last of
    the ``L`` output pixels with a nonzero weight (``(0, 0)`` for none)."""
    reach = weights.amax(2) > 0
    index = torch.arange(reach.shape[1])
    first = torch.where(reach, index, 1 << 40).amin(1)  # a constant bound: no trace-time length
    last = torch.where(reach, index + 1, 0).amax(1)
    return torch.where(reach.any(1)[:, None], torch.stack([first, last], 1), 0)


def crop_to_image(maps: Tensor, h: Tensor, w: Tensor, image: Tensor) -> Tensor:
    """``[B, C, Hp, Wp]`` maps over the padded input -> float ``[B, C, H0, W0]``: the resized image's
    ``h x w`` corner, bilinearly resized to the input image's size (the eager postprocessors' step)."""
    # index_select, not slicing: a slice may be the whole axis (no padding), which torch.export would
    # otherwise decide once at trace time
    cropped = maps.index_select(2, torch.arange(h)).index_select(3, torch.arange(w)).float()
    return F.interpolate(cropped, size=(image.shape[0], image.shape[1]), mode="bilinear", align_corners=False)


def sem_argmax(sem_logits: Tensor, h: Tensor, w: Tensor, image: Tensor) -> Tensor:
    """Semantic logits of the padded input -> int64 ``[H0, W0]``: crop, bilinear resize, argmax (before
    dropping the batch axis: indexing ``[0]`` first copies the ``[S, H0, W0]`` float32 logits in ONNX)."""
    return crop_to_image(sem_logits, h, w, image).argmax(1)[0]
