"""Any COCO-panoptic dataset in a folder, its categories read from its JSON (no yaml to write).

``configs/data/coco_panoptic_folder.yaml`` builds on this. Default layout of ``root`` per split::

    annotations/panoptic_{split}.json   annotations/panoptic_{split}/*.png   images/{split}/*

COCO's own names are accepted too (``annotations/panoptic_{split}2017.json``, its PNG folder,
``{split}2017/``); any other layout sets the JSON, PNG and image folders of each split.
Categories, class counts and thing labels come from the train JSON (:func:`json_metadata`,
:func:`json_meta_value`), parsed once per file version (path, size, mtime).
"""

from __future__ import annotations

import os
from pathlib import Path

from panfpn.data.dataset import PanopticDataset
from panfpn.data.transforms import Transform
from panfpn.data.metadata import DatasetMetadata, SemSegMode
from panfpn.data.validate import AnnotationError, check_categories
from panfpn.utils.json_file import load_json

# (JSON, image folder) candidates per split, relative to root; the PNG folder is the JSON's path
# without ".json" (COCO's convention).
JSON_CANDIDATES = ("annotations/panoptic_{split}.json", "annotations/panoptic_{split}2017.json")
IMAGE_CANDIDATES = ("images/{split}", "{split}2017", "{split}")
_META_KEYS = ("num_thing_classes", "num_sem_classes", "thing_sem_labels")

_categories_cache: dict[tuple[str, int, int], list[dict]] = {}


def split_json_candidates(root: str | os.PathLike, split: str) -> list[Path]:
    """Where the annotation JSON of ``split`` may lie under ``root`` (:data:`JSON_CANDIDATES`)."""
    base = Path(os.path.expanduser(str(root)))
    return [base / c.format(split=split) for c in JSON_CANDIDATES]


def find_split_json(root: str | os.PathLike | None, split: str, *, required: bool = True) -> str | None:
    """The annotation JSON of ``split`` under ``root`` (the first candidate that exists).

    Not found (or ``root`` unset): FileNotFoundError naming what was tried, or None when not
    ``required`` (the config resolver: a job that never reads this split must not fail on it).
    """
    if root in (None, ""):
        if not required:
            return None
        raise FileNotFoundError(f"config key 'data.root' is not set: set data.root=/path/to/dataset "
                                f"(or data.{split}.json_file and the other paths of each split)")
    tried = split_json_candidates(root, split)
    for path in tried:
        if path.is_file():
            return str(path)
    if not required:
        return None
    without = "; a training without a val split: train.eval_period=-1" if split == "val" else ""
    raise FileNotFoundError(f"no {split} annotations under data.root={root}: tried "
                            f"{', '.join(map(str, tried))}; set data.{split}.json_file=PATH for "
                            f"another layout{without}")


def _folder(given: str | os.PathLike | None, candidates: list[Path], key: str) -> Path:
    if given not in (None, ""):
        path = Path(os.path.expanduser(str(given)))
        if not path.is_dir():
            raise FileNotFoundError(f"config key '{key}' is {given!r}, which is not a folder")
        return path
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(f"config key '{key}' is not set and none of {', '.join(map(str, candidates))} "
                            f"is a folder")


def json_categories(json_file: str | os.PathLike | None) -> list[dict]:
    """The validated ``categories`` of a COCO-panoptic JSON, parsed once per file version."""
    if json_file in (None, "", "None"):
        raise FileNotFoundError(
            "config key 'data.metadata.json_file' is null: no JSON to read the categories from (it "
            "defaults to the train JSON, found under data.root as annotations/panoptic_train.json "
            "or annotations/panoptic_train2017.json); set data.root, data.train.json_file or "
            "data.metadata.json_file")
    path = Path(json_file).expanduser().resolve()
    st = path.stat() if path.is_file() else None
    key = (str(path), st.st_size if st else -1, st.st_mtime_ns if st else -1)
    if key not in _categories_cache:
        data = load_json(path, what="annotation file", expect=dict)  # names the file and problem
        if "categories" not in data:
            raise AnnotationError(f"{path}: missing top-level key 'categories' (not a COCO-panoptic "
                             f"annotation file?)")
        check_categories(data["categories"], path)
        _categories_cache[key] = data["categories"]
    return _categories_cache[key]


