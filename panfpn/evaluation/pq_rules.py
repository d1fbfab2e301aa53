"""Panoptic quality rules on one image's confusion counts, shared by every PQ entry point.

Both the file evaluator (:func:`panfpn.evaluation.pq.pq_compute`) and the in-memory
:class:`panfpn.evaluation.accumulator.PQAccumulator` reduce an image to the same input: the
list of (ground-truth id, predicted id, pixel count) pairs of the two id maps. Everything that
decides a match, a false positive or a false negative lives here, so the two can never drift.

The rules are those of the COCO panoptic API (Kirillov et al., "Panoptic Segmentation"):

* id 0 is void. Predicted pixels on ground-truth void are removed from the union.
* Ground-truth segments with ``iscrowd == 1`` are never matched. A predicted segment that is
  not matched is not a false positive when more than half of its pixels lie on void or on the
  crowd region of its own category (the last crowd segment of that category listed in the
  image's ``segments_info``, as in the reference implementation).
* A match needs the same category and IoU > 0.5 (strictly).
* The ground-truth area comes from ``segments_info`` (``area``); the predicted area is counted
  from the predicted id map. An ``area`` smaller than the segment's pixels in the ground-truth PNG
  is an error here (the reference scores IoUs above 1 with it).
* PQ/SQ/RQ per category; a category with TP + FP + FN == 0 gets zeros and is left out of the
  means, which are split into All / Things / Stuff.
"""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

VOID = 0


class PQInputError(ValueError):
    """Input a panoptic evaluation cannot score (the message names the image)."""


@dataclass
class PQStat:
    """Per-category sums: true positives, false positives, false negatives, summed IoU of TPs."""

    tp: dict[int, int] = field(default_factory=dict)
    fp: dict[int, int] = field(default_factory=dict)
    fn: dict[int, int] = field(default_factory=dict)
    iou: dict[int, float] = field(default_factory=dict)

    def merge(self, other: "PQStat") -> "PQStat":
        """Add ``other``'s sums into this one (in place) and return self."""
        for mine, theirs in ((self.tp, other.tp), (self.fp, other.fp), (self.fn, other.fn),
                             (self.iou, other.iou)):
            for cat, value in theirs.items():
                mine[cat] = mine.get(cat, 0) + value
        return self

    def categories(self) -> set[int]:
        """Category ids with at least one TP, FP or FN."""
        return set(self.tp) | set(self.fp) | set(self.fn)


def as_integer_id(value: Any, what: str) -> int:
    """``value`` as an int: an integer, or a float with an integral value (JSON may write 5.0).

    Anything else (``"5"``, 9.5, None) is a PQInputError naming ``what``: the reference API looks
    ids up by equality, so a string id silently matches nothing there (or fails), and ``int()``
    would have turned ``"5"`` and 9.5 into ids the reference never sees.
    """
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        raise PQInputError(f"{what} is {value!r}, not an integer") from None


def index_segments(segments: Sequence[Mapping[str, Any]], image_id: Any, side: str) -> dict:
    """``{segment id: segment}`` in listing order; a repeated id, or an id or category_id that is
    not an integer, is an error."""
    by_id: dict[int, Mapping[str, Any]] = {}
    for seg in segments:
        if type(seg) is not dict and not isinstance(seg, Mapping):  # (the exact test first: fast)
            raise PQInputError(f"image {image_id!r}: a {side} segment is not a dict: {seg!r:.200}")
        try:
            seg_id, category_id = seg["id"], seg["category_id"]
        except KeyError as err:
            hint = ("; a model's output segments hold contiguous labels under 'category': "
                    "panfpn.evaluation.label_mapping.model_segments_to_dataset(segments, metadata) gives "
                    "dataset category_ids") if "category" in seg and err.args[0] == "category_id" else ""
            raise PQInputError(
                f"image {image_id!r}: a {side} segment lacks the key {err.args[0]!r}: {dict(seg)}{hint}"
            ) from None
        if type(seg_id) is not int:  # (messages built only when needed: this runs per segment)
            seg_id = as_integer_id(seg_id, f"image {image_id!r}: the id of a {side} segment")
        if type(category_id) is not int:
            as_integer_id(category_id, f"image {image_id!r}: the category_id of {side} segment {seg_id}")
        if seg_id in by_id:
            raise PQInputError(
                f"image {image_id!r}: segment id {seg_id} is listed twice in the {side} "
                "segments_info"
            )
        by_id[seg_id] = seg
    return by_id


