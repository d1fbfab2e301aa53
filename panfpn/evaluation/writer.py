"""Writing predictions as files the official tools read.

Panoptic: COCO-panoptic PNG per image + one JSON (thing segments carry their ``score``), in the
layout the COCO panoptic API, cityscapesscripts' panoptic evaluator and
:func:`panfpn.evaluation.pq.pq_compute` read: ``<out_dir>/<name>.json`` and the PNGs in
``<out_dir>/<name>/``. Semantic: one single-channel PNG of dataset category ids per image.

Files are named by image id (:func:`prediction_file_stem`), never by the input file's stem, so
two images can never share a file; a name that would be reused is an error, not an overwrite.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from panfpn.data.metadata import DatasetMetadata
from panfpn.utils.atomic import save_png_atomic, write_json_atomic
from panfpn.utils.errors import ConfigError
from panfpn.data.panoptic_io import id_to_rgb, segment_areas_boxes
from panfpn.evaluation.label_mapping import semantic_pixel_ids


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class PredictionNameError(ValueError):
    """An image id that gives no file name, or two that give one (a user's ids: ``''``, ``a/b`` and
    ``a_b``)."""


def prediction_file_stem(image_id: Any) -> str:
    """File stem for an image id: COCO int ids as 12 digits (COCO's own image file stems), string
    ids (Cityscapes ``<city>_<seq>_<frame>``) as they are, other characters replaced by ``_``."""
    if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
        return f"{int(image_id):012d}" if image_id >= 0 else str(int(image_id))
    stem = _UNSAFE.sub("_", str(image_id))
    if not stem or stem in (".", ".."):
        raise PredictionNameError(f"image id {image_id!r} gives no usable file name for its predictions: "
                                  f"give the image another id in the JSON")
    return stem


def _integer_map(values: torch.Tensor | np.ndarray, image_id: Any, what: str) -> np.ndarray:
    """``values`` as an integer ``[H, W]`` numpy array; a ValueError naming the image otherwise."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: never import it here
    if torch is not None and isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"image {image_id!r}: {what} must be an integer [H, W] array, "
                         f"got {values.dtype} {values.shape}")
    return values


