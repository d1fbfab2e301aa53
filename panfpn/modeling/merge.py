"""Fused panoptic merge: instance masks + semantic labels -> one panoptic id map (DESIGN.md section 4).

The definition is sequential (each instance sees what earlier, higher-scoring ones claimed), but it is
computed here with a constant number of host synchronisations per image and no Python work per pixel:

1. Candidates are the instances with ``score >= score_thresh``, by descending score (stable: on equal
   scores the lower input index comes first). Their masks (``prob > 0.5``) are thresholded in pixel
   chunks; one matrix product per chunk gives, per pixel, how many candidates cover it and, where it is
   exactly one, which one. Row sums give each mask's area.
2. A pixel covered by at most one candidate can never be part of an overlap, so the sequential keep /
   drop decisions depend only on the pixels covered two or more times. Those are gathered into a small
   ``[n, P]`` matrix, and the decisions are resolved exactly on it (section "Resolving keep decisions").
3. Owners follow directly: a singly covered pixel belongs to its candidate if that one is kept; a
   multiply covered pixel to the first kept candidate covering it. Because a kept instance takes only
   its unclaimed pixels, "claimed" is always the union of the full masks of the earlier kept instances.
4. Stuff: one bincount of the semantic labels over the still unclaimed pixels.

Resolving keep decisions: instance ``i`` is kept iff ``|mask_i ∩ claimed_i| <= L_i``, where ``L_i`` is
the largest overlap allowed by ``overlap / area <= overlap_thresh`` (the ratio evaluated in float64, as
``inter / area`` in Python) and ``overlap < area`` (an instance whose every pixel is already claimed
would get an empty segment, so it is dropped; this matters only when ``overlap_thresh >= 1``). Two exact
schemes are provided:

* ``"loop"``: a loop over the candidates made of tensor operations on the ``[P]`` overlap pixels; it
  never reads a value back to the host. Cheapest on CPU.
* ``"fixpoint"``: ``keep = F(keep)`` where ``F`` evaluates every decision at once given a guess of all
  earlier decisions. Decision ``i`` depends only on decisions ``< i``, so ``F`` has exactly one fixed
  point, the sequential answer, and each application fixes at least one more leading decision. A few
  applications, then one equality check (one host sync); if not converged, the loop finishes the job.
  Few kernel launches, so it is the choice on GPUs.

Conventions (the same as Detectron2's panoptic combination, whose defaults these are): a score equal to
``score_thresh`` is kept; an overlap share equal to ``overlap_thresh`` is kept; a probability of exactly
0.5 is background; a stuff region needs ``max(stuff_area, 1)`` unclaimed pixels (segments are never
empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["MergeThresholds", "merge_panoptic", "merge_panoptic_batch"]

# Elements of the float32 chunk buffer [n, chunk]: bounds extra memory at 64 MiB whatever N, H, W are,
# and keeps every per-chunk float32 count below 2**24, where float32 integer sums are exact.
_CHUNK_ELEMENTS = 1 << 24
# The coverer index of a singly covered pixel is carried as two float32 matmul outputs, each < 1024,
# so that it stays exact even under TF32 matmuls (10-bit mantissa).
_INDEX_SPLIT = 1024
# Applications of F before the fixed-point check; typical images converge within two or three.
_FIXPOINT_STEPS = 3


@dataclass(frozen=True)
class MergeThresholds:
    """Thresholds of the panoptic merge (Detectron2's defaults).

    score_thresh: instances with a lower score are ignored.
    overlap_thresh: an instance whose already-claimed share of its mask exceeds this is dropped.
    stuff_area: a stuff label needs at least this many unclaimed pixels to become a segment
        (scale it with the image area for small images).
    """

    score_thresh: float = 0.5
    overlap_thresh: float = 0.5
    stuff_area: int = 4096

    def __post_init__(self) -> None:
        _check_thresholds(self.score_thresh, self.overlap_thresh, self.stuff_area)


Segment = dict  # {"id": int, "isthing": bool, "category": int, "score": float | None, "area": int}


def merge_panoptic(
    mask_probs: Tensor,
    scores: Tensor,
    labels: Tensor,
    sem_labels: Tensor,
    *,
    thing_sem_labels: Sequence[int] | Tensor,
    score_thresh: float = 0.5,
    overlap_thresh: float = 0.5,
    stuff_area: int = 4096,
) -> tuple[Tensor, list[Segment]]:
    """Merge one image's instances and semantic labels into a panoptic id map.

    Args:
        mask_probs: float ``[N, H, W]``, per-instance foreground probabilities in [0, 1].
        scores: float ``[N]``, instance scores.
        labels: int ``[N]``, contiguous thing labels.
        sem_labels: int ``[H, W]``, semantic argmax (labels >= 0).
        thing_sem_labels: semantic labels that mean 'thing'; they are never turned into stuff.
        score_thresh, overlap_thresh, stuff_area: see :class:`MergeThresholds`.

    Returns:
        ``id_map``: int32 ``[H, W]`` on the input device, 0 = void, segment ids 1..K in creation order
        (things by descending score, then stuff by ascending semantic label).
        ``segments``: list of ``{"id", "isthing", "category", "score", "area"}``; ``category`` is the
        thing label (things) or the semantic label (stuff); ``score`` is None for stuff.
    """
    _check_thresholds(score_thresh, overlap_thresh, stuff_area)
    _check_inputs(mask_probs, scores, labels, sem_labels)
    return _merge(
        mask_probs, scores, labels, sem_labels, _thing_label_list(thing_sem_labels),
        score_thresh=float(score_thresh), overlap_thresh=float(overlap_thresh),
        stuff_area=int(stuff_area),
    )


def merge_panoptic_batch(
    mask_probs: Sequence[Tensor],
    scores: Sequence[Tensor],
    labels: Sequence[Tensor],
    sem_labels: Sequence[Tensor] | Tensor,
    *,
    thing_sem_labels: Sequence[int] | Tensor,
    thresholds: MergeThresholds | None = None,
) -> list[tuple[Tensor, list[Segment]]]:
    """:func:`merge_panoptic` over a batch: per image ``[N_b, H_b, W_b]`` probabilities, ``[N_b]``
    scores and labels, ``[H_b, W_b]`` semantic labels (a list, or a ``[B, H, W]`` tensor).

    Returns one ``(id_map, segments)`` per image; errors name the image's position in the batch.
    ``thresholds`` defaults to ``MergeThresholds()``.
    """
    thresholds = MergeThresholds() if thresholds is None else thresholds
    sizes = {len(mask_probs), len(scores), len(labels), len(sem_labels)}
    if len(sizes) != 1:
        raise ValueError(
            "merge_panoptic_batch: mask_probs, scores, labels and sem_labels must have one entry "
            f"per image, got lengths {len(mask_probs)}, {len(scores)}, {len(labels)}, {len(sem_labels)}"
        )
    results = []
    for b in range(len(mask_probs)):
        try:
            results.append(merge_panoptic(
                mask_probs[b], scores[b], labels[b], sem_labels[b],
                thing_sem_labels=thing_sem_labels, score_thresh=thresholds.score_thresh,
                overlap_thresh=thresholds.overlap_thresh, stuff_area=thresholds.stuff_area,
            ))
        except ValueError as err:
            raise ValueError(f"merge_panoptic_batch: image {b}: {err}") from err
    return results


# ----------------------------------------------------------------------------------------------
# checks


def _check_thresholds(score_thresh: float, overlap_thresh: float, stuff_area: int) -> None:
    for name, value in (("score_thresh", score_thresh), ("overlap_thresh", overlap_thresh)):
        if not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"merge: {name} must be a number, got {value!r}")
    if isinstance(stuff_area, bool) or not isinstance(stuff_area, int) or stuff_area < 0:
        raise ValueError(f"merge: stuff_area must be an int >= 0, got {stuff_area!r}")


def _check_inputs(mask_probs: Tensor, scores: Tensor, labels: Tensor, sem_labels: Tensor) -> None:
    if sem_labels.dim() != 2 or sem_labels.is_floating_point() or sem_labels.dtype == torch.bool:
        raise ValueError(
            f"merge: sem_labels must be an integer [H, W] tensor, got {sem_labels.dtype} "
            f"{tuple(sem_labels.shape)}"
        )
    if mask_probs.dim() != 3 or not mask_probs.is_floating_point():
        raise ValueError(
            f"merge: mask_probs must be a float [N, H, W] tensor, got {mask_probs.dtype} "
            f"{tuple(mask_probs.shape)}"
        )
    if mask_probs.shape[1:] != sem_labels.shape:
        raise ValueError(
            f"merge: mask_probs is {tuple(mask_probs.shape)} but sem_labels is "
            f"{tuple(sem_labels.shape)}; both must be at the same [H, W]"
        )
    n = mask_probs.shape[0]
    if labels.is_floating_point() or not scores.is_floating_point():
        raise ValueError(
            f"merge: scores must be float and labels integer, got {scores.dtype} and {labels.dtype}"
        )
    if scores.shape != (n,) or labels.shape != (n,):
        raise ValueError(
            f"merge: scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must be [{n}] "
            f"like mask_probs {tuple(mask_probs.shape)}"
        )
    devices = {t.device for t in (mask_probs, scores, labels, sem_labels)}
    if len(devices) != 1:
        raise ValueError(f"merge: all inputs must be on one device, got {sorted(map(str, devices))}")


def _thing_label_list(thing_sem_labels: Sequence[int] | Tensor) -> list[int]:
    if isinstance(thing_sem_labels, Tensor):
        thing_sem_labels = thing_sem_labels.reshape(-1).tolist()
    try:
        labels = [int(t) for t in thing_sem_labels]
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"merge: thing_sem_labels must be a sequence of ints, got {thing_sem_labels!r}"
        ) from err
    if any(t < 0 for t in labels):
        raise ValueError(f"merge: thing_sem_labels must be >= 0, got {labels}")
    return labels


# ----------------------------------------------------------------------------------------------
# the fused merge


def _merge(
    mask_probs: Tensor, scores: Tensor, labels: Tensor, sem_labels: Tensor,
    thing_sem_labels: list[int], *, score_thresh: float, overlap_thresh: float,
    stuff_area: int, strategy: str | None = None, rowwise: bool | None = None,
) -> tuple[Tensor, list[Segment]]:
    """The merge on checked inputs. ``strategy`` ("loop" or "fixpoint") and ``rowwise`` (threshold
    rows one by one instead of gathering them) default to the faster choice for the device; every
    choice gives the same result (tests run them all on CPU)."""
    device = sem_labels.device
    height, width = sem_labels.shape
    num_pixels = height * width
    sem = sem_labels.reshape(-1).long()

    # Host sync 1: the candidate count (shapes below depend on it) and the semantic label range.
    # Non-candidates (NaN scores included) sort last, so the candidates are a prefix of the order.
    is_candidate = scores >= score_thresh
    key = torch.where(is_candidate, scores, float("-inf"))
    order = torch.sort(key, descending=True, stable=True).indices
    sem_range = torch.stack([sem.min(), sem.max()]) if num_pixels else sem.new_zeros(2)
    head = torch.cat([is_candidate.sum().view(1).long(), sem_range.long()]).tolist()
    num_candidates, sem_min, sem_max = head
    if sem_min < 0:
        raise ValueError(f"merge: sem_labels must be >= 0, found {sem_min}")
    cand = order[:num_candidates]
    if strategy is None:
        strategy = "loop" if device.type == "cpu" else "fixpoint"
    if rowwise is None:
        rowwise = device.type == "cpu"

    if num_candidates:
        probs = mask_probs.reshape(mask_probs.shape[0], num_pixels)
        owner_of_single, cov_area = _cover(probs, cand, num_candidates, rowwise)
        area, cov = cov_area
        multi = torch.nonzero(cov >= 2).squeeze(1)  # host sync 2
        overlap_masks = probs[cand[:, None], multi[None, :]] > 0.5  # [n, P]
        limit = _max_allowed_overlap(area, overlap_thresh)
        if multi.numel() == 0:  # no pixel is covered twice: every non-empty mask is kept whole
            keep, inter, first = limit >= 0, torch.zeros_like(area), multi
        elif strategy == "loop":
            keep, inter, first = _resolve_loop(overlap_masks, limit)
        elif strategy == "fixpoint":
            keep, inter, first = _resolve_fixpoint(overlap_masks, limit)  # host sync 3
        else:
            raise ValueError(f"merge: unknown strategy {strategy!r}")
        # Segment id of each candidate (0 = dropped); index n stands for "no candidate".
        ids = torch.where(keep, torch.cumsum(keep, 0, dtype=torch.int32), 0)
        ids = torch.cat([ids, ids.new_zeros(1)])
        id_map = ids[owner_of_single]
        id_map[multi] = ids[first]
        num_things = keep.sum()
        taken = area - inter
    else:
        id_map = torch.zeros(num_pixels, dtype=torch.int32, device=device)
        keep = torch.zeros(0, dtype=torch.bool, device=device)
        taken = torch.zeros(0, dtype=torch.int64, device=device)
        num_things = torch.zeros((), dtype=torch.int64, device=device)

    # Stuff: unclaimed pixels per semantic label, in one bincount.
    num_labels = sem_max + 1
    unclaimed = id_map == 0
    counts = torch.bincount(
        torch.where(unclaimed, sem, num_labels), minlength=num_labels + 1
    )[:num_labels]
    is_thing = torch.zeros(num_labels, dtype=torch.bool, device=device)
    thing_ids = [t for t in thing_sem_labels if t < num_labels]
    is_thing[torch.tensor(thing_ids, dtype=torch.long, device=device)] = True
    is_stuff = (~is_thing) & (counts >= max(stuff_area, 1))
    stuff_ids = torch.where(is_stuff, num_things + torch.cumsum(is_stuff, 0), 0).to(torch.int32)
    id_map = torch.where(unclaimed, stuff_ids[sem], id_map)

    segments = _segment_list(cand, keep, taken, scores, labels, is_stuff, counts)  # host sync 4
    return id_map.view(height, width), segments


def _cover(probs: Tensor, cand: Tensor, n: int, rowwise: bool) -> tuple[Tensor, tuple]:
    """Thresholded candidate masks, reduced in pixel chunks.

    probs: float ``[N, HW]``; cand: long ``[n]``.
    Returns ``owner_of_single`` long ``[HW]`` (the candidate position covering a pixel that exactly one
    candidate covers, else ``n``) and ``(area [n] int64, cov [HW] int32)``: mask areas and the number of
    candidates covering each pixel.
    """
    num_pixels, device = probs.shape[1], probs.device
    chunk = max(1, _CHUNK_ELEMENTS // n)
    position = torch.arange(n, device=device)
    # Rows: count, low part + 1, high part of the candidate position (see _INDEX_SPLIT).
    weights = torch.stack([
        torch.ones(n, device=device),
        (position % _INDEX_SPLIT + 1).float(),
        (position // _INDEX_SPLIT).float(),
    ])
    area = torch.zeros(n, dtype=torch.int64, device=device)
    cov = torch.empty(num_pixels, dtype=torch.int32, device=device)
    owner = torch.empty(num_pixels, dtype=torch.int64, device=device)
    buf = torch.empty(n, min(chunk, num_pixels), dtype=torch.float32, device=device)
    rows = cand.tolist() if rowwise else None  # a host read; free on CPU, where rowwise is used
    for start in range(0, num_pixels, chunk):
        stop = min(start + chunk, num_pixels)
        masks = buf[:, : stop - start]
        if rows is not None:
            # On CPU a row-by-row compare beats gathering the float rows first (no big copy).
            for k, row in enumerate(rows):
                torch.gt(probs[row, start:stop], 0.5, out=masks[k])
        else:
            torch.gt(probs[:, start:stop].index_select(0, cand), 0.5, out=masks)
        area += masks.sum(1).long()  # exact: chunk < 2**24 pixels
        count, low, high = (weights @ masks).unbind(0)  # exact integers, see _INDEX_SPLIT
        cov[start:stop] = count.int()
        single = high.long() * _INDEX_SPLIT + low.long() - 1
        owner[start:stop] = torch.where(count == 1, single, n)
    return owner, (area, cov)


def _max_allowed_overlap(area: Tensor, overlap_thresh: float) -> Tensor:
    """Largest overlap ``x`` with ``x < area`` and ``x / area <= overlap_thresh`` (float64 division,
    like Python's ``x / area``), or -1 when there is none (empty masks included). ``area``: int64 [n].

    ``fl(x / area)`` is non-decreasing in ``x``, so the allowed overlaps are ``0..L``; ``floor(t * area)``
    is within one of ``L``, and two correcting steps each way make it exact.
    """
    a = area.double()
    limit = torch.floor(overlap_thresh * a).clamp(min=-1.0)
    limit = torch.minimum(limit, a - 1)
    for _ in range(2):
        step_up = (limit + 1 <= a - 1) & ((limit + 1) / a <= overlap_thresh)
        limit = torch.where(step_up, limit + 1, limit)
    for _ in range(2):
        step_down = (limit >= 0) & (limit / a > overlap_thresh)
        limit = torch.where(step_down, limit - 1, limit)
    return torch.where(area > 0, limit, -1.0).long()


def _resolve_loop(masks: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sequential keep decisions with device tensor ops only (no host reads).

    masks: bool ``[n, P]`` candidate masks on the multiply covered pixels; limit: int64 ``[n]``.
    Returns ``keep`` bool ``[n]``, ``inter`` int64 ``[n]`` (claimed pixels of each mask when its turn
    came), ``first`` long ``[P]`` (first kept candidate covering the pixel, ``n`` if none).
    """
    n, num_multi = masks.shape
    claimed = torch.zeros(num_multi, dtype=torch.bool, device=masks.device)
    first = torch.full((num_multi,), n, dtype=torch.int64, device=masks.device)
    keeps, inters = [], []
    for i in range(n):
        row = masks[i]
        inter = (row & claimed).sum()
        keep = inter <= limit[i]
        take = row & ~claimed & keep
        first.masked_fill_(take, i)
        claimed |= take
        keeps.append(keep)
        inters.append(inter)
    if not keeps:
        return limit >= 0, limit.new_zeros(0), first
    return torch.stack(keeps), torch.stack(inters), first


def _claims_given(masks: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """For a guess ``keep`` [n]: first kept candidate per pixel (``n`` if none) ``[P]`` and each mask's
    overlap with the union of the kept masks before it ``[n]``."""
    n = masks.shape[0]
    position = torch.arange(n, dtype=torch.int32, device=masks.device)[:, None]
    first = torch.where(masks & keep[:, None], position, n).amin(0)
    inter = (masks & (first[None, :] < position)).sum(1)
    return first.long(), inter


def _resolve_fixpoint(masks: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Same result as :func:`_resolve_loop` by fixed-point iteration (see the module docstring)."""
    keep = limit >= 0
    for _ in range(_FIXPOINT_STEPS):
        keep = _claims_given(masks, keep)[1] <= limit
    first, inter = _claims_given(masks, keep)
    if torch.equal(inter <= limit, keep):  # the unique fixed point is the sequential answer
        return keep, inter, first
    return _resolve_loop(masks, limit)


def _segment_list(
    cand: Tensor, keep: Tensor, taken: Tensor, scores: Tensor, labels: Tensor,
    is_stuff: Tensor, counts: Tensor,
) -> list[Segment]:
    """Segment dicts in id order, from one host transfer (float64 holds ints < 2**53 exactly)."""
    n, num_labels = keep.numel(), is_stuff.numel()
    packed = torch.cat([
        keep.double(), taken.double(), scores[cand].double(), labels[cand].double(),
        is_stuff.double(), counts.double(),
    ]).tolist()
    keep_l, taken_l, score_l, label_l = (packed[k * n:(k + 1) * n] for k in range(4))
    stuff_l = packed[4 * n:4 * n + num_labels]
    count_l = packed[4 * n + num_labels:]
    segments: list[Segment] = []
    for k in range(n):
        if keep_l[k]:
            segments.append({
                "id": len(segments) + 1, "isthing": True, "category": int(label_l[k]),
                "score": score_l[k], "area": int(taken_l[k]),
            })
    for label in range(num_labels):
        if stuff_l[label]:
            segments.append({
                "id": len(segments) + 1, "isthing": False, "category": label, "score": None,
                "area": int(count_l[label]),
            })
    return segments
