"""Writing panoptic predictions as COCO-panoptic files (PNG per image + one JSON).

The layout is the one the COCO panoptic API and :func:`panfpn.evaluation.pq.pq_compute` read:
``<out_dir>/<name>.json`` and the PNGs in ``<out_dir>/<name>/``, so
``pq_compute(gt_json, "<out_dir>/<name>.json")`` finds the folder by itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from panfpn.data.metadata import DatasetMetadata
from panfpn.utils.atomic import save_image_atomic, write_json_atomic
from panfpn.evaluation.id_runs import runs_of_ids, segment_boxes
from panfpn.data.panoptic_io import id_to_rgb


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


class PanopticPredictionWriter:
    """Accumulates predictions and writes COCO-panoptic PNGs and JSON, each file atomically.

    Args:
        out_dir: output directory (created).
        metadata: the dataset's :class:`DatasetMetadata` or its COCO category dicts.
        name: JSON file stem and PNG folder name.
    """

    def __init__(self, out_dir: str | os.PathLike,
                 metadata: DatasetMetadata | Sequence[Mapping[str, Any]], *,
                 name: str = "panoptic_pred"):
        if not isinstance(metadata, DatasetMetadata):
            metadata = DatasetMetadata.from_coco_categories(metadata)
        self.metadata = metadata
        self.out_dir = Path(out_dir)
        self.png_dir = self.out_dir / name
        self.json_path = self.out_dir / f"{name}.json"
        self.png_dir.mkdir(parents=True, exist_ok=True)
        self.annotations: list[dict] = []
        self.images: list[dict] = []

    def add(self, image_id: Any, file_name: str, id_map: torch.Tensor | np.ndarray,
            segments: Sequence[Mapping[str, Any]]) -> dict:
        """Write one image's PNG and remember its annotation.

        Args:
            image_id: the dataset's image id (int or str).
            file_name: the input image's file name; the PNG is ``<stem>.png``.
            id_map: int ``[H, W]`` segment ids, 0 = void.
            segments: ``[{"id", "category_id", ...}]`` with dataset category ids (see
                :func:`model_segments_to_dataset`); segments with no pixel are left out.

        Returns:
            The annotation written to the JSON (``image_id``, ``file_name``, ``segments_info``
            with ``id``, ``category_id``, ``area``, ``bbox`` [x, y, w, h], ``iscrowd`` = 0).
        """
        if isinstance(id_map, torch.Tensor):
            id_map = id_map.detach().cpu().numpy()
        id_map = np.asarray(id_map)
        if id_map.ndim != 2 or not np.issubdtype(id_map.dtype, np.integer):
            raise ValueError(f"image {image_id!r}: id_map must be an integer [H, W] array, "
                             f"got {id_map.dtype} {id_map.shape}")
        h, w = id_map.shape
        boxes = segment_boxes(runs_of_ids(id_map.reshape(-1)), w)
        by_id = {int(s["id"]): s for s in segments}
        unknown = sorted(set(boxes) - set(by_id) - {0})
        if unknown:
            raise ValueError(f"image {image_id!r}: ids {unknown} are in the id map but not in "
                             "the segments")
        segments_info = []
        for seg_id, seg in by_id.items():
            if seg_id == 0:
                raise ValueError(f"image {image_id!r}: segment id 0 is reserved for void")
            if seg["category_id"] not in self.metadata:
                raise ValueError(f"image {image_id!r}: segment {seg_id} has unknown category_id "
                                 f"{seg['category_id']}")
            if seg_id not in boxes:
                continue
            area, bbox = boxes[seg_id]
            segments_info.append({"id": seg_id, "category_id": int(seg["category_id"]),
                                  "area": area, "bbox": bbox, "iscrowd": 0})
        png_name = f"{Path(file_name).stem}.png"
        rgb = id_to_rgb(id_map)
        save_image_atomic(self.png_dir / png_name, rgb)
        ann = {"image_id": image_id, "file_name": png_name, "segments_info": segments_info}
        self.annotations.append(ann)
        self.images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        return ann

    def add_model_output(self, image_id: Any, file_name: str, output: Mapping[str, Any]) -> dict:
        """Write a model's eval output for one image (its ``"panoptic"`` entry)."""
        id_map, segments = output["panoptic"]
        return self.add(image_id, file_name, id_map,
                        model_segments_to_dataset(segments, self.metadata))

    def write_json(self) -> Path:
        """Write the JSON (gathered from every rank to rank 0 under torch.distributed)."""
        images, annotations = self.images, self.annotations
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (images, annotations))
            if dist.get_rank() != 0:
                return self.json_path
            images = [i for part in gathered for i in part[0]]
            annotations = [a for part in gathered for a in part[1]]
        data = {"images": images, "annotations": annotations,
                "categories": self.metadata.to_coco_categories()}
        write_json_atomic(self.json_path, data)
        return self.json_path

    def __enter__(self) -> "PanopticPredictionWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.write_json()