class _NameRegistry:
    """Thread-safe record of written file names -> image id; a name reused by another image (or
    one image written twice) is an error naming both, never a silent overwrite."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._owner: dict[str, Any] = {}
        self._lock = threading.Lock()

    def claim(self, name: str, image_id: Any) -> None:
        with self._lock:
            if name in self._owner:
                other = self._owner[name]
                if other == image_id:
                    raise ValueError(f"image {image_id!r}: {self.what} {name} written twice")
                raise PredictionNameError(
                    f"image {image_id!r}: {self.what} {name} would overwrite the one of image {other!r} "
                    f"(files are named by image id, characters other than A-Z a-z 0-9 . _ - as _): "
                    f"give the two images distinct ids in the JSON")
            self._owner[name] = image_id


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
        self._names = _NameRegistry("prediction PNG")
        self._lock = threading.Lock()

    def add(self, image_id: Any, file_name: str, id_map: torch.Tensor | np.ndarray,
            segments: Sequence[Mapping[str, Any]], *, png_stem: str | None = None,
            record: bool = True) -> dict:
        """Write one image's PNG and (``record``) remember its annotation.

        Args:
            image_id: the dataset's image id (int or str).
            file_name: the input image's file name (the JSON's ``images`` entry).
            id_map: int ``[H, W]`` segment ids, 0 = void.
            segments: ``[{"id", "category_id", "score"?, ...}]`` with dataset category ids (see
                :func:`model_segments_to_dataset`); segments with no pixel are left out.
            png_stem: the PNG's stem; default :func:`prediction_file_stem` of ``image_id``.
            record: False: only write the PNG; the caller lists it later with :meth:`record`
                (after its other files for the image exist).

        Returns:
            The annotation for the JSON (``image_id``, ``file_name``, ``segments_info`` with
            ``id``, ``category_id``, ``area``, ``bbox`` [x, y, w, h], ``iscrowd`` = 0, and
            ``score`` where the segment has one).
        """
        id_map = _integer_map(id_map, image_id, "id_map")
        h, w = id_map.shape
        boxes = segment_areas_boxes(id_map)
        by_id = {int(s["id"]): s for s in segments}
        if len(by_id) != len(segments):
            repeated = sorted(i for i, n in Counter(int(s["id"]) for s in segments).items() if n > 1)
            raise ValueError(f"image {image_id!r}: segment ids {repeated} appear more than once in "
                             "the segments")
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
            info = {"id": seg_id, "category_id": int(seg["category_id"]), "area": area,
                    "bbox": bbox, "iscrowd": 0}
            if seg.get("score") is not None:
                info["score"] = float(seg["score"])
            segments_info.append(info)
        png_name = f"{png_stem if png_stem is not None else prediction_file_stem(image_id)}.png"
        self._names.claim(png_name, image_id)
        save_png_atomic(self.png_dir / png_name, id_to_rgb(id_map))
        ann = {"image_id": image_id, "file_name": png_name, "segments_info": segments_info}
        if record:
            self.record(ann, {"id": image_id, "file_name": file_name, "height": h, "width": w})
        return ann

    def record(self, annotation: Mapping[str, Any], image: Mapping[str, Any]) -> None:
        """List an image (its annotation and ``images`` entry) in the JSON; thread-safe."""
        with self._lock:
            self.annotations.append(dict(annotation))
            self.images.append(dict(image))

    def snapshot(self) -> tuple[list[dict], list[dict]]:
        """Copies of the images and annotations recorded so far (consistent under threads)."""
        with self._lock:
            return list(self.images), list(self.annotations)

    def write_json(self) -> Path:
        """Write the JSON (gathered from every rank to rank 0 under torch.distributed)."""
        images, annotations = self.snapshot()
        if "torch" in sys.modules and _is_multiprocess():  # no process group exists without torch
            from panfpn.utils.dist import all_gather_objects, is_main_process

            gathered = all_gather_objects((images, annotations))
            if not is_main_process():
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


def _is_multiprocess() -> bool:
    from panfpn.utils.dist import is_multiprocess

    return is_multiprocess()


class SemanticPredictionWriter:
    """Semantic predictions as single-channel PNGs, one per image, in the dataset's pixel ids
    (:func:`semantic_pixel_ids`): for Cityscapes its label ids, what cityscapesscripts'
    ``evalPixelLevelSemanticLabeling`` reads when it finds ``<city>_<seq>_<frame>.png`` for
    ``*_gtFine_labelIds.png``. uint8 PNGs when every id fits, uint16 otherwise.
    """

    def __init__(self, out_dir: str | os.PathLike, metadata: DatasetMetadata, *, void_id: int = 0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ids = semantic_pixel_ids(metadata, void_id=void_id)
        if min(ids) < 0 or max(ids) >= 1 << 16:  # a dataset numbering its categories 100000+
            raise ConfigError(f"eval.save_semantic: a semantic PNG holds values 0..65535, and the categories of "
                              f"{metadata.name!r} need {max(ids)} (PNG values {ids[:8]}{' ...' if len(ids) > 8 else ''}); "
                              f"set eval.save_semantic=false (the panoptic predictions name any id)")
        self.dtype = np.uint8 if max(ids) < 256 else np.uint16
        self.lut = np.asarray(ids, dtype=self.dtype)
        self._names = _NameRegistry("semantic PNG")

    def add(self, image_id: Any, sem_labels: torch.Tensor | np.ndarray,
            *, png_stem: str | None = None) -> Path:
        """Write ``sem_labels`` (int ``[H, W]`` semantic labels ``0..C-1``) as category ids."""
        labels = _integer_map(sem_labels, image_id, "semantic labels")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.lut)):
            raise ValueError(f"image {image_id!r}: semantic labels {labels.min()}..{labels.max()} "
                             f"outside 0..{len(self.lut) - 1}")
        name = f"{png_stem if png_stem is not None else prediction_file_stem(image_id)}.png"
        self._names.claim(name, image_id)
        return save_png_atomic(self.out_dir / name, self.lut[labels])
