"""Real COCO data: the loader reads the official sample as is and derives the official instances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from panfpn.data.builtin_meta import coco_panoptic_categories, coco_panoptic_metadata
from panfpn.data.dataset import PanopticDataset

# pycocotools 2.x calls numpy with an old __array__ signature; not our concern here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "coco_panoptic_sample"


@pytest.fixture(scope="module")
def dataset() -> PanopticDataset:
    return PanopticDataset(SAMPLE / "panoptic_examples.json", SAMPLE / "input_images",
                           SAMPLE / "panoptic_examples", metadata=coco_panoptic_metadata(),
                           is_train=False)


def test_builtin_metadata_is_the_official_list():
    official = json.loads((SAMPLE / "panoptic_coco_categories.json").read_text())
    assert coco_panoptic_categories() == official
    meta = coco_panoptic_metadata()
    assert meta.to_coco_categories() == sorted(official, key=lambda c: c["id"])
    assert (meta.num_thing_classes, len(meta.stuff_ids), meta.num_sem_classes) == (80, 53, 54)
    assert meta.thing_ids[-1] == 90 and meta.stuff_ids[-1] == 200


def test_instances_equal_official_detection_conversion(dataset):
    det = json.loads((SAMPLE / "panoptic_coco_detection_format.json").read_text())
    meta = dataset.metadata
    n_checked = n_crowd = 0
    for i in range(len(dataset)):
        s = dataset[i]
        h, w = s["orig_size"]
        assert s["image"].shape == (3, h, w)
        anns = [a for a in det["annotations"]
                if a["image_id"] == s["image_id"] and meta.category(a["category_id"]).isthing]
        want = [a for a in anns if not a["iscrowd"]]  # crowd regions are no instance target
        n_crowd += len(anns) - len(want)
        got = s["instances"]
        assert len(got["labels"]) == len(want)
        for k, a in enumerate(want):
            rle = a["segmentation"]
            if isinstance(rle["counts"], list):
                rle = mask_utils.frPyObjects(rle, h, w)
            ref = torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rle)))
            assert torch.equal(got["masks"][k], ref)
            assert int(got["masks"][k].sum()) == a["area"]
            x, y, bw, bh = a["bbox"]
            assert got["boxes"][k].tolist() == [x, y, x + bw, y + bh]
            assert got["labels"][k] == meta.thing_label(a["category_id"])
            n_checked += 1
    assert (n_checked, n_crowd) == (40, 3)  # instances and crowd regions of the two images


def test_semantic_map_and_eval_fields(dataset):
    s = dataset[1]
    meta = dataset.metadata
    seg_by_id = {seg["id"]: seg for seg in s["segments_info"]}
    gt = s["gt_panoptic"]
    assert gt.dtype == torch.int32 and tuple(gt.shape) == s["orig_size"]
    for sid, seg in seg_by_id.items():
        labels = torch.unique(s["sem_seg"][gt == sid]).tolist()
        assert labels == [meta.sem_label(seg["category_id"])]
    assert bool((s["sem_seg"][gt == 0] == 255).all())
    assert s["file_name"] == "000000439180.jpg" and s["image_id"] == 439180