def json_metadata(json_file: str | os.PathLike | None, sem_seg_mode: SemSegMode = "stuff_plus_thing",
                  name: str | None = None, root: str | os.PathLike | None = None) -> DatasetMetadata:
    """Metadata of the categories in ``json_file`` (default name: the JSON's file stem). ``root``:
    the data root ``json_file`` was looked for under (null when none was found there): the error
    then names that root and the files tried, not only the null key."""
    if json_file in (None, "", "None") and root not in (None, ""):
        json_file = find_split_json(root, "train")  # FileNotFoundError: the root and the files tried
    return DatasetMetadata.from_coco_categories(json_categories(json_file), sem_seg_mode=sem_seg_mode,
                                                name=name or Path(json_file).stem)


def json_meta_value(json_file: str | None, key: str,
                    sem_seg_mode: str = "stuff_plus_thing") -> int | list[int]:
    """``num_thing_classes``, ``num_sem_classes`` or ``thing_sem_labels`` of a JSON's categories
    (the ``panfpn.json_meta`` config resolver)."""
    if key not in _META_KEYS:
        raise ValueError(f"panfpn.json_meta: unknown key {key!r}; expected one of {_META_KEYS}")
    value = getattr(json_metadata(json_file, sem_seg_mode), key)  # type: ignore[arg-type]
    return list(value) if key == "thing_sem_labels" else int(value)


def folder_panoptic_dataset(root: str | os.PathLike | None = None, split: str = "train", *,
                            json_file: str | os.PathLike | None = None,
                            png_dir: str | os.PathLike | None = None,
                            image_dir: str | os.PathLike | None = None,
                            metadata: DatasetMetadata | None = None,
                            transforms: Transform | None = None, is_train: bool = True,
                            filter_empty: bool = False, skip_bad_images: bool = False) -> PanopticDataset:
    """A split of a COCO-panoptic folder; unset paths follow the layout of the module docstring.

    ``metadata``: the train JSON's (the config passes ``data.metadata``); a split whose JSON
    lists a category id it lacks, or another thing/stuff flag, is refused (one listing only some
    of its categories is accepted with a warning). None: this JSON's own categories.
    """
    json_path, images, png = folder_panoptic_paths(root, split, json_file=json_file, png_dir=png_dir,
                                                   image_dir=image_dir)
    return PanopticDataset(json_path, images, png, metadata=metadata, transforms=transforms,
                           is_train=is_train, filter_empty=filter_empty, skip_bad_images=skip_bad_images)


def folder_panoptic_paths(root: str | os.PathLike | None = None, split: str = "train", *,
                          json_file: str | os.PathLike | None = None, png_dir: str | os.PathLike | None = None,
                          image_dir: str | os.PathLike | None = None) -> tuple[Path, Path, Path]:
    """``(json_file, image_dir, png_dir)`` of a split, unset ones found as the module docstring
    says; each checked to exist (FileNotFoundError naming the config key), nothing read."""
    json_path = Path(json_file) if json_file not in (None, "") else Path(find_split_json(root, split))
    json_path = json_path.expanduser()
    if not json_path.is_file():
        raise FileNotFoundError(f"config key 'data.{split}.json_file': {json_path} not found")
    base = Path(os.path.expanduser(str(root))) if root not in (None, "") else json_path.parent
    png = _folder(png_dir, [json_path.with_suffix("")], f"data.{split}.png_dir")
    images = _folder(image_dir, [base / c.format(split=split) for c in IMAGE_CANDIDATES],
                     f"data.{split}.image_dir")
    return json_path, images, png
