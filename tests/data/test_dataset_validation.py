"""Opening a dataset validates its JSON: every problem is a ValueError naming the JSON, the image
and the bad value (duplicate ids and file names, names leaving the root, non-integer category ids)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from panfpn.data.dataset import PanopticDataset
from panfpn.data.synthetic import synthetic_metadata


def _open(root: Path, **kw) -> PanopticDataset:
    return PanopticDataset(root / "panoptic.json", root / "images", root / "panoptic", **kw)


def _write(root: Path, data: dict) -> None:
    (root / "panoptic.json").write_text(json.dumps(data))


def _opening_fails(small_copy, edit: Callable[[dict], object], match: str, **kw) -> dict:
    """Apply ``edit`` to the JSON of ``small_copy``; opening the dataset must raise a ValueError
    matching ``match``. Returns the edited JSON."""
    root, data = small_copy
    edit(data)
    _write(root, data)
    with pytest.raises(ValueError, match=match):
        _open(root, **kw)
    return data


def test_duplicate_image_id_is_refused(small_copy):
    """Two image entries with id 2: today the second silently takes the first's annotation."""
    def edit(data):
        data["images"][2]["id"] = 2
        data["annotations"][2]["image_id"] = 2

    _opening_fails(small_copy, edit, r"panoptic\.json: image id 2 appears twice in 'images' "
                                     r"\('000002\.jpg' and '000003\.jpg'\)")


def test_an_empty_string_image_id_is_refused(small_copy):
    """An exporter's "" id opened, trained and was found only when evaluation named its files."""
    def edit(data):
        data["images"][0]["id"] = data["annotations"][0]["image_id"] = ""

    _opening_fails(small_copy, edit, r"panoptic\.json: image entry .* has id ''; expected an integer or a "
                                     r"non-empty string")


def test_image_ids_mixing_integers_and_strings_are_refused(small_copy):
    """An export with 2 and "3": training ran and evaluation stopped in COCO AP (pycocotools sorts
    the ids) with a TypeError traceback."""
    def edit(data):
        data["images"][2]["id"] = data["annotations"][2]["image_id"] = "3"

    _opening_fails(small_copy, edit, r"panoptic\.json: image ids mix integers \(e\.g\. 1\) and strings "
                                     r"\(e\.g\. '3'\); write them all as integers or all as strings")


def test_two_annotations_for_one_image_are_refused(small_copy):
    _opening_fails(small_copy, lambda data: data["annotations"][2].update(image_id=1),
                   r"panoptic\.json: image id 1 has two annotations")


def test_duplicate_image_file_name_is_refused(small_copy):
    # the same file after normalisation
    _opening_fails(small_copy, lambda data: data["images"][1].update(file_name="./000001.jpg"),
                   r"panoptic\.json: image ids 1 and 2 both have file_name '000001\.jpg'")


def test_duplicate_png_file_name_is_refused(small_copy):
    _opening_fails(small_copy, lambda data: data["annotations"][2].update(file_name="000002.png"),
                   r"panoptic\.json: the annotations of image ids 2 and 3 both have PNG file_name "
                   r"'000002\.png'")


@pytest.mark.parametrize("name", ["../outside.jpg", "sub/../../outside.jpg", "..\\outside.jpg"])
def test_image_file_name_leaving_the_root_is_refused(small_copy, name):
    root, _ = small_copy
    # the file exists outside the image folder, so a reader that follows '..' would find it
    shutil.copy(root / "images" / "000002.jpg", root / "outside.jpg")
    _opening_fails(small_copy, lambda data: data["images"][1].update(file_name=name),
                   r"panoptic\.json: image id 2 has file_name .*outside\.jpg.*leads outside its folder")


def test_absolute_png_file_name_is_refused(small_copy):
    absolute = str((small_copy[0] / "panoptic" / "000001.png").resolve())
    _opening_fails(small_copy, lambda data: data["annotations"][0].update(file_name=absolute),
                   r"panoptic\.json: the annotation of image id 1 has absolute file_name '/.*000001\.png'")


def test_file_name_normalising_inside_the_root_is_accepted(small_copy):
    root, data = small_copy
    data["images"][0]["file_name"] = "sub/../000001.jpg"
    _write(root, data)
    assert _open(root)[0]["image_id"] == 1


