"""Checks of a COCO-panoptic JSON made when a dataset is opened: one pass, no image decoding.

Each problem is a ValueError naming the JSON, the image and the bad value:

- image ids: unique, an integer or a string (Cityscapes uses strings); one annotation per image;
- file names (an image's ``file_name``, an annotation's PNG ``file_name``): non-empty strings,
  relative, no ``..`` left after normalisation (they must stay inside their folder), unique
  after normalisation;
- category ids (``categories`` and every segment): JSON integers. Strings (``"1"``) and floats
  are refused, ``1.0`` included: an id is matched against integers from the PNG and written
  back into prediction JSON, so a converted value could hide a writer's bug. Every segment's
  category must be in ``categories``;
- segment ids: positive integers, unique within an image;
- ``iscrowd`` (optional, 0 when absent): 0, 1, ``false`` or ``true``. Any other value (``"0"``,
  2, null) is refused: training reads a truthy value as crowd while panopticapi's PQ counts only
  ``== 1``, so the two would disagree on that segment;
- ``area`` and ``bbox`` (optional): a number >= 0 and ``[x, y, w, h]`` of numbers (w, h >= 0);
- an image's ``width`` and ``height`` (optional, null taken as absent): positive integers (a whole
  float counts as one); they are checked against the image file when it is read
  (:meth:`panfpn.data.dataset.PanopticDataset.load`);
- a stuff category in several segments of one image gives a warning (COCO has one per image:
  PQ matches each piece alone);
- images listed without an annotation are left out with a warning (unlabelled images: panopticapi
  and Detectron2 ignore them too); an annotation whose image is not listed is an error.
"""

from __future__ import annotations

import logging
import math
import posixpath
import re
from pathlib import Path, PureWindowsPath
from typing import Any, Iterable, Mapping, Sequence

from panfpn.data.metadata import DatasetMetadata

logger = logging.getLogger(__name__)


class AnnotationError(ValueError):
    """A COCO-panoptic annotation file breaks a rule; the message names the file and the entry."""


def is_json_int(value: object) -> bool:
    """True for an integer (not a bool, not a float such as 1.0, not a string such as "1")."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_file_name(name: object, *, json_file: Path, where: str) -> str:
    """``name`` normalised (``a/./b`` -> ``a/b``); refuses absolute names and ones leaving the root."""
    if not isinstance(name, str) or not name.strip():
        raise AnnotationError(f"{json_file}: {where} has file_name {name!r}; expected a relative path")
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise AnnotationError(f"{json_file}: {where} has absolute file_name {name!r}; file names are "
                         f"relative to their folder")
    normal = posixpath.normpath(re.sub(r"[\\/]+", "/", name))
    if normal == ".." or normal.startswith("../"):
        raise AnnotationError(f"{json_file}: {where} has file_name {name!r}, which leads outside its "
                         f"folder ('..'); file names must stay inside it")
    return normal


def check_category_id(value: object, *, json_file: Path, where: str,
                      known: Mapping[int, object] | None = None) -> int:
    """``value`` if it is an integer category id (in ``known`` when given), else ValueError."""
    if not is_json_int(value):
        raise AnnotationError(f"{json_file}: {where} has category id {value!r} of type "
                         f"{type(value).__name__}; category ids must be JSON integers (e.g. 1, not "
                         f"\"1\" or 1.0)")
    if known is not None and value not in known:
        raise AnnotationError(f"{json_file}: {where} has unknown category id {value!r} (not in the "
                         f"JSON's 'categories': ids {sorted(known)[:20]})")
    return value  # type: ignore[return-value]


def check_categories(categories: object, json_file: Path) -> dict[int, bool]:
    """``{category id: isthing}`` of a JSON's ``categories`` list, validated."""
    if not isinstance(categories, list) or not categories:
        raise AnnotationError(f"{json_file}: 'categories' must be a non-empty list, got {categories!r:.80}")
    found: dict[int, bool] = {}
    for i, cat in enumerate(categories):
        where = f"categories[{i}] ({cat.get('name', '?') if isinstance(cat, dict) else cat!r})"
        if not isinstance(cat, dict) or "id" not in cat or "isthing" not in cat:
            raise AnnotationError(f"{json_file}: {where} needs 'id' and 'isthing'")
        cat_id = check_category_id(cat["id"], json_file=json_file, where=where)
        if cat_id in found:
            raise AnnotationError(f"{json_file}: category id {cat_id} appears twice in 'categories'")
        if cat["isthing"] not in (0, 1) or isinstance(cat["isthing"], float):
            raise AnnotationError(f"{json_file}: {where} has isthing {cat['isthing']!r}; expected 0 or 1")
        found[cat_id] = bool(cat["isthing"])
    return found


