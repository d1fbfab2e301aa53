"""Evaluation inputs and outputs in the official tools' conventions, on inputs those tools accept."""

from __future__ import annotations

import numpy as np
import pytest

from panfpn.evaluation import COCOAPEvaluator

# pycocotools 2.x calls numpy with an old __array__ signature; not our concern here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CATEGORIES = [{"id": 3, "name": "car", "isthing": 1}, {"id": 7, "name": "road", "isthing": 0}]


def _tight_box(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` of a mask, as panopticapi computes a segment's bbox."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def test_ground_truth_segments_without_area_or_bbox_get_them_from_the_png():
    """segments_info without 'area'/'bbox' (the dataset trains on such JSONs, its targets come from
    the PNG) made COCO AP stop with KeyError: 'area'. Now they are the pixel count and the tight box."""
    id_map = np.zeros((12, 16), np.int32)
    id_map[6:, :] = 9  # road
    id_map[1:5, 2:7] = 4  # car 4
    id_map[7:11, 9:15] = 5  # car 5, over the road
    segments = [{"id": 4, "category_id": 3},  # neither
                {"id": 5, "category_id": 3, "area": 30},  # area only: kept (24 pixels), as
                # panopticapi's detection conversion keeps the JSON's values
                {"id": 9, "category_id": 7, "iscrowd": 0}]
    ev = COCOAPEvaluator(CATEGORIES)
    ev.add_ground_truth("img_a", id_map, segments)
    assert [a["bbox"] for a in ev.gt] == [_tight_box(id_map == 4), _tight_box(id_map == 5)]
    assert [a["area"] for a in ev.gt] == [float((id_map == 4).sum()), 30.0]
    masks = np.stack([id_map == 4, id_map == 5])
    boxes = np.array([[2, 1, 7, 5], [9, 7, 15, 11]], np.float32)  # XYXY, exclusive ends
    ev.update("img_a", boxes, np.array([0.9, 0.8]), np.array([3, 3]), masks)
    result = ev.compute()
    assert result["bbox"]["AP"] == pytest.approx(1.0) and result["segm"]["AP"] == pytest.approx(1.0)