@dataclass
class ImageOutcome:
    """How one image's segments were scored: the true positives (ground-truth id, predicted id,
    IoU, in match order), the ids of the false negatives and of the false positives, and every
    segment's category and area (ground truth: the area PQ uses; prediction: its pixels in the map)."""

    matches: list[tuple[int, int, float]] = field(default_factory=list)
    false_negatives: list[int] = field(default_factory=list)
    false_positives: list[int] = field(default_factory=list)
    gt_category: dict[int, int] = field(default_factory=dict)
    pred_category: dict[int, int] = field(default_factory=dict)
    gt_area: dict[int, int] = field(default_factory=dict)
    pred_area: dict[int, int] = field(default_factory=dict)

    def add_to(self, stat: PQStat) -> None:
        """Add this image's TP/FP/FN/IoU to ``stat`` (in place)."""
        for gt_id, _, iou in self.matches:
            cat = self.gt_category[gt_id]
            stat.tp[cat] = stat.tp.get(cat, 0) + 1
            stat.iou[cat] = stat.iou.get(cat, 0.0) + iou
        for gt_id in self.false_negatives:
            cat = self.gt_category[gt_id]
            stat.fn[cat] = stat.fn.get(cat, 0) + 1
        for pred_id in self.false_positives:
            cat = self.pred_category[pred_id]
            stat.fp[cat] = stat.fp.get(cat, 0) + 1


def accumulate_image(
    stat: PQStat,
    image_id: Any,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_segments: Sequence[Mapping[str, Any]],
    pairs: Sequence[tuple[int, int, int]],
    categories: Mapping[int, Any],
    *,
    gt_area_from_pixels: bool = False,
) -> None:
    """Score one image and add its TP/FP/FN/IoU to ``stat`` (arguments as :func:`classify_image`)."""
    classify_image(image_id, gt_segments, pred_segments, pairs, categories,
                   gt_area_from_pixels=gt_area_from_pixels).add_to(stat)


def classify_image(
    image_id: Any,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_segments: Sequence[Mapping[str, Any]],
    pairs: Sequence[tuple[int, int, int]],
    categories: Mapping[int, Any],
    *,
    gt_area_from_pixels: bool = False,
) -> ImageOutcome:
    """Score one image: which segments are true positives, false negatives, false positives.

    Args:
        image_id: used in error messages only.
        gt_segments: ground-truth ``segments_info`` (``id``, ``category_id``, ``iscrowd``,
            ``area``).
        pred_segments: predicted ``segments_info`` (``id``, ``category_id``).
        pairs: every ``(gt_id, pred_id, pixel_count)`` with a non-zero count, each pair once,
            in ascending ``(gt_id, pred_id)`` order (the order only fixes which error is
            reported first).
        categories: known category ids (values unused here).
        gt_area_from_pixels: take a ground-truth segment's area from the id map when its
            ``area`` key is missing (in-memory use); otherwise a missing ``area`` is an error.

    Raises:
        PQInputError: a predicted id map id without a segment, a predicted segment absent from
            the map, an unknown predicted category, or a repeated segment id.
    """
    gt_by_id = index_segments(gt_segments, image_id, "ground-truth")
    pred_by_id = index_segments(pred_segments, image_id, "predicted")
    counts = {(gt_id, pred_id): count for gt_id, pred_id, count in pairs}
    pred_area, gt_pixels = _areas(pairs)
    _check_predicted(image_id, pred_by_id, pred_area, categories)

    def gt_area(gt_id: int) -> int:
        seg = gt_by_id[gt_id]
        if "area" in seg:
            if not isinstance(seg["area"], numbers.Real):
                raise PQInputError(f"image {image_id!r}: ground-truth segment {gt_id} has the area "
                                   f"{seg['area']!r}, not a number")
            if seg["area"] < gt_pixels.get(gt_id, 0):  # the reference would score an IoU above 1
                raise PQInputError(
                    f"image {image_id!r}: ground-truth segment {gt_id} has the area {seg['area']!r} in "
                    f"segments_info but {gt_pixels[gt_id]} pixels in the ground-truth PNG; an area "
                    "smaller than the segment's pixels gives IoUs above 1: fix 'area' in the ground-truth JSON")
            return seg["area"]
        if gt_area_from_pixels:
            return gt_pixels.get(gt_id, 0)
        raise PQInputError(f"image {image_id!r}: ground-truth segment {gt_id} has no 'area'")

    out = ImageOutcome(gt_category={g: s["category_id"] for g, s in gt_by_id.items()},
                       pred_category={p: s["category_id"] for p, s in pred_by_id.items()},
                       pred_area={p: pred_area[p] for p in pred_by_id})
    gt_matched, pred_matched = _match(image_id, out, gt_by_id, pred_by_id, counts, pred_area, gt_area)
    crowd_of_category = _count_false_negatives(out, gt_by_id, gt_matched)
    _count_false_positives(out, pred_by_id, pred_matched, counts, pred_area, crowd_of_category)
    out.gt_area = {g: s["area"] if "area" in s else gt_pixels.get(g, 0)  # (no error here: bucketing only)
                   for g, s in gt_by_id.items() if s.get("iscrowd", 0) != 1}
    return out


