"""PanopticDataset: any COCO-panoptic dataset (JSON + id PNGs + images) as training samples.

Reads the COCO 2017 layout and the output of cityscapesscripts' ``createPanopticImgs`` as is
(label ids or train ids, string image ids, images under ``<city>/`` subfolders). Every target is
derived from the PNG and the JSON alone; the sample format is docs/interfaces.md section 1.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from panfpn.data.metadata import DatasetMetadata, SemSegMode
from panfpn.data.panoptic_io import load_json, read_id_png, read_rgb_image
from panfpn.data.targets import panoptic_targets

logger = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class _Record:
    image_id: int | str
    file_name: str  # image file name from the JSON's image entry
    png_name: str  # annotation file name
    segments: tuple[dict, ...]


class PanopticDataset(Dataset):
    """COCO-panoptic dataset.

    Args:
        json_file: COCO-panoptic JSON (``images``, ``annotations`` with ``segments_info``,
            ``categories``).
        image_root: folder of the images; an image's ``file_name`` is looked up there, then in
            the subfolder named by its prefix before the first ``_`` (Cityscapes' city folders),
            also with createPanopticImgs' ``_gtFine_leftImg8bit`` corrected to ``_leftImg8bit``.
        panoptic_root: folder of the id PNGs named by the annotations' ``file_name``.
        metadata: categories and contiguous id spaces; default: the JSON's ``categories``.
        transforms: joint ``(image, id_map) -> (image, id_map)`` transform (see transforms.py).
        is_train: eval datasets (False) also return ``gt_panoptic`` and ``segments_info``.
        sem_seg_mode: semantic label space when ``metadata`` is taken from the JSON
            (default ``"stuff_plus_thing"``).
        filter_empty: drop images without a non-crowd thing segment (Detectron2's
            ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``, on for training there): they give the
            instance head nothing to learn. The count dropped is logged.
    """

    def __init__(self, json_file: str | os.PathLike, image_root: str | os.PathLike,
                 panoptic_root: str | os.PathLike, *, metadata: DatasetMetadata | None = None,
                 transforms: Transform | None = None, is_train: bool = True,
                 sem_seg_mode: SemSegMode | None = None, filter_empty: bool = False) -> None:
        self.json_file = Path(json_file)
        self.image_root = Path(image_root)
        self.panoptic_root = Path(panoptic_root)
        self.transforms = transforms
        self.is_train = is_train
        data = load_json(self.json_file)
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{self.json_file}: missing top-level key {key!r} "
                                 f"(not a COCO-panoptic annotation file?)")
        if metadata is None:
            metadata = DatasetMetadata.from_coco_categories(
                data["categories"], sem_seg_mode=sem_seg_mode or "stuff_plus_thing",
                name=self.json_file.stem)
        elif sem_seg_mode is not None and sem_seg_mode != metadata.sem_seg_mode:
            raise ValueError(f"sem_seg_mode={sem_seg_mode!r} contradicts the given metadata's "
                             f"{metadata.sem_seg_mode!r}")
        self.metadata = metadata
        self.records = self._parse(data)
        if filter_empty:
            self.records = self._drop_without_things(self.records)

    def _drop_without_things(self, records: list[_Record]) -> list[_Record]:
        things = set(self.metadata.thing_ids)
        kept = [r for r in records
                if any(s["category_id"] in things and not s.get("iscrowd", 0) for s in r.segments)]
        if not kept:
            raise ValueError(f"{self.json_file}: no image has a non-crowd thing segment, so "
                             f"filter_empty would leave nothing to train on")
        if len(kept) < len(records):
            logger.info("%s: dropped %d of %d images without non-crowd thing segments "
                        "(filter_empty=true)", self.json_file, len(records) - len(kept), len(records))
        return kept

    def _parse(self, data: dict) -> list[_Record]:
        images = {}
        for img in data["images"]:
            images[img["id"]] = img
        records = []
        for ann in data["annotations"]:
            image_id = ann["image_id"]
            if image_id not in images:
                raise ValueError(f"{self.json_file}: annotation {ann.get('file_name')!r} refers to "
                                 f"image id {image_id!r}, which has no entry in 'images'")
            seen = set()
            for seg in ann["segments_info"]:
                if seg["category_id"] not in self.metadata:
                    raise ValueError(f"{self.json_file}: image id {image_id!r} segment {seg['id']} "
                                     f"has unknown category id {seg['category_id']}")
                if seg["id"] in seen or seg["id"] == 0:
                    raise ValueError(f"{self.json_file}: image id {image_id!r} has "
                                     f"{'duplicate' if seg['id'] else 'void (0)'} segment id {seg['id']}")
                seen.add(seg["id"])
            records.append(_Record(image_id, images[image_id]["file_name"], ann["file_name"],
                                   tuple(ann["segments_info"])))
        missing = set(images) - {r.image_id for r in records}
        if missing:
            some = sorted(map(str, missing))[:5]
            raise ValueError(f"{self.json_file}: {len(missing)} image(s) have no annotation, "
                             f"e.g. image ids {some}")
        return records

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        """Path of the image of sample ``index`` (raises FileNotFoundError naming the id)."""
        rec = self.records[index]
        candidates = [self.image_root / rec.file_name]
        name = Path(rec.file_name).name
        # createPanopticImgs names the image '<frame>_gtFine_leftImg8bit.png' while the file on
        # disk is '<frame>_leftImg8bit.png', under a folder named by the city prefix.
        names = [name] + ([name.replace("_gtFine_leftImg8bit", "_leftImg8bit")]
                          if "_gtFine_leftImg8bit" in name else [])
        for n in names:
            if n != name:
                candidates.append(self.image_root / n)
            if "_" in n:
                candidates.append(self.image_root / n.split("_")[0] / n)
        for path in candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(f"image of image id {rec.image_id!r} not found (file_name "
                                f"{rec.file_name!r} in {self.json_file}); tried "
                                f"{', '.join(map(str, candidates))}")

    def read_panoptic(self, index: int) -> np.ndarray:
        """Validated id map int32 ``[H0, W0]`` of sample ``index`` (0 = void)."""
        rec = self.records[index]
        path = self.panoptic_root / rec.png_name
        if not path.is_file():
            raise FileNotFoundError(f"panoptic PNG of image id {rec.image_id!r} not found: {path}")
        id_map = read_id_png(path)
        present = np.unique(id_map)
        present = set(present[present != 0].tolist())
        listed = {int(s["id"]) for s in rec.segments}
        if present - listed:
            raise ValueError(f"{path} (image id {rec.image_id!r}): segment ids "
                             f"{sorted(present - listed)[:10]} are in the PNG but not in {self.json_file}")
        if listed - present:
            raise ValueError(f"{path} (image id {rec.image_id!r}): segments "
                             f"{sorted(listed - present)[:10]} listed in {self.json_file} "
                             f"have no pixels in the PNG")
        return id_map

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        image_path = self.image_path(index)
        id_map_np = self.read_panoptic(index)
        image_np = read_rgb_image(image_path)
        if image_np.shape[:2] != id_map_np.shape:
            raise ValueError(f"image id {rec.image_id!r}: image {image_path} is "
                             f"{image_np.shape[0]}x{image_np.shape[1]} but its panoptic PNG "
                             f"{rec.png_name} is {id_map_np.shape[0]}x{id_map_np.shape[1]}")
        gt_panoptic = torch.from_numpy(id_map_np)
        image = torch.from_numpy(image_np).permute(2, 0, 1).contiguous()
        id_map = gt_panoptic
        if self.transforms is not None:
            image, id_map = self.transforms(image, id_map)
        sample = {"image": image, "image_id": rec.image_id, "file_name": image_path.name,
                  "orig_size": tuple(id_map_np.shape),
                  **panoptic_targets(id_map, rec.segments, self.metadata)}
        if not self.is_train:
            sample["gt_panoptic"] = gt_panoptic
            sample["segments_info"] = [dict(s) for s in rec.segments]
        return sample
