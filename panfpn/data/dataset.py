"""PanopticDataset: any COCO-panoptic dataset (JSON + id PNGs + images) as training samples.

Reads the COCO 2017 layout and the output of cityscapesscripts' ``createPanopticImgs`` as is
(label ids or train ids, string image ids, images under ``<city>/`` subfolders). Every target is
derived from the PNG and the JSON alone; the sample format is docs/interfaces.md section 1.

Opening a dataset validates its JSON (:mod:`panfpn.data.validate`). Images are read upright
(EXIF orientation applied, :func:`panfpn.data.image_io.read_image`); the id PNG is read as stored
and must have the upright image's size: annotations are drawn on the image as viewers show it. So
must the JSON's ``width``/``height`` of the image when given (Detectron2 refuses another size too).

Records are kept compactly (:class:`panfpn.data.records.RecordStore`: shared by forked workers,
not copied) and JSONs of 1 MB or more are parsed once per machine: their validated records are
cached and memory-mapped (:mod:`panfpn.data.record_cache`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from panfpn.data.bad_images import BadImageError, append_bad_image
from panfpn.data.image_io import SWAPPING_ORIENTATIONS, ImageReadError, exif_orientation, read_image
from panfpn.data.metadata import DatasetMetadata, SemSegMode
from panfpn.data.panoptic_io import read_id_png
from panfpn.data.record_cache import Parsed, load_records
from panfpn.data.records import Record, RecordStore
from panfpn.data.targets import panoptic_targets
from panfpn.data.transforms import Transform, check_test_transform
from panfpn.data.validate import (AnnotationError, check_categories, check_same_categories, index_images,
                                  pair_annotations, warn_renamed_categories)
from panfpn.utils.json_file import load_json

logger = logging.getLogger(__name__)



_Record = Record  # the name this module used before records.py


def _palette_hint(path: Path) -> str:
    """For an id mismatch: a palette PNG's colours were read as ids (id = R + 256 G + 256^2 B), not
    its palette indices (a labelme-style "index = segment id" PNG is not a COCO-panoptic one)."""
    try:
        with open(path, "rb") as f:
            header = f.read(26)
    except OSError:
        return ""
    if len(header) == 26 and header[12:16] == b"IHDR" and header[25] == 3:
        return ("; it is a palette PNG: its colours were read as ids (R + 256 G + 256^2 B, as panopticapi's "
                "rgb2id), not its palette indices")
    return ""


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
        skip_bad_images: an image or id PNG that cannot be decoded (truncated, corrupt) is
            replaced by the next good sample (index + 1, + 2, ...: the same on every run and
            resume), logged as a warning and appended to ``bad_images_log`` when that is set;
            False (default): such a file raises :class:`BadImageError` naming it and the image id.
        record_cache: cache the validated records for the next process (rank, run) to
            memory-map (:mod:`panfpn.data.record_cache`); None (default): for JSONs of 1 MB or more.
        cache_dir: folder of that cache; default ``$PANFPN_CACHE`` or ``~/.cache/panfpn``.

    Attributes:
        records: one :class:`panfpn.data.records.Record` per sample (a read-only sequence that
            decodes a record when indexed).
        bad_images_log: file (Path) that skipped images are appended to as
            ``path<TAB>image_id<TAB>error`` lines, once each; None: not written.
        bad_images: ``{index: error}`` of the samples this process has skipped.
    """

    def __init__(self, json_file: str | os.PathLike, image_root: str | os.PathLike,
                 panoptic_root: str | os.PathLike, *, metadata: DatasetMetadata | None = None,
                 transforms: Transform | None = None, is_train: bool = True,
                 sem_seg_mode: SemSegMode | None = None, filter_empty: bool = False,
                 skip_bad_images: bool = False, record_cache: bool | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.json_file = Path(json_file)
        self.image_root = Path(image_root)
        self.panoptic_root = Path(panoptic_root)
        if not is_train and transforms is not None:  # eval outputs are scored at the original size
            check_test_transform(transforms, f"the eval dataset of {json_file}")
        self.transforms = transforms
        self.is_train = is_train
        self.skip_bad_images = bool(skip_bad_images)
        self.bad_images_log: Path | None = None
        self.bad_images: dict[int, str] = {}
        self.metadata: DatasetMetadata
        categories, store = load_records(
            self.json_file, lambda: self._parse(metadata, sem_seg_mode),
            use_cache=record_cache, cache_dir=cache_dir)
        if not hasattr(self, "metadata"):  # from the cache: the JSON validated when it was built
            self._set_metadata(categories, metadata, sem_seg_mode)
        self.records: RecordStore | list[Record] = store
        if filter_empty:
            self.records = self._drop_without_things(store)

    def _set_metadata(self, categories: object, metadata: DatasetMetadata | None,
                      sem_seg_mode: SemSegMode | None) -> dict[int, bool]:
        """Check the JSON's ``categories`` against ``metadata`` and set ``self.metadata``."""
        json_categories = check_categories(categories, self.json_file)
        if metadata is None:
            metadata = DatasetMetadata.from_coco_categories(
                categories, sem_seg_mode=sem_seg_mode or "stuff_plus_thing",
                name=self.json_file.stem)
        elif sem_seg_mode is not None and sem_seg_mode != metadata.sem_seg_mode:
            raise ValueError(f"sem_seg_mode={sem_seg_mode!r} contradicts the given metadata's "
                             f"{metadata.sem_seg_mode!r}")
        else:
            check_same_categories(json_categories, metadata, self.json_file)
            warn_renamed_categories(categories, metadata, self.json_file)  # type: ignore[arg-type]
        self.metadata = metadata
        return json_categories

    def _parse(self, metadata: DatasetMetadata | None, sem_seg_mode: SemSegMode | None) -> Parsed:
        """Read and validate the JSON (in the order errors were always raised)."""
        data = load_json(self.json_file, what="annotation file", expect=dict)
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise AnnotationError(f"{self.json_file}: missing top-level key {key!r} "
                                 f"(not a COCO-panoptic annotation file?)")
        json_categories = self._set_metadata(data["categories"], metadata, sem_seg_mode)
        images = index_images(data["images"], self.json_file)
        return data["categories"], json_categories, pair_annotations(
            data["annotations"], images, self.json_file, json_categories)

    def _drop_without_things(self, records: RecordStore) -> RecordStore:
        # has_thing was computed from the JSON's isthing flags, which are the metadata's
        # (check_same_categories) whether the metadata is given or read from the JSON.
        kept = records.select(np.flatnonzero(records.thing_flags()))
        if not len(kept):
            raise AnnotationError(f"{self.json_file}: no image has a non-crowd thing segment, so "
                             f"filter_empty would leave nothing to train on (data.train.filter_empty=false "
                             f"keeps every image)")
        if len(kept) < len(records):
            logger.info("%s: dropped %d of %d images without non-crowd thing segments "
                        "(filter_empty=true)", self.json_file, len(records) - len(kept), len(records))
        return kept

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        """Path of the image of sample ``index``; FileNotFoundError naming the id and where the image
        belongs (:meth:`expected_image_path`, also its ``path`` attribute) when no candidate exists."""
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
        expected = self.expected_image_path(index)
        others = [str(c) for c in candidates if c != expected]
        also = f"; also tried {', '.join(others)}" if others else ""
        error = FileNotFoundError(f"image of image id {rec.image_id!r} not found: {expected} (file_name "
                                  f"{rec.file_name!r} in {self.json_file}{also})")
        error.path = str(expected)  # type: ignore[attr-defined]
        raise error

    def expected_image_path(self, index: int) -> Path:
        """Where the image of sample ``index`` belongs: ``image_root/file_name``, except for
        createPanopticImgs' ``<frame>_gtFine_leftImg8bit.png`` names: the Cityscapes download's
        ``image_root/<city>/<frame>_leftImg8bit.png`` (the JSON's name is a path no download has)."""
        file_name = self.records[index].file_name
        name = Path(file_name).name
        if name == file_name and name.endswith("_gtFine_leftImg8bit.png"):
            fixed = name.replace("_gtFine_leftImg8bit", "_leftImg8bit")
            return self.image_root / fixed.split("_")[0] / fixed
        return self.image_root / file_name

    def _bad(self, path: Path, index: int, error: ImageReadError) -> BadImageError:
        image_id = self.records[index].image_id
        hint = (" (data.skip_bad_images=true skips such training images)"
                if self.is_train and not self.skip_bad_images else "")
        return BadImageError(f"image id {image_id!r} of {self.json_file}: {error}{hint}",
                             path=path, reason=error.reason, image_id=image_id)

    def read_panoptic(self, index: int) -> np.ndarray:
        """Validated id map int32 ``[H0, W0]`` of sample ``index`` (0 = void)."""
        rec = self.records[index]
        path = self.panoptic_root / rec.png_name
        if not path.is_file():
            png = path.with_suffix(".png")
            hint = (f"; {png.name} is there: the annotation's file_name must name the id PNG (panopticapi's "
                    "converters write <image stem>.png)") if png != path and png.is_file() else ""
            raise FileNotFoundError(f"panoptic PNG of image id {rec.image_id!r} not found: {path}{hint}")
        try:
            id_map = read_id_png(path)
        except ImageReadError as e:
            raise self._bad(path, index, e) from None
        present = np.unique(id_map)
        present = set(present[present != 0].tolist())
        listed = {int(s["id"]) for s in rec.segments}
        if present - listed:
            raise AnnotationError(f"{path} (image id {rec.image_id!r}): segment ids "
                             f"{sorted(present - listed)[:10]} are in the PNG but not in {self.json_file}"
                             + _palette_hint(path))
        if listed - present:
            raise AnnotationError(f"{path} (image id {rec.image_id!r}): segments "
                             f"{sorted(listed - present)[:10]} listed in {self.json_file} "
                             f"have no pixels in the PNG" + _palette_hint(path))
        return id_map

    def read_image(self, index: int) -> tuple[Path, np.ndarray]:
        """``(path, uint8 [H0, W0, 3] upright RGB)`` of sample ``index``."""
        path = self.image_path(index)
        try:
            return path, read_image(path)
        except ImageReadError as e:
            raise self._bad(path, index, e) from None

    def _size_mismatch(self, index: int, path: Path, image_hw: tuple, map_hw: tuple) -> AnnotationError:
        rec = self.records[index]
        message = (f"image id {rec.image_id!r}: image {path} is {image_hw[0]}x{image_hw[1]} (EXIF "
                   f"orientation applied) but its panoptic PNG {rec.png_name} is {map_hw[0]}x{map_hw[1]}")
        with Image.open(path) as img:
            orientation = exif_orientation(img)
        if orientation in SWAPPING_ORIENTATIONS and image_hw == map_hw[::-1]:
            message += (f"; the image's EXIF orientation {orientation} turns it by 90 degrees: the "
                        f"PNG follows the stored pixels, not the image as viewers show it")
        return AnnotationError(message)  # an input error: the tools print its line and exit 2

    def json_size_mismatch(self, index: int, path: Path, hw: tuple, what: str = "image") -> AnnotationError | None:
        """The error when the JSON's ``height``/``width`` of sample ``index`` (those given) differ from
        ``hw``, the size of its upright image (or, ``what="panoptic PNG"``, of its id PNG) as read;
        None when they agree or the entry has neither. Detectron2 refuses such an image too."""
        rec = self.records[index]
        if rec.size is None or all(want in (None, got) for want, got in zip(rec.size, hw)):
            return None
        height, width = ("?" if v is None else v for v in rec.size)
        message = (f"{self.json_file}: image id {rec.image_id!r}: {what} {path} is width {hw[1]}, height "
                   f"{hw[0]}{' (EXIF orientation applied)' if what == 'image' else ''} but the JSON says "
                   f"width {width}, height {height}; check the width/height in the annotation file")
        if what == "image" and tuple(rec.size) == tuple(hw[::-1]):
            with Image.open(path) as img:
                orientation = exif_orientation(img)
            if orientation in SWAPPING_ORIENTATIONS:
                message += (f" (the image's EXIF orientation {orientation} turns it by 90 degrees: the JSON "
                            f"has the stored pixels' size, not the upright one)")
        error = AnnotationError(message)  # an input error, as the image/PNG size mismatch
        error.path = str(path)  # type: ignore[attr-defined]
        return error

    def sample_problems(self, index: int) -> list[tuple[str, Exception]]:
        """Every problem :meth:`load` meets in sample ``index`` (its reads and size check) as
        ``(stage, error)``, stage ``"image"``, ``"panoptic"``, ``"size"`` or ``"json size"``, and ``"area"`` (one that
        evaluation meets): the image and the id PNG are both read even when one fails (the
        whole-dataset check, :mod:`panfpn.data.check`)."""
        problems: list[tuple[str, Exception]] = []
        image = id_map = None
        try:
            image_path, image = self.read_image(index)
        except (OSError, ValueError) as e:  # missing or undecodable: named with the image id
            problems.append(("image", e))
        try:
            id_map = self.read_panoptic(index)
        except (OSError, ValueError) as e:  # missing, undecodable, not RGB, ids unlike the JSON's
            problems.append(("panoptic", e))
        if image is not None:  # the id PNG stands in when the image cannot be read
            json_size = self.json_size_mismatch(index, image_path, image.shape[:2])
        elif id_map is not None:
            json_size = self.json_size_mismatch(index, self.panoptic_root / self.records[index].png_name,
                                                id_map.shape, "panoptic PNG")
        else:
            json_size = None
        if json_size is not None:
            problems.append(("json size", json_size))
        if image is not None and id_map is not None and image.shape[:2] != id_map.shape:
            problems.append(("size", self._size_mismatch(index, image_path, image.shape[:2], id_map.shape)))
        if id_map is not None and (error := self._areas_below_pixels(index, id_map)) is not None:
            problems.append(("area", error))
        return problems

    def _areas_below_pixels(self, index: int, id_map: np.ndarray) -> AnnotationError | None:
        """The segments whose ``area`` is smaller than their pixels in the PNG, as one error:
        training ignores ``area``, but evaluation refuses it (the PQ reference scores IoUs above 1)."""
        rec = self.records[index]
        ids, counts = np.unique(id_map, return_counts=True)
        pixels = dict(zip(ids.tolist(), counts.tolist()))
        low = [f"{s['id']} (area {s['area']!r}, {pixels[int(s['id'])]} pixels)" for s in rec.segments
               if "area" in s and s["area"] < pixels.get(int(s["id"]), 0)]
        if not low:
            return None
        return AnnotationError(f"{self.panoptic_root / rec.png_name} (image id {rec.image_id!r}): segments "
                               f"{', '.join(low[:5])}{' ...' if len(low) > 5 else ''} have a smaller area in "
                               f"{self.json_file} than their pixels in the PNG; evaluation refuses such an "
                               f"area (IoUs above 1)")

    def load(self, index: int) -> dict:
        """Sample ``index`` (docs/interfaces.md section 1); raises BadImageError on a bad file."""
        rec = self.records[index]
        image_path, image_np = self.read_image(index)
        id_map_np = self.read_panoptic(index)
        if image_np.shape[:2] != id_map_np.shape:
            raise self._size_mismatch(index, image_path, image_np.shape[:2], id_map_np.shape)
        json_size = self.json_size_mismatch(index, image_path, image_np.shape[:2])
        if json_size is not None:
            raise json_size
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
            sample["image_path"] = str(image_path)
        return sample

    def _skip(self, index: int, error: BadImageError) -> None:
        self.bad_images[index] = str(error)
        logger.warning("skipping unreadable %s (image id %r): %s (data.skip_bad_images=true)",
                       error.path, error.image_id, error.reason)
        if self.bad_images_log is not None:
            append_bad_image(self.bad_images_log, str(error.path), error.image_id, error.reason)

    def __getitem__(self, index: int) -> dict:
        if not self.skip_bad_images:
            return self.load(index)
        n = len(self.records)
        for step in range(n):
            i = (index + step) % n
            if i in self.bad_images:
                continue
            try:
                return self.load(i)
            except BadImageError as e:
                self._skip(i, e)
        raise BadImageError(f"{self.json_file}: none of its {n} images can be decoded "
                            f"(skip_bad_images=true has nothing left to return); first: "
                            f"{next(iter(self.bad_images.values()))}")
