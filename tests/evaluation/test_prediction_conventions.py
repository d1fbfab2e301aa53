"""Evaluation inputs and outputs in the official tools' conventions, on inputs those tools accept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation import COCOAPEvaluator
from panfpn.evaluation.writer import PanopticPredictionWriter, SemanticPredictionWriter

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


def test_repeated_segment_id_is_an_error_not_a_silently_dropped_segment(tmp_path):
    """Two segments with one id: the JSON listed only the last one (its category), with no error;
    panopticapi and cityscapesscripts index segments by id, so they would score that one only."""
    writer = PanopticPredictionWriter(tmp_path, CATEGORIES)
    id_map = np.zeros((4, 4), np.int32)
    id_map[:2] = 1
    id_map[2:] = 2
    segments = [{"id": 1, "category_id": 3, "score": 0.9}, {"id": 2, "category_id": 7},
                {"id": 1, "category_id": 7}]
    with pytest.raises(ValueError, match=r"image 'x'.*segment ids \[1\].*more than once"):
        writer.add("x", "x.jpg", id_map, segments)


def test_semantic_png_of_a_dataset_with_category_id_0_keeps_things_apart(tmp_path):
    """A COCO-style dataset (merged 'thing' label) whose stuff category has id 0: the thing label
    was written as 0 too, so its semantic PNGs could not tell 'sky' from 'thing'."""
    meta = DatasetMetadata.from_coco_categories(
        [{"id": 0, "name": "sky", "isthing": 0}, {"id": 1, "name": "person", "isthing": 1},
         {"id": 2, "name": "grass", "isthing": 0}], sem_seg_mode="stuff_plus_thing")
    labels = np.array([[meta.sem_label(0), meta.sem_label(1), meta.sem_label(2)]])  # sky, thing, grass
    writer = SemanticPredictionWriter(tmp_path, meta)
    written = np.asarray(Image.open(writer.add("x", labels)))
    assert written[0, 0] == 0 and written[0, 2] == 2  # stuff: its category id
    assert written[0, 1] not in {0, 1, 2}  # the merged thing label: no category's id
    coco = SemanticPredictionWriter(tmp_path / "coco", DatasetMetadata.from_coco_categories(
        [{"id": 1, "name": "person", "isthing": 1}, {"id": 92, "name": "banner", "isthing": 0}]))
    assert coco.lut.tolist() == [92, 0]  # COCO (no id 0): unchanged, 0 for the thing label


def test_semantic_pngs_of_category_ids_above_65535_are_a_config_error(tmp_path):
    # an export numbering its categories from 100000: tools/eval.py eval.save_semantic=true stopped
    # with a ValueError traceback; now the tools' one line, naming the key to change
    from panfpn.engine.tool_errors import input_error

    meta = DatasetMetadata.from_coco_categories(
        [{"id": 100001, "name": "cup", "isthing": 1}, {"id": 100002, "name": "table", "isthing": 0}])
    with pytest.raises(ValueError, match=r"eval\.save_semantic: a semantic PNG holds values 0\.\.65535, and "
                                         r"the categories of .* need 100002 .*set eval\.save_semantic=false") as err:
        SemanticPredictionWriter(tmp_path, meta)
    assert input_error(err.value) is err.value
