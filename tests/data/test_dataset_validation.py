"""Opening a dataset validates its JSON: every problem is a ValueError naming the JSON, the image
and the bad value (duplicate ids and file names, names leaving the root, non-integer category ids)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from panfpn.data.dataset import PanopticDataset
from panfpn.data.synthetic import synthetic_metadata


def _open(root: Path, **kw) -> PanopticDataset:
    return PanopticDataset(root / "panoptic.json", root / "images", root / "panoptic", **kw)


def _write(root: Path, data: dict) -> None:
    (root / "panoptic.json").write_text(json.dumps(data))


def test_duplicate_image_id_is_refused(small_copy):
    """Two image entries with id 2: today the second silently takes the first's annotation."""
    root, data = small_copy
    data["images"][2]["id"] = 2
    data["annotations"][2]["image_id"] = 2
    _write(root, data)
    with pytest.raises(ValueError, match=r"panoptic\.json: image id 2 appears twice in 'images' "
                                         r"\('000002\.jpg' and '000003\.jpg'\)"):
        _open(root)


def test_two_annotations_for_one_image_are_refused(small_copy):
    root, data = small_copy
    data["annotations"][2]["image_id"] = 1
    _write(root, data)
    with pytest.raises(ValueError, match=r"panoptic\.json: image id 1 has two annotations"):
        _open(root)


def test_duplicate_image_file_name_is_refused(small_copy):
    root, data = small_copy
    data["images"][1]["file_name"] = "./000001.jpg"  # the same file after normalisation
    _write(root, data)
    with pytest.raises(ValueError,
                       match=r"panoptic\.json: image ids 1 and 2 both have file_name '000001\.jpg'"):
        _open(root)


def test_duplicate_png_file_name_is_refused(small_copy):
    root, data = small_copy
    data["annotations"][2]["file_name"] = "000002.png"
    _write(root, data)
    with pytest.raises(ValueError, match=r"panoptic\.json: the annotations of image ids 2 and 3 both "
                                         r"have PNG file_name '000002\.png'"):
        _open(root)


@pytest.mark.parametrize("name", ["../outside.jpg", "sub/../../outside.jpg", "..\\outside.jpg"])
def test_image_file_name_leaving_the_root_is_refused(small_copy, name):
    root, data = small_copy
    # the file exists outside the image folder, so a reader that follows '..' would find it
    shutil.copy(root / "images" / "000002.jpg", root / "outside.jpg")
    data["images"][1]["file_name"] = name
    _write(root, data)
    with pytest.raises(ValueError, match=r"panoptic\.json: image id 2 has file_name .*outside\.jpg"
                                         r".*leads outside its folder"):
        _open(root)


def test_absolute_png_file_name_is_refused(small_copy):
    root, data = small_copy
    data["annotations"][0]["file_name"] = str((root / "panoptic" / "000001.png").resolve())
    _write(root, data)
    with pytest.raises(ValueError, match=r"panoptic\.json: the annotation of image id 1 has absolute "
                                         r"file_name '/.*000001\.png'"):
        _open(root)


def test_file_name_normalising_inside_the_root_is_accepted(small_copy):
    root, data = small_copy
    data["images"][0]["file_name"] = "sub/../000001.jpg"
    _write(root, data)
    assert _open(root)[0]["image_id"] == 1


@pytest.mark.parametrize("bad", ["1", 1.5, 1.0, None, True])
def test_non_integer_segment_category_id_is_refused(small_copy, bad):
    """A string id "1" used to be reported as 'unknown category id 1', as if it were the int."""
    root, data = small_copy
    seg = data["annotations"][1]["segments_info"][0]
    seg["category_id"] = bad
    _write(root, data)
    with pytest.raises(ValueError, match=rf"panoptic\.json: image id 2 segment {seg['id']} has "
                                         rf"category id {bad!r} of type {type(bad).__name__}; "
                                         rf"category ids must be JSON integers"):
        _open(root)


@pytest.mark.parametrize("bad", ["101", 101.0])
def test_non_integer_id_in_categories_is_refused(small_copy, bad):
    root, data = small_copy
    data["categories"][4]["id"] = bad
    _write(root, data)
    with pytest.raises(ValueError, match=rf"panoptic\.json: categories\[4\] \('gradient'\) has category "
                                         rf"id {bad!r} of type {type(bad).__name__}"):
        _open(root)
    # the same category list as metadata is refused too, never converted
    with pytest.raises(ValueError, match=rf"has id {bad!r} \({type(bad).__name__}\); ids must be integers"):
        type(synthetic_metadata()).from_coco_categories(data["categories"])


def test_categories_differing_from_the_given_metadata_are_refused(small_copy):
    """A JSON whose category list is not the metadata's would train wrong labels silently."""
    root, data = small_copy
    data["categories"][0]["isthing"] = 0  # ellipse (id 1) is a thing in the metadata
    _write(root, data)
    with pytest.raises(ValueError, match=r"panoptic\.json: its categories differ from the metadata "
                                         r"'synthetic'.*thing/stuff differs: \[1\]"):
        _open(root, metadata=synthetic_metadata())


def test_greyscale_id_png_is_refused_with_its_mode(small_copy):
    """A greyscale PNG cannot hold R + 256 G + 256^2 B ids; its mode is named, not a wrong id."""
    from PIL import Image

    root, _ = small_copy
    path = root / "panoptic" / "000001.png"
    Image.open(path).convert("L").save(path)
    with pytest.raises(ValueError, match=r"000001\.png: a panoptic id PNG must be RGB .*got image mode 'L'"):
        _open(root)[0]