def _areas(pairs: Sequence[tuple[int, int, int]]) -> tuple[dict[int, int], dict[int, int]]:
    """Pixel areas of the predicted segments and of the ground-truth ones, from the pair counts."""
    pred_area: dict[int, int] = {}
    gt_pixels: dict[int, int] = {}
    for gt_id, pred_id, count in pairs:
        pred_area[pred_id] = pred_area.get(pred_id, 0) + count
        gt_pixels[gt_id] = gt_pixels.get(gt_id, 0) + count
    return pred_area, gt_pixels


def _check_predicted(image_id: Any, pred_by_id: Mapping[int, Mapping[str, Any]],
                     pred_area: Mapping[int, int], categories: Mapping[int, Any]) -> None:
    """Every predicted map id has a known segment and every listed segment has pixels."""
    for pred_id in sorted(pred_area):
        seg = pred_by_id.get(pred_id)
        if seg is None:
            if pred_id == VOID:
                continue
            raise PQInputError(
                f"image {image_id!r}: segment id {pred_id} is in the predicted id map (PNG) "
                "but not in the predicted segments_info (JSON)"
            )
        if seg["category_id"] not in categories:
            raise PQInputError(
                f"image {image_id!r}: predicted segment {pred_id} has unknown category_id "
                f"{seg['category_id']}"
            )
    absent = [pred_id for pred_id in pred_by_id if pred_id not in pred_area]
    if absent:
        raise PQInputError(
            f"image {image_id!r}: segment ids {absent} are in the predicted segments_info (JSON) "
            "but not in the predicted id map (PNG)"
        )


def _match(image_id: Any, out: ImageOutcome, gt_by_id: Mapping[int, Mapping[str, Any]], pred_by_id: Mapping[int, Mapping[str, Any]],
           counts: Mapping[tuple[int, int], int], pred_area: Mapping[int, int],
           gt_area: Callable[[int], int]) -> tuple[set[int], set[int]]:
    """True positives: same category, not crowd, IoU > 0.5 with void pixels of the prediction
    left out of the union. Returns the matched ground-truth and predicted ids.

    ``gt_area`` refuses an ``area`` smaller than the segment's pixels in the PNG, so the union is
    at least the intersection (the reference scores IoUs above 1 there, or divides by zero)."""
    gt_matched: set[int] = set()
    pred_matched: set[int] = set()
    for (gt_id, pred_id), inter in counts.items():
        gt_seg = gt_by_id.get(gt_id)
        pred_seg = pred_by_id.get(pred_id)
        if gt_seg is None or pred_seg is None or gt_seg.get("iscrowd", 0) == 1:
            continue
        cat = gt_seg["category_id"]
        if cat != pred_seg["category_id"]:
            continue
        union = pred_area[pred_id] + gt_area(gt_id) - inter - counts.get((VOID, pred_id), 0)
        iou = inter / union
        if iou > 0.5:
            out.matches.append((gt_id, pred_id, iou))
            gt_matched.add(gt_id)
            pred_matched.add(pred_id)
    return gt_matched, pred_matched


def _count_false_negatives(out: ImageOutcome, gt_by_id: Mapping[int, Mapping[str, Any]],
                           gt_matched: set[int]) -> dict[int, int]:
    """Unmatched non-crowd ground truth counts as FN; returns each category's crowd segment id."""
    crowd_of_category: dict[int, int] = {}
    for gt_id, gt_seg in gt_by_id.items():
        if gt_id in gt_matched:
            continue
        cat = gt_seg["category_id"]
        if gt_seg.get("iscrowd", 0) == 1:
            crowd_of_category[cat] = gt_id  # the last one listed wins, as in the reference
            continue
        out.false_negatives.append(gt_id)
    return crowd_of_category


