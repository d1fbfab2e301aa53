"""The panoptic merge as a fused kernel: the same output as the definition
(:mod:`panfpn.modeling.merge_reference`, steps 1-7), with a constant number of host reads per image
and no Python work per pixel or per stuff label. Callers use :mod:`panfpn.modeling.merge`.

The definition paints one instance at a time; here each of its steps is one batched stage:

* Steps 1-2 (candidates, order): :func:`_candidate_order`: one stable descending sort of the scores
  with the non-candidates (NaN included) moved last, so the candidates are a prefix; candidate ``k``
  is the k-th of that order. Host read 1: the candidate count and the semantic label range.
* Step 3 (masks ``>= 0.5``): :func:`_coverage_words` thresholds the masks chunk by chunk into a
  cache-sized float32 buffer, and small matrix products turn the ``n`` mask rows into ``G`` words per
  pixel: the set of candidates covering it, ``_BITS`` bits per word (weights ``2**j``). Exact: inputs
  are 0/1 and powers of two, and every sum is an integer below ``2**20`` (float32-exact in any order,
  even in TF32 or bf16). :func:`_box_coverage_words` does the same from :class:`BoxMasks`.
* Step 4 (things), on coverage patterns instead of pixels: pixels with the same set of covering
  candidates are interchangeable for step 4, so :func:`_group_patterns` reduces the covered pixels to
  their ``U`` distinct patterns (typically a few hundred) with pixel counts (host reads 2 and 3).
  All of step 4's drop tests become one integer limit on each candidate's overlap (already claimed
  pixels), :func:`_keep_limit`: the ratio test ``(area - free) / area > overlap_thresh`` via
  :func:`_max_allowed_overlap` (exact against Python's float64 division; skipped when
  ``overlap_thresh`` is None), the remaining-area minimum ``free >= thing_min_remaining_area`` as
  ``overlap <= area - minimum``, and ``free >= 1`` (empty masks and masks with no free pixel can
  never pass). :func:`_resolve_loop` then takes the decisions in candidate
  order on the ``[n, U]`` pattern matrix, with device operations only (no host read). Since a kept
  instance claims all its free pixels, the claimed set is the union of the earlier kept masks, so a
  pixel's owner is the first kept candidate covering it (:func:`_claim_things` writes the ids).
* Steps 5-6 (stuff, void): :func:`_paint_stuff`: one histogram of the semantic labels over the
  unclaimed pixels, the labels passing the area test numbered in ascending order, one gather.
* Step 7 (ids, segments): :func:`_segment_list` from one host transfer (the last read).

Images above ``_PIXELS_PER_CHUNK`` pixels are processed in row bands (patterns gathered band by band
and grouped again, then a second pass paints each band): the memory is bounded, the result the same.

One keep-decision strategy: a fixed-point variant (all decisions at once, iterated) was measured
against the loop with ``bench/merge.py``; on CPU it made no end-to-end difference at COCO size and
was 2-3x slower in its own stage at 300 candidates, so it was removed (bench/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from panfpn.modeling.box_masks import BoxMasks
from panfpn.modeling.merge_reference import Segment

__all__ = ["merge_fused"]

# Candidate bits per coverage word: a sum of distinct powers of two below 2**20 is exact in float32.
_BITS = 20
# Coverage words packed into one int64 sort key (3 x 20 = 60 bits).
_WORDS_PER_KEY = 3
# Elements of the [n, chunk] threshold buffer: cache-sized on CPU (measured fastest), larger on
# accelerators where fewer, bigger kernels win; both bound the extra memory whatever N, H, W are.
_CPU_CHUNK_ELEMENTS = 1 << 20
_DEVICE_CHUNK_ELEMENTS = 1 << 24
# Semantic labels are histogram bins; anything this large is a bug upstream, not a label.
_MAX_SEM_LABEL = 1 << 20
# Larger images are merged in bands of about this many pixels (bounds the memory; same result).
_PIXELS_PER_CHUNK = 1 << 22


def merge_fused(
    mask_probs: Tensor | BoxMasks, scores: Tensor, labels: Tensor, sem_labels: Tensor,
    thing_sem_labels: list[int], *, score_thresh: float, overlap_thresh: float | None, stuff_area: int,
    thing_min_remaining_area: int = 0, rows_per_chunk: int | None = None,
) -> tuple[Tensor, list[Segment]]:
    """The merge on checked inputs (see :func:`panfpn.modeling.merge.merge_panoptic`).
    ``rows_per_chunk`` overrides the band height (tests; ``None``: about ``_PIXELS_PER_CHUNK``)."""
    height, width = sem_labels.shape
    sem = sem_labels.reshape(-1).long()
    rows = rows_per_chunk or max(1, _PIXELS_PER_CHUNK // max(1, width))
    bands = [(r, min(r + rows, height)) for r in range(0, height, rows)] or [(0, 0)]
    cand, sem_max = _candidate_order(scores, sem, score_thresh)
    id_map = torch.zeros(height * width, dtype=torch.int32, device=sem.device)
    keep = torch.zeros(cand.numel(), dtype=torch.bool, device=sem.device)
    taken = torch.zeros(cand.numel(), dtype=torch.int64, device=sem.device)
    if cand.numel():
        limits = (overlap_thresh, thing_min_remaining_area)
        keep, taken = _claim_things(mask_probs, cand, id_map, bands, width, limits)
    is_stuff, counts = _paint_stuff(id_map, sem, bands, width, sem_max + 1, thing_sem_labels,
                                    stuff_area, first_id=keep.sum())
    segments = _segment_list(cand, keep, taken, scores, labels, is_stuff, counts)
    return id_map.view(height, width), segments


def _candidate_order(scores: Tensor, sem: Tensor, score_thresh: float) -> tuple[Tensor, int]:
    """Steps 1-2: the candidate indices in merge order, and the largest semantic label (checked).
    Non-candidates (NaN scores included) sort last, so the candidates are a prefix of the order."""
    is_candidate = scores.double() >= score_thresh  # float64, like comparing Python floats
    key = torch.where(is_candidate, scores, float("-inf"))
    order = torch.sort(key, descending=True, stable=True).indices
    sem_range = torch.stack([sem.min(), sem.max()]) if sem.numel() else sem.new_zeros(2)
    num_candidates, sem_min, sem_max = torch.cat(  # host read 1
        [is_candidate.sum().view(1).long(), sem_range.long()]
    ).tolist()
    if sem_min < 0 or sem_max >= _MAX_SEM_LABEL:
        raise ValueError(
            f"merge: sem_labels must be in [0, {_MAX_SEM_LABEL}), found {sem_min}..{sem_max}"
        )
    return order[:num_candidates], sem_max


def _claim_things(masks: Tensor | BoxMasks, cand: Tensor, id_map: Tensor, bands: list[tuple[int, int]],
                  width: int, limits: tuple[float | None, int]) -> tuple[Tensor, Tensor]:
    """Steps 3-4: keep decisions, the things' ids written into ``id_map`` (flat int32); returns
    ``keep`` and ``taken`` (pixels each candidate got). ``limits``: (overlap_thresh, min remaining)."""
    chunk_elements = _CPU_CHUNK_ELEMENTS if id_map.device.type == "cpu" else _DEVICE_CHUNK_ELEMENTS
    none_kept = torch.zeros_like(cand, dtype=torch.bool), torch.zeros_like(cand)
    if len(bands) == 1:
        covered, keys = _band_keys(masks, cand, *bands[0], width, chunk_elements)
        if not covered.numel():
            return none_kept
        inverse, patterns, weight = _group_patterns(keys)  # host read 3
    else:
        grouped = _banded_patterns(masks, cand, bands, width, chunk_elements)
        if grouped is None:
            return none_kept
        patterns, weight = grouped
    pattern_masks = _decode_bits(patterns, cand.numel())  # [n, U]
    area = (pattern_masks * weight).sum(1)
    keep, inter, first = _resolve_loop(pattern_masks, weight, _keep_limit(area, *limits))
    # Segment id of each candidate (0 = dropped); index n stands for "no kept candidate".
    ids = torch.where(keep, torch.cumsum(keep, 0, dtype=torch.int32), 0)
    owner_ids = torch.cat([ids, ids.new_zeros(1)])[first]  # [U]
    if len(bands) == 1:
        id_map[covered] = owner_ids[inverse]
    else:
        _paint_things_by_band(masks, cand, id_map, bands, width, chunk_elements, patterns, owner_ids)
    return keep, area - inter


def _banded_patterns(masks: Tensor | BoxMasks, cand: Tensor, bands: list[tuple[int, int]], width: int,
                     chunk_elements: int) -> tuple[Tensor, Tensor] | None:
    """The image's distinct coverage patterns ``[K, U]`` and pixel counts ``[U]``, gathered band by
    band and grouped again (the counts of a pattern add up exactly); None if no pixel is covered."""
    parts, weights = [], []
    for r0, r1 in bands:
        covered, keys = _band_keys(masks, cand, r0, r1, width, chunk_elements)
        if covered.numel():
            _, band_patterns, band_weight = _group_patterns(keys)
            parts.append(band_patterns)
            weights.append(band_weight)
    if not parts:
        return None
    inverse_joined, patterns, _ = _group_patterns(torch.cat(parts, 1))
    weight = torch.zeros(patterns.shape[1], dtype=torch.int64, device=patterns.device).index_add_(
        0, inverse_joined, torch.cat(weights))
    return patterns, weight


def _paint_things_by_band(masks: Tensor | BoxMasks, cand: Tensor, id_map: Tensor, bands: list[tuple[int, int]],
                          width: int, chunk_elements: int, patterns: Tensor, owner_ids: Tensor) -> None:
    """Step 4's painting, band by band: every band pattern is one of the sorted image patterns, so
    grouping both together gives back the image's list, and each pixel's position in it."""
    num_patterns = patterns.shape[1]
    for r0, r1 in bands:
        covered, keys = _band_keys(masks, cand, r0, r1, width, chunk_elements)
        if covered.numel():
            band_inverse = _group_patterns(torch.cat([patterns, keys], 1))[0][num_patterns:]
            id_map[r0 * width + covered] = owner_ids[band_inverse]


def _band_keys(masks: Tensor | BoxMasks, cand: Tensor, r0: int, r1: int, width: int,
               chunk_elements: int) -> tuple[Tensor, Tensor]:
    """Covered pixels of rows ``r0..r1`` (flat indices within the band) and their sort keys."""
    if isinstance(masks, Tensor):
        probs = masks.reshape(masks.shape[0], -1)[:, r0 * width:r1 * width]
        words = _coverage_words(probs, cand, chunk_elements)
    else:  # BoxMasks
        words = _box_coverage_words(masks, cand, r0, r1)
    covered = torch.nonzero((words > 0).any(0)).squeeze(1)  # host read 2
    if not covered.numel():
        return covered, words.new_zeros((0, 0), dtype=torch.int64)
    return covered, _pack_keys(words.index_select(1, covered))


def _box_coverage_words(masks: BoxMasks, cand: Tensor, r0: int, r1: int) -> Tensor:
    """:func:`_coverage_words` of rows ``r0..r1`` from masks stored inside their boxes: each
    candidate adds its bit weight over its box (integer sums below ``2**_BITS``: exact)."""
    n, (_, width) = cand.numel(), masks.size
    num_words = (n + _BITS - 1) // _BITS
    words = torch.zeros(num_words, r1 - r0, width, dtype=torch.float32, device=cand.device)
    for k, i in enumerate(cand.tolist()):
        crop, (y0, x0) = masks.crops[i], masks.origins[i]
        a, b = max(y0, r0), min(y0 + crop.shape[0], r1)
        if a < b and crop.shape[1]:
            words[k // _BITS, a - r0:b - r0, x0:x0 + crop.shape[1]] += crop[a - y0:b - y0] * float(1 << (k % _BITS))
    return words.view(num_words, -1)


def _coverage_words(probs: Tensor, cand: Tensor, chunk_elements: int) -> Tensor:
    """Per pixel, the set of candidates covering it, as bit words.

    probs: float ``[N, HW]``; cand: long ``[n]`` candidate rows in order.
    Returns float32 ``[G, HW]``, ``G = ceil(n / _BITS)``: word ``g`` is the sum of ``2**(k % _BITS)``
    over the covering candidates ``k`` with ``k // _BITS == g``; exact integers below ``2**_BITS``.
    """
    n, num_pixels, device = cand.numel(), probs.shape[1], probs.device
    num_words = (n + _BITS - 1) // _BITS
    bit_weights = torch.pow(2.0, (torch.arange(n, device=device) % _BITS).float())
    words = torch.empty(num_words, num_pixels, dtype=torch.float32, device=device)
    chunk = max(1, min(num_pixels, chunk_elements // n))
    masks_buf = torch.empty(n, chunk, dtype=torch.float32, device=device)
    rows_buf = masks_buf if probs.dtype == torch.float32 else torch.empty(
        n, chunk, dtype=probs.dtype, device=device)
    for start in range(0, num_pixels, chunk):
        stop = min(start + chunk, num_pixels)
        masks, rows = masks_buf[:, : stop - start], rows_buf[:, : stop - start]
        torch.index_select(probs[:, start:stop], 0, cand, out=rows)
        torch.ge(rows, 0.5, out=masks)  # compared in the input dtype (bool: True -> 1 >= 0.5)
        for g in range(num_words):
            # One [1, B] x [B, chunk] product per word: the weight matrix is block diagonal, and
            # skipping its zero blocks makes this several times cheaper than one [G, n] product.
            group = slice(g * _BITS, min((g + 1) * _BITS, n))
            torch.mm(bit_weights[None, group], masks[group], out=words[g : g + 1, start:stop])
    return words


def _pack_keys(words: Tensor) -> Tensor:
    """int64 ``[K, C]`` sort keys from float ``[G, C]`` words, ``_WORDS_PER_KEY`` words per key."""
    keys = []
    for first in range(0, words.shape[0], _WORDS_PER_KEY):
        key = words[first].long()
        for j in range(1, min(_WORDS_PER_KEY, words.shape[0] - first)):
            key += words[first + j].long() * (1 << (_BITS * j))  # bit fields do not overlap
        keys.append(key)
    return torch.stack(keys)


def _group_patterns(keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct columns of ``keys`` (int64 ``[K, C]``), found by lexicographic sorting.

    Returns ``inverse`` long ``[C]`` (pattern of each column), ``patterns`` int64 ``[K, U]`` and
    ``weight`` int64 ``[U]`` (columns per pattern). One host read (the number of patterns).
    """
    num_cols = keys.shape[1]
    if keys.shape[0] == 1:  # up to 60 candidates: one key per column, torch.unique does it all
        patterns, inverse, weight = torch.unique(
            keys[0], sorted=True, return_inverse=True, return_counts=True)
        return inverse, patterns[None], weight
    perm = torch.sort(keys[-1], stable=True).indices
    for key in keys.flip(0)[1:]:  # stable sorts, least significant key first: lexicographic order
        perm = perm[torch.sort(key[perm], stable=True).indices]
    sorted_keys = keys.index_select(1, perm)
    starts_pattern = torch.ones(num_cols, dtype=torch.bool, device=keys.device)
    starts_pattern[1:] = (sorted_keys[:, 1:] != sorted_keys[:, :-1]).any(0)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.cumsum(starts_pattern, 0) - 1
    starts = torch.nonzero(starts_pattern).squeeze(1)
    weight = torch.diff(starts, append=starts.new_full((1,), num_cols))
    return inverse, sorted_keys.index_select(1, starts), weight


