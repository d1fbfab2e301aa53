"""In-memory panoptic quality during evaluation: no PNG round trip, id maps stay on their device.

Each :meth:`PQAccumulator.update` reduces the image to its (gt id, pred id, pixel count) pairs
on the maps' device and hands them to the shared rules in :mod:`panfpn.evaluation.pq_rules`,
so the result equals :func:`panfpn.evaluation.pq.pq_compute` on the same predictions written
to files. On CUDA the counting is one ``torch.unique`` (one host sync per image); on CPU the
one-pass run-length counting of :mod:`panfpn.evaluation.id_runs` is used instead (measured on
an 800x1216 image, one core: 1.1 ms against 19 ms for ``torch.unique``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from panfpn.evaluation.id_runs import known_ids, pair_counts_ids
from panfpn.evaluation.pq_rules import (PQInputError, PQStat, accumulate_image,
                                        normalize_categories, pq_results)
from panfpn.utils.dist import all_reduce_sum, is_multiprocess


def pair_counts_torch(gt: torch.Tensor, pred: torch.Tensor) -> list[tuple[int, int, int]]:
    """(gt id, pred id, count) pairs of two int maps ``[H, W]`` with one sort on their device.

    Ids must be non-negative and below 2^31 (int32 maps). A negative id on either side makes
    the key's high half negative, so it shows up as a negative gt id in the result (checked by
    the caller) without an extra host sync.
    """
    key = (gt.reshape(-1).long() << 32) | pred.to(gt.device).reshape(-1).long()
    keys, counts = torch.unique(key, return_counts=True)  # the one host sync
    keys, counts = keys.cpu().numpy(), counts.cpu().numpy()
    return list(zip((keys >> 32).tolist(), (keys & 0xFFFFFFFF).tolist(), counts.tolist()))


def _pairs(gt: torch.Tensor, pred: torch.Tensor, image_id: Any, gt_segments: Sequence,
           pred_segments: Sequence) -> list[tuple[int, int, int]]:
    if gt.device.type == "cpu" and pred.device.type == "cpu":
        g, p = gt.reshape(-1).numpy(), pred.reshape(-1).numpy()
        if g.min(initial=0) < 0 or p.min(initial=0) < 0:
            raise PQInputError(f"image {image_id!r}: id maps hold negative ids")
        return pair_counts_ids(g, p, known_ids(gt_segments), known_ids(pred_segments))
    pairs = pair_counts_torch(gt, pred)
    if pairs and pairs[0][0] < 0:
        raise PQInputError(f"image {image_id!r}: id maps hold negative ids")
    return pairs


def checked_pairs(pred_id_map: torch.Tensor, gt_id_map: torch.Tensor, image_id: Any,
                  gt_segments: Sequence, pred_segments: Sequence) -> list[tuple[int, int, int]]:
    """(gt id, pred id, count) pairs of one image after checking that the two maps are integer
    ``[H, W]`` maps of one shape (:class:`PQInputError` naming the image otherwise)."""
    pred_id_map = torch.as_tensor(pred_id_map)
    gt_id_map = torch.as_tensor(gt_id_map)
    if pred_id_map.shape != gt_id_map.shape or pred_id_map.dim() != 2:
        raise PQInputError(
            f"image {image_id!r}: prediction is {tuple(pred_id_map.shape)} but the ground "
            f"truth is {tuple(gt_id_map.shape)}; both must be [H, W]"
        )
    if any(m.is_floating_point() or m.is_complex() or m.dtype == torch.bool for m in (pred_id_map, gt_id_map)):
        raise PQInputError(f"image {image_id!r}: id maps must be integer tensors")
    # uint8 / int16 / uint16 maps (a small id map, a single-channel PNG) are counted as int64:
    # the pair counting's shifts and sentinels overflow in 8 or 16 bits
    pred_id_map, gt_id_map = (m if m.dtype in (torch.int32, torch.int64) else m.long()
                              for m in (pred_id_map, gt_id_map))
    return _pairs(gt_id_map, pred_id_map, image_id, gt_segments, pred_segments)


def reduce_stat(stat: PQStat, cat_ids: Sequence[int]) -> PQStat:
    """``stat`` summed over ranks (one all-reduce of a [categories, 4] table); itself on one process."""
    if not is_multiprocess():
        return stat
    table = torch.tensor(
        [[stat.tp.get(c, 0), stat.fp.get(c, 0), stat.fn.get(c, 0), stat.iou.get(c, 0.0)] for c in cat_ids],
        dtype=torch.float64,
    ).reshape(len(cat_ids), 4)
    rows = all_reduce_sum(table).numpy()
    out = PQStat()
    for cat, (tp, fp, fn, iou) in zip(cat_ids, rows):
        out.tp[cat], out.fp[cat], out.fn[cat] = int(tp), int(fp), int(fn)
        out.iou[cat] = float(iou)
    return out


class PQAccumulator:
    """Panoptic quality summed over images, reduced across ranks on :meth:`compute`.

    Args:
        categories: ``{category_id: {"isthing": 0/1, ...}}`` or a list of COCO category dicts
            (``id``, ``isthing``). Dataset category ids, as in the ground truth.
    """

    def __init__(self, categories: Mapping[int, Mapping] | Sequence[Mapping]):
        self.categories = normalize_categories(categories)
        self._cat_ids = sorted(self.categories)
        self.reset()

    def reset(self) -> None:
        self.stat = PQStat()
        self.num_images = 0

    @torch.no_grad()
    def update(self, pred_id_map: torch.Tensor, pred_segments: Sequence[Mapping[str, Any]],
               gt_id_map: torch.Tensor, gt_segments: Sequence[Mapping[str, Any]],
               image_id: Any = None, pairs: Sequence[tuple[int, int, int]] | None = None) -> None:
        """Add one image.

        Args:
            pred_id_map: int ``[H, W]`` (any device), 0 = void.
            pred_segments: ``[{"id", "category_id"}]``, dataset category ids.
            gt_id_map: int ``[H, W]`` (any device), 0 = void.
            gt_segments: ``[{"id", "category_id", "iscrowd", "area"}]``; a missing ``area`` is
                counted from ``gt_id_map``.
            image_id: named in error messages.
            pairs: the image's (gt id, pred id, count) pairs when the caller already counted
                them with :func:`checked_pairs` (shared by several evaluators); counted here otherwise.
        """
        if pairs is None:
            pairs = checked_pairs(pred_id_map, gt_id_map, image_id, gt_segments, pred_segments)
        accumulate_image(self.stat, image_id, gt_segments, pred_segments, pairs,
                         self.categories, gt_area_from_pixels=True)
        self.num_images += 1

    def _reduced_stat(self) -> PQStat:
        return reduce_stat(self.stat, self._cat_ids)

    def compute(self) -> dict:
        """The :func:`~panfpn.evaluation.pq.pq_compute` result dict over every rank's images."""
        return pq_results(self._reduced_stat(), self.categories)


__all__ = ["PQAccumulator", "checked_pairs", "reduce_stat"]
