"""Every malformed input raises an error that names the file and/or the image id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panfpn.data.dataset import PanopticDataset
from panfpn.data.panoptic_io import id_to_rgb, read_id_png


@pytest.fixture
def ds_root(small_copy) -> Path:
    """A private copy of the first 3 synthetic images, free to corrupt."""
    return small_copy[0]


def _load(root: Path) -> PanopticDataset:
    return PanopticDataset(root / "panoptic.json", root / "images", root / "panoptic")


def _edit_json(root: Path, fn) -> None:
    path = root / "panoptic.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_valid_copy_loads(ds_root):
    ds = _load(ds_root)
    assert len(ds) == 3 and ds[2]["image_id"] == 3


def test_missing_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        PanopticDataset(tmp_path / "nothere.json", tmp_path, tmp_path)


def test_malformed_json(ds_root):
    (ds_root / "panoptic.json").write_text("{not json")
    with pytest.raises(ValueError, match="panoptic.json is not valid JSON"):
        _load(ds_root)


def test_missing_top_level_key(ds_root):
    _edit_json(ds_root, lambda d: d.pop("categories"))
    with pytest.raises(ValueError, match="panoptic.json: missing top-level key 'categories'"):
        _load(ds_root)


def test_missing_image(ds_root):
    (ds_root / "images" / "000002.jpg").unlink()
    ds = _load(ds_root)
    with pytest.raises(FileNotFoundError, match=r"image id 2 .*000002\.jpg"):
        ds[1]


def test_missing_png(ds_root):
    (ds_root / "panoptic" / "000003.png").unlink()
    ds = _load(ds_root)
    with pytest.raises(FileNotFoundError, match=r"image id 3 .*000003\.png"):
        ds[2]


def test_png_segment_absent_from_json(ds_root):
    def drop_first_segment(d):
        d["annotations"][0]["segments_info"].pop(0)
    _edit_json(ds_root, drop_first_segment)
    with pytest.raises(ValueError, match=r"000001\.png \(image id 1\).*in the PNG but not in"):
        _load(ds_root)[0]


def test_json_segment_absent_from_png(ds_root):
    def add_ghost(d):
        d["annotations"][1]["segments_info"].append(
            {"id": 123, "category_id": 1, "iscrowd": 0, "area": 5, "bbox": [0, 0, 1, 1]})
    _edit_json(ds_root, add_ghost)
    with pytest.raises(ValueError, match=r"000002\.png \(image id 2\).*\[123\].*no pixels"):
        _load(ds_root)[1]


def test_unknown_category(ds_root):
    def bad_cat(d):
        d["annotations"][2]["segments_info"][0]["category_id"] = 999
    _edit_json(ds_root, bad_cat)
    with pytest.raises(ValueError, match=r"panoptic.json: image id 3 .*unknown category id 999"):
        _load(ds_root)


def test_size_mismatch(ds_root):
    png = ds_root / "panoptic" / "000001.png"
    ids = read_id_png(png)
    Image.fromarray(id_to_rgb(np.pad(ids, ((0, 4), (0, 0)), mode="edge"))).save(png)
    with pytest.raises(ValueError, match=r"image id 1: image .*000001\.jpg is 128x128 .*132x128"):
        _load(ds_root)[0]


def test_annotation_without_image_entry(ds_root):
    _edit_json(ds_root, lambda d: d["images"].pop(1))
    with pytest.raises(ValueError, match=r"'000002\.png' refers to image id 2"):
        _load(ds_root)


def test_image_without_annotation_is_left_out_with_a_warning(ds_root, caplog):
    # An unlabelled image listed in 'images' (labelling tools export them): panopticapi and
    # Detectron2 ignore it; it was refused before.
    _edit_json(ds_root, lambda d: d["annotations"].pop(0))
    with caplog.at_level("WARNING"):
        ds = _load(ds_root)
    assert [ds[i]["image_id"] for i in range(len(ds))] == [2, 3]
    assert "1 of 3 image(s) have no annotation and are left out" in caplog.text
    assert "e.g. image ids ['1']" in caplog.text


def test_no_annotation_at_all(ds_root):
    _edit_json(ds_root, lambda d: d.update(annotations=[]))
    with pytest.raises(ValueError, match=r"panoptic\.json: 'annotations' is empty \(3 image\(s\) listed\)"):
        _load(ds_root)


@pytest.mark.parametrize("value", ["0", "1", 2, None, 1.0])
def test_iscrowd_other_than_0_or_1(ds_root, value):
    # "0" used to train as a crowd region (truthy) while panopticapi's PQ counts only == 1.
    def edit(d):
        d["annotations"][1]["segments_info"][0]["iscrowd"] = value
    _edit_json(ds_root, edit)
    with pytest.raises(ValueError, match=r"image id 2 segment \d+ has iscrowd .*expected 0 or 1"):
        _load(ds_root)


def test_iscrowd_bool_or_absent_loads(ds_root):
    def edit(d):
        segs = d["annotations"][0]["segments_info"]
        segs[0]["iscrowd"] = bool(segs[0]["iscrowd"])
        for seg in segs[1:]:
            seg.pop("iscrowd")
    _edit_json(ds_root, edit)
    assert len(_load(ds_root)) == 3


def test_duplicate_segment_id(ds_root):
    def dup(d):
        segs = d["annotations"][0]["segments_info"]
        segs.append(dict(segs[0]))
    _edit_json(ds_root, dup)
    with pytest.raises(ValueError, match="image id 1 has duplicate segment id"):
        _load(ds_root)


def test_sem_seg_mode_conflicting_with_metadata(ds_root):
    from panfpn.data.synthetic import synthetic_metadata
    with pytest.raises(ValueError, match="sem_seg_mode='all' contradicts"):
        PanopticDataset(ds_root / "panoptic.json", ds_root / "images", ds_root / "panoptic",
                        metadata=synthetic_metadata(), sem_seg_mode="all")


@pytest.mark.parametrize("key,value", [("area", None), ("area", "12"), ("area", -1), ("bbox", None),
                                       ("bbox", [1, 2, 3]), ("bbox", [0, 0, -1, 2]), ("bbox", [0, 0, "1", 2]),
                                       ("area", float("nan")), ("bbox", [0, 0, float("inf"), 2])])
def test_area_bbox_of_another_form(ds_root, key, value):
    # COCO AP scores against them: null failed there with a TypeError traceback, a 3-number box
    # went to pycocotools unchecked.
    def edit(d):
        d["annotations"][2]["segments_info"][1][key] = value
    _edit_json(ds_root, edit)
    with pytest.raises(ValueError, match=rf"image id 3 segment \d+ has {key} .*expected.*may be left out"):
        _load(ds_root)


@pytest.mark.parametrize("value", [1.0, True])
def test_annotation_image_id_equal_to_the_image_id_takes_the_image_id(ds_root, value):
    # panopticapi pairs by dict lookup (1.0 == True == 1); the sample kept the annotation's 1.0 /
    # true, which then went into prediction files and the image set.
    _edit_json(ds_root, lambda d: d["annotations"][0].update(image_id=value))
    image_id = _load(ds_root)[0]["image_id"]
    assert image_id == 1 and type(image_id) is int


def test_stuff_category_in_several_segments_is_warned_about(ds_root, caplog):
    # An exporter writing one segment per polygon splits a stuff class; PQ then counts each
    # piece on its own (missed where a prediction does not cover it by IoU > 0.5): usable, odd.
    from panfpn.data.panoptic_io import id_to_rgb, read_id_png

    data = json.loads((ds_root / "panoptic.json").read_text())
    stuff = {c["id"] for c in data["categories"] if not c["isthing"]}
    ann = data["annotations"][1]
    seg = next(s for s in ann["segments_info"] if s["category_id"] in stuff)
    ids = read_id_png(ds_root / "panoptic" / ann["file_name"])
    piece = np.flatnonzero(ids.reshape(-1) == seg["id"])[:5]
    new_id = int(ids.max()) + 1
    ids.reshape(-1)[piece] = new_id
    Image.fromarray(id_to_rgb(ids)).save(ds_root / "panoptic" / ann["file_name"])
    seg.pop("area", None), seg.pop("bbox", None)
    ann["segments_info"].append({"id": new_id, "category_id": seg["category_id"], "iscrowd": 0})
    (ds_root / "panoptic.json").write_text(json.dumps(data))
    with caplog.at_level("WARNING"):
        ds = _load(ds_root)
    ds[1]  # the labels themselves are usable
    assert (f"1 image(s) have a stuff category in several segments, e.g. image id 2: categories "
            f"[{seg['category_id']}]") in caplog.text


def test_an_annotation_naming_the_photo_instead_of_the_png_gets_a_hint(ds_root):
    """Exporters that copy the image's file_name into the annotation: panopticapi's converters
    write '<stem>.png'; the error says so where that PNG is there."""
    def jpg_names(d):
        d["annotations"][2]["file_name"] = "000003.jpg"
    _edit_json(ds_root, jpg_names)
    with pytest.raises(FileNotFoundError, match=r"000003\.jpg; 000003\.png is there: the annotation's file_name must "
                                                r"name the id PNG"):
        _load(ds_root)[2]


def test_a_palette_png_of_segment_indices_says_its_colours_were_read(ds_root):
    """A labelme-style PNG whose palette index is the segment id: read by its colours (as panopticapi
    does), its ids do not match the JSON's, and the error says why."""
    path = ds_root / "panoptic" / "000001.png"
    ids = read_id_png(path)
    index = np.zeros(ids.shape, np.uint8)
    for n, value in enumerate(np.unique(ids)):
        index[ids == value] = n
    png = Image.fromarray(index, mode="P")
    png.putpalette([v for n in range(256) for v in (n, n, n)])  # grey: colour n, not id n
    png.save(path)
    with pytest.raises(ValueError, match=r"palette PNG: its colours were read as ids"):
        _load(ds_root)[0]


