"""PQ by segment area: the panoptic quality of small, medium and large segments (COCO's sizes).

A segment's size bucket, with COCO's thresholds 32² and 96² pixels (at the image's original
resolution), made disjoint so that the three buckets add up to the whole PQ's counts:

* small: area < 32² (1024); medium: 32² <= area <= 96² (9216); large: area > 96².
* A true positive and a false negative go to the bucket of the **ground-truth** segment's area
  (the area the PQ itself uses: ``segments_info``'s ``area``, else its pixels), as COCO's AP by
  area decides by the ground truth's area.
* A false positive has no ground truth: it goes to the bucket of the **prediction's own** area
  (its pixels in the predicted id map, void pixels included), as COCOeval places an unmatched
  detection by its own area.
* Crowd ground truth and the predictions the PQ ignores (more than half on void or on crowd of
  their category) count nowhere, as in the PQ.

Matching is the PQ's (:func:`panfpn.evaluation.pq_rules.classify_image`): an image is scored once
with all its segments and each decision is then filed by size, so a medium prediction matched to a
small ground-truth segment is a small true positive. Within a bucket, PQ / SQ / RQ are averaged
over the categories with a TP, FP or FN in that bucket (All / Things / Stuff as in the PQ).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from panfpn.data.metadata import DatasetMetadata
from panfpn.evaluation.accumulator import reduce_stat
from panfpn.evaluation.evaluator import EvalImage, Evaluator
from panfpn.evaluation.pq_rules import ImageOutcome, PQStat, classify_image, normalize_categories, pq_results

SMALL_BELOW = 32 ** 2  # small: area < 1024
LARGE_ABOVE = 96 ** 2  # large: area > 9216; medium: 1024 <= area <= 9216
BUCKETS = ("small", "medium", "large")


def area_bucket(area: float) -> str:
    """``"small"``, ``"medium"`` or ``"large"`` for a segment of ``area`` pixels."""
    if area < SMALL_BELOW:
        return "small"
    return "medium" if area <= LARGE_ABOVE else "large"


def split_by_area(outcome: ImageOutcome) -> dict[str, ImageOutcome]:
    """One image's PQ decisions filed by size: TPs and FNs by the ground truth's area, FPs by the
    prediction's own area."""
    parts = {b: ImageOutcome(gt_category=outcome.gt_category, pred_category=outcome.pred_category)
             for b in BUCKETS}
    for match in outcome.matches:
        parts[area_bucket(outcome.gt_area[match[0]])].matches.append(match)
    for gt_id in outcome.false_negatives:
        parts[area_bucket(outcome.gt_area[gt_id])].false_negatives.append(gt_id)
    for pred_id in outcome.false_positives:
        parts[area_bucket(outcome.pred_area[pred_id])].false_positives.append(pred_id)
    return parts


def bucket_results(stat: PQStat, categories: Mapping[int, Mapping]) -> dict[str, Any]:
    """``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "tp", "fp", "fn"}`` of one bucket."""
    results = {k: v for k, v in pq_results(stat, categories).items() if k != "per_class"}
    for key, sums in (("tp", stat.tp), ("fp", stat.fp), ("fn", stat.fn)):
        results[key] = int(sum(sums.values()))
    return results


class PQByArea(Evaluator):
    """``{"panoptic_by_area": {"small"|"medium"|"large": bucket results, "thresholds": {...}}}``:
    the PQ of small, medium and large segments (see the module docstring), reduced over ranks."""

    def __init__(self, metadata: DatasetMetadata | Sequence[Mapping]) -> None:
        if isinstance(metadata, DatasetMetadata):
            metadata = metadata.to_coco_categories()
        self.categories = normalize_categories(metadata)
        self._cat_ids = sorted(self.categories)
        self.reset()

    def reset(self) -> None:
        self.stats = {b: PQStat() for b in BUCKETS}

    def process(self, batch: Mapping[str, Any], outputs: Sequence[EvalImage]) -> None:
        for img in outputs:
            outcome = classify_image(img.image_id, img.gt_segments, img.pred_segments, img.pairs,
                                     self.categories, gt_area_from_pixels=True)
            for bucket, part in split_by_area(outcome).items():
                part.add_to(self.stats[bucket])

    def evaluate(self) -> dict[str, Any]:
        out: dict[str, Any] = {b: bucket_results(reduce_stat(self.stats[b], self._cat_ids), self.categories)
                               for b in BUCKETS}
        out["thresholds"] = {"small_below": SMALL_BELOW, "large_above": LARGE_ABOVE}
        return {"panoptic_by_area": out}


__all__ = ["BUCKETS", "PQByArea", "area_bucket", "split_by_area"]
