"""The whole Mask2Former pipeline as one exportable module: decoded uint8 image in, the outputs of
:class:`~panfpn.deploy.pipeline.PanopticPipeline` (:data:`~panfpn.deploy.pipeline.OUTPUT_NAMES`, same
dtypes and layout) out, so the ONNX runner and ``predict.backend=onnxruntime`` run either.

:class:`Mask2FormerPipeline` wraps an eval-mode :class:`~panfpn.modeling.mask2former.Mask2Former` (its
own modules, no copies) and does with static tensor ops what :mod:`panfpn.modeling.mask2former.inference`
does eagerly (Python loops and boolean indexing there; fixed-size arrays here)::

    image uint8 [H0, W0, 3] -> test resize, normalise, pad (pipeline.preprocess_image)
      -> model.network -> the final layer's class logits [Q, K+1] and mask logits at 1/4
      -> mask logits up to the padded size, crop, resize to [H0, W0] (resize_masks)
      -> panoptic (kept queries, per-pixel owner, overlap test, stuff of one class merged),
         instances (top-k (query, thing class), mask-score rescoring, boxes from the masks),
         semantic (class x mask probabilities summed per semantic label, argmax)

Segment arrays have ``Q`` rows (a segment per query at most), the first ``num_segments`` valid, in id
order; stuff segments have the score :data:`~panfpn.deploy.merge_static.STUFF_SCORE` (eager: None).
Instance arrays have ``min(topk_instances, classes x Q)`` rows: the top-k (query, class) pairs, the
first ``num_instances`` (the thing pairs, what the eager model returns) valid, the stuff pairs after
them with score -1 and label -1. Batch 1; H0 and W0 are dynamic.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panfpn.deploy.merge_static import STUFF_SCORE
from panfpn.deploy.pipeline import crop_to_image, preprocess_image
from panfpn.deploy.resize import f64, pass_order, size_of
from panfpn.modeling.mask2former import Mask2Former

_ABSENT = 1 << 40  # the sort key of query slots that start no segment (after every id)


class Mask2FormerPipeline(nn.Module):
    """Image to panoptic result (see the module docstring), for ``torch.onnx.export``/``torch.export``.

    Args:
        model: the eval-mode model (its modules are used, not copied); thresholds from
            ``model.inference_config``.
        resize: ``(short_edge, max_size)`` of the test transform, or None (the image is used as is).
        thing_category_ids: dataset category id of each contiguous thing label.
        sem_category_ids: dataset category id of each semantic label (-1 for the 'thing' label).
        resize_order: the resize's pass order (``panfpn.deploy.resize.PASS_ORDERS``); default that of
            the installed Pillow, which the eager test transform uses.
    """

    def __init__(self, model: Mask2Former, *, resize: tuple[int, int] | None,
                 thing_category_ids: Sequence[int], sem_category_ids: Sequence[int],
                 resize_order: str | None = None) -> None:
        super().__init__()
        if model.training:
            raise ValueError("export an eval-mode model: call model.eval() first")
        self.model = model
        self.resize = resize
        self.resize_order = pass_order(resize_order)
        self.inference = model.inference_config
        space = model.space
        things, sems = [int(c) for c in thing_category_ids], [int(c) for c in sem_category_ids]
        self.num_queries = model.predictor.query_feat.num_embeddings
        self.max_detections = min(self.inference.topk_instances, space.num_classes * self.num_queries)
        self.num_classes = space.num_classes
        # per class, plus a last entry for 'no object': isthing, dataset category id of its segments,
        # dataset id of its instance label (the eager labels index the thing ids)
        self.register_buffer("class_isthing", torch.tensor([*space.isthing, False]))
        self.register_buffer("class_category_id", torch.tensor(
            [things[lab] if t else sems[lab] for t, lab in zip(space.isthing, space.label)] + [-1]))
        self.register_buffer("instance_category_id", torch.tensor(
            [things[lab] if lab < len(things) else -1 for lab in space.label]))
        # semantic label -> the classes summed into it, in class order (the eager index_add_)
        self.sem_classes = [[k for k, s in enumerate(space.sem_label) if s == label]
                            for label in range(len(sems))]
        self.eval()  # exporters restore the wrapper's mode on every submodule afterwards

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        net = self.model.network
        x, h, w = preprocess_image(image, self.resize, net.pixel_mean, net.pixel_std, net.memory_format,
                                   self.resize_order)
        logits, masks = net(x)
        masks = full_size_masks(masks[0], x, h, w, image)
        logits = logits[0].float()
        id_map, seg = self.panoptic(logits, masks)
        boxes, scores, labels = self.instances(logits, masks)
        num = (scores >= 0).sum()  # the thing rows (stuff rows: -1): a tensor in every mode
        sem = self.semantic(logits, masks)
        return (id_map, seg["id"], seg["category_id"], seg["isthing"], seg["score"], seg["area"], seg["count"],
                boxes, scores, labels, num, sem)

    def panoptic(self, logits: Tensor, masks: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """:func:`~panfpn.modeling.mask2former.inference.panoptic_inference` over all ``Q`` queries with
        the dropped ones masked: the id map int32 ``[H0, W0]`` and the segment columns (``Q`` rows)."""
        cfg = self.inference
        scores, labels = logits.softmax(-1).max(-1)
        keep = (labels != self.num_classes) & (scores > cfg.object_mask_threshold)
        probs = masks.sigmoid()
        # argmax over the kept queries only (in query order, as the kept subset): the others lose
        weighted = torch.where(keep[:, None, None], scores[:, None, None] * probs, -1.0)
        owner = weighted.argmax(0)
        inside = keep[owner] & (probs.gather(0, owner[None])[0] >= 0.5)
        q = keep.shape[0]
        flat = owner.reshape(-1)
        won = torch.zeros(q, dtype=torch.int64).scatter_add(0, flat, torch.ones_like(flat))
        kept_px = torch.zeros(q, dtype=torch.int64).scatter_add(0, flat, inside.reshape(-1).long())
        own = (probs >= 0.5).flatten(1).sum(1)
        ratio = won.double() / torch.maximum(own, torch.ones_like(own)).double()  # Python's division
        valid = keep & (won > 0) & (own > 0) & (kept_px > 0) & (ratio >= f64(cfg.overlap_threshold))
        isthing = self.class_isthing[labels]
        seg_of_query, new, new_id = segment_ids(valid, isthing, labels)
        id_map = torch.where(inside, seg_of_query[owner], 0).to(torch.int32)
        ids = id_map.reshape(-1).long()
        areas = torch.zeros(q + 1, dtype=torch.int64).scatter_add(0, ids, torch.ones_like(ids))
        columns = {
            "id": new_id.to(torch.int32),
            "category_id": torch.where(new, self.class_category_id[labels], -1),
            "isthing": new & isthing,
            "score": torch.where(new, torch.where(isthing, scores, STUFF_SCORE), 0.0),
            "area": torch.where(new, areas[new_id], 0),
        }
        order = torch.sort(torch.where(new, new_id, _ABSENT)).indices
        seg = {name: column[order] for name, column in columns.items()}
        seg["count"] = new.long().sum()
        return id_map, seg

    def instances(self, logits: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`~panfpn.modeling.mask2former.inference.instance_inference`: ``(boxes [D, 4] XYXY,
        scores [D], dataset category ids [D])`` by descending score; the top-k stuff pairs last (score
        and label -1)."""
        probs = logits.softmax(-1)[:, :-1]
        scores, flat = probs.flatten().topk(self.max_detections)
        queries, classes = flat // self.num_classes, flat % self.num_classes
        m = masks.index_select(0, queries)
        binary = m > 0
        mask_score = (m.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1).float() + 1e-6)
        thing = self.class_isthing[classes]  # stuff never becomes an instance
        scores = torch.where(thing, scores * mask_score, -1.0)
        order = scores.argsort(descending=True)
        boxes = mask_boxes(binary.index_select(0, order))
        labels = torch.where(thing, self.instance_category_id[classes], -1)
        return boxes, scores[order], labels[order]

    def semantic(self, logits: Tensor, masks: Tensor) -> Tensor:
        """:func:`~panfpn.modeling.mask2former.inference.semantic_inference`: int64 ``[H0, W0]``; each
        label's classes are summed one by one in class order, as the eager ``index_add_``."""
        probs = logits.softmax(-1)[:, :-1]
        per_class = torch.einsum("qk,qhw->khw", probs, masks.sigmoid())
        rows = []
        for classes in self.sem_classes:
            if not classes:
                rows.append(torch.zeros_like(per_class[0]))
                continue
            acc = per_class[classes[0]]
            for k in classes[1:]:
                acc = acc + per_class[k]
            rows.append(acc)
        return torch.stack(rows).argmax(0)