@pytest.mark.parametrize("bad", ["1", 1.5, 1.0, None, True])
def test_non_integer_segment_category_id_is_refused(small_copy, bad):
    """A string id "1" used to be reported as 'unknown category id 1', as if it were the int."""
    seg_id = small_copy[1]["annotations"][1]["segments_info"][0]["id"]
    _opening_fails(small_copy, lambda data: data["annotations"][1]["segments_info"][0].update(category_id=bad),
                   rf"panoptic\.json: image id 2 segment {seg_id} has category id {bad!r} of type "
                   rf"{type(bad).__name__}; category ids must be JSON integers")


@pytest.mark.parametrize("bad", ["101", 101.0])
def test_non_integer_id_in_categories_is_refused(small_copy, bad):
    data = _opening_fails(small_copy, lambda data: data["categories"][4].update(id=bad),
                          rf"panoptic\.json: categories\[4\] \('gradient'\) has category id {bad!r} "
                          rf"of type {type(bad).__name__}")
    # the same category list as metadata is refused too, never converted
    with pytest.raises(ValueError, match=rf"has id {bad!r} \({type(bad).__name__}\); ids must be integers"):
        type(synthetic_metadata()).from_coco_categories(data["categories"])


def test_categories_differing_from_the_given_metadata_are_refused(small_copy):
    """A JSON whose category list is not the metadata's would train wrong labels silently."""
    # ellipse (id 1) is a thing in the metadata
    _opening_fails(small_copy, lambda data: data["categories"][0].update(isthing=0),
                   r"panoptic\.json: its categories differ from the metadata 'synthetic'.*thing/stuff "
                   r"differs: \[1\]", metadata=synthetic_metadata())


def test_a_json_listing_some_of_the_metadata_categories_is_accepted(small_copy, caplog):
    """A split exported with only the categories it uses (same ids) has the same labels as one
    listing all and using some: a warning, not an error (it was refused)."""
    from PIL import Image

    from panfpn.data.panoptic_io import id_to_rgb, read_id_png

    root, data = small_copy
    dropped = data["categories"].pop(0)["id"]  # its segments become void
    for ann in data["annotations"]:
        gone = [s["id"] for s in ann["segments_info"] if s["category_id"] == dropped]
        ann["segments_info"] = [s for s in ann["segments_info"] if s["id"] not in gone]
        ids = read_id_png(root / "panoptic" / ann["file_name"])
        ids[np.isin(ids, gone)] = 0
        Image.fromarray(id_to_rgb(ids)).save(root / "panoptic" / ann["file_name"])
    _write(root, data)
    used, unused = {c["id"] for c in data["categories"]}, [dropped]
    with caplog.at_level("WARNING"):
        ds = _open(root, metadata=synthetic_metadata())
    assert len(ds) == 3 and ds.metadata == synthetic_metadata()
    assert all(ds[i]["image_id"] == i + 1 for i in range(3))
    assert f"lists {len(used)} of the {len(used) + len(unused)} categories" in caplog.text
    assert f"(not: ids {sorted(unused)})" in caplog.text


def test_a_json_naming_a_category_otherwise_than_the_metadata_is_warned_of(small_copy, caplog):
    """A val export whose tool renamed a category (same id): the labels are the id's, the reports
    show the metadata's name; it was accepted without a word."""
    root, data = small_copy
    data["categories"][0]["name"] = "oval"
    _write(root, data)
    metadata = synthetic_metadata()
    with caplog.at_level("WARNING"):
        _open(root, metadata=metadata)
    first = metadata.categories[0]
    assert (f"panoptic.json names 1 categories otherwise than the metadata 'synthetic': {first.id} 'oval' "
            f"(metadata: {first.name!r}); the ids decide the labels, reports use the metadata's names") in caplog.text
    caplog.clear()
    data["categories"][0]["name"] = first.name
    _write(root, data)
    with caplog.at_level("WARNING"):
        _open(root, metadata=metadata)
    assert "otherwise than the metadata" not in caplog.text


def test_greyscale_id_png_is_refused_with_its_mode(small_copy):
    """A greyscale PNG cannot hold R + 256 G + 256^2 B ids; its mode is named, not a wrong id."""
    from PIL import Image

    root, _ = small_copy
    path = root / "panoptic" / "000001.png"
    Image.open(path).convert("L").save(path)
    with pytest.raises(ValueError, match=r"000001\.png: a panoptic id PNG must be RGB .*got image mode 'L'"):
        _open(root)[0]