def _decode_bits(patterns: Tensor, n: int) -> Tensor:
    """bool ``[n, U]``: candidate ``k`` is in pattern ``u`` (inverse of the words and keys)."""
    k = torch.arange(n, device=patterns.device)
    word = k // _BITS
    shift = (word % _WORDS_PER_KEY) * _BITS + k % _BITS
    return ((patterns[word // _WORDS_PER_KEY] >> shift[:, None]) & 1).bool()


def _keep_limit(area: Tensor, overlap_thresh: float | None, min_remaining: int) -> Tensor:
    """Step 4's drop tests as one limit: a candidate is kept iff its overlap (claimed pixels of its
    mask at its turn) is ``<=`` this. ``free = area - overlap``, so ``free >= max(min_remaining, 1)``
    is ``overlap <= area - max(min_remaining, 1)``; the ratio test adds :func:`_max_allowed_overlap`.
    ``area``: int64 [n]; an empty mask gets a negative limit (never kept)."""
    limit = area - max(int(min_remaining), 1)
    if overlap_thresh is not None:
        limit = torch.minimum(limit, _max_allowed_overlap(area, overlap_thresh))
    return limit


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


def _resolve_loop(masks: Tensor, weight: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sequential keep decisions with device tensor ops only (no host reads).

    masks: bool ``[n, U]`` candidate-in-pattern; weight: int64 ``[U]`` pixels per pattern;
    limit: int64 ``[n]`` (see :func:`_max_allowed_overlap`).
    Returns ``keep`` bool ``[n]``, ``inter`` int64 ``[n]`` (claimed pixels of each mask when its turn
    came), ``first`` long ``[U]`` (first kept candidate in the pattern, ``n`` if none).
    """
    n, num_patterns = masks.shape
    claimed = torch.zeros(num_patterns, dtype=torch.bool, device=masks.device)
    first = torch.full((num_patterns,), n, dtype=torch.int64, device=masks.device)
    keeps, inters = [], []
    for i in range(n):
        row = masks[i]
        inter = ((row & claimed) * weight).sum()
        keep = inter <= limit[i]
        take = row & ~claimed & keep
        first.masked_fill_(take, i)
        claimed |= take
        keeps.append(keep)
        inters.append(inter)
    return torch.stack(keeps), torch.stack(inters), first


def _paint_stuff(id_map: Tensor, sem: Tensor, bands: list[tuple[int, int]], width: int, num_labels: int,
                 thing_sem_labels: list[int], stuff_area: int, first_id: Tensor) -> tuple[Tensor, Tensor]:
    """Steps 5-6: unclaimed pixels per semantic label in one histogram (index_add_: no host read),
    the labels passing the area test numbered from ``first_id + 1`` ascending, written into the
    unclaimed pixels of ``id_map`` (the rest stays 0). Returns ``is_stuff`` and the counts ``[L]``."""
    device = sem.device
    counts = torch.zeros(num_labels + 1, dtype=torch.int64, device=device)
    for r0, r1 in bands:
        band = slice(r0 * width, r1 * width)
        counts.index_add_(0, torch.where(id_map[band] == 0, sem[band], num_labels),
                          torch.ones(1, dtype=torch.int64, device=device).expand((r1 - r0) * width))
    counts = counts[:num_labels]
    is_thing = torch.zeros(num_labels, dtype=torch.bool)
    is_thing[[t for t in thing_sem_labels if t < num_labels]] = True
    is_stuff = ~is_thing.to(device) & (counts >= max(stuff_area, 1))
    stuff_ids = torch.where(is_stuff, first_id + torch.cumsum(is_stuff, 0), 0).to(torch.int32)
    for r0, r1 in bands:
        band = slice(r0 * width, r1 * width)
        id_map[band] = torch.where(id_map[band] == 0, stuff_ids[sem[band]], id_map[band])
    return is_stuff, counts


def _segment_list(
    cand: Tensor, keep: Tensor, taken: Tensor, scores: Tensor, labels: Tensor,
    is_stuff: Tensor, counts: Tensor,
) -> list[Segment]:
    """Step 7: segment dicts in id order, from one host transfer (float64 holds ints < 2**53 exactly)."""
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
