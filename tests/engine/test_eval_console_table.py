"""The per-class table tools/eval.py prints: PQ and, when AP was computed, box / mask AP per category."""

from __future__ import annotations

from panfpn.data.metadata import Category, DatasetMetadata
from panfpn.engine.eval_run import per_class_table

META = DatasetMetadata((Category(1, "person", True), Category(11, "bus", True), Category(92, "sky", False)))
PANOPTIC = {"per_class": {c: {"pq": 0.5, "sq": 0.8, "rq": 0.625, "tp": 5, "fp": 2, "fn": 4} for c in (1, 11, 92)}}


def _rows(table: str) -> dict[str, list[str]]:
    lines = table.splitlines()
    return {"head": lines[0].split(), **{line.split()[0]: line.split()[1:] for line in lines[1:]}}


def test_box_and_mask_ap_per_category_beside_pq():
    # As coco_ap.per_category_ap returns them: fractions, None where COCO gives -1 (no ground truth).
    metrics = {"panoptic": PANOPTIC, "bbox": {"AP": 0.3, "per_class": {1: 0.4567, 11: None}},
               "segm": {"AP": 0.2, "per_class": {1: 0.25, 11: None}}}
    rows = _rows(per_class_table(metrics, META))
    assert rows["head"] == ["category", "PQ", "SQ", "RQ", "box", "AP", "mask", "AP", "TP", "FP", "FN"]
    assert rows["person"] == ["50.00", "80.00", "62.50", "45.67", "25.00", "5", "2", "4"]
    assert rows["bus"][3:5] == ["n/a", "n/a"]  # no ground-truth instance: never 0 or -100
    assert rows["sky"][3:5] == ["-", "-"]  # stuff has no AP


def test_without_ap_the_table_is_pq_only():
    rows = _rows(per_class_table({"panoptic": PANOPTIC}, META))
    assert rows["head"] == ["category", "PQ", "SQ", "RQ", "TP", "FP", "FN"]
    assert rows["person"] == ["50.00", "80.00", "62.50", "5", "2", "4"]


def test_a_category_without_ground_truth_or_prediction_has_no_pq():
    # As PanopticQuality returns it (panopticapi's per_class too): zeros, left out of the means; the
    # console said 0.00 for the 100+ COCO categories absent from a small val set, report.html n/a.
    absent = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
    missed = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 3}
    rows = _rows(per_class_table({"panoptic": {"per_class": {1: missed, 11: absent, 92: absent}}}, META))
    assert rows["person"] == ["0.00", "0.00", "0.00", "0", "0", "3"]  # scored: a real 0
    assert rows["bus"] == rows["sky"] == ["n/a", "n/a", "n/a", "0", "0", "0"]