def segment_ids(valid: Tensor, isthing: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Segment ids in query order: each valid thing query and the first valid stuff query of each
    class start a segment; later stuff queries of that class join it. Returns ``(seg_of_query [Q + 1]``
    (0: none; a last 0 entry), ``new`` bool ``[Q]`` (starts a segment), ``new_id [Q]`` (its id, else 0))."""
    q = valid.shape[0]
    stuff = valid & ~isthing
    same = stuff[None, :] & stuff[:, None] & (labels[None, :] == labels[:, None])  # [q, p]
    index = torch.arange(q)
    first = torch.where(stuff, same.to(torch.uint8).argmax(1), index)  # the first p of q's class
    new = valid & (first == index)
    new_id = torch.cumsum(new.long(), 0) * new
    seg_of_query = torch.where(valid, new_id[first], 0)
    return seg_of_query, new, new_id


def full_size_masks(mask_logits: Tensor, x: Tensor, h: Tensor, w: Tensor, image: Tensor) -> Tensor:
    """:func:`~panfpn.modeling.mask2former.inference.resize_masks`: ``[Q, h/4, w/4]`` logits of the padded
    input ``x`` -> ``[Q, H0, W0]``: up to the padded size, crop the resized image, up to the input's size."""
    up = F.interpolate(mask_logits[None].float(), size=(x.shape[2], x.shape[3]), mode="bilinear",
                       align_corners=False)
    return crop_to_image(up, h, w, image)[0]


def mask_boxes(binary: Tensor) -> Tensor:
    """:func:`panfpn.data.targets.masks_to_boxes` (XYXY, exclusive x2/y2) of bool ``[D, H, W]``, a
    zero box for an empty mask, as the eager instances; sizes stay dynamic (no Python ints)."""
    rows, cols = binary.any(2), binary.any(1)
    y0, x0 = rows.to(torch.uint8).argmax(1), cols.to(torch.uint8).argmax(1)
    # the last row/column inside + 1: the largest of (index + 1) over the inside ones
    y1 = (rows.long() * torch.arange(1, size_of(binary, 1) + 1)).amax(1)
    x1 = (cols.long() * torch.arange(1, size_of(binary, 2) + 1)).amax(1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return boxes * rows.any(1)[:, None]