def warn_renamed_categories(categories: Sequence[Mapping[str, Any]], metadata: DatasetMetadata,
                            json_file: Path) -> None:
    """Warn of categories whose name in the JSON differs from the metadata's (a val export with its
    own names): the ids decide the labels, the metadata's names are the ones reports show."""
    renamed = [(c["id"], str(c.get("name", c["id"])), metadata.category(c["id"]).name) for c in categories
               if c["id"] in metadata and str(c.get("name", c["id"])) != metadata.category(c["id"]).name]
    if renamed:
        shown = ", ".join(f"{i} {mine!r} (metadata: {theirs!r})" for i, mine, theirs in renamed[:5])
        logger.warning("%s names %d categories otherwise than the metadata %r: %s%s; the ids decide the "
                       "labels, reports use the metadata's names", json_file, len(renamed), metadata.name,
                       shown, " ..." if len(renamed) > 5 else "")


def check_same_categories(json_cats: Mapping[int, bool], metadata: DatasetMetadata,
                          json_file: Path) -> None:
    """The JSON's categories (ids and thing/stuff) must be the metadata's, or labels would shift.

    A JSON listing only some of them (an export of a split that lists the categories it uses) is
    accepted with a warning: its segments use ids of the metadata, so the labels are the same as
    those of a JSON listing every category and using some."""
    expected = {c.id: c.isthing for c in metadata.categories}
    if dict(json_cats) == expected:
        return
    extra, missing = sorted(set(json_cats) - set(expected)), sorted(set(expected) - set(json_cats))
    flipped = sorted(k for k in set(json_cats) & set(expected) if json_cats[k] != expected[k])
    if not extra and not flipped:
        logger.warning("%s lists %d of the %d categories of the metadata %r (not: ids %s); its "
                       "segments use the metadata's ids, so the labels are the same", json_file,
                       len(json_cats), len(expected), metadata.name, missing[:20])
        return
    raise AnnotationError(f"{json_file}: its categories differ from the metadata {metadata.name!r} the "
                     f"model is trained with (ids only in the JSON: {extra[:20]}, only in the "
                     f"metadata: {missing[:20]}, thing/stuff differs: {flipped[:20]}); a JSON may "
                     f"list some of the metadata's categories, not others (with "
                     f"data=coco_panoptic_folder the metadata is data.metadata.json_file's, "
                     f"default the train JSON: point it at the JSON listing every category)")


def index_images(images: object, json_file: Path) -> dict[int | str, tuple[dict, str]]:
    """``{image id: (entry, normalised file_name)}``; duplicate ids and file names are errors."""
    if not isinstance(images, list):
        raise AnnotationError(f"{json_file}: 'images' must be a list")
    by_id: dict[int | str, tuple[dict, str]] = {}
    by_name: dict[str, int | str] = {}
    for img in images:
        image_id = img.get("id") if isinstance(img, dict) else None
        if not (is_json_int(image_id) or (isinstance(image_id, str) and image_id)):
            raise AnnotationError(f"{json_file}: image entry {img!r:.120} has id {image_id!r}; "
                             f"expected an integer or a non-empty string")
        if image_id in by_id:
            raise AnnotationError(f"{json_file}: image id {image_id!r} appears twice in 'images' "
                             f"({by_id[image_id][0].get('file_name')!r} and "
                             f"{img.get('file_name')!r}); its annotation could not be paired")
        name = check_file_name(img.get("file_name"), json_file=json_file, where=f"image id {image_id!r}")
        if name in by_name:
            raise AnnotationError(f"{json_file}: image ids {by_name[name]!r} and {image_id!r} both have "
                             f"file_name {name!r}")
        by_id[image_id] = (img, name)
        by_name[name] = image_id
    kinds: dict[bool, int | str] = {}
    for image_id in by_id:  # the first id of each type
        kinds.setdefault(isinstance(image_id, str), image_id)
    if len(kinds) == 2:  # COCO AP (pycocotools) sorts the ids: a TypeError after the whole evaluation
        raise AnnotationError(f"{json_file}: image ids mix integers (e.g. {kinds[False]!r}) and strings (e.g. "
                              f"{kinds[True]!r}); write them all as integers or all as strings")
    return by_id


def image_size(entry: Mapping, *, json_file: Path) -> tuple[int | None, int | None] | None:
    """``(height, width)`` of an image entry, either None where absent or null; None when both are.
    A whole float counts as its integer; any other value than a positive integer is an error: the
    size is checked against the file."""
    size = []
    for key in ("height", "width"):
        value = entry.get(key)
        if isinstance(value, float) and value.is_integer():  # 640.0: some exporters write floats; Detectron2 takes them
            value = int(value)
        if value is not None and not (is_json_int(value) and value > 0):
            raise AnnotationError(f"{json_file}: image id {entry.get('id')!r} has {key} {value!r:.40}; "
                                  f"expected a positive integer (or no {key})")
        size.append(value)
    return None if size == [None, None] else (size[0], size[1])