def _count_false_positives(out: ImageOutcome, pred_by_id: Mapping[int, Mapping[str, Any]], pred_matched: set[int],
                           counts: Mapping[tuple[int, int], int], pred_area: Mapping[int, int],
                           crowd_of_category: Mapping[int, int]) -> None:
    """Unmatched predictions count as FP unless more than half of them is void or crowd of their category."""
    for pred_id, pred_seg in pred_by_id.items():
        if pred_id in pred_matched:
            continue
        cat = pred_seg["category_id"]
        ignored = counts.get((VOID, pred_id), 0)
        if cat in crowd_of_category:
            ignored += counts.get((crowd_of_category[cat], pred_id), 0)
        if ignored / pred_area[pred_id] > 0.5:
            continue
        out.false_positives.append(pred_id)

def _average(stat: PQStat, categories: Mapping[int, Mapping[str, Any]],
             isthing: bool | None) -> tuple[dict, dict]:
    pq = sq = rq = 0.0
    n = 0
    per_class: dict[int, dict] = {}
    for cat, info in categories.items():
        if isthing is not None and (info.get("isthing") == 1) != isthing:
            continue
        tp, fp, fn = stat.tp.get(cat, 0), stat.fp.get(cat, 0), stat.fn.get(cat, 0)
        iou = stat.iou.get(cat, 0.0)
        entry = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": tp, "fp": fp, "fn": fn, "iou": iou}
        per_class[cat] = entry
        if tp + fp + fn == 0:
            continue
        n += 1
        denom = tp + 0.5 * fp + 0.5 * fn
        entry["pq"] = iou / denom
        entry["sq"] = iou / tp if tp else 0.0
        entry["rq"] = tp / denom
        pq += entry["pq"]
        sq += entry["sq"]
        rq += entry["rq"]
    if n == 0:  # the reference divides by zero here; report zeros with n = 0 instead
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def pq_results(stat: PQStat, categories: Mapping[int, Mapping[str, Any]]) -> dict:
    """The COCO panoptic API result dict from summed statistics.

    Returns:
        ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id: {"pq",
        "sq", "rq", "tp", "fp", "fn", "iou"}}}``; scores are fractions, ``n`` the number of
        categories averaged, ``iou`` the summed IoU of the category's true positives.
    """
    results: dict[str, Any] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = _average(stat, categories, isthing)
        if name == "All":
            results["per_class"] = per_class
    return results


def normalize_categories(categories: Any) -> dict[int, dict]:
    """``{id: {"isthing": 0/1, ...}}`` from that form or a list of COCO category dicts.

    A COCO category's ``id`` must be an integer and every ``isthing`` 0 or 1 (or a bool): the
    reference API counts only ``isthing == 1`` as a thing, where ``bool("0")`` would be one.
    """
    if isinstance(categories, Mapping):
        items = [(int(k), dict(v)) for k, v in categories.items()]
    else:
        items = [(as_integer_id(c["id"], "a category id"), dict(c)) for c in categories]
    out: dict[int, dict] = {}
    for cat_id, info in items:
        if "isthing" not in info:
            raise PQInputError(f"category {cat_id} has no 'isthing' key: {info}")
        if info["isthing"] not in (0, 1):  # also True / False; not "0", which bool() makes True
            raise PQInputError(f"category {cat_id}: 'isthing' must be 0 or 1, got {info['isthing']!r}")
        info["isthing"] = int(info["isthing"])
        out[cat_id] = info
    return out


def format_table(results: Mapping[str, Any], decimals: int = 1) -> str:
    """The familiar PQ / SQ / RQ / N table (scores in percent; panopticapi prints 1 decimal)."""
    width = decimals + 4
    lines = [f"{'':10s}| {'PQ':>{width}s} {'SQ':>{width}s} {'RQ':>{width}s} {'N':>5s}", "-" * (26 + 3 * width)]
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        lines.append(f"{name:10s}| {100 * r['pq']:{width}.{decimals}f} {100 * r['sq']:{width}.{decimals}f} "
                     f"{100 * r['rq']:{width}.{decimals}f} {r['n']:5d}")
    return "\n".join(lines)
