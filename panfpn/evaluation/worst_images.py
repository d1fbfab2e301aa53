"""The images a model does worst on: per-image PQ with the shared rules, and their segment errors.

:class:`WorstImages` is kept by the report's evaluator
(:class:`panfpn.evaluation.evaluators.ReportCollector`): it scores each image alone with :func:`panfpn.evaluation.pq_rules.accumulate_image` (so an
image's PQ follows exactly the rules of the dataset PQ) and keeps the ``k`` lowest in a bounded
heap; the ground truth | prediction overlay is drawn only for images that enter the heap.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from panfpn.evaluation.accumulator import pair_counts_torch
from panfpn.evaluation.id_runs import known_ids, pair_counts_ids
from panfpn.evaluation.pq_rules import VOID, PQStat, accumulate_image, normalize_categories, pq_results


@dataclass
class ImageScore:
    """One image's PQ, its errors by category id and (for the kept ones) its overlay."""

    image_id: Any
    pq: float
    missed: dict[int, int] = field(default_factory=dict)  # false negatives per GT category
    false: dict[int, int] = field(default_factory=dict)  # false positives per predicted category
    wrong_class: list[tuple[int, int]] = field(default_factory=list)  # (GT category, predicted category)
    overlay: np.ndarray | None = None


def score_image(image_id: Any, gt_segments: Sequence[Mapping], pred_segments: Sequence[Mapping],
                pairs: Sequence[tuple[int, int, int]], categories: Mapping[int, Mapping]) -> ImageScore | None:
    """Per-image PQ (mean over the categories present, as the dataset PQ) and its errors;
    None for an image with neither ground truth nor prediction to score."""
    stat = PQStat()
    accumulate_image(stat, image_id, gt_segments, pred_segments, pairs, categories, gt_area_from_pixels=True)
    summary = pq_results(stat, categories)["All"]
    if summary["n"] == 0:
        return None
    return ImageScore(image_id, float(summary["pq"]),
                      missed={c: n for c, n in sorted(stat.fn.items()) if n},
                      false={c: n for c, n in sorted(stat.fp.items()) if n},
                      wrong_class=wrong_class_pairs(gt_segments, pred_segments, pairs))


def wrong_class_pairs(gt_segments: Sequence[Mapping], pred_segments: Sequence[Mapping],
                      pairs: Sequence[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """(GT category, predicted category) of every prediction that overlaps a non-crowd GT segment
    of another category with IoU > 0.5 (IoU as in the PQ match: prediction's void pixels left out)."""
    gt = {int(s["id"]): s for s in gt_segments}
    pred = {int(s["id"]): s for s in pred_segments}
    pred_area: dict[int, int] = {}
    gt_pixels: dict[int, int] = {}
    for g, p, n in pairs:
        pred_area[p] = pred_area.get(p, 0) + n
        gt_pixels[g] = gt_pixels.get(g, 0) + n
    void_of = {p: n for g, p, n in pairs if g == VOID}
    out = []
    for g, p, inter in pairs:
        if g not in gt or p not in pred or gt[g].get("iscrowd", 0) == 1:
            continue
        gcat, pcat = int(gt[g]["category_id"]), int(pred[p]["category_id"])
        if gcat == pcat:
            continue
        union = pred_area[p] + gt[g].get("area", gt_pixels.get(g, 0)) - inter - void_of.get(p, 0)
        if union > 0 and inter / union > 0.5:
            out.append((gcat, pcat))
    return out


def _pair_counts(gt: torch.Tensor, pred: torch.Tensor, gt_segments: Sequence[Mapping],
                 pred_segments: Sequence[Mapping]) -> list[tuple[int, int, int]]:
    """(gt id, pred id, count) pairs as the accumulator counts them: run lengths on CPU, one sort on GPU
    (the accumulator has already refused negative ids for this image)."""
    if gt.device.type == "cpu" and pred.device.type == "cpu":
        return pair_counts_ids(gt.reshape(-1).numpy(), pred.reshape(-1).numpy(),
                               known_ids(gt_segments), known_ids(pred_segments))
    return pair_counts_torch(gt, pred)


class WorstImages:
    """Keeps the ``k`` images with the lowest per-image PQ (ties: the first seen stays)."""

    def __init__(self, categories: Mapping[int, Mapping] | Sequence[Mapping], k: int = 8):
        self.categories = normalize_categories(categories)  # {id: {"isthing"}} or COCO category dicts
        self.k = int(k)
        self._heap: list[tuple[float, int, ImageScore]] = []  # (-pq, -order, score): root = best kept
        self._order = itertools.count()

    def __call__(self, image_id: Any, pred_id_map: torch.Tensor, pred_segments: Sequence[Mapping],
                 gt_id_map: torch.Tensor, gt_segments: Sequence[Mapping],
                 make_overlay: Callable[[], np.ndarray] | None = None, *,
                 pairs: Sequence[tuple[int, int, int]] | None = None) -> None:
        """Score one image (``pairs``: its (gt id, pred id, count) pairs when already counted);
        draw its overlay only when it is among the ``k`` worst so far."""
        if self.k <= 0:
            return
        if pairs is None:
            pairs = _pair_counts(torch.as_tensor(gt_id_map), torch.as_tensor(pred_id_map), gt_segments,
                                 pred_segments)
        score = score_image(image_id, gt_segments, pred_segments, pairs, self.categories)
        if score is not None:
            self.offer(score, make_overlay)

    def offer(self, score: ImageScore, make_overlay: Callable[[], np.ndarray] | None = None) -> None:
        """Keep an already scored image when it is among the ``k`` worst so far (then draw its overlay)."""
        if self.k <= 0 or (len(self._heap) >= self.k and score.pq >= -self._heap[0][0]):
            return
        if make_overlay is not None:
            score.overlay = make_overlay()
        item = (-score.pq, -next(self._order), score)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)

    def worst(self) -> list[ImageScore]:
        """The kept images, lowest PQ first."""
        return [s for _, _, s in sorted(self._heap, key=lambda t: (-t[0], -t[1]))]


__all__ = ["ImageScore", "WorstImages", "score_image", "wrong_class_pairs"]