def test_a_json_width_height_unlike_the_image_is_refused_naming_both(ds_root):
    # Before: images[].width/height were not read at all, so a JSON of another size than its
    # files trained and evaluated in silence (Detectron2 refuses it: SizeMismatchError)
    _edit_json(ds_root, lambda d: d["images"][1].update(width=640, height=480))
    ds = _load(ds_root)
    assert ds[0]["image_id"] == 1  # the other images load
    with pytest.raises(ValueError) as caught:
        ds[1]
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{ds_root / 'panoptic.json'}: image id 2: image {ds_root / 'images' / '000002.jpg'} "
                              "is width 128, height 128 (EXIF orientation applied) but the JSON says width 640, "
                              "height 480; check the width/height in the annotation file")


def test_a_json_without_width_height_or_with_one_right_is_not_checked(ds_root):
    def strip(d):
        del d["images"][0]["width"], d["images"][0]["height"]
        d["images"][1]["height"] = None  # null: as absent
        del d["images"][2]["width"]
    _edit_json(ds_root, strip)
    ds = _load(ds_root)
    assert [ds[i]["image_id"] for i in range(3)] == [1, 2, 3]
    _edit_json(ds_root, lambda d: d["images"][2].update(height=127))  # the one given is checked
    with pytest.raises(ValueError, match=r"image id 3: .*is width 128, height 128 .*JSON says width \?, height 127"):
        _load(ds_root)[2]


@pytest.mark.parametrize("value", [0, -3, 12.5, "128", True])
def test_a_width_other_than_a_positive_integer_is_refused_at_open(ds_root, value):
    _edit_json(ds_root, lambda d: d["images"][0].update(width=value))
    with pytest.raises(ValueError, match=r"panoptic.json: image id 1 has width .*expected a positive integer"):
        _load(ds_root)


def test_a_whole_float_size_counts_as_its_integer(ds_root):
    """width 128.0 (an exporter writing floats; Detectron2 compares it equal to 128): accepted, and
    still checked against the image."""
    _edit_json(ds_root, lambda d: d["images"][0].update(width=128.0, height=128.0))
    assert _load(ds_root)[0]["image_id"] == 1
    _edit_json(ds_root, lambda d: d["images"][0].update(width=127.0))
    with pytest.raises(ValueError, match=r"image id 1: .*JSON says width 127, height 128"):
        _load(ds_root)[0]
