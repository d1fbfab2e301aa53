"""The model's contiguous labels -> the dataset's category ids, as prediction files and the
official evaluators want them (panoptic segments, semantic PNG values)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from panfpn.data.metadata import DatasetMetadata

__all__ = ["model_segments_to_dataset", "semantic_pixel_ids"]


def model_segments_to_dataset(segments: Sequence[Mapping[str, Any]],
                              metadata: DatasetMetadata) -> list[dict]:
    """Model output segments (contiguous ids, docs/interfaces.md section 3) -> dataset ids.

    Args:
        segments: ``[{"id", "isthing", "category" (contiguous thing or semantic label),
            "score" (optional)}]``.

    Returns:
        ``[{"id", "category_id", "isthing", "score"?}]`` with dataset category ids.
    """
    out = []
    for seg in segments:
        entry = {"id": int(seg["id"]),
                 "category_id": metadata.segment_category_id(bool(seg["isthing"]),
                                                             int(seg["category"])),
                 "isthing": int(bool(seg["isthing"]))}
        if seg.get("score") is not None:
            entry["score"] = float(seg["score"])
        out.append(entry)
    return out


def semantic_pixel_ids(metadata: DatasetMetadata, *, void_id: int = 0) -> list[int]:
    """The PNG value of each semantic label: its dataset category id (COCO category ids,
    Cityscapes label ids), except Cityscapes train-id metadata (``use_train_id``), whose labels
    are written as their label ids too, since the official evaluator reads label ids only. The
    merged 'thing' label of ``stuff_plus_thing`` metadata (COCO) has no category: ``void_id``,
    or, when a category has that id (datasets numbering categories from 0), the largest category
    id + 1, so that no two labels share a value."""
    if void_id in metadata:
        void_id = max(c.id for c in metadata.categories) + 1
    ids = [void_id if c is None else int(c) for c in metadata.sem_label_to_category]
    if metadata.name == "cityscapes_panoptic_trainId":
        from panfpn.data.builtin_meta import cityscapes_panoptic_categories

        label_id = {c["name"]: c["id"] for c in cityscapes_panoptic_categories(use_train_id=False)}
        ids = [label_id[metadata.category(c).name] for c in ids]
    return ids
