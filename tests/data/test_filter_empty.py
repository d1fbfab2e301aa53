"""filter_empty drops training images without a non-crowd thing, and says so."""

from __future__ import annotations

import json
import logging

import pytest
from config_helpers import compose_config

from panfpn.data.dataset import PanopticDataset

THING_IDS = {1, 3, 7, 12}  # the synthetic dataset's things


@pytest.fixture
def ds_root(small_copy):
    """3 synthetic images: image 1's things all marked crowd, image 2 keeps one non-crowd thing."""
    root, data = small_copy
    for seg in data["annotations"][0]["segments_info"]:
        if seg["category_id"] in THING_IDS:
            seg["iscrowd"] = 1
    first_thing = True
    for seg in data["annotations"][1]["segments_info"]:
        if seg["category_id"] in THING_IDS:
            seg["iscrowd"] = 0 if first_thing else 1
            first_thing = False
    (root / "panoptic.json").write_text(json.dumps(data))
    return root, data


def _load(root, **kw):
    return PanopticDataset(root / "panoptic.json", root / "images", root / "panoptic", **kw)


def test_drops_images_whose_things_are_all_crowd(ds_root, caplog):
    root, data = ds_root
    assert [r.image_id for r in _load(root).records] == [1, 2, 3]
    with caplog.at_level(logging.INFO, logger="panfpn.data.dataset"):
        kept = _load(root, filter_empty=True)
    # Image 1 (only crowd things) goes; image 2 (one non-crowd thing) stays.
    assert [r.image_id for r in kept.records] == [2, 3]
    assert len(kept) == 2 and kept[0]["image_id"] == 2
    assert "dropped 1 of 3 images" in caplog.text


def test_nothing_left_is_an_error_naming_the_file(ds_root):
    root, data = ds_root
    for ann in data["annotations"]:
        for seg in ann["segments_info"]:
            if seg["category_id"] in THING_IDS:
                seg["iscrowd"] = 1
    (root / "panoptic.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"panoptic.json: no image has a non-crowd thing"):
        _load(root, filter_empty=True)


def test_training_configs_filter_as_their_recipes_and_validation_configs_do_not():
    # Panoptic recipes keep thing-less images (Detectron2 Base-Panoptic-FPN.yaml
    # DATALOADER.FILTER_EMPTY_ANNOTATIONS False; Mask2Former's panoptic records have no 'annotations').
    for data, expected in (("synthetic", True), ("coco_panoptic", False), ("cityscapes_panoptic", False)):
        cfg = compose_config([f"data={data}"])
        assert cfg.data.train.filter_empty is expected, data
        assert not cfg.data.val.get("filter_empty", False), data