def check_segments(segments: object, *, image_id: object, json_file: Path,
                   categories: Mapping[int, bool]) -> tuple[dict, ...]:
    """The annotation's ``segments_info``, validated (ids, category ids)."""
    if not isinstance(segments, list):
        raise AnnotationError(f"{json_file}: image id {image_id!r} has segments_info {segments!r:.80}; "
                         f"expected a list")
    seen: set[int] = set()
    for seg in segments:
        seg_id = seg.get("id") if isinstance(seg, dict) else None
        where = f"image id {image_id!r} segment {seg_id!r}"
        if not is_json_int(seg_id) or seg_id <= 0:
            raise AnnotationError(f"{json_file}: {where}: segment ids must be positive integers (0 is "
                             f"void in the PNG)")
        if seg_id in seen:
            raise AnnotationError(f"{json_file}: image id {image_id!r} has duplicate segment id {seg_id}")
        seen.add(seg_id)
        check_category_id(seg.get("category_id"), json_file=json_file, where=where, known=categories)
        if "iscrowd" in seg and not (seg["iscrowd"] in (0, 1) and isinstance(seg["iscrowd"], int)):
            raise AnnotationError(f"{json_file}: {where} has iscrowd {seg['iscrowd']!r}; expected 0 or 1 "
                                  f"(or false / true, or no key for 0)")
        _check_area_bbox(seg, json_file=json_file, where=where)
    return tuple(segments)


def _is_number(value: object) -> bool:
    """A finite JSON number (Python's JSON reader also accepts NaN and Infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _check_area_bbox(seg: Mapping, *, json_file: Path, where: str) -> None:
    """An ``area`` (a number >= 0) and a ``bbox`` ([x, y, w, h] numbers, w and h >= 0) when given:
    COCO AP scores against them (a null or a 3-number box failed there with a traceback)."""
    area, bbox = seg.get("area", 0), seg.get("bbox", [0, 0, 0, 0])
    hint = "; it may be left out (then taken from the PNG)"
    if not (_is_number(area) and area >= 0):
        raise AnnotationError(f"{json_file}: {where} has area {area!r}; expected a number >= 0{hint}")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))
            and bbox[2] >= 0 and bbox[3] >= 0):
        raise AnnotationError(f"{json_file}: {where} has bbox {bbox!r:.80}; expected [x, y, width, "
                              f"height], 4 numbers, width and height >= 0{hint}")


def _repeated_stuff(segments: Iterable[Mapping], categories: Mapping[int, bool]) -> list[int]:
    """The stuff category ids that more than one of an image's segments has."""
    seen: set[int] = set()
    repeated: set[int] = set()
    for seg in segments:
        cat = seg["category_id"]
        if not categories[cat]:
            (repeated if cat in seen else seen).add(cat)
    return sorted(repeated)


def pair_annotations(annotations: object, images: Mapping[int | str, tuple[dict, str]],
                     json_file: Path, categories: Mapping[int, bool]) -> Iterable[tuple]:
    """Yield ``(image id, image file_name, PNG file_name, segments, (height, width) or None)`` per
    annotation, validated."""
    if not isinstance(annotations, list):
        raise AnnotationError(f"{json_file}: 'annotations' must be a list")
    done: set[int | str] = set()
    png_names: dict[str, int | str] = {}
    split_stuff: list[tuple[int | str, list[int]]] = []  # images with a stuff class in pieces
    for ann in annotations:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in images:
            name = ann.get("file_name") if isinstance(ann, dict) else ann
            raise AnnotationError(f"{json_file}: annotation {name!r} refers to image id {image_id!r}, "
                             f"which has no entry in 'images'")
        image_id = images[image_id][0]["id"]  # the image's own id: an annotation's 1.0 or true is 1
        if image_id in done:
            raise AnnotationError(f"{json_file}: image id {image_id!r} has two annotations")
        done.add(image_id)
        png = check_file_name(ann.get("file_name"), json_file=json_file,
                              where=f"the annotation of image id {image_id!r}")
        if png in png_names:
            raise AnnotationError(f"{json_file}: the annotations of image ids {png_names[png]!r} and "
                             f"{image_id!r} both have PNG file_name {png!r}")
        png_names[png] = image_id
        segments = check_segments(ann.get("segments_info"), image_id=image_id, json_file=json_file,
                                  categories=categories)
        repeated = _repeated_stuff(segments, categories)
        if repeated:
            split_stuff.append((image_id, repeated))
        yield image_id, images[image_id][1], png, segments, image_size(images[image_id][0], json_file=json_file)
    if split_stuff:
        logger.warning("%s: %d image(s) have a stuff category in several segments, e.g. image id "
                       "%r: categories %s; PQ (here as in panopticapi) matches each segment alone, "
                       "so the pieces a prediction does not cover by IoU > 0.5 count as missed: "
                       "COCO panoptic has one segment per stuff category and image, merge them",
                       json_file, len(split_stuff), split_stuff[0][0], split_stuff[0][1][:10])
    if images and not done:
        raise AnnotationError(f"{json_file}: 'annotations' is empty ({len(images)} image(s) listed): "
                              f"nothing to train or evaluate on")
    missing = set(images) - done
    if missing:
        some = sorted(map(str, missing))[:5]
        logger.warning("%s: %d of %d image(s) have no annotation and are left out (unlabelled; "
                       "panopticapi ignores them too), e.g. image ids %s", json_file, len(missing),
                       len(images), some)
