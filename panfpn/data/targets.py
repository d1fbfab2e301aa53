"""Training targets derived from a panoptic id map and its segments, nothing else.

Deriving targets after the geometric transforms (which move the id map with nearest
interpolation) keeps masks, boxes and the semantic map consistent by construction.
"""

from __future__ import annotations

from typing import Sequence

import torch

from panfpn.data.metadata import IGNORE_LABEL, DatasetMetadata


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of binary masks: the instance targets' boxes, from the masks of the transformed
    id map that the mask targets need anyway (torch, no copy to numpy). Boxes of the segments of
    an id map for files are :func:`panfpn.data.panoptic_io.segment_areas_boxes` (the same boxes,
    as COCO ``[x, y, w, h]``).

    masks: ``[N, H, W]`` (any dtype, nonzero = inside), every mask non-empty.
    Returns float32 ``[N, 4]`` XYXY with exclusive x2/y2 (``max + 1``).
    """
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    rows = masks.any(dim=2).to(torch.uint8)  # [N, H]
    cols = masks.any(dim=1).to(torch.uint8)  # [N, W]
    # argmax returns the first maximal index, so the flipped argmax finds the last one.
    y0 = rows.argmax(dim=1)
    y1 = h - rows.flip(1).argmax(dim=1)
    x0 = cols.argmax(dim=1)
    x1 = w - cols.flip(1).argmax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)


def _thing_targets(id_map: torch.Tensor, seg_ids: list[int], labels: list[int]) -> dict:
    h, w = id_map.shape
    if not seg_ids:
        return {"boxes": torch.zeros((0, 4), dtype=torch.float32),
                "labels": torch.zeros((0,), dtype=torch.int64),
                "masks": torch.zeros((0, h, w), dtype=torch.uint8)}
    ids = torch.tensor(seg_ids, dtype=id_map.dtype)
    masks = id_map[None] == ids[:, None, None]  # [K, H, W]
    # A crop or a downscale can remove a segment entirely; such instances are dropped.
    keep = masks.flatten(1).any(dim=1)
    masks = masks[keep]
    return {"boxes": masks_to_boxes(masks),
            "labels": torch.tensor(labels, dtype=torch.int64)[keep],
            "masks": masks.to(torch.uint8)}


def semantic_map(id_map: torch.Tensor, segments: Sequence[dict], metadata: DatasetMetadata) -> torch.Tensor:
    """int64 ``[H, W]`` semantic labels of an id map; void and unlisted ids -> 255.

    Crowd segments take their category's semantic label like any other segment.
    """
    if not segments:
        return torch.full(id_map.shape, IGNORE_LABEL, dtype=torch.int64)
    lut = metadata.sem_lut()
    pairs = sorted((int(s["id"]), lut[int(s["category_id"])]) for s in segments)
    ids = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
    labels = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    flat = id_map.to(torch.int64)
    idx = torch.searchsorted(ids, flat).clamp_(max=len(ids) - 1)
    hit = ids[idx] == flat
    return torch.where(hit, labels[idx], torch.full_like(flat, IGNORE_LABEL))


def panoptic_targets(id_map: torch.Tensor, segments: Sequence[dict],
                     metadata: DatasetMetadata) -> dict:
    """Instance and semantic targets of one (already transformed) image.

    id_map: int ``[H, W]`` segment ids, 0 = void. segments: COCO-panoptic ``segments_info``.
    Returns ``{"instances": ..., "sem_seg": int64 [H, W]}``; instances is a dict of ``boxes``
    float32 ``[N, 4]`` XYXY, ``labels`` int64 ``[N]`` contiguous thing labels and ``masks`` uint8
    ``[N, H, W]`` of the non-crowd things, in the order of ``segments``. Crowd regions are no
    instance target (as in Detectron2); in ``sem_seg`` they carry their category's label.
    """
    inst_ids, inst_labels = [], []
    for s in segments:
        cat = metadata.category(int(s["category_id"]))
        if cat.isthing and not s.get("iscrowd", 0):
            inst_ids.append(int(s["id"]))
            inst_labels.append(metadata.thing_label(cat.id))
    return {"instances": _thing_targets(id_map, inst_ids, inst_labels),
            "sem_seg": semantic_map(id_map, segments, metadata)}
