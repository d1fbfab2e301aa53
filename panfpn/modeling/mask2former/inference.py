"""Panoptic, instance and semantic outputs of one image from its query predictions (mask
classification: no heuristic merge of two heads).

Panoptic (the official rules): queries whose best class is not "no object" and whose score exceeds
``object_mask_threshold`` are kept; each pixel goes to the kept query maximising score x mask
probability, and stays there only where that query's mask probability is >= 0.5. A query whose
won pixels (argmax only) are fewer than ``overlap_threshold`` of its own mask (prob >= 0.5) is
dropped (its pixels become void); stuff queries of one class merge into one segment. Segment ids
follow the order of the kept queries. Output: docs/interfaces.md section 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from panfpn.data.targets import masks_to_boxes
from panfpn.modeling.mask2former.classes import ClassSpace


@dataclass(frozen=True)
class InferenceConfig:
    """Thresholds of the panoptic rules; ``topk_instances``: detections kept per image."""

    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    topk_instances: int = 100


def resize_masks(mask_logits: torch.Tensor, padded: tuple[int, int], image_size: tuple[int, int],
                 orig_size: tuple[int, int]) -> torch.Tensor:
    """``[Q, h, w]`` logits at 1/4 of the padded input -> ``[Q, H0, W0]``: up to the padded size,
    crop the image, resize to its original size (bilinear, as the official postprocess)."""
    x = F.interpolate(mask_logits[None].float(), size=padded, mode="bilinear", align_corners=False)
    x = x[:, :, :image_size[0], :image_size[1]]
    return F.interpolate(x, size=tuple(orig_size), mode="bilinear", align_corners=False)[0]


def panoptic_inference(logits: torch.Tensor, masks: torch.Tensor, space: ClassSpace,
                       cfg: InferenceConfig) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``logits`` ``[Q, K+1]``, ``masks`` ``[Q, H, W]`` mask logits -> ``(id_map int32 [H, W], segments)``."""
    scores, labels = logits.float().softmax(-1).max(-1)
    keep = (labels != space.num_classes) & (scores > cfg.object_mask_threshold)
    h, w = masks.shape[-2:]
    id_map = torch.zeros((h, w), dtype=torch.int32, device=masks.device)
    if not bool(keep.any()):
        return id_map, []
    scores, labels, probs = scores[keep], labels[keep], masks[keep].float().sigmoid()
    owner = (scores[:, None, None] * probs).argmax(0)  # [H, W]
    inside = probs.gather(0, owner[None])[0] >= 0.5
    n = probs.shape[0]
    won = torch.bincount(owner.flatten(), minlength=n)
    own = (probs >= 0.5).flatten(1).sum(1)
    kept_px = torch.bincount(owner[inside], minlength=n)
    seg_of_query = torch.zeros(n + 1, dtype=torch.int32, device=masks.device)
    segments: list[dict[str, Any]] = []
    stuff_segment: dict[int, int] = {}
    for q, (nw, no, nk, c, s) in enumerate(zip(won.tolist(), own.tolist(), kept_px.tolist(),
                                               labels.tolist(), scores.tolist())):
        if nw == 0 or no == 0 or nk == 0 or nw / no < cfg.overlap_threshold:
            continue
        isthing = space.isthing[c]
        if not isthing and c in stuff_segment:
            seg_of_query[q] = stuff_segment[c]
            continue
        seg_id = len(segments) + 1
        seg_of_query[q] = seg_id
        if not isthing:
            stuff_segment[c] = seg_id
        segments.append({"id": seg_id, "isthing": isthing, "category": space.label[c],
                         "score": float(s) if isthing else None, "area": 0})
    id_map = torch.where(inside, seg_of_query[owner], id_map)
    areas = torch.bincount(id_map.flatten().long(), minlength=len(segments) + 1).tolist()
    for seg in segments:
        seg["area"] = int(areas[seg["id"]])
    return id_map, segments


def semantic_inference(logits: torch.Tensor, masks: torch.Tensor, space: ClassSpace,
                       num_sem_classes: int) -> torch.Tensor:
    """Semantic labels ``int64 [H, W]``: argmax over semantic labels of the summed class-probability
    x mask-probability maps (thing classes add into their semantic label)."""
    probs = logits.float().softmax(-1)[:, :-1]
    per_class = torch.einsum("qk,qhw->khw", probs, masks.float().sigmoid())
    sem = torch.zeros((num_sem_classes, *per_class.shape[-2:]), device=per_class.device)
    index = torch.as_tensor(space.sem_label, device=per_class.device)
    return sem.index_add_(0, index, per_class).argmax(0)


def instance_inference(logits: torch.Tensor, masks: torch.Tensor, space: ClassSpace,
                       cfg: InferenceConfig) -> dict[str, torch.Tensor]:
    """Top-k (query, class) pairs by class probability over all classes, then the thing pairs among
    them (official ``instance_inference`` with ``panoptic_on``: stuff pairs take top-k slots, so
    fewer than k instances may remain), rescored by the mean mask probability inside the mask;
    boxes from the masks; sorted by descending score."""
    probs = logits.float().softmax(-1)[:, :-1]
    is_thing = torch.as_tensor(space.isthing, device=probs.device)
    scores, flat = probs.flatten().topk(min(cfg.topk_instances, probs.numel()))
    queries, classes = flat // probs.shape[1], flat % probs.shape[1]
    thing = is_thing[classes]  # stuff classes never become instances
    scores, queries, classes = scores[thing], queries[thing], classes[thing]
    m = masks[queries].float()
    binary = m > 0
    mask_score = (m.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    scores = scores * mask_score
    order = scores.argsort(descending=True)
    labels = torch.as_tensor(space.label, device=probs.device)[classes]
    binary = binary[order]
    boxes = masks_to_boxes(binary).to(probs.device) * binary.flatten(1).any(1)[:, None]  # empty: zero box
    return {"boxes": boxes, "scores": scores[order],
            "labels": labels[order].long(), "masks": binary}
